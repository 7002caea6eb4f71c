//! Action kinds: what the policy may decide for a VM.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    /// Tell an operator; change nothing.
    Alert,
    /// Isolate the VM (suspend, pause or destroy, by backend).
    Quarantine,
    /// Live-migrate the VM to `destination`.
    Migrate,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Alert => "alert",
            ActionKind::Quarantine => "quarantine",
            ActionKind::Migrate => "migrate",
        }
    }
}
