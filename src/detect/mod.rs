//! Detect: grade each VM LOW / MEDIUM / HIGH from its window totals (rate, volume, RTT peaks), with hysteresis.
//!
//! A VM has one level per reason (rate, volume, rtt, migration, signature, clone, ungated); its level is the highest of
//! them. Each reason rises at once to the highest level its window crosses and
//! drops back one level only after `clear_windows` windows below that level.
//! Only VMs of the rules' inventory are graded; other MACs are measured and
//! reported, never acted on. The MAC table is bounded: when it outgrows
//! `limits.max_macs`, the unknown MACs seen longest ago are evicted (counted).
//!
//! RTT: a window's samples are taken in packet-time order. A sample is a peak
//! when it is above `rtt.peak_ms`, or, with `rtt.peak_factor` set, above that
//! factor times the VM's baseline. The baseline is a slow exponentially
//! weighted mean (weight 1/8 per sample, as TCP's SRTT) of the VM's
//! non-peak samples only, so peaks never drag it up. More than
//! `rtt.max_peaks` peaks in one window raises the VM to `rtt.level`.

mod level;
pub mod location;
mod settle;
mod victim;

pub use level::{Direction, Hysteresis, Level, Reason};
pub use location::{Conflict, Measured, Move, Place, Settled};
pub use victim::{AddressBook, Victim};

use crate::decode::Mac;
use crate::measure::histogram::Histogram;
use crate::measure::placement::Evidence;
use crate::measure::rtt::RttSample;
use crate::measure::Counters;
use crate::trust::token::TokenStore;
use crate::trust::{Registry, Verdict};
use crate::vocab::PacketTime;
use crate::vocab::{HypervisorEntry, VmEntry};
use location::Locator;
use location::MigrationRules;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;

/// What the detector reads: its sections of the rules and the inventory.
/// [`config`](crate::config) builds it from the rules file; a test builds
/// it from plain values (`Config { vms, ..Default::default() }`).
#[derive(Clone, Debug)]
pub struct Config {
    pub window_len_ms: u64,
    pub thresholds: Thresholds,
    pub rtt: RttRules,
    pub volume: VolumeRules,
    pub migration: MigrationRules,
    /// MACs tracked at once (never fewer than the inventory's VMs).
    pub max_macs: usize,
    /// Index of the hypervisor whose uplink this sensor watches.
    pub sensor: Option<usize>,
    pub hypervisors: Vec<HypervisorEntry>,
    pub vms: Vec<VmEntry>,
    /// Move tokens (opened by the loader: no file is read here).
    pub tokens: TokenStore,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            window_len_ms: crate::vocab::time::DEFAULT_WINDOW_MS,
            thresholds: Thresholds::default(),
            rtt: RttRules::default(),
            volume: VolumeRules::default(),
            migration: MigrationRules::default(),
            max_macs: DEFAULT_MAX_MACS,
            sensor: None,
            hypervisors: Vec::new(),
            vms: Vec::new(),
            tokens: TokenStore::none(),
        }
    }
}

/// `limits.max_macs`: MACs tracked at once.
pub const DEFAULT_MAX_MACS: usize = 65_536;

/// Rate thresholds, per VM and per direction, each window.
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    pub medium_bps: u64,
    pub high_bps: u64,
    pub medium_pps: u64,
    pub high_pps: u64,
    /// Windows below a level before the VM drops back one level.
    pub clear_windows: u32,
}

/// RTT peaks (`[rtt]`).
#[derive(Clone, Debug, PartialEq)]
pub struct RttRules {
    pub enabled: bool,
    pub peak_ms: f64,
    pub peak_factor: Option<f64>,
    pub max_peaks: u32,
    pub level: Level,
    pub probe_timeout_ms: u64,
    pub flow_timeout_s: u64,
}

/// Volume against RAM (`[volume]`).
#[derive(Clone, Debug, PartialEq)]
pub struct VolumeRules {
    pub factor: f64,
    pub horizon_s: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            medium_bps: 100_000_000,
            high_bps: 500_000_000,
            medium_pps: 50_000,
            high_pps: 200_000,
            clear_windows: 3,
        }
    }
}

impl Default for RttRules {
    fn default() -> Self {
        RttRules {
            enabled: true,
            peak_ms: 50.0,
            // Only `peak_ms` defines a peak.
            peak_factor: None,
            max_peaks: 5,
            level: Level::Medium,
            // An unanswered probe is forgotten after this; a TCP flow with no packet for this long.
            probe_timeout_ms: 10_000,
            flow_timeout_s: 120,
        }
    }
}

impl Default for VolumeRules {
    fn default() -> Self {
        // The paper's "more than 3x VRAM", over a minute.
        VolumeRules { factor: 3.0, horizon_s: 60 }
    }
}

/// A VM's overall level changed at the end of a window.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub vm: usize,
    pub from: Level,
    pub to: Level,
    pub reason: Reason,
    pub direction: Option<Direction>,
    pub bps: u64,
    pub pps: u64,
    pub horizon_bytes: Option<u64>,
    pub limit_bytes: Option<u64>,
    pub window_start: PacketTime,
    pub window_end: PacketTime,
}

/// A VM showed more RTT peaks in a window than `rtt.max_peaks`.
#[derive(Clone, Debug, PartialEq)]
pub struct RttPeaks {
    pub vm: usize,
    pub peaks: u32,
    /// The window's samples of this VM.
    pub window: Histogram,
    pub baseline_ms: Option<f64>,
    pub window_start: PacketTime,
    pub window_end: PacketTime,
}

/// What closing a window found, in the order events are written.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Level(Change),
    RttPeaks(RttPeaks),
    Migration(Move),
    Conflict(Conflict),
    /// The migration gate refused a move (its own timestamp).
    GateDenied(crate::gate::record::GateRecord),
}

impl Outcome {
    pub fn ts(&self) -> PacketTime {
        match self {
            Outcome::Level(c) => c.window_end,
            Outcome::RttPeaks(p) => p.window_end,
            Outcome::Migration(m) => m.ts,
            Outcome::Conflict(c) => c.ts(),
            Outcome::GateDenied(r) => r.ts,
        }
    }
}

/// The baseline's weight per non-peak sample.
const BASELINE_WEIGHT: f64 = 1.0 / 8.0;

/// Cumulative counters of one MAC.
#[derive(Clone, Debug, Default)]
pub struct MacState {
    pub totals: Counters,
    /// Every RTT sample this MAC answered with.
    pub rtt: Histogram,
    pub last_window: i64,
    /// Index into the inventory when the MAC is a known VM.
    pub vm: Option<usize>,
}

/// Per-VM grading state.
#[derive(Clone, Debug)]
pub struct VmState {
    pub mac: Mac,
    pub name: String,
    pub hypervisor: Option<usize>,
    pub ram_mb: Option<u64>,
    pub flavor: Option<String>,
    pub level: Level,
    rate: Hysteresis,
    volume: Hysteresis,
    /// tx bytes of the last `horizon_windows` windows, newest last.
    volume_ring: VecDeque<u64>,
    volume_sum: u64,
    volume_limit: Option<u64>,
    rtt: Hysteresis,
    signature: Hysteresis,
    migration: Hysteresis,
    clone: Hysteresis,
    ungated: Hysteresis,
    /// Slow mean of non-peak RTT samples, in ms.
    pub rtt_baseline_ms: Option<f64>,
    /// RTT samples and peaks of the latest window.
    pub rtt_window: Histogram,
    pub rtt_peaks: u32,
    /// RTT samples of the latest closed window.
    pub last_rtt: Histogram,
    pub last_peaks: u32,
    /// Rates of the latest window (tx, rx): (bps, pps).
    pub last_rates: [(u64, u64); 2],
}

pub struct Detector {
    thresholds: Thresholds,
    rtt_rules: RttRules,
    downtime_level: Level,
    locator: Locator,
    window_len_us: i64,
    horizon_windows: usize,
    max_macs: usize,
    macs: FxHashMap<Mac, MacState>,
    vms: Vec<VmState>,
    /// Inventory indices sorted by MAC: the order events come out in.
    vm_order: Vec<usize>,
    window_scratch: Vec<Counters>,
    addresses: AddressBook,
    pub evictions: u64,
    /// Windows closed by the watermark: those that held a frame (and, live,
    /// the idle ones the capture clock passed). The quiet windows of a gap
    /// are graded, a long gap only as far as it can change anything, but
    /// not counted, so a jump of years in packet time costs nothing.
    pub windows: u64,
    last_window: Option<i64>,
    /// Refusals of the migration gate, out with the next window.
    denials: Vec<crate::gate::record::GateRecord>,
}

impl Detector {
    /// A detector for the inventory in `cfg`; it reads no file (the
    /// loader opened the tokens store in `cfg.tokens`).
    pub fn new(cfg: impl Into<Config>, registry: Registry) -> Detector {
        let rules = &cfg.into();
        let window_len_us = rules.window_len_ms as i64 * 1000;
        let horizon_us = rules.volume.horizon_s as i64 * 1_000_000;
        let horizon_windows = ((horizon_us + window_len_us - 1) / window_len_us).max(1) as usize;
        let vms: Vec<VmState> = rules
            .vms
            .iter()
            .map(|v| VmState {
                mac: v.mac,
                name: v.name.clone(),
                hypervisor: v.hypervisor,
                ram_mb: v.ram_mb,
                flavor: v.flavor.clone(),
                level: Level::Low,
                rate: Hysteresis::default(),
                volume: Hysteresis::default(),
                volume_ring: VecDeque::with_capacity(horizon_windows + 1),
                volume_sum: 0,
                volume_limit: v.ram_mb.map(|mb| (rules.volume.factor * mb as f64 * 1024.0 * 1024.0) as u64),
                rtt: Hysteresis::default(),
                signature: Hysteresis::default(),
                migration: Hysteresis::default(),
                clone: Hysteresis::default(),
                ungated: Hysteresis::default(),
                rtt_baseline_ms: None,
                rtt_window: Histogram::default(),
                rtt_peaks: 0,
                last_rtt: Histogram::default(),
                last_peaks: 0,
                last_rates: [(0, 0); 2],
            })
            .collect();
        let mut vm_order: Vec<usize> = (0..vms.len()).collect();
        vm_order.sort_by_key(|&i| vms[i].mac);
        let mut macs = FxHashMap::default();
        for (i, v) in vms.iter().enumerate() {
            macs.insert(v.mac, MacState { last_window: i64::MIN, vm: Some(i), ..Default::default() });
        }
        Detector {
            thresholds: rules.thresholds.clone(),
            rtt_rules: rules.rtt.clone(),
            downtime_level: rules.migration.downtime_level,
            locator: Locator::new(rules, registry),
            window_len_us,
            horizon_windows,
            max_macs: rules.max_macs.max(rules.vms.len()),
            window_scratch: vec![Counters::default(); vms.len()],
            addresses: AddressBook::new(&rules.hypervisors, &rules.vms),
            macs,
            vms,
            vm_order,
            evictions: 0,
            windows: 0,
            last_window: None,
            denials: Vec::new(),
        }
    }

    pub fn vm(&self, i: usize) -> &VmState {
        &self.vms[i]
    }

    pub fn vms(&self) -> &[VmState] {
        &self.vms
    }

    pub fn vm_index(&self, mac: Mac) -> Option<usize> {
        self.macs.get(&mac).and_then(|m| m.vm)
    }

    /// Closes window `w` with its merged totals (sorted by MAC) and RTT
    /// samples (sorted by time). Windows with no traffic between the previous
    /// one and `w` are closed first, as quiet windows, so hysteresis and the
    /// volume horizon see them.
    pub fn close_window<'a>(
        &mut self,
        w: i64,
        totals: &[(Mac, Counters)],
        samples: impl IntoIterator<Item = &'a RttSample>,
        evidence: &Evidence,
    ) -> Vec<Outcome> {
        let mut out = Vec::new();
        if let Some(last) = self.last_window {
            // After this many quiet windows every level is LOW and every
            // volume ring is empty, so longer gaps need not be walked.
            let enough = self.horizon_windows as i64 + 2 * i64::from(self.thresholds.clear_windows) + 1;
            let gap = (w - last - 1).max(0);
            for q in (last + 1)..(last + 1 + gap.min(enough)) {
                self.grade(q, &mut out);
            }
        }
        for (mac, c) in totals {
            let st = self.macs.entry(*mac).or_default();
            st.totals.add(c);
            st.last_window = w;
            if let Some(i) = st.vm {
                self.window_scratch[i] = *c;
            }
        }
        self.take_rtt(w, samples);
        self.addresses.learn(&evidence.addresses);
        let (moves, conflicts) = self.locator.window(evidence, self.window_start(w + 1));
        for m in &moves {
            // A VM that moved answers from elsewhere: learn its RTT anew.
            self.vms[m.vm].rtt_baseline_ms = None;
        }
        let mut timed: Vec<Outcome> = moves.into_iter().map(Outcome::Migration).collect();
        timed.extend(conflicts.into_iter().map(Outcome::Conflict));
        timed.extend(self.denials.drain(..).map(Outcome::GateDenied));
        timed.sort_by_key(Outcome::ts);
        out.extend(timed);
        // A refusal may predate the quiet windows graded above (stable: the
        // rest keep their order).
        out.sort_by_key(Outcome::ts);
        self.grade(w, &mut out);
        self.windows += 1;
        self.last_window = Some(w);
        self.evict_if_full();
        out
    }

    /// Records the window's samples per MAC and, for inventory VMs, counts
    /// peaks against the threshold and the baseline as it stood at each sample.
    fn take_rtt<'a>(&mut self, w: i64, samples: impl IntoIterator<Item = &'a RttSample>) {
        for s in samples {
            let st = self.macs.entry(s.mac).or_default();
            st.rtt.record(s.rtt_us);
            if st.last_window == i64::MIN {
                st.last_window = w;
            }
            let Some(i) = st.vm else { continue };
            let r = &self.rtt_rules;
            let vm = &mut self.vms[i];
            let ms = s.rtt_us as f64 / 1000.0;
            vm.rtt_window.record(s.rtt_us);
            let over_baseline = match (r.peak_factor, vm.rtt_baseline_ms) {
                (Some(f), Some(b)) => ms > f * b,
                _ => false,
            };
            if ms > r.peak_ms || over_baseline {
                vm.rtt_peaks += 1;
            } else {
                vm.rtt_baseline_ms = Some(match vm.rtt_baseline_ms {
                    Some(b) => b + BASELINE_WEIGHT * (ms - b),
                    None => ms,
                });
            }
        }
    }

    fn grade(&mut self, w: i64, out: &mut Vec<Outcome>) {
        let start = PacketTime::window_start(w, self.window_len_us);
        let end = PacketTime::window_end(w, self.window_len_us);
        let clear = self.thresholds.clear_windows;
        let horizon = self.horizon_windows;
        for k in 0..self.vm_order.len() {
            let i = self.vm_order[k];
            let c = std::mem::take(&mut self.window_scratch[i]);
            let (tx_level, tx_bps, tx_pps) = self.rate_level(c.tx_bytes, c.tx_packets);
            let (rx_level, rx_bps, rx_pps) = self.rate_level(c.rx_bytes, c.rx_packets);
            let (max_peaks, rtt_level) = (self.rtt_rules.max_peaks, self.rtt_rules.level);
            let vm = &mut self.vms[i];
            vm.last_rates = [(tx_bps, tx_pps), (rx_bps, rx_pps)];
            let (dir, rate_w, bps, pps) = if rx_level > tx_level {
                (Direction::Rx, rx_level, rx_bps, rx_pps)
            } else {
                (Direction::Tx, tx_level, tx_bps, tx_pps)
            };
            let before = vm.level;
            let rate_changed = vm.rate.update(rate_w, clear);

            let mut volume_changed = false;
            if let Some(limit) = vm.volume_limit {
                vm.volume_ring.push_back(c.tx_bytes);
                vm.volume_sum += c.tx_bytes;
                while vm.volume_ring.len() > horizon {
                    vm.volume_sum -= vm.volume_ring.pop_front().unwrap_or(0);
                }
                let vol_w = if vm.volume_sum > limit { Level::High } else { Level::Low };
                volume_changed = vm.volume.update(vol_w, clear);
            }

            let abnormal_rtt = vm.rtt_peaks > max_peaks;
            if abnormal_rtt {
                out.push(Outcome::RttPeaks(RttPeaks {
                    vm: i,
                    peaks: vm.rtt_peaks,
                    window: vm.rtt_window,
                    baseline_ms: vm.rtt_baseline_ms,
                    window_start: start,
                    window_end: end,
                }));
            }
            let rtt_changed = vm.rtt.update(if abnormal_rtt { rtt_level } else { Level::Low }, clear);
            vm.last_rtt = std::mem::take(&mut vm.rtt_window);
            vm.last_peaks = std::mem::take(&mut vm.rtt_peaks);

            let f = std::mem::take(&mut self.locator.flags[i]);
            let high_if = |b: bool| if b { Level::High } else { Level::Low };
            // Held while the VM stays behind the unsigned host, quiet or not.
            let unsigned = f.unsigned || self.locator.behind_unsigned(i);
            let signature_changed = vm.signature.update(high_if(unsigned), clear);
            let migration_w = if f.too_many_bytes {
                Level::High
            } else if f.long_downtime {
                self.downtime_level
            } else {
                Level::Low
            };
            let migration_changed = vm.migration.update(migration_w, clear);
            let clone_changed = vm.clone.update(high_if(f.clone), clear);
            let ungated_changed = vm.ungated.update(high_if(f.ungated), clear);

            let after = vm.rate.level.max(vm.volume.level).max(vm.rtt.level).max(vm.signature.level);
            let after = after.max(vm.migration.level).max(vm.clone.level).max(vm.ungated.level);
            if after == before {
                continue;
            }
            vm.level = after;
            // The reason is the component that moved the VM: on a rise the
            // first one now at the new level, on a fall the first one that
            // fell (in the order below: what the wire proves first).
            let parts = [
                (Reason::Clone, vm.clone.level, clone_changed),
                (Reason::Signature, vm.signature.level, signature_changed),
                (Reason::Ungated, vm.ungated.level, ungated_changed),
                (Reason::Migration, vm.migration.level, migration_changed),
                (Reason::Rate, vm.rate.level, rate_changed),
                (Reason::Volume, vm.volume.level, volume_changed),
                (Reason::Rtt, vm.rtt.level, rtt_changed),
            ];
            let reason = if after > before { parts.iter().find(|p| p.1 == after) } else { parts.iter().find(|p| p.2) }
                .map_or(Reason::Rate, |p| p.0);
            let (direction, bps, pps) =
                if reason == Reason::Rate { (Some(dir), bps, pps) } else { (None, tx_bps, tx_pps) };
            let is_volume = reason == Reason::Volume;
            out.push(Outcome::Level(Change {
                vm: i,
                from: before,
                to: after,
                reason,
                direction,
                bps,
                pps,
                horizon_bytes: is_volume.then_some(vm.volume_sum),
                limit_bytes: if is_volume { vm.volume_limit } else { None },
                window_start: start,
                window_end: end,
            }));
        }
    }

    /// The level a window's bytes and packets cross, with the rates.
    fn rate_level(&self, bytes: u64, packets: u64) -> (Level, u64, u64) {
        let len = self.window_len_us as u128;
        let bps = (u128::from(bytes) * 8 * 1_000_000 / len) as u64;
        let pps = (u128::from(packets) * 1_000_000 / len) as u64;
        let t = &self.thresholds;
        let level = if bps >= t.high_bps || pps >= t.high_pps {
            Level::High
        } else if bps >= t.medium_bps || pps >= t.medium_pps {
            Level::Medium
        } else {
            Level::Low
        };
        (level, bps, pps)
    }

    /// Keeps the MAC table within its cap: evicts unknown MACs, those seen
    /// longest ago first, down to 7/8 of the cap so eviction is amortized.
    fn evict_if_full(&mut self) {
        if self.macs.len() <= self.max_macs {
            return;
        }
        let known = self.vms.len();
        let target = (self.max_macs - self.max_macs / 8).max(known);
        let mut unknown: Vec<(i64, Mac)> =
            self.macs.iter().filter(|(_, s)| s.vm.is_none()).map(|(m, s)| (s.last_window, *m)).collect();
        unknown.sort_unstable();
        let excess = self.macs.len().saturating_sub(target);
        for (_, m) in unknown.into_iter().take(excess) {
            self.macs.remove(&m);
            self.evictions += 1;
        }
    }

    /// Every MAC seen, sorted by MAC, with its state.
    pub fn seen_macs(&self) -> Vec<(Mac, &MacState)> {
        let mut v: Vec<_> = self.macs.iter().filter(|(_, s)| s.last_window != i64::MIN).map(|(m, s)| (*m, s)).collect();
        v.sort_unstable_by_key(|(m, _)| *m);
        v
    }

    /// Takes new rules without losing measurements: every MAC's counters,
    /// and each inventory VM's levels, rings and baselines, carry over by MAC.
    /// The window length is kept (windows in flight use it); a new one takes
    /// effect on restart.
    pub fn reload(&mut self, cfg: impl Into<Config>, registry: Registry) {
        let rules = &cfg.into();
        let mut new = Detector::new(rules.clone(), registry);
        new.window_len_us = self.window_len_us;
        let horizon_us = rules.volume.horizon_s as i64 * 1_000_000;
        new.horizon_windows = ((horizon_us + self.window_len_us - 1) / self.window_len_us).max(1) as usize;
        for v in new.vms.iter_mut() {
            let Some(old) = self.vm_index(v.mac).map(|i| &self.vms[i]) else { continue };
            let limit = v.volume_limit;
            *v = VmState {
                name: v.name.clone(),
                hypervisor: v.hypervisor,
                ram_mb: v.ram_mb,
                flavor: v.flavor.clone(),
                volume_limit: limit,
                ..old.clone()
            };
        }
        let index: FxHashMap<Mac, usize> = new.vms.iter().enumerate().map(|(i, v)| (v.mac, i)).collect();
        let mut macs = std::mem::take(&mut self.macs);
        for (m, st) in macs.iter_mut() {
            st.vm = index.get(m).copied();
        }
        for (m, &i) in &index {
            macs.entry(*m).or_insert(MacState { last_window: i64::MIN, vm: Some(i), ..Default::default() });
        }
        new.macs = macs;
        new.evictions = self.evictions;
        new.windows = self.windows;
        new.last_window = self.last_window;
        new.denials = std::mem::take(&mut self.denials);
        new.locator.carry_from(&mut self.locator, &rules.vms);
        new.addresses.carry_from(&mut self.addresses);
        *self = new;
    }

    /// Takes decisions of the migration gate, in time order: allowed ones
    /// approve the moves they match, refusals come out with the next window.
    pub fn gate_decisions(&mut self, records: Vec<crate::gate::record::GateRecord>) {
        for r in records {
            self.locator.gate_decision(&r);
            if !r.allowed {
                self.denials.push(r);
            }
        }
    }

    /// Moves settled after the window they were found in, since the last call:
    /// their final measurements, for the events written with them open.
    pub fn take_settled(&mut self) -> Vec<Settled> {
        self.locator.take_settled()
    }

    /// Settles every open move with what was seen (the input ended).
    pub fn settle_all(&mut self) -> Vec<Settled> {
        self.locator.settle_all()
    }

    /// After [`Detector::settle_all`]: a VM whose move's bytes cross
    /// `migration.factor` x RAM only in its final measurement rises
    /// to HIGH (reason `migration`) at the last window's end, as the next
    /// window would have graded it had the input gone on.
    pub fn grade_settled(&mut self) -> Vec<Outcome> {
        let mut out = Vec::new();
        let Some(w) = self.last_window else { return out };
        let (start, end) =
            (PacketTime::window_start(w, self.window_len_us), PacketTime::window_end(w, self.window_len_us));
        let clear = self.thresholds.clear_windows;
        for k in 0..self.vm_order.len() {
            let i = self.vm_order[k];
            if !std::mem::take(&mut self.locator.flags[i].too_many_bytes) {
                continue;
            }
            let vm = &mut self.vms[i];
            vm.migration.update(Level::High, clear);
            let before = vm.level;
            if vm.migration.level <= before {
                continue;
            }
            vm.level = vm.migration.level;
            let (bps, pps) = vm.last_rates[0];
            out.push(Outcome::Level(Change {
                vm: i,
                from: before,
                to: vm.level,
                reason: Reason::Migration,
                direction: None,
                bps,
                pps,
                horizon_bytes: None,
                limit_bytes: None,
                window_start: start,
                window_end: end,
            }));
        }
        out
    }

    /// Refusals not yet out (the capture ended before their window).
    pub fn take_denials(&mut self) -> Vec<crate::gate::record::GateRecord> {
        std::mem::take(&mut self.denials)
    }

    /// Where the VM is (the wire's word, else the rules'), by name.
    pub fn hypervisor_name(&self, vm: usize) -> Option<String> {
        self.locator.place(vm).and_then(|p| p.name(self.locator.registry()))
    }

    /// Whether the VM's hypervisor is signed (for the MAC the wire shows).
    pub fn verdict(&self, vm: usize) -> Verdict {
        self.locator.place(vm).map_or(Verdict::Unknown, |p| p.verdict(self.locator.registry()))
    }

    /// Whether the policy treats the VM as on a signed hypervisor (also
    /// false after a move that lacked a required token).
    pub fn signed(&self, vm: usize) -> bool {
        self.locator.signed(vm)
    }

    pub fn place(&self, vm: usize) -> Option<Place> {
        self.locator.place(vm)
    }

    pub fn registry(&self) -> &Registry {
        self.locator.registry()
    }

    pub fn ram_bytes(&self, vm: usize) -> Option<u64> {
        self.locator.ram_bytes(vm)
    }

    pub fn placement_dropped(&self) -> u64 {
        self.locator.dropped
    }

    /// Allowed gate decisions dropped unmatched (over the approvals' cap).
    pub fn gate_approvals_dropped(&self) -> u64 {
        self.locator.approvals_dropped
    }

    pub fn window_start(&self, w: i64) -> PacketTime {
        PacketTime::window_start(w, self.window_len_us)
    }

    pub fn peak_ms(&self) -> f64 {
        self.rtt_rules.peak_ms
    }

    /// The end of the last window the MAC sent or received in.
    pub fn last_seen(&self, mac: Mac) -> Option<PacketTime> {
        let w = self.macs.get(&mac)?.last_window;
        (w != i64::MIN).then(|| PacketTime::window_end(w, self.window_len_us))
    }

    /// Whom an IDS alert's victim address names.
    pub fn victim(&self, ip: std::net::IpAddr) -> Option<Victim> {
        self.addresses.victim(ip, |m| self.vm_index(m))
    }

    /// Learned addresses dropped because their table was full.
    pub fn addresses_dropped(&self) -> u64 {
        self.addresses.dropped
    }

    /// Inventory VMs the wire (else the rules) places on hypervisor `h`.
    pub fn vms_on(&self, h: usize) -> Vec<usize> {
        (0..self.vms.len()).filter(|&i| self.place(i).and_then(|p| p.hv) == Some(h)).collect()
    }

    pub fn last_window_end(&self) -> Option<PacketTime> {
        self.last_window.map(|w| PacketTime::window_end(w, self.window_len_us))
    }
}

#[cfg(test)]
mod tests;
