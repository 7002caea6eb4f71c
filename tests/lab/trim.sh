#!/usr/bin/env bash
# Cuts the shipped lab captures out of a lab run's underlay capture
# (tests/lab/lab.sh OUT_DIR): headers only (128-byte snaplen, and the
# migration streams' frames cut after their TCP header by headers.py), gzipped.
#
#   tests/lab/trim.sh OUT_DIR captures/
#
#   lab-busy.pcap.gz      lab-virtio h1 -> h2 answering a 2 ms ping flood: from 1 s
#                         before its migration stream to 1 s after the move
#   lab-pair.pcap.gz      lab-e1000 and lab-noos h1 -> h2 at once: 1 s before the
#                         first stream to 0.8 s after the later move
#   lab-unsigned.pcap.gz  lab-virtio h1 -> h3 (unsigned): 1 s before its stream to
#                         the end of the run (pinged every 500 ms)
set -euo pipefail
run=${1:?usage: trim.sh LAB_OUT_DIR CAPTURES_DIR}
dest=${2:?usage: trim.sh LAB_OUT_DIR CAPTURES_DIR}
ev=$run/events.jsonl
# epoch seconds of the move of VM (mac) to HV, and its total_ms
move() { jq -r --arg vm "$1" --arg to "$2" --arg from "$3" \
    'select(.type=="migration" and .vm==$vm and .to_hypervisor==$to and .from_hypervisor==$from) | "\((.ts | sub("\\.[0-9]+Z$"; "Z") | fromdateiso8601) + ((.ts | capture("\\.(?<f>[0-9]+)Z$").f | tonumber) / 1e6)) \(.total_ms)"' "$ev"; }
at() { date -u -d "@$1" '+%Y-%m-%d %H:%M:%S.%N' | cut -c1-26; }
cut_out() { # NAME FROM TO
    TZ=UTC editcap -F pcap -A "$(at "$2")" -B "$(at "$3")" -s 128 "$run/underlay.pcap" "$dest/$1.cut.pcap"
    python3 "$(dirname "$0")/headers.py" "$dest/$1.cut.pcap" "$dest/$1.pcap"
    rm -f "$dest/$1.cut.pcap"
    gzip -9 -f -n "$dest/$1.pcap"
}
A=52:54:00:4c:00:0a B=52:54:00:4c:00:0b C=52:54:00:4c:00:0c
read -r t d < <(move $A lab-2 lab-1)
cut_out lab-busy "$(echo "$t - $d/1000 - 1" | bc -l)" "$(echo "$t + 1" | bc -l)"
read -r tb db < <(move $B lab-2 lab-1)
read -r tc dc < <(move $C lab-2 lab-1)
start=$(echo "if ($tb - $db/1000 < $tc - $dc/1000) $tb - $db/1000 else $tc - $dc/1000" | bc -l)
end=$(echo "if ($tb > $tc) $tb else $tc" | bc -l)
cut_out lab-pair "$(echo "$start - 1" | bc -l)" "$(echo "$end + 0.8" | bc -l)"
read -r t d < <(move $A lab-3 lab-1)
cut_out lab-unsigned "$(echo "$t - $d/1000 - 1" | bc -l)" "$(echo "$t + 60" | bc -l)"
