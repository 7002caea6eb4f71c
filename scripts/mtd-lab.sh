#!/usr/bin/env bash
# The moving-target-defense lab: two libvirt daemons (scripts/libvirt-lab.sh)
# joined by a veth pair, node a (mtdl-a, 10.78.0.1) and node b (mtdl-b,
# 10.78.0.2), each with a Linux bridge `mtdlbr0` for its guests' NICs and a
# kernel VXLAN device (VNI 5001, port 4789) to the other node over the
# link, so the link carries what a cloud's underlay does: the libvirt RPC,
# the migration stream, and the guests' frames inside VXLAN with the
# hypervisor's MAC and IP outside. The veth ends have fixed MACs (a:
# 52:54:00:78:00:01, b: 52:54:00:78:00:02), so rules can sign them; the
# nodes' host names resolve in both (their own /etc/hosts). Segmentation
# offload is off on the link, so a capture sees wire-sized segments.
#
#   scripts/mtd-lab.sh up LAB_DIR | down LAB_DIR | exec LAB_DIR N CMD...
#
# Used by tests/scenarios/mtd_libvirt.rs. Its names (mtdl-*) and addresses
# differ from scripts/gate-lab.sh's, and every daemon has its own libvirt
# directories, so both labs may run at once; one mtd lab at a time (a flock
# on $LAB_LOCK).
set -euo pipefail
LAB_NS=mtdl
LAB_NET=10.78.0
LAB_HOST=mtdl
LAB_LOCK=${MTD_LAB_LOCK:-/run/lock/vmsentry-mtdl-lab.lock}
LAB_UUID_a=7a7a7a7a-0000-4000-8000-0000000000a1
LAB_UUID_b=7b7b7b7b-0000-4000-8000-0000000000b1
LAB_MAC_a=52:54:00:78:00:01
LAB_MAC_b=52:54:00:78:00:02

lab_link_up() {
    local n other
    for n in a b; do
        other=$([ $n = a ] && echo b || echo a)
        # No IPv6 on the bridges and taps: their link-local chatter (DAD,
        # MLD, router solicitations) would be in the overlay too.
        ip netns exec "mtdl-$n" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
        ip netns exec "mtdl-$n" ethtool -K "mtdl-${n}0" tso off gso off gro off >/dev/null 2>&1 || true
        ip -n "mtdl-$n" link add mtdlbr0 type bridge
        ip -n "mtdl-$n" link add mtdlvx0 type vxlan id 5001 dstport 4789 \
            local "$(node_ip $n)" remote "$(node_ip $other)" dev "mtdl-${n}0"
        ip -n "mtdl-$n" link set mtdlvx0 master mtdlbr0
        ip -n "mtdl-$n" link set mtdlvx0 up
        ip -n "mtdl-$n" link set mtdlbr0 up
    done
}

. "$(dirname "$0")/libvirt-lab.sh"
lab_main "$@"
