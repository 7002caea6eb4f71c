//! The inventory the rules list: hypervisors and VMs, as every stage sees them.

use super::Mac;
use std::net::IpAddr;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HypervisorEntry {
    pub id: String,
    /// RAM available to VMs, for migration destinations.
    pub ram_mb: Option<u64>,
    pub macs: Vec<Mac>,
    pub ips: Vec<IpAddr>,
    /// Lowercase hex HMAC as written in the rules, if any.
    pub signature: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmEntry {
    pub name: String,
    pub mac: Mac,
    pub ram_mb: Option<u64>,
    /// Index into the inventory's hypervisors (`[[hypervisor]]`, in file order).
    pub hypervisor: Option<usize>,
    /// Its addresses, for IDS alerts (more are learned from the wire).
    pub ips: Vec<IpAddr>,
    pub flavor: Option<String>,
}
