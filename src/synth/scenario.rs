//! The scenario captures and the benchmark capture, with their ground truth in comments and in captures/README.md.

use super::{frames, mac, stream, write_pcap, Frame};
use crate::decode::Mac;
use std::net::Ipv4Addr;
use std::path::Path;

/// Packet time of the start of every scenario: 2023-11-14T22:13:20Z, on a window boundary.
pub const T0_US: i64 = 1_700_000_000_000_000;
const S: i64 = 1_000_000;

pub const GATEWAY: &str = "52:54:00:ff:00:01";
pub const WEB_1: &str = "fa:16:3e:00:00:01";
pub const DB_1: &str = "fa:16:3e:00:00:02";
pub const APP_1: &str = "fa:16:3e:00:00:03";
pub const ROGUE_1: &str = "fa:16:3e:00:00:04";
pub const BACKUP_1: &str = "fa:16:3e:00:00:05";
pub const CACHE_1: &str = "fa:16:3e:00:00:06";
pub const API_1: &str = "fa:16:3e:00:00:07";
pub const API_2: &str = "fa:16:3e:00:00:08";

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, last)
}
const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

/// `basic.pcap`: 70 s of one cluster, graded with `rules/vmsentry.toml`.
///
/// - app-1: benign, 10 frames/s each way with the gateway (802.1Q tag 100),
///   plus 20 TCP frames cut by a 40-byte snaplen inside the TCP header, the
///   malformed frames of [`frames::malformed`] at 50 s, and an ARP exchange.
/// - web-1: a flood at 10-13 s, 5000 frames/s of 1500 bytes (60 Mbit/s):
///   HIGH, migrate (signed hypervisor).
/// - db-1: 20-25 s, 1000 frames/s of 1250 bytes (10 Mbit/s): MEDIUM, alert.
/// - rogue-1 (behind compute-9, whose signature does not verify): 30-33 s,
///   like db-1: MEDIUM, quarantine.
/// - cache-1: receives 4000 frames/s of 100 bytes at 40-42 s (QinQ tagged):
///   MEDIUM by rx packet rate, alert.
/// - backup-1 (ram_mb = 1): 50 frames/s of 1500 bytes for 60 s, captured
///   with a 64-byte snaplen: 600 kbit/s, below every rate threshold, but more
///   than 3 MiB within 60 s after 42 windows: HIGH by volume, migrate.
pub fn basic() -> Vec<Frame> {
    let gw = mac(GATEWAY);
    let mut out = Vec::new();

    // app-1 <-> gateway, tagged, the whole 70 s.
    let app = mac(APP_1);
    out.extend(stream(T0_US, 70, 10, |_, ts| {
        Frame::whole(ts, frames::udp4_vlan(app, gw, 100, ip(3), GW_IP, 40000, 53, 158))
    }));
    out.extend(stream(T0_US + 50_000, 70, 10, |_, ts| {
        Frame::whole(ts, frames::udp4_vlan(gw, app, 100, GW_IP, ip(3), 53, 40000, 158))
    }));
    // TCP frames of 1000 bytes cut inside the TCP header by a 40-byte snaplen.
    out.extend(stream(T0_US + 5 * S + 7_000, 2, 10, |i, ts| {
        let f = frames::tcp4(app, gw, ip(3), GW_IP, 40001, 80, 1000 + i as u32, Some(1), false, 946);
        Frame::cut(ts, f, 1000, 40)
    }));
    // An ARP exchange between the gateway and app-1.
    out.push(Frame::whole(
        T0_US + 2 * S + 300_000,
        frames::arp(gw, Mac::BROADCAST, false, 1, gw, GW_IP, Mac::default(), ip(3)),
    ));
    out.push(Frame::whole(T0_US + 2 * S + 300_100, frames::arp(app, gw, false, 2, app, ip(3), gw, GW_IP)));
    // Malformed frames among good ones.
    for (k, (f, _kind)) in frames::malformed(app, gw, ip(3), GW_IP).into_iter().enumerate() {
        out.push(Frame::whole(T0_US + 50 * S + 1_000 + k as i64 * 10_000, f));
    }

    // web-1: the flood.
    let web = mac(WEB_1);
    out.extend(stream(T0_US + 10 * S, 3, 5000, |i, ts| {
        Frame::cut(ts, frames::udp4(web, gw, ip(1), GW_IP, 50000 + (i % 64) as u16, 80, 0), 1500, 64)
    }));

    // db-1 and rogue-1: moderate senders.
    let db = mac(DB_1);
    out.extend(stream(T0_US + 20 * S, 5, 1000, |_, ts| {
        Frame::cut(ts, frames::udp4(db, gw, ip(2), GW_IP, 5432, 6000, 0), 1250, 64)
    }));
    let rogue = mac(ROGUE_1);
    out.extend(stream(T0_US + 30 * S, 3, 1000, |_, ts| {
        Frame::cut(ts, frames::udp4(rogue, gw, ip(4), GW_IP, 9999, 6000, 0), 1250, 64)
    }));

    // cache-1: many small frames received.
    let cache = mac(CACHE_1);
    out.extend(stream(T0_US + 40 * S, 2, 4000, |i, ts| {
        Frame::whole(ts, frames::udp4_qinq(gw, cache, 200, 300, GW_IP, ip(6), 11211, 30000 + (i % 16) as u16, 40))
    }));

    // backup-1: slow and steady, more than 3x its RAM within the horizon.
    let backup = mac(BACKUP_1);
    out.extend(stream(T0_US + 3_000, 60, 50, |_, ts| {
        Frame::cut(ts, frames::udp4(backup, gw, ip(5), GW_IP, 873, 873, 0), 1500, 64)
    }));
    out
}

/// `rtt.pcap`: 16 s of answers with known round-trip times, from the gateway
/// (10.0.0.1) to api-1 (10.0.1.7) and api-2 (10.0.1.8).
///
/// api-1:
/// - ICMP echo at 0-4 s, one a second, each answered in 2 ms: 5 `echo` samples;
/// - a SYN at 5 s, retransmitted at 6 s, SYN/ACK 3 ms after the second: one
///   `handshake` sample of 3 ms (timed from the last SYN);
/// - TCP with timestamps at 7 s: data with TSval 100 echoed 4 ms later: one
///   `timestamp` sample of 4 ms, and the gateway's echo of api-1's TSval
///   1.5 ms after that: a sample of 1.5 ms for the gateway;
/// - 6 echoes answered in 80 ms at 10 s: 6 peaks (> `rtt.max_peaks` = 5):
///   `rtt_peaks`, MEDIUM by rtt, `alert`; back to LOW 3 quiet windows later.
///
/// api-2:
/// - TCP without timestamps at 8 s: a 100-byte segment ACKed after 6 ms (one
///   `ack` sample), then a segment sent twice and ACKed (no sample: Karn);
/// - 5 echoes answered in 90 ms at 12 s: exactly `max_peaks`, not abnormal.
pub fn rtt() -> Vec<Frame> {
    use frames::{icmp4_echo, Tcp};
    let gw = mac(GATEWAY);
    let (a1, a2) = (mac(API_1), mac(API_2));
    let (ip1, ip2) = (ip(7), ip(8));
    let mut out = Vec::new();
    let ms = 1_000i64;
    let echo = |out: &mut Vec<Frame>, vm: Mac, vip: Ipv4Addr, at: i64, rtt: i64, id: u16, seq: u16| {
        out.push(Frame::whole(at, icmp4_echo(gw, vm, GW_IP, vip, true, id, seq)));
        out.push(Frame::whole(at + rtt, icmp4_echo(vm, gw, vip, GW_IP, false, id, seq)));
    };
    for k in 0..5 {
        echo(&mut out, a1, ip1, T0_US + k * S + 100 * ms, 2 * ms, 1, k as u16);
    }
    let c = Tcp {
        src: gw,
        dst: a1,
        sip: GW_IP,
        dip: ip1,
        sport: 40000,
        dport: 443,
        seq: 1000,
        ack: None,
        syn: false,
        ts: None,
        payload_len: 0,
    };
    let syn = Tcp { syn: true, ..c };
    out.push(Frame::whole(T0_US + 5 * S, syn.build()));
    out.push(Frame::whole(T0_US + 6 * S, syn.build()));
    out.push(Frame::whole(
        T0_US + 6 * S + 3 * ms,
        Tcp { syn: true, seq: 7000, ack: Some(1001), ..c.reverse() }.build(),
    ));
    let t = Tcp { sport: 40001, ack: Some(1), ..c };
    out.push(Frame::whole(T0_US + 7 * S, Tcp { ts: Some((100, 0)), payload_len: 200, ..t }.build()));
    out.push(Frame::whole(
        T0_US + 7 * S + 4 * ms,
        Tcp { seq: 1, ack: Some(1200), ts: Some((5000, 100)), ..t.reverse() }.build(),
    ));
    out.push(Frame::whole(T0_US + 7 * S + 5_500, Tcp { seq: 1200, ts: Some((101, 5000)), ..t }.build()));
    for k in 0..6 {
        echo(&mut out, a1, ip1, T0_US + 10 * S + k * 100 * ms, 80 * ms, 2, k as u16);
    }

    let d = Tcp { dst: a2, dip: ip2, sport: 40002, seq: 1000, ack: Some(1), ..c };
    let a = |n: u32| Tcp { seq: 1, ack: Some(n), ..d.reverse() }.build();
    out.push(Frame::whole(T0_US + 8 * S, Tcp { payload_len: 100, ..d }.build()));
    out.push(Frame::whole(T0_US + 8 * S + 6 * ms, a(1100)));
    out.push(Frame::whole(T0_US + 8 * S + 100 * ms, Tcp { seq: 1100, payload_len: 100, ..d }.build()));
    out.push(Frame::whole(T0_US + 8 * S + 300 * ms, Tcp { seq: 1100, payload_len: 100, ..d }.build()));
    out.push(Frame::whole(T0_US + 8 * S + 310 * ms, a(1200)));
    for k in 0..5 {
        echo(&mut out, a2, ip2, T0_US + 12 * S + k * 100 * ms, 90 * ms, 3, k as u16);
    }
    // Packet time runs to 16 s so the rtt level can clear.
    echo(&mut out, a2, ip2, T0_US + 15 * S + 900 * ms, 2 * ms, 4, 0);
    out
}

/// Hypervisors of the migration scenarios: (outer MAC, IP).
pub const HV1: Host = ("52:54:00:aa:00:01", [10, 0, 0, 31]);
pub const HV2: Host = ("52:54:00:aa:00:02", [10, 0, 0, 32]);
pub const HV3: Host = ("52:54:00:aa:00:03", [10, 0, 0, 33]);
/// Registered, but its signature does not verify.
pub const HV9: Host = ("52:54:00:aa:00:09", [10, 0, 0, 39]);
/// Not registered at all.
pub const ROGUE: Host = ("52:54:00:66:66:66", [10, 0, 0, 66]);
/// The network node every VM talks to through the overlay.
const NET_NODE: Host = ("52:54:00:aa:00:fe", [10, 0, 0, 254]);

pub const MIG: [&str; 6] = [
    "fa:16:3e:00:01:01",
    "fa:16:3e:00:01:02",
    "fa:16:3e:00:01:03",
    "fa:16:3e:00:01:04",
    "fa:16:3e:00:01:05",
    "fa:16:3e:00:01:06",
];

/// How the migration scenario's VM frames travel.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    Vxlan,
    /// With two words of options.
    Geneve,
}

struct Mig {
    encap: Encap,
    out: Vec<Frame>,
}

impl Mig {
    fn underlay(hv: Host) -> frames::Underlay {
        frames::Underlay { src: mac(hv.0), dst: mac(NET_NODE.0), sip: hv.1.into(), dip: NET_NODE.1.into(), vni: 5001 }
    }

    fn wrap(&self, hv: Host, inner: &[u8]) -> Vec<u8> {
        match self.encap {
            Encap::Vxlan => frames::vxlan(&Self::underlay(hv), inner),
            Encap::Geneve => frames::geneve(&Self::underlay(hv), 2, inner),
        }
    }

    /// `vm` sends 10 small frames a second to the gateway from `hv`, from `at` for `secs`.
    fn traffic(&mut self, vm: usize, hv: Host, at: i64, tenths: i64) {
        let inner = frames::udp4(mac(MIG[vm]), mac(GATEWAY), ip(100 + vm as u8), GW_IP, 7000, 53, 50);
        let f = self.wrap(hv, &inner);
        for k in 0..tenths {
            self.out.push(Frame::whole(at + k * S / 10, f.clone()));
        }
    }

    /// QEMU's self-announce: 5 RARPs over 0.8 s, sent through `hv`.
    fn announce(&mut self, vm: usize, hv: Host, at: i64) {
        let m = mac(MIG[vm]);
        let rarp = frames::arp(m, Mac::BROADCAST, true, 3, m, Ipv4Addr::UNSPECIFIED, m, Ipv4Addr::UNSPECIFIED);
        let f = self.wrap(hv, &rarp);
        for k in 0..5 {
            self.out.push(Frame::whole(at + k * 200_000, f.clone()));
        }
    }

    /// A migration stream (libvirt's port 49152, from port 50000) of `n`
    /// 1502-byte frames, captured with a 64-byte snaplen, from `from` to `to`
    /// over [`at`, `until`).
    fn stream(&mut self, from: Host, to: Host, at: i64, until: i64, n: i64) {
        self.stream_from(from, 50000, to, at, until, n);
    }

    /// [`Mig::stream`] from another source port.
    fn stream_from(&mut self, from: Host, port: u16, to: Host, at: i64, until: i64, n: i64) {
        for k in 0..n {
            let ts = at + (until - at) * k / n;
            let f = frames::tcp4(
                mac(from.0),
                mac(to.0),
                from.1.into(),
                to.1.into(),
                port,
                49152,
                1 + k as u32 * 1448,
                Some(1),
                false,
                1448,
            );
            self.out.push(Frame::cut(ts, f, 1502, 64));
        }
    }
}

/// `migration-vxlan.pcap` / `migration-geneve.pcap`: six VMs moving between
/// hypervisors over an overlay, 42 s. With `rules/` (tokens for mig-1,
/// mig-4 and mig-6 in `rules/tokens/`):
/// - mig-1: compute-1 → compute-2 at 5 s, announced, a 292 890-byte stream,
///   100 ms downtime, token: valid, authorized, no level change;
/// - mig-2: compute-1 → an unregistered hypervisor at 10 s (traffic only):
///   signature `unknown`, HIGH (signature), quarantine;
/// - mig-3: compute-2 → compute-9 at 15 s, announced: `invalid`, HIGH, quarantine;
/// - mig-4 (ram_mb 1): compute-2 → compute-3 at 20.3 s with a 3900-frame
///   stream (5.9 MB > 3 x 1 MiB) and a token: HIGH (migration), migrate;
/// - mig-5: appears at compute-3 at 25 s while still sending from compute-1
///   until 30 s: a move, then a clone (HIGH, clone) 2 s later;
/// - mig-6: compute-1 → compute-2 (token), back to compute-1 (no token),
///   and to compute-2 again with the same token: granted, missing, replayed.
pub fn migration(encap: Encap) -> Vec<Frame> {
    let mut m = Mig { encap, out: Vec::new() };
    // mig-1: authorized move with a stream.
    m.traffic(0, HV1, T0_US, 50);
    m.stream(HV1, HV2, T0_US + 3 * S, T0_US + 3 * S + 1_950_000, 195);
    m.announce(0, HV2, T0_US + 5 * S);
    m.traffic(0, HV2, T0_US + 6 * S, 20);
    // mig-2: to a rogue hypervisor.
    m.traffic(1, HV1, T0_US + 8 * S, 20);
    m.traffic(1, ROGUE, T0_US + 10 * S, 20);
    // mig-3: to a registered hypervisor with a bad signature.
    m.traffic(2, HV2, T0_US + 13 * S, 20);
    m.announce(2, HV9, T0_US + 15 * S);
    m.traffic(2, HV9, T0_US + 15 * S + 500_000, 15);
    // mig-4: moves more than 3x its RAM.
    m.traffic(3, HV2, T0_US + 17 * S, 30);
    m.stream(HV2, HV3, T0_US + 18 * S, T0_US + 19 * S + 950_000, 3900);
    m.announce(3, HV3, T0_US + 20 * S + 300_000);
    m.traffic(3, HV3, T0_US + 21 * S, 20);
    // mig-5: a clone.
    m.traffic(4, HV1, T0_US + 23 * S, 70);
    m.traffic(4, HV3, T0_US + 25 * S, 50);
    // mig-6: a token used twice.
    m.traffic(5, HV1, T0_US + 31 * S, 20);
    m.announce(5, HV2, T0_US + 33 * S);
    m.traffic(5, HV2, T0_US + 33 * S + 500_000, 25);
    m.announce(5, HV1, T0_US + 36 * S);
    m.traffic(5, HV1, T0_US + 36 * S + 500_000, 25);
    m.announce(5, HV2, T0_US + 39 * S);
    m.traffic(5, HV2, T0_US + 39 * S + 500_000, 25);
    m.out
}

fn migration_vxlan() -> Vec<Frame> {
    migration(Encap::Vxlan)
}

fn migration_geneve() -> Vec<Frame> {
    migration(Encap::Geneve)
}

/// `migration-plain.pcap`: no overlay. mig-1 (on compute-1 by the rules)
/// announces itself at 3 s after a stream from compute-1 to compute-2, then
/// sends. Seen by a sensor on compute-2's uplink (`[sensor] hypervisor =
/// "compute-2"`) it moved there; seen without a sensor it moved somewhere
/// the wire does not tell.
pub fn migration_plain() -> Vec<Frame> {
    let vm = mac(MIG[0]);
    let mut out = Vec::new();
    let mut m = Mig { encap: Encap::Vxlan, out: Vec::new() };
    m.stream(HV1, HV2, T0_US + S, T0_US + 2 * S + 950_000, 195);
    out.append(&mut m.out);
    let rarp = frames::arp(vm, Mac::BROADCAST, true, 3, vm, Ipv4Addr::UNSPECIFIED, vm, Ipv4Addr::UNSPECIFIED);
    for k in 0..5 {
        out.push(Frame::whole(T0_US + 3 * S + k * 200_000, rarp.clone()));
    }
    let f = frames::udp4(vm, mac(GATEWAY), ip(100), GW_IP, 7000, 53, 50);
    out.extend(stream(T0_US + 3 * S + 500_000, 2, 10, |_, ts| Frame::whole(ts, f.clone())));
    out
}

/// Packet time of the moving-target-defense scenario: a day after [`T0_US`],
/// so the demo's IDS alerts (`rules/alerts/eve.json`) fall inside this
/// capture and outside every other.
pub const T1_US: i64 = T0_US + 86_400 * S;

/// A hypervisor: its MAC and underlay address.
pub type Host = (&'static str, [u8; 4]);

/// compute-4, where the MTD scenario's VMs start.
pub const HV4: Host = ("52:54:00:aa:00:04", [10, 0, 0, 34]);

/// The MTD scenario's VMs: MAC, address, RAM (MiB), and where the
/// evacuation plan sends them (the plan `vmsentry` makes with `rules/`, which
/// a test checks), in the plan's order (largest first).
pub const MTD_VMS: [(&str, [u8; 4], u64, Host); 5] = [
    ("fa:16:3e:00:02:05", [10, 1, 0, 15], 4, HV2),
    ("fa:16:3e:00:02:03", [10, 1, 0, 13], 2, HV3),
    ("fa:16:3e:00:02:04", [10, 1, 0, 14], 2, HV1),
    ("fa:16:3e:00:02:01", [10, 1, 0, 11], 1, HV3),
    ("fa:16:3e:00:02:02", [10, 1, 0, 12], 1, HV3),
];

/// `mtd.pcap`: an attack on a VM, the IDS alert, and the evacuation of its
/// host, 30 s over VXLAN from [`T1_US`]. Five VMs (mtd-1..5) on compute-4
/// send 10 frames/s each and answer the gateway's pings (2/s, 2 ms).
/// - 8-11 s: 203.0.113.9 floods mtd-2 (10.1.0.12) with 4000 UDP frames/s
///   (MEDIUM by rx packet rate), and mtd-2 answers 10 pings/s in 80 ms
///   (RTT peaks).
/// - 9.5 s: Suricata alerts on the flood (`rules/alerts/eve.json`);
///   vmsentry maps 10.1.0.12 (learned from mtd-2's traffic) to compute-4 and
///   evacuates it.
/// - From 10 s, one VM every 3 s in the plan's order: a migration stream
///   from compute-4 of 1.1 x its RAM over 0.5 s per MiB, its last frame at
///   compute-4 50 ms before the stream ends (each from its own port), and its RARP announce from the
///   destination 20 + 10 k ms after (k the VM's place in the plan), then its
///   traffic from there.
pub fn mtd() -> Vec<Frame> {
    let gw = mac(GATEWAY);
    let gw_ip = Ipv4Addr::new(10, 1, 0, 1);
    let mut m = Mig { encap: Encap::Vxlan, out: Vec::new() };
    let ms = 1_000i64;
    let to_vm = |hv: Host, inner: &[u8]| frames::vxlan(&Mig::underlay(hv).reverse(), inner);
    for (k, &(vm, vip, ram, dest)) in MTD_VMS.iter().enumerate() {
        let (vm, vip) = (mac(vm), Ipv4Addr::from(vip));
        let start = T1_US + (10 + 3 * k as i64) * S;
        let frames_n = (ram * 1024 * 1024 * 11 / 10).div_ceil(1502) as i64;
        let end = start + ram as i64 * 500 * ms;
        let moved = end + (20 + 10 * k as i64) * ms;
        let own = frames::vxlan(&Mig::underlay(HV4), &frames::udp4(vm, gw, vip, gw_ip, 7000, 53, 50));
        let there = frames::vxlan(&Mig::underlay(dest), &frames::udp4(vm, gw, vip, gw_ip, 7000, 53, 50));
        let last_here = end - 50 * ms;
        let mut t = T1_US + k as i64 * 10 * ms;
        while t < last_here {
            m.out.push(Frame::whole(t, own.clone()));
            t += 100 * ms;
        }
        m.out.push(Frame::whole(last_here, own.clone()));
        m.stream_from(HV4, 50000 + k as u16, dest, start, end, frames_n);
        let rarp = frames::arp(vm, Mac::BROADCAST, true, 3, vm, Ipv4Addr::UNSPECIFIED, vm, Ipv4Addr::UNSPECIFIED);
        let rarp = frames::vxlan(&Mig::underlay(dest), &rarp);
        for j in 0..5 {
            m.out.push(Frame::whole(moved + j * 200 * ms, rarp.clone()));
        }
        let mut t = moved + 50 * ms;
        while t < T1_US + 30 * S {
            m.out.push(Frame::whole(t, there.clone()));
            t += 100 * ms;
        }
        // Pings from the gateway, 2/s until 8 s, answered in 2 ms.
        for j in 0..16i64 {
            let at = T1_US + j * 500 * ms + 5 * ms + k as i64 * ms;
            m.out.push(Frame::whole(at, to_vm(HV4, &frames::icmp4_echo(gw, vm, gw_ip, vip, true, 7, j as u16))));
            let reply = frames::icmp4_echo(vm, gw, vip, gw_ip, false, 7, j as u16);
            m.out.push(Frame::whole(at + 2 * ms, frames::vxlan(&Mig::underlay(HV4), &reply)));
        }
    }
    // The attack on mtd-2, and its slow answers.
    let (victim, vip) = (mac(MTD_VMS[4].0), Ipv4Addr::from(MTD_VMS[4].1));
    let attacker = Ipv4Addr::new(203, 0, 113, 9);
    let flood = to_vm(HV4, &frames::udp4(gw, victim, attacker, vip, 4444, 9, 958));
    m.out.extend(stream(T1_US + 8 * S, 3, 4000, |_, ts| Frame::cut(ts, flood.clone(), flood.len(), 64)));
    for j in 0..30i64 {
        let at = T1_US + 8 * S + j * 100 * ms + 30 * ms;
        m.out.push(Frame::whole(at, to_vm(HV4, &frames::icmp4_echo(gw, victim, gw_ip, vip, true, 8, j as u16))));
        let reply = frames::icmp4_echo(victim, gw, vip, gw_ip, false, 8, j as u16);
        m.out.push(Frame::whole(at + 80 * ms, frames::vxlan(&Mig::underlay(HV4), &reply)));
    }
    m.out
}

/// The scenario captures: file name and generator.
pub const ALL: &[(&str, Generator)] = &[
    ("basic.pcap", basic),
    ("rtt.pcap", rtt),
    ("migration-vxlan.pcap", migration_vxlan),
    ("migration-geneve.pcap", migration_geneve),
    ("migration-plain.pcap", migration_plain),
    ("mtd.pcap", mtd),
];

/// Makes the frames of one scenario.
pub type Generator = fn() -> Vec<Frame>;

/// Writes every scenario capture into `dir`.
pub fn write_all(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, make) in ALL {
        write_pcap(&dir.join(name), &mut make())?;
    }
    Ok(())
}

/// The benchmark capture: `packets` frames of mixed sizes (64 to 1518 bytes,
/// captured whole) among 64 VMs and a gateway, UDP and TCP, over 100 s.
pub fn write_bench(path: &Path, packets: u64) -> std::io::Result<()> {
    write_bench_with(path, packets, false)
}

/// The same frames, each in VXLAN from one of four hypervisors (50 bytes more per frame).
pub fn write_bench_vxlan(path: &Path, packets: u64) -> std::io::Result<()> {
    write_bench_with(path, packets, true)
}

fn write_bench_with(path: &Path, packets: u64, vxlan: bool) -> std::io::Result<()> {
    const SIZES: [usize; 8] = [64, 64, 128, 256, 576, 1024, 1500, 1518];
    let gw = mac(GATEWAY);
    let mut w = super::PcapWriter::create(path, 65535)?;
    let span_us = 100 * S;
    // Build each distinct frame once; only the timestamp changes.
    let mut templates = Vec::new();
    for vm in 0..64u8 {
        let m = Mac([0xfa, 0x16, 0x3e, 0x10, 0x00, vm]);
        for (k, &size) in SIZES.iter().enumerate() {
            let up = k % 2 == 0;
            let (s, d, sip, dip) = if up { (m, gw, ip(vm), GW_IP) } else { (gw, m, GW_IP, ip(vm)) };
            let f = if k % 3 == 0 {
                frames::tcp4(s, d, sip, dip, 40000 + u16::from(vm), 443, 7, Some(9), false, size.saturating_sub(54))
            } else {
                frames::udp4(s, d, sip, dip, 40000 + u16::from(vm), 4789, size.saturating_sub(42))
            };
            let f = if vxlan {
                let hv = [HV1, HV2, HV3, HV1][usize::from(vm) % 4];
                let u = frames::Underlay {
                    src: mac(hv.0),
                    dst: mac(NET_NODE.0),
                    sip: hv.1.into(),
                    dip: NET_NODE.1.into(),
                    vni: 5001,
                };
                frames::vxlan(&u, &f)
            } else {
                f
            };
            templates.push(f);
        }
    }
    for i in 0..packets {
        // A fixed permutation step spreads VMs and sizes evenly.
        let t = &templates[((i * 7919) % templates.len() as u64) as usize];
        let ts = T0_US + (i as i64 * span_us) / packets.max(1) as i64;
        w.write(ts, t.len() as u32, t)?;
    }
    w.finish()
}
