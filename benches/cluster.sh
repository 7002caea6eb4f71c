#!/usr/bin/env bash
# Many mirror ports, measured: 3 sensors and a controller over a nats-server -js on
# loopback (benches/README.md, "Many mirror ports"). Needs the release binaries
# (built here: cargo build --release, and -p vmsentry-synth for the capture) and nats-server; writes its capture once under
# target/bench-data/. Everything it starts is stopped on exit.
#
#   FRAMES=2000000 WINDOW_MS=10 benches/cluster.sh      (KEEP=1: keep the logs)
#
# 1. partials/s: the 3 sensors replay at full speed (each reads the whole capture
#    and keeps the third it owns, as a sensor on a mirror that sees more than its
#    rack would), publishing to JetStream; then the bytes and messages the stream
#    holds, as the server counts them (its monitoring endpoint, /jsz?streams=true):
#    bytes per sensor-window and per window per 1000 VMs;
# 2. controller sensor-windows/s: a controller alone merges everything the stream holds;
# 3. keeping up: the 3 sensors at full speed with the controller running, and how long
#    after the last sensor ends the controller has merged the last window;
# 4. delay: the sensors paced at real time (--speed 1); the controller's histograms
#    of window close (at its last sensor) to level event, and to the window's merge
#    (every window), p50 and p99.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin vmsentry
B=target/release/vmsentry
S=target/release/vmsentry-synth
FRAMES=${FRAMES:-2000000}
WINDOW_MS=${WINDOW_MS:-10}
W=$(mktemp -d /tmp/vmsentry-cluster-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then echo "logs kept in $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

mkdir -p target/bench-data
CAP=target/bench-data/dcmix-vxlan-$FRAMES.pcap
if [ ! -f "$CAP" ]; then
    cargo build --release --quiet -p vmsentry-synth
    "$S" dcmix "$CAP" --frames "$FRAMES" --vxlan >/dev/null
fi
cat "$CAP" >/dev/null

# The shipped rules without [[ids]], the windows shortened (many windows per run),
# and dcmix's eight hypervisors and network node registered.
R=$W/rules
mkdir -p "$R/tokens"
cp rules/cluster.key "$R/" && chmod 600 "$R/cluster.key"
awk '/^\[\[ids\]\]/{skip=1; next} /^\[/{skip=0} !skip' rules/vmsentry.toml |
    sed -e "s/^length_ms = 1000/length_ms = $WINDOW_MS/" -e "s/^medium_pps *=.*/medium_pps = 1000/" \
        -e "s/^high_pps *=.*/high_pps = 100000/" -e "s/^clear_windows = .*/clear_windows = 1/" >"$R/vmsentry.toml"
for i in 1 2 3 4 5 6 7 8; do
    printf '[[hypervisor]]\nid = "hv-%d"\nmacs = ["52:54:00:aa:01:%02x"]\nips = ["10.0.0.%d"]\n' "$i" "$i" $((40 + i)) >>"$R/vmsentry.toml"
done
# dcmix's 200 VMs in the inventory (levels are graded for inventory VMs).
for i in $(seq 0 199); do
    printf '[[vm]]\nname = "dc-%d"\nmac = "fa:16:3e:20:%02x:%02x"\n' "$i" $((i >> 8)) $((i & 255)) >>"$R/vmsentry.toml"
done
printf '[[hypervisor]]\nid = "netnode"\nmacs = ["52:54:00:aa:00:fe"]\nips = ["10.0.0.254"]\n' >>"$R/vmsentry.toml"
cat >"$R/cluster.toml" <<'EOF'
down_after_s = 60
[[sensor]]
id = "rack-1"
hypervisors = ["hv-1", "hv-2", "hv-3", "netnode"]
default = true
[[sensor]]
id = "rack-2"
hypervisors = ["hv-4", "hv-5", "hv-6"]
[[sensor]]
id = "rack-3"
hypervisors = ["hv-7", "hv-8"]
EOF

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
MPORT=$(free_port)
NATS=nats://127.0.0.1:$PORT
NATS_PID=
start_nats() {
    rm -rf "$W/js"
    nats-server -js -a 127.0.0.1 -p "$PORT" -m "$MPORT" -sd "$W/js" >"$W/nats.log" 2>&1 &
    NATS_PID=$!
    PIDS+=("$NATS_PID")
    for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && return; sleep 0.1; done
    echo "nats-server did not start" >&2
    exit 1
}
stop_nats() { kill "$NATS_PID"; wait "$NATS_PID" 2>/dev/null || true; }
now() { date +%s.%N; }

sensors() { # $@: extra sense arguments
    local pids=()
    for r in 1 2 3; do
        rm -rf "$W/spool-$r"
        "$B" sense --nats "$NATS" --sensor rack-$r --rules "$R" --spool "$W/spool-$r" --threads 1 "$@" "$CAP" \
            2>"$W/sense-$r.err" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
}
published() { cat "$W"/sense-*.err | sed -n 's/.* \([0-9]*\) published.*/\1/p' | paste -sd+ | bc; }
published_bytes() { cat "$W"/sense-*.err | sed -n 's/.* published (\([0-9]*\) bytes).*/\1/p' | paste -sd+ | bc; }

echo "capture: $CAP ($FRAMES frames), windows of $WINDOW_MS ms; load: $(cut -d' ' -f1-3 /proc/loadavg)"

# 1. Sensors alone.
start_nats
t0=$(now)
sensors
t1=$(now)
n=$(published)
echo "1. sensors: $n partials in $(echo "$t1 - $t0" | bc) s: $(echo "$n / ($t1 - $t0)" | bc) partials/s (3 sensors, 1 thread each)"
grep -h "windows," "$W"/sense-*.err | sed 's/^/   /'
pb=$(published_bytes)
echo "   $pb payload bytes published (the sensors' count): $(echo "$pb / $n" | bc) bytes per partial"
# What the stream holds, as the server counts it: every message's stored size
# (payload, subject, Nats-Msg-Id header and JetStream's per-message record).
curl -s "http://127.0.0.1:$MPORT/jsz?streams=true" >"$W/jsz.json"
windows=$(grep -h "windows," "$W"/sense-*.err | sed -n 's/.*sense: \([0-9]*\) windows,.*/\1/p' | paste -sd+ | bc)
python3 - "$W/jsz.json" "$windows" "$n" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
windows, published = int(sys.argv[2]), int(sys.argv[3])
s = [d for a in j["account_details"] for d in a.get("stream_detail", []) if d["name"].startswith("VMSENTRY_")][0]
msgs, b = s["state"]["messages"], s["state"]["bytes"]
per_window = windows // 3  # every sensor sends each window once
print(f"   stream {s['name']} (server's count): {msgs} messages ({published} published: {windows} windows and 3 ends), {b} bytes")
print(f"   {b / msgs:.0f} bytes per sensor-window on the stream; one window (3 sensors) {b / per_window:.0f} bytes;"
      f" per window per 1000 VMs (the capture's 200, scaled) {b / per_window * 1000 / 200:.0f} bytes")
PY
BYTES=$(du -sb "$W/js" | cut -f1)
echo "   JetStream store directory after: $BYTES bytes"

# 2. The controller alone, catching up.
t0=$(now)
"$B" control --nats "$NATS" --id bench --rules "$R" --until-end --events /dev/null 2>"$W/control.err"
t1=$(now)
echo "2. controller: $n sensor-windows in $(echo "$t1 - $t0" | bc) s: $(echo "$n / ($t1 - $t0)" | bc) sensor-windows/s"
stop_nats

# 3. and 4. Together; the controller serves its metrics.
metrics() { curl -s "http://$1/metrics"; }
together() { # $1: label; then sense arguments
    local label=$1
    shift
    start_nats
    "$B" control --nats "$NATS" --id bench --rules "$R" --events /dev/null --listen 127.0.0.1:0 2>"$W/control.err" &
    local c=$!
    PIDS+=("$c")
    local addr=
    for _ in $(seq 200); do
        addr=$(sed -n 's/.*serving on http:\/\///p' "$W/control.err" | head -1)
        [ -n "$addr" ] && break
        sleep 0.1
    done
    t0=$(now)
    sensors "$@"
    t1=$(now)
    # Until all three ends are merged and nothing waits.
    until metrics "$addr" | grep -q 'vmsentry_cluster_partials_total{outcome="end"} 3' &&
        metrics "$addr" | grep -q '^vmsentry_cluster_windows_pending 0'; do sleep 0.05; done
    t2=$(now)
    metrics "$addr" >"$W/metrics.txt"
    kill "$c"
    wait "$c" 2>/dev/null || true
    stop_nats
    echo "$label: sensors took $(echo "$t1 - $t0" | bc) s; the controller was done $(echo "$t2 - $t1" | bc) s after the last sensor"
    python3 - "$W/metrics.txt" <<'PY'
import sys, re
def hist(name):
    b = []
    for l in open(sys.argv[1]):
        m = re.match(name + r'_bucket\{le="([^"]+)"\} (\d+)', l)
        if m:
            b.append((float('inf') if m[1] == '+Inf' else float(m[1]), int(m[2])))
    return b
def q(b, p):
    want, prev_le, prev_n = p * b[-1][1], 0.0, 0
    for le, n in b:
        if n >= want:
            if le == float('inf'):
                return prev_le
            return prev_le + (le - prev_le) * (want - prev_n) / max(n - prev_n, 1)
        prev_le, prev_n = le, n
    return float('nan')
for name, what in [("vmsentry_cluster_level_event_delay_seconds", "level events; window close to level event"),
                   ("vmsentry_cluster_window_delay_seconds", "windows; window close to its merge")]:
    b = hist(name)
    if b and b[-1][1]:
        print(f"   {b[-1][1]} {what}: p50 {q(b, 0.5)*1000:.2f} ms, p99 {q(b, 0.99)*1000:.2f} ms (bucket-interpolated)")
    else:
        print(f"   no {what.split(';')[0]}")
PY
}
together "3. full speed"
together "4. real time (--speed 1)" --speed 1
