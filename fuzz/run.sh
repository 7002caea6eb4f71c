#!/usr/bin/env bash
# Runs every fuzz target for SECS seconds each (default 40), seeded from the shipped
# files; a crash fails (its input is left in fuzz/artifacts/TARGET/). Needs nightly.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-40}"
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: SKIPPED: no nightly toolchain (rustup toolchain install nightly)"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi
corpus=target/corpus
mkdir -p "$corpus"/{decode,rules,suricata_eve,snort3_json,snort_fast}
cp ../rules/vmsentry.toml "$corpus/rules/shipped.toml"
n=0
while IFS= read -r l; do
    n=$((n + 1))
    printf '%s\n' "$l" >"$corpus/suricata_eve/shipped-$n.json"
done <../rules/alerts/eve.json
for t in suricata_eve snort3_json snort_fast; do
    cp seeds/"$t"/* "$corpus/$t/"
done
# Frames of the shipped captures, each prefixed with the target's link-type byte.
if command -v python3 >/dev/null; then
    python3 - ../captures "$corpus/decode" <<'PY'
import pathlib, struct, sys
links = {0: 0, 1: 1, 101: 2, 108: 3, 113: 4, 228: 5, 229: 6, 276: 7}
src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for p in sorted(src.rglob("*.pcap")):
    b = p.read_bytes()
    if len(b) < 24 or b[:4] not in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"):
        continue
    e = "<" if b[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    lt = struct.unpack(e + "I", b[20:24])[0] & 0xFFFF
    if lt not in links:
        continue
    off, k = 24, 0
    while off + 16 <= len(b) and k < 64:  # the first 64 frames of each file
        incl = struct.unpack(e + "I", b[off + 8:off + 12])[0]
        frame = b[off + 16:off + 16 + min(incl, 512)]
        (out / f"{p.stem}-{k}").write_bytes(bytes([links[lt]]) + frame)
        off, k = off + 16 + incl, k + 1
PY
fi
# Build first, so each target's time below is fuzzing only.
cargo +nightly fuzz build >target/build.log 2>&1 || { tail -40 target/build.log; exit 1; }
for t in decode rules suricata_eve snort3_json snort_fast; do
    log="target/$t.log"
    start=$(date +%s)
    if ! cargo +nightly fuzz run "$t" "$corpus/$t" -- -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz: $t FAILED (input in fuzz/artifacts/$t/)"
        exit 1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    echo "fuzz: $t: $execs inputs ($rate/s) in $(($(date +%s) - start)) s, no finding"
done
