# threadchat — the two commands that matter are `make run` and `make test`.

CARGO ?= cargo

.PHONY: run build release test lint fmt clean

## Start the server on its defaults: page on :8000, chat on :8001.
run:
	$(CARGO) run --release --

## Debug build.
build:
	$(CARGO) build

## Optimised, stripped binary in target/release/threadchat.
release:
	$(CARGO) build --release

## Unit and end-to-end tests (real binary, real sockets on loopback).
test:
	$(CARGO) test --all-targets

## rustfmt check and clippy with warnings denied.
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

clean:
	$(CARGO) clean
