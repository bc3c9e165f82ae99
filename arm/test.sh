#!/usr/bin/env bash
# Boots a package built by arm/build.sh in an emulated ARM machine and tests it
# from this host:
#   arm/test.sh arm64|armhf           the packaged server: page, chat, /healthz,
#                                     memory, a clean stop (tests/e2e/guest-check.mjs)
#   arm/test.sh arm64|armhf --unit    the unit tests built by arm/build.sh --tests
#
# Full-system emulation (qemu-system, -M virt), not qemu-user: under qemu-user a
# program's first thread never starts on these machines. Everything in the
# machine comes from Debian's archive (a kernel, busybox) or from the build: an
# initramfs with busybox, the program, its libraries and the network's modules,
# and arm/init as its first process. No disk image, nothing downloaded elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."

arch=${1:?usage: arm/test.sh arm64|armhf [--unit]}
mode=server
[ "${2:-}" = --unit ] && mode=unit
memory=${THREADCHAT_GUEST_MEMORY:-512}
case "$arch" in
    arm64) triple=aarch64-unknown-linux-gnu gnu=aarch64-linux-gnu flavour=arm64
           qemu=(qemu-system-aarch64 -M virt -cpu cortex-a72) ;;
    armhf) triple=armv7-unknown-linux-gnueabihf gnu=arm-linux-gnueabihf flavour=armmp
           qemu=(qemu-system-arm -M virt -cpu cortex-a15) ;;
    *) echo "arm/test.sh: no such architecture: $arch (arm64 or armhf)" >&2; exit 2 ;;
esac
work=target/arm/guest-$arch-$mode
debs=target/arm/debs
rm -rf "$work"
mkdir -p "$work/root" "$debs"

# The kernel and busybox, from Debian's archive for that architecture.
kernel_package=$(apt-cache depends "linux-image-$flavour:$arch" \
    | sed -n "s/^ *Depends: \(linux-image-[0-9][^:]*\).*/\1/p" | head -n 1)
[ -n "$kernel_package" ] || { echo "arm/test.sh: no kernel for $arch (apt-get update?)" >&2; exit 1; }
for package in "$kernel_package:$arch" "busybox-static:$arch"; do
    ls "$debs/${package%%:*}"_*"_$arch.deb" >/dev/null 2>&1 || (cd "$debs" && apt-get download -qq -o APT::Sandbox::User=root "$package")
done
dpkg-deb -x "$(ls "$debs/$kernel_package"_*.deb | sort -V | tail -n 1)" "$work/kernel"
dpkg-deb -x "$(ls "$debs"/busybox-static_*"_$arch.deb" | sort -V | tail -n 1)" "$work/busybox"

# The packaged server: what a Raspberry Pi would install.
package=$(ls -t target/debian/threadchat_*_"$arch".deb 2>/dev/null | head -n 1)
[ -n "$package" ] || { echo "arm/test.sh: no package for $arch: run arm/build.sh $arch" >&2; exit 1; }
[ "$(dpkg-deb -f "$package" Architecture)" = "$arch" ] || { echo "$package is not for $arch" >&2; exit 1; }
depends=$(dpkg-deb -f "$package" Depends)
case "$depends" in
    *libc6*adduser* | *adduser*libc6*) ;;
    *) echo "arm/test.sh: $package depends on \"$depends\": libc6 and adduser expected" >&2; exit 1 ;;
esac
dpkg-deb -x "$package" "$work/package"

root=$work/root
mkdir -p "$root"/{bin,lib,modules,proc,sys,dev,tmp}
cp "$work/busybox/bin/busybox" "$root/bin/busybox"
cp arm/init "$root/init"
cp arm/control "$root/bin/control"
cp "$work/package/usr/bin/threadchat" "$root/program"
echo "$mode" > "$root/mode"
programs=("$root/program")
if [ "$mode" = unit ]; then
    unit_tests=$(cat "target/arm/$triple/unit-tests" 2>/dev/null) \
        || { echo "arm/test.sh: no unit tests for $arch: run arm/build.sh $arch --tests" >&2; exit 1; }
    "$gnu-strip" --strip-debug -o "$root/unit-tests" "$unit_tests"
    programs+=("$root/unit-tests")
    # Tests that compare the compiled-in page with www/ read it where it was built.
    mkdir -p "$root$PWD"
    cp -r www "$root$PWD/"
fi

# The programs' loader and libraries, from the cross toolchain's sysroot (what
# they were linked against).
for program in "${programs[@]}"; do
    interpreter=$("$gnu-readelf" -l "$program" | sed -n 's/.*interpreter: \(.*\)]/\1/p')
    mkdir -p "$root$(dirname "$interpreter")"
    cp -L "/usr/$gnu/lib/$(basename "$interpreter")" "$root$interpreter"
    for library in $("$gnu-readelf" -d "$program" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
        cp -L "/usr/$gnu/lib/$library" "$root/lib/$library"
    done
done

# virtio-net's modules in load order, each after those its .modinfo says it
# depends on. (The kernel package has no modules.dep: depmod runs on install.)
modules_dir=$(ls -d "$work"/kernel/lib/modules/*)
declare -A loaded=()
load() {
    local name=$1 file dependency
    [ -n "${loaded[$name]:-}" ] && return
    loaded[$name]=1
    file=$(find "$modules_dir" \( -name "$name.ko" -o -name "${name//_/-}.ko" \) | head -n 1)
    [ -n "$file" ] || return 0 # built into the kernel
    for dependency in $("$gnu-readelf" -p .modinfo "$file" | sed -n 's/.*depends=//p' | tr ',' ' '); do
        load "$dependency"
    done
    cp "$file" "$root/modules/"
    basename "$file" >> "$root/modules/order"
}
: > "$root/modules/order"
load virtio_mmio
load virtio_net
[ -s "$root/modules/order" ] || grep -q "CONFIG_VIRTIO_NET=y" "$work"/kernel/boot/config-* \
    || { echo "arm/test.sh: virtio_net is neither a module nor built in" >&2; exit 1; }

(cd "$root" && find . | cpio -o -H newc --quiet) | gzip -1 > "$work/initramfs.gz"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http_port=$(free_port) ws_port=$(free_port) control_port=$(free_port)
console=$work/console.log
echo "booting $arch ($mode, $memory MiB); console: $console"
# The guest powers itself off when its program ends; a stuck one is cut off.
timeout "${THREADCHAT_GUEST_TIMEOUT:-900}" "${qemu[@]}" -m "$memory" -smp 2 -nographic -no-reboot \
    -kernel "$(ls "$work"/kernel/boot/vmlinuz-*)" -initrd "$work/initramfs.gz" \
    -append "console=ttyAMA0 rdinit=/init panic=-1 quiet" \
    -netdev "user,id=net,hostfwd=tcp:127.0.0.1:$http_port-:8000,hostfwd=tcp:127.0.0.1:$ws_port-:8001,hostfwd=tcp:127.0.0.1:$control_port-:9000" \
    -device virtio-net-device,netdev=net \
    < /dev/null > "$console" 2>&1 &
qemu_pid=$!
trap 'kill "$qemu_pid" 2>/dev/null || true' EXIT

status=0
if [ "$mode" = server ]; then
    node tests/e2e/guest-check.mjs "$http_port" "$ws_port" "$control_port" "$arch" || {
        status=1
        kill "$qemu_pid" 2>/dev/null || true
    }
fi
qemu_status=0
wait "$qemu_pid" || qemu_status=$?
[ $qemu_status = 124 ] && echo "arm/test.sh: the guest did not stop in time" >&2 && status=1
grep -E "^guest:|threadchat [0-9]|capacity|plan|panicked|test result" "$console" || true
case "$mode" in
    server) grep -q "guest: threadchat exited with 0" "$console" || status=1 ;;
    unit) grep -q "guest: the unit tests exited with 0" "$console" \
        && grep -q "test result: ok. [1-9]" "$console" || status=1 ;;
esac
[ $status = 0 ] && echo "arm/test.sh: $arch $mode passed" || {
    echo "arm/test.sh: $arch $mode FAILED; the console:" >&2
    tail -n 60 "$console" >&2
}
exit $status
