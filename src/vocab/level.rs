//! Levels and reasons: how bad a VM looks, and why.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Level {
    #[default]
    #[serde(rename = "LOW")]
    Low,
    #[serde(rename = "MEDIUM")]
    Medium,
    #[serde(rename = "HIGH")]
    High,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Low => "LOW",
            Level::Medium => "MEDIUM",
            Level::High => "HIGH",
        }
    }

    /// One level down (LOW stays LOW).
    pub fn down(self) -> Level {
        match self {
            Level::High => Level::Medium,
            _ => Level::Low,
        }
    }

    /// 0, 1, 2: the value of the per-VM level gauge.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    Rate,
    Rtt,
    Volume,
    Migration,
    Signature,
    /// The VM runs behind two hypervisors at once.
    Clone,
    /// It moved without an allowed migration-gate decision (`migration.require_gate`).
    Ungated,
    /// An IDS alert about the VM or its hypervisor (evacuation).
    Ids,
    /// `mtd.host_high_vms` VMs on its hypervisor are HIGH (evacuation).
    #[serde(rename = "host_high")]
    HostHigh,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rate => "rate",
            Reason::Rtt => "rtt",
            Reason::Volume => "volume",
            Reason::Migration => "migration",
            Reason::Signature => "signature",
            Reason::Clone => "clone",
            Reason::Ungated => "ungated",
            Reason::Ids => "ids",
            Reason::HostHigh => "host_high",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_order_and_serialize_upper_case() {
        assert!(Level::Low < Level::Medium && Level::Medium < Level::High);
        assert_eq!(serde_json::to_string(&Level::Medium).unwrap(), "\"MEDIUM\"");
        let l: Level = serde_json::from_str("\"HIGH\"").unwrap();
        assert_eq!(l, Level::High);
        assert!(serde_json::from_str::<Level>("\"high\"").is_err());
    }
}
