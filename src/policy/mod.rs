//! Policy: a level rise and the hypervisor's signature decide the action; migrate picks a destination.
//!
//! A VM is acted on once per rise of its level (LOW to MEDIUM, MEDIUM to
//! HIGH, LOW to HIGH), never per window and never on a fall. The signature
//! verdict is the one for the hypervisor the wire shows the VM behind (else
//! the rules'). `migrate` goes to a signed hypervisor other than the VM's
//! own, the one with the fewest VMs (placed by the rules, then moved by
//! migrations seen on the wire and decided here), ties broken by id; when
//! there is none it becomes an `alert` whose note says why.

use crate::action::{Action, ActionKind};
use crate::config::{PolicyTable, Rules};
use crate::detect::{Change, Level, VmState};
use crate::trust::Registry;

pub struct Policy {
    table: PolicyTable,
    registry: Registry,
    hypervisor_ids: Vec<String>,
    /// VMs placed on each hypervisor.
    placed: Vec<u64>,
    seq: u64,
}

impl Policy {
    pub fn new(rules: &Rules, registry: Registry) -> Policy {
        let mut placed = vec![0u64; rules.hypervisors.len()];
        for v in &rules.vms {
            if let Some(h) = v.hypervisor {
                placed[h] += 1;
            }
        }
        Policy {
            table: rules.policy.clone(),
            registry,
            hypervisor_ids: rules.hypervisors.iter().map(|h| h.id.clone()).collect(),
            placed,
            seq: 0,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A VM moved between registered hypervisors: count it where it is now.
    pub fn note_move(&mut self, from: usize, to: usize) {
        if from < self.placed.len() && to < self.placed.len() {
            self.placed[from] = self.placed[from].saturating_sub(1);
            self.placed[to] += 1;
        }
    }

    /// The action for a level change, if it is a rise. `signed` is the
    /// verdict on the VM's hypervisor, `current` that hypervisor's registry
    /// index (if registered), `hypervisor` its name.
    pub fn decide(
        &mut self,
        change: &Change,
        vm: &VmState,
        signed: bool,
        current: Option<usize>,
        hypervisor: Option<String>,
    ) -> Option<Action> {
        if change.to <= change.from {
            return None;
        }
        let rule = self.table.rule(change.to)?;
        let mut kind = if signed { rule.signed } else { rule.unsigned };
        let mut destination = None;
        let mut note = None;
        if kind == ActionKind::Migrate {
            match self.destination(current) {
                Some(d) => {
                    self.placed[d] += 1;
                    if let Some(h) = current {
                        self.placed[h] = self.placed[h].saturating_sub(1);
                    }
                    destination = Some(self.hypervisor_ids[d].clone());
                }
                None => {
                    kind = ActionKind::Alert;
                    note =
                        Some("migrate wanted, but no signed hypervisor other than the VM's own is registered".into());
                }
            }
        }
        self.seq += 1;
        Some(Action {
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
        })
    }

    fn destination(&self, current: Option<usize>) -> Option<usize> {
        (0..self.hypervisor_ids.len())
            .filter(|&h| Some(h) != current)
            .filter(|&h| self.registry.get(h).is_some_and(|e| e.verdict().is_signed()))
            .min_by(|&a, &b| {
                self.placed[a].cmp(&self.placed[b]).then_with(|| self.hypervisor_ids[a].cmp(&self.hypervisor_ids[b]))
            })
    }

    /// Levels have no action below MEDIUM.
    pub fn acts_on(level: Level) -> bool {
        level > Level::Low
    }
}
