//! Passive RTT: per-shard flow state that turns answering packets into samples.
//!
//! A sample closes on the packet that answers, and belongs to the MAC that
//! sent it (how fast that VM answers, seen from the vSwitch):
//! - ICMP/ICMPv6 echo reply to its request (addresses, id, seq);
//! - TCP SYN/ACK to its SYN, timed from the *last* SYN before it (a
//!   retransmitted SYN restarts the clock);
//! - TCP timestamps, as pping does: a TSecr that echoes a TSval first seen in
//!   the other direction; a TSval is recorded only when it is new for its
//!   direction (after the newest it has sent: a TSval sent again is not),
//!   and matched once; an echo clears the TSvals before it, which will never
//!   be echoed (a TSecr only moves forward);
//! - TCP without timestamps: the end sequence of a data segment matched to
//!   the first ACK equal to it; a segment that repeats sequence space already
//!   sent is a retransmission and voids what it overlaps (Karn's rule).
//!
//! A direction keeps [`PROBES_PER_DIRECTION`] probes. A full list keeps its
//! oldest (the next echoes and ACKs of a long transfer name them) and gives
//! its newest place to each new probe (what an ACK at the end of a burst
//! covers); pushing out the oldest instead left a transfer with more in
//! flight than the list holds no sample until it stopped. A SYN voids what
//! the flow knew of an earlier connection on the same addresses and ports.
//!
//! One answering packet gives at most one sample (handshake before
//! timestamps). Everything is bounded: flows (`limits.rtt_flows`, split
//! evenly across shards), outstanding probes per flow direction
//! ([`PROBES_PER_DIRECTION`]) and echo requests (`limits.rtt_echo_probes`);
//! probes expire after `rtt.probe_timeout_ms` and flows after
//! `rtt.flow_timeout_s` of packet time. Evictions and expiries are counted.
//!
//! The flow table is built like ePPing's and Retina's: fixed-size entries
//! ([`FLOW_ENTRY_BYTES`]) in a slab allocated once to the cap, an
//! open-addressing index of (hash, slot) words (linear probing, at most half
//! full, backward-shift deletion), so nothing rehashes or moves during a run.
//! A clock hand runs over the slab: a full table evicts the least recently
//! seen of the next [`EVICTION_SAMPLE`] entries under it (idle ones first),
//! in O(1), and each window close sweeps the next sixteenth of the slab for
//! idle flows, so nothing walks the whole table. Probe expiry is exact and
//! lazy: a window close records its packet time, and a flow is brought up
//! to date when a packet or the sweep next reaches it, with the same
//! outcome as expiring every flow at every close (expiry only removes what
//! is older than a cut-off that only grows).
//! The shards hand over a batch at a time ([`RttTracker::observe_batch`]) of
//! what RTT reads of each frame ([`RttInput`], with every TCP frame's key
//! hashed while the shard decodes it), and the flow table's memory is
//! prefetched a few frames ahead of the frame that uses it, so the cache
//! misses overlap with work instead of stalling each packet in turn.
//! The hash is taken once per packet from the decoded 5-tuple; the reader's
//! shard hash is not reused because it reads raw frame bytes, so the two
//! directions of one flow can hash apart when they are encapsulated
//! differently, and a flow must never be split.

use crate::decode::{tcp_flags, IcmpInfo, Mac, Net, Observation, TcpInfo, L4};
use crate::vocab::PacketTime;
use rustc_hash::FxHashMap;
use serde::Serialize;
use std::net::IpAddr;

/// Outstanding probes kept per direction of a TCP flow (timestamps or segments).
pub const PROBES_PER_DIRECTION: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
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

/// A small fixed list of (key, time) probes, oldest first: no allocation per packet.
/// (`repr(C)`: the times fill one cache line, the keys and length start the next.)
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
struct Probes {
    times: [i64; PROBES_PER_DIRECTION],
    keys: [u32; PROBES_PER_DIRECTION],
    len: u8,
}

impl Probes {
    /// Adds a probe; returns true when the list was full. A full list keeps
    /// its oldest probes, which a TSecr names first (RFC 7323 echoes the
    /// oldest unacknowledged segment's TSval) and the next ACKs of a long
    /// transfer cover first, and gives its newest place to the new probe,
    /// which is what an ACK at the end of a burst covers.
    #[inline]
    fn push(&mut self, key: u32, t: i64) -> bool {
        let full = usize::from(self.len) == PROBES_PER_DIRECTION;
        let i = usize::from(self.len) - usize::from(full);
        self.keys[i] = key;
        self.times[i] = t;
        self.len = (i + 1) as u8;
        full
    }

    /// Keeps only the probes `keep` says yes to, in order; returns how many
    /// were removed. Writes nothing when it keeps them all (the common
    /// case: an echo or ACK usually leaves nothing older behind), so the
    /// list's lines stay clean in the cache.
    #[inline]
    fn retain(&mut self, mut keep: impl FnMut(u32, i64) -> bool) -> u64 {
        let len = usize::from(self.len);
        let Some(first) = (0..len).find(|&i| !keep(self.keys[i], self.times[i])) else { return 0 };
        let mut n = first;
        for i in first + 1..len {
            let (k, t) = (self.keys[i], self.times[i]);
            if keep(k, t) {
                self.keys[n] = k;
                self.times[n] = t;
                n += 1;
            }
        }
        let removed = u64::from(self.len) - n as u64;
        self.len = n as u8;
        removed
    }

    /// Removes and returns the time of the oldest probe with exactly this key.
    #[inline]
    fn take(&mut self, key: u32) -> Option<i64> {
        let len = usize::from(self.len);
        let i = self.keys[..len].iter().position(|&k| k == key)?;
        let t = self.times[i];
        self.remove_at(i);
        Some(t)
    }

    /// Removes the probe at `i` (< len), keeping the order. A fixed-length
    /// shift the compiler unrolls: `copy_within` of a variable range was a
    /// `memmove` call per matched probe.
    #[inline]
    fn remove_at(&mut self, i: usize) {
        for j in 0..PROBES_PER_DIRECTION - 1 {
            if j >= i {
                self.keys[j] = self.keys[j + 1];
                self.times[j] = self.times[j + 1];
            }
        }
        self.len -= 1;
    }
}

/// TSval ticks back from a direction's newest beyond which a TSval is a new
/// clock, not a late segment (2^24: hours at the fastest clocks stacks use).
const NEW_CLOCK: u32 = 1 << 24;

/// No SYN outstanding.
const NO_SYN: i64 = i64::MIN;

/// Per-direction TCP state (index 0: from the lower endpoint): 128 bytes,
/// two cache lines.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct TcpDir {
    /// What this direction sent that awaits an answer: its new TSvals when
    /// the flow uses timestamps, else its data segments' end sequences. A
    /// flow switches to timestamps at most once, and then forgets the
    /// segments (counted as timed out), so one list serves both.
    segments: Probes,
    /// Time of the last SYN (without ACK) sent this way, not yet answered.
    syn: i64,
    last_tsval: u32,
    /// Highest end sequence sent this way, for Karn's rule.
    seq_high: u32,
    has_tsval: bool,
    has_seq_high: bool,
}

impl Default for TcpDir {
    fn default() -> Self {
        TcpDir {
            segments: Probes::default(),
            syn: NO_SYN,
            last_tsval: 0,
            seq_high: 0,
            has_tsval: false,
            has_seq_high: false,
        }
    }
}

impl TcpDir {
    /// Forgets what is older than `cutoff`; returns how many probes that was.
    fn expire(&mut self, cutoff: i64) -> u64 {
        let mut n = self.segments.retain(|_, s| s >= cutoff);
        if self.syn != NO_SYN && self.syn < cutoff {
            self.syn = NO_SYN;
            n += 1;
        }
        n
    }

    /// A new connection on this direction's addresses and ports: what it
    /// knew of an earlier one (TSvals, echoes, sequence space, probes) is
    /// void, all but a SYN it is waiting to see answered. Returns the probes
    /// dropped.
    fn restart(&mut self) -> u64 {
        let dropped = u64::from(self.segments.len);
        *self = TcpDir { syn: self.syn, ..TcpDir::default() };
        dropped
    }

    fn outstanding(&self) -> u64 {
        u64::from(self.segments.len) + u64::from(self.syn != NO_SYN)
    }
}

/// One tracked TCP flow: a fixed-size slab entry of five cache lines,
/// aligned to them: the key, the times and the flags fill the first (what
/// the lookup and the expiry read), each direction takes the next two.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct TcpFlow {
    key: FlowKey,
    /// The index word's hash, to find the entry's index slot again.
    hash: u32,
    /// False for a free slab slot.
    live: bool,
    uses_timestamps: bool,
    last_seen: i64,
    /// The window close this flow was last brought up to date with.
    swept: i64,
    dir: [TcpDir; 2],
}

const _: () = assert!(std::mem::size_of::<TcpFlow>() == 5 * 64);
const _: () = assert!(std::mem::offset_of!(TcpFlow, dir) == 64);
// What [`FlowTable::prefetch_entry`] names by `syn` is the line of the
// probe keys, the length and the TSval state: a direction's second line.
const _: () = assert!(std::mem::size_of::<TcpDir>() == 128 && std::mem::offset_of!(TcpDir, segments) == 0);
const _: () = assert!(std::mem::offset_of!(Probes, keys) / 64 == 1 && std::mem::offset_of!(TcpDir, syn) / 64 == 1);
const _: () =
    assert!(std::mem::offset_of!(TcpDir, seq_high) / 64 == 1 && std::mem::offset_of!(TcpDir, has_seq_high) / 64 == 1);

impl TcpFlow {
    fn new(key: FlowKey, hash: u32, swept: i64) -> TcpFlow {
        TcpFlow { dir: [TcpDir::default(); 2], key, last_seen: 0, swept, live: true, hash, uses_timestamps: false }
    }

    /// Brings the flow up to date with the window close at `closed`:
    /// probes older than `closed - probe_timeout` are gone (counted).
    #[inline]
    fn catch_up(&mut self, closed: i64, probe_timeout_us: i64) -> u64 {
        if self.swept == closed {
            return 0;
        }
        self.swept = closed;
        let cutoff = closed.saturating_sub(probe_timeout_us);
        self.dir[0].expire(cutoff) + self.dir[1].expire(cutoff)
    }
}

/// One endpoint of a flow key: the address as four big-endian words (an
/// IPv4 address in the last), so a key is aligned words to copy and
/// compare, not `IpAddr`'s 17 unaligned bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Ep {
    // Field order is the order: IPv4 before IPv6, then the address, then
    // the port, as `(IpAddr, u16)` orders.
    v6: bool,
    ip: [u32; 4],
    port: u16,
}

impl Ep {
    #[inline]
    fn new((ip, port): (IpAddr, u16)) -> Ep {
        match ip {
            IpAddr::V4(a) => Ep { v6: false, ip: [0, 0, 0, u32::from(a)], port },
            IpAddr::V6(a) => {
                let x = u128::from(a);
                Ep { v6: true, ip: [(x >> 96) as u32, (x >> 64) as u32, (x >> 32) as u32, x as u32], port }
            }
        }
    }

    fn addr(&self) -> (IpAddr, u16) {
        let ip = if self.v6 {
            let x = self.ip.iter().fold(0u128, |x, &w| (x << 32) | u128::from(w));
            IpAddr::from(std::net::Ipv6Addr::from(x))
        } else {
            IpAddr::from(std::net::Ipv4Addr::from(self.ip[3]))
        };
        (ip, self.port)
    }
}

/// Both endpoints, lower first, so both directions share one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FlowKey {
    a: Ep,
    b: Ep,
}

impl FlowKey {
    /// The key and the direction of a packet from `src` to `dst` (0: a→b).
    #[inline]
    fn of(src: (IpAddr, u16), dst: (IpAddr, u16)) -> (FlowKey, usize) {
        let (src, dst) = (Ep::new(src), Ep::new(dst));
        if src <= dst {
            (FlowKey { a: src, b: dst }, 0)
        } else {
            (FlowKey { a: dst, b: src }, 1)
        }
    }

    /// The 32-bit hash the index stores (its low bits pick the home slot).
    #[inline]
    fn hash(&self) -> u32 {
        #[inline]
        fn ep(e: &Ep) -> u64 {
            let port = u64::from(e.port);
            let w = |i: usize| u64::from(e.ip[i]);
            if e.v6 {
                ((w(2) << 32 | w(3)) ^ (w(0) << 32 | w(1)).rotate_left(29) ^ (1 << 63)) ^ port
            } else {
                (w(3) << 16) | port
            }
        }
        (crate::decode::mix(crate::decode::mix(ep(&self.a)) ^ ep(&self.b)) >> 32) as u32
    }
}

/// How many frames ahead [`RttTracker::observe_batch`] prefetches a flow's
/// entry; its index word is prefetched twice as far ahead.
const AHEAD: usize = 8;

/// Entries a full table looks at to pick the one to evict.
const EVICTION_SAMPLE: usize = 8;

/// The flow table: a slab of entries allocated to the cap once, and an
/// index of `(hash << 32) | (slot + 1)` words (0: empty).
struct FlowTable {
    index: Vec<u64>,
    mask: usize,
    entries: Vec<TcpFlow>,
    free: Vec<u32>,
    /// Where the next eviction or sweep looks (a clock hand over the slab).
    hand: usize,
    len: usize,
}

impl FlowTable {
    fn with_capacity(cap: usize) -> FlowTable {
        // At most half full, so probe sequences stay short.
        let slots = (cap * 2).next_power_of_two().max(16);
        FlowTable {
            // Zeroed allocations are mapped lazily: the index costs memory
            // as it is used, and never grows.
            index: vec![0; slots],
            mask: slots - 1,
            entries: Vec::with_capacity(cap),
            free: Vec::with_capacity(cap),
            hand: 0,
            len: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    /// The index position of `key`, or of the empty slot where it would go.
    #[inline]
    fn probe(&self, key: &FlowKey, hash: u32) -> (usize, Option<u32>) {
        let mut i = hash as usize & self.mask;
        loop {
            let w = self.index[i];
            if w == 0 {
                return (i, None);
            }
            if (w >> 32) as u32 == hash {
                let e = (w as u32) - 1;
                if self.entries[e as usize].key == *key {
                    return (i, Some(e));
                }
            }
            i = (i + 1) & self.mask;
        }
    }

    fn find(&self, key: &FlowKey) -> Option<u32> {
        self.probe(key, key.hash()).1
    }

    /// Asks the cache for the index line of `hash` (nothing waits for it).
    #[inline]
    fn prefetch_index(&self, hash: u32) {
        prefetch_index::prefetch_index(&self.index, hash as usize & self.mask);
    }

    /// Asks the cache for the lines of the entry the home slot of `hash`
    /// names, when it holds that hash (reading the index word, which
    /// [`FlowTable::prefetch_index`] has brought in by now), that a frame
    /// sent in direction `d` reads first: the key and times, the sender's
    /// probes and state, the other side's probe keys and state (its probe
    /// times are read only on a match). Nothing waits for them, and
    /// nothing changes.
    #[inline]
    fn prefetch_entry(&self, hash: u32, d: u8) {
        let w = self.index[hash as usize & self.mask];
        if w == 0 || (w >> 32) as u32 != hash {
            return;
        }
        let Some(f) = self.entries.get((w as u32).wrapping_sub(1) as usize) else { return };
        let (me, other) = (&f.dir[usize::from(d & 1)], &f.dir[usize::from(!d & 1)]);
        prefetch_index::prefetch_index(std::slice::from_ref(f), 0);
        prefetch_index::prefetch_index(me.segments.times.as_slice(), 0);
        prefetch_index::prefetch_index(std::slice::from_ref(&me.syn), 0);
        prefetch_index::prefetch_index(std::slice::from_ref(&other.syn), 0);
    }

    /// Adds a flow at the empty index slot `at` (from [`FlowTable::probe`]);
    /// the caller has made room.
    fn insert(&mut self, at: usize, flow: TcpFlow) -> u32 {
        let hash = flow.hash;
        let e = match self.free.pop() {
            Some(e) => {
                self.entries[e as usize] = flow;
                e
            }
            None => {
                self.entries.push(flow);
                (self.entries.len() - 1) as u32
            }
        };
        self.index[at] = (u64::from(hash) << 32) | u64::from(e + 1);
        self.len += 1;
        e
    }

    fn remove(&mut self, e: u32) {
        let f = &mut self.entries[e as usize];
        f.live = false;
        let word = (u64::from(f.hash) << 32) | u64::from(e + 1);
        let mut i = f.hash as usize & self.mask;
        while self.index[i] != word {
            i = (i + 1) & self.mask;
        }
        // Backward-shift deletion: pull later entries of the run into the
        // hole when their home slot allows, so no tombstones build up.
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let w = self.index[j];
            if w == 0 {
                break;
            }
            let home = (w >> 32) as usize & self.mask;
            if (j.wrapping_sub(home) & self.mask) >= (j.wrapping_sub(i) & self.mask) {
                self.index[i] = w;
                i = j;
            }
        }
        self.index[i] = 0;
        self.free.push(e);
        self.len -= 1;
    }

    /// Moves the hand past the next `n` slab slots (wrapping); returns
    /// them as (first, count, slab length).
    fn advance(&mut self, n: usize) -> (usize, usize, usize) {
        let total = self.entries.len().max(1);
        let (start, n) = (self.hand % total, n.min(self.entries.len()));
        self.hand = (start + n) % total;
        (start, n, total)
    }
}

impl std::ops::Index<&FlowKey> for FlowTable {
    type Output = TcpFlow;
    fn index(&self, key: &FlowKey) -> &TcpFlow {
        match self.find(key) {
            Some(e) => &self.entries[e as usize],
            None => panic!("no flow {key:?}"),
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

/// What RTT reads of one frame: a TCP frame's flow key, direction and hash
/// (computed once, while the shard decodes it), or an ICMP frame's
/// addresses; with the time and the sender's MAC. About half an
/// [`Observation`], so the shard's batch of them stays small.
#[derive(Clone, Copy, Debug)]
pub struct RttInput {
    ts: PacketTime,
    mac: Mac,
    frame: RttFrame,
}

#[derive(Clone, Copy, Debug)]
enum RttFrame {
    Tcp { key: FlowKey, d: u8, hash: u32, tcp: TcpInfo },
    Icmp { src: IpAddr, dst: IpAddr, icmp: IcmpInfo },
}

impl RttInput {
    /// What RTT takes of this frame, if anything: TCP or ICMP over IP, not
    /// a later fragment, with a link layer.
    #[inline]
    pub fn of(o: &Observation) -> Option<RttInput> {
        // By reference: copying the layers into a tuple to match it read
        // the just-decoded addresses back in other widths than they were
        // written in (a stalled load per frame).
        let (Net::Ip { src, dst, fragment: false, .. }, Some(l2)) = (&o.net, &o.l2) else { return None };
        let frame = match &o.l4 {
            L4::Tcp(tcp) => {
                let (key, d) = FlowKey::of((*src, tcp.src_port), (*dst, tcp.dst_port));
                RttFrame::Tcp { key, d: d as u8, hash: key.hash(), tcp: *tcp }
            }
            L4::Icmp(icmp) => RttFrame::Icmp { src: *src, dst: *dst, icmp: *icmp },
            _ => return None,
        };
        Some(RttInput { ts: o.ts, mac: l2.src, frame })
    }
}

/// The RTT tracker of one shard.
pub struct RttTracker {
    flows: FlowTable,
    echoes: FxHashMap<EchoKey, i64>,
    max_flows: usize,
    max_echoes: usize,
    probe_timeout_us: i64,
    flow_timeout_us: i64,
    /// Packet time of the last window close (`i64::MIN` before the first):
    /// what flows are brought up to date with when next seen.
    closed: i64,
    /// No outstanding echo request is older than this (a sweep that would
    /// find nothing is skipped).
    echo_oldest: i64,
    pub counts: RttCounts,
    samples: Vec<RttSample>,
    /// A buffer handed back for the next window (see [`RttTracker::recycle`]).
    spare: Option<Vec<RttSample>>,
}

/// Bytes one tracked TCP flow takes: its slab entry and its two index words
/// (the index is kept at most half full).
pub const FLOW_ENTRY_BYTES: usize = std::mem::size_of::<TcpFlow>() + 2 * std::mem::size_of::<u64>();
/// Bytes one outstanding echo request takes (hashbrown entry and control byte).
pub const ECHO_ENTRY_BYTES: usize = std::mem::size_of::<(EchoKey, i64)>() + 1;

impl RttTracker {
    pub fn new(max_flows: usize, max_echoes: usize, probe_timeout_ms: u64, flow_timeout_s: u64) -> Self {
        let (max_flows, max_echoes) = (max_flows.max(1), max_echoes.max(1));
        let mut echoes = FxHashMap::default();
        echoes.reserve(max_echoes);
        RttTracker {
            flows: FlowTable::with_capacity(max_flows),
            echoes,
            max_flows,
            max_echoes,
            probe_timeout_us: probe_timeout_ms as i64 * 1000,
            flow_timeout_us: flow_timeout_s as i64 * 1_000_000,
            closed: i64::MIN,
            echo_oldest: i64::MAX,
            counts: RttCounts::default(),
            samples: Vec::new(),
            spare: None,
        }
    }

    /// Looks at one decoded frame; a sample, if it closes one, is kept for the window.
    #[inline]
    pub fn observe(&mut self, o: &Observation) {
        if let Some(i) = RttInput::of(o) {
            self.input(&i);
        }
    }

    /// An emptied sample buffer to use for a coming window instead of
    /// fresh memory (whose pages would fault in as samples are pushed).
    pub fn recycle(&mut self, mut buffer: Vec<RttSample>) {
        buffer.clear();
        if buffer.capacity() > self.spare.as_ref().map_or(0, Vec::capacity) {
            self.spare = Some(buffer);
        }
    }

    #[inline]
    fn input(&mut self, i: &RttInput) {
        match i.frame {
            RttFrame::Tcp { key, d, hash, tcp } => self.tcp(i.ts, i.mac, &tcp, key, usize::from(d), hash),
            RttFrame::Icmp { src, dst, icmp } => self.icmp(i.ts, i.mac, src, dst, &icmp),
        }
    }

    /// The same as [`RttTracker::observe`] on each frame in order, faster,
    /// on what [`RttInput::of`] took of them (the shard builds it while
    /// decoding, so each TCP frame's key and hash are computed there): the
    /// flow table's memory is prefetched ahead of the frames, as DPDK's
    /// bulk lookups and Retina's flow tables do, an index line
    /// 2 x [`AHEAD`] frames ahead and then, [`AHEAD`] frames ahead, the
    /// lines of the entry it names. A prefetch does not hold the core up,
    /// so the cache misses overlap with the frames being handled instead
    /// of stalling each packet in turn. Prefetches only warm the cache: the
    /// results are the same.
    pub fn observe_batch(&mut self, inputs: &[RttInput]) {
        let tcp = |i: &RttInput| match i.frame {
            RttFrame::Tcp { hash, d, .. } => Some((hash, d)),
            RttFrame::Icmp { .. } => None,
        };
        for (h, _) in inputs.iter().take(2 * AHEAD).filter_map(tcp) {
            self.flows.prefetch_index(h);
        }
        for (h, d) in inputs.iter().take(AHEAD).filter_map(tcp) {
            self.flows.prefetch_entry(h, d);
        }
        for (k, i) in inputs.iter().enumerate() {
            if let Some((h, _)) = inputs.get(k + 2 * AHEAD).and_then(tcp) {
                self.flows.prefetch_index(h);
            }
            if let Some((h, d)) = inputs.get(k + AHEAD).and_then(tcp) {
                self.flows.prefetch_entry(h, d);
            }
            self.input(i);
        }
    }

    fn icmp(&mut self, ts: PacketTime, mac: Mac, src: IpAddr, dst: IpAddr, i: &IcmpInfo) {
        let (request, reply) = if i.v6 { (128, 129) } else { (8, 0) };
        let t = ts.as_micros();
        if i.icmp_type == request && i.code == 0 {
            let key = EchoKey { src, dst, id: i.id, seq: i.seq };
            if self.echoes.len() >= self.max_echoes && !self.echoes.contains_key(&key) {
                self.sweep_echoes(t);
                if self.echoes.len() >= self.max_echoes {
                    self.counts.probe_evictions += 1;
                    return;
                }
            }
            // A repeated request (same id and seq) keeps the first one's time.
            let sent = *self.echoes.entry(key).or_insert(t);
            self.echo_oldest = self.echo_oldest.min(sent);
        } else if i.icmp_type == reply && i.code == 0 {
            let key = EchoKey { src: dst, dst: src, id: i.id, seq: i.seq };
            if let Some(sent) = self.echoes.remove(&key) {
                self.sample(ts, mac, t - sent, SampleKind::Echo, (src, 0), (dst, 0));
            }
        }
    }

    /// The flow of `key`, brought up to date; a new one (making room) when it is not tracked or went idle.
    #[inline]
    fn flow(&mut self, key: FlowKey, hash: u32, t: i64) -> u32 {
        let (at, found) = self.flows.probe(&key, hash);
        if let Some(e) = found {
            let (closed, pt, ft) = (self.closed, self.probe_timeout_us, self.flow_timeout_us);
            let f = &mut self.flows.entries[e as usize];
            // Only closes since the flow was last brought up to date apply
            // (packet time can run backwards between files).
            if f.swept != closed {
                if closed - f.last_seen > ft {
                    // That close would have forgotten the flow: start afresh.
                    self.counts.probe_timeouts += f.dir[0].outstanding() + f.dir[1].outstanding();
                    *f = TcpFlow::new(key, hash, closed);
                } else {
                    self.counts.probe_timeouts += f.catch_up(closed, pt);
                }
            }
            return e;
        }
        if self.flows.len() >= self.max_flows {
            self.make_room(t);
            // Removals shift the index: find the free slot again.
            let (at, _) = self.flows.probe(&key, hash);
            return self.flows.insert(at, TcpFlow::new(key, hash, self.closed));
        }
        self.flows.insert(at, TcpFlow::new(key, hash, self.closed))
    }

    /// One TCP frame of flow `key` (direction `d`, `hash` = `key.hash()`).
    #[inline]
    fn tcp(&mut self, ts: PacketTime, mac: Mac, tcp: &TcpInfo, key: FlowKey, d: usize, hash: u32) {
        let t = ts.as_micros();
        let e = self.flow(key, hash, t);
        let flow = &mut self.flows.entries[e as usize];
        flow.last_seen = t;
        let syn = tcp.flags & tcp_flags::SYN != 0;
        let ack = tcp.flags & tcp_flags::ACK != 0;
        let mut answered: Option<(i64, SampleKind)> = None;
        let mut evicted = 0u64;
        let mut timed_out = 0u64;

        // A SYN opens a connection, perhaps on the addresses and ports of an
        // earlier one (a client reusing its port): the earlier one's state is
        // void, or its TSvals and echoes would bar the new one's (Linux gives
        // each connection its own TSval offset) and its sequence space would
        // make the new one's segments look retransmitted. A SYN/ACK voids its
        // own direction only: the other holds the SYN it answers.
        if syn {
            if ack {
                timed_out += flow.dir[d].restart();
                // Timestamps are on only when both ends offer them (RFC 7323):
                // the SYN's TSval is then no probe, nor a sequence number.
                if tcp.timestamps.is_none() && flow.uses_timestamps {
                    flow.uses_timestamps = false;
                    timed_out += flow.dir[1 - d].restart();
                }
            } else {
                timed_out += flow.dir[0].restart() + flow.dir[1].restart();
                flow.uses_timestamps = false;
            }
        }

        // Handshake.
        if syn && !ack {
            flow.dir[d].syn = t;
        } else if syn && ack {
            let other = &mut flow.dir[1 - d];
            if other.syn != NO_SYN {
                answered = Some((t - other.syn, SampleKind::Handshake));
                other.syn = NO_SYN;
            }
        }

        // Timestamps (pping).
        if let Some((tsval, tsecr)) = tcp.timestamps {
            if !flow.uses_timestamps {
                // Segments from before are never matched again.
                flow.uses_timestamps = true;
                for dir in flow.dir.iter_mut() {
                    timed_out += u64::from(dir.segments.len);
                    dir.segments.len = 0;
                }
            }
            let me = &mut flow.dir[d];
            // New: after the newest TSval this direction has sent. One sent
            // again (Linux's second transmit queue interleaves TSvals X Y X)
            // is not; one far before it is a new clock (a connection on
            // these ports whose SYN the capture missed): start afresh.
            if me.has_tsval && seq_before(tsval, me.last_tsval) && me.last_tsval.wrapping_sub(tsval) > NEW_CLOCK {
                timed_out += me.restart();
            }
            if !me.has_tsval || seq_after(tsval, me.last_tsval) {
                me.has_tsval = true;
                me.last_tsval = tsval;
                evicted += u64::from(me.segments.push(tsval, t));
            }
            if ack && tsecr != 0 {
                let other = &mut flow.dir[1 - d];
                if let Some(sent) = other.segments.take(tsecr) {
                    if answered.is_none() {
                        answered = Some((t - sent, SampleKind::Timestamp));
                    }
                }
                // TSvals before the echoed one will never be echoed: a TSecr
                // only moves forward (RFC 7323 echoes the oldest
                // unacknowledged segment's TSval). An echo past the newest
                // TSval that side has sent echoes nothing it sent, and
                // clears nothing.
                if other.segments.len > 0 && other.has_tsval && !seq_after(tsecr, other.last_tsval) {
                    other.segments.retain(|k, _| seq_after(k, tsecr));
                }
            }
        } else if !flow.uses_timestamps {
            // Sequence and acknowledgement, Karn's rule.
            let len = tcp.payload_len;
            if len > 0 {
                let end = tcp.seq.wrapping_add(len);
                let me = &mut flow.dir[d];
                let h = me.seq_high;
                let fresh = !me.has_seq_high || (seq_after(end, h) && !seq_before(tcp.seq, h));
                if fresh {
                    me.has_seq_high = true;
                    me.seq_high = end;
                    evicted += u64::from(me.segments.push(end, t));
                } else {
                    // Retransmission (or reordering): no sample from the
                    // sequence space it repeats.
                    let start = tcp.seq;
                    // Keep what ends at or before `start`, or after `end`.
                    me.segments.retain(|e, _| !seq_after(e, start) || seq_after(e, end));
                    if seq_after(end, h) {
                        me.seq_high = end;
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
        self.counts.probe_timeouts += timed_out;
        if let Some((rtt, kind)) = answered {
            let (src, dst) = if d == 0 { (key.a, key.b) } else { (key.b, key.a) };
            let (src, dst) = (src.addr(), dst.addr());
            self.sample(ts, mac, rtt, kind, src, dst);
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
        // An answer after the probe's timeout is not a sample (the expiry
        // at window close may not have reached it yet).
        if rtt_us > self.probe_timeout_us {
            self.counts.probe_timeouts += 1;
            return;
        }
        // A capture with timestamps out of order can answer before it asks.
        if rtt_us >= 0 && mac.is_unicast() {
            self.samples.push(RttSample { ts, mac, rtt_us, kind, src, dst });
        }
    }

    /// Hands over the window's samples and expires old state (packet time
    /// `now`): echo requests now, flows and probes when they are next seen
    /// or swept, with the same outcome as expiring them all now.
    pub fn close_window(&mut self, now: PacketTime) -> Vec<RttSample> {
        let t = now.as_micros();
        self.sweep_echoes(t);
        self.closed = self.closed.max(t);
        // A clock sweep of a sixteenth of the slab per window frees idle
        // flows and counts timed-out probes without walking the whole table.
        let (closed, pt, ft) = (self.closed, self.probe_timeout_us, self.flow_timeout_us);
        let n = self.flows.entries.len() / 16 + 64;
        let (start, n, total) = self.flows.advance(n);
        for k in 0..n {
            let e = ((start + k) % total) as u32;
            let f = &mut self.flows.entries[e as usize];
            if !f.live {
                continue;
            }
            if closed - f.last_seen > ft {
                // Its probes timed out before it went idle.
                self.counts.probe_timeouts += f.dir[0].outstanding() + f.dir[1].outstanding();
                self.flows.remove(e);
            } else {
                self.counts.probe_timeouts += f.catch_up(closed, pt);
            }
        }
        // The next window starts with room for as many: no regrowth
        // copies; in a buffer handed back (`recycle`) when there is one.
        let next = self.spare.take().unwrap_or_else(|| Vec::with_capacity(self.samples.capacity()));
        std::mem::replace(&mut self.samples, next)
    }

    fn sweep_echoes(&mut self, t: i64) {
        let pt = self.probe_timeout_us;
        if t.saturating_sub(self.echo_oldest) <= pt {
            return; // nothing is old enough
        }
        let before = self.echoes.len();
        let mut oldest = i64::MAX;
        self.echoes.retain(|_, s| {
            let keep = t - *s <= pt;
            if keep {
                oldest = oldest.min(*s);
            }
            keep
        });
        self.echo_oldest = oldest;
        self.counts.probe_timeouts += (before - self.echoes.len()) as u64;
    }

    /// The table is full: of the next [`EVICTION_SAMPLE`] flows under the
    /// clock hand, forget the idle ones, or else evict the least recently
    /// seen (O(1), and the same choice for the same input).
    fn make_room(&mut self, t: i64) {
        let (closed, pt, ft) = (self.closed, self.probe_timeout_us, self.flow_timeout_us);
        let mut oldest: Option<(i64, u32)> = None;
        let mut freed = false;
        let (start, n, total) = self.flows.advance(EVICTION_SAMPLE);
        for k in 0..n {
            let e = ((start + k) % total) as u32;
            let f = &mut self.flows.entries[e as usize];
            if !f.live {
                continue;
            }
            if t - f.last_seen > ft {
                self.counts.probe_timeouts += f.catch_up(closed, pt);
                self.flows.remove(e);
                self.counts.flow_evictions += 1;
                freed = true;
            } else if oldest.is_none_or(|(s, _)| f.last_seen < s) {
                oldest = Some((f.last_seen, e));
            }
        }
        if let (false, Some((_, e))) = (freed, oldest) {
            self.counts.probe_timeouts += self.flows.entries[e as usize].catch_up(closed, pt);
            self.flows.remove(e);
            self.counts.flow_evictions += 1;
        }
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
