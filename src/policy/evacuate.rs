//! Evacuation: every VM off a victim hypervisor (or just the attacked VM), spread over the signed hypervisors in proportion to their free RAM, within the storm limits.
//!
//! The first paper's controller moved every VM off the node its IDS alerted
//! on, to a destination it does not say how it picked (it had two nodes).
//! Here the VMs go largest first; each goes to the signed hypervisor other
//! than the victim whose share of this plan would be smallest relative to
//! its free RAM: (RAM this plan already sent there + the VM's) / (its
//! `ram_mb` less the RAM of the VMs placed there before the plan). So a
//! hypervisor with twice the free RAM takes about twice the RAM, instead of
//! every VM going to the emptiest one. A hypervisor without `ram_mb` counts
//! as unlimited (share 0; such ones take VMs in turn). Ties go to fewer VMs
//! from this plan, then more free RAM, then id. A hypervisor that is
//! unsigned, the victim, or without room for the VM is never picked. A VM
//! whose migration is already in flight is left out; one over a storm limit
//! is held back, as for any action.
use super::{Decision, Held, Policy};
use crate::decode::Mac;
use crate::detect::{Level, Reason};
use crate::vocab::PacketTime;
use crate::vocab::{Action, ActionKind};
use serde::{Deserialize, Serialize};

/// What an IDS alert about a VM moves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EvacuationMode {
    /// Every VM on the victim's hypervisor (the paper's loop).
    #[default]
    Host,
    /// Only the attacked VM; an alert about a hypervisor's own address still
    /// evacuates the host.
    Vm,
}

/// A VM to move off the victim.
#[derive(Clone, Debug)]
pub struct Evacuee {
    pub vm: Mac,
    pub name: String,
    pub ram_mb: u64,
    pub level: Level,
}

/// One line of an evacuation plan.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanEntry {
    pub vm: Mac,
    pub vm_name: String,
    pub ram_mb: u64,
    /// The action or the hold; `None` when the VM was left out (`skipped`).
    pub decision: Option<Decision>,
    pub skipped: Option<&'static str>,
}

impl Policy {
    /// Plans moving `vms` off hypervisor `from` (registry index) at `now`.
    /// `note` says why, in every action. With `id_base`, each action's id is
    /// `{id_base}-{VM MAC as hex}` (the same trigger gives the same ids), else
    /// the decision's time and a sequence number.
    pub fn evacuate(
        &mut self,
        now: PacketTime,
        from: usize,
        vms: &[Evacuee],
        reason: Reason,
        note: &str,
        id_base: Option<&str>,
    ) -> Vec<PlanEntry> {
        let from_name = self.hypervisor_ids.get(from).cloned();
        let signed = self.registry.get(from).is_some_and(|e| e.verdict().is_signed());
        let mut order: Vec<&Evacuee> = vms.iter().collect();
        order.sort_by(|a, b| b.ram_mb.cmp(&a.ram_mb).then_with(|| a.name.cmp(&b.name)));
        let t = now.as_micros();
        self.expire(t);
        let free0: Vec<Option<u64>> = (0..self.hypervisor_ids.len())
            .map(|h| self.capacity[h].map(|c| c.saturating_sub(self.placed_ram[h])))
            .collect();
        let mut sent = vec![(0u64, 0u32); self.hypervisor_ids.len()];
        let mut plan = Vec::with_capacity(order.len());
        for v in order {
            let mut entry =
                PlanEntry { vm: v.vm, vm_name: v.name.clone(), ram_mb: v.ram_mb, decision: None, skipped: None };
            if self.in_flight.iter().any(|m| m.vm == v.vm) {
                entry.skipped = Some("already_moving");
                plan.push(entry);
                continue;
            }
            if let Some(because) = self.storm_limit(v.vm, ActionKind::Migrate, Some(from), t) {
                entry.decision = Some(Decision::Held(Held {
                    ts: now,
                    vm: v.vm,
                    vm_name: Some(v.name.clone()),
                    kind: ActionKind::Migrate,
                    level: v.level,
                    reason,
                    because,
                }));
                plan.push(entry);
                continue;
            }
            let (kind, destination, why) = match self.spread(from, v.ram_mb, &free0, &sent) {
                Ok(d) => {
                    sent[d].0 += v.ram_mb;
                    sent[d].1 += 1;
                    self.start_migration(v.vm, Some(from), d, v.ram_mb, t);
                    (ActionKind::Migrate, Some(self.hypervisor_ids[d].clone()), None)
                }
                Err(why) => (ActionKind::Alert, None, Some(why)),
            };
            self.last_action.insert(v.vm, t);
            self.recent.push_back(t);
            self.seq += 1;
            entry.decision = Some(Decision::Act(Action {
                id: match id_base {
                    Some(b) => format!("{b}-{}", hex::encode(v.vm.0)),
                    None => format!("{}-{}", t, self.seq),
                },
                ts: now,
                kind,
                vm: v.vm,
                vm_name: Some(v.name.clone()),
                hypervisor: from_name.clone(),
                signed,
                destination,
                level: v.level,
                reason,
                note: Some(match why {
                    Some(w) => format!("{note}; {w}"),
                    None => note.to_string(),
                }),
            }));
            plan.push(entry);
        }
        plan
    }

    /// The destination for a VM of `ram_mb`: see the module's rule.
    /// `free0` is each hypervisor's free RAM before the plan, `sent` the RAM
    /// and VMs the plan sent to each so far.
    fn spread(
        &self,
        from: usize,
        ram_mb: u64,
        free0: &[Option<u64>],
        sent: &[(u64, u32)],
    ) -> Result<usize, &'static str> {
        let candidates: Vec<usize> = (0..self.hypervisor_ids.len())
            .filter(|&h| h != from && self.registry.get(h).is_some_and(|e| e.verdict().is_signed()))
            .collect();
        if candidates.is_empty() {
            return Err("no signed hypervisor other than the victim is registered");
        }
        // The share as a fraction (numerator, denominator); unlimited: 0/1.
        let share = |h: usize| match free0[h] {
            Some(f) => (u128::from(sent[h].0 + ram_mb), u128::from(f.max(1))),
            None => (0, 1),
        };
        let room = |h: usize| self.capacity[h].is_none_or(|cap| self.placed_ram[h] + ram_mb <= cap);
        candidates
            .into_iter()
            .filter(|&h| room(h))
            .min_by(|&a, &b| {
                let ((an, ad), (bn, bd)) = (share(a), share(b));
                (an * bd)
                    .cmp(&(bn * ad))
                    .then_with(|| sent[a].1.cmp(&sent[b].1))
                    .then_with(|| free0[b].unwrap_or(u64::MAX).cmp(&free0[a].unwrap_or(u64::MAX)))
                    .then_with(|| self.hypervisor_ids[a].cmp(&self.hypervisor_ids[b]))
            })
            .ok_or("no other signed hypervisor has room for its RAM")
    }
}
