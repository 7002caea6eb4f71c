#!/usr/bin/env bash
# Two libvirt daemons on one machine (scripts/libvirt-lab.sh), joined by a
# veth pair: node a (10.77.0.1, the source) and node b (10.77.0.2, the
# destination). Used by the migration-gate test.
#
#   scripts/gate-lab.sh up LAB_DIR      start both daemons (LAB_DIR is created;
#                                       LAB_DIR/N.hook becomes node N's hooks/qemu)
#   scripts/gate-lab.sh down LAB_DIR    stop them and remove the namespaces
#   scripts/gate-lab.sh exec LAB_DIR N CMD...   run CMD in node N's namespaces
#
# Namespaces gate-a and gate-b; one such lab at a time (a flock on $LAB_LOCK).
set -euo pipefail
LAB_NS=gate
LAB_NET=10.77.0
LAB_HOST=node
LAB_LOCK=${GATE_LAB_LOCK:-/run/lock/vmsentry-gate-lab.lock}
LAB_UUID_a=7a7a7a7a-0000-4000-8000-00000000000a
LAB_UUID_b=7b7b7b7b-0000-4000-8000-00000000000b
. "$(dirname "$0")/libvirt-lab.sh"
lab_main "$@"
