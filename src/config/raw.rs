//! The rules file as written: serde structs that deny unknown keys, with defaults and spans.

use crate::action::ActionKind;
use crate::config::PolicyRule;
use crate::decode::Mac;
use crate::detect::Level;
use serde::Deserialize;
use std::net::IpAddr;
use toml::Spanned;

fn sp<T>(v: T) -> Spanned<T> {
    Spanned::new(0..0, v)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRules {
    pub cluster: RawCluster,
    #[serde(default)]
    pub window: RawWindow,
    #[serde(default)]
    pub thresholds: RawThresholds,
    #[serde(default)]
    pub rtt: RawRtt,
    #[serde(default)]
    pub volume: RawVolume,
    #[serde(default)]
    pub policy: RawPolicy,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub tunnels: RawTunnels,
    #[serde(default)]
    pub sensor: RawSensor,
    #[serde(default)]
    pub migration: RawMigration,
    #[serde(default)]
    pub backend: RawBackend,
    #[serde(default)]
    pub storm: RawStorm,
    #[serde(default)]
    pub mtd: RawMtd,
    #[serde(default)]
    pub ids: Vec<RawIds>,
    #[serde(default)]
    pub hypervisor: Vec<RawHypervisor>,
    #[serde(default)]
    pub vm: Vec<RawVm>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub name: Spanned<String>,
    pub key_file: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    /// Default 1000 ms.
    #[serde(default = "d_length_ms")]
    pub length_ms: Spanned<u64>,
}
fn d_length_ms() -> Spanned<u64> {
    sp(1000)
}
impl Default for RawWindow {
    fn default() -> Self {
        RawWindow { length_ms: d_length_ms() }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThresholds {
    /// Default 100 Mbit/s.
    #[serde(default = "d_medium_bps")]
    pub medium_bps: Spanned<u64>,
    /// Default 500 Mbit/s.
    #[serde(default = "d_high_bps")]
    pub high_bps: Spanned<u64>,
    /// Default 50 000 packets/s.
    #[serde(default = "d_medium_pps")]
    pub medium_pps: Spanned<u64>,
    /// Default 200 000 packets/s.
    #[serde(default = "d_high_pps")]
    pub high_pps: Spanned<u64>,
    /// Default 3 windows.
    #[serde(default = "d_clear_windows")]
    pub clear_windows: Spanned<u32>,
}
fn d_medium_bps() -> Spanned<u64> {
    sp(100_000_000)
}
fn d_high_bps() -> Spanned<u64> {
    sp(500_000_000)
}
fn d_medium_pps() -> Spanned<u64> {
    sp(50_000)
}
fn d_high_pps() -> Spanned<u64> {
    sp(200_000)
}
fn d_clear_windows() -> Spanned<u32> {
    sp(3)
}
impl Default for RawThresholds {
    fn default() -> Self {
        RawThresholds {
            medium_bps: d_medium_bps(),
            high_bps: d_high_bps(),
            medium_pps: d_medium_pps(),
            high_pps: d_high_pps(),
            clear_windows: d_clear_windows(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRtt {
    /// Default true: track flows and take RTT samples.
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// Default 50.0 ms.
    #[serde(default = "d_peak_ms")]
    pub peak_ms: Spanned<f64>,
    /// Default none: only `peak_ms` defines a peak.
    #[serde(default)]
    pub peak_factor: Option<Spanned<f64>>,
    /// Default 5.
    #[serde(default = "d_max_peaks")]
    pub max_peaks: u32,
    /// Default MEDIUM.
    #[serde(default = "d_rtt_level")]
    pub level: Spanned<Level>,
    /// Default 10 000 ms: an unanswered probe is forgotten after this.
    #[serde(default = "d_probe_timeout_ms")]
    pub probe_timeout_ms: Spanned<u64>,
    /// Default 120 s: a TCP flow with no packet for this long is forgotten.
    #[serde(default = "d_flow_timeout_s")]
    pub flow_timeout_s: Spanned<u64>,
}
fn d_probe_timeout_ms() -> Spanned<u64> {
    sp(10_000)
}
fn d_flow_timeout_s() -> Spanned<u64> {
    sp(120)
}
fn d_true() -> bool {
    true
}
fn d_peak_ms() -> Spanned<f64> {
    sp(50.0)
}
fn d_max_peaks() -> u32 {
    5
}
fn d_rtt_level() -> Spanned<Level> {
    sp(Level::Medium)
}
impl Default for RawRtt {
    fn default() -> Self {
        RawRtt {
            enabled: true,
            peak_ms: d_peak_ms(),
            peak_factor: None,
            max_peaks: d_max_peaks(),
            level: d_rtt_level(),
            probe_timeout_ms: d_probe_timeout_ms(),
            flow_timeout_s: d_flow_timeout_s(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVolume {
    /// Default 3.0 (the paper's "more than 3x VRAM").
    #[serde(default = "d_factor")]
    pub factor: Spanned<f64>,
    /// Default 60 s.
    #[serde(default = "d_horizon_s")]
    pub horizon_s: Spanned<u64>,
}
fn d_factor() -> Spanned<f64> {
    sp(3.0)
}
fn d_horizon_s() -> Spanned<u64> {
    sp(60)
}
impl Default for RawVolume {
    fn default() -> Self {
        RawVolume { factor: d_factor(), horizon_s: d_horizon_s() }
    }
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct RawPolicyRule {
    pub signed: ActionKind,
    pub unsigned: ActionKind,
}
impl RawPolicyRule {
    pub fn to_rule(self) -> PolicyRule {
        PolicyRule { signed: self.signed, unsigned: self.unsigned }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Default `{ signed = "alert", unsigned = "quarantine" }`.
    #[serde(rename = "MEDIUM", default = "d_policy_medium")]
    pub medium: RawPolicyRule,
    /// Default `{ signed = "migrate", unsigned = "quarantine" }`.
    #[serde(rename = "HIGH", default = "d_policy_high")]
    pub high: RawPolicyRule,
}
fn d_policy_medium() -> RawPolicyRule {
    RawPolicyRule { signed: ActionKind::Alert, unsigned: ActionKind::Quarantine }
}
fn d_policy_high() -> RawPolicyRule {
    RawPolicyRule { signed: ActionKind::Migrate, unsigned: ActionKind::Quarantine }
}
impl Default for RawPolicy {
    fn default() -> Self {
        RawPolicy { medium: d_policy_medium(), high: d_policy_high() }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Default 65 536 MACs.
    #[serde(default = "d_max_macs")]
    pub max_macs: Spanned<usize>,
    /// Default 512 observations.
    #[serde(default = "d_batch_size")]
    pub batch_size: Spanned<usize>,
    /// Default 320 bytes: room for VLAN tags, a tunnel and the inner headers.
    #[serde(default = "d_decode_bytes")]
    pub decode_bytes: Spanned<usize>,
    /// Default 16 batches per shard.
    #[serde(default = "d_queue_batches")]
    pub queue_batches: Spanned<usize>,
    /// Default 4096 actions.
    #[serde(default = "d_action_queue")]
    pub action_queue: Spanned<usize>,
    /// Default 65 536 TCP flows tracked for RTT, split evenly across shards.
    #[serde(default = "d_rtt_flows")]
    pub rtt_flows: Spanned<usize>,
    /// Default 65 536 outstanding ICMP echo requests, split across shards.
    #[serde(default = "d_rtt_echo_probes")]
    pub rtt_echo_probes: Spanned<usize>,
    /// Default 4096 inventory VMs with per-VM metric series; the rest are counted.
    #[serde(default = "d_metrics_vms")]
    pub metrics_vms: Spanned<usize>,
    /// Default 100 000 RTT samples per shard per window; more are counted and dropped.
    #[serde(default = "d_rtt_samples_per_window")]
    pub rtt_samples_per_window: Spanned<usize>,
}
fn d_metrics_vms() -> Spanned<usize> {
    sp(4096)
}
fn d_rtt_flows() -> Spanned<usize> {
    sp(65_536)
}
fn d_rtt_echo_probes() -> Spanned<usize> {
    sp(65_536)
}
fn d_rtt_samples_per_window() -> Spanned<usize> {
    sp(100_000)
}
fn d_max_macs() -> Spanned<usize> {
    sp(65_536)
}
fn d_batch_size() -> Spanned<usize> {
    sp(512)
}
fn d_decode_bytes() -> Spanned<usize> {
    sp(320)
}
fn d_queue_batches() -> Spanned<usize> {
    sp(16)
}
fn d_action_queue() -> Spanned<usize> {
    sp(4096)
}
impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_macs: d_max_macs(),
            batch_size: d_batch_size(),
            decode_bytes: d_decode_bytes(),
            queue_batches: d_queue_batches(),
            action_queue: d_action_queue(),
            rtt_flows: d_rtt_flows(),
            metrics_vms: d_metrics_vms(),
            rtt_echo_probes: d_rtt_echo_probes(),
            rtt_samples_per_window: d_rtt_samples_per_window(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHypervisor {
    pub id: Spanned<String>,
    /// RAM available to VMs, for migration destinations; none: unlimited.
    #[serde(default)]
    pub ram_mb: Option<u64>,
    #[serde(default)]
    pub macs: Vec<Spanned<Mac>>,
    #[serde(default)]
    pub ips: Vec<Spanned<IpAddr>>,
    #[serde(default)]
    pub signature: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVm {
    pub name: Spanned<String>,
    pub mac: Spanned<Mac>,
    #[serde(default)]
    pub ram_mb: Option<Spanned<u64>>,
    #[serde(default)]
    pub hypervisor: Option<Spanned<String>>,
    /// Default none: its addresses, for IDS alerts about it.
    #[serde(default)]
    pub ips: Vec<Spanned<IpAddr>>,
    /// Default none: a label the report groups migrations by (m1.small, …).
    #[serde(default)]
    pub flavor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTunnels {
    /// Default [4789] (IANA). Linux's legacy VXLAN port 8472 can be added.
    #[serde(default = "d_vxlan_ports")]
    pub vxlan_ports: Spanned<Vec<u16>>,
    /// Default 6081.
    #[serde(default = "d_geneve_port")]
    pub geneve_port: u16,
}
fn d_vxlan_ports() -> Spanned<Vec<u16>> {
    sp(vec![4789])
}
fn d_geneve_port() -> u16 {
    6081
}
impl Default for RawTunnels {
    fn default() -> Self {
        RawTunnels { vxlan_ports: d_vxlan_ports(), geneve_port: d_geneve_port() }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSensor {
    /// Default none. The hypervisor whose uplink this sensor watches: every
    /// VM it sees sending (outside tunnels) is on that hypervisor.
    #[serde(default)]
    pub hypervisor: Option<Spanned<String>>,
}

/// A port or an inclusive range written `"49152-49215"`. The number is
/// read as TOML's i64 so that a value out of range gets a plain message
/// from validation, not serde's "did not match any variant".
#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub enum RawPorts {
    One(i64),
    Range(String),
    /// Anything else (a float, a table): refused by validation at its place.
    Other(toml::Value),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMigration {
    /// Default libvirt's native migration range 49152-49215, and 16509, 16514.
    #[serde(default = "d_migration_ports")]
    pub ports: Vec<Spanned<RawPorts>>,
    /// Default 3.0: moving more than factor x RAM is HIGH (reason `migration`).
    #[serde(default = "d_factor")]
    pub factor: Spanned<f64>,
    /// Default 1000 ms: a longer downtime raises the VM to `downtime_level`.
    #[serde(default = "d_max_downtime_ms")]
    pub max_downtime_ms: u64,
    /// Default MEDIUM.
    #[serde(default = "d_rtt_level")]
    pub downtime_level: Spanned<Level>,
    /// Default 2000 ms: announces of one VM this close together are one move.
    #[serde(default = "d_announce_burst_ms")]
    pub announce_burst_ms: u64,
    /// Default 2000 ms: frames from the old hypervisor this long after a move mean a clone.
    #[serde(default = "d_clone_overlap_ms")]
    pub clone_overlap_ms: u64,
    /// Default 30 s: a stream that ended this long before the announce is still its stream.
    #[serde(default = "d_stream_gap_s")]
    pub stream_gap_s: u64,
    /// Default false: when true, a move without a valid token is treated as a move to an unsigned hypervisor.
    #[serde(default = "d_false")]
    pub require_authorization: Spanned<bool>,
    /// Default none: the directory tokens from `vmsentry authorize` are read from.
    #[serde(default)]
    pub tokens_dir: Option<Spanned<String>>,
    /// Default none: decision files of `vmsentry gate` (JSON lines) to follow.
    #[serde(default)]
    pub gate_decisions: Vec<Spanned<String>>,
    /// Default false: when true, a move without an allowed gate decision is HIGH (reason `ungated`).
    #[serde(default = "d_false")]
    pub require_gate: Spanned<bool>,
    /// Default 600 s: an allowed decision counts for a move the wire shows at most this long after it.
    #[serde(default = "d_gate_window_s")]
    pub gate_window_s: Spanned<u64>,
    /// Default 10 s (packet time): a move without a decision waits this long for one before it is `ungated`.
    #[serde(default = "d_gate_grace_s")]
    pub gate_grace_s: Spanned<u64>,
}
fn d_gate_window_s() -> Spanned<u64> {
    sp(600)
}
fn d_gate_grace_s() -> Spanned<u64> {
    sp(10)
}
fn d_migration_ports() -> Vec<Spanned<RawPorts>> {
    vec![sp(RawPorts::Range("49152-49215".into())), sp(RawPorts::One(16509)), sp(RawPorts::One(16514))]
}
fn d_false() -> Spanned<bool> {
    sp(false)
}
fn d_max_downtime_ms() -> u64 {
    1000
}
fn d_announce_burst_ms() -> u64 {
    2000
}
fn d_clone_overlap_ms() -> u64 {
    2000
}
fn d_stream_gap_s() -> u64 {
    30
}
impl Default for RawMigration {
    fn default() -> Self {
        RawMigration {
            ports: d_migration_ports(),
            factor: d_factor(),
            max_downtime_ms: d_max_downtime_ms(),
            downtime_level: d_rtt_level(),
            announce_burst_ms: d_announce_burst_ms(),
            clone_overlap_ms: d_clone_overlap_ms(),
            stream_gap_s: d_stream_gap_s(),
            require_authorization: sp(false),
            tokens_dir: None,
            gate_decisions: Vec::new(),
            require_gate: sp(false),
            gate_window_s: d_gate_window_s(),
            gate_grace_s: d_gate_grace_s(),
        }
    }
}

#[derive(Deserialize, serde::Serialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum BackendName {
    Log,
    Exec,
    Webhook,
    Alertmanager,
    Libvirt,
    Openstack,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    /// Default `log`: where actions go unless routed by kind below.
    #[serde(default = "d_log")]
    pub default: Spanned<BackendName>,
    #[serde(default)]
    pub alert: Option<Spanned<BackendName>>,
    #[serde(default)]
    pub quarantine: Option<Spanned<BackendName>>,
    #[serde(default)]
    pub migrate: Option<Spanned<BackendName>>,
    /// Default 8 attempts per action.
    #[serde(default = "d_max_attempts")]
    pub max_attempts: Spanned<u32>,
    /// Default 500 ms before the first retry, doubling per attempt ...
    #[serde(default = "d_backoff_ms")]
    pub backoff_ms: u64,
    /// ... up to 60 000 ms.
    #[serde(default = "d_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Default 5000 ms: at exit, how long retries still due may run.
    #[serde(default = "d_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// Default none: the action journal's path.
    #[serde(default)]
    pub journal: Option<Spanned<String>>,
    #[serde(default)]
    pub exec: Option<RawExec>,
    #[serde(default)]
    pub webhook: Option<RawWebhook>,
    #[serde(default)]
    pub alertmanager: Option<RawAlertmanager>,
    #[serde(default)]
    pub libvirt: Option<RawLibvirt>,
    #[serde(default)]
    pub openstack: Option<RawOpenstack>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOpenstack {
    /// Keystone's v3 URL.
    pub auth_url: Spanned<String>,
    /// Either an application credential ...
    #[serde(default)]
    pub application_credential_id: Option<String>,
    #[serde(default)]
    pub application_credential_secret_file: Option<Spanned<String>>,
    /// ... or a user with a password, scoped to a project.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<Spanned<String>>,
    /// Default `Default`.
    #[serde(default = "d_domain")]
    pub user_domain: String,
    #[serde(default)]
    pub project: Option<String>,
    /// Default `Default`.
    #[serde(default = "d_domain")]
    pub project_domain: String,
    #[serde(default)]
    pub region: Option<String>,
    /// Default `public`.
    #[serde(default = "d_interface")]
    pub interface: String,
    /// Default false: lock the server before pausing it.
    #[serde(default)]
    pub lock: bool,
    /// Default 10 000 ms.
    #[serde(default = "d_exec_timeout_ms")]
    pub timeout_ms: u64,
}
fn d_domain() -> String {
    "Default".into()
}
fn d_interface() -> String {
    "public".into()
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum RawQuarantine {
    Suspend,
    Destroy,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLibvirt {
    /// The connection to the VM's hypervisor; `{hypervisor}` is its registry id.
    pub uri: Spanned<String>,
    /// Default `qemu+ssh://{destination}/system`.
    #[serde(default = "d_migrate_uri")]
    pub migrate_uri: String,
    /// Default suspend (keeps the VM's memory); destroy stops it at once.
    #[serde(default = "d_quarantine")]
    pub quarantine: RawQuarantine,
    /// Default `virsh` (from PATH).
    #[serde(default = "d_virsh")]
    pub virsh: String,
    /// Default 60 000 ms per virsh command (a live migration takes time).
    #[serde(default = "d_libvirt_timeout_ms")]
    pub timeout_ms: u64,
}
fn d_migrate_uri() -> String {
    "qemu+ssh://{destination}/system".into()
}
fn d_quarantine() -> RawQuarantine {
    RawQuarantine::Suspend
}
fn d_virsh() -> String {
    "virsh".into()
}
fn d_libvirt_timeout_ms() -> u64 {
    60_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlertmanager {
    pub url: Spanned<String>,
    /// Default 5000 ms.
    #[serde(default = "d_webhook_timeout_ms")]
    pub timeout_ms: u64,
}
fn d_log() -> Spanned<BackendName> {
    sp(BackendName::Log)
}
fn d_max_attempts() -> Spanned<u32> {
    sp(8)
}
fn d_backoff_ms() -> u64 {
    500
}
fn d_max_backoff_ms() -> u64 {
    60_000
}
fn d_shutdown_grace_ms() -> u64 {
    5_000
}
impl Default for RawBackend {
    fn default() -> Self {
        RawBackend {
            default: d_log(),
            alert: None,
            quarantine: None,
            migrate: None,
            max_attempts: d_max_attempts(),
            backoff_ms: d_backoff_ms(),
            max_backoff_ms: d_max_backoff_ms(),
            shutdown_grace_ms: d_shutdown_grace_ms(),
            journal: None,
            exec: None,
            webhook: None,
            alertmanager: None,
            libvirt: None,
            openstack: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExec {
    pub program: Spanned<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// Default 10 000 ms.
    #[serde(default = "d_exec_timeout_ms")]
    pub timeout_ms: u64,
}
fn d_exec_timeout_ms() -> u64 {
    10_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub url: Spanned<String>,
    pub secret_file: Spanned<String>,
    /// Default 5000 ms.
    #[serde(default = "d_webhook_timeout_ms")]
    pub timeout_ms: u64,
}
fn d_webhook_timeout_ms() -> u64 {
    5_000
}

/// Limits that keep vmsentry from making the cloud thrash. Every default is
/// permissive enough for the shipped scenarios; tighten them in production.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorm {
    /// Default 0 (off): at most one action per VM within this many seconds.
    #[serde(default)]
    pub vm_cooldown_s: u64,
    /// Default 0 (off): at most this many actions in any minute, cluster-wide.
    #[serde(default)]
    pub max_actions_per_minute: u32,
    /// Default 0 (off): migrations in flight leaving one hypervisor.
    #[serde(default)]
    pub max_migrations_per_hypervisor: u32,
    /// Default 0 (off): migrations in flight cluster-wide.
    #[serde(default)]
    pub max_migrations: u32,
    /// Default 600 s: a migration not seen on the wire by then no longer counts as in flight.
    #[serde(default = "d_migration_timeout_s")]
    pub migration_timeout_s: u64,
}
fn d_migration_timeout_s() -> u64 {
    600
}
impl Default for RawStorm {
    fn default() -> Self {
        RawStorm {
            vm_cooldown_s: 0,
            max_actions_per_minute: 0,
            max_migrations_per_hypervisor: 0,
            max_migrations: 0,
            migration_timeout_s: d_migration_timeout_s(),
        }
    }
}

/// Moving-target defense: what an IDS alert or a host full of HIGH VMs does.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMtd {
    /// Default "host": move every VM off the victim's hypervisor; "vm": only the attacked VM.
    #[serde(default)]
    pub mode: crate::policy::EvacuationMode,
    /// Default 0 (off): evacuate a hypervisor when this many of its VMs are HIGH at once.
    #[serde(default)]
    pub host_high_vms: u32,
}

/// One IDS alert file to follow.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIds {
    pub path: Spanned<String>,
    pub format: crate::ids::Format,
    /// Default none: where to keep the read position across restarts.
    #[serde(default)]
    pub checkpoint: Option<Spanned<String>>,
    /// Default false: with no checkpoint, `live` starts at the file's end
    /// (alerts already there are old); true reads it from the start.
    #[serde(default)]
    pub from_start: bool,
    /// Default 0 (all): pass alerts at least this severe (1 is the most severe).
    #[serde(default)]
    pub min_severity: u8,
    #[serde(default)]
    pub include_sids: Vec<u64>,
    #[serde(default)]
    pub exclude_sids: Vec<u64>,
    /// Default 0 (off): further alerts about the same address within this many seconds are dropped.
    #[serde(default)]
    pub cooldown_s: u64,
    /// Default "destination": which address of the alert is the victim.
    #[serde(default)]
    pub victim: crate::ids::VictimSide,
}

#[cfg(test)]
mod tests {
    //! The README's rules reference against the schema above: every key of
    //! every `Raw*` struct (read from this file's source, so a key added to a
    //! struct is a key to document) must appear in the table.
    use std::collections::BTreeMap;

    /// Structs written as one inline value (`policy.MEDIUM = { ... }`), documented as such.
    const VALUE_TYPES: &[&str] = &["RawPolicyRule"];

    /// Each `pub struct` of the source: its (TOML key, Rust type) fields.
    fn structs(src: &str) -> BTreeMap<String, Vec<(String, String)>> {
        let mut out = BTreeMap::new();
        let mut current: Option<(String, Vec<(String, String)>)> = None;
        let mut rename: Option<String> = None;
        for line in src.lines() {
            let t = line.trim();
            if let Some(rest) = t.strip_prefix("pub struct ").and_then(|r| r.strip_suffix(" {")) {
                current = Some((rest.trim().to_string(), Vec::new()));
                continue;
            }
            let Some((_, fields)) = current.as_mut() else { continue };
            if line == "}" {
                let (name, fields) = current.take().unwrap();
                out.insert(name, fields);
            } else if t.starts_with("#[serde(") && t.contains("rename = \"") {
                rename = t.split("rename = \"").nth(1).and_then(|r| r.split('"').next()).map(str::to_string);
            } else if let Some((name, ty)) = t.strip_prefix("pub ").and_then(|r| r.split_once(": ")) {
                let key = rename.take().unwrap_or_else(|| name.to_string());
                fields.push((key, ty.trim_end_matches(',').to_string()));
            }
        }
        out
    }

    /// Every key below struct `name`, as the README writes it: `a.b.c` in
    /// tables, `[[a]] b` in arrays of tables.
    fn keys(all: &BTreeMap<String, Vec<(String, String)>>, name: &str, prefix: &str, out: &mut Vec<String>) {
        for (key, ty) in &all[name] {
            let nested = ty
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .find(|w| all.contains_key(*w) && !VALUE_TYPES.contains(w));
            let path = if prefix.is_empty() {
                key.clone()
            } else if prefix.starts_with("[[") {
                format!("{prefix} {key}")
            } else {
                format!("{prefix}.{key}")
            };
            match nested {
                Some(n) if ty.starts_with("Vec<") => keys(all, n, &format!("[[{path}]]"), out),
                Some(n) => keys(all, n, &path, out),
                None => out.push(path),
            }
        }
    }

    #[test]
    fn every_rules_key_is_in_the_readme_reference() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let src = std::fs::read_to_string(root.join("src/config/raw.rs")).unwrap();
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let start = readme.find("\n## Rules reference").expect("README has a rules reference");
        let rest = &readme[start + 1..];
        let section = &rest[..rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3)];
        let all = structs(&src);
        let mut found = Vec::new();
        keys(&all, "RawRules", "", &mut found);
        // The parse found the schema (a broken parse must not pass by finding nothing).
        assert!(found.len() > 100, "{found:?}");
        for k in ["cluster.key_file", "backend.openstack.lock", "[[ids]] victim", "policy.MEDIUM", "limits.metrics_vms"]
        {
            assert!(found.iter().any(|f| f == k), "{k} not derived: {found:?}");
        }
        let missing: Vec<&String> = found.iter().filter(|k| !section.contains(&format!("`{k}`"))).collect();
        assert!(missing.is_empty(), "keys of src/config/raw.rs missing from README's rules reference: {missing:?}");
    }
}
