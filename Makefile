# threadchat — the two commands that matter are `make run` and `make test`.

CARGO ?= cargo
NPM ?= npm
E2E := tests/e2e

.PHONY: run cert build release test unit deny audit autobahn socketio-suite bench bench-quick fuzz e2e deb deb-test deb-arm64 deb-armhf test-arm lint fmt clean

## Start the server on its defaults: page on :8000, chat on :8001. Flags go in
## ARGS, e.g. make run ARGS="--tls-cert tls/cert.pem --tls-key tls/key.pem".
run:
	$(CARGO) run --release -- $(ARGS)

## A self-signed certificate for https and wss, for localhost, this machine's
## names and its LAN addresses: tls/cert.pem and tls/key.pem (git ignores tls/).
cert:
	$(CARGO) run --quiet --example cert -- --out tls $$(hostname -I 2>/dev/null)

## Debug build.
build:
	$(CARGO) build

## Optimised, stripped binary in target/release/threadchat.
release:
	$(CARGO) build --release

## Everything: Rust tests, supply-chain checks, WebSocket conformance, a short load
## run, then the page in a real browser.
test: unit deny autobahn bench-quick e2e

## Unit tests and end-to-end tests of the binary (real sockets on loopback).
unit:
	$(CARGO) test --all-targets

## Supply chain, offline: licenses, banned crates, where crates come from.
deny:
	@command -v cargo-deny >/dev/null || { echo "cargo-deny is missing: cargo install cargo-deny --locked" >&2; exit 1; }
	$(CARGO) deny check licenses bans sources

## Known vulnerabilities (RustSec). Needs the network to fetch the advisory database.
audit:
	$(CARGO) deny check advisories

## The Autobahn TestSuite's server cases against /echo, over ws and over wss, gated
## on autobahn/expected-results.json (needs python3 with venv; kosoku is pinned).
autobahn: build
	$(CARGO) build --example cert
	autobahn/run.sh target/debug/threadchat

## socket.io's protocol test suite, its WebSocket part, against --echo's fixture on
## port 3000: SUITE is a checkout of github.com/socketio/socket.io-protocol (not
## part of `make test`: the suite is fetched by whoever runs it).
socketio-suite: build
	socketio/suite.sh $(SUITE) target/debug/threadchat

## The load generator against the optimised server: chat, fanout, saturate, rooms
## (50 rooms of 20), idle, storm, footprint, the naive example's rows beside them,
## chat, fanout, saturate and idle again over wss, saturate and rooms through
## clusters of 2 and 3 nodes (needs redis-server), and chat and saturate with
## Socket.IO clients beside socket.io 4 on Node, every delivery checked (about
## five minutes; not part of `make test`).
bench: release bench/socketio-anchor/node_modules
	$(CARGO) build --release -p threadchat-loadgen
	$(CARGO) build --release --example naive
	target/release/loadgen --server target/release/threadchat --naive target/release/examples/naive \
		--tls-scenarios chat,fanout,saturate,idle --cluster-scenarios saturate,rooms \
		--socketio-scenarios chat,saturate --socketio-anchor bench/socketio-anchor/anchor

## socket.io 4 on Node, the bench's anchor for the (socket.io) rows (needs node and npm).
bench/socketio-anchor/node_modules: bench/socketio-anchor/package.json bench/socketio-anchor/package-lock.json
	cd bench/socketio-anchor && $(NPM) ci --no-audit --no-fund --loglevel=error
	touch $@

## The same with small numbers, a few seconds, so the bench code cannot rot.
bench-quick: build
	$(CARGO) build -p threadchat-loadgen
	$(CARGO) build --example naive
	target/debug/loadgen --quick --server target/debug/threadchat --naive target/debug/examples/naive \
		--tls-scenarios saturate,idle --cluster-scenarios saturate --cluster-nodes 2 \
		--socketio-scenarios saturate
	bench/redis-append-floor.sh 200

## Coverage-guided fuzzing of the protocol parser and the path resolver, each for
## FUZZ_SECONDS (default 60). Needs `cargo install cargo-fuzz`. cargo-fuzz wants
## nightly compiler flags; RUSTC_BOOTSTRAP=1 lets the stable compiler accept them.
FUZZ_SECONDS ?= 60
fuzz:
	cd fuzz && for target in protocol static_path; do \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$target -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

## The page in Debian's chromium (needs /usr/bin/chromium and node; see .ci/run).
e2e: build $(E2E)/node_modules
	$(CARGO) build --example cert
	cd $(E2E) && node --test --test-concurrency=1

$(E2E)/node_modules: $(E2E)/package.json $(E2E)/package-lock.json
	cd $(E2E) && $(NPM) ci --no-audit --no-fund --loglevel=error
	touch $@

## The Debian package: target/debian/threadchat_<version>_<arch>.deb, with the
## binary (page inside), the systemd unit and /etc/default/threadchat.
deb:
	@command -v cargo-deb >/dev/null || { echo "cargo-deb is missing: cargo install cargo-deb --locked" >&2; exit 1; }
	$(CARGO) deb

## Installs that package into THIS machine, runs it as its unit would, chats with
## it, then purges it. Needs root and free ports 8000/8001; CI runs it.
deb-test: deb
	THREADCHAT_DEB="$$(ls -t target/debian/threadchat_*_$$(dpkg --print-architecture).deb | head -n 1)" \
		$(CARGO) test --test package -- --ignored

## Debian packages for a Raspberry Pi, cross-built on this x86_64 Debian machine
## with Debian's own Rust (arm/toolchain.sh installs it, with root):
## target/debian/threadchat_<version>_arm64.deb (64-bit Raspberry Pi OS) and
## _armhf.deb (32-bit, ARMv7: Pi 2 and later).
deb-arm64 deb-armhf: deb-%:
	arm/build.sh $*

## Both packages booted in emulated ARM machines (qemu-system, a Debian kernel) and
## tested from this host through forwarded ports, then the unit tests built for
## armhf and run in one: 32 bits is where usize arithmetic breaks. About 15 minutes.
test-arm: $(E2E)/node_modules
	arm/build.sh arm64
	arm/build.sh armhf --tests
	arm/test.sh arm64
	arm/test.sh armhf
	arm/test.sh armhf --unit

## The oldest Rust the code builds with: Cargo.toml's rust-version, below which
## cargo refuses to build (let-chains need 1.88).
MSRV := $(shell sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)

## rustfmt check, clippy with warnings denied, and a check with the oldest Rust
## the project claims (rustup installs it: rustup toolchain install $(MSRV)).
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) +$(MSRV) check --workspace --all-targets --locked
# The fuzz targets build with cargo-fuzz (make fuzz); checked here so they
# cannot fall behind the library's types.
	$(CARGO) check --manifest-path fuzz/Cargo.toml --locked

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf $(E2E)/node_modules bench/socketio-anchor/node_modules
