//! Victims of IDS alerts: an address names a hypervisor (its `ips`) or a VM (its `ips`, or addresses it was seen using on the wire).
//!
//! The rules' addresses win over learned ones. A VM learns the source
//! address of every IP packet it sends and the sender address of its ARP
//! packets; when two VMs use one address, the latest window's user wins (a
//! VM spoofing another's address can thereby draw an alert's evacuation to
//! its own host; give `ips` in the rules where that matters). The learned
//! table is bounded; addresses past the cap are dropped and counted.

use crate::decode::Mac;
use crate::vocab::{HypervisorEntry, VmEntry};
use rustc_hash::FxHashMap;
use std::net::IpAddr;

/// Whom an alert's victim address names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Victim {
    /// A hypervisor's own address (registry index).
    Hypervisor(usize),
    /// A VM (inventory index), found in the rules or learned from the wire.
    Vm { vm: usize, learned: bool },
}

#[derive(Debug, Default)]
pub struct AddressBook {
    hypervisors: FxHashMap<IpAddr, usize>,
    vms: FxHashMap<IpAddr, Mac>,
    learned: FxHashMap<IpAddr, Mac>,
    cap: usize,
    /// Learned addresses dropped because the table was full.
    pub dropped: u64,
}

impl AddressBook {
    pub fn new(hypervisors: &[HypervisorEntry], vms: &[VmEntry]) -> AddressBook {
        let mut b = AddressBook { cap: (vms.len() * 8).max(4096), ..Default::default() };
        for (h, e) in hypervisors.iter().enumerate() {
            for ip in &e.ips {
                b.hypervisors.entry(*ip).or_insert(h);
            }
        }
        for v in vms {
            for ip in &v.ips {
                b.vms.insert(*ip, v.mac);
            }
        }
        b
    }

    /// Addresses VMs were seen using in a window (sorted, so the result does
    /// not depend on how frames were spread over shards).
    pub fn learn(&mut self, seen: &[(Mac, IpAddr)]) {
        for &(mac, ip) in seen {
            if self.hypervisors.contains_key(&ip) || self.vms.contains_key(&ip) {
                continue;
            }
            if self.learned.len() >= self.cap && !self.learned.contains_key(&ip) {
                self.dropped += 1;
                continue;
            }
            self.learned.insert(ip, mac);
        }
    }

    /// Whom `ip` names; `vm_index` maps a MAC to the inventory.
    pub fn victim(&self, ip: IpAddr, vm_index: impl Fn(Mac) -> Option<usize>) -> Option<Victim> {
        if let Some(&h) = self.hypervisors.get(&ip) {
            return Some(Victim::Hypervisor(h));
        }
        if let Some(vm) = self.vms.get(&ip).and_then(|&m| vm_index(m)) {
            return Some(Victim::Vm { vm, learned: false });
        }
        self.learned.get(&ip).and_then(|&m| vm_index(m)).map(|vm| Victim::Vm { vm, learned: true })
    }

    /// Keeps what the wire taught across a reload.
    pub fn carry_from(&mut self, old: &mut AddressBook) {
        let learned = std::mem::take(&mut old.learned);
        let seen: Vec<(Mac, IpAddr)> = learned.into_iter().map(|(ip, m)| (m, ip)).collect();
        self.learn(&seen);
        self.dropped += old.dropped;
    }
}
