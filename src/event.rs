//! Events: the JSON-lines record of what vmsentry saw and did, ordered by packet time.
//!
//! Every event has `type` and `ts` (RFC 3339 UTC with microseconds, from
//! packet time); VMs are named by `vm` (MAC) and `vm_name` (from the rules, or
//! null). The README's events reference documents each field.

use crate::action::{Action, ActionKind};
use crate::decode::Mac;
use crate::detect::{Conflict, Direction, Level, Move, Reason, RttPeaks, VmState};
use crate::measure::placement::Via;
use crate::measure::rtt::{RttSample, SampleKind};
use crate::time::PacketTime;
use crate::trust::Registry;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
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
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SensorEvent {
    pub ts: PacketTime,
    pub sensor: String,
    pub state: &'static str,
    /// Wall-clock seconds it had been silent (down only).
    pub silent_s: Option<f64>,
    /// The newest window it had sent, by its start.
    pub last_window_start: Option<PacketTime>,
}

/// One RTT sample (only with `--rtt-samples`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RttSampleEvent {
    /// When the answering packet was seen.
    pub ts: PacketTime,
    /// Who answered.
    pub vm: Mac,
    pub vm_name: Option<String>,
    pub rtt_ms: f64,
    pub kind: SampleKind,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
}

impl RttSampleEvent {
    pub fn new(s: &RttSample, vm_name: Option<String>) -> Self {
        RttSampleEvent {
            ts: s.ts,
            vm: s.mac,
            vm_name,
            rtt_ms: s.rtt_us as f64 / 1000.0,
            kind: s.kind,
            src: s.src.0,
            src_port: s.src.1,
            dst: s.dst.0,
            dst_port: s.dst.1,
        }
    }
}

/// A VM moved to another hypervisor (a live migration, as the wire shows it).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MigrationEvent {
    /// The first frame (or announce) from the new place.
    pub ts: PacketTime,
    pub vm: Mac,
    pub vm_name: Option<String>,
    pub from_hypervisor: Option<String>,
    /// Null when an announce was seen but nothing tells where.
    pub to_hypervisor: Option<String>,
    /// The outer source MAC and IP the VM now sends with (tunnels).
    pub to_mac: Option<Mac>,
    pub to_ip: Option<IpAddr>,
    /// How the move showed: `rarp`, `garp`, or `traffic`.
    pub via: Via,
    /// The destination's signature: `valid`, `invalid` or `unknown`.
    pub signature: &'static str,
    /// Whether a valid, unexpired, unused token allowed this move.
    pub authorized: bool,
    /// `granted`, `missing`, `expired` or `replayed`.
    pub authorization: &'static str,
    /// Migration streams tied to the move, and what they carried.
    pub streams: u32,
    pub bytes: Option<u64>,
    pub bytes_per_ram: Option<f64>,
    /// From the first stream's start to the move.
    pub total_ms: Option<f64>,
    /// From the VM's last frame at the source to its first at the destination.
    pub downtime_ms: Option<f64>,
    /// The VM's RAM and flavor from the rules, for grouping migrations.
    pub ram_mb: Option<u64>,
    pub flavor: Option<String>,
    /// Whether an allowed migration-gate decision matched the move (only
    /// when `migration.gate_decisions` are followed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gated: Option<bool>,
}

impl MigrationEvent {
    pub fn new(m: &Move, vm: &VmState, registry: &Registry, ram_bytes: Option<u64>, flavor: Option<String>) -> Self {
        MigrationEvent {
            ts: m.ts,
            vm: vm.mac,
            vm_name: Some(vm.name.clone()),
            from_hypervisor: m.from.and_then(|p| p.name(registry)),
            to_hypervisor: m.to.and_then(|p| p.name(registry)),
            to_mac: m.to.and_then(|p| p.mac),
            to_ip: m.to.and_then(|p| p.ip),
            via: m.via,
            signature: m.verdict.as_str(),
            authorized: m.authorization == crate::trust::token::Authorization::Granted,
            authorization: m.authorization.as_str(),
            streams: m.streams,
            bytes: m.bytes,
            bytes_per_ram: match (m.bytes, ram_bytes) {
                (Some(b), Some(r)) if r > 0 => Some(b as f64 / r as f64),
                _ => None,
            },
            total_ms: m.total_us.map(|u| u as f64 / 1000.0),
            downtime_ms: m.downtime_us.map(|u| u as f64 / 1000.0),
            ram_mb: ram_bytes.map(|b| b / (1024 * 1024)),
            flavor,
            gated: m.gated,
        }
    }
}

/// The migration gate on a hypervisor refused a live migration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GateDeniedEvent {
    /// The gate's own timestamp.
    pub ts: PacketTime,
    /// The first of the domain's MACs that is an inventory VM (else its first MAC).
    pub vm: Option<Mac>,
    pub vm_name: Option<String>,
    /// Every MAC of the domain.
    pub vms: Vec<Mac>,
    pub domain: String,
    /// The destination that refused (its registry id).
    pub hypervisor: String,
    /// The gate's reason (README: migration gate).
    pub reason: crate::gate::record::GateReason,
    pub detail: Option<String>,
    pub nonce: Option<String>,
}

impl GateDeniedEvent {
    /// `name`: the inventory name of a MAC, if it is a VM.
    pub fn new(r: &crate::gate::record::GateRecord, name: impl Fn(Mac) -> Option<String>) -> Self {
        let known = r.vms.iter().find_map(|&m| name(m).map(|n| (m, n)));
        GateDeniedEvent {
            ts: r.ts,
            vm: known.as_ref().map(|k| k.0).or(r.vms.first().copied()),
            vm_name: known.map(|k| k.1),
            vms: r.vms.clone(),
            domain: r.domain.clone(),
            hypervisor: r.host.clone(),
            reason: r.reason,
            detail: r.detail.clone(),
            nonce: r.nonce.clone(),
        }
    }
}

/// An IDS alert that passed its input's filters, and whom it names.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IdsAlertEvent {
    /// Replay: the alert's own time; live: when vmsentry read it.
    pub ts: PacketTime,
    /// The alert file, as in the rules.
    pub input: String,
    pub format: &'static str,
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
    pub victim_vm: Option<Mac>,
    pub victim_vm_name: Option<String>,
    /// `rules` or `learned` for a VM; null otherwise.
    pub victim_known_by: Option<&'static str>,
    pub victim_hypervisor: Option<String>,
    /// `evacuated` (an `evacuation` event follows) or `unmapped` (the
    /// address names no hypervisor or VM, or the VM's hypervisor is unknown).
    pub outcome: &'static str,
}

/// A plan to move VMs off a hypervisor, and what became of each VM.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvacuationEvent {
    pub ts: PacketTime,
    pub hypervisor: String,
    /// `ids` (an alert) or `host_high` (`mtd.host_high_vms` HIGH VMs on it).
    pub trigger: &'static str,
    /// `host` (every VM on it) or `vm` (only the attacked one).
    pub mode: &'static str,
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
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanLine {
    pub vm: Mac,
    pub vm_name: String,
    pub ram_mb: u64,
    /// `migrate`, `alert` (no destination), `held` or `skipped`.
    pub outcome: &'static str,
    pub destination: Option<String>,
    /// The action's id (`migrate`, `alert`).
    pub action_id: Option<String>,
    /// For `held`: the storm limit; for `skipped`: `already_moving`.
    pub because: Option<&'static str>,
}

impl EvacuationEvent {
    /// Fills the plan and its counts from the policy's entries.
    pub fn with_plan(mut self, entries: &[crate::policy::PlanEntry]) -> Self {
        use crate::policy::Decision;
        for e in entries {
            let (outcome, destination, action_id, because) = match &e.decision {
                Some(Decision::Act(a)) => {
                    if a.kind == ActionKind::Migrate {
                        self.migrate += 1;
                        ("migrate", a.destination.clone(), Some(a.id.clone()), None)
                    } else {
                        self.no_destination += 1;
                        ("alert", None, Some(a.id.clone()), None)
                    }
                }
                Some(Decision::Held(h)) => {
                    self.held += 1;
                    ("held", None, None, Some(h.because))
                }
                None => {
                    self.skipped += 1;
                    ("skipped", None, None, e.skipped)
                }
            };
            self.plan.push(PlanLine {
                vm: e.vm,
                vm_name: e.vm_name.clone(),
                ram_mb: e.ram_mb,
                outcome,
                destination,
                action_id,
                because,
            });
        }
        self
    }
}

/// One VM's rates and RTT in one window (only with `--vm-windows`): what the
/// report draws levels against.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VmWindowEvent {
    /// The window's end.
    pub ts: PacketTime,
    pub vm: Mac,
    pub vm_name: Option<String>,
    pub level: Level,
    pub tx_bps: u64,
    pub tx_pps: u64,
    pub rx_bps: u64,
    pub rx_pps: u64,
    pub rtt_samples: u64,
    pub rtt_p50_ms: Option<f64>,
    pub rtt_max_ms: Option<f64>,
    pub rtt_peaks: u32,
    pub rtt_baseline_ms: Option<f64>,
}

/// The wire contradicts the registry or the inventory.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConflictEvent {
    pub ts: PacketTime,
    /// `clone`, `hypervisor_ips` or `vm_uses_hypervisor_mac`.
    pub kind: &'static str,
    pub vm: Option<Mac>,
    pub vm_name: Option<String>,
    /// For `clone`: the hypervisors it runs behind.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hypervisors: Vec<Option<String>>,
    /// For the MAC conflicts: the MAC and the IPs it was seen with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
}

impl ConflictEvent {
    pub fn new<'a>(c: &Conflict, vm_of: impl Fn(usize) -> &'a VmState, registry: &Registry) -> Self {
        let base = ConflictEvent {
            ts: c.ts(),
            kind: "",
            vm: None,
            vm_name: None,
            hypervisors: Vec::new(),
            mac: None,
            ips: Vec::new(),
        };
        match c {
            Conflict::Clone { vm, places, .. } => {
                let v = vm_of(*vm);
                ConflictEvent {
                    kind: "clone",
                    vm: Some(v.mac),
                    vm_name: Some(v.name.clone()),
                    hypervisors: places.iter().map(|p| p.name(registry)).collect(),
                    ..base
                }
            }
            Conflict::HypervisorIps { mac, ips, .. } => {
                ConflictEvent { kind: "hypervisor_ips", mac: Some(*mac), ips: ips.clone(), ..base }
            }
            Conflict::VmUsesHypervisorMac { mac, outer_ip, .. } => ConflictEvent {
                kind: "vm_uses_hypervisor_mac",
                mac: Some(*mac),
                ips: outer_ip.iter().copied().collect(),
                ..base
            },
        }
    }
}

/// A VM showed more RTT peaks in one window than `rtt.max_peaks`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RttPeaksEvent {
    pub ts: PacketTime,
    pub vm: Mac,
    pub vm_name: Option<String>,
    pub window_start: PacketTime,
    pub peaks: u32,
    pub samples: u64,
    pub min_ms: Option<f64>,
    pub mean_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// `rtt.peak_ms`.
    pub peak_ms: f64,
    /// The VM's baseline at the end of the window (null before any non-peak sample).
    pub baseline_ms: Option<f64>,
    pub hypervisor: Option<String>,
}

impl RttPeaksEvent {
    pub fn new(p: &RttPeaks, vm: &VmState, hypervisor: Option<String>, peak_ms: f64) -> Self {
        RttPeaksEvent {
            ts: p.window_end,
            vm: vm.mac,
            vm_name: Some(vm.name.clone()),
            window_start: p.window_start,
            peaks: p.peaks,
            samples: p.window.count,
            min_ms: p.window.min_ms(),
            mean_ms: p.window.mean_ms(),
            max_ms: p.window.max_ms(),
            p50_ms: p.window.quantile_ms(0.5),
            p99_ms: p.window.quantile_ms(0.99),
            peak_ms,
            baseline_ms: p.baseline_ms,
            hypervisor,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LevelEvent {
    pub ts: PacketTime,
    pub vm: Mac,
    pub vm_name: Option<String>,
    pub from: Level,
    pub to: Level,
    pub reason: Reason,
    /// The direction that set the level, for `rate`; null otherwise.
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
    pub hypervisor: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ActionEvent {
    pub ts: PacketTime,
    pub id: String,
    pub vm: Mac,
    pub vm_name: Option<String>,
    pub action: ActionKind,
    pub hypervisor: Option<String>,
    /// `signed` / `unsigned`: the verdict the policy used.
    pub signature: &'static str,
    pub destination: Option<String>,
    pub level: Level,
    pub reason: Reason,
    /// Why the action differs from what the policy says (e.g. no migrate destination).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub backend: &'static str,
    /// `queued` (handed to the dispatcher) or `dropped` (its queue was full).
    pub outcome: &'static str,
}

impl ActionEvent {
    pub fn new(a: &Action, backend: &'static str, outcome: &'static str) -> Self {
        ActionEvent {
            ts: a.ts,
            id: a.id.clone(),
            vm: a.vm,
            vm_name: a.vm_name.clone(),
            action: a.kind,
            hypervisor: a.hypervisor.clone(),
            signature: if a.signed { "signed" } else { "unsigned" },
            destination: a.destination.clone(),
            level: a.level,
            reason: a.reason,
            note: a.note.clone(),
            backend,
            outcome,
        }
    }
}

/// An action the storm limits held back (not sent).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ActionHeldEvent {
    pub ts: PacketTime,
    pub vm: Mac,
    pub vm_name: Option<String>,
    pub action: ActionKind,
    pub level: Level,
    pub reason: Reason,
    /// `vm_cooldown`, `rate_limit`, `hypervisor_migrations` or `cluster_migrations`.
    pub held_because: &'static str,
}

impl ActionHeldEvent {
    pub fn new(h: &crate::policy::Held) -> Self {
        ActionHeldEvent {
            ts: h.ts,
            vm: h.vm,
            vm_name: h.vm_name.clone(),
            action: h.kind,
            level: h.level,
            reason: h.reason,
            held_because: h.because,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VmStatsEvent {
    pub ts: PacketTime,
    pub vm: Mac,
    pub vm_name: Option<String>,
    pub known: bool,
    pub level: Level,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rtt_samples: u64,
    pub rtt_min_ms: Option<f64>,
    pub rtt_max_ms: Option<f64>,
    pub rtt_mean_ms: Option<f64>,
    /// From the fixed-bucket histogram (error at most one bucket's width).
    pub rtt_p50_ms: Option<f64>,
    pub rtt_p99_ms: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SummaryEvent {
    pub ts: PacketTime,
    pub packets: u64,
    pub bytes: u64,
    pub decode_errors: u64,
    pub decode_errors_by_kind: BTreeMap<&'static str, u64>,
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
    pub rtt: RttSummary,
    /// IDS alert lines by outcome, and evacuations made.
    pub ids: crate::pipeline::IdsCounts,
    pub actions: ActionCounts,
    /// Wall-clock time of the replay and what it gives per second; these
    /// vary run to run, everything else is fixed by the input.
    pub wall_s: f64,
    /// Until the input was read through (the rest is the final window and
    /// the actions' delivery).
    pub read_s: f64,
    pub processing_pps: f64,
    pub peak_rss_bytes: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
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

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
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

#[cfg(test)]
mod tests {
    //! What turns pipeline state (actions, holds, plans, moves, conflicts,
    //! samples) into events, checked line for line.
    use super::*;
    use crate::config::Rules;
    use crate::detect::{Detector, Place};
    use crate::policy::{Decision, Held, PlanEntry};
    use crate::trust::token::Authorization;
    use crate::trust::Verdict;
    use std::os::unix::fs::PermissionsExt;

    fn line(e: Event) -> String {
        serde_json::to_string(&e).unwrap()
    }

    const T: PacketTime = PacketTime::from_micros(1_700_000_011_000_000);

    /// Hypervisor h1 (signed for its MAC) and h2; VM web-1 (2 GiB, m1.small) on h1.
    fn world() -> (Rules, Registry, VmState) {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("k");
        std::fs::write(&k, [b'k'; 32]).unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        let key = crate::trust::ClusterKey::from_bytes(&[b'k'; 32]).unwrap();
        let sig = key.sign("t", "h1", "52:54:00:aa:00:01".parse().unwrap());
        let text = format!(
            "[cluster]\nname = \"t\"\nkey_file = \"k\"\n\
             [[hypervisor]]\nid = \"h1\"\nmacs = [\"52:54:00:aa:00:01\"]\nips = [\"10.0.0.31\"]\nsignature = \"{sig}\"\n\
             [[hypervisor]]\nid = \"h2\"\nmacs = [\"52:54:00:aa:00:02\"]\n\
             [[vm]]\nname = \"web-1\"\nmac = \"fa:16:3e:00:00:01\"\nram_mb = 2048\nhypervisor = \"h1\"\nflavor = \"m1.small\"\n"
        );
        let rules = Rules::from_str_in(d.path(), std::path::Path::new("t.toml"), &text).unwrap();
        let registry = Registry::build(&rules.key, &rules.cluster, &rules.hypervisors);
        let vm = Detector::new(&rules, registry.clone()).vm(0).clone();
        (rules, registry, vm)
    }

    fn action(kind: ActionKind, destination: Option<&str>, note: Option<&str>) -> Action {
        Action {
            id: "1700000011000000-1".into(),
            ts: T,
            kind,
            vm: "fa:16:3e:00:00:01".parse().unwrap(),
            vm_name: Some("web-1".into()),
            hypervisor: Some("h1".into()),
            signed: true,
            destination: destination.map(String::from),
            level: Level::High,
            reason: Reason::Rate,
            note: note.map(String::from),
        }
    }

    #[test]
    fn an_action_and_a_held_action() {
        let a = action(ActionKind::Migrate, Some("h2"), None);
        assert_eq!(
            line(Event::Action(ActionEvent::new(&a, "log", "queued"))),
            r#"{"type":"action","ts":"2023-11-14T22:13:31.000000Z","id":"1700000011000000-1","vm":"fa:16:3e:00:00:01","vm_name":"web-1","action":"migrate","hypervisor":"h1","signature":"signed","destination":"h2","level":"HIGH","reason":"rate","backend":"log","outcome":"queued"}"#
        );
        let a = Action { signed: false, ..action(ActionKind::Alert, None, Some("no room")) };
        assert_eq!(
            line(Event::Action(ActionEvent::new(&a, "webhook", "not_journaled"))),
            r#"{"type":"action","ts":"2023-11-14T22:13:31.000000Z","id":"1700000011000000-1","vm":"fa:16:3e:00:00:01","vm_name":"web-1","action":"alert","hypervisor":"h1","signature":"unsigned","destination":null,"level":"HIGH","reason":"rate","note":"no room","backend":"webhook","outcome":"not_journaled"}"#
        );
        let h = Held {
            ts: T,
            vm: a.vm,
            vm_name: None,
            kind: ActionKind::Quarantine,
            level: Level::Medium,
            reason: Reason::Signature,
            because: "vm_cooldown",
        };
        assert_eq!(
            line(Event::ActionHeld(ActionHeldEvent::new(&h))),
            r#"{"type":"action_held","ts":"2023-11-14T22:13:31.000000Z","vm":"fa:16:3e:00:00:01","vm_name":null,"action":"quarantine","level":"MEDIUM","reason":"signature","held_because":"vm_cooldown"}"#
        );
    }

    #[test]
    fn an_evacuation_plan_counts_each_outcome() {
        let vm = |n: u8| Mac([0xfa, 0x16, 0x3e, 0, 0, n]);
        let entry = |n: u8, decision: Option<Decision>, skipped: Option<&'static str>| PlanEntry {
            vm: vm(n),
            vm_name: format!("v{n}"),
            ram_mb: u64::from(n) * 1024,
            decision,
            skipped,
        };
        let held = Held {
            ts: T,
            vm: vm(3),
            vm_name: None,
            kind: ActionKind::Migrate,
            level: Level::Low,
            reason: Reason::Ids,
            because: "cluster_migrations",
        };
        let plan = [
            entry(4, Some(Decision::Act(action(ActionKind::Migrate, Some("h2"), None))), None),
            entry(3, Some(Decision::Held(held)), None),
            entry(2, Some(Decision::Act(action(ActionKind::Alert, None, Some("no room")))), None),
            entry(1, None, Some("already_moving")),
        ];
        let ev = EvacuationEvent {
            ts: T,
            hypervisor: "h1".into(),
            trigger: "ids",
            mode: "host",
            sid: Some(9),
            victim: Some([10, 0, 0, 31].into()),
            high_vms: None,
            plan: Vec::new(),
            migrate: 0,
            held: 0,
            skipped: 0,
            no_destination: 0,
        }
        .with_plan(&plan);
        assert_eq!((ev.migrate, ev.held, ev.no_destination, ev.skipped), (1, 1, 1, 1));
        let lines: Vec<String> = ev.plan.iter().map(|p| serde_json::to_string(p).unwrap()).collect();
        assert_eq!(
            lines,
            [
                r#"{"vm":"fa:16:3e:00:00:04","vm_name":"v4","ram_mb":4096,"outcome":"migrate","destination":"h2","action_id":"1700000011000000-1","because":null}"#,
                r#"{"vm":"fa:16:3e:00:00:03","vm_name":"v3","ram_mb":3072,"outcome":"held","destination":null,"action_id":null,"because":"cluster_migrations"}"#,
                r#"{"vm":"fa:16:3e:00:00:02","vm_name":"v2","ram_mb":2048,"outcome":"alert","destination":null,"action_id":"1700000011000000-1","because":null}"#,
                r#"{"vm":"fa:16:3e:00:00:01","vm_name":"v1","ram_mb":1024,"outcome":"skipped","destination":null,"action_id":null,"because":"already_moving"}"#,
            ]
        );
    }

    #[test]
    fn a_migration_names_its_hypervisors_and_converts_its_measurements() {
        let (_r, registry, vm) = world();
        let m = Move {
            vm: 0,
            ts: T,
            from: Some(Place::registered(0)),
            to: Some(Place {
                hv: Some(1),
                mac: Some("52:54:00:aa:00:02".parse().unwrap()),
                ip: Some([10, 0, 0, 32].into()),
            }),
            via: Via::Rarp,
            verdict: Verdict::Invalid,
            authorization: Authorization::Replayed,
            streams: 2,
            bytes: Some(3 * 1024 * 1024 * 1024),
            total_us: Some(2_300_500),
            downtime_us: Some(400),
            gated: None,
        };
        assert_eq!(
            line(Event::Migration(MigrationEvent::new(
                &m,
                &vm,
                &registry,
                Some(2048 * 1024 * 1024),
                vm.flavor.clone()
            ))),
            r#"{"type":"migration","ts":"2023-11-14T22:13:31.000000Z","vm":"fa:16:3e:00:00:01","vm_name":"web-1","from_hypervisor":"h1","to_hypervisor":"h2","to_mac":"52:54:00:aa:00:02","to_ip":"10.0.0.32","via":"rarp","signature":"invalid","authorized":false,"authorization":"replayed","streams":2,"bytes":3221225472,"bytes_per_ram":1.5,"total_ms":2300.5,"downtime_ms":0.4,"ram_mb":2048,"flavor":"m1.small"}"#
        );
        // An announce with nowhere known, and no measurement.
        let m = Move {
            to: None,
            from: Some(Place { hv: None, mac: Some("52:54:00:66:66:66".parse().unwrap()), ip: None }),
            verdict: Verdict::Unknown,
            authorization: Authorization::Missing,
            streams: 0,
            bytes: None,
            total_us: None,
            downtime_us: None,
            ..m
        };
        assert_eq!(
            line(Event::Migration(MigrationEvent::new(&m, &vm, &registry, None, None))),
            r#"{"type":"migration","ts":"2023-11-14T22:13:31.000000Z","vm":"fa:16:3e:00:00:01","vm_name":"web-1","from_hypervisor":"52:54:00:66:66:66","to_hypervisor":null,"to_mac":null,"to_ip":null,"via":"rarp","signature":"unknown","authorized":false,"authorization":"missing","streams":0,"bytes":null,"bytes_per_ram":null,"total_ms":null,"downtime_ms":null,"ram_mb":null,"flavor":null}"#
        );
    }

    #[test]
    fn conflicts_and_samples() {
        let (_r, registry, vm) = world();
        let clone = Conflict::Clone {
            vm: 0,
            ts: T,
            places: [
                Place::registered(0),
                Place { hv: None, mac: Some(Mac([0x52, 0x54, 0, 0x66, 0x66, 0x66])), ip: None },
            ],
        };
        assert_eq!(
            line(Event::Conflict(ConflictEvent::new(&clone, |_| &vm, &registry))),
            r#"{"type":"conflict","ts":"2023-11-14T22:13:31.000000Z","kind":"clone","vm":"fa:16:3e:00:00:01","vm_name":"web-1","hypervisors":["h1","52:54:00:66:66:66"]}"#
        );
        let ips = Conflict::HypervisorIps {
            ts: T,
            mac: "52:54:00:aa:00:01".parse().unwrap(),
            ips: vec![[10, 0, 0, 31].into(), [10, 0, 0, 99].into()],
        };
        assert_eq!(
            line(Event::Conflict(ConflictEvent::new(&ips, |_| &vm, &registry))),
            r#"{"type":"conflict","ts":"2023-11-14T22:13:31.000000Z","kind":"hypervisor_ips","vm":null,"vm_name":null,"mac":"52:54:00:aa:00:01","ips":["10.0.0.31","10.0.0.99"]}"#
        );
        let odd = Conflict::VmUsesHypervisorMac { ts: T, mac: "52:54:00:aa:00:02".parse().unwrap(), outer_ip: None };
        assert_eq!(
            line(Event::Conflict(ConflictEvent::new(&odd, |_| &vm, &registry))),
            r#"{"type":"conflict","ts":"2023-11-14T22:13:31.000000Z","kind":"vm_uses_hypervisor_mac","vm":null,"vm_name":null,"mac":"52:54:00:aa:00:02"}"#
        );
        let s = RttSample {
            ts: T,
            mac: vm.mac,
            rtt_us: 2_345,
            kind: SampleKind::Handshake,
            src: ([10, 0, 1, 1].into(), 443),
            dst: ([10, 0, 0, 9].into(), 50_000),
        };
        assert_eq!(
            line(Event::RttSample(RttSampleEvent::new(&s, Some("web-1".into())))),
            r#"{"type":"rtt_sample","ts":"2023-11-14T22:13:31.000000Z","vm":"fa:16:3e:00:00:01","vm_name":"web-1","rtt_ms":2.345,"kind":"handshake","src":"10.0.1.1","src_port":443,"dst":"10.0.0.9","dst_port":50000}"#
        );
    }
}
