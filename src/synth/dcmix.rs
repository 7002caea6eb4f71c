//! A datacenter mirror-port mix for benchmarks: seeded, deterministic, shaped like the traffic users have.
//!
//! 200 VMs behind one gateway talk to 3,000 outside peers (Zipf popularity)
//! and to each other. TCP carries the timestamps option on every segment,
//! each endpoint with its own 1 kHz clock, and every TSecr echoes the newest
//! TSval that endpoint had received when it sent (as a real stack does), so a
//! pping-style tracker finds real samples. New connections open with a Linux
//! SYN (MSS, SACK permitted, timestamps, window scale); a few SYNs are
//! retransmitted after 1 s and a few are refused with a RST. Long-lived flows
//! were open before the capture started (it begins mid-flow, mid-burst), and
//! carry request/response exchanges and bulk bursts acknowledged every second
//! segment. ICMP echo pairs (1 % unanswered), ARP (5 % gratuitous), DNS
//! queries and answers and RTP-like UDP calls (50 frames/s each way) fill in.
//! [`DcMix::write`] prints the mix it wrote ([`MixStats`]).
//!
//! The VXLAN version wraps the very same inner frames in VXLAN from the VM's
//! hypervisor (one of eight) to the network node or to the other VM's
//! hypervisor. The `flows` knob sets the long-lived pool: 1,000,000 gives a
//! million concurrent TCP flows.

use super::PcapWriter;
use std::collections::BinaryHeap;
use std::fmt;
use std::path::Path;

/// What to generate.
#[derive(Clone, Copy, Debug)]
pub struct DcMix {
    pub frames: u64,
    pub seed: u64,
    /// Wrap every frame in VXLAN (same inner frames, several hypervisors).
    pub vxlan: bool,
    /// Long-lived TCP flows open when the capture starts (default 10,000).
    pub flows: usize,
}

impl Default for DcMix {
    fn default() -> Self {
        DcMix { frames: 5_000_000, seed: 1, vxlan: false, flows: 10_000 }
    }
}

pub const VMS: usize = 200;
pub const PEERS: usize = 3_000;
const HYPERVISORS: usize = 8;
/// Packet time of the first frame: 2023-11-14T22:13:20Z.
const T0: i64 = super::scenario::T0_US;
/// Arrivals per second, for about 250,000 frames per second in all: with
/// these, TCP is 80 % of the frames (a bulk burst is 600 of them, an exchange
/// about 4, a new connection about 12), RTP 12 %, DNS 4 %, ICMP 3 %, ARP 1.5 %.
mod rate {
    pub const EXCHANGES: f64 = 31_800.0;
    /// Share of the exchanges that are bulk bursts instead.
    pub const BULK_SHARE: f64 = 0.0022;
    pub const CONNECTIONS: f64 = 2_500.0;
    pub const PINGS: f64 = 3_750.0;
    pub const ARPS: f64 = 1_900.0;
    pub const DNS: f64 = 5_000.0;
    pub const CALLS: usize = 300;
}
const MS: i64 = 1000;

/// A deterministic generator (xoshiro256**, seeded by splitmix64).
struct Rng([u64; 4]);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        };
        Rng([next(), next(), next(), next()])
    }
    fn u64(&mut self) -> u64 {
        let s = &mut self.0;
        let r = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        r
    }
    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.u64()) * u128::from(n.max(1))) >> 64) as u64
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo).max(1) as u64) as i64
    }
    fn f64(&mut self) -> f64 {
        (self.u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }
    /// Poisson-distributed count with mean `lambda` (small means).
    fn poisson(&mut self, lambda: f64) -> u32 {
        let l = (-lambda).exp();
        let (mut k, mut p) = (0u32, 1.0);
        loop {
            p *= self.f64();
            if p <= l {
                return k;
            }
            k += 1;
        }
    }
}

/// Ranks `0..n` with probability proportional to 1 / (rank + 1)^s.
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (1..=n)
            .map(|k| {
                acc += 1.0 / (k as f64).powf(s);
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf(cdf)
    }
    fn sample(&self, r: &mut Rng) -> usize {
        let u = r.f64();
        self.0.partition_point(|&c| c < u).min(self.0.len() - 1)
    }
}

/// An endpoint: a VM (index below [`VMS`]) or an outside peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Host {
    Vm(u16),
    Peer(u16),
    /// The DNS resolver, behind the gateway.
    Resolver,
    Gateway,
}

const GATEWAY_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xff, 0x00, 0x01];
const GATEWAY_IP: [u8; 4] = [10, 1, 0, 1];
const RESOLVER_IP: [u8; 4] = [10, 1, 255, 53];
const NET_NODE: ([u8; 6], [u8; 4]) = ([0x52, 0x54, 0x00, 0xaa, 0x00, 0xfe], [10, 0, 0, 254]);

fn vm_mac(i: u16) -> [u8; 6] {
    [0xfa, 0x16, 0x3e, 0x20, (i >> 8) as u8, i as u8]
}
fn vm_ip(i: u16) -> [u8; 4] {
    [10, 1, 1 + (i >> 8) as u8, i as u8]
}
fn peer_ip(i: u16) -> [u8; 4] {
    // 3,000 addresses spread over 198.18.0.0/15 (the benchmarking range).
    let x = u32::from(i) * 43 + 11;
    [198, 18 + ((x >> 16) & 1) as u8, (x >> 8) as u8, x as u8]
}
fn hypervisor(i: usize) -> ([u8; 6], [u8; 4]) {
    ([0x52, 0x54, 0x00, 0xaa, 0x01, i as u8 + 1], [10, 0, 0, 41 + i as u8])
}

impl Host {
    fn ip(self) -> [u8; 4] {
        match self {
            Host::Vm(i) => vm_ip(i),
            Host::Peer(i) => peer_ip(i),
            Host::Resolver => RESOLVER_IP,
            Host::Gateway => GATEWAY_IP,
        }
    }
    /// The MAC frames from this host carry at the VMs' vSwitch.
    fn mac(self) -> [u8; 6] {
        match self {
            Host::Vm(i) => vm_mac(i),
            _ => GATEWAY_MAC,
        }
    }
    /// Where the frame's VXLAN tunnel ends on this host's side.
    fn tunnel_end(self) -> ([u8; 6], [u8; 4]) {
        match self {
            Host::Vm(i) => hypervisor(usize::from(i) % HYPERVISORS),
            _ => NET_NODE,
        }
    }
}

/// TCP flags.
mod flag {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// Payload bytes of a full segment with the timestamps option (1514-byte frame).
const MSS: u32 = 1448;

/// One frame waiting in the time-ordered queue.
#[derive(Clone, Copy, Debug)]
struct Pending {
    ts: i64,
    seq: u64,
    what: What,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.ts, self.seq) == (o.ts, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // BinaryHeap is a max-heap: the earliest frame is the greatest.
        (o.ts, o.seq).cmp(&(self.ts, self.seq))
    }
}

#[derive(Clone, Copy, Debug)]
enum What {
    Tcp(TcpSeg),
    Icmp { src: Host, dst: Host, request: bool, id: u16, seq: u16 },
    Arp { src: Host, dst: Option<Host>, reply: bool, sender: Host, target: Host },
    Dns { vm: u16, query: bool, id: u16, name: u8 },
    Rtp { src: Host, dst: Host, sport: u16, dport: u16, seq: u16, ts: u32, ssrc: u32 },
}

#[derive(Clone, Copy, Debug)]
struct TcpSeg {
    src: Host,
    dst: Host,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: u16,
    /// (TSval, TSecr); `None` only on a RST.
    ts: Option<(u32, u32)>,
    /// SYN options (MSS, SACK permitted, timestamps, window scale).
    syn_opts: bool,
    /// A retransmitted SYN.
    again: bool,
}

/// One TCP connection: its two ends (0: client) and what each has sent.
#[derive(Clone, Debug)]
struct Conn {
    host: [Host; 2],
    port: [u16; 2],
    /// One-way delay between the capture point and each end, µs.
    delay: [i64; 2],
    /// Offset of each end's 1 kHz timestamp clock.
    clock: [u32; 2],
    /// Next sequence number of each end.
    next_seq: [u32; 2],
    /// Newest (TSval, end sequence) each end has sent, before this exchange.
    sent: [(u32, u32); 2],
    /// Packet time at which the connection is free for its next exchange.
    busy_until: i64,
}

/// A segment of an exchange before the sweep fills in TSval, TSecr, seq and ack.
#[derive(Clone, Copy, Debug)]
struct Plan {
    ts: i64,
    from: usize,
    flags: u8,
    payload: u32,
}

/// What was written, by kind.
#[derive(Clone, Debug, Default)]
pub struct MixStats {
    pub frames: u64,
    pub bytes: u64,
    pub under_80: u64,
    pub tcp: u64,
    pub tcp_with_timestamps: u64,
    pub tcp_data: u64,
    pub syn: u64,
    pub syn_retransmitted: u64,
    pub syn_refused: u64,
    pub icmp_requests: u64,
    pub icmp_replies: u64,
    pub arp: u64,
    pub arp_gratuitous: u64,
    pub dns: u64,
    pub rtp: u64,
    pub connections_opened: u64,
    pub long_lived_flows: u64,
    pub first_us: i64,
    pub last_us: i64,
}

impl fmt::Display for MixStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.frames.max(1) as f64;
        let pct = |x: u64| 100.0 * x as f64 / n;
        writeln!(
            f,
            "{} frames, {:.1} s, mean frame {:.1} B, {:.1} % under 80 B",
            self.frames,
            (self.last_us - self.first_us) as f64 / 1e6,
            self.bytes as f64 / n,
            pct(self.under_80)
        )?;
        writeln!(
            f,
            "  TCP {:.1} % ({} with the timestamps option, {} carrying data), {} SYNs ({} retransmitted, {} refused)",
            pct(self.tcp),
            self.tcp_with_timestamps,
            self.tcp_data,
            self.syn,
            self.syn_retransmitted,
            self.syn_refused
        )?;
        writeln!(
            f,
            "  {} connections opened in the capture, {} open before it started",
            self.connections_opened, self.long_lived_flows
        )?;
        writeln!(
            f,
            "  ICMP echo {:.1} % ({} requests, {} replies), ARP {:.1} % ({} gratuitous), DNS {:.1} %, RTP {:.1} %",
            pct(self.icmp_requests + self.icmp_replies),
            self.icmp_requests,
            self.icmp_replies,
            pct(self.arp),
            self.arp_gratuitous,
            pct(self.dns),
            pct(self.rtp)
        )
    }
}

struct Gen {
    rng: Rng,
    zipf: Zipf,
    queue: BinaryHeap<Pending>,
    seq: u64,
    /// Long-lived connections, open before the capture started.
    pool: Vec<Conn>,
    /// Per peer, its one-way delay from the capture point (µs).
    peer_delay: Vec<i64>,
    /// Per VM, how fast it answers (one-way delay, µs).
    vm_delay: Vec<i64>,
    next_port: u32,
    icmp_id: u16,
    stats: MixStats,
    calls: Vec<Rtp>,
}

#[derive(Clone, Copy, Debug)]
struct Rtp {
    vm: u16,
    peer: u16,
    ports: (u16, u16),
    ssrc: (u32, u32),
    phase_us: i64,
    seq: u16,
}

impl DcMix {
    /// Writes the capture to `path` and returns what it holds.
    pub fn write(&self, path: &Path) -> std::io::Result<MixStats> {
        let mut w = PcapWriter::create(path, 65535)?;
        let mut g = Gen::new(*self);
        let mut buf = Vec::with_capacity(2048);
        let mut inner = Vec::with_capacity(2048);
        // Exchanges start before the capture does: it begins mid-flow.
        let mut now = T0 - 200 * MS;
        let tick = MS;
        'outer: loop {
            g.start_activities(now, tick);
            let horizon = now + tick;
            while let Some(p) = g.queue.peek() {
                if p.ts >= horizon {
                    break;
                }
                let Some(p) = g.queue.pop() else { break };
                if p.ts < T0 {
                    continue;
                }
                build(&p.what, &mut inner);
                let frame = if self.vxlan {
                    wrap_vxlan(&p.what, &inner, &mut buf);
                    &buf
                } else {
                    &inner
                };
                g.count(&p, inner.len());
                w.write(p.ts, frame.len() as u32, frame)?;
                if g.stats.frames >= self.frames {
                    break 'outer;
                }
            }
            now = horizon;
        }
        w.finish()?;
        Ok(g.stats)
    }
}

impl Gen {
    fn new(cfg: DcMix) -> Gen {
        let mut rng = Rng::new(cfg.seed);
        let zipf = Zipf::new(PEERS, 1.0);
        // Outside peers: 0.3 to 40 ms away; VMs answer in 20 to 400 µs.
        let peer_delay = (0..PEERS).map(|_| rng.range(300, 40_000) / 2).collect();
        let vm_delay = (0..VMS).map(|_| rng.range(20, 400) / 2).collect();
        let mut g = Gen {
            rng,
            zipf,
            queue: BinaryHeap::new(),
            seq: 0,
            pool: Vec::new(),
            peer_delay,
            vm_delay,
            next_port: 0,
            icmp_id: 1,
            stats: MixStats { first_us: T0, ..MixStats::default() },
            calls: Vec::new(),
        };
        for i in 0..cfg.flows {
            let c = g.new_conn(Some(i));
            g.pool.push(c);
        }
        g.stats.long_lived_flows = cfg.flows as u64;
        for k in 0..rate::CALLS as u32 {
            let vm = g.rng.below(VMS as u64) as u16;
            let peer = g.zipf.sample(&mut g.rng) as u16;
            let ssrc = (g.rng.u64() as u32, g.rng.u64() as u32);
            let ports = (16384 + 2 * (k as u16), 20000 + 2 * g.rng.below(5000) as u16);
            let phase_us = g.rng.range(0, 20 * MS);
            g.calls.push(Rtp { vm, peer, ports, ssrc, phase_us, seq: g.rng.u64() as u16 });
        }
        g
    }

    fn push(&mut self, ts: i64, what: What) {
        self.seq += 1;
        self.queue.push(Pending { ts, seq: self.seq, what });
    }

    /// A connection between a VM and a Zipf-popular peer (or, one in five,
    /// another VM); `pool_index` gives long-lived ones unique 5-tuples.
    fn new_conn(&mut self, pool_index: Option<usize>) -> Conn {
        let vm = match pool_index {
            Some(i) => (i % VMS) as u16,
            None => self.rng.below(VMS as u64) as u16,
        };
        let east_west = self.rng.chance(0.2);
        let other = if east_west {
            // Another VM, on another hypervisor.
            let mut o = self.rng.below(VMS as u64) as u16;
            if usize::from(o) % HYPERVISORS == usize::from(vm) % HYPERVISORS {
                o = (o + 1) % VMS as u16;
            }
            Host::Vm(o)
        } else {
            Host::Peer(self.zipf.sample(&mut self.rng) as u16)
        };
        // Half the connections come in to the VM (it serves), half go out;
        // between two VMs of the pool, the pool's VM is the client, so the
        // (VM, client port) pair names the flow alone.
        let outgoing = self.rng.chance(0.5) || (east_west && pool_index.is_some());
        let (client, server) = if outgoing { (Host::Vm(vm), other) } else { (other, Host::Vm(vm)) };
        let sport = match pool_index {
            // 20,000 client ports per VM for the pool, 8,000 more for new connections.
            Some(i) => 32768 + ((i / VMS) % 20_000) as u16,
            None => {
                self.next_port = (self.next_port + 1) % 8_000;
                52768 + self.next_port as u16
            }
        };
        let dport = [443u16, 443, 443, 80, 8080, 5432, 6379, 22][self.rng.below(8) as usize];
        let delay = [self.delay_of(client), self.delay_of(server)];
        let isn = [self.rng.u64() as u32, self.rng.u64() as u32];
        let clock = [self.rng.u64() as u32, self.rng.u64() as u32];
        Conn {
            host: [client, server],
            port: [sport, dport],
            delay,
            clock,
            next_seq: isn,
            sent: [(clock[0], isn[0]), (clock[1], isn[1])],
            busy_until: i64::MIN,
        }
    }

    fn delay_of(&self, h: Host) -> i64 {
        match h {
            Host::Vm(i) => self.vm_delay[usize::from(i)],
            Host::Peer(i) => self.peer_delay[usize::from(i)],
            _ => 100,
        }
    }

    /// Starts this millisecond's exchanges (Poisson arrivals per kind, at
    /// rates per second chosen so the mix comes out as documented).
    fn start_activities(&mut self, now: i64, tick: i64) {
        let per_tick = |per_s: f64| per_s * tick as f64 / 1e6;
        for _ in 0..self.rng.poisson(per_tick(rate::EXCHANGES)) {
            let start = now + self.rng.range(0, tick);
            // A busy connection is skipped for another (a few tries).
            let Some(i) = (0..4)
                .map(|_| self.rng.below(self.pool.len() as u64) as usize)
                .find(|&i| self.pool[i].busy_until <= start)
            else {
                continue;
            };
            let ph = self.placeholder();
            let mut c = std::mem::replace(&mut self.pool[i], ph);
            if self.rng.chance(rate::BULK_SHARE) {
                self.bulk(&mut c, start);
            } else {
                self.exchange(&mut c, start);
            }
            self.pool[i] = c;
        }
        for _ in 0..self.rng.poisson(per_tick(rate::CONNECTIONS)) {
            let start = now + self.rng.range(0, tick);
            self.short_connection(start);
        }
        for _ in 0..self.rng.poisson(per_tick(rate::PINGS)) {
            let t = now + self.rng.range(0, tick);
            self.ping(t);
        }
        for _ in 0..self.rng.poisson(per_tick(rate::ARPS)) {
            let t = now + self.rng.range(0, tick);
            self.arp(t);
        }
        for _ in 0..self.rng.poisson(per_tick(rate::DNS)) {
            let t = now + self.rng.range(0, tick);
            self.dns(t);
        }
        self.rtp(now, tick);
    }

    fn placeholder(&self) -> Conn {
        Conn {
            host: [Host::Gateway; 2],
            port: [0; 2],
            delay: [0; 2],
            clock: [0; 2],
            next_seq: [0; 2],
            sent: [(0, 0); 2],
            busy_until: 0,
        }
    }

    /// Request and response on an open connection, with delayed ACKs.
    fn exchange(&mut self, c: &mut Conn, t0: i64) {
        let mut plan = Vec::with_capacity(16);
        let req = self.rng.range(60, 400) as u32;
        plan.push(Plan { ts: t0, from: 0, flags: flag::ACK | flag::PSH, payload: req });
        // The server answers after crossing to it, thinking, and back; half
        // the time it thinks long enough to acknowledge the request first.
        let arrives = t0 + 2 * c.delay[1];
        let think = if self.rng.chance(0.5) {
            plan.push(Plan { ts: arrives + 10, from: 1, flags: flag::ACK, payload: 0 });
            self.rng.range(1_000, 30_000)
        } else {
            self.rng.range(20, 2_000)
        };
        let resp_at = arrives + think;
        let resp =
            if self.rng.chance(0.9) { self.rng.range(40, 600) as u32 } else { self.rng.range(1500, 8_000) as u32 };
        let segs = resp.div_ceil(MSS);
        let gap = 12; // µs per full segment at 1 Gbit/s
        for k in 0..segs {
            let payload = if k + 1 == segs { resp - k * MSS } else { MSS };
            let fl = if k + 1 == segs { flag::ACK | flag::PSH } else { flag::ACK };
            plan.push(Plan { ts: resp_at + i64::from(k) * gap, from: 1, flags: fl, payload });
            // The client acknowledges every second segment, and the last
            // one of an odd count after its delayed-ACK timer.
            let at = resp_at + i64::from(k) * gap + 2 * c.delay[0] + 15;
            if k % 2 == 1 {
                plan.push(Plan { ts: at, from: 0, flags: flag::ACK, payload: 0 });
            } else if k + 1 == segs {
                plan.push(Plan { ts: at + 40 * MS, from: 0, flags: flag::ACK, payload: 0 });
            }
        }
        self.run_plan(c, &mut plan);
    }

    /// A bulk burst from one end, in flights clocked by the other's ACKs.
    fn bulk(&mut self, c: &mut Conn, t0: i64) {
        let from = self.rng.below(2) as usize;
        let to = 1 - from;
        let total = self.rng.range(100, 700) as u32;
        let mut plan = Vec::with_capacity(total as usize * 3 / 2 + 4);
        let (mut t, mut sent, mut flight) = (t0, 0u32, 10u32);
        while sent < total {
            let n = flight.min(total - sent);
            let mut last_ack = t;
            for k in 0..n {
                let at = t + i64::from(k) * 12;
                plan.push(Plan { ts: at, from, flags: flag::ACK, payload: MSS });
                if (sent + k) % 2 == 1 || sent + k + 1 == total {
                    last_ack = at + 2 * c.delay[to] + 10;
                    plan.push(Plan { ts: last_ack, from: to, flags: flag::ACK, payload: 0 });
                }
            }
            sent += n;
            // The next flight leaves when the ACKs are back at the sender.
            t = last_ack + 2 * c.delay[from];
            flight = (flight * 2).min(64);
        }
        self.run_plan(c, &mut plan);
    }

    /// A new connection: handshake (some SYNs retransmitted or refused),
    /// one or two exchanges, and the close.
    fn short_connection(&mut self, t0: i64) {
        let mut c = self.new_conn(None);
        let mut plan = vec![Plan { ts: t0, from: 0, flags: flag::SYN, payload: 0 }];
        let mut t = t0;
        if self.rng.chance(0.03) {
            // The first SYN is lost on the far side; Linux retransmits after 1 s.
            t += 1_000 * MS;
            plan.push(Plan { ts: t, from: 0, flags: flag::SYN, payload: 0 });
        }
        if self.rng.chance(0.02) {
            plan.push(Plan { ts: t + 2 * c.delay[1] + 5, from: 1, flags: flag::RST | flag::ACK, payload: 0 });
            self.run_plan(&mut c, &mut plan);
            return;
        }
        let synack = t + 2 * c.delay[1] + 10;
        plan.push(Plan { ts: synack, from: 1, flags: flag::SYN | flag::ACK, payload: 0 });
        let ack = synack + 2 * c.delay[0] + 5;
        plan.push(Plan { ts: ack, from: 0, flags: flag::ACK, payload: 0 });
        self.run_plan(&mut c, &mut plan);
        let mut start = ack + 10;
        for _ in 0..1 + self.rng.below(2) {
            self.exchange(&mut c, start);
            start = c.busy_until + self.rng.range(100, 5_000);
        }
        let mut plan = vec![
            Plan { ts: start, from: 0, flags: flag::FIN | flag::ACK, payload: 0 },
            Plan { ts: start + 2 * c.delay[1] + 20, from: 1, flags: flag::FIN | flag::ACK, payload: 0 },
        ];
        plan.push(Plan { ts: plan[1].ts + 2 * c.delay[0] + 5, from: 0, flags: flag::ACK, payload: 0 });
        self.run_plan(&mut c, &mut plan);
    }

    /// Fills in sequence numbers, ACKs and timestamps in time order, as each
    /// end's stack would: an end acknowledges and echoes the newest segment
    /// of the other end that reached it before it sent.
    fn run_plan(&mut self, c: &mut Conn, plan: &mut [Plan]) {
        plan.sort_by_key(|p| p.ts);
        // Per end: (arrival at the other end, TSval, end sequence) of what it sent.
        let mut sent: [Vec<(i64, u32, u32)>; 2] = [Vec::new(), Vec::new()];
        let mut seen = [0usize; 2];
        let mut newest_from = [c.sent[0], c.sent[1]];
        let mut syn_sent = [false; 2];
        for p in plan.iter() {
            let me = p.from;
            let other = 1 - me;
            let send_time = p.ts - c.delay[me];
            // What of the other end's has arrived here by now.
            while seen[other] < sent[other].len() && sent[other][seen[other]].0 <= send_time {
                let (_, v, e) = sent[other][seen[other]];
                newest_from[other] = (v, e);
                seen[other] += 1;
            }
            let tsval = c.clock[me].wrapping_add(send_time.div_euclid(MS) as u32);
            let syn = p.flags & flag::SYN != 0;
            let pure_syn = syn && p.flags & flag::ACK == 0;
            let rst = p.flags & flag::RST != 0;
            // A retransmitted SYN repeats the first one's sequence number.
            let again = pure_syn && syn_sent[me];
            let seq = if again { c.next_seq[me].wrapping_sub(1) } else { c.next_seq[me] };
            if !again {
                let consumed = p.payload + u32::from(syn) + u32::from(p.flags & flag::FIN != 0);
                c.next_seq[me] = c.next_seq[me].wrapping_add(consumed);
            }
            syn_sent[me] |= pure_syn;
            let (tsecr, ack) = if pure_syn { (0, 0) } else { newest_from[other] };
            sent[me].push((p.ts + c.delay[other], tsval, c.next_seq[me]));
            let seg = TcpSeg {
                src: c.host[me],
                dst: c.host[other],
                sport: c.port[me],
                dport: c.port[other],
                seq,
                ack,
                flags: p.flags,
                payload: p.payload as u16,
                // Linux refuses a SYN with a bare RST/ACK.
                ts: if rst { None } else { Some((tsval, tsecr)) },
                syn_opts: syn,
                again,
            };
            self.push(p.ts, What::Tcp(seg));
        }
        for (e, s) in sent.iter().enumerate() {
            if let Some(&(_, v, end)) = s.last() {
                c.sent[e] = (v, end);
            }
        }
        c.busy_until = plan.last().map_or(c.busy_until, |p| p.ts + 1_000);
    }

    fn ping(&mut self, t: i64) {
        let vm = Host::Vm(self.rng.below(VMS as u64) as u16);
        let other = if self.rng.chance(0.3) {
            Host::Vm(self.rng.below(VMS as u64) as u16)
        } else {
            Host::Peer(self.zipf.sample(&mut self.rng) as u16)
        };
        let (src, dst) = if self.rng.chance(0.5) { (vm, other) } else { (other, vm) };
        if src == dst {
            return;
        }
        self.icmp_id = self.icmp_id.wrapping_add(1);
        let (id, seq) = (self.icmp_id, self.rng.below(60_000) as u16);
        self.push(t, What::Icmp { src, dst, request: true, id, seq });
        if !self.rng.chance(0.01) {
            let rtt = 2 * self.delay_of(dst) + 30;
            self.push(t + rtt, What::Icmp { src: dst, dst: src, request: false, id, seq });
        }
    }

    fn arp(&mut self, t: i64) {
        let vm = Host::Vm(self.rng.below(VMS as u64) as u16);
        if self.rng.chance(0.05) {
            // Gratuitous: a VM announces its own address to everyone.
            self.push(t, What::Arp { src: vm, dst: None, reply: false, sender: vm, target: vm });
            return;
        }
        let asker = if self.rng.chance(0.5) { Host::Gateway } else { Host::Vm(self.rng.below(VMS as u64) as u16) };
        if asker == vm {
            return;
        }
        self.push(t, What::Arp { src: asker, dst: None, reply: false, sender: asker, target: vm });
        self.push(
            t + 2 * self.delay_of(vm),
            What::Arp { src: vm, dst: Some(asker), reply: true, sender: vm, target: asker },
        );
    }

    fn dns(&mut self, t: i64) {
        let vm = self.rng.below(VMS as u64) as u16;
        let id = self.rng.u64() as u16;
        let name = self.rng.below(64) as u8;
        self.push(t, What::Dns { vm, query: true, id, name });
        let at = t + self.rng.range(200, 3_000);
        self.push(at, What::Dns { vm, query: false, id, name });
    }

    /// The calls: 50 frames a second each way for the whole capture.
    fn rtp(&mut self, now: i64, tick: i64) {
        for k in 0..self.calls.len() {
            let c = self.calls[k];
            let period = 20 * MS;
            let first = now + (c.phase_us - now).rem_euclid(period);
            if first >= now + tick {
                continue;
            }
            let seq = c.seq;
            let ts = (first / 125) as u32; // 8 kHz media clock
            let (vm, peer) = (Host::Vm(c.vm), Host::Peer(c.peer));
            self.push(
                first,
                What::Rtp { src: vm, dst: peer, sport: c.ports.0, dport: c.ports.1, seq, ts, ssrc: c.ssrc.0 },
            );
            let back = first + 3 * MS;
            self.push(
                back,
                What::Rtp { src: peer, dst: vm, sport: c.ports.1, dport: c.ports.0, seq, ts, ssrc: c.ssrc.1 },
            );
            self.calls[k].seq = seq.wrapping_add(1);
        }
    }

    fn count(&mut self, p: &Pending, len: usize) {
        let s = &mut self.stats;
        s.frames += 1;
        s.bytes += len as u64;
        s.under_80 += u64::from(len < 80);
        s.last_us = p.ts;
        match p.what {
            What::Tcp(t) => {
                s.tcp += 1;
                s.tcp_with_timestamps += u64::from(t.ts.is_some());
                s.tcp_data += u64::from(t.payload > 0);
                let syn = t.flags & flag::SYN != 0 && t.flags & flag::ACK == 0;
                s.syn += u64::from(syn);
                s.syn_retransmitted += u64::from(t.again);
                s.connections_opened += u64::from(syn && !t.again);
                s.syn_refused += u64::from(t.flags & flag::RST != 0);
            }
            What::Icmp { request, .. } => {
                if request {
                    s.icmp_requests += 1
                } else {
                    s.icmp_replies += 1
                }
            }
            What::Arp { dst, sender, target, .. } => {
                s.arp += 1;
                s.arp_gratuitous += u64::from(dst.is_none() && sender == target);
            }
            What::Dns { .. } => s.dns += 1,
            What::Rtp { .. } => s.rtp += 1,
        }
    }
}

/// Frame field offsets and constants the builder writes.
mod field {
    pub const IPV4_LEN: usize = 20;
    pub const UDP_LEN: usize = 8;
    pub const ETHERTYPE_IPV4: u16 = 0x0800;
    pub const ETHERTYPE_ARP: u16 = 0x0806;
    pub const PROTO_ICMP: u8 = 1;
    pub const PROTO_TCP: u8 = 6;
    pub const PROTO_UDP: u8 = 17;
    /// Ethernet's minimum frame without the FCS.
    pub const MIN_FRAME: usize = 60;
    pub const VXLAN_PORT: u16 = 4789;
    pub const VNI: u32 = 5001;
}

fn eth(out: &mut Vec<u8>, dst: [u8; 6], src: [u8; 6], ethertype: u16) {
    out.extend_from_slice(&dst);
    out.extend_from_slice(&src);
    out.extend_from_slice(&ethertype.to_be_bytes());
}

fn csum_add(mut sum: u32, d: &[u8]) -> u32 {
    let mut chunks = d.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u32::from(*b) << 8;
    }
    sum
}
fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// IPv4 header (no options, DF set) with its checksum.
fn ipv4(out: &mut Vec<u8>, src: [u8; 4], dst: [u8; 4], proto: u8, payload_len: usize, id: u16) {
    let start = out.len();
    let total = (field::IPV4_LEN + payload_len) as u16;
    out.extend_from_slice(&[0x45, 0]);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x40, 0, 64, proto, 0, 0]);
    out.extend_from_slice(&src);
    out.extend_from_slice(&dst);
    let c = csum_fold(csum_add(0, &out[start..]));
    out[start + 10..start + 12].copy_from_slice(&c.to_be_bytes());
}

fn pseudo(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> u32 {
    let mut s = csum_add(0, &src);
    s = csum_add(s, &dst);
    s + u32::from(proto) + len as u32
}

/// Builds the frame as the VMs' vSwitch carries it (no tunnel).
fn build(w: &What, out: &mut Vec<u8>) {
    out.clear();
    match *w {
        What::Tcp(t) => {
            let mut opts = [0u8; 20];
            let olen = match (t.ts, t.syn_opts) {
                (Some((v, e)), true) => {
                    // Linux's SYN: MSS 1460, SACK permitted, timestamps, NOP, window scale 7.
                    opts[..4].copy_from_slice(&[2, 4, 0x05, 0xb4]);
                    opts[4..8].copy_from_slice(&[4, 2, 8, 10]);
                    opts[8..12].copy_from_slice(&v.to_be_bytes());
                    opts[12..16].copy_from_slice(&e.to_be_bytes());
                    opts[16..20].copy_from_slice(&[1, 3, 3, 7]);
                    20
                }
                (Some((v, e)), false) => {
                    opts[..4].copy_from_slice(&[1, 1, 8, 10]);
                    opts[4..8].copy_from_slice(&v.to_be_bytes());
                    opts[8..12].copy_from_slice(&e.to_be_bytes());
                    12
                }
                (None, _) => 0,
            };
            let hlen = 20 + olen;
            let l4_len = hlen + usize::from(t.payload);
            let (src, dst) = (t.src.ip(), t.dst.ip());
            eth(out, t.dst.mac(), t.src.mac(), field::ETHERTYPE_IPV4);
            ipv4(out, src, dst, field::PROTO_TCP, l4_len, t.seq as u16);
            let l4 = out.len();
            out.extend_from_slice(&t.sport.to_be_bytes());
            out.extend_from_slice(&t.dport.to_be_bytes());
            out.extend_from_slice(&t.seq.to_be_bytes());
            out.extend_from_slice(&t.ack.to_be_bytes());
            let win: u16 = if t.flags & flag::SYN != 0 { 64240 } else { 501 };
            out.extend_from_slice(&[((hlen / 4) as u8) << 4, t.flags]);
            out.extend_from_slice(&win.to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0]);
            out.extend_from_slice(&opts[..olen]);
            // The payload is zeros: it adds nothing to the checksum.
            let c = csum_fold(csum_add(pseudo(src, dst, field::PROTO_TCP, l4_len), &out[l4..]));
            out[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
            out.resize(out.len() + usize::from(t.payload), 0);
        }
        What::Icmp { src, dst, request, id, seq } => {
            eth(out, dst.mac(), src.mac(), field::ETHERTYPE_IPV4);
            ipv4(out, src.ip(), dst.ip(), field::PROTO_ICMP, 64, id);
            let l4 = out.len();
            out.extend_from_slice(&[if request { 8 } else { 0 }, 0, 0, 0]);
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend((0..56u8).map(|b| b.wrapping_add(0x10)));
            let c = csum_fold(csum_add(0, &out[l4..]));
            out[l4 + 2..l4 + 4].copy_from_slice(&c.to_be_bytes());
        }
        What::Arp { src, dst, reply, sender, target } => {
            let dmac = dst.map_or([0xff; 6], Host::mac);
            eth(out, dmac, src.mac(), field::ETHERTYPE_ARP);
            out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, if reply { 2 } else { 1 }]);
            out.extend_from_slice(&sender.mac());
            out.extend_from_slice(&sender.ip());
            out.extend_from_slice(&if reply { target.mac() } else { [0; 6] });
            out.extend_from_slice(&target.ip());
        }
        What::Dns { vm, query, id, name } => {
            let mut p = Vec::with_capacity(128);
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(if query { &[0x01, 0x00] } else { &[0x81, 0x80] });
            p.extend_from_slice(&[0, 1, 0, u8::from(!query), 0, 0, 0, 0]);
            // svc-NN.internal
            let label = format!("svc-{name:02}");
            p.push(label.len() as u8);
            p.extend_from_slice(label.as_bytes());
            p.push(8);
            p.extend_from_slice(b"internal");
            p.push(0);
            p.extend_from_slice(&[0, 1, 0, 1]);
            if !query {
                p.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 10, 1, 200, name]);
            }
            let (s, d, sp, dp) = if query {
                (Host::Vm(vm), Host::Resolver, 40_000 + u16::from(name), 53)
            } else {
                (Host::Resolver, Host::Vm(vm), 53, 40_000 + u16::from(name))
            };
            udp_frame(out, s, d, sp, dp, &p, id);
        }
        What::Rtp { src, dst, sport, dport, seq, ts, ssrc } => {
            let mut p = [0u8; 172];
            p[..2].copy_from_slice(&[0x80, 0x00]); // RTP v2, PCMU
            p[2..4].copy_from_slice(&seq.to_be_bytes());
            p[4..8].copy_from_slice(&ts.to_be_bytes());
            p[8..12].copy_from_slice(&ssrc.to_be_bytes());
            for (k, b) in p[12..].iter_mut().enumerate() {
                *b = 0xff ^ (k as u8);
            }
            udp_frame(out, src, dst, sport, dport, &p, seq);
        }
    }
    if out.len() < field::MIN_FRAME {
        out.resize(field::MIN_FRAME, 0);
    }
}

fn udp_frame(out: &mut Vec<u8>, s: Host, d: Host, sport: u16, dport: u16, payload: &[u8], id: u16) {
    let len = field::UDP_LEN + payload.len();
    eth(out, d.mac(), s.mac(), field::ETHERTYPE_IPV4);
    ipv4(out, s.ip(), d.ip(), field::PROTO_UDP, len, id);
    let l4 = out.len();
    out.extend_from_slice(&sport.to_be_bytes());
    out.extend_from_slice(&dport.to_be_bytes());
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(payload);
    let c = csum_fold(csum_add(pseudo(s.ip(), d.ip(), field::PROTO_UDP, len), &out[l4..]));
    out[l4 + 6..l4 + 8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
}

/// The inner frame in VXLAN between the two hosts' tunnel ends.
fn wrap_vxlan(w: &What, inner: &[u8], out: &mut Vec<u8>) {
    let (src, dst) = match *w {
        What::Tcp(t) => (t.src, t.dst),
        What::Icmp { src, dst, .. } | What::Rtp { src, dst, .. } => (src, dst),
        What::Arp { src, dst, target, .. } => (src, dst.unwrap_or(if target == src { Host::Gateway } else { target })),
        What::Dns { vm, query, .. } => {
            if query {
                (Host::Vm(vm), Host::Resolver)
            } else {
                (Host::Resolver, Host::Vm(vm))
            }
        }
    };
    let (a, b) = (src.tunnel_end(), dst.tunnel_end());
    // Same hypervisor both sides (a VM's broadcast): to the network node.
    let b = if a == b { NET_NODE } else { b };
    let (a, b) = if a == b { (a, hypervisor(0)) } else { (a, b) };
    out.clear();
    let udp_len = field::UDP_LEN + 8 + inner.len();
    eth(out, b.0, a.0, field::ETHERTYPE_IPV4);
    ipv4(out, a.1, b.1, field::PROTO_UDP, udp_len, inner.len() as u16);
    // Linux picks the source port from the inner flow's hash.
    let h = inner[26..inner.len().min(38)].iter().fold(0u16, |h, &x| h.rotate_left(3) ^ u16::from(x));
    out.extend_from_slice(&(49152 | (h & 0x3fff)).to_be_bytes());
    out.extend_from_slice(&field::VXLAN_PORT.to_be_bytes());
    out.extend_from_slice(&(udp_len as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0]); // UDP checksum 0, as Linux sends VXLAN over IPv4
    out.extend_from_slice(&[0x08, 0, 0, 0]);
    out.extend_from_slice(&(field::VNI << 8).to_be_bytes());
    out.extend_from_slice(inner);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode, linktype, Tunnels, L4};
    use crate::vocab::PacketTime;

    fn frames(mix: DcMix) -> (MixStats, Vec<(i64, Vec<u8>)>) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mix.pcap");
        let stats = mix.write(&p).unwrap();
        let mut cap = pcap::Capture::from_file(&p).unwrap();
        let mut out = Vec::new();
        while let Ok(pkt) = cap.next_packet() {
            let ts = pkt.header.ts.tv_sec * 1_000_000 + pkt.header.ts.tv_usec;
            out.push((ts, pkt.data.to_vec()));
        }
        (stats, out)
    }

    #[test]
    fn the_mix_is_deterministic_ordered_and_decodes_cleanly() {
        let mix = DcMix { frames: 30_000, ..DcMix::default() };
        let (a, fa) = frames(mix);
        let (_, fb) = frames(mix);
        assert_eq!(fa, fb, "same seed, same bytes");
        assert_eq!(fa.len(), 30_000);
        assert!(fa.windows(2).all(|w| w[0].0 <= w[1].0), "time ordered");
        let tun = Tunnels::default();
        let mut ts_opts = 0;
        for (ts, f) in &fa {
            let o = decode(&tun, linktype::ETHERNET, PacketTime::from_micros(*ts), f.len() as u32, f.len() as u32, f);
            assert_eq!(o.error, None, "{f:02x?}");
            if let L4::Tcp(t) = o.l4 {
                ts_opts += u64::from(t.timestamps.is_some());
            }
        }
        assert_eq!(ts_opts, a.tcp_with_timestamps);
        assert_eq!(a.tcp - a.tcp_with_timestamps, a.syn_refused, "only the RSTs lack timestamps");
        let (_, fc) = frames(DcMix { seed: 2, ..mix });
        assert_ne!(fa, fc, "another seed, another capture");
    }

    #[test]
    fn the_vxlan_version_carries_the_same_inner_frames() {
        let mix = DcMix { frames: 5_000, ..DcMix::default() };
        let (_, plain) = frames(mix);
        let (_, tunneled) = frames(DcMix { vxlan: true, ..mix });
        let tun = Tunnels::default();
        let mut hvs = std::collections::HashSet::new();
        for ((ta, a), (tb, b)) in plain.iter().zip(&tunneled) {
            assert_eq!(ta, tb);
            assert_eq!(&b[50..], &a[..]);
            let o = decode(&tun, linktype::ETHERNET, PacketTime::from_micros(*tb), b.len() as u32, b.len() as u32, b);
            assert_eq!(o.error, None);
            hvs.insert(o.outer.unwrap().src_mac);
        }
        assert!(hvs.len() > 4, "several hypervisors: {}", hvs.len());
    }
}
