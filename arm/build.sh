#!/usr/bin/env bash
# Cross-builds threadchat for a Raspberry Pi and packages it:
#   arm/build.sh arm64|armhf [--tests]
# writes target/debian/threadchat_<version>_<arch>.deb. With --tests it also builds
# the unit tests for that target and writes the test binary's path to
# target/arm/<triple>/unit-tests (arm/test.sh --unit boots it).
#
# It uses Debian's Rust (/usr/bin/cargo, rustc-web: arm/toolchain.sh installs it),
# not rustup's, whose other targets cannot be fetched from every machine. Its own
# target directory (target/arm) keeps the two compilers' builds apart.
set -euo pipefail
cd "$(dirname "$0")/.."

arch=${1:?usage: arm/build.sh arm64|armhf [--tests]}
tests=${2:-}
case "$arch" in
    arm64) triple=aarch64-unknown-linux-gnu gnu=aarch64-linux-gnu ;;
    armhf) triple=armv7-unknown-linux-gnueabihf gnu=arm-linux-gnueabihf ;;
    *) echo "arm/build.sh: no such architecture: $arch (arm64 or armhf)" >&2; exit 2 ;;
esac
for tool in /usr/bin/cargo /usr/bin/rustc "/usr/bin/$gnu-gcc"; do
    [ -x "$tool" ] || { echo "arm/build.sh: $tool is missing: run arm/toolchain.sh" >&2; exit 1; }
done
command -v cargo-deb >/dev/null || { echo "cargo-deb is missing: cargo install cargo-deb --locked" >&2; exit 1; }

upper=$(echo "$triple" | tr 'a-z-' 'A-Z_')
export CARGO_TARGET_DIR=target/arm
export RUSTC=/usr/bin/rustc
export "CARGO_TARGET_${upper}_LINKER=$gnu-gcc"
export "CC_${triple//-/_}=$gnu-gcc" "AR_${triple//-/_}=$gnu-ar"

/usr/bin/cargo build --release --locked --target "$triple"
cargo-deb --target "$triple" --no-build --no-strip --output target/debian/
ls -l target/debian/threadchat_*_"$arch".deb

if [ "$tests" = --tests ]; then
    # The library's unit tests, in a debug build: arithmetic that overflows a
    # 32-bit usize panics there instead of wrapping.
    /usr/bin/cargo test --locked --target "$triple" --lib --no-run \
        --message-format=json \
        | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1 > "target/arm/$triple/unit-tests"
    [ -s "target/arm/$triple/unit-tests" ] || { echo "arm/build.sh: no unit-test binary" >&2; exit 1; }
    echo "unit tests: $(cat "target/arm/$triple/unit-tests")"
fi
