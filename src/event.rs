//! Events: the JSON-lines record of what vmsentry saw and did, ordered by packet time.
//!
//! Every event has `type` and `ts` (RFC 3339 UTC with microseconds, from
//! packet time); VMs are named by `vm` (MAC) and `vm_name` (from the rules, or
//! null). The README's events reference documents each field.
//!
//! This module is the schema only: the types are written and read back
//! (`report`, tests) with serde, and a line with an unknown `type` or field
//! does not read, nor one without a field the writer always writes: an
//! `Option` written as null is read with `Option::deserialize`, which makes
//! it required (serde alone would read a missing one as `None`); only the
//! fields left out when empty (`skip_serializing_if`) may be missing. What turns pipeline state into events is in
//! `pipeline::events`.

use crate::action::{ActionKind, BackendName, Submitted};
use crate::decode::{DecodeErrorKind, Mac};
use crate::detect::{Direction, Level, Reason};
use crate::gate::record::GateReason;
use crate::ids::Format;
use crate::measure::placement::Via;
use crate::measure::rtt::SampleKind;
use crate::policy::EvacuationMode;
use crate::trust::token::Authorization;
use crate::trust::Verdict;
use crate::vocab::PacketTime;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    RttSample(RttSampleEvent),
    Migration(MigrationEvent),
    Conflict(ConflictEvent),
    RttPeaks(RttPeaksEvent),
    Level(LevelEvent),
    Action(ActionEvent),
    ActionHeld(ActionHeldEvent),
    IdsAlert(IdsAlertEvent),
    GateDenied(GateDeniedEvent),
    Evacuation(EvacuationEvent),
    VmWindow(VmWindowEvent),
    VmStats(VmStatsEvent),
    Summary(SummaryEvent),
    Sensor(SensorEvent),
}

impl Event {
    /// Every `type`, in declaration order (README's events reference lists these).
    pub const TYPES: [&'static str; 14] = [
        "rtt_sample",
        "migration",
        "conflict",
        "rtt_peaks",
        "level",
        "action",
        "action_held",
        "ids_alert",
        "gate_denied",
        "evacuation",
        "vm_window",
        "vm_stats",
        "summary",
        "sensor",
    ];

    /// The event's `type`.
    pub fn type_name(&self) -> &'static str {
        Self::TYPES[match self {
            Event::RttSample(_) => 0,
            Event::Migration(_) => 1,
            Event::Conflict(_) => 2,
            Event::RttPeaks(_) => 3,
            Event::Level(_) => 4,
            Event::Action(_) => 5,
            Event::ActionHeld(_) => 6,
            Event::IdsAlert(_) => 7,
            Event::GateDenied(_) => 8,
            Event::Evacuation(_) => 9,
            Event::VmWindow(_) => 10,
            Event::VmStats(_) => 11,
            Event::Summary(_) => 12,
            Event::Sensor(_) => 13,
        }]
    }

    /// Reads one JSON line.
    pub fn from_json(line: &str) -> Result<Event, serde_json::Error> {
        serde_json::from_str(line)
    }

    pub fn ts(&self) -> PacketTime {
        match self {
            Event::RttSample(e) => e.ts,
            Event::Migration(e) => e.ts,
            Event::Conflict(e) => e.ts,
            Event::RttPeaks(e) => e.ts,
            Event::Level(e) => e.ts,
            Event::Action(e) => e.ts,
            Event::ActionHeld(e) => e.ts,
            Event::IdsAlert(e) => e.ts,
            Event::GateDenied(e) => e.ts,
            Event::Evacuation(e) => e.ts,
            Event::VmWindow(e) => e.ts,
            Event::VmStats(e) => e.ts,
            Event::Summary(e) => e.ts,
            Event::Sensor(e) => e.ts,
        }
    }
}

/// `vmsentry control` only: a sensor went silent for `down_after_s` and no
/// longer holds windows back (`state: "down"`), or was heard again (`"up"`).
/// `ts` is the end of the newest window the controller had merged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorEvent {
    pub ts: PacketTime,
    pub sensor: String,
    pub state: SensorState,
    /// Wall-clock seconds it had been silent (down only).
    #[serde(deserialize_with = "Option::deserialize")]
    pub silent_s: Option<f64>,
    /// The newest window it had sent, by its start.
    #[serde(deserialize_with = "Option::deserialize")]
    pub last_window_start: Option<PacketTime>,
}

/// A sensor's state as the controller sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SensorState {
    Down,
    Up,
}

/// One RTT sample (only with `--rtt-samples`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RttSampleEvent {
    /// When the answering packet was seen.
    pub ts: PacketTime,
    /// Who answered.
    pub vm: Mac,
    #[serde(deserialize_with = "Option::deserialize")]
    pub vm_name: Option<String>,
    pub rtt_ms: f64,
    pub kind: SampleKind,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
}

/// A VM moved to another hypervisor (a live migration, as the wire shows it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationEvent {
    /// The first frame (or announce) from the new place.
    pub ts: PacketTime,
    pub vm: Mac,
    #[serde(deserialize_with = "Option::deserialize")]
    pub vm_name: Option<String>,
    #[serde(deserialize_with = "Option::deserialize")]
    pub from_hypervisor: Option<String>,
    /// Null when an announce was seen but nothing tells where.
    #[serde(deserialize_with = "Option::deserialize")]
    pub to_hypervisor: Option<String>,
    /// The outer source MAC and IP the VM now sends with (tunnels).
    #[serde(deserialize_with = "Option::deserialize")]
    pub to_mac: Option<Mac>,
    #[serde(deserialize_with = "Option::deserialize")]
    pub to_ip: Option<IpAddr>,
    /// How the move showed: `rarp`, `garp`, or `traffic`.
    pub via: Via,
    /// The destination's signature: `valid`, `invalid` or `unknown`.
    pub signature: Verdict,
    /// Whether a valid, unexpired, unused token allowed this move.
    pub authorized: bool,
    /// `granted`, `missing`, `expired`, `replayed` or `unavailable` (a
    /// controller that could not ask the shared store of used tokens).
    pub authorization: Authorization,
    /// Migration streams tied to the move, and what they carried.
    pub streams: u32,
    #[serde(deserialize_with = "Option::deserialize")]
    pub bytes: Option<u64>,
    #[serde(deserialize_with = "Option::deserialize")]
    pub bytes_per_ram: Option<f64>,
    /// From the first stream's start to the source's last migration data
    /// (to the move when none was seen).
    #[serde(deserialize_with = "Option::deserialize")]
    pub total_ms: Option<f64>,
    /// From the VM's last frame at the source to its first at the destination.
    #[serde(deserialize_with = "Option::deserialize")]
    pub downtime_ms: Option<f64>,
    /// The pause to resume lies within [`downtime_ms` - this, `downtime_ms`]
    /// (README: what the wire sees of a downtime).
    #[serde(deserialize_with = "Option::deserialize")]
    pub downtime_resolution_ms: Option<f64>,
    /// Time-to-responsiveness: from the move until the VM sends at 80 % of
    /// its rate before it again (README: migrations on the wire).
    #[serde(deserialize_with = "Option::deserialize")]
    pub responsive_ms: Option<f64>,
    /// From the VM's last frame at the source to the source's last migration
    /// data (QEMU's definition of downtime; null without a stream).
    #[serde(deserialize_with = "Option::deserialize")]
    pub source_downtime_ms: Option<f64>,
    /// The VM's RAM and flavor from the rules, for grouping migrations.
    #[serde(deserialize_with = "Option::deserialize")]
    pub ram_mb: Option<u64>,
    #[serde(deserialize_with = "Option::deserialize")]
    pub flavor: Option<String>,
    /// Whether an allowed migration-gate decision matched the move (only
    /// when `migration.gate_decisions` are followed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gated: Option<bool>,
}

/// The migration gate on a hypervisor refused a live migration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateDeniedEvent {
    /// The gate's own timestamp.
    pub ts: PacketTime,
    /// The first of the domain's MACs that is an inventory VM (else its first MAC).
    #[serde(deserialize_with = "Option::deserialize")]
    pub vm: Option<Mac>,
    #[serde(deserialize_with = "Option::deserialize")]
    pub vm_name: Option<String>,
    /// Every MAC of the domain.
    pub vms: Vec<Mac>,
    pub domain: String,
    /// The destination that refused (its registry id).
    pub hypervisor: String,
    /// The gate's reason (README: migration gate).
    pub reason: GateReason,
    #[serde(deserialize_with = "Option::deserialize")]
    pub detail: Option<String>,
    #[serde(deserialize_with = "Option::deserialize")]
    pub nonce: Option<String>,
}

/// An IDS alert that passed its input's filters, and whom it names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdsAlertEvent {
    /// Replay: the alert's own time; live: when vmsentry read it.
    pub ts: PacketTime,
    /// The alert file, as in the rules.
    pub input: String,
    pub format: Format,
    /// The IDS's own timestamp, as written.
    pub alert_ts: String,
    pub sid: u64,
    pub severity: u8,
    pub msg: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The victim address (`dst`, or `src` with `victim = "source"`).
    pub victim: IpAddr,
    /// Whom it names: a VM (and how it was known) and/or a hypervisor.
    #[serde(deserialize_with = "Option::deserialize")]
    pub victim_vm: Option<Mac>,
    #[serde(deserialize_with = "Option::deserialize")]
    pub victim_vm_name: Option<String>,
    /// `rules` or `learned` for a VM; null otherwise.
    #[serde(deserialize_with = "Option::deserialize")]
    pub victim_known_by: Option<KnownBy>,
    #[serde(deserialize_with = "Option::deserialize")]
    pub victim_hypervisor: Option<String>,
    /// `evacuated` (an `evacuation` event follows) or `unmapped` (the
    /// address names no hypervisor or VM, or the VM's hypervisor is unknown).
    pub outcome: AlertOutcome,
}

/// A plan to move VMs off a hypervisor, and what became of each VM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvacuationEvent {
    pub ts: PacketTime,
    pub hypervisor: String,
    /// `ids` (an alert) or `host_high` (`mtd.host_high_vms` HIGH VMs on it).
    pub trigger: Trigger,
    /// `host` (every VM on it) or `vm` (only the attacked one).
    pub mode: EvacuationMode,
    /// For `ids`: the alert's sid and victim address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sid: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub victim: Option<IpAddr>,
    /// For `host_high`: the HIGH VMs counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub high_vms: Option<u32>,
    pub plan: Vec<PlanLine>,
    /// Counts over the plan.
    pub migrate: u32,
    pub held: u32,
    pub skipped: u32,
    /// Actions that became an alert (no destination with room).
    pub no_destination: u32,
}

/// One VM of an evacuation plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanLine {
    pub vm: Mac,
    pub vm_name: String,
    pub ram_mb: u64,
    /// `migrate`, `alert` (no destination), `held` or `skipped`.
    pub outcome: PlanOutcome,
    #[serde(deserialize_with = "Option::deserialize")]
    pub destination: Option<String>,
    /// The action's id (`migrate`, `alert`).
    #[serde(deserialize_with = "Option::deserialize")]
    pub action_id: Option<String>,
    /// For `held`: the storm limit; for `skipped`: `already_moving`.
    #[serde(deserialize_with = "Option::deserialize")]
    pub because: Option<PlanBecause>,
}

/// One VM's rates and RTT in one window (only with `--vm-windows`): what the
/// report draws levels against.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmWindowEvent {
    /// The window's end.
    pub ts: PacketTime,
    pub vm: Mac,
    #[serde(deserialize_with = "Option::deserialize")]
    pub vm_name: Option<String>,
    pub level: Level,
    pub tx_bps: u64,
    pub tx_pps: u64,
    pub rx_bps: u64,
    pub rx_pps: u64,
    pub rtt_samples: u64,
    #[serde(deserialize_with = "Option::deserialize")]
    pub rtt_p50_ms: Option<f64>,
    #[serde(deserialize_with = "Option::deserialize")]
    pub rtt_max_ms: Option<f64>,
    pub rtt_peaks: u32,
    #[serde(deserialize_with = "Option::deserialize")]
    pub rtt_baseline_ms: Option<f64>,
}

/// The wire contradicts the registry or the inventory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConflictEvent {
    pub ts: PacketTime,
    /// `clone`, `hypervisor_ips` or `vm_uses_hypervisor_mac`.
    pub kind: ConflictKind,
    #[serde(deserialize_with = "Option::deserialize")]
    pub vm: Option<Mac>,
    #[serde(deserialize_with = "Option::deserialize")]
    pub vm_name: Option<String>,
    /// For `clone`: the hypervisors it runs behind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hypervisors: Vec<Option<String>>,
    /// For the MAC conflicts: the MAC and the IPs it was seen with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
}

/// A VM showed more RTT peaks in one window than `rtt.max_peaks`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RttPeaksEvent {
    pub ts: PacketTime,
    pub vm: Mac,
    #[serde(deserialize_with = "Option::deserialize")]
    pub vm_name: Option<String>,
    pub window_start: PacketTime,
    pub peaks: u32,
    pub samples: u64,
    #[serde(deserialize_with = "Option::deserialize")]
    pub min_ms: Option<f64>,
    #[serde(deserialize_with = "Option::deserialize")]
    pub mean_ms: Option<f64>,
    #[serde(deserialize_with = "Option::deserialize")]
    pub max_ms: Option<f64>,
    #[serde(deserialize_with = "Option::deserialize")]
    pub p50_ms: Option<f64>,
    #[serde(deserialize_with = "Option::deserialize")]
    pub p99_ms: Option<f64>,
    /// `rtt.peak_ms`.
    pub peak_ms: f64,
    /// The VM's baseline at the end of the window (null before any non-peak sample).
    #[serde(deserialize_with = "Option::deserialize")]
    pub baseline_ms: Option<f64>,
    #[serde(deserialize_with = "Option::deserialize")]
    pub hypervisor: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelEvent {
    pub ts: PacketTime,
    pub vm: Mac,
    #[serde(deserialize_with = "Option::deserialize")]
    pub vm_name: Option<String>,
    pub from: Level,
    pub to: Level,
    pub reason: Reason,
    /// The direction that set the level, for `rate`; null otherwise.
    #[serde(deserialize_with = "Option::deserialize")]
    pub direction: Option<Direction>,
    /// Rates of the window that decided (of `direction`, or tx for other reasons).
    pub bps: u64,
    pub pps: u64,
    /// For `volume`: bytes sent within the horizon, and the limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub horizon_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_bytes: Option<u64>,
    /// Start of the window that decided.
    pub window_start: PacketTime,
    #[serde(deserialize_with = "Option::deserialize")]
    pub hypervisor: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionEvent {
    pub ts: PacketTime,
    pub id: String,
    pub vm: Mac,
    #[serde(deserialize_with = "Option::deserialize")]
    pub vm_name: Option<String>,
    pub action: ActionKind,
    #[serde(deserialize_with = "Option::deserialize")]
    pub hypervisor: Option<String>,
    /// `signed` / `unsigned`: the verdict the policy used.
    pub signature: ActionSignature,
    #[serde(deserialize_with = "Option::deserialize")]
    pub destination: Option<String>,
    pub level: Level,
    pub reason: Reason,
    /// Why the action differs from what the policy says (e.g. no migrate destination).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub backend: BackendName,
    /// `queued` (handed to the dispatcher), `dropped` (its queue was full),
    /// `duplicate` (journaled already) or `not_journaled`.
    pub outcome: Submitted,
}

/// An action the storm limits held back (not sent).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionHeldEvent {
    pub ts: PacketTime,
    pub vm: Mac,
    #[serde(deserialize_with = "Option::deserialize")]
    pub vm_name: Option<String>,
    pub action: ActionKind,
    pub level: Level,
    pub reason: Reason,
    /// `vm_cooldown`, `rate_limit`, `hypervisor_migrations` or `cluster_migrations`.
    pub held_because: HoldReason,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStatsEvent {
    pub ts: PacketTime,
    pub vm: Mac,
    #[serde(deserialize_with = "Option::deserialize")]
    pub vm_name: Option<String>,
    pub known: bool,
    pub level: Level,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rtt_samples: u64,
    #[serde(deserialize_with = "Option::deserialize")]
    pub rtt_min_ms: Option<f64>,
    #[serde(deserialize_with = "Option::deserialize")]
    pub rtt_max_ms: Option<f64>,
    #[serde(deserialize_with = "Option::deserialize")]
    pub rtt_mean_ms: Option<f64>,
    /// From the fixed-bucket histogram (error at most one bucket's width).
    #[serde(deserialize_with = "Option::deserialize")]
    pub rtt_p50_ms: Option<f64>,
    #[serde(deserialize_with = "Option::deserialize")]
    pub rtt_p99_ms: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryEvent {
    pub ts: PacketTime,
    pub packets: u64,
    pub bytes: u64,
    pub decode_errors: u64,
    /// By kind, in the kinds' name order.
    #[serde(serialize_with = "by_name")]
    pub decode_errors_by_kind: BTreeMap<DecodeErrorKind, u64>,
    /// Frames cut by the snaplen inside a header (normal, not errors).
    pub snaplen_cut: u64,
    /// `vm_stats` lines written: unicast MACs seen at the VM layer.
    pub vms: u64,
    /// Of those, VMs of the rules' inventory.
    pub known_vms: u64,
    /// MACs evicted from the bounded MAC table (their stats are lost).
    pub mac_evictions: u64,
    /// Packet time from the earliest to the latest measured frame (never negative).
    pub duration_s: f64,
    pub windows: u64,
    /// Frames that came after time went backwards, up to the newest time
    /// seen before the jump: counted, not measured.
    pub late_frames: u64,
    /// Frames vmsentry dropped because a shard's queue was full (live only;
    /// libpcap's own drops are in the metrics).
    pub queue_dropped: u64,
    /// Input files whose end was damaged (read up to the damage).
    pub damaged_files: u64,
    /// Input files with frames of a link type vmsentry does not decode
    /// (each warned about on stderr; the frames are `unsupported_link` errors).
    pub unsupported_link_files: u64,
    /// Placement evidence (sightings, streams) over its per-window caps.
    pub placement_dropped: u64,
    /// Allowed gate decisions dropped unmatched because too many were waiting.
    pub gate_approvals_dropped: u64,
    /// `migration` events written before their move was settled, because
    /// more than `limits.held_events` events were waiting behind them
    /// (what was not known yet is null in them). Left out when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub migrations_written_open: u64,
    pub rtt: RttSummary,
    /// IDS alert lines by outcome, and evacuations made.
    pub ids: IdsCounts,
    pub actions: ActionCounts,
    /// Wall-clock time of the replay and what it gives per second; these
    /// vary run to run, everything else is fixed by the input.
    pub wall_s: f64,
    /// Until the input was read through (the rest is the final window and
    /// the actions' delivery).
    pub read_s: f64,
    pub processing_pps: f64,
    #[serde(deserialize_with = "Option::deserialize")]
    pub peak_rss_bytes: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RttSummary {
    /// Samples taken (all MACs).
    pub samples: u64,
    /// Samples over `limits.rtt_samples_per_window` in a shard's window.
    pub dropped: u64,
    /// Flows evicted from a full flow table.
    pub flow_evictions: u64,
    /// Probes dropped because a flow direction's ring or the echo table was full.
    pub probe_evictions: u64,
    /// Probes never answered within `rtt.probe_timeout_ms`.
    pub probe_timeouts: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionCounts {
    pub queued: u64,
    pub dropped: u64,
    /// Held back by the storm limits.
    pub held: u64,
    pub delivered: u64,
    pub failed: u64,
    pub retries: u64,
    /// Left unfinished at exit (in the journal).
    pub pending: u64,
    /// Resumed from the journal at start.
    pub resumed: u64,
}

/// What became of the alert lines, run-wide.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdsCounts {
    pub evacuated: u64,
    pub unmapped: u64,
    pub filtered: u64,
    pub malformed: u64,
    pub outside_replay: u64,
    pub evacuations: u64,
}

/// The kinds in their names' order (the JSON as it was with string keys).
fn by_name<S: serde::Serializer>(m: &BTreeMap<DecodeErrorKind, u64>, s: S) -> Result<S::Ok, S::Error> {
    let named: BTreeMap<&'static str, u64> = m.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    named.serialize(s)
}

/// Vocabulary of the events' own: one name table per enum, which serde
/// writes and reads and `as_str` gives (for metric labels).
macro_rules! names {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal,)+ }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name { $($(#[$vm])* #[serde(rename = $s)] $v,)+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$v,)+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s,)+ }
            }
        }
    };
}

names! {
    /// How an IDS alert's victim VM was known.
    KnownBy { Rules = "rules", Learned = "learned", }
}
names! {
    /// What an `ids_alert` led to.
    AlertOutcome {
        /// An `evacuation` event follows.
        Evacuated = "evacuated",
        /// The address names no hypervisor or VM, or the VM's hypervisor is unknown.
        Unmapped = "unmapped",
    }
}
names! {
    /// What started an evacuation.
    Trigger {
        /// An IDS alert.
        Ids = "ids",
        /// `mtd.host_high_vms` HIGH VMs on the hypervisor.
        HostHigh = "host_high",
    }
}
names! {
    /// What became of one VM of an evacuation plan.
    PlanOutcome {
        Migrate = "migrate",
        /// No destination with room: an alert instead.
        Alert = "alert",
        Held = "held",
        Skipped = "skipped",
    }
}
/// The policy's words for a hold and a skip (`vocab`, where the policy names them).
pub use crate::vocab::{HoldReason, SkipReason};
names! {
    /// What contradicts the registry or the inventory.
    ConflictKind {
        /// A VM seen behind two places at once.
        Clone = "clone",
        HypervisorIps = "hypervisor_ips",
        VmUsesHypervisorMac = "vm_uses_hypervisor_mac",
    }
}
names! {
    /// The signature verdict an action was decided with.
    ActionSignature { Signed = "signed", Unsigned = "unsigned", }
}

/// A plan line's `because`: the storm limit (`held`) or why it was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PlanBecause {
    Held(HoldReason),
    Skipped(SkipReason),
}

/// Where events go: a JSON-lines writer, or a `Vec` for tests and embedding.
pub trait EventSink: Send {
    fn emit(&mut self, event: &Event) -> std::io::Result<()>;
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One JSON object per line.
pub struct JsonLines<W: Write + Send>(pub W);

impl<W: Write + Send> EventSink for JsonLines<W> {
    fn emit(&mut self, event: &Event) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.0, event)?;
        self.0.write_all(b"\n")
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl EventSink for Vec<Event> {
    fn emit(&mut self, event: &Event) -> std::io::Result<()> {
        self.push(event.clone());
        Ok(())
    }
}

/// Peak resident memory of this process, from `/proc/self/status` (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Whether a counter left out when zero is zero (serde's `skip_serializing_if`).
fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    //! The schema read back: what reads, and what does not.
    use super::*;

    const LEVEL: &str = r#"{"type":"level","ts":"2023-11-15T22:13:29.000000Z","vm":"fa:16:3e:00:00:01","vm_name":"a","from":"LOW","to":"MEDIUM","reason":"rate","direction":"rx","bps":32007840,"pps":4010,"window_start":"2023-11-15T22:13:28.000000Z","hypervisor":null}"#;

    #[test]
    fn a_line_reads_back_as_the_same_event_and_bytes() {
        let e = Event::from_json(LEVEL).unwrap();
        assert_eq!(e.type_name(), "level");
        let Event::Level(l) = &e else { panic!("{e:?}") };
        assert_eq!(
            (l.from, l.to, l.reason, l.direction),
            (Level::Low, Level::Medium, Reason::Rate, Some(Direction::Rx))
        );
        assert_eq!(serde_json::to_string(&e).unwrap(), LEVEL);
    }

    #[test]
    fn an_unknown_type_field_or_value_does_not_read() {
        for (line, says) in [
            (LEVEL.replace("\"type\":\"level\"", "\"type\":\"levels\""), "unknown variant `levels`"),
            (LEVEL.replace("\"hypervisor\":", "\"hv\":"), "unknown field `hv`"),
            (LEVEL.replace("\"bps\":", "\"bits\":"), "unknown field `bits`"),
            (LEVEL.replace("\"MEDIUM\"", "\"medium\""), "unknown variant `medium`"),
            (LEVEL.replace(",\"pps\":4010", ""), "missing field `pps`"),
            // Nullable is not optional: the writer always writes these.
            (LEVEL.replace(",\"hypervisor\":null", ""), "missing field `hypervisor`"),
            (LEVEL.replace("\"direction\":\"rx\",", ""), "missing field `direction`"),
            (LEVEL.replace("\"vm_name\":\"a\",", ""), "missing field `vm_name`"),
            (LEVEL.replace("22:13:29.000000Z", "yesterday"), "not an RFC 3339 time"),
        ] {
            let e = Event::from_json(&line).unwrap_err().to_string();
            assert!(e.contains(says), "{line}: {e}");
        }
    }

    #[test]
    fn the_events_own_names_are_their_json() {
        for k in ConflictKind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        for r in HoldReason::ALL {
            assert_eq!(serde_json::to_value(PlanBecause::Held(*r)).unwrap(), r.as_str());
        }
        let b: PlanBecause = serde_json::from_str("\"already_moving\"").unwrap();
        assert_eq!(b, PlanBecause::Skipped(SkipReason::AlreadyMoving));
        for t in Event::TYPES {
            let e = Event::from_json(&format!("{{\"type\":\"{t}\"}}")).unwrap_err().to_string();
            assert!(e.contains("missing field"), "{t}: {e}");
        }
    }

    /// Every variant of an enum, listed by hand: the `match` stops compiling
    /// when a variant is added, so the list cannot fall behind.
    macro_rules! every {
        ($t:ident: $($v:ident),+) => {{
            let all = [$($t::$v),+];
            for x in all {
                match x { $($t::$v)|+ => {} }
            }
            all
        }};
    }

    /// Asserts serde's name of every value is its `as_str` (both ways).
    fn one_table<T>(all: &[T], as_str: fn(T) -> &'static str)
    where
        T: Copy + std::fmt::Debug + PartialEq + Serialize + serde::de::DeserializeOwned,
    {
        for x in all {
            assert_eq!(serde_json::to_value(x).unwrap(), as_str(*x), "{x:?}");
            let back: T = serde_json::from_value(serde_json::Value::from(as_str(*x))).unwrap();
            assert_eq!(back, *x);
        }
    }

    // The vocabulary the events borrow from other stages: written with serde
    // (or, for `DecodeErrorKind`'s keys, with `as_str`) and read with serde.
    #[test]
    fn decode_error_kinds_written_by_as_str_read_back_by_serde() {
        one_table(&DecodeErrorKind::ALL, DecodeErrorKind::as_str);
    }
    #[test]
    fn verdict_has_one_name_table() {
        one_table(&every!(Verdict: Valid, Invalid, Unknown), Verdict::as_str);
    }
    #[test]
    fn authorization_has_one_name_table() {
        one_table(&every!(Authorization: Granted, Missing, Expired, Replayed, Unavailable), Authorization::as_str);
    }
    #[test]
    fn submitted_has_one_name_table() {
        one_table(&every!(Submitted: Queued, Dropped, Duplicate, NotJournaled), Submitted::as_str);
    }
    #[test]
    fn backend_name_has_one_name_table() {
        one_table(&every!(BackendName: Log, Exec, Webhook, Alertmanager, Libvirt, Openstack), BackendName::as_str);
    }
    #[test]
    fn ids_format_has_one_name_table() {
        one_table(&every!(Format: SuricataEve, Snort3Json, SnortFast), Format::as_str);
    }
    #[test]
    fn gate_reason_has_one_name_table() {
        let all = every!(GateReason: Signed, Authorized, FailOpen, UnsignedHost, NoToken, TokenMalformed,
            TokenForged, TokenOtherVm, TokenOtherHost, TokenExpired, TokenReplayed, Timeout, BadXml, Error);
        one_table(&all, GateReason::as_str);
    }
    #[test]
    fn level_reason_direction_and_action_kind_have_one_name_table() {
        one_table(&every!(Level: Low, Medium, High), Level::as_str);
        one_table(
            &every!(Reason: Rate, Rtt, Volume, Migration, Signature, Clone, Ungated, Ids, HostHigh),
            Reason::as_str,
        );
        one_table(&every!(Direction: Tx, Rx), Direction::as_str);
        one_table(&every!(ActionKind: Alert, Quarantine, Migrate), ActionKind::as_str);
    }
    #[test]
    fn the_events_own_enums_have_one_name_table() {
        one_table(KnownBy::ALL, KnownBy::as_str);
        one_table(AlertOutcome::ALL, AlertOutcome::as_str);
        one_table(Trigger::ALL, Trigger::as_str);
        one_table(PlanOutcome::ALL, PlanOutcome::as_str);
        one_table(HoldReason::ALL, HoldReason::as_str);
        one_table(SkipReason::ALL, SkipReason::as_str);
        one_table(ConflictKind::ALL, ConflictKind::as_str);
        one_table(ActionSignature::ALL, ActionSignature::as_str);
    }
}
