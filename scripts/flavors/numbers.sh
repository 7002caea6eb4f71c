#!/usr/bin/env bash
# The flavors lab's numbers, one line per migration: the wire's (vmsentry's
# `migration` event) and QEMU's (`virsh domjobinfo --completed`) side by
# side, joined by the VM's MAC (each guest moves once).
#
#   scripts/flavors/numbers.sh OUT_DIR > OUT_DIR/numbers.tsv
set -euo pipefail
out=${1:?usage: numbers.sh OUT_DIR}
printf 'vm\tflavor\tfrom\tto\twire_downtime_ms\tqemu_downtime_ms\twire_total_ms\tqemu_total_ms\twire_bytes\tqemu_bytes\tsignature\n'
jq -rs --slurpfile q "$out/qemu.jsonl" '
  ($q | map({(.vm): .}) | add) as $qemu
  | .[] | select(.type == "migration") | . as $m | $qemu[$m.vm] as $r
  | [$m.vm_name, $m.flavor, $m.from_hypervisor, $m.to_hypervisor,
     $m.downtime_ms, $r.downtime_ms, $m.total_ms, $r.total_ms, $m.bytes, $r.bytes, $m.signature]
  | map(tostring) | join("\t")' "$out/events.jsonl"
