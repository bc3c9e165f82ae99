#!/usr/bin/env bash
# What the ARM builds and boots need, all from Debian's own packages: Debian's Rust
# (rustc-web, with the standard library built for arm64 and armhf), the cross
# linkers, and qemu-system-arm for the emulated machines. rustup cannot fetch
# other targets from every machine; Debian's archive serves all architectures.
# Idempotent: installs only what is missing. Needs root (or sudo).
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# apt-get update, tried three times: a mirror in the middle of a sync serves lists
# that do not match its Release file ("Mirror sync in progress?"). If one list
# still fails, apt keeps the one it had; the installs below then say whether
# what they need is there.
apt_update() {
    local attempt
    for attempt in 1 2 3; do
        as_root apt-get update -qq && return 0
        [ "$attempt" = 3 ] || sleep $((attempt * 20))
    done
    echo "apt-get update failed three times: going on with the lists apt has" >&2
}

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
# Always: arm/test.sh downloads the kernel package the lists name, and a stale list
# names a version the archive no longer has.
apt_update
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Debian's rustc must be as new as the code needs (Cargo.toml's rust-version):
# bookworm's main archive alone has 1.85, its security archive 1.96.
needed=$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' "$(dirname "$0")/../Cargo.toml")
have=$(/usr/bin/rustc --version | cut -d' ' -f2)
if [ "$(printf '%s\n%s\n' "$needed" "$have" | sort -V | head -n1)" != "$needed" ]; then
    echo "arm/toolchain.sh: Debian's rustc is $have, the code needs $needed" \
        "(is the security archive in the apt sources?)" >&2
    exit 1
fi
