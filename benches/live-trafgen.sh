#!/usr/bin/env bash
# Live capture past tcpreplay's ~270 kpps ceiling: trafgen (netsniff-ng, its
# TX_RING) sends the datacenter mix from a network namespace over a veth pair
# at increasing rates; `vmsentry live` (release build, default threads, its
# default 64 MiB kernel buffer), then `tcpdump -B 65536 -s 512 -w /dev/null`,
# capture on the other end. A rate is drop-free when the capture saw every
# frame sent. Prints, per rate, what trafgen sent (and how fast it really
# went), what each captured, and libpcap's kernel drop counter for each, plus
# vmsentry's own queue drops (summary `queue_dropped`: frames libpcap handed
# over that a full shard queue then dropped; drop-free needs none).
# Needs root, iproute2, netsniff-ng (trafgen, netsniff-ng) and tcpdump.
# Usage: benches/live-trafgen.sh [FRAMES_PER_RUN] [RATES...]  (rates in pps; 0: as fast as trafgen goes)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-400000}
shift || true
RATES=${*:-"100000 200000 300000 400000 600000 800000 1000000 0"}
cargo build --release --quiet --bin vmsentry
cargo build --release --quiet -p vmsentry-synth
BIN=target/release/vmsentry
NS=perf-live; A=perfA; B=perfB
W=$(mktemp -d)
cleanup() {
    [ -n "${CAP:-}" ] && kill "$CAP" 2>/dev/null || true
    ip link del $A 2>/dev/null || true
    ip netns del $NS 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
ip link del $A 2>/dev/null || true; ip netns del $NS 2>/dev/null || true
ip netns add $NS
ip link add $A type veth peer name $B
ip link set $B netns $NS
sysctl -qw net.ipv6.conf.$A.disable_ipv6=1
ip link set $A up
ip netns exec $NS sysctl -qw net.ipv6.conf.$B.disable_ipv6=1
ip netns exec $NS ip link set $B up
# 5 000 frames of the datacenter mix (387 B mean, 38 % under 80 B), sent
# round robin: trafgen's packet list, made by netsniff-ng from the pcap.
target/release/vmsentry-synth dcmix "$W/mix.pcap" --frames 5000 >/dev/null
netsniff-ng --in "$W/mix.pcap" --out "$W/mix.cfg" --silent >/dev/null 2>&1
cp -r rules "$W/rules"; chmod 600 "$W/rules/cluster.key"; rm -f "$W/rules/tokens/used-tokens"
# Every frame trafgen sends, none the host itself might.
FILTER="not ether src $(cat /sys/class/net/$A/address)"

send() { # rate -> "$W/sent": frames that reached $A, the rate they came at, veth rx drops
    local rate=()
    [ "$1" != 0 ] && rate=(-b "${1}pps")
    python3 benches/live_send.py $A "$W/sent" ip netns exec $NS trafgen -o $B -i "$W/mix.cfg" -n "$N" -P 1 "${rate[@]}"
}
# Waits (up to 10 s) for a line matching $2 in file $1.
wait_for() { for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; return 1; }

vmsentry_at() {
    $BIN live --interface $A --bpf "$FILTER" --rules "$W/rules" --events "$W/ev.jsonl" 2>"$W/err" &
    CAP=$!
    sleep 2 # libpcap's ring is set up; nothing says so on stdout
    send "$1"
    sleep 1.5
    kill -TERM $CAP; wait $CAP || true; CAP=
    python3 - "$W/ev.jsonl" "$W/err" <<'EOF'
import json, re, sys
s = json.loads(open(sys.argv[1]).read().splitlines()[-1])
m = re.search(r"(\d+) frames received, (\d+) dropped by the kernel, (\d+) by the interface", open(sys.argv[2]).read())
print(s["packets"], m.group(2) if m else "?", s["queue_dropped"])
EOF
}
tcpdump_at() {
    tcpdump -i $A -B 65536 -s 512 -w /dev/null "$FILTER" 2>"$W/td" &
    CAP=$!
    wait_for "$W/td" "listening on" || true
    sleep 0.5
    send "$1"
    sleep 1.5
    kill -INT $CAP; wait $CAP || true; CAP=
    echo "$(sed -n 's/^\([0-9]*\) packets captured.*/\1/p' "$W/td") $(sed -n 's/^\([0-9]*\) packets dropped by kernel.*/\1/p' "$W/td")"
}

echo "live capture on a veth pair, $N frames of the datacenter mix per run ($(nproc) cores, trafgen on 1)"
printf '%-9s | %-24s | %-24s | %s\n' "asked pps" "arrived, pps, veth drops" "vmsentry: got, kern, queue" "tcpdump: got, kernel drops"
best_v=0; best_t=0
for r in $RATES; do
    read -r v vk vq <<<"$(vmsentry_at "$r")"; read -r sent vs vd < "$W/sent"
    read -r t tk <<<"$(tcpdump_at "$r")"; read -r sent_t ts td < "$W/sent"
    printf '%-9s | %8s %8s %5s | %8s %8s %6s | %8s %8s  (that run: %s arrived at %s pps, %s veth drops)\n' \
        "$([ "$r" = 0 ] && echo max || echo "$r")" "$sent" "$vs" "$vd" "$v" "$vk" "$vq" "$t" "$tk" "$sent_t" "$ts" "$td"
    # vmsentry's count is of frames libpcap handed over; a batch its shard
    # queue had no room for is dropped after that (queue drops).
    [ "$v" = "$sent" ] && [ "$vq" = 0 ] && [ "$vs" -gt "$best_v" ] && best_v=$vs
    [ "$t" = "$sent_t" ] && [ "$ts" -gt "$best_t" ] && best_t=$ts
done
echo "highest drop-free rate sent: vmsentry $best_v pps, tcpdump $best_t pps"
