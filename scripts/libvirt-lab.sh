# Two libvirt daemons on one machine, sourced by scripts/gate-lab.sh and
# scripts/mtd-lab.sh: each daemon in its own network, mount and UTS
# namespace with its own /etc/libvirt (host_uuid), /run/libvirt,
# /var/lib/libvirt and /etc/hosts, joined by a veth pair: node a
# ($LAB_NET.1, the source) and node b ($LAB_NET.2, the destination).
#
# The sourcing script sets, before calling lab_main "$@":
#   LAB_NS      prefix of the namespaces (LAB_NS-a, LAB_NS-b) and of the
#               veth ends (LAB_NS-a0, LAB_NS-b0)
#   LAB_NET     the link's /24, without its last octet
#   LAB_HOST    prefix of the nodes' host names (LAB_HOST-a, LAB_HOST-b);
#               each node's /etc/hosts names both
#   LAB_LOCK    the flock taken by `up`
#   LAB_UUID_a, LAB_UUID_b   the daemons' host_uuid
# and may set LAB_MAC_a, LAB_MAC_b (the veth ends' MACs) and define
# lab_link_up (run once the link is up, before the daemons start).
#
#   up LAB_DIR      start both daemons (LAB_DIR is created;
#                   LAB_DIR/N.hook becomes node N's hooks/qemu)
#   down LAB_DIR    stop them and remove the namespaces
#   exec LAB_DIR N CMD...   run CMD in node N's namespaces
#
# The namespaces, links and addresses have fixed names, so only one lab of
# a kind runs at a time: `up` takes an exclusive flock on $LAB_LOCK (waiting
# up to 10 min for another run's `down`), held by a small holder process
# until `down`, or until LAB_DIR disappears (a run killed before its
# `down`). `down` of a lab that never got the lock touches nothing.

node_ip() { echo "$LAB_NET.$(case $1 in a) echo 1 ;; b) echo 2 ;; esac)"; }
node_uuid() { eval "echo \$LAB_UUID_$1"; }
node_uri() { echo "qemu+tcp://$(node_ip "$1")/system"; }

# Enter node N's namespaces: its netns, then the mount and UTS namespaces
# its libvirtd lives in (found through the daemon's pid).
lab_enter() {
    local lab=$1 n=$2
    shift 2
    local pid
    pid=$(cat "$lab/$n/libvirtd.pid")
    exec nsenter -t "$pid" -n -m -u -- "$@"
}

lab_up() {
    local lab=$1 holder n d ok mac
    mkdir -p "$lab" "$(dirname "$LAB_LOCK")"
    rm -f "$lab/locked" "$lab/unlock"
    (
        exec 9>"$LAB_LOCK"
        flock -w 600 9 || exit 1
        : >"$lab/locked"
        while [ -d "$lab" ] && [ ! -e "$lab/unlock" ]; do sleep 0.2; done
    ) </dev/null >/dev/null 2>&1 &
    holder=$!
    until [ -e "$lab/locked" ]; do
        if ! kill -0 "$holder" 2>/dev/null; then
            echo "$LAB_NS-lab: another lab held $LAB_LOCK for 10 minutes" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "$holder" >"$lab/lock.pid"
    ip netns del "$LAB_NS-a" 2>/dev/null || true  # left by a run that was killed
    ip netns del "$LAB_NS-b" 2>/dev/null || true
    ip netns add "$LAB_NS-a"
    ip netns add "$LAB_NS-b"
    ip link add "$LAB_NS-a0" netns "$LAB_NS-a" type veth peer name "$LAB_NS-b0" netns "$LAB_NS-b"
    for n in a b; do
        mac=$(eval "echo \${LAB_MAC_$n:-}")
        if [ -n "$mac" ]; then
            ip -n "$LAB_NS-$n" link set "$LAB_NS-${n}0" address "$mac"
        fi
        ip -n "$LAB_NS-$n" addr add "$(node_ip $n)/24" dev "$LAB_NS-${n}0"
        ip -n "$LAB_NS-$n" link set "$LAB_NS-${n}0" up
        ip -n "$LAB_NS-$n" link set lo up
    done
    if declare -F lab_link_up >/dev/null; then
        lab_link_up "$lab"
    fi
    for n in a b; do
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
        printf '127.0.0.1 localhost\n%s %s\n%s %s\n' "$(node_ip a)" "$LAB_HOST-a" "$(node_ip b)" "$LAB_HOST-b" >"$d/hosts"
        # The daemon keeps these namespaces; its pid file names it.
        ip netns exec "$LAB_NS-$n" unshare -m -u --propagation private sh -ec "
            hostname $LAB_HOST-$n
            mkdir -p /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt
            mount --bind '$d/etc' /etc/libvirt
            mount --bind '$d/run' /run/libvirt
            mount --bind '$d/lib' /var/lib/libvirt
            mount --bind '$d/cache' /var/cache/libvirt
            mount --bind '$d/log' /var/log/libvirt
            mount --bind '$d/hosts' /etc/hosts
            exec libvirtd --listen -d -p '$d/libvirtd.pid' >'$d/libvirtd.out' 2>&1
        "
    done
    for n in a b; do
        ok=
        for _ in $(seq 100); do
            if [ -s "$lab/$n/libvirtd.pid" ] && ip netns exec "$LAB_NS-$n" virsh -c "$(node_uri $n)" version >/dev/null 2>&1; then
                ok=1
                break
            fi
            sleep 0.1
        done
        if [ -z "$ok" ]; then
            echo "$LAB_NS-lab: node $n's libvirtd did not answer within 10 s (see $lab/$n/libvirtd.out)" >&2
            exit 1
        fi
    done
}

lab_down() {
    local lab=$1 n pid holder
    # Not ours to tear down unless this lab holds the lock.
    [ -s "$lab/lock.pid" ] || exit 0
    for n in a b; do
        if [ -s "$lab/$n/libvirtd.pid" ]; then
            pid=$(cat "$lab/$n/libvirtd.pid")
            # Its QEMUs first (they are its children's children), then it.
            ip netns exec "$LAB_NS-$n" virsh -c "$(node_uri $n)" list --name 2>/dev/null |
                while read -r dom; do [ -n "$dom" ] && ip netns exec "$LAB_NS-$n" virsh -c "$(node_uri $n)" destroy "$dom" >/dev/null 2>&1; done || true
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
    done
    ip netns del "$LAB_NS-a" 2>/dev/null || true
    ip netns del "$LAB_NS-b" 2>/dev/null || true
    holder=$(cat "$lab/lock.pid")
    touch "$lab/unlock"
    for _ in $(seq 50); do kill -0 "$holder" 2>/dev/null || break; sleep 0.1; done
    kill "$holder" 2>/dev/null || true
    rm -f "$lab/lock.pid" "$lab/locked" "$lab/unlock"
}

lab_main() {
    local cmd=${1:?usage: up|down|exec ...}
    case $cmd in
    up) lab_up "${2:?LAB_DIR}" ;;
    down) lab_down "${2:?LAB_DIR}" ;;
    exec)
        local lab=${2:?LAB_DIR} n=${3:?node}
        shift 3
        lab_enter "$lab" "$n" "$@"
        ;;
    *) echo "usage: up|down|exec ..." >&2; exit 2 ;;
    esac
}
