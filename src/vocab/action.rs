//! Actions: what the policy decides for a VM and the dispatcher carries out.

use super::{Level, Mac, PacketTime, Reason};
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

/// One decided action. Its JSON form (what the webhook posts, the exec
/// backend writes on stdin, and the journal keeps) has `ts` in RFC 3339 and
/// `ts_us` in microseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// Unique: packet time of the decision and a run-wide sequence number.
    /// Backends use it as the idempotency key.
    pub id: String,
    #[serde(rename = "ts_us", with = "micros")]
    pub ts: PacketTime,
    #[serde(rename = "action")]
    pub kind: ActionKind,
    pub vm: Mac,
    pub vm_name: Option<String>,
    /// Registry id of the VM's hypervisor, if known.
    pub hypervisor: Option<String>,
    pub signed: bool,
    /// For `migrate`: the chosen hypervisor's id.
    pub destination: Option<String>,
    pub level: Level,
    pub reason: Reason,
    /// Why the action differs from the policy's (e.g. no destination to migrate to).
    pub note: Option<String>,
}

/// Packet time as microseconds in the action's JSON.
mod micros {
    use super::super::PacketTime;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(t: &PacketTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(t.as_micros())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PacketTime, D::Error> {
        Ok(PacketTime::from_micros(i64::deserialize(d)?))
    }
}
