#!/usr/bin/env bash
# Builds the lab's guests once and caches them under target/lab-guest/:
#   vmlinuz-cloud  + initrd-cloud.cpio.gz    Debian's cloud kernel (virtio-net)
#   vmlinuz-generic + initrd-generic.cpio.gz Debian's generic kernel (e1000; the
#                                            cloud kernel has no e1000 driver)
# Each kernel comes from its Debian package, unpacked with `dpkg-deb -x` (not
# installed); the initramfs is busybox-static plus the NIC's modules, and an
# /init that brings eth0 up with the address on the kernel command line
# (lab_ip=...), prints LAB-READY on the serial console and idles.
#
#   tests/lab/guest.sh DIR      (DIR: the cache, e.g. target/lab-guest)
set -euo pipefail
dir=${1:?usage: guest.sh CACHE_DIR}
mkdir -p "$dir" && dir=$(cd "$dir" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../../scripts/lib.sh"
need_packages busybox-static cpio qemu-system-x86 iproute2 ethtool tcpdump kmod

# The kernel package a metapackage points at (linux-image-cloud-amd64 ->
# linux-image-6.1.0-N-cloud-amd64).
kernel_of() { apt-cache depends "$1" 2>/dev/null | sed -n 's/.*Depends: \(linux-image-[0-9].*\)$/\1/p' | head -1; }

build() {
    local flavor=$1 meta=$2 mods=$3
    [ -s "$dir/vmlinuz-$flavor" ] && [ -s "$dir/initrd-$flavor.cpio.gz" ] && return 0
    mkdir -p "$dir"
    local work
    work=$(mktemp -d "$dir/build.XXXXXX")
    local pkg
    pkg=$(kernel_of "$meta")
    if [ -z "$pkg" ]; then
        apt-get update -qq
        pkg=$(kernel_of "$meta")
    fi
    [ -n "$pkg" ] || { echo "guest.sh: apt knows no $meta" >&2; exit 1; }
    (cd "$work" && apt-get download "$pkg" >/dev/null 2>&1) || { echo "guest.sh: apt-get download $pkg failed" >&2; exit 1; }
    dpkg-deb -x "$work"/*.deb "$work/x"
    local kver
    kver=$(ls "$work/x/lib/modules")
    depmod -b "$work/x" "$kver"
    local root="$work/root"
    mkdir -p "$root"/{bin,proc,sys,dev,tmp,lib/modules/"$kver"}
    cp /bin/busybox "$root/bin/busybox"
    # The NIC's modules and what they depend on, in load order.
    local m list=""
    for m in $mods; do
        list="$list $(modprobe -d "$work/x" -S "$kver" --show-depends "$m" | awk '$1=="insmod"{print $2}')"
    done
    : >"$root/modules"
    for m in $list; do
        local rel=${m#"$work/x"}
        grep -qx "$rel" "$root/modules" && continue
        mkdir -p "$root$(dirname "$rel")"
        cp "$m" "$root$rel"
        echo "$rel" >>"$root/modules"
    done
    cat >"$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
while read -r m; do insmod "$m"; done </modules
ip=$(sed -n 's/.*lab_ip=\([0-9.]*\).*/\1/p' /proc/cmdline)
ip link set lo up
ip link set eth0 up
ip addr add "$ip/24" dev eth0
echo LAB-READY >/dev/ttyS0
exec sh -c 'while :; do sleep 3600; done'
INIT
    chmod 0755 "$root/init"
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.cpio.gz"
    mv "$work/x/boot/vmlinuz-$kver" "$dir/vmlinuz-$flavor"
    mv "$work/initrd.cpio.gz" "$dir/initrd-$flavor.cpio.gz"
    rm -rf "$work"
}

build cloud linux-image-cloud-amd64 "virtio_pci virtio_net"
build generic linux-image-amd64 "e1000"
