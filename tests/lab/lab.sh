#!/usr/bin/env bash
# The migration lab: real QEMU guests live-migrated between three
# "hypervisors" over a kernel VXLAN overlay, watched by `vmsentry live` on
# the underlay, with QEMU's own figures beside what vmsentry saw.
#
#   tests/lab/lab.sh OUT_DIR
#
# Network namespaces (all prefixed lab-): lab-u holds the underlay bridge
# labu-br; lab-h1..lab-h3 are the hypervisors, each with an underlay veth
# (10.78.0.N, MAC 52:54:00:4c:ff:0N, MTU 1550), a VXLAN device (VNI 5001,
# port 4789, head-end replication to the other two VTEPs), a bridge br0
# (192.168.77.25N) and one tap per guest. Segmentation and receive offloads
# are off everywhere, so the wire carries wire-sized segments.
#
# Guests (tests/lab/guest.sh builds and caches them under target/lab-guest):
#   lab-virtio  52:54:00:4c:00:0a 192.168.77.10  Debian cloud kernel, virtio-net
#   lab-e1000   52:54:00:4c:00:0b 192.168.77.11  Debian generic kernel, e1000
#   lab-noos    52:54:00:4c:00:0c                no OS (firmware idle), virtio-net
# all 128 MiB, TCG, on lab-h1 at first.
#
# The run, in order (each move's query-migrate, and the instants of QEMU's
# STOP event at the source and RESUME at the destination, go to
# OUT_DIR/migrations.jsonl):
#   busy     lab-virtio h1 -> h2, answering `ping -i 0.002` from h3
#   back     lab-virtio h2 -> h1, pinged every 200 ms from h3
#   pair     lab-e1000 and lab-noos h1 -> h2 at once; a token authorizes lab-e1000's
#   unsigned lab-virtio h1 -> h3 (h3's signature is for another MAC), then pinged
#            every 500 ms from h2 for 4 s
# OUT_DIR also gets rules/ (the cluster key, hypervisor signatures from it, the
# token), events.jsonl (vmsentry live's events, 100 ms windows),
# underlay.pcap (tcpdump on labu-br, 128-byte snaplen), and each QEMU's log.
#
# One lab at a time (fixed names): an exclusive flock on $LAB_LOCK, waiting up
# to 10 minutes. Everything started here is stopped, and the namespaces
# removed, on any exit (trap).
set -euo pipefail
out=${1:?usage: lab.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
VMSENTRY=${VMSENTRY:-$repo/target/debug/vmsentry}
LOCK=${LAB_LOCK:-/run/lock/vmsentry-lab.lock}
GUEST=${LAB_GUEST_DIR:-$repo/target/lab-guest}
QMP="python3 $here/qmp.py"

. "$repo/scripts/lib.sh"
need_packages iproute2 iputils-ping tcpdump ethtool python3 qemu-system-x86 busybox-static cpio kmod jq
"$here/guest.sh" "$GUEST"

mkdir -p "$out"
out=$(cd "$out" && pwd)
mkdir -p "$(dirname "$LOCK")"
exec 9>"$LOCK"
flock -w 600 9 || { echo "lab.sh: another lab held $LOCK for 10 minutes" >&2; exit 1; }

NS="lab-u lab-h1 lab-h2 lab-h3"
pids=()
sentry=
dump=
# The QEMUs started and not yet stopped by the lab, by instance.
declare -A running=()
# alive PID: the process exists and is not a zombie.
alive() { [ -r "/proc/$1/stat" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]; }
cleanup() {
    local rc=$?
    set +e
    # A QEMU that exited on its own (its guest's kernel panicked under TCG,
    # so `-no-reboot` ends it, or its migration failed) is named, with its
    # log and the end of its serial console, in OUT_DIR/qemu-exited.
    if [ "$rc" != 0 ] && [ "$rc" != 130 ]; then
        local inst v
        for inst in "${!running[@]}"; do
            v="pid_$inst"
            alive "${!v}" && continue
            {
                echo "== QEMU $inst exited on its own"
                tail -n 5 "$out/$inst.log" 2>/dev/null
                echo "-- its serial console's end:"
                tail -n 25 "$out/$inst.serial" 2>/dev/null
            } >>"$out/qemu-exited"
            echo "lab.sh: QEMU $inst exited on its own (see $out/qemu-exited)" >&2
        done
    fi
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    # vmsentry closes its last windows on SIGINT; tcpdump flushes.
    [ -n "$sentry" ] && kill -INT "$sentry" 2>/dev/null
    [ -n "$dump" ] && kill -INT "$dump" 2>/dev/null
    for p in "${pids[@]}" $sentry $dump; do
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null
    done
    wait 2>/dev/null
    for n in $NS; do ip netns del "$n" 2>/dev/null; done
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "lab: $(date +%T.%N | cut -c1-12) $*" >&2; }
in_ns() { local n=$1; shift; ip netns exec "$n" "$@"; }
offloads_off() { in_ns "$1" ethtool -K "$2" tso off gso off gro off >/dev/null 2>&1 || true; }

# ---- network ----
for n in $NS; do
    ip netns del "$n" 2>/dev/null || true # left by a run that was killed
    ip netns add "$n"
    ip -n "$n" link set lo up
done
ip -n lab-u link add labu-br type bridge
ip -n lab-u link set labu-br up
for h in 1 2 3; do
    ns=lab-h$h
    ip link add lab-u$h netns lab-u type veth peer name lab-h$h netns $ns
    ip -n lab-u link set lab-u$h mtu 1550 master labu-br up
    ip -n $ns link set lab-h$h address 52:54:00:4c:ff:0$h mtu 1550 up
    ip -n $ns addr add 10.78.0.$h/24 dev lab-h$h
    ip -n $ns link add vx0 type vxlan id 5001 dstport 4789 local 10.78.0.$h dev lab-h$h
    for o in 1 2 3; do
        [ $o = $h ] || in_ns $ns bridge fdb append 00:00:00:00:00:00 dev vx0 dst 10.78.0.$o
    done
    ip -n $ns link add br0 type bridge
    ip -n $ns link set vx0 master br0 up
    for t in a b c; do
        ip -n $ns tuntap add dev tap-$t mode tap
        ip -n $ns link set tap-$t master br0 up
        offloads_off $ns tap-$t
    done
    ip -n $ns addr add 192.168.77.25$h/24 dev br0
    ip -n $ns link set br0 up
    for d in lab-h$h vx0 br0; do offloads_off $ns $d; done
    offloads_off lab-u lab-u$h
done
offloads_off lab-u labu-br

# ---- rules: the cluster key, signatures made with it ----
r=$out/rules
rm -rf "$r" && mkdir -p "$r/tokens"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$r/cluster.key"
chmod 0600 "$r/cluster.key"
sign() { "$VMSENTRY" sign --key-file "$r/cluster.key" --cluster lab --id "$1" --mac "$2"; }
{
    cat <<TOML
# Written by tests/lab/lab.sh.
[cluster]
name = "lab"
key_file = "cluster.key"

[window]
length_ms = 100

[thresholds]
medium_bps = 400_000_000
high_bps = 800_000_000
medium_pps = 100_000
high_pps = 200_000
clear_windows = 3

[migration]
tokens_dir = "tokens"

[policy]
MEDIUM = { signed = "alert", unsigned = "quarantine" }
HIGH = { signed = "migrate", unsigned = "quarantine" }
TOML
    for h in 1 2 3; do
        mac=52:54:00:4c:ff:0$h
        # lab-3's signature is for another MAC: unsigned.
        signed_mac=$mac
        [ $h = 3 ] && signed_mac=52:54:00:4c:ff:99
        printf '\n[[hypervisor]]\nid = "lab-%s"\nmacs = ["%s"]\nips = ["10.78.0.%s"]\nsignature = "%s"\n' \
            $h $mac $h "$(sign lab-$h $signed_mac)"
    done
    for v in virtio:0a e1000:0b noos:0c; do
        printf '\n[[vm]]\nname = "lab-%s"\nmac = "52:54:00:4c:00:%s"\nram_mb = 128\nhypervisor = "lab-1"\n' ${v%:*} ${v#*:}
    done
} >"$r/vmsentry.toml"
"$VMSENTRY" authorize --key-file "$r/cluster.key" --vm 52:54:00:4c:00:0b --to lab-2 --ttl 10m >"$r/tokens/lab-e1000"
"$VMSENTRY" check --rules "$r" >"$out/check.txt" 2>&1 || { cat "$out/check.txt" >&2; exit 1; }

# ---- the underlay's watchers ----
ip netns exec lab-u tcpdump -i labu-br -s 128 -U -n -w "$out/underlay.pcap" 2>"$out/tcpdump.log" &
dump=$!
ip netns exec lab-u "$VMSENTRY" live --interface labu-br --rules "$r" --events "$out/events.jsonl" \
    --listen 127.0.0.1:9807 --threads 2 --snaplen 128 --buffer-mb 256 2>"$out/vmsentry.log" &
sentry=$!
for _ in $(seq 200); do
    grep -q "listening on" "$out/tcpdump.log" 2>/dev/null &&
        in_ns lab-u bash -c 'exec 3<>/dev/tcp/127.0.0.1/9807' 2>/dev/null && break
    kill -0 $sentry 2>/dev/null || { cat "$out/vmsentry.log" >&2; exit 1; }
    sleep 0.1
done

# ---- guests ----
# qemu INSTANCE HV KIND MAC IP TAP [INCOMING_PORT]
qemu() {
    local inst=$1 h=$2 kind=$3 mac=$4 ip=$5 tap=$6 port=${7:-}
    local a=(-accel tcg -m 128 -display none -nodefaults -no-reboot
        -serial "file:$out/$inst.serial" -qmp "unix:$out/$inst.qmp,server=on,wait=off"
        -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no")
    case $kind in
    virtio) a+=(-device "virtio-net-pci,netdev=n0,mac=$mac,romfile=" -kernel "$GUEST/vmlinuz-cloud"
        -initrd "$GUEST/initrd-cloud.cpio.gz" -append "console=ttyS0 quiet panic=-1 lab_ip=$ip") ;;
    e1000) a+=(-device "e1000,netdev=n0,mac=$mac,romfile=" -kernel "$GUEST/vmlinuz-generic"
        -initrd "$GUEST/initrd-generic.cpio.gz" -append "console=ttyS0 quiet panic=-1 lab_ip=$ip") ;;
    noos) a+=(-device "virtio-net-pci,netdev=n0,mac=$mac,romfile=") ;;
    esac
    [ -n "$port" ] && a+=(-incoming "tcp:10.78.0.$h:$port")
    ip netns exec lab-h$h qemu-system-x86_64 "${a[@]}" >"$out/$inst.log" 2>&1 &
    pids+=($!)
    printf -v "pid_$inst" %s $!
    running[$inst]=1
}
# Background processes are started with `ip netns exec` itself (it execs),
# never through a shell function, so $! is the process.
stop() {
    local v="pid_$1"
    unset "running[$1]"
    kill "${!v}" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "${!v}" 2>/dev/null || return 0; sleep 0.05; done
    kill -9 "${!v}" 2>/dev/null || true
}
ready() {
    for _ in $(seq 1200); do
        grep -q LAB-READY "$out/$1.serial" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "lab.sh: guest $1 did not boot in 120 s" >&2
    exit 1
}
# migrate TAG VM SRC DST FROM_HV TO_HV PORT: start it; wait_migrate TAG collects it.
migrate() {
    local tag=$1 vm=$2 src=$3 dst=$4 from=$5 to=$6 port=$7
    # 48 MiB/s: the sender then leaves the guest (and the destination) CPU
    # on this 2-core machine, so the guest keeps its pace until QEMU stops it.
    # Both QMP connections are open before the move: the destination's sees
    # its RESUME event, the source's (which migrates and waits) its STOP.
    rm -f "$out/$tag.resume.connected"
    $QMP "$out/$dst.qmp" wait-status running "$out/$tag.resume.connected" >"$out/$tag.resume.json" &
    local waiter=$!
    for _ in $(seq 600); do
        [ -e "$out/$tag.resume.connected" ] && break
        kill -0 $waiter 2>/dev/null || { echo "lab.sh: $dst's QMP: $(cat "$out/$dst.log")" >&2; exit 1; }
        sleep 0.05
    done
    [ -e "$out/$tag.resume.connected" ] || { kill $waiter; echo "lab.sh: $dst's QMP did not answer in 30 s" >&2; exit 1; }
    $QMP "$out/$src.qmp" migrate "tcp:10.78.0.${to#lab-}:$port" 50331648 >"$out/$tag.query-migrate.json" &
    printf '%s %s %s %s %s %s %s %s\n' "$tag" "$vm" "$src" "$dst" "$from" "$to" "$!" "$waiter" >"$out/$tag.pending"
    log "migrating $tag: $vm $from -> $to"
}
wait_migrate() {
    local tag vm src dst from to mover waiter
    read -r tag vm src dst from to mover waiter <"$out/$1.pending"
    wait "$mover" ||
        { echo "lab.sh: migration $tag failed: $(cat "$out/$tag.query-migrate.json")" >&2; exit 1; }
    wait "$waiter" || { echo "lab.sh: $dst did not resume after $tag" >&2; exit 1; }
    # "stop"/"resume": QEMU's STOP event at the source and RESUME at the
    # destination, in seconds of the clock that stamps the capture.
    printf '{"tag":"%s","vm":"%s","from":"%s","to":"%s","qemu":%s,"stop":%s,"resume":%s}\n' \
        "$tag" "$vm" "$from" "$to" "$(cat "$out/$tag.query-migrate.json")" \
        "$(jq '.events.STOP // null' "$out/$tag.query-migrate.json")" \
        "$(jq '.events.RESUME // null' "$out/$tag.resume.json")" >>"$out/migrations.jsonl"
    stop "$src"
    log "migrated $tag"
}
pinger() { # HV INTERVAL IP
    ip netns exec lab-h$1 ping -q -n -i "$2" "$3" >/dev/null 2>&1 &
    pids+=($!)
    ping_pid=$!
}

: >"$out/migrations.jsonl"
A=52:54:00:4c:00:0a B=52:54:00:4c:00:0b C=52:54:00:4c:00:0c
# The pair's guests boot while the busy move is prepared, but only lab-virtio
# and its destination run during that move (less CPU taken from it).
qemu a1 1 virtio $A 192.168.77.10 tap-a
qemu a2 2 virtio $A 192.168.77.10 tap-a 49152
ready a1
# Booted is not yet answering: wait for an echo reply from each Linux guest.
answers() {
    for _ in $(seq 600); do
        in_ns lab-h3 ping -c 1 -W 0.2 -q "$1" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "lab.sh: $1 did not answer a ping within 2 minutes" >&2
    exit 1
}
answers 192.168.77.10
log "lab-virtio answers"

# busy: a 2 ms ping flood from h3 answered by lab-virtio.
pinger 3 0.002 192.168.77.10
sleep 2
migrate busy $A a1 a2 lab-1 lab-2 49152
wait_migrate busy
sleep 2
kill $ping_pid

# back: pinged every 200 ms.
qemu a1b 1 virtio $A 192.168.77.10 tap-a 49155
pinger 3 0.2 192.168.77.10
sleep 1.5
migrate back $A a2 a1b lab-2 lab-1 49155
wait_migrate back
sleep 1
kill $ping_pid

# pair: lab-e1000 (pinged every 20 ms) and lab-noos at once.
qemu b1 1 e1000 $B 192.168.77.11 tap-b
qemu c1 1 noos $C "" tap-c
qemu b2 2 e1000 $B 192.168.77.11 tap-b 49153
qemu c2 2 noos $C "" tap-c 49154
ready b1
answers 192.168.77.11
pinger 3 0.02 192.168.77.11
sleep 1.5
migrate pair-e1000 $B b1 b2 lab-1 lab-2 49153
migrate pair-noos $C c1 c2 lab-1 lab-2 49154
wait_migrate pair-e1000
wait_migrate pair-noos
sleep 1
kill $ping_pid

# unsigned: lab-virtio to lab-3, pinged every 500 ms from h2.
qemu a3 3 virtio $A 192.168.77.10 tap-a 49156
pinger 2 0.5 192.168.77.10
sleep 1.5
migrate unsigned $A a1b a3 lab-1 lab-3 49156
wait_migrate unsigned
sleep 4
kill $ping_pid
sleep 0.5
log "done"
