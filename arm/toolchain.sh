#!/usr/bin/env bash
# What the ARM builds and boots need, all from Debian's own packages: Debian's Rust
# (rustc-web, with the standard library built for arm64 and armhf), the cross
# linkers, and qemu-system-arm for the emulated machines. rustup cannot fetch
# other targets from every machine; Debian's archive serves all architectures.
# Idempotent: installs only what is missing. Needs root (or sudo).
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

added=no
for arch in arm64 armhf; do
    if ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
        as_root dpkg --add-architecture "$arch"
        added=yes
    fi
done

packages=(
    rustc-web cargo-web                                 # Rust 1.96, Debian's build
    libstd-rust-web-dev:arm64 libstd-rust-web-dev:armhf # its std for each target
    gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf       # linkers and C compilers
    libc6-dev-arm64-cross libc6-dev-armhf-cross
    dpkg-dev                                            # dpkg-shlibdeps, for the Depends line
    qemu-system-arm                                     # qemu-system-aarch64 and -arm
    cpio                                                # the guest's initramfs
)
missing=()
for package in "${packages[@]}"; do
    installed "$package" || missing+=("$package")
done
if [ "$added" = yes ] || [ ${#missing[@]} -gt 0 ]; then
    as_root apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
