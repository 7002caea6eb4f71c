#!/usr/bin/env bash
# Two libvirt daemons on one machine, each in its own network, mount and UTS
# namespace with its own /etc/libvirt (host_uuid), /run/libvirt and
# /var/lib/libvirt, joined by a veth pair: node a (10.77.0.1, the source)
# and node b (10.77.0.2, the destination). Used by the migration-gate test.
#
#   scripts/gate-lab.sh up LAB_DIR      start both daemons (LAB_DIR is created;
#                                       LAB_DIR/N.hook becomes node N's hooks/qemu)
#   scripts/gate-lab.sh down LAB_DIR    stop them and remove the namespaces
#   scripts/gate-lab.sh exec N CMD...   run CMD in node N's namespaces
#
# The namespaces, links and addresses have fixed names, so only one lab runs
# at a time: `up` takes an exclusive flock on $LOCK (waiting up to 10 min for
# another run's `down`), held by a small holder process until `down`, or
# until LAB_DIR disappears (a run killed before its `down`). `down` of a lab
# that never got the lock touches nothing.
set -euo pipefail
cmd=${1:?usage: gate-lab.sh up|down|exec ...}

LOCK=${GATE_LAB_LOCK:-/run/lock/vmsentry-gate-lab.lock}

node_ip() { case $1 in a) echo 10.77.0.1 ;; b) echo 10.77.0.2 ;; esac; }
node_uuid() { case $1 in a) echo 7a7a7a7a-0000-4000-8000-00000000000a ;; b) echo 7b7b7b7b-0000-4000-8000-00000000000b ;; esac; }

# Enter node N's namespaces: its netns, then the mount and UTS namespaces
# its libvirtd lives in (found through the daemon's pid).
enter() {
    local lab=$1 n=$2
    shift 2
    local pid
    pid=$(cat "$lab/$n/libvirtd.pid")
    nsenter -t "$pid" -n -m -u -- "$@"
}

case $cmd in
up)
    lab=${2:?LAB_DIR}
    mkdir -p "$lab" "$(dirname "$LOCK")"
    rm -f "$lab/locked" "$lab/unlock"
    (
        exec 9>"$LOCK"
        flock -w 600 9 || exit 1
        : >"$lab/locked"
        while [ -d "$lab" ] && [ ! -e "$lab/unlock" ]; do sleep 0.2; done
    ) </dev/null >/dev/null 2>&1 &
    holder=$!
    until [ -e "$lab/locked" ]; do
        if ! kill -0 "$holder" 2>/dev/null; then
            echo "gate-lab: another lab held $LOCK for 10 minutes" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "$holder" >"$lab/lock.pid"
    ip netns del gate-a 2>/dev/null || true  # left by a run that was killed
    ip netns del gate-b 2>/dev/null || true
    ip netns add gate-a
    ip netns add gate-b
    ip link add gate-a0 netns gate-a type veth peer name gate-b0 netns gate-b
    for n in a b; do
        ip -n gate-$n addr add "$(node_ip $n)/24" dev gate-${n}0
        ip -n gate-$n link set gate-${n}0 up
        ip -n gate-$n link set lo up
        d=$lab/$n
        mkdir -p "$d"/{run,lib,cache,log}
        cp -a /etc/libvirt "$d/etc"
        # Only this lab's hook, never the machine's /etc/libvirt/hooks.
        rm -rf "$d/etc/hooks" && mkdir -p "$d/etc/hooks"
        if [ -f "$lab/$n.hook" ]; then
            install -m 0755 "$lab/$n.hook" "$d/etc/hooks/qemu"
        fi
        cat >> "$d/etc/libvirtd.conf" <<CONF
listen_tls = 0
listen_tcp = 1
listen_addr = "$(node_ip $n)"
auth_tcp = "none"
host_uuid = "$(node_uuid $n)"
unix_sock_dir = "/run/libvirt"
CONF
        cat >> "$d/etc/qemu.conf" <<CONF
security_driver = "none"
cgroup_controllers = [ ]
stdio_handler = "file"
user = "+0"
group = "+0"
migration_address = "$(node_ip $n)"
CONF
        # The daemon keeps these namespaces; its pid file names it.
        ip netns exec gate-$n unshare -m -u --propagation private sh -ec "
            hostname node-$n
            mkdir -p /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt
            mount --bind '$d/etc' /etc/libvirt
            mount --bind '$d/run' /run/libvirt
            mount --bind '$d/lib' /var/lib/libvirt
            mount --bind '$d/cache' /var/cache/libvirt
            mount --bind '$d/log' /var/log/libvirt
            exec libvirtd --listen -d -p '$d/libvirtd.pid' >'$d/libvirtd.out' 2>&1
        "
    done
    for n in a b; do
        ok=
        for _ in $(seq 100); do
            if [ -s "$lab/$n/libvirtd.pid" ] && ip netns exec gate-$n virsh -c "qemu+tcp://$(node_ip $n)/system" version >/dev/null 2>&1; then
                ok=1
                break
            fi
            sleep 0.1
        done
        if [ -z "$ok" ]; then
            echo "gate-lab: node $n's libvirtd did not answer within 10 s (see $lab/$n/libvirtd.out)" >&2
            exit 1
        fi
    done
    ;;
down)
    lab=${2:?LAB_DIR}
    # Not ours to tear down unless this lab holds the lock.
    [ -s "$lab/lock.pid" ] || exit 0
    for n in a b; do
        if [ -s "$lab/$n/libvirtd.pid" ]; then
            pid=$(cat "$lab/$n/libvirtd.pid")
            # Its QEMUs first (they are its children's children), then it.
            ip netns exec gate-$n virsh -c "qemu+tcp://$(node_ip $n)/system" list --name 2>/dev/null |
                while read -r dom; do [ -n "$dom" ] && ip netns exec gate-$n virsh -c "qemu+tcp://$(node_ip $n)/system" destroy "$dom" >/dev/null 2>&1; done || true
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
    done
    ip netns del gate-a 2>/dev/null || true
    ip netns del gate-b 2>/dev/null || true
    holder=$(cat "$lab/lock.pid")
    touch "$lab/unlock"
    for _ in $(seq 50); do kill -0 "$holder" 2>/dev/null || break; sleep 0.1; done
    kill "$holder" 2>/dev/null || true
    rm -f "$lab/lock.pid" "$lab/locked" "$lab/unlock"
    ;;
exec)
    lab=${2:?LAB_DIR}
    n=${3:?node}
    shift 3
    enter "$lab" "$n" "$@"
    ;;
esac
