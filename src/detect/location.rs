//! Location: which hypervisor each VM is on, its moves (live migrations) as the wire shows them, and clones.
//!
//! A VM starts where the rules say. Each window's sightings (in time order)
//! move it: a sighting at another hypervisor is a move, announced (RARP,
//! gratuitous ARP) or not. A move is measured from what the wire shows: the
//! migration streams between the two hypervisors that ended at most
//! `migration.stream_gap_s` before it (bytes moved, total migration time from
//! the first stream's start), and the downtime from the VM's last frame at
//! the source to its first at the destination. What needs the wire after
//! the move (whether a stream went on carrying data, time-to-responsiveness)
//! is settled later, within [`settle::bound_us`] (see [`super::settle`]).
//! Frames from the old hypervisor more than `migration.clone_overlap_ms`
//! after the move mean two copies of the VM run at once: a clone.
//!
//! With the migration gate's decisions followed (`migration.gate_decisions`),
//! each move looks for an allowed decision for that VM to that destination
//! from at most `migration.gate_window_s` before it, and uses up that VM's
//! part of it; with `migration.require_gate`, a move without one bypassed the
//! gate: `ungated`, once `migration.gate_grace_s` of packet time passed
//! without a late decision.

use super::settle::{self, Comeback, Group};
use crate::decode::Mac;
use crate::gate::record::{GateReason, GateRecord};
use crate::measure::placement::{Endpoint, Evidence, Oddity, Origin, Sighting, StreamKey, StreamPart, Via, SLOTS};
use crate::trust::token::{Authorization, Pairing, TokenStore};
use crate::trust::{Registry, Verdict};
use crate::vocab::Level;
use crate::vocab::PacketTime;
use rustc_hash::FxHashMap;
use std::collections::{BTreeSet, VecDeque};
use std::net::IpAddr;
use std::path::PathBuf;

/// Live migrations on the wire.
#[derive(Clone, Debug, PartialEq)]
pub struct MigrationRules {
    /// Inclusive ranges of TCP ports migration streams use.
    pub ports: Vec<(u16, u16)>,
    pub factor: f64,
    pub max_downtime_ms: u64,
    pub downtime_level: Level,
    pub announce_burst_ms: u64,
    pub clone_overlap_ms: u64,
    pub stream_gap_s: u64,
    pub require_authorization: bool,
    /// Absolute path of the tokens directory, if any.
    pub tokens_dir: Option<PathBuf>,
    /// The migration gate's decision files to follow.
    pub gate_decisions: Vec<PathBuf>,
    /// A move needs an allowed gate decision.
    pub require_gate: bool,
    /// How long before a move its gate decision may be.
    pub gate_window_s: u64,
    /// How long (packet time) a move without a decision waits for one before it is ungated.
    pub gate_grace_s: u64,
}

impl Default for MigrationRules {
    fn default() -> Self {
        MigrationRules {
            // libvirt's native migration range, and libvirtd's TCP and TLS ports.
            ports: vec![(49152, 49215), (16509, 16509), (16514, 16514)],
            factor: 3.0,
            max_downtime_ms: 1000,
            downtime_level: Level::Medium,
            announce_burst_ms: 2000,
            clone_overlap_ms: 2000,
            stream_gap_s: 30,
            require_authorization: false,
            tokens_dir: None,
            gate_decisions: Vec::new(),
            require_gate: false,
            gate_window_s: 600,
            gate_grace_s: 10,
        }
    }
}

/// A hypervisor as the wire shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// Index into the registry, when its MAC or IP is registered.
    pub hv: Option<usize>,
    /// The outer source MAC the VM's frames came with (none for the rules or a sensor).
    pub mac: Option<Mac>,
    pub ip: Option<IpAddr>,
}

impl Place {
    pub fn registered(hv: usize) -> Place {
        Place { hv: Some(hv), mac: None, ip: None }
    }

    fn same(&self, o: &Place) -> bool {
        match (self.hv, o.hv) {
            (Some(a), Some(b)) => a == b,
            (None, None) => self.mac == o.mac,
            _ => false,
        }
    }

    /// The registry id, or the MAC for an unregistered hypervisor.
    pub fn name(&self, registry: &Registry) -> Option<String> {
        match (self.hv.and_then(|h| registry.get(h)), self.mac) {
            (Some(e), _) => Some(e.id.clone()),
            (None, Some(m)) => Some(m.to_string()),
            (None, None) => None,
        }
    }

    /// Signed for the MAC the traffic shows (or, without one, for any of its MACs).
    pub fn verdict(&self, registry: &Registry) -> Verdict {
        match (self.hv.and_then(|h| registry.get(h)), self.mac) {
            (Some(e), Some(m)) => e.verdict_for_mac(m),
            (Some(e), None) => e.verdict(),
            (None, _) => Verdict::Unknown,
        }
    }
}

/// A move, as measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Move {
    pub vm: usize,
    pub ts: PacketTime,
    pub from: Option<Place>,
    /// `None` when an announce was seen but nothing tells where (plain network, no sensor).
    pub to: Option<Place>,
    pub via: Via,
    pub verdict: Verdict,
    pub authorization: Authorization,
    /// From the VM's last frame at the source to its first at the destination.
    pub downtime_us: Option<i64>,
    /// What its streams and the VM's return measured.
    pub measured: Measured,
    /// Whether an allowed gate decision matched (none when no decisions are followed).
    pub gated: Option<bool>,
    /// Not settled yet: `responsive_us` and, when the streams were
    /// ambiguous, the stream measurements are provisional until a
    /// [`Settled`] with this id (within [`settle::bound_us`] of packet time).
    pub open: Option<u64>,
    /// Its streams were still being chosen: `measured`'s streams, bytes,
    /// total and source downtime are a guess until settled.
    pub streams_open: bool,
}

/// What a move's streams and the VM's return measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Measured {
    /// Migration streams taken as the move's memory, and their bytes.
    pub streams: u32,
    pub bytes: Option<u64>,
    /// From the first stream's start to the source's last migration data.
    pub total_us: Option<i64>,
    /// The pause lies within [downtime - resolution, downtime] (see [`measure`]).
    pub downtime_resolution_us: Option<i64>,
    /// From the move until the VM's rate is back (see [`Comeback`]).
    pub responsive_us: Option<i64>,
    /// From the VM's last frame at the source to the source's last migration
    /// data: QEMU's own definition of downtime (the source's stop to its
    /// completion), without the destination's loading.
    pub source_downtime_us: Option<i64>,
}

/// A move settled after its window: its final measurements.
#[derive(Clone, Debug, PartialEq)]
pub struct Settled {
    /// The [`Move::open`] it settles.
    pub id: u64,
    pub measured: Measured,
}

impl Move {
    fn settle(&mut self, s: &Settled) {
        self.measured = s.measured;
        self.open = None;
        self.streams_open = false;
    }
}

/// A move not settled yet.
#[derive(Clone, Debug)]
struct Unsettled {
    id: u64,
    vm: usize,
    at: PacketTime,
    from_ips: Vec<IpAddr>,
    /// Its candidate listeners as of its window, and their streams' keys.
    groups: Vec<Group>,
    keys: Vec<Vec<StreamKey>>,
    /// The streams are still to be chosen (ambiguous until the lookahead tells).
    choosing: bool,
    chosen: Option<usize>,
    comeback: Option<Comeback>,
    responsive_us: Option<i64>,
    last_seen: Option<PacketTime>,
    downtime_us: Option<i64>,
    gap_us: Option<i64>,
    /// Moved more than `migration.factor` x RAM on its provisional streams.
    flagged: bool,
}

impl Unsettled {
    fn settled(&self) -> Settled {
        let m = measure(self.chosen.map(|k| &self.groups[k]), self.at, self.last_seen, self.downtime_us, self.gap_us);
        Settled { id: self.id, measured: Measured { responsive_us: self.responsive_us, ..m } }
    }
}

/// A move at `at` that took `chosen`'s streams, the VM last seen at the
/// source at `last_seen`, silent for `downtime_us`, its largest frame gap
/// there `gap_us` (time-to-responsiveness is not measured here).
fn measure(
    chosen: Option<&Group>,
    at: PacketTime,
    last_seen: Option<PacketTime>,
    downtime_us: Option<i64>,
    gap_us: Option<i64>,
) -> Measured {
    let source_done = chosen.and_then(|g| g.last_data);
    // The pause came after the VM's last frame at the source, by at most
    // its largest recent frame gap there; the destination resumed it
    // after the source's last migration data, at the latest when it
    // first showed. Unknown gap: anywhere in the silence.
    let downtime_resolution_us = last_seen.zip(downtime_us).map(|(l, d)| {
        let lag = source_done.map_or(0, |e| at.as_micros().saturating_sub(e.as_micros().max(l.as_micros())).max(0));
        gap_us.map_or(d, |g| g.saturating_add(lag).min(d))
    });
    Measured {
        streams: chosen.map_or(0, |g| g.streams),
        bytes: chosen.map(|g| g.bytes),
        // Until the source is done (the first paper's "until the resources
        // of the source host are released", and QEMU's total-time): its
        // last migration data, else the move.
        total_us: chosen.map(|g| source_done.unwrap_or(at).min(at).as_micros().saturating_sub(g.first.as_micros())),
        downtime_resolution_us,
        responsive_us: None,
        source_downtime_us: last_seen
            .zip(source_done)
            .map(|(l, e)| e.min(at).as_micros().saturating_sub(l.as_micros()).max(0)),
    }
}

/// An allowed gate decision waiting for the move it approved.
#[derive(Clone, Debug)]
struct Approval {
    ts: PacketTime,
    host: String,
    vms: Vec<Mac>,
    /// The gate checked and used a token for it (`authorized`): what
    /// spending it here said ([`TokenStore::spend_for_gate`]). None: no
    /// token; the move looks for one in `tokens_dir`.
    token: Option<Authorization>,
}

/// A move without a decision, waiting `migration.gate_grace_s` (packet time)
/// for a late one before it is declared ungated.
#[derive(Clone, Debug)]
struct Pending {
    mac: Mac,
    /// The destination's name; none for an announce-only move.
    to: Option<String>,
    at: PacketTime,
}

/// Approvals remembered at most (the oldest are dropped first, counted).
const MAX_APPROVALS: usize = 4_096;

/// Something that contradicts the registry or the inventory.
#[derive(Clone, Debug, PartialEq)]
pub enum Conflict {
    /// The VM sends from two hypervisors at once.
    Clone { vm: usize, ts: PacketTime, places: [Place; 2] },
    /// A hypervisor MAC seen from more than one outer IP.
    HypervisorIps { ts: PacketTime, mac: Mac, ips: Vec<IpAddr> },
    /// A frame inside a tunnel sent with a registered hypervisor's MAC.
    VmUsesHypervisorMac { ts: PacketTime, mac: Mac, outer_ip: Option<IpAddr> },
}

impl Conflict {
    pub fn ts(&self) -> PacketTime {
        match self {
            Conflict::Clone { ts, .. }
            | Conflict::HypervisorIps { ts, .. }
            | Conflict::VmUsesHypervisorMac { ts, .. } => *ts,
        }
    }
}

/// What one window changed, for the detector's levels.
#[derive(Clone, Copy, Debug, Default)]
pub struct Flags {
    /// Seen behind an unsigned hypervisor, or moved without authorization.
    pub unsigned: bool,
    /// Moved more than `migration.factor` x RAM.
    pub too_many_bytes: bool,
    /// Downtime over `migration.max_downtime_ms`.
    pub long_downtime: bool,
    pub clone: bool,
    pub moved: bool,
    /// Moved without an allowed gate decision (with `require_gate`).
    pub ungated: bool,
}

#[derive(Clone, Debug, Default)]
struct VmLoc {
    current: Option<Place>,
    /// When the VM was last seen sending at `current`.
    last_seen: Option<PacketTime>,
    /// The place it left and when.
    previous: Option<(Place, PacketTime)>,
    last_announce: Option<PacketTime>,
    /// Its last move lacked a required token: treated as unsigned until an
    /// authorized move.
    unauthorized: bool,
    /// The wire showed it behind an unsigned hypervisor (or it moved without
    /// a required token) and it has not moved to a signed one since: its
    /// `signature` HIGH holds through windows it is quiet in.
    behind_unsigned: bool,
    /// Its frames at `current` in the last [`GAP_SPAN_US`] or so: (global slot, frames),
    /// oldest first, nonempty slots only, at most [`MAX_RECENT`].
    recent: VecDeque<(i64, u16)>,
}

/// Slots of recent frames kept per VM.
const MAX_RECENT: usize = 4_096;
/// How far back the largest frame gap (and the rate) before a move is
/// looked at: the VM's pace just before it paused.
const GAP_SPAN_US: i64 = 250_000;

impl VmLoc {
    /// Adds a sighting's slots (window `w` of `len_us`), keeping about the
    /// last [`GAP_SPAN_US`].
    fn remember(&mut self, s: &Sighting, len_us: i64) {
        let base = s.first.as_micros().div_euclid(len_us.max(1)).saturating_mul(SLOTS as i64);
        for (k, &n) in s.slots.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let g = base + k as i64;
            // Sightings come in time order; a slot already there (another
            // sighting at the same place in this window) adds up.
            match self.recent.iter_mut().rev().find(|e| e.0 == g) {
                Some(e) => e.1 = e.1.saturating_add(n),
                None => {
                    let at = self.recent.iter().rposition(|e| e.0 < g).map_or(0, |p| p + 1);
                    self.recent.insert(at, (g, n));
                }
            }
        }
        let span = span_slots(len_us);
        let newest = self.recent.back().map_or(0, |e| e.0);
        while self.recent.front().is_some_and(|e| e.0 <= newest - span) || self.recent.len() > MAX_RECENT {
            self.recent.pop_front();
        }
    }
}

/// Slots in [`GAP_SPAN_US`].
fn span_slots(len_us: i64) -> i64 {
    (GAP_SPAN_US.saturating_mul(SLOTS as i64) / len_us.max(1)).max(1)
}

/// The largest gap between the VM's frames in the span before its last
/// frame (slot `last`), rounded up to whole slots: `None` when fewer than two
/// slots had frames, or when the span's first frame came later than the
/// largest gap (its rhythm may be slower than the span shows).
fn largest_gap_us(recent: &VecDeque<(i64, u16)>, last: i64, len_us: i64) -> Option<i64> {
    let lo = last - span_slots(len_us) + 1;
    let mut prev: Option<i64> = None;
    let (mut first, mut widest) = (None, 0i64);
    for &(g, _) in recent.iter().filter(|e| e.0 >= lo && e.0 <= last) {
        first.get_or_insert(g);
        if let Some(p) = prev {
            widest = widest.max(g - p + 1);
        }
        prev = Some(g);
    }
    let first = first?;
    if widest == 0 || first - lo > widest {
        return None;
    }
    Some(widest.saturating_mul(len_us) / SLOTS as i64)
}

#[derive(Clone, Copy, Debug)]
struct Stream {
    part: StreamPart,
    /// A settled move took it (a move still choosing has not).
    tied: bool,
}

/// Streams remembered at most.
const MAX_STREAMS: usize = 4_096;

pub struct Locator {
    rules: MigrationRules,
    window_len_us: i64,
    registry: Registry,
    /// Registered IPs per hypervisor.
    hv_ips: Vec<Vec<IpAddr>>,
    hv_by_mac: FxHashMap<Mac, usize>,
    hv_by_ip: FxHashMap<IpAddr, usize>,
    sensor: Option<usize>,
    ram_bytes: Vec<Option<u64>>,
    vm_index: FxHashMap<Mac, usize>,
    vm_macs: Vec<Mac>,
    vms: Vec<VmLoc>,
    streams: FxHashMap<StreamKey, Stream>,
    /// Outer IPs seen per outer MAC (for the hypervisor-IPs conflict), bounded.
    outer_ips: FxHashMap<Mac, BTreeSet<IpAddr>>,
    reported: BTreeSet<(Mac, Option<IpAddr>)>,
    tokens: TokenStore,
    /// Allowed gate decisions not yet matched, oldest first.
    approvals: VecDeque<Approval>,
    /// Moves waiting for a late decision, oldest first.
    pending: VecDeque<Pending>,
    /// Whether gate decisions are followed at all.
    gate: bool,
    /// Moves not settled yet, oldest first (a few at most: each for at most [`settle::bound_us`]).
    unsettled: Vec<Unsettled>,
    /// Moves settled after their window, not yet taken.
    settled: Vec<Settled>,
    /// The last [`Move::open`] id given.
    next_id: u64,
    /// The start of the window being taken.
    window_start: PacketTime,
    pub flags: Vec<Flags>,
    pub dropped: u64,
    /// Approvals dropped because [`MAX_APPROVALS`] were waiting.
    pub approvals_dropped: u64,
}

/// Outer MACs remembered for the IP-conflict check.
const MAX_OUTER_MACS: usize = 65_536;

impl Locator {
    pub fn new(rules: &super::Config, registry: Registry) -> Locator {
        let mut hv_by_mac = FxHashMap::default();
        let mut hv_by_ip = FxHashMap::default();
        for (i, h) in rules.hypervisors.iter().enumerate() {
            for m in &h.macs {
                hv_by_mac.insert(*m, i);
            }
            for ip in &h.ips {
                hv_by_ip.insert(*ip, i);
            }
        }
        let vms: Vec<VmLoc> = rules
            .vms
            .iter()
            .map(|v| VmLoc { current: v.hypervisor.map(Place::registered), ..Default::default() })
            .collect();
        Locator {
            rules: rules.migration.clone(),
            window_len_us: rules.window_len_ms as i64 * 1000,
            hv_ips: rules.hypervisors.iter().map(|h| h.ips.clone()).collect(),
            hv_by_mac,
            hv_by_ip,
            sensor: rules.sensor,
            ram_bytes: rules.vms.iter().map(|v| v.ram_mb.map(|m| m * 1024 * 1024)).collect(),
            vm_index: rules.vms.iter().enumerate().map(|(i, v)| (v.mac, i)).collect(),
            vm_macs: rules.vms.iter().map(|v| v.mac).collect(),
            flags: vec![Flags::default(); vms.len()],
            vms,
            streams: FxHashMap::default(),
            outer_ips: FxHashMap::default(),
            reported: BTreeSet::new(),
            tokens: rules.tokens.clone(),
            approvals: VecDeque::new(),
            pending: VecDeque::new(),
            gate: !rules.migration.gate_decisions.is_empty(),
            unsettled: Vec::new(),
            settled: Vec::new(),
            next_id: 0,
            window_start: PacketTime::ZERO,
            registry,
            dropped: 0,
            approvals_dropped: 0,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// After a reload: keeps where each VM is (by MAC), the streams, what
    /// was reported, and the tokens already used. Places name hypervisors by
    /// registry index, which a reload may reorder: each is carried by the
    /// hypervisor's id (else by the MAC or IP the wire showed it with); a
    /// place whose hypervisor is gone from the rules and that the wire never
    /// showed gives way to the VM's place in the new rules.
    pub fn carry_from(&mut self, old: &mut Locator, vms: &[crate::vocab::VmEntry]) {
        for (i, v) in vms.iter().enumerate() {
            if let Some(&j) = old.vm_index.get(&v.mac) {
                let mut loc = old.vms[j].clone();
                loc.current = match loc.current.and_then(|p| self.carry_place(old, p)) {
                    Some(p) => Some(p),
                    None => self.vms[i].current,
                };
                loc.previous = loc.previous.and_then(|(p, t)| self.carry_place(old, p).map(|p| (p, t)));
                self.vms[i] = loc;
            }
        }
        // Moves being settled go on by MAC; those of a VM no longer in the
        // inventory are settled now.
        self.next_id = old.next_id;
        self.window_start = old.window_start;
        self.settled = std::mem::take(&mut old.settled);
        for k in 0..old.unsettled.len() {
            let mac = old.vm_macs[old.unsettled[k].vm];
            if self.vm_index.contains_key(&mac) {
                continue;
            }
            old.unsettled[k].comeback = None;
            if old.unsettled[k].choosing {
                old.choose_now(k);
            }
        }
        self.streams = std::mem::take(&mut old.streams);
        self.outer_ips = std::mem::take(&mut old.outer_ips);
        self.reported = std::mem::take(&mut old.reported);
        self.dropped = old.dropped;
        self.tokens.absorb(&mut old.tokens);
        self.approvals = std::mem::take(&mut old.approvals);
        self.pending = std::mem::take(&mut old.pending);
        self.approvals_dropped = old.approvals_dropped;
        for mut u in std::mem::take(&mut old.unsettled) {
            match self.vm_index.get(&old.vm_macs[u.vm]) {
                Some(&i) => {
                    u.vm = i;
                    self.unsettled.push(u);
                }
                None => self.settled.push(u.settled()),
            }
        }
    }

    /// Takes one of the gate's decisions; allowed ones wait for their move
    /// (or settle a move already waiting for its decision). A `fail_open`
    /// one approves nothing: the gate did not check the move. An
    /// `authorized` one spends its token here too, and the move it approves
    /// is authorized as that said (a shared store of used tokens that did not
    /// answer, or that had the nonce for another use, authorizes nothing).
    pub fn gate_decision(&mut self, r: &GateRecord) {
        if !r.allowed || r.reason == GateReason::FailOpen {
            return;
        }
        let pairing = self.pairing();
        let token = (r.reason == GateReason::Authorized)
            .then(|| self.tokens.spend_for_gate(r.nonce.as_deref(), &r.host, r.ts, &r.vms, pairing));
        let mut a = Approval { ts: r.ts, host: r.host.clone(), vms: r.vms.clone(), token };
        // A move that came before its decision (a late follower) takes it first.
        let (window, grace) = (self.rules.gate_window_s as i64 * 1_000_000, self.rules.gate_grace_s as i64 * 1_000_000);
        self.pending.retain(|p| {
            let fits = a.ts.as_micros() >= p.at.as_micros() - window
                && a.ts.as_micros() <= p.at.as_micros() + grace
                && p.to.as_ref().is_none_or(|t| *t == a.host);
            let Some(k) = a.vms.iter().position(|m| *m == p.mac).filter(|_| fits) else { return true };
            a.vms.remove(k);
            false
        });
        if a.vms.is_empty() {
            return;
        }
        if self.approvals.len() >= MAX_APPROVALS {
            self.approvals.pop_front();
            self.approvals_dropped += 1;
        }
        self.approvals.push_back(a);
    }

    /// Uses up `vm`'s part of the oldest approval for it to `to` (any
    /// destination when `None`) from the window before `at`: `Some(its
    /// token's authorization)` when one matched. The approval's other MACs
    /// stay for their own moves.
    fn take_approval(&mut self, vm: Mac, to: Option<&str>, at: PacketTime) -> Option<Option<Authorization>> {
        let window = self.rules.gate_window_s as i64 * 1_000_000;
        let k = self.approvals.iter().position(|a| {
            a.ts <= at
                && a.ts.as_micros() >= at.as_micros() - window
                && to.is_none_or(|t| a.host == t)
                && a.vms.contains(&vm)
        })?;
        let a = &mut self.approvals[k];
        let token = a.token;
        a.vms.retain(|m| *m != vm);
        if a.vms.is_empty() {
            self.approvals.remove(k);
        }
        Some(token)
    }

    /// The span in which a gate decision and a move pair (the store of used
    /// tokens takes them as one use of a token).
    fn pairing(&self) -> Pairing {
        Pairing {
            window_us: self.rules.gate_window_s as i64 * 1_000_000,
            grace_us: self.rules.gate_grace_s as i64 * 1_000_000,
        }
    }

    /// A move with no decision (with `require_gate`): ungated now, or after
    /// `gate_grace_s` unless a decision arrives meanwhile.
    fn ungated_unless_late(&mut self, i: usize, to: Option<String>, at: PacketTime) {
        if self.rules.gate_grace_s == 0 {
            self.flags[i].ungated = true;
            self.vms[i].unauthorized = true;
            return;
        }
        if self.pending.len() >= MAX_APPROVALS {
            // The oldest waits no longer: ungated (the safe side).
            if let Some(p) = self.pending.pop_front() {
                self.expire(&p);
            }
        }
        self.pending.push_back(Pending { mac: self.vm_macs[i], to, at });
    }

    fn expire(&mut self, p: &Pending) {
        if let Some(&i) = self.vm_index.get(&p.mac) {
            self.flags[i].ungated = true;
            self.vms[i].unauthorized = true;
        }
    }

    /// `p`, a place under `old`'s registry, under this one's.
    fn carry_place(&self, old: &Locator, p: Place) -> Option<Place> {
        let by_id = p.hv.and_then(|h| old.registry.get(h)).and_then(|e| self.registry.index_of(&e.id));
        let by_wire = || {
            let mac = p.mac.and_then(|m| self.hv_by_mac.get(&m));
            mac.or_else(|| p.ip.and_then(|ip| self.hv_by_ip.get(&ip))).copied()
        };
        let hv = by_id.or_else(by_wire);
        (hv.is_some() || p.mac.is_some()).then_some(Place { hv, ..p })
    }

    /// Where the VM is now (the wire's word, else the rules').
    pub fn place(&self, vm: usize) -> Option<Place> {
        self.vms.get(vm).and_then(|v| v.current)
    }

    /// Whether the wire showed the VM behind an unsigned hypervisor (or
    /// moving without a required token) since its last move to a signed one.
    pub fn behind_unsigned(&self, vm: usize) -> bool {
        self.vms.get(vm).is_some_and(|v| v.behind_unsigned)
    }

    /// Whether the VM counts as on a signed hypervisor: its place verifies,
    /// and (with `require_authorization`) its last move was authorized.
    pub fn signed(&self, vm: usize) -> bool {
        let Some(v) = self.vms.get(vm) else { return false };
        !v.unauthorized && v.current.is_some_and(|p| p.verdict(&self.registry).is_signed())
    }

    fn resolve(&self, origin: Origin) -> Option<Place> {
        match origin {
            Origin::Outer { mac, ip } => {
                let hv = self.hv_by_mac.get(&mac).or_else(|| self.hv_by_ip.get(&ip)).copied();
                Some(Place { hv, mac: Some(mac), ip: Some(ip) })
            }
            Origin::Sensor => self.sensor.map(Place::registered),
            Origin::Unknown => None,
        }
    }

    fn ips_of(&self, p: &Place) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = p.hv.and_then(|h| self.hv_ips.get(h)).cloned().unwrap_or_default();
        v.extend(p.ip);
        v
    }

    /// Takes one window's evidence (`now`: the window's end); returns its
    /// moves and conflicts in time order, and leaves per-VM [`Flags`] for the
    /// levels.
    pub fn window(&mut self, ev: &Evidence, now: PacketTime) -> (Vec<Move>, Vec<Conflict>) {
        self.dropped += ev.dropped;
        self.window_start = PacketTime::from_micros(now.as_micros().saturating_sub(self.window_len_us));
        // Approvals too old for any move from now on.
        let oldest = now.as_micros() - self.rules.gate_window_s as i64 * 1_000_000;
        self.approvals.retain(|a| a.ts.as_micros() >= oldest);
        // Moves whose grace for a late decision is over are ungated.
        let grace = self.rules.gate_grace_s as i64 * 1_000_000;
        while let Some(p) = self.pending.front().filter(|p| p.at.as_micros().saturating_add(grace) <= now.as_micros()) {
            let p = p.clone();
            self.pending.pop_front();
            self.expire(&p);
        }
        let mut conflicts = Vec::new();
        self.take_streams(&ev.streams, now);
        self.take_oddities(&ev.oddities, now, &mut conflicts);
        let mut moves = Vec::new();
        for s in &ev.sightings {
            let Some(&i) = self.vm_index.get(&s.vm) else { continue };
            self.sighting(i, s, &mut moves, &mut conflicts);
        }
        self.settle_window(now, &mut moves);
        conflicts.sort_by_key(Conflict::ts);
        (moves, conflicts)
    }

    fn take_streams(&mut self, parts: &[StreamPart], now: PacketTime) {
        for p in parts {
            let key = (p.src, p.dst);
            match self.streams.get_mut(&key) {
                Some(s) => {
                    s.part.first = s.part.first.min(p.first);
                    s.part.last = s.part.last.max(p.last);
                    s.part.bytes += p.bytes;
                    s.part.last_data = s.part.last_data.max(p.last_data);
                }
                None => {
                    if self.streams.len() >= MAX_STREAMS {
                        self.dropped += 1;
                        continue;
                    }
                    self.streams.insert(key, Stream { part: *p, tied: false });
                }
            }
        }
        // Forget streams long past any announce they could be tied to.
        let horizon = now
            .as_micros()
            .saturating_sub((self.rules.stream_gap_s as i64).saturating_add(60).saturating_mul(10_000_000));
        self.streams.retain(|_, s| s.part.last.as_micros() >= horizon);
    }

    /// Registry contradictions; reported at the window's end (`ts`), once each.
    fn take_oddities(&mut self, odd: &[Oddity], ts: PacketTime, conflicts: &mut Vec<Conflict>) {
        for o in odd {
            match *o {
                Oddity::OuterPair { mac, ip } => {
                    if !self.outer_ips.contains_key(&mac) && self.outer_ips.len() >= MAX_OUTER_MACS {
                        continue;
                    }
                    let ips = self.outer_ips.entry(mac).or_default();
                    if ips.len() < 16 && ips.insert(ip) && ips.len() > 1 && self.hv_by_mac.contains_key(&mac) {
                        conflicts.push(Conflict::HypervisorIps { ts, mac, ips: ips.iter().copied().collect() });
                    }
                }
                Oddity::VmUsesHypervisorMac { mac, outer_ip } => {
                    if self.reported.insert((mac, outer_ip)) {
                        conflicts.push(Conflict::VmUsesHypervisorMac { ts, mac, outer_ip });
                    }
                }
            }
        }
    }

    fn sighting(&mut self, i: usize, s: &Sighting, moves: &mut Vec<Move>, conflicts: &mut Vec<Conflict>) {
        let burst = self.rules.announce_burst_ms as i64 * 1000;
        let seen_at = s.announce.map_or(s.first, |(t, _)| t.min(s.first));
        let Some(place) = self.resolve(s.origin) else {
            // An announce with nothing to say where: a move to an unknown place,
            // once per burst.
            if let Some((t, via)) = s.announce {
                let v = &mut self.vms[i];
                if v.last_announce.is_none_or(|l| t.as_micros().saturating_sub(l.as_micros()) > burst) {
                    v.last_announce = Some(t);
                    // No destination to hold a token against; a gate decision
                    // for this VM to any host stands for the move.
                    if self.rules.require_authorization {
                        self.flags[i].unsigned = true;
                        v.unauthorized = true;
                        v.behind_unsigned = true;
                    }
                    let from = v.current;
                    let approval = if self.gate { self.take_approval(self.vm_macs[i], None, t) } else { None };
                    if self.rules.require_gate && approval.is_none() {
                        self.ungated_unless_late(i, None, t);
                    }
                    self.flags[i].moved = true;
                    moves.push(Move {
                        vm: i,
                        ts: t,
                        from,
                        to: None,
                        via,
                        verdict: Verdict::Unknown,
                        authorization: Authorization::Missing,
                        downtime_us: None,
                        measured: Measured::default(),
                        gated: self.gate.then_some(approval.is_some()),
                        open: None,
                        streams_open: false,
                    });
                }
            }
            return;
        };
        if let Some((t, _)) = s.announce {
            self.vms[i].last_announce = Some(t);
        }
        let verdict = place.verdict(&self.registry);
        let current = self.vms[i].current;
        match current {
            Some(cur) if !cur.same(&place) => {
                let (previous, last_seen) = (self.vms[i].previous, self.vms[i].last_seen);
                if let Some((prev, moved_at)) = previous.filter(|(p, _)| p.same(&place)) {
                    // Frames from where it left. Shortly after the move they
                    // are stragglers; later, while it is still active where
                    // it went, two copies run: a clone. An announce, or
                    // silence at the new place, makes it a move back.
                    let overlap = self.rules.clone_overlap_ms as i64 * 1000;
                    let active_there =
                        last_seen.is_some_and(|l| l.as_micros() >= s.first.as_micros().saturating_sub(overlap));
                    if s.announce.is_none() && active_there {
                        if s.last.as_micros() > moved_at.as_micros().saturating_add(overlap) {
                            self.flags[i].clone = true;
                            conflicts.push(Conflict::Clone { vm: i, ts: s.last, places: [prev, cur] });
                        }
                        return;
                    }
                }
                self.moved(i, cur, place, s, seen_at, verdict, moves);
            }
            _ => {
                // Where it was (or first sight): the wire's MAC now decides the verdict.
                let v = &mut self.vms[i];
                v.current = Some(place);
                v.last_seen = Some(v.last_seen.map_or(s.last, |l| l.max(s.last)));
                v.remember(s, self.window_len_us);
                for c in self.unsettled.iter_mut().filter(|u| u.vm == i).filter_map(|u| u.comeback.as_mut()) {
                    c.add(&s.slots);
                }
                let v = &mut self.vms[i];
                if !verdict.is_signed() || v.unauthorized {
                    self.flags[i].unsigned = true;
                    v.behind_unsigned = true;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn moved(
        &mut self,
        i: usize,
        from: Place,
        to: Place,
        s: &Sighting,
        at: PacketTime,
        verdict: Verdict,
        moves: &mut Vec<Move>,
    ) {
        let via = s.announce.map_or(Via::Traffic, |(_, v)| v);
        // A move of this VM still being settled gets no more frames: it is
        // settled with what there is.
        for u in self.unsettled.iter_mut().filter(|u| u.vm == i) {
            if let Some(mut c) = u.comeback.take() {
                u.responsive_us = c.close(self.window_start).flatten();
            }
        }
        // Streams between the two hypervisors, ended shortly before the move.
        // One migration's connections all go to the destination's listening
        // endpoint, so they are grouped by it; of several migrations between
        // the same two hosts, this move's is chosen by [`settle::choose`],
        // with the lookahead of the windows after it when it is ambiguous.
        let (from_ips, to_ips) = (self.ips_of(&from), self.ips_of(&to));
        let gap = self.rules.stream_gap_s as i64 * 1_000_000;
        let listener = |p: &StreamPart| -> Endpoint {
            if to_ips.contains(&p.dst.0) {
                p.dst
            } else {
                p.src
            }
        };
        let candidate = |st: &Stream| {
            let p = st.part;
            let between = (from_ips.contains(&p.src.0) && to_ips.contains(&p.dst.0))
                || (to_ips.contains(&p.src.0) && from_ips.contains(&p.dst.0));
            !st.tied && between && p.first <= at && p.last.as_micros() >= at.as_micros().saturating_sub(gap)
        };
        let mut groups: Vec<Group> = Vec::new();
        let mut keys: Vec<Vec<StreamKey>> = Vec::new();
        let mut found: Vec<(&StreamKey, &Stream)> = self.streams.iter().filter(|(_, st)| candidate(st)).collect();
        // A stable order whatever the map's.
        found.sort_unstable_by_key(|(k, _)| **k);
        for (key, st) in found {
            let p = &st.part;
            let data = p.last_data.filter(|_| from_ips.contains(&p.src.0));
            let l = listener(p);
            match groups.iter().position(|g| g.listener == l) {
                Some(k) => {
                    let g = &mut groups[k];
                    g.last_data = g.last_data.max(data);
                    g.last = g.last.max(p.last);
                    g.first = g.first.min(p.first);
                    g.bytes = g.bytes.saturating_add(p.bytes);
                    g.streams += 1;
                    keys[k].push(*key);
                }
                None => {
                    groups.push(Group {
                        listener: l,
                        last_data: data,
                        last: p.last,
                        first: p.first,
                        bytes: p.bytes,
                        streams: 1,
                        continued: false,
                    });
                    keys.push(vec![*key]);
                }
            }
        }
        // The memory flows from the source: a listener the source sent no
        // data to (streams the other way, such as those of the VM's way in
        // when it moves back) is not this move's, unless none had any (a
        // mirror that shows one direction only).
        if groups.iter().any(|g| g.last_data.is_some()) {
            let mut k = 0;
            while k < groups.len() {
                if groups[k].last_data.is_none() {
                    groups.remove(k);
                    keys.remove(k);
                } else {
                    k += 1;
                }
            }
        }
        let tail = at.as_micros().saturating_add(settle::STREAM_TAIL_US);
        for g in &mut groups {
            g.continued = g.last_data.is_some_and(|d| d.as_micros() > tail);
        }
        let chosen = settle::choose(&groups, at);
        let choosing = !settle::decided(&groups);
        if let (false, Some(k)) = (choosing, chosen) {
            for key in &keys[k] {
                if let Some(st) = self.streams.get_mut(key) {
                    st.tied = true;
                }
            }
        }
        let to_name = to.name(&self.registry).unwrap_or_default();
        let approval = if self.gate { self.take_approval(self.vm_macs[i], Some(&to_name), at) } else { None };
        // A token the gate checked and used up authorizes the move here too,
        // if it could be spent here.
        let pairing = self.pairing();
        let authorization = match approval {
            Some(Some(token)) => token,
            _ => self.tokens.authorize(self.vm_macs[i], &to_name, at, pairing),
        };
        let len_us = self.window_len_us;
        let v = &mut self.vms[i];
        let downtime_us = v.last_seen.map(|l| at.as_micros().saturating_sub(l.as_micros()).max(0));
        let last_slot = v.last_seen.map(|l| settle::global_slot(l, len_us));
        let gap_us = last_slot.and_then(|l| largest_gap_us(&v.recent, l, len_us));
        // Its pace in the span before its last frame at the source.
        let comeback = last_slot.and_then(|last| {
            let lo = last - span_slots(len_us) + 1;
            let within = || v.recent.iter().filter(|e| e.0 >= lo && e.0 <= last);
            let frames: u64 = within().map(|e| u64::from(e.1)).sum();
            let first = within().next()?.0;
            let mut c = Comeback::new(at, frames, last - first + 1, len_us)?;
            c.add(&s.slots);
            Some(c)
        });
        let m = measure(chosen.map(|k| &groups[k]), at, v.last_seen, downtime_us, gap_us);
        let last_seen = v.last_seen;
        v.recent.clear();
        v.remember(s, len_us);
        v.unauthorized = self.rules.require_authorization && authorization != Authorization::Granted;
        v.previous = Some((from, at));
        v.current = Some(to);
        v.last_seen = Some(s.last);
        if self.rules.require_gate && approval.is_none() {
            self.ungated_unless_late(i, Some(to_name), at);
        }
        let f = &mut self.flags[i];
        f.moved = true;
        let unsigned =
            !verdict.is_signed() || (self.rules.require_authorization && authorization != Authorization::Granted);
        f.unsigned |= unsigned;
        self.vms[i].behind_unsigned = unsigned;
        // A stream choice still open may be another move's stream (a big
        // one that paused): its bytes raise nothing until it is settled
        // (`finish`), so no level or action rests on a provisional choice.
        let flagged = !choosing && self.too_many_bytes(i, m.bytes);
        if downtime_us.is_some_and(|d| d > self.rules.max_downtime_ms as i64 * 1000) {
            self.flags[i].long_downtime = true;
        }
        let open = (choosing || comeback.is_some()).then(|| {
            self.next_id += 1;
            self.unsettled.push(Unsettled {
                id: self.next_id,
                vm: i,
                at,
                from_ips,
                groups,
                keys,
                choosing,
                chosen,
                comeback,
                responsive_us: None,
                last_seen,
                downtime_us,
                gap_us,
                flagged,
            });
            self.next_id
        });
        moves.push(Move {
            vm: i,
            ts: at,
            from: Some(from),
            to: Some(to),
            via,
            verdict,
            authorization,
            downtime_us,
            measured: m,
            gated: self.gate.then_some(approval.is_some()),
            open,
            streams_open: choosing,
        });
    }

    /// Raises `too_many_bytes` when `bytes` is more than `migration.factor` x the VM's RAM.
    fn too_many_bytes(&mut self, i: usize, bytes: Option<u64>) -> bool {
        let over = match (self.ram_bytes[i], bytes) {
            (Some(ram), Some(b)) => b as f64 > self.rules.factor * ram as f64,
            _ => false,
        };
        self.flags[i].too_many_bytes |= over;
        over
    }

    /// At a window's end (`now`): the moves being settled take its
    /// frames and the streams' data since; those settled are finished in
    /// `moves` (this window's) or kept for [`Locator::take_settled`].
    fn settle_window(&mut self, now: PacketTime, moves: &mut [Move]) {
        let start = self.window_start;
        let mut k = 0;
        while k < self.unsettled.len() {
            let u = &mut self.unsettled[k];
            if let Some(c) = &mut u.comeback {
                if let Some(r) = c.close(start) {
                    u.responsive_us = r;
                    u.comeback = None;
                }
            }
            if u.choosing {
                let tail = u.at.as_micros().saturating_add(settle::STREAM_TAIL_US);
                let bound = u.at.as_micros().saturating_add(settle::bound_us(self.window_len_us));
                for (g, keys) in u.groups.iter_mut().zip(&u.keys) {
                    let went_on = keys.iter().filter_map(|key| self.streams.get(key)).any(|st| {
                        u.from_ips.contains(&st.part.src.0) && st.part.last_data.is_some_and(|d| d.as_micros() > tail)
                    });
                    g.continued |= went_on;
                }
                if settle::decided(&u.groups) || now.as_micros() > bound {
                    self.choose_now(k);
                }
            }
            let u = &self.unsettled[k];
            if u.choosing || u.comeback.is_some() {
                k += 1;
                continue;
            }
            let u = self.unsettled.remove(k);
            self.finish(u, moves);
        }
    }

    /// Chooses unsettled move `k`'s streams now: listeners another move
    /// took meanwhile are out; the chosen one's streams are tied to it.
    fn choose_now(&mut self, k: usize) {
        let streams = &self.streams;
        let u = &mut self.unsettled[k];
        let taken = |keys: &Vec<StreamKey>| keys.iter().any(|key| streams.get(key).is_some_and(|st| st.tied));
        let free: Vec<bool> = u.keys.iter().map(|keys| !taken(keys)).collect();
        let (mut groups, mut keys) = (Vec::new(), Vec::new());
        for ((g, ks), f) in u.groups.drain(..).zip(u.keys.drain(..)).zip(free) {
            if f {
                groups.push(g);
                keys.push(ks);
            }
        }
        (u.groups, u.keys) = (groups, keys);
        u.chosen = settle::choose(&u.groups, u.at);
        u.choosing = false;
        if let Some(c) = u.chosen {
            for key in &u.keys[c] {
                if let Some(st) = self.streams.get_mut(key) {
                    st.tied = true;
                }
            }
        }
    }

    /// A settled move: into its window's `moves` if it is there, else kept
    /// for the next [`Locator::take_settled`]; bytes over the factor that
    /// only the final choice shows raise the flag now.
    fn finish(&mut self, u: Unsettled, moves: &mut [Move]) {
        let s = u.settled();
        if !u.flagged {
            self.too_many_bytes(u.vm, s.measured.bytes);
        }
        match moves.iter_mut().find(|m| m.open == Some(u.id)) {
            Some(m) => m.settle(&s),
            None => self.settled.push(s),
        }
    }

    /// Moves settled after their window, in the order they were settled.
    pub fn take_settled(&mut self) -> Vec<Settled> {
        std::mem::take(&mut self.settled)
    }

    /// Settles every open move with what the wire showed so far (the input ended).
    pub fn settle_all(&mut self) -> Vec<Settled> {
        for k in 0..self.unsettled.len() {
            if self.unsettled[k].choosing {
                self.choose_now(k);
            }
        }
        for u in std::mem::take(&mut self.unsettled) {
            self.finish(u, &mut []);
        }
        self.take_settled()
    }

    pub fn ram_bytes(&self, vm: usize) -> Option<u64> {
        self.ram_bytes.get(vm).copied().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::placement::slot_of;
    use crate::trust::token::Token;
    use crate::trust::ClusterKey;
    use std::os::unix::fs::PermissionsExt;

    const A: &str = "02:00:00:00:00:0a";
    const B: &str = "02:00:00:00:00:0b";
    const H1: &str = "52:54:00:aa:00:01";
    const H2: &str = "52:54:00:aa:00:02";
    const S: i64 = 1_000_000;

    /// h1 and h2, VMs a and b on h1, the gate followed and required.
    fn locator(extra: &str) -> (Locator, tempfile::TempDir) {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("k");
        std::fs::write(&k, [b'k'; 32]).unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::create_dir(d.path().join("tok")).unwrap();
        let text = format!(
            "[cluster]\nname = \"t\"\nkey_file = \"k\"\n[migration]\ngate_decisions = [\"d.jsonl\"]\nrequire_gate = true\n\
             tokens_dir = \"tok\"\n{extra}\n[[hypervisor]]\nid = \"h1\"\nmacs = [\"{H1}\"]\n[[hypervisor]]\nid = \"h2\"\n\
             macs = [\"{H2}\"]\n[[vm]]\nname = \"a\"\nmac = \"{A}\"\nhypervisor = \"h1\"\n[[vm]]\nname = \"b\"\nmac = \"{B}\"\nhypervisor = \"h1\"\n"
        );
        let r = crate::config::Rules::from_str_in(d.path(), std::path::Path::new("t.toml"), &text).unwrap();
        (Locator::new(&r.detect_config(), Registry::build(&r.key, &r.cluster, &r.hypervisors)), d)
    }

    fn seen(vm: &str, hv: Option<&str>, t: i64) -> Evidence {
        let at = PacketTime::from_micros(t);
        Evidence {
            sightings: vec![Sighting {
                vm: vm.parse().unwrap(),
                origin: hv
                    .map_or(Origin::Unknown, |h| Origin::Outer { mac: h.parse().unwrap(), ip: [10, 0, 0, 1].into() }),
                first: at,
                last: at,
                frames: 1,
                announce: hv.is_none().then_some((at, Via::Rarp)),
                slots: [0; SLOTS],
            }],
            ..Default::default()
        }
    }

    fn decision(t: i64, vms: &[&str], host: &str, reason: GateReason, nonce: Option<&str>) -> GateRecord {
        GateRecord {
            ts: PacketTime::from_micros(t),
            allowed: matches!(reason, GateReason::Signed | GateReason::Authorized | GateReason::FailOpen),
            reason,
            detail: None,
            domain: "d".into(),
            uuid: None,
            vms: vms.iter().map(|m| m.parse().unwrap()).collect(),
            host: host.into(),
            nonce: nonce.map(str::to_string),
            elapsed_us: 1,
            mac: None,
        }
    }

    /// One window ending at `now` with `ev`: its moves' `gated`, and whether a VM went ungated.
    fn step(l: &mut Locator, ev: &Evidence, now: i64) -> (Vec<Option<bool>>, [bool; 2]) {
        let (moves, _) = l.window(ev, PacketTime::from_micros(now));
        let ungated = [std::mem::take(&mut l.flags[0]).ungated, std::mem::take(&mut l.flags[1]).ungated];
        (moves.iter().map(|m| m.gated).collect(), ungated)
    }

    #[test]
    fn one_approval_serves_each_of_its_macs_once_and_fail_open_approves_nothing() {
        let (mut l, _d) = locator("");
        l.gate_decision(&decision(S / 2, &[A, B], "h2", GateReason::Signed, None));
        assert_eq!(step(&mut l, &seen(A, Some(H2), S), 2 * S), (vec![Some(true)], [false, false]));
        // b's part of the same decision is still there.
        assert_eq!(step(&mut l, &seen(B, Some(H2), 2 * S), 3 * S), (vec![Some(true)], [false, false]));
        // a again: that decision is spent.
        l.gate_decision(&decision(4 * S, &[A], "h1", GateReason::FailOpen, None));
        assert_eq!(step(&mut l, &seen(A, Some(H1), 5 * S), 6 * S), (vec![Some(false)], [false, false]));
        assert_eq!(step(&mut l, &Evidence::default(), 16 * S), (vec![], [true, false]));
    }

    #[test]
    fn an_ungated_move_waits_gate_grace_s_for_a_late_decision() {
        let (mut l, _d) = locator("");
        assert_eq!(step(&mut l, &seen(A, Some(H2), S), 2 * S), (vec![Some(false)], [false, false]));
        // The decision, made before the move, arrives after its window closed.
        l.gate_decision(&decision(S / 2, &[A], "h2", GateReason::Signed, None));
        for now in [3, 11, 30] {
            assert_eq!(step(&mut l, &Evidence::default(), now * S), (vec![], [false, false]), "{now}");
        }
        assert!(!l.vms[0].unauthorized);
        // None arrives: ungated once the grace (10 s) is over, not before.
        assert_eq!(step(&mut l, &seen(A, Some(H1), 40 * S), 41 * S), (vec![Some(false)], [false, false]));
        assert_eq!(step(&mut l, &Evidence::default(), 49 * S), (vec![], [false, false]));
        assert_eq!(step(&mut l, &Evidence::default(), 50 * S), (vec![], [true, false]));
        assert!(l.vms[0].unauthorized);
        // gate_grace_s = 0: at once, as before.
        let (mut l, _d) = locator("gate_grace_s = 0");
        assert_eq!(step(&mut l, &seen(A, Some(H2), S), 2 * S), (vec![Some(false)], [true, false]));
    }

    #[test]
    fn an_announce_only_move_uses_an_approval_for_that_vm() {
        let (mut l, _d) = locator("");
        l.gate_decision(&decision(S / 2, &[A], "h2", GateReason::Signed, None));
        assert_eq!(step(&mut l, &seen(A, None, S), 2 * S), (vec![Some(true)], [false, false]));
        assert_eq!(step(&mut l, &Evidence::default(), 20 * S), (vec![], [false, false]));
        // Another announce, no decision left.
        assert_eq!(step(&mut l, &seen(A, None, 21 * S), 22 * S), (vec![Some(false)], [false, false]));
        assert_eq!(step(&mut l, &Evidence::default(), 31 * S), (vec![], [true, false]));
    }

    #[test]
    fn a_token_the_gate_used_up_is_spent_at_the_sensor_too() {
        let (mut l, d) = locator("");
        let key = ClusterKey::from_bytes(&[b'k'; 32]).unwrap();
        let nonce = "0011223344556677";
        let t = Token::sign(&key, A.parse().unwrap(), "h2", 4_000_000_000, nonce);
        std::fs::write(d.path().join("tok/t.tokens"), format!("{t}\n")).unwrap();
        l.gate_decision(&decision(S / 2, &[A], "h2", GateReason::Authorized, Some(nonce)));
        assert_eq!(
            std::fs::read_to_string(d.path().join("tok").join(crate::trust::token::USED_FILE)).unwrap(),
            format!("{nonce}\n")
        );
        let (moves, _) = l.window(&seen(A, Some(H2), S), PacketTime::from_micros(2 * S));
        assert_eq!(moves[0].authorization, Authorization::Granted);
        l.window(&seen(A, Some(H1), 10 * S), PacketTime::from_micros(11 * S));
        // The same token in tokens_dir cannot grant a second move to h2.
        let (moves, _) = l.window(&seen(A, Some(H2), 30 * S), PacketTime::from_micros(31 * S));
        assert_eq!(moves[0].authorization, Authorization::Replayed);
    }

    /// A shared store of used tokens that answers `answer` to every claim.
    #[derive(Debug)]
    struct Answers(crate::trust::token::Claim, std::sync::Mutex<Vec<String>>);

    impl crate::trust::token::UsedNonces for Answers {
        fn claim_as(&self, nonce: &str, claim: &str, _: &dyn Fn(&str) -> bool) -> crate::trust::token::Claim {
            self.1.lock().unwrap().push(format!("{nonce} {claim}"));
            self.0
        }
    }

    #[test]
    fn a_token_the_shared_store_cannot_spend_for_a_gate_decision_authorizes_nothing() {
        use crate::trust::token::Claim;
        for (answer, want) in [
            (Claim::Unavailable, Authorization::Unavailable),
            (Claim::Used, Authorization::Replayed),
            (Claim::Again, Authorization::Granted),
            (Claim::Fresh, Authorization::Granted),
        ] {
            let (mut l, _d) = locator("require_authorization = true");
            let store = std::sync::Arc::new(Answers(answer, Default::default()));
            l.tokens = std::mem::take(&mut l.tokens).with_shared(store.clone());
            // The decision 0.5 s before the move (within gate_window_s = 600).
            l.gate_decision(&decision(S / 2, &[A], "h2", GateReason::Authorized, Some("0011223344556677")));
            assert_eq!(*store.1.lock().unwrap(), ["0011223344556677 gate h2 500000"]);
            let (moves, _) = l.window(&seen(A, Some(H2), S), PacketTime::from_micros(2 * S));
            assert_eq!((moves[0].authorization, moves[0].gated), (want, Some(true)), "{answer:?}");
            // Not granted: like a move without its required token (treated as unsigned until an authorized move).
            assert_eq!(l.vms[0].unauthorized, want != Authorization::Granted, "{answer:?}");
        }
        // An authorized decision without a nonce cannot be claimed: nothing authorized.
        let (mut l, _d) = locator("require_authorization = true");
        let store = std::sync::Arc::new(Answers(Claim::Fresh, Default::default()));
        l.tokens = std::mem::take(&mut l.tokens).with_shared(store.clone());
        l.gate_decision(&decision(S / 2, &[A], "h2", GateReason::Authorized, None));
        let (moves, _) = l.window(&seen(A, Some(H2), S), PacketTime::from_micros(2 * S));
        assert_eq!(moves[0].authorization, Authorization::Missing);
        assert!(store.1.lock().unwrap().is_empty());
        // Without a shared store, as the gate said (the file path).
        let (mut l, _d) = locator("require_authorization = true");
        l.gate_decision(&decision(S / 2, &[A], "h2", GateReason::Authorized, None));
        let (moves, _) = l.window(&seen(A, Some(H2), S), PacketTime::from_micros(2 * S));
        assert_eq!(moves[0].authorization, Authorization::Granted);
    }

    #[test]
    fn a_two_mac_gate_decision_seen_after_one_of_its_moves_grants_both_as_seen_before_it() {
        // Domain with MACs a and b, one token for a; the decision at 0.5 s,
        // a's move at 1 s, b's at 2 s. Controllers that see the decision
        // before a's move, and after it (a late follower), must agree.
        let key = ClusterKey::from_bytes(&[b'k'; 32]).unwrap();
        let nonce = "0011223344556677";
        let mut outcomes = Vec::new();
        for decision_first in [true, false] {
            let (mut l, d) = locator("require_authorization = true\ngate_grace_s = 5");
            let t = Token::sign(&key, A.parse().unwrap(), "h2", 4_000_000_000, nonce);
            std::fs::write(d.path().join("tok/t.tokens"), format!("{t}\n")).unwrap();
            let store = std::sync::Arc::new(crate::trust::token::tests::Shared::default());
            l.tokens = std::mem::take(&mut l.tokens).with_shared(store.clone());
            let gate = decision(S / 2, &[A, B], "h2", GateReason::Authorized, Some(nonce));
            if decision_first {
                l.gate_decision(&gate);
            }
            let (a, _) = l.window(&seen(A, Some(H2), S), PacketTime::from_micros(S + S / 2));
            if !decision_first {
                l.gate_decision(&gate);
            }
            let (b, _) = l.window(&seen(B, Some(H2), 2 * S), PacketTime::from_micros(3 * S));
            outcomes.push((a[0].authorization, b[0].authorization, l.vms[0].unauthorized, l.vms[1].unauthorized));
            // The store holds the first claim: the decision's, or a's move's.
            let held = store.map.lock().unwrap()[nonce].clone();
            assert_eq!(held, if decision_first { "gate h2 500000" } else { "move 02:00:00:00:00:0a h2 1000000" });
            // A second decision with the same token pairs with a's move
            // too, but the token was used for this one: it grants nothing.
            l.gate_decision(&decision(S / 2 + 1, &[A, B], "h2", GateReason::Authorized, Some(nonce)));
            let (b2, _) = l.window(&seen(B, Some(H2), 4 * S), PacketTime::from_micros(5 * S));
            assert!(b2.is_empty(), "b is at h2 already: no move");
            l.window(&seen(A, Some(H1), 10 * S), PacketTime::from_micros(11 * S));
            let (a2, _) = l.window(&seen(A, Some(H2), 30 * S), PacketTime::from_micros(31 * S));
            assert_eq!(a2[0].authorization, Authorization::Replayed, "decision first: {decision_first}");
        }
        let granted = (Authorization::Granted, Authorization::Granted, false, false);
        assert_eq!(outcomes, [granted, granted]);
    }

    const W: i64 = 100_000;

    /// VM `vm`'s frames at `times` (all in one window of 100 ms) from `hv`
    /// (outer IP 10.0.0.`ip`), the first an announce when `announce`.
    fn frames(vm: &str, hv: &str, ip: u8, times: &[i64], announce: bool) -> Sighting {
        let at = |t: i64| PacketTime::from_micros(t);
        Sighting {
            vm: vm.parse().unwrap(),
            origin: Origin::Outer { mac: hv.parse().unwrap(), ip: [10, 0, 0, ip].into() },
            first: at(times[0]),
            last: at(*times.last().unwrap()),
            frames: times.len() as u64,
            announce: announce.then_some((at(times[0]), Via::Rarp)),
            slots: {
                let mut s = [0u16; SLOTS];
                for &t in times {
                    s[slot_of(at(t), W)] += 1;
                }
                s
            },
        }
    }

    fn every(from: i64, to: i64, step: i64) -> Vec<i64> {
        (0..).map(|k| from + k * step).take_while(|&t| t <= to).collect()
    }

    /// Runs `evidence(w)` through windows `first..` of 100 ms until every
    /// move is settled (at most 40 windows): the moves as finally measured,
    /// each with the number of windows after its own it was settled in.
    fn run(l: &mut Locator, first: i64, evidence: impl Fn(i64) -> Evidence) -> Vec<(Move, i64)> {
        let mut got: Vec<(Move, i64, i64)> = Vec::new();
        for w in first..first + 40 {
            // Windows without traffic are not closed (the detector grades them as quiet).
            let ev = evidence(w);
            if ev.sightings.is_empty() && ev.streams.is_empty() {
                continue;
            }
            let (moves, _) = l.window(&ev, PacketTime::from_micros((w + 1) * W));
            got.extend(moves.into_iter().map(|m| (m, w, w)));
            for s in l.take_settled() {
                let m = got.iter_mut().find(|m| m.0.open == Some(s.id)).expect("settles an open move");
                m.0.settle(&s);
                m.2 = w;
            }
        }
        assert!(got.iter().all(|m| m.0.open.is_none()), "{got:?}");
        got.into_iter().map(|(m, w, settled)| (m, settled - w)).collect()
    }

    #[test]
    fn a_stream_whose_data_went_the_other_way_is_not_the_moves_memory() {
        // VM a first seen at h2 (10.0.0.2), the tail of its way in: h1 sent
        // 5 MB to h2's listener 49152, h2 only acknowledged. At 0.65 s it
        // moves back to h1, h2 sending 3 MB to h1's listener until 0.69 s.
        let (mut l, _d) = locator("[window]\nlength_ms = 100");
        let part = |src: (u8, u16), dst: (u8, u16), from: i64, to: i64, bytes: u64, data: bool| StreamPart {
            src: ([10, 0, 0, src.0].into(), src.1),
            dst: ([10, 0, 0, dst.0].into(), dst.1),
            first: PacketTime::from_micros(from),
            last: PacketTime::from_micros(to),
            bytes,
            last_data: data.then_some(PacketTime::from_micros(to)),
        };
        let moves = run(&mut l, 0, |w| {
            let mut ev = Evidence::default();
            match w {
                0 => {
                    ev.sightings.push(frames(A, H2, 2, &[50_000], false));
                    ev.streams.push(part((1, 40_000), (2, 49_152), 0, 90_000, 5_000_000, true));
                    ev.streams.push(part((2, 49_152), (1, 40_000), 0, 95_000, 0, false));
                }
                5 | 6 => {
                    let (from, to) = (w * W, if w == 5 { w * W + W - 1 } else { 690_000 });
                    ev.streams.push(part((2, 40_001), (1, 49_152), from, to, 1_500_000, true));
                    ev.streams.push(part((1, 49_152), (2, 40_001), from, to, 0, false));
                    if w == 6 {
                        ev.sightings.push(frames(A, H1, 1, &[650_000], true));
                    }
                }
                _ => {}
            }
            ev
        });
        // (The rules put it at h1: its first frame at h2 is a move too.)
        let [_, (m, _)] = &moves[..] else { panic!("{moves:?}") };
        assert_eq!(m.ts, PacketTime::from_micros(650_000));
        // The 3 MB h2 sent, not the 5 MB that went the other way (it was taken, as the only quiet listener).
        assert_eq!((m.measured.streams, m.measured.bytes), (2, Some(3_000_000)), "{m:?}");
    }

    /// VM a at h1 sending at `before`, then at h2 from `after[0]` (the move) at `after`.
    fn paced(l: &mut Locator, before: &[i64], after: &[i64]) -> (Move, i64) {
        let in_window = |times: &[i64], w: i64| -> Vec<i64> { times.iter().copied().filter(|t| t / W == w).collect() };
        let mut moves = run(l, before[0] / W, |w| {
            let mut ev = Evidence::default();
            for (hv, times) in [(H1, before), (H2, after)] {
                let t = in_window(times, w);
                if !t.is_empty() {
                    ev.sightings.push(frames(A, hv, 1, &t, false));
                }
            }
            ev
        });
        assert_eq!(moves.len(), 1, "{moves:?}");
        moves.remove(0)
    }

    #[test]
    fn the_downtime_resolution_is_the_pace_before_the_move_and_time_to_responsiveness_its_return() {
        let (mut l, _d) = locator("[window]\nlength_ms = 100");
        // Every 2 ms from 10.0 s to 10.5 s, then quiet; back at 10.530 s, every 2 ms.
        let before = every(10_000_000, 10_500_000, 2_000);
        let (m, late) = paced(&mut l, &before, &every(10_530_000, 11_000_000, 2_000));
        assert_eq!(m.downtime_us, Some(30_000));
        // Gaps of 2 ms are 1 or 2 slots (1.5625 ms) apart: at most 3 slots, 4.687 ms.
        assert_eq!(m.measured.downtime_resolution_us, Some(4_687));
        // Back at once: settled in its own window.
        assert_eq!((m.measured.responsive_us, late), (Some(0), 0));
        // Back only after its window's end: 5 ms before it, then a frame
        // every 20 ms to 10.675 s, then its pace from 10.700 s: measured
        // across the boundaries, from the first slot of the run (10.700 s),
        // settled then (two windows after its own).
        let (mut l, _d) = locator("[window]\nlength_ms = 100");
        let mut after = every(10_595_000, 10_675_000, 20_000);
        after.extend(every(10_700_000, 11_000_000, 2_000));
        let (m, late) = paced(&mut l, &before, &after);
        assert_eq!((m.downtime_us, m.measured.responsive_us, late), (Some(95_000), Some(105_000), 2));
        // A frame of the sparse ones within the run's 8 slots starts it (10.695 s, slot 60 of 10.6 s).
        let (mut l, _d) = locator("[window]\nlength_ms = 100");
        let mut after = every(10_595_000, 10_695_000, 20_000);
        after.extend(every(10_700_000, 11_000_000, 2_000));
        let (m, _) = paced(&mut l, &before, &after);
        assert_eq!(m.measured.responsive_us, Some(98_750));
        // It resumes at a fifth of its pace: never back; given up 1 s after
        // the move (10.530 s + 1 s, in the window 10 after its own).
        let (mut l, _d) = locator("[window]\nlength_ms = 100");
        let (m, late) = paced(&mut l, &before, &every(10_530_000, 12_000_000, 10_000));
        assert_eq!((m.downtime_us, m.measured.responsive_us, late), (Some(30_000), None, 10));
        // Quiet after the move: the same (windows never closed count as empty).
        let (mut l, _d) = locator("[window]\nlength_ms = 100");
        let (m, late) = paced(&mut l, &before, &[10_530_000, 11_700_000]);
        assert_eq!((m.measured.responsive_us, late), (None, 12));
        // Every 100 ms: fewer than 16 frames in 250 ms, and a quiet start of the
        // span as long as its gaps: pace unknown, the whole silence, settled at once.
        let (mut l, _d) = locator("[window]\nlength_ms = 100");
        let (m, late) = paced(&mut l, &every(10_000_000, 10_500_000, 100_000), &every(10_530_000, 11_000_000, 2_000));
        assert_eq!(
            (m.downtime_us, m.measured.downtime_resolution_us, m.measured.responsive_us),
            (Some(30_000), Some(30_000), None)
        );
        assert_eq!((m.open, late), (None, 0));
    }

    /// A stream from h1 (10.0.0.1:`sport`) to h2's listener (10.0.0.2:`dport`)
    /// carrying `bytes` in every 100 ms window from `from` to `to`, its data
    /// ending at `to` (one part per window).
    fn stream(sport: u16, dport: u16, from: i64, to: i64, bytes: u64) -> Vec<StreamPart> {
        (from / W..=to / W)
            .map(|w| {
                let (a, b) = (from.max(w * W), to.min((w + 1) * W - 1));
                StreamPart {
                    src: ([10, 0, 0, 1].into(), sport),
                    dst: ([10, 0, 0, 2].into(), dport),
                    first: PacketTime::from_micros(a),
                    last: PacketTime::from_micros(b),
                    bytes,
                    last_data: Some(PacketTime::from_micros(b)),
                }
            })
            .collect()
    }

    /// What a move took: bytes, streams, total_us.
    type Took = (Option<u64>, u32, Option<i64>);

    /// Moves from h1 (10.0.0.1) to h2 (10.0.0.2) announced at `moves` (VM,
    /// time), with `parts` on the wire: each VM's (bytes, streams, total_us),
    /// and the window the first was settled in, after its own.
    fn streams_of(parts: &[StreamPart], moves: &[(&str, i64)]) -> (Vec<Took>, i64) {
        let (mut l, _d) = locator("[window]\nlength_ms = 100");
        let first = parts.iter().map(|p| p.first.as_micros() / W).chain(moves.iter().map(|m| m.1 / W)).min().unwrap();
        let got = run(&mut l, first, |w| {
            let mut ev = Evidence::default();
            if w == first {
                // Where the VMs were: h1, at 10.0.0.1.
                ev.sightings = moves.iter().map(|m| frames(m.0, H1, 1, &[w * W], false)).collect();
            }
            ev.streams = parts.iter().filter(|p| p.first.as_micros() / W == w).copied().collect();
            for &(vm, t) in moves.iter().filter(|m| m.1 / W == w) {
                ev.sightings.push(frames(vm, H2, 2, &[t], true));
            }
            // And a frame of each 1.2 s after the last move: a window closes past every bound.
            if let Some(last) = moves.iter().map(|m| m.1 / W).max().filter(|l| *l + 12 == w) {
                ev.sightings = moves.iter().map(|m| frames(m.0, H2, 2, &[last * W + 12 * W], false)).collect();
            }
            ev
        });
        let late = got.first().map_or(0, |m| m.1);
        (got.into_iter().map(|(m, _)| (m.measured.bytes, m.measured.streams, m.measured.total_us)).collect(), late)
    }

    #[test]
    fn two_moves_at_once_a_stream_going_on_after_the_announce_is_the_other_vms() {
        // b's small stream ends at 10.30 s; a's big one pauses from 10.38 s,
        // across b's announce (10.39 s) and its window's end, resumes at
        // 10.45 s and ends at 11.20 s, just before a's announce.
        let mut parts = stream(40_001, 49_152, 10_000_000, 10_300_000, 1_000);
        parts.extend(stream(40_002, 49_153, 10_000_000, 10_380_000, 100_000));
        parts.extend(stream(40_002, 49_153, 10_450_000, 11_200_000, 100_000));
        let (got, late) = streams_of(&parts, &[(B, 10_390_000), (A, 11_250_000)]);
        assert_eq!(
            got,
            vec![(Some(4_000), 1, Some(300_000)), (Some(1_300_000), 1, Some(1_200_000))],
            "b: its own stream; a: the big one"
        );
        // b's choice waited for the next window, which showed the big stream go on.
        assert_eq!(late, 1);
        // Without the pause, the big stream's data goes on past b's move
        // (and its tail) in b's own window: settled there.
        let mut parts = stream(40_001, 49_152, 10_000_000, 10_300_000, 1_000);
        parts.extend(stream(40_002, 49_153, 10_000_000, 11_200_000, 100_000));
        let (got, late) = streams_of(&parts, &[(B, 10_370_000), (A, 11_250_000)]);
        assert_eq!((got, late), (vec![(Some(4_000), 1, Some(300_000)), (Some(1_300_000), 1, Some(1_200_000))], 0));
        // Both ended before b's move, neither going on: b's is the one that
        // ended last (the rule without the lookahead), settled at the bound.
        let mut parts = stream(40_001, 49_152, 10_000_000, 10_300_000, 1_000);
        parts.extend(stream(40_002, 49_153, 10_000_000, 10_380_000, 100_000));
        let (got, late) = streams_of(&parts, &[(B, 10_390_000)]);
        assert_eq!((got, late), (vec![(Some(400_000), 1, Some(380_000))], 12));
        // Data from the source within 20 ms of the announce still counts as
        // before it (the bytes are those by the move's window's end, the
        // total to the move).
        let mut parts = stream(40_001, 49_152, 10_000_000, 10_405_000, 1_000);
        parts.extend(stream(40_002, 49_153, 10_000_000, 10_300_000, 7));
        let (got, _) = streams_of(&parts, &[(B, 10_390_000)]);
        assert_eq!(got, vec![(Some(4_000), 1, Some(390_000))]);
    }

    #[test]
    fn libvirts_daemon_port_is_the_memory_only_when_no_qemu_stream_ended_before_the_move() {
        for port in [16_509, 16_514] {
            // QEMU's stream ends at 10.30 s; libvirt's RPC to the destination's
            // daemon ends later, before the move: QEMU's stream is the memory.
            let mut parts = stream(40_001, 49_152, 10_000_000, 10_300_000, 1_000);
            parts.extend(stream(40_003, port, 10_000_000, 10_380_000, 10));
            let (got, late) = streams_of(&parts, &[(B, 10_390_000)]);
            assert_eq!((got, late), (vec![(Some(4_000), 1, Some(300_000))], 0), "{port}");
            // A tunnelled move: the daemon's connection carries it.
            let (got, late) = streams_of(&stream(40_003, port, 10_000_000, 10_380_000, 1_000), &[(B, 10_390_000)]);
            assert_eq!((got, late), (vec![(Some(4_000), 1, Some(380_000))], 0), "{port}");
        }
    }

    #[test]
    fn one_move_takes_its_stream_at_once_and_a_move_without_one_has_none() {
        let (got, late) = streams_of(&stream(40_001, 49_152, 10_000_000, 10_300_000, 1_000), &[(B, 10_390_000)]);
        assert_eq!((got, late), (vec![(Some(4_000), 1, Some(300_000))], 0));
        let (got, late) = streams_of(&[], &[(B, 10_390_000)]);
        assert_eq!((got, late), (vec![(None, 0, None)], 0));
    }

    #[test]
    fn approvals_over_the_cap_are_counted_as_such() {
        let (mut l, _d) = locator("");
        for k in 0..MAX_APPROVALS + 3 {
            l.gate_decision(&decision(k as i64, &[A], "h2", GateReason::Signed, None));
        }
        assert_eq!((l.approvals_dropped, l.dropped), (3, 0));
    }
}
