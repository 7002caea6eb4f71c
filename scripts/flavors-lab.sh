#!/usr/bin/env bash
# The first paper's per-flavor migration figures (downtime, total migration
# time, data moved), for real: Linux guests of three flavors, each running a
# memory dirtier at its own rate, each live-migrated once with libvirt
# between the two nodes of scripts/mtd-lab.sh, measured by `vmsentry live`
# on the link, with QEMU's own figures (`virsh domjobinfo --completed`)
# beside them in `vmsentry report`. Run by hand (as root), not in CI; see
# docs/flavors/README.md.
#
#   scripts/flavors-lab.sh OUT_DIR [ROUNDS]
#
# OUT_DIR gets events.jsonl (vmsentry's), qemu.jsonl and qemu.tsv (QEMU's
# figures), numbers.tsv (both, per migration), overlay.pcap (the guests'
# frames on the link, 128-byte snaplen), serial/ (the guests' consoles),
# report/ and report.png. ROUNDS (default 3): migrations per flavor, each
# of a freshly booted guest from node a to node b. The guest
# (Debian's cloud kernel from its package, unpacked with dpkg-deb, and a
# busybox initramfs with scripts/flavors/dirtier.c) is cached in
# target/flavors-guest/.
set -euo pipefail
out=${1:?usage: flavors-lab.sh OUT_DIR [ROUNDS]}
rounds=${2:-3}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
. "$here/lib.sh"
need_packages busybox-static cpio gcc libc6-dev kmod qemu-system-x86 libvirt-daemon-system \
    libvirt-daemon-driver-qemu libvirt-clients iproute2 iputils-ping ethtool tcpdump jq chromium
mkdir -p "$out" && out=$(cd "$out" && pwd)
cache=$repo/target/flavors-guest
mkdir -p "$cache"

# Flavors: name, RAM MiB, working set MiB, dirty rate MiB/s, MAC (its last
# octet's high digit is the round), guest IP.
# FLAVORS (one such line each) replaces them, e.g. for an experiment.
flavors=(
    "m1.small 128 32 4 52:54:00:78:02:01 10.78.1.21"
    "m1.medium 256 96 16 52:54:00:78:02:02 10.78.1.22"
    "m1.large 512 256 32 52:54:00:78:02:03 10.78.1.23"
)
if [ -n "${FLAVORS:-}" ]; then
    mapfile -t flavors <<<"$FLAVORS"
fi

# Round K's guest of a flavor: the flavor's MAC with K in its last octet's high digit.
guest_mac() { printf '%s%x%s' "${1%??}" "$2" "${1: -1}"; }

build_guest() {
    [ -s "$cache/vmlinuz" ] && [ -s "$cache/initrd.cpio.gz" ] && return 0
    local work pkg kver root m rel list=""
    work=$(mktemp -d "$cache/build.XXXXXX")
    pkg=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/.*Depends: \(linux-image-[0-9].*\)$/\1/p' | head -1)
    (cd "$work" && apt-get download "$pkg" >/dev/null)
    dpkg-deb -x "$work"/*.deb "$work/x"
    kver=$(ls "$work/x/lib/modules")
    depmod -b "$work/x" "$kver"
    root=$work/root
    mkdir -p "$root"/{bin,proc,sys,dev,tmp}
    cp /bin/busybox "$root/bin/busybox"
    gcc -static -O2 -Wall -o "$root/bin/dirtier" "$here/flavors/dirtier.c"
    for m in virtio_pci virtio_net; do
        list="$list $(modprobe -d "$work/x" -S "$kver" --show-depends "$m" | awk '$1=="insmod"{print $2}')"
    done
    : >"$root/modules"
    for m in $list; do
        rel=${m#"$work/x"}
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
arg() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" /proc/cmdline; }
ip link set lo up
ip link set eth0 up
ip addr add "$(arg mtdl_ip)/24" dev eth0
/bin/dirtier "$(arg mtdl_ws)" "$(arg mtdl_rate)" 10.78.1.1 10.78.1.2 &
echo MTDL-READY >/dev/ttyS0
exec sh -c 'while :; do sleep 3600; done'
INIT
    chmod 0755 "$root/init"
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.cpio.gz"
    mv "$work/x/boot/vmlinuz-$kver" "$cache/vmlinuz"
    mv "$work/initrd.cpio.gz" "$cache/initrd.cpio.gz"
    echo "$pkg" >"$cache/kernel-package"
    rm -rf "$work"
}
build_guest

(cd "$repo" && cargo build --release --bin vmsentry >&2)
vms=$repo/target/release/vmsentry
lab=$(mktemp -d /tmp/flavors-lab.XXXXXX)
cleanup() {
    set +e
    if [ -n "${sentry:-}" ]; then
        kill -TERM "$sentry" 2>/dev/null
        wait "$sentry" 2>/dev/null
    fi
    for p in ${dump:-} ${ping_a:-} ${ping_b:-}; do kill "$p" 2>/dev/null; done
    "$here/mtd-lab.sh" down "$lab" || true
    rm -rf "$lab"
}
trap cleanup EXIT
"$here/mtd-lab.sh" up "$lab"
# Each node's bridge gets an address, the dirtier's two peers: wherever the
# guest runs, one of its two streams crosses the link.
ip -n mtdl-a addr add 10.78.1.1/24 dev mtdlbr0
ip -n mtdl-b addr add 10.78.1.2/24 dev mtdlbr0
on() { "$here/mtd-lab.sh" exec "$lab" "$@"; }
# virsh on node N's own daemon, through its socket: nothing on the link but
# the migrations (a client on one node talking TCP to the other would be
# traffic between the two hypervisors on libvirt's port, as a migration is).
virsh_on() { local n=$1; shift; on "$n" virsh -q -c qemu:///system "$@"; }

rules=$lab/rules
mkdir -p "$rules"
install -m 0600 "$repo/rules/cluster.key" "$rules/cluster.key"
sig() { "$vms" sign --key-file "$rules/cluster.key" --cluster lab --id "$1" --mac "$2"; }
{
    cat <<TOML
[cluster]
name = "lab"
key_file = "cluster.key"

[thresholds]
medium_bps = 800_000_000
high_bps = 900_000_000
medium_pps = 300_000
high_pps = 900_000

[[hypervisor]]
id = "mtdl-a"
macs = ["52:54:00:78:00:01"]
ips = ["10.78.0.1"]
signature = "$(sig mtdl-a 52:54:00:78:00:01)"

[[hypervisor]]
id = "mtdl-b"
macs = ["52:54:00:78:00:02"]
ips = ["10.78.0.2"]
signature = "$(sig mtdl-b 52:54:00:78:00:02)"
TOML
    for f in "${flavors[@]}"; do
        read -r name ram _ _ mac0 _ <<<"$f"
        for k in $(seq "$rounds"); do
            printf '\n[[vm]]\nname = "%s"\nmac = "%s"\nram_mb = %s\nflavor = "%s"\nhypervisor = "mtdl-a"\n' \
                "guest-$ram-$k" "$(guest_mac "$mac0" "$k")" "$ram" "$name"
        done
    done
} >"$rules/vmsentry.toml"
"$vms" check --rules "$rules" >&2

# (mtd-lab.sh execs into vmsentry: $! is vmsentry's pid.)
"$here/mtd-lab.sh" exec "$lab" a "$vms" live --interface mtdl-a0 --listen 127.0.0.1:0 --rules "$rules" --events "$out/events.jsonl" \
    2>"$out/vmsentry.log" &
sentry=$!
until grep -q "capturing on" "$out/vmsentry.log"; do sleep 0.2; done
# The overlay's frames (the guests'), headers only, to check the wire's
# figures by hand.
ip netns exec mtdl-a tcpdump -i mtdl-a0 -s 128 -U -n -w "$out/overlay.pcap" udp port 4789 2>/dev/null &
dump=$!

: >"$out/qemu.jsonl"
printf 'vm\tflavor\tfrom\tto\tqemu_total_ms\tqemu_downtime_ms\tqemu_bytes\n' >"$out/qemu.tsv"
mkdir -p "$out/serial"
for f in "${flavors[@]}"; do
    read -r name ram ws rate mac0 ip <<<"$f"
    for k in $(seq "$rounds"); do
        # A fresh guest (its own MAC) for each move, booted on a, moved to b:
        # see docs/flavors/README.md for why not one guest moved back and forth.
        dom=guest-$ram-$k
        mac=$(guest_mac "$mac0" "$k")
        cat >"$lab/$dom.xml" <<XML
<domain type='qemu'><name>$dom</name><memory unit='MiB'>$ram</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type><kernel>$cache/vmlinuz</kernel><initrd>$cache/initrd.cpio.gz</initrd>
<cmdline>console=ttyS0 quiet mtdl_ip=$ip mtdl_ws=$ws mtdl_rate=$rate</cmdline></os>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>
<interface type='bridge'><source bridge='mtdlbr0'/><mac address='$mac'/><model type='virtio'/><rom bar='off'/></interface>
<serial type='file'><source path='/var/log/libvirt/$dom.serial'/></serial>
<video><model type='none'/></video><memballoon model='none'/></devices></domain>
XML
        # Defined on both nodes (one UUID): the source keeps its definition
        # after the move, and with it the completed job's statistics.
        virsh_on a define "$lab/$dom.xml" >/dev/null
        uuid=$(virsh_on a domuuid "$dom")
        sed "s|<name>$dom</name>|<name>$dom</name><uuid>$uuid</uuid>|" "$lab/$dom.xml" >"$lab/$dom.b.xml"
        virsh_on b define "$lab/$dom.b.xml" >/dev/null
        virsh_on a start "$dom" >/dev/null
        for _ in $(seq 600); do grep -q MTDL-READY "$lab/a/log/$dom.serial" 2>/dev/null && break; sleep 0.1; done
        grep -q MTDL-READY "$lab/a/log/$dom.serial" || { echo "flavors-lab: $dom did not boot" >&2; exit 1; }
        # Both nodes ping the guest every 5 ms: wherever it runs, the replies
        # to the other node cross the link, so the wire sees it busy (its
        # silence across the move is then QEMU's downtime plus at most the
        # gap between replies).
        ip netns exec mtdl-a ping -q -i 0.005 "$ip" >/dev/null 2>&1 &
        ping_a=$!
        ip netns exec mtdl-b ping -q -i 0.005 "$ip" >/dev/null 2>&1 &
        ping_b=$!
        sleep 5 # the working set filled, the dirtier at its rate
        # Peer to peer: the source's daemon calls the destination's.
        virsh_on a migrate --live --p2p "$dom" "qemu+tcp://mtdl-b/system"
        done_at=$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)
        stats=$(virsh_on a domjobinfo "$dom" --completed --keep-completed --rawstats)
        get() { echo "$stats" | sed -n "s/^$1: *//p"; }
        total=$(get time_elapsed) down=$(get downtime) bytes=$(get memory_processed)
        printf '{"type":"qemu_migration","vm":"%s","ts":"%s","total_ms":%s,"downtime_ms":%s,"bytes":%s,"from":"mtdl-a","to":"mtdl-b"}\n' \
            "$mac" "$done_at" "$total" "$down" "$bytes" >>"$out/qemu.jsonl"
        printf '%s\t%s\tmtdl-a\tmtdl-b\t%s\t%s\t%s\n' "$dom" "$name" "$total" "$down" "$bytes" >>"$out/qemu.tsv"
        sleep 3 # the guest answering at b, seen on the wire
        kill "$ping_a" "$ping_b"
        wait "$ping_a" "$ping_b" || true
        ping_a= ping_b=
        virsh_on b destroy "$dom" >/dev/null
        virsh_on a undefine "$dom" >/dev/null
        virsh_on b undefine "$dom" >/dev/null
        cat "$lab/a/log/$dom.serial" "$lab/b/log/$dom.serial" >"$out/serial/$dom.log" 2>/dev/null || true
    done
done
kill -TERM "$sentry"
wait "$sentry" || true
sentry=
kill -TERM "$dump"
wait "$dump" || true
dump=
"$vms" report "$out/events.jsonl" --out "$out/report" --rules "$rules" --qemu-stats "$out/qemu.jsonl"
cp "$rules/vmsentry.toml" "$out/vmsentry.toml"
"$here/flavors/numbers.sh" "$out" >"$out/numbers.tsv"
# The page's top: overview, timeline, tables and the migration figures.
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1500,2400 \
    --screenshot="$out/report.png" "file://$out/report/index.html" >/dev/null 2>&1 || true
echo "flavors-lab: $out" >&2
