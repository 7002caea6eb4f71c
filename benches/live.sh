#!/usr/bin/env bash
# Live capture throughput: the highest rate `vmsentry live` takes on a veth pair
# without losing a frame, next to `tcpdump -w /dev/null` on the same veth in the
# same run. Needs root, iproute2 and tcpreplay. Usage: benches/live.sh [FRAMES]
# Frames are replayed with tcpreplay from a network namespace at increasing
# rates; a rate is drop-free when the capture saw every frame sent.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
cargo build --release --quiet
# The dev-only generator, on its own (so vmsentry is built without `synth`).
cargo build --release --quiet -p vmsentry-synth
BIN=target/release/vmsentry
W=$(mktemp -d)
NS=vmsentry-bench; A=vbenchA; B=vbenchB
cleanup() { ip link del $A 2>/dev/null || true; ip netns del $NS 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
cleanup; W=$(mktemp -d)
ip netns add $NS
ip link add $A type veth peer name $B
ip link set $B netns $NS
sysctl -qw net.ipv6.conf.$A.disable_ipv6=1
ip link set $A mtu 9000 up
ip netns exec $NS ip link set $B mtu 9000 up
# Mixed sizes as in the replay benchmark, first N frames.
target/release/vmsentry-synth bench "$W/all.pcap" "$N"
cp -r rules "$W/rules"; chmod 600 "$W/rules/cluster.key"; rm -f "$W/rules/tokens/used-tokens"
FILTER="ether host 52:54:00:ff:00:01"

vmsentry_at() { # rate -> frames captured
    $BIN live --interface $A --bpf "$FILTER" --rules "$W/rules" --listen 127.0.0.1:0 --events "$W/ev.jsonl" --buffer-mb 64 2>"$W/err" &
    local pid=$!
    sleep 1.5
    ip netns exec $NS tcpreplay -i $B $1 "$W/all.pcap" 2>&1 | sed -n 's/.*Rated: [0-9.]* Bps, [0-9.]* Mbps, \([0-9.]*\) pps.*/\1/p' > "$W/rate"
    sleep 1.5
    kill -TERM $pid; wait $pid
    python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["packets"])' "$W/ev.jsonl"
}
tcpdump_at() {
    tcpdump -i $A -B 65536 -s 512 -w /dev/null "$FILTER" 2>"$W/td" &
    local pid=$!
    sleep 1.5
    ip netns exec $NS tcpreplay -q -i $B $1 "$W/all.pcap" >/dev/null 2>&1
    sleep 1.5
    kill -INT $pid; wait $pid || true
    sed -n 's/^\([0-9]*\) packets captured.*/\1/p' "$W/td"
}
echo "live capture on a veth pair, $N frames per run ($(nproc) cores)"
printf '%-12s %16s %16s\n' rate vmsentry tcpdump
best_v=0; best_t=0
for pps in 50000 100000 200000 300000 400000 600000 topspeed; do
    opt="--pps $pps"; [ $pps = topspeed ] && opt="--topspeed"
    v=$(vmsentry_at "$opt"); t=$(tcpdump_at "$opt")
    printf '%-12s %10s/%-6s %10s/%-6s  (tcpreplay sent at %s pps)\n' $pps "$v" "$N" "$t" "$N" "$(cat "$W/rate")"
    sent=$(cut -d. -f1 "$W/rate")
    [ "$v" = "$N" ] && [ "$sent" -gt "$best_v" ] && best_v=$sent
    [ "$t" = "$N" ] && [ "$sent" -gt "$best_t" ] && best_t=$sent
done
echo "highest drop-free rate sent: vmsentry $best_v pps, tcpdump $best_t pps"
echo "(when both equal tcpreplay's top speed, the sender was the limit, not the capture)"
