//! Why the policy held an action back or left a VM out of a plan: the policy's words, written as they are into events.

use serde::{Deserialize, Serialize};

/// The storm limit that held an action back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum HoldReason {
    #[serde(rename = "vm_cooldown")]
    VmCooldown,
    #[serde(rename = "rate_limit")]
    RateLimit,
    #[serde(rename = "hypervisor_migrations")]
    HypervisorMigrations,
    #[serde(rename = "cluster_migrations")]
    ClusterMigrations,
}

impl HoldReason {
    pub const ALL: &'static [HoldReason] = &[
        HoldReason::VmCooldown,
        HoldReason::RateLimit,
        HoldReason::HypervisorMigrations,
        HoldReason::ClusterMigrations,
    ];

    /// The name events and metric labels use (serde's).
    pub fn as_str(self) -> &'static str {
        match self {
            HoldReason::VmCooldown => "vm_cooldown",
            HoldReason::RateLimit => "rate_limit",
            HoldReason::HypervisorMigrations => "hypervisor_migrations",
            HoldReason::ClusterMigrations => "cluster_migrations",
        }
    }
}

/// Why a VM was left out of an evacuation plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SkipReason {
    #[serde(rename = "already_moving")]
    AlreadyMoving,
}

impl SkipReason {
    pub const ALL: &'static [SkipReason] = &[SkipReason::AlreadyMoving];

    /// The name events use (serde's).
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::AlreadyMoving => "already_moving",
        }
    }
}
