//! Detect: grade each VM LOW / MEDIUM / HIGH from its window totals (rate, volume), with hysteresis.
//!
//! A VM has one level per reason (rate, volume); its level is the highest of
//! them. Each reason rises at once to the highest level its window crosses and
//! drops back one level only after `clear_windows` windows below that level.
//! Only VMs of the rules' inventory are graded; other MACs are measured and
//! reported, never acted on. The MAC table is bounded: when it outgrows
//! `limits.max_macs`, the unknown MACs seen longest ago are evicted (counted).

mod level;

pub use level::{Direction, Hysteresis, Level, Reason};

use crate::config::{Rules, Thresholds};
use crate::decode::Mac;
use crate::measure::Counters;
use crate::time::PacketTime;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;

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

/// Cumulative counters of one MAC.
#[derive(Clone, Debug, Default)]
pub struct MacState {
    pub totals: Counters,
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
    pub level: Level,
    rate: Hysteresis,
    volume: Hysteresis,
    /// tx bytes of the last `horizon_windows` windows, newest last.
    volume_ring: VecDeque<u64>,
    volume_sum: u64,
    volume_limit: Option<u64>,
    /// Rates of the latest window (tx, rx): (bps, pps).
    pub last_rates: [(u64, u64); 2],
}

pub struct Detector {
    thresholds: Thresholds,
    window_len_us: i64,
    horizon_windows: usize,
    max_macs: usize,
    macs: FxHashMap<Mac, MacState>,
    vms: Vec<VmState>,
    /// Inventory indices sorted by MAC: the order events come out in.
    vm_order: Vec<usize>,
    window_scratch: Vec<Counters>,
    pub evictions: u64,
    /// Windows from the first to the last closed, quiet ones included.
    pub windows: u64,
    last_window: Option<i64>,
}

impl Detector {
    pub fn new(rules: &Rules) -> Detector {
        let window_len_us = rules.window_len_us();
        let horizon_us = rules.volume.horizon_s as i64 * 1_000_000;
        let horizon_windows = ((horizon_us + window_len_us - 1) / window_len_us).max(1) as usize;
        let vms: Vec<VmState> = rules
            .vms
            .iter()
            .map(|v| VmState {
                mac: v.mac,
                name: v.name.clone(),
                hypervisor: v.hypervisor,
                level: Level::Low,
                rate: Hysteresis::default(),
                volume: Hysteresis::default(),
                volume_ring: VecDeque::with_capacity(horizon_windows + 1),
                volume_sum: 0,
                volume_limit: v.ram_mb.map(|mb| (rules.volume.factor * mb as f64 * 1024.0 * 1024.0) as u64),
                last_rates: [(0, 0); 2],
            })
            .collect();
        let mut vm_order: Vec<usize> = (0..vms.len()).collect();
        vm_order.sort_by_key(|&i| vms[i].mac);
        let mut macs = FxHashMap::default();
        for (i, v) in vms.iter().enumerate() {
            macs.insert(v.mac, MacState { totals: Counters::default(), last_window: i64::MIN, vm: Some(i) });
        }
        Detector {
            thresholds: rules.thresholds.clone(),
            window_len_us,
            horizon_windows,
            max_macs: rules.limits.max_macs.max(rules.vms.len()),
            window_scratch: vec![Counters::default(); vms.len()],
            macs,
            vms,
            vm_order,
            evictions: 0,
            windows: 0,
            last_window: None,
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

    /// Closes window `w` with its merged totals (sorted by MAC). Windows with
    /// no traffic between the previous one and `w` are closed first, as quiet
    /// windows, so hysteresis and the volume horizon see them.
    pub fn close_window(&mut self, w: i64, totals: &[(Mac, Counters)]) -> Vec<Change> {
        let mut changes = Vec::new();
        if let Some(last) = self.last_window {
            // After this many quiet windows every level is LOW and every
            // volume ring is empty, so longer gaps need not be walked.
            let enough = self.horizon_windows as i64 + 2 * i64::from(self.thresholds.clear_windows) + 1;
            let gap = (w - last - 1).max(0);
            for q in (last + 1)..(last + 1 + gap.min(enough)) {
                self.grade(q, &mut changes);
            }
            self.windows += gap as u64;
        }
        for c in self.window_scratch.iter_mut() {
            *c = Counters::default();
        }
        for (mac, c) in totals {
            let st = self.macs.entry(*mac).or_default();
            st.totals.add(c);
            st.last_window = w;
            if let Some(i) = st.vm {
                self.window_scratch[i] = *c;
            }
        }
        self.grade(w, &mut changes);
        self.windows += 1;
        self.last_window = Some(w);
        for c in self.window_scratch.iter_mut() {
            *c = Counters::default();
        }
        self.evict_if_full();
        changes
    }

    fn grade(&mut self, w: i64, changes: &mut Vec<Change>) {
        let start = PacketTime::from_micros(w * self.window_len_us);
        let end = PacketTime::from_micros((w + 1) * self.window_len_us);
        for k in 0..self.vm_order.len() {
            let i = self.vm_order[k];
            let c = self.window_scratch[i];
            let (tx_level, tx_bps, tx_pps) = self.rate_level(c.tx_bytes, c.tx_packets);
            let (rx_level, rx_bps, rx_pps) = self.rate_level(c.rx_bytes, c.rx_packets);
            let clear = self.thresholds.clear_windows;
            let horizon = self.horizon_windows;
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

            let after = vm.rate.level.max(vm.volume.level);
            if after == before {
                continue;
            }
            vm.level = after;
            // The reason is the component that moved the VM: on a rise the one
            // now at the new level, on a fall the one that fell (rate first).
            let by_volume = if after > before { vm.rate.level != after } else { !rate_changed && volume_changed };
            let change = if by_volume {
                Change {
                    vm: i,
                    from: before,
                    to: after,
                    reason: Reason::Volume,
                    direction: None,
                    bps: tx_bps,
                    pps: tx_pps,
                    horizon_bytes: Some(vm.volume_sum),
                    limit_bytes: vm.volume_limit,
                    window_start: start,
                    window_end: end,
                }
            } else {
                Change {
                    vm: i,
                    from: before,
                    to: after,
                    reason: Reason::Rate,
                    direction: Some(dir),
                    bps,
                    pps,
                    horizon_bytes: None,
                    limit_bytes: None,
                    window_start: start,
                    window_end: end,
                }
            };
            changes.push(change);
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

    pub fn last_window_end(&self) -> Option<PacketTime> {
        self.last_window.map(|w| PacketTime::from_micros((w + 1) * self.window_len_us))
    }
}

#[cfg(test)]
mod tests;
