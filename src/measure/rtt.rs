//! Passive RTT: per-shard flow state that turns answering packets into samples.
//!
//! A sample closes on the packet that answers, and belongs to the MAC that
//! sent it (how fast that VM answers, seen from the vSwitch):
//! - ICMP/ICMPv6 echo reply to its request (addresses, id, seq);
//! - TCP SYN/ACK to its SYN, timed from the *last* SYN before it (a
//!   retransmitted SYN restarts the clock);
//! - TCP timestamps, as pping does: a TSecr that echoes a TSval first seen in
//!   the other direction; a TSval is recorded only when it is new for its
//!   direction, and matched once;
//! - TCP without timestamps: the end sequence of a data segment matched to
//!   the first ACK equal to it; a segment that repeats sequence space already
//!   sent is a retransmission and voids what it overlaps (Karn's rule).
//!
//! One answering packet gives at most one sample (handshake before
//! timestamps). Everything is bounded: flows (`limits.rtt_flows`, split
//! evenly across shards), outstanding probes per flow direction
//! ([`PROBES_PER_DIRECTION`]) and echo requests (`limits.rtt_echo_probes`);
//! probes expire after `rtt.probe_timeout_ms` and flows after
//! `rtt.flow_timeout_s` of packet time. Evictions and expiries are counted.

use crate::decode::{tcp_flags, IcmpInfo, Mac, Net, Observation, TcpInfo, L4};
use crate::time::PacketTime;
use rustc_hash::FxHashMap;
use serde::Serialize;
use std::net::IpAddr;

/// Outstanding probes kept per direction of a TCP flow (timestamps or segments).
pub const PROBES_PER_DIRECTION: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleKind {
    /// ICMP or ICMPv6 echo reply.
    Echo,
    /// TCP SYN/ACK.
    Handshake,
    /// TCP timestamp echo.
    Timestamp,
    /// TCP ACK of a data segment (no timestamps).
    Ack,
}

/// One RTT sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RttSample {
    /// When the answering packet was seen.
    pub ts: PacketTime,
    /// Who answered.
    pub mac: Mac,
    pub rtt_us: i64,
    pub kind: SampleKind,
    /// The answering packet's addresses and ports.
    pub src: (IpAddr, u16),
    pub dst: (IpAddr, u16),
}

/// Counters of the tracker's bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RttCounts {
    pub flow_evictions: u64,
    pub probe_evictions: u64,
    pub probe_timeouts: u64,
}

impl RttCounts {
    pub fn add(&mut self, o: &RttCounts) {
        self.flow_evictions += o.flow_evictions;
        self.probe_evictions += o.probe_evictions;
        self.probe_timeouts += o.probe_timeouts;
    }
}

/// A small fixed ring of (key, time) probes: no allocation per packet.
#[derive(Clone, Copy, Debug, Default)]
struct Probes {
    items: [(u32, i64); PROBES_PER_DIRECTION],
    len: u8,
    /// Index of the oldest item.
    head: u8,
}

impl Probes {
    /// Adds a probe; returns true when the oldest had to be dropped.
    fn push(&mut self, key: u32, t: i64) -> bool {
        let cap = PROBES_PER_DIRECTION as u8;
        if self.len == cap {
            self.items[self.head as usize] = (key, t);
            self.head = (self.head + 1) % cap;
            true
        } else {
            let i = (self.head + self.len) % cap;
            self.items[i as usize] = (key, t);
            self.len += 1;
            false
        }
    }

    fn iter(&self) -> impl Iterator<Item = (usize, (u32, i64))> + '_ {
        let cap = PROBES_PER_DIRECTION;
        (0..self.len as usize).map(move |k| {
            let i = (self.head as usize + k) % cap;
            (i, self.items[i])
        })
    }

    /// Keeps only the probes `keep` says yes to; returns how many were removed.
    fn retain(&mut self, mut keep: impl FnMut(u32, i64) -> bool) -> u64 {
        let mut kept = [(0u32, 0i64); PROBES_PER_DIRECTION];
        let mut n = 0usize;
        let mut removed = 0;
        for (_, (k, t)) in self.iter() {
            if keep(k, t) {
                kept[n] = (k, t);
                n += 1;
            } else {
                removed += 1;
            }
        }
        self.items = kept;
        self.len = n as u8;
        self.head = 0;
        removed
    }

    /// Removes and returns the time of the probe with exactly this key.
    fn take(&mut self, key: u32) -> Option<i64> {
        let mut found = None;
        self.retain(|k, t| {
            if found.is_none() && k == key {
                found = Some(t);
                false
            } else {
                true
            }
        });
        found
    }
}

/// Per-direction TCP state (index 0: from the lower endpoint).
#[derive(Clone, Copy, Debug, Default)]
struct TcpDir {
    /// Time of the last SYN (without ACK) sent this way, not yet answered.
    syn: Option<i64>,
    last_tsval: Option<u32>,
    tsvals: Probes,
    /// Highest end sequence sent this way, for Karn's rule.
    seq_high: Option<u32>,
    segments: Probes,
}

#[derive(Clone, Copy, Debug, Default)]
struct TcpFlow {
    last_seen: i64,
    uses_timestamps: bool,
    dir: [TcpDir; 2],
}

/// Both endpoints, lower first, so both directions share one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FlowKey {
    a: (IpAddr, u16),
    b: (IpAddr, u16),
}

impl FlowKey {
    /// The key and the direction of a packet from `src` to `dst` (0: a→b).
    fn of(src: (IpAddr, u16), dst: (IpAddr, u16)) -> (FlowKey, usize) {
        if src <= dst {
            (FlowKey { a: src, b: dst }, 0)
        } else {
            (FlowKey { a: dst, b: src }, 1)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct EchoKey {
    /// Request source and destination.
    src: IpAddr,
    dst: IpAddr,
    id: u16,
    seq: u16,
}

/// The RTT tracker of one shard.
pub struct RttTracker {
    flows: FxHashMap<FlowKey, TcpFlow>,
    echoes: FxHashMap<EchoKey, i64>,
    max_flows: usize,
    max_echoes: usize,
    probe_timeout_us: i64,
    flow_timeout_us: i64,
    pub counts: RttCounts,
    samples: Vec<RttSample>,
}

/// Bytes one tracked TCP flow takes in the table (entry, excluding the hash
/// table's spare capacity).
pub const FLOW_ENTRY_BYTES: usize = std::mem::size_of::<(FlowKey, TcpFlow)>() + 1;
/// Bytes one outstanding echo request takes.
pub const ECHO_ENTRY_BYTES: usize = std::mem::size_of::<(EchoKey, i64)>() + 1;

impl RttTracker {
    pub fn new(max_flows: usize, max_echoes: usize, probe_timeout_ms: u64, flow_timeout_s: u64) -> Self {
        RttTracker {
            flows: FxHashMap::default(),
            echoes: FxHashMap::default(),
            max_flows: max_flows.max(1),
            max_echoes: max_echoes.max(1),
            probe_timeout_us: probe_timeout_ms as i64 * 1000,
            flow_timeout_us: flow_timeout_s as i64 * 1_000_000,
            counts: RttCounts::default(),
            samples: Vec::new(),
        }
    }

    /// Looks at one decoded frame; a sample, if it closes one, is kept for the window.
    #[inline]
    pub fn observe(&mut self, o: &Observation) {
        let (Net::Ip { src, dst, fragment: false, .. }, Some(l2)) = (o.net, o.l2) else { return };
        match o.l4 {
            L4::Tcp(t) => self.tcp(o.ts, l2.src, src, dst, &t),
            L4::Icmp(i) => self.icmp(o.ts, l2.src, src, dst, &i),
            _ => {}
        }
    }

    fn icmp(&mut self, ts: PacketTime, mac: Mac, src: IpAddr, dst: IpAddr, i: &IcmpInfo) {
        let (request, reply) = if i.v6 { (128, 129) } else { (8, 0) };
        let t = ts.as_micros();
        if i.icmp_type == request && i.code == 0 {
            let key = EchoKey { src, dst, id: i.id, seq: i.seq };
            if !self.echoes.contains_key(&key) && self.echoes.len() >= self.max_echoes {
                self.sweep_echoes(t);
                if self.echoes.len() >= self.max_echoes {
                    self.counts.probe_evictions += 1;
                    return;
                }
            }
            // A repeated request (same id and seq) keeps the first one's time.
            self.echoes.entry(key).or_insert(t);
        } else if i.icmp_type == reply && i.code == 0 {
            let key = EchoKey { src: dst, dst: src, id: i.id, seq: i.seq };
            if let Some(sent) = self.echoes.remove(&key) {
                self.sample(ts, mac, t - sent, SampleKind::Echo, (src, 0), (dst, 0));
            }
        }
    }

    fn tcp(&mut self, ts: PacketTime, mac: Mac, src: IpAddr, dst: IpAddr, tcp: &TcpInfo) {
        let t = ts.as_micros();
        let (key, d) = FlowKey::of((src, tcp.src_port), (dst, tcp.dst_port));
        if !self.flows.contains_key(&key) && self.flows.len() >= self.max_flows {
            self.make_room(t);
        }
        let flow = self.flows.entry(key).or_default();
        flow.last_seen = t;
        let syn = tcp.flags & tcp_flags::SYN != 0;
        let ack = tcp.flags & tcp_flags::ACK != 0;
        let mut answered: Option<(i64, SampleKind)> = None;
        let mut evicted = 0u64;

        // Handshake.
        if syn && !ack {
            flow.dir[d].syn = Some(t);
        } else if syn && ack {
            if let Some(s) = flow.dir[1 - d].syn.take() {
                answered = Some((t - s, SampleKind::Handshake));
            }
        }

        // Timestamps (pping).
        if let Some((tsval, tsecr)) = tcp.timestamps {
            flow.uses_timestamps = true;
            let me = &mut flow.dir[d];
            if me.last_tsval != Some(tsval) {
                me.last_tsval = Some(tsval);
                evicted += u64::from(me.tsvals.push(tsval, t));
            }
            if ack && tsecr != 0 {
                if let Some(sent) = flow.dir[1 - d].tsvals.take(tsecr) {
                    if answered.is_none() {
                        answered = Some((t - sent, SampleKind::Timestamp));
                    }
                }
            }
        } else if !flow.uses_timestamps {
            // Sequence and acknowledgement, Karn's rule.
            let len = tcp.payload_len;
            if len > 0 {
                let end = tcp.seq.wrapping_add(len);
                let me = &mut flow.dir[d];
                let fresh = me.seq_high.is_none_or(|h| seq_after(end, h) && !seq_before(tcp.seq, h));
                if fresh {
                    me.seq_high = Some(end);
                    evicted += u64::from(me.segments.push(end, t));
                } else {
                    // Retransmission (or reordering): no sample from the
                    // sequence space it repeats.
                    let start = tcp.seq;
                    // Keep what ends at or before `start`, or after `end`.
                    me.segments.retain(|e, _| !seq_after(e, start) || seq_after(e, end));
                    if me.seq_high.is_some_and(|h| seq_after(end, h)) {
                        me.seq_high = Some(end);
                    }
                }
            }
            if ack && answered.is_none() {
                let other = &mut flow.dir[1 - d];
                if let Some(sent) = other.segments.take(tcp.ack) {
                    answered = Some((t - sent, SampleKind::Ack));
                }
                // Everything the ACK covers is answered (or never will be).
                let a = tcp.ack;
                other.segments.retain(|e, _| seq_after(e, a));
            }
        }
        self.counts.probe_evictions += evicted;
        if let Some((rtt, kind)) = answered {
            self.sample(ts, mac, rtt, kind, (src, tcp.src_port), (dst, tcp.dst_port));
        }
    }

    fn sample(
        &mut self,
        ts: PacketTime,
        mac: Mac,
        rtt_us: i64,
        kind: SampleKind,
        src: (IpAddr, u16),
        dst: (IpAddr, u16),
    ) {
        // An answer after the probe's timeout is not a sample (the sweep at
        // window close may not have run since).
        if rtt_us > self.probe_timeout_us {
            self.counts.probe_timeouts += 1;
            return;
        }
        // A capture with timestamps out of order can answer before it asks.
        if rtt_us >= 0 && mac.is_unicast() {
            self.samples.push(RttSample { ts, mac, rtt_us, kind, src, dst });
        }
    }

    /// Hands over the window's samples and expires old state (packet time `now`).
    pub fn close_window(&mut self, now: PacketTime) -> Vec<RttSample> {
        let t = now.as_micros();
        self.sweep_echoes(t);
        let (pt, ft) = (self.probe_timeout_us, self.flow_timeout_us);
        let mut timeouts = 0;
        self.flows.retain(|_, f| {
            if t - f.last_seen > ft {
                return false;
            }
            for dir in f.dir.iter_mut() {
                timeouts += dir.tsvals.retain(|_, s| t - s <= pt);
                timeouts += dir.segments.retain(|_, s| t - s <= pt);
                if dir.syn.is_some_and(|s| t - s > pt) {
                    dir.syn = None;
                    timeouts += 1;
                }
            }
            true
        });
        self.counts.probe_timeouts += timeouts;
        std::mem::take(&mut self.samples)
    }

    fn sweep_echoes(&mut self, t: i64) {
        let pt = self.probe_timeout_us;
        let before = self.echoes.len();
        self.echoes.retain(|_, s| t - *s <= pt);
        self.counts.probe_timeouts += (before - self.echoes.len()) as u64;
    }

    /// The table is full: drop idle flows, then the least recently seen
    /// eighth, so eviction is amortized over many inserts.
    fn make_room(&mut self, t: i64) {
        let ft = self.flow_timeout_us;
        let before = self.flows.len();
        self.flows.retain(|_, f| t - f.last_seen <= ft);
        if self.flows.len() >= self.max_flows {
            let mut ages: Vec<i64> = self.flows.values().map(|f| f.last_seen).collect();
            // Evict the oldest eighth (at least one); ties at the cut go too.
            let k = (self.max_flows / 8).max(1).min(ages.len()) - 1;
            let (_, cut, _) = ages.select_nth_unstable(k);
            let cut = *cut;
            self.flows.retain(|_, f| f.last_seen > cut);
        }
        self.counts.flow_evictions += (before - self.flows.len()) as u64;
    }
}

/// Sequence comparison modulo 2^32 (RFC 793).
fn seq_before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}
fn seq_after(a: u32, b: u32) -> bool {
    seq_before(b, a)
}

#[cfg(test)]
mod tests;
