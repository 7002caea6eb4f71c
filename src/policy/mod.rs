//! Policy: a level rise and the hypervisor's signature decide the action; migrate picks a destination.
//!
//! A VM is acted on once per rise of its level (LOW to MEDIUM, MEDIUM to
//! HIGH, LOW to HIGH), never per window and never on a fall. The signature
//! verdict is the one for the hypervisor the wire shows the VM behind (else
//! the rules'). `migrate` goes to a signed hypervisor other than the VM's
//! own, the one with the fewest VMs (placed by the rules, then moved by
//! migrations seen on the wire, and by migrations decided here while they
//! are in flight: a decided migration counts at its destination until the
//! wire shows the move, which then counts instead, or until it times out,
//! when it stops counting), ties broken by id; when
//! there is none it becomes an `alert` whose note says why. A destination
//! must have room: the RAM of the VMs placed there plus this one's within its
//! `ram_mb` (when set).
//!
//! Storm protection, in packet time: at most one action per VM per
//! `storm.vm_cooldown_s`, at most `storm.max_actions_per_minute` actions in
//! any minute, at most `storm.max_migrations_per_hypervisor` migrations in
//! flight leaving one hypervisor and `storm.max_migrations` in the cluster (in
//! flight until the wire shows the move, or `storm.migration_timeout_s`). An
//! action over a limit is held back: not sent, and reported as an
//! `action_held` event with the reason.

mod evacuate;

pub use evacuate::{EvacuationMode, Evacuee, PlanEntry};

use crate::decode::Mac;
use crate::detect::{Change, Level, Reason, VmState};
use crate::trust::Registry;
use crate::vocab::PacketTime;
use crate::vocab::{Action, ActionKind};
use crate::vocab::{HypervisorEntry, VmEntry};
use rustc_hash::FxHashMap;
use std::collections::VecDeque;

/// What the policy reads: the `[policy]` table, the storm limits and the inventory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    pub table: PolicyTable,
    pub storm: StormRules,
    pub hypervisors: Vec<HypervisorEntry>,
    pub vms: Vec<VmEntry>,
}

/// What each level does, by whether the VM's hypervisor is signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyRule {
    pub signed: ActionKind,
    pub unsigned: ActionKind,
}

/// The `[policy]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyTable {
    pub medium: PolicyRule,
    pub high: PolicyRule,
}

impl PolicyTable {
    pub fn rule(&self, level: Level) -> Option<PolicyRule> {
        match level {
            Level::Low => None,
            Level::Medium => Some(self.medium),
            Level::High => Some(self.high),
        }
    }
}

impl Default for PolicyTable {
    fn default() -> Self {
        PolicyTable {
            medium: PolicyRule { signed: ActionKind::Alert, unsigned: ActionKind::Quarantine },
            high: PolicyRule { signed: ActionKind::Migrate, unsigned: ActionKind::Quarantine },
        }
    }
}

/// Storm protection (0 turns a limit off).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StormRules {
    pub vm_cooldown_s: u64,
    pub max_actions_per_minute: u32,
    pub max_migrations_per_hypervisor: u32,
    pub max_migrations: u32,
    pub migration_timeout_s: u64,
}

impl Default for StormRules {
    /// Every limit off; a migration not seen on the wire after 600 s no longer counts as in flight.
    fn default() -> Self {
        StormRules {
            vm_cooldown_s: 0,
            max_actions_per_minute: 0,
            max_migrations_per_hypervisor: 0,
            max_migrations: 0,
            migration_timeout_s: 600,
        }
    }
}

/// Moving-target defense.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MtdRules {
    pub mode: EvacuationMode,
    /// Evacuate a hypervisor when this many of its VMs are HIGH at once (0: off).
    pub host_high_vms: u32,
}

/// An action the storm limits held back.
#[derive(Clone, Debug, PartialEq)]
pub struct Held {
    pub ts: PacketTime,
    pub vm: Mac,
    pub vm_name: Option<String>,
    pub kind: ActionKind,
    pub level: Level,
    pub reason: Reason,
    /// `vm_cooldown`, `rate_limit`, `hypervisor_migrations` or `cluster_migrations`.
    pub because: &'static str,
}

/// What the policy decided for a level change.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Act(Action),
    Held(Held),
}

/// A migration decided here and not yet seen on the wire: it counts at `to`
/// (and not at `from`) until then, or until it times out.
#[derive(Clone, Debug)]
struct InFlight {
    vm: Mac,
    from: Option<usize>,
    to: usize,
    ram_mb: u64,
    at: i64,
}

pub struct Policy {
    table: PolicyTable,
    registry: Registry,
    hypervisor_ids: Vec<String>,
    /// VMs placed on each hypervisor, and their RAM in MiB.
    placed: Vec<u64>,
    placed_ram: Vec<u64>,
    capacity: Vec<Option<u64>>,
    storm: StormRules,
    last_action: FxHashMap<Mac, i64>,
    recent: VecDeque<i64>,
    in_flight: Vec<InFlight>,
    seq: u64,
}

impl Policy {
    pub fn new(cfg: impl Into<Config>, registry: Registry) -> Policy {
        let cfg = cfg.into();
        Self::placed_as(&cfg, registry, cfg.vms.iter().map(|v| (v.hypervisor, v.ram_mb.unwrap_or(0))))
    }

    /// A policy with VMs placed as given: (hypervisor index, RAM in MiB) per VM.
    fn placed_as(rules: &Config, registry: Registry, vms: impl Iterator<Item = (Option<usize>, u64)>) -> Policy {
        let mut placed = vec![0u64; rules.hypervisors.len()];
        let mut placed_ram = vec![0u64; rules.hypervisors.len()];
        for (h, ram) in vms {
            if let Some(h) = h.filter(|&h| h < placed.len()) {
                placed[h] += 1;
                placed_ram[h] += ram;
            }
        }
        Policy {
            table: rules.table.clone(),
            registry,
            hypervisor_ids: rules.hypervisors.iter().map(|h| h.id.clone()).collect(),
            placed,
            placed_ram,
            capacity: rules.hypervisors.iter().map(|h| h.ram_mb).collect(),
            storm: rules.storm.clone(),
            last_action: FxHashMap::default(),
            recent: VecDeque::new(),
            in_flight: Vec::new(),
            seq: 0,
        }
    }

    /// New rules (the table, the storm limits, the hypervisors) without
    /// forgetting what the storm limits count: each VM's last action (its
    /// cooldown), the actions of the last minute, the migrations in flight
    /// (carried by hypervisor id; one whose destination left the rules no
    /// longer counts), and the sequence of action ids. `placed` is where each
    /// VM is now (indices into the new rules) and its RAM in MiB.
    pub fn reload(
        &mut self,
        cfg: impl Into<Config>,
        registry: Registry,
        placed: impl Iterator<Item = (Option<usize>, u64)>,
    ) {
        let mut new = Policy::placed_as(&cfg.into(), registry, placed);
        let index = |old: usize| self.hypervisor_ids.get(old).and_then(|id| new.registry.index_of(id));
        let carried: Vec<InFlight> = self
            .in_flight
            .iter()
            .filter_map(|m| Some(InFlight { to: index(m.to)?, from: m.from.and_then(index), ..m.clone() }))
            .collect();
        for m in carried {
            new.start_migration(m.vm, m.from, m.to, m.ram_mb, m.at);
        }
        new.last_action = std::mem::take(&mut self.last_action);
        new.recent = std::mem::take(&mut self.recent);
        new.seq = self.seq;
        *self = new;
    }

    /// How long a migration counts as in flight, in µs.
    pub fn migration_timeout_us(&self) -> i64 {
        self.storm.migration_timeout_s as i64 * 1_000_000
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts one VM of `ram_mb` away from `from` and at `to` (either may be
    /// unregistered).
    fn shift(&mut self, from: Option<usize>, to: Option<usize>, ram_mb: u64) {
        if let Some(f) = from.filter(|&f| f < self.placed.len()) {
            self.placed[f] = self.placed[f].saturating_sub(1);
            self.placed_ram[f] = self.placed_ram[f].saturating_sub(ram_mb);
        }
        if let Some(t) = to.filter(|&t| t < self.placed.len()) {
            self.placed[t] += 1;
            self.placed_ram[t] += ram_mb;
        }
    }

    /// A migration decided here: it counts at its destination while in flight.
    fn start_migration(&mut self, vm: Mac, from: Option<usize>, to: usize, ram_mb: u64, at: i64) {
        self.shift(from, Some(to), ram_mb);
        self.in_flight.push(InFlight { vm, from, to, ram_mb, at });
    }

    /// Stops counting the in-flight migrations that `gone` picks out.
    fn end_migrations(&mut self, gone: impl Fn(&InFlight) -> bool) {
        let (ended, kept): (Vec<InFlight>, Vec<InFlight>) =
            std::mem::take(&mut self.in_flight).into_iter().partition(gone);
        self.in_flight = kept;
        for m in ended {
            self.shift(Some(m.to), m.from, m.ram_mb);
        }
    }

    /// Migrations decided at least `storm.migration_timeout_s` before `now`
    /// (µs) never showed on the wire: they no longer count.
    fn expire(&mut self, now: i64) {
        let timeout = self.migration_timeout_us();
        if self.in_flight.iter().any(|m| now - m.at >= timeout) {
            self.end_migrations(|m| now - m.at >= timeout);
        }
    }

    /// The wire showed the VM move from `from` to `to` (registry indices,
    /// `None` when unregistered or unknown): its migration decided here, if
    /// any, is no longer in flight, and the VM counts where it went.
    pub fn moved(&mut self, vm: Mac, from: Option<usize>, to: Option<usize>, ram_mb: u64) {
        self.end_migrations(|m| m.vm == vm);
        self.shift(from, to, ram_mb);
    }

    /// Which storm limit, if any, holds this action back at `now` (µs).
    fn storm_limit(&mut self, vm: Mac, kind: ActionKind, from: Option<usize>, now: i64) -> Option<&'static str> {
        self.expire(now);
        let s = &self.storm;
        while self.recent.front().is_some_and(|&t| now - t >= 60_000_000) {
            self.recent.pop_front();
        }
        if s.vm_cooldown_s > 0
            && self.last_action.get(&vm).is_some_and(|&t| now - t < s.vm_cooldown_s as i64 * 1_000_000)
        {
            return Some("vm_cooldown");
        }
        if s.max_actions_per_minute > 0 && self.recent.len() >= s.max_actions_per_minute as usize {
            return Some("rate_limit");
        }
        if kind == ActionKind::Migrate {
            if s.max_migrations > 0 && self.in_flight.len() >= s.max_migrations as usize {
                return Some("cluster_migrations");
            }
            let leaving = self.in_flight.iter().filter(|m| m.from.is_some() && m.from == from).count();
            if s.max_migrations_per_hypervisor > 0
                && from.is_some()
                && leaving >= s.max_migrations_per_hypervisor as usize
            {
                return Some("hypervisor_migrations");
            }
        }
        None
    }

    /// The action for a level change, if it is a rise. `signed` is the
    /// verdict on the VM's hypervisor, `current` that hypervisor's registry
    /// index (if registered), `hypervisor` its name, `ram_mb` the VM's RAM.
    #[allow(clippy::too_many_arguments)]
    pub fn decide(
        &mut self,
        change: &Change,
        vm: &VmState,
        signed: bool,
        current: Option<usize>,
        hypervisor: Option<String>,
        ram_mb: u64,
    ) -> Option<Decision> {
        if change.to <= change.from {
            return None;
        }
        let rule = self.table.rule(change.to)?;
        let mut kind = if signed { rule.signed } else { rule.unsigned };
        let now = change.window_end.as_micros();
        self.expire(now);
        if let Some(because) = self.storm_limit(vm.mac, kind, current, now) {
            return Some(Decision::Held(Held {
                ts: change.window_end,
                vm: vm.mac,
                vm_name: Some(vm.name.clone()),
                kind,
                level: change.to,
                reason: change.reason,
                because,
            }));
        }
        let mut destination = None;
        let mut note = None;
        if kind == ActionKind::Migrate {
            match self.destination(current, ram_mb) {
                Ok(d) => {
                    self.start_migration(vm.mac, current, d, ram_mb, now);
                    destination = Some(self.hypervisor_ids[d].clone());
                }
                Err(why) => {
                    kind = ActionKind::Alert;
                    note = Some(why.into());
                }
            }
        }
        self.last_action.insert(vm.mac, now);
        self.recent.push_back(now);
        self.seq += 1;
        Some(Decision::Act(Action {
            id: format!("{}-{}", change.window_end.as_micros(), self.seq),
            ts: change.window_end,
            kind,
            vm: vm.mac,
            vm_name: Some(vm.name.clone()),
            hypervisor,
            signed,
            destination,
            level: change.to,
            reason: change.reason,
            note,
        }))
    }

    fn destination(&self, current: Option<usize>, ram_mb: u64) -> Result<usize, &'static str> {
        let signed: Vec<usize> = (0..self.hypervisor_ids.len())
            .filter(|&h| Some(h) != current)
            .filter(|&h| self.registry.get(h).is_some_and(|e| e.verdict().is_signed()))
            .collect();
        if signed.is_empty() {
            return Err("migrate wanted, but no signed hypervisor other than the VM's own is registered");
        }
        signed
            .into_iter()
            .filter(|&h| self.capacity[h].is_none_or(|cap| self.placed_ram[h] + ram_mb <= cap))
            .min_by(|&a, &b| {
                self.placed[a].cmp(&self.placed[b]).then_with(|| self.hypervisor_ids[a].cmp(&self.hypervisor_ids[b]))
            })
            .ok_or("migrate wanted, but no other signed hypervisor has room for its RAM")
    }
}

#[cfg(test)]
mod tests;
