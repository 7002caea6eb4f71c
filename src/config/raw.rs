//! The rules file as written: serde structs that deny unknown keys, with defaults and spans.

use super::{Backend, Limits, MigrationRules, MtdRules, PolicyRule, PolicyTable, RttRules, StormRules};
use super::{Thresholds, VolumeRules};
use crate::action::{ActionKind, BackendName};
use crate::decode::{Mac, Tunnels};
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

// Every default is the stage's own `Default` (written once, there): a
// section's `Default` here only wraps those values in `Spanned`s with no
// place (`sp`), which is how validation tells a default from a written value.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWindow {
    pub length_ms: Spanned<u64>,
}
impl Default for RawWindow {
    fn default() -> Self {
        RawWindow { length_ms: sp(crate::vocab::time::DEFAULT_WINDOW_MS) }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawThresholds {
    pub medium_bps: Spanned<u64>,
    pub high_bps: Spanned<u64>,
    pub medium_pps: Spanned<u64>,
    pub high_pps: Spanned<u64>,
    pub clear_windows: Spanned<u32>,
}
impl Default for RawThresholds {
    fn default() -> Self {
        let d = Thresholds::default();
        RawThresholds {
            medium_bps: sp(d.medium_bps),
            high_bps: sp(d.high_bps),
            medium_pps: sp(d.medium_pps),
            high_pps: sp(d.high_pps),
            clear_windows: sp(d.clear_windows),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRtt {
    pub enabled: bool,
    pub peak_ms: Spanned<f64>,
    pub peak_factor: Option<Spanned<f64>>,
    pub max_peaks: u32,
    pub level: Spanned<Level>,
    pub probe_timeout_ms: Spanned<u64>,
    pub flow_timeout_s: Spanned<u64>,
}
impl Default for RawRtt {
    fn default() -> Self {
        let d = RttRules::default();
        RawRtt {
            enabled: d.enabled,
            peak_ms: sp(d.peak_ms),
            peak_factor: d.peak_factor.map(sp),
            max_peaks: d.max_peaks,
            level: sp(d.level),
            probe_timeout_ms: sp(d.probe_timeout_ms),
            flow_timeout_s: sp(d.flow_timeout_s),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawVolume {
    pub factor: Spanned<f64>,
    pub horizon_s: Spanned<u64>,
}
impl Default for RawVolume {
    fn default() -> Self {
        let d = VolumeRules::default();
        RawVolume { factor: sp(d.factor), horizon_s: sp(d.horizon_s) }
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
#[serde(deny_unknown_fields, default)]
pub struct RawPolicy {
    #[serde(rename = "MEDIUM")]
    pub medium: RawPolicyRule,
    #[serde(rename = "HIGH")]
    pub high: RawPolicyRule,
}
impl Default for RawPolicy {
    fn default() -> Self {
        let d = PolicyTable::default();
        let raw = |r: PolicyRule| RawPolicyRule { signed: r.signed, unsigned: r.unsigned };
        RawPolicy { medium: raw(d.medium), high: raw(d.high) }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    pub max_macs: Spanned<usize>,
    pub batch_size: Spanned<usize>,
    pub decode_bytes: Spanned<usize>,
    pub queue_batches: Spanned<usize>,
    pub action_queue: Spanned<usize>,
    pub rtt_flows: Spanned<usize>,
    pub rtt_echo_probes: Spanned<usize>,
    pub metrics_vms: Spanned<usize>,
    pub rtt_samples_per_window: Spanned<usize>,
    pub held_events: Spanned<usize>,
}
impl Default for RawLimits {
    fn default() -> Self {
        let d = Limits::default();
        RawLimits {
            max_macs: sp(d.max_macs),
            batch_size: sp(d.batch_size),
            decode_bytes: sp(d.decode_bytes),
            queue_batches: sp(d.queue_batches),
            action_queue: sp(d.action_queue),
            rtt_flows: sp(d.rtt_flows),
            metrics_vms: sp(d.metrics_vms),
            rtt_echo_probes: sp(d.rtt_echo_probes),
            rtt_samples_per_window: sp(d.rtt_samples_per_window),
            held_events: sp(d.held_events),
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
#[serde(deny_unknown_fields, default)]
pub struct RawTunnels {
    pub vxlan_ports: Spanned<Vec<u16>>,
    pub geneve_port: u16,
}
impl Default for RawTunnels {
    fn default() -> Self {
        let d = Tunnels::default();
        RawTunnels { vxlan_ports: sp(d.vxlan_ports().to_vec()), geneve_port: d.geneve_port }
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
#[serde(deny_unknown_fields, default)]
pub struct RawMigration {
    pub ports: Vec<Spanned<RawPorts>>,
    pub factor: Spanned<f64>,
    pub max_downtime_ms: u64,
    pub downtime_level: Spanned<Level>,
    pub announce_burst_ms: u64,
    pub clone_overlap_ms: u64,
    pub stream_gap_s: u64,
    pub require_authorization: Spanned<bool>,
    pub tokens_dir: Option<Spanned<String>>,
    pub gate_decisions: Vec<Spanned<String>>,
    pub require_gate: Spanned<bool>,
    pub gate_window_s: Spanned<u64>,
    pub gate_grace_s: Spanned<u64>,
}
impl Default for RawMigration {
    fn default() -> Self {
        let d = MigrationRules::default();
        let port = |(a, b): (u16, u16)| match a == b {
            true => sp(RawPorts::One(a.into())),
            false => sp(RawPorts::Range(format!("{a}-{b}"))),
        };
        RawMigration {
            ports: d.ports.iter().copied().map(port).collect(),
            factor: sp(d.factor),
            max_downtime_ms: d.max_downtime_ms,
            downtime_level: sp(d.downtime_level),
            announce_burst_ms: d.announce_burst_ms,
            clone_overlap_ms: d.clone_overlap_ms,
            stream_gap_s: d.stream_gap_s,
            require_authorization: sp(d.require_authorization),
            // Paths are the rules' to give.
            tokens_dir: None,
            gate_decisions: Vec::new(),
            require_gate: sp(d.require_gate),
            gate_window_s: sp(d.gate_window_s),
            gate_grace_s: sp(d.gate_grace_s),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBackend {
    /// Where actions go unless routed by kind below.
    pub default: Spanned<BackendName>,
    pub alert: Option<Spanned<BackendName>>,
    pub quarantine: Option<Spanned<BackendName>>,
    pub migrate: Option<Spanned<BackendName>>,
    pub max_attempts: Spanned<u32>,
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub shutdown_grace_ms: u64,
    pub journal: Option<Spanned<String>>,
    pub exec: Option<RawExec>,
    pub webhook: Option<RawWebhook>,
    pub alertmanager: Option<RawAlertmanager>,
    pub libvirt: Option<RawLibvirt>,
    pub openstack: Option<RawOpenstack>,
}
impl Default for RawBackend {
    fn default() -> Self {
        let d = Backend::default();
        RawBackend {
            default: sp(d.routes[0]),
            alert: None,
            quarantine: None,
            migrate: None,
            max_attempts: sp(d.max_attempts),
            backoff_ms: d.backoff_ms,
            max_backoff_ms: d.max_backoff_ms,
            shutdown_grace_ms: d.shutdown_grace_ms,
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
    #[serde(default = "d_domain")]
    pub user_domain: String,
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default = "d_domain")]
    pub project_domain: String,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default = "d_interface")]
    pub interface: String,
    /// Default false: lock the server before pausing it.
    #[serde(default)]
    pub lock: bool,
    #[serde(default = "d_openstack_timeout_ms")]
    pub timeout_ms: u64,
}
fn d_domain() -> String {
    crate::action::OpenstackConfig::DEFAULT_DOMAIN.into()
}
fn d_interface() -> String {
    crate::action::OpenstackConfig::DEFAULT_INTERFACE.into()
}
fn d_openstack_timeout_ms() -> u64 {
    crate::action::OpenstackConfig::DEFAULT_TIMEOUT_MS
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
    #[serde(default = "d_migrate_uri")]
    pub migrate_uri: String,
    /// Suspend keeps the VM's memory; destroy stops it at once.
    #[serde(default = "d_quarantine")]
    pub quarantine: RawQuarantine,
    #[serde(default = "d_virsh")]
    pub virsh: String,
    #[serde(default = "d_libvirt_timeout_ms")]
    pub timeout_ms: u64,
}
fn d_migrate_uri() -> String {
    crate::action::LibvirtConfig::DEFAULT_MIGRATE_URI.into()
}
fn d_quarantine() -> RawQuarantine {
    RawQuarantine::Suspend
}
fn d_virsh() -> String {
    crate::action::LibvirtConfig::DEFAULT_VIRSH.into()
}
fn d_alertmanager_timeout_ms() -> u64 {
    crate::action::AlertmanagerConfig::DEFAULT_TIMEOUT_MS
}
fn d_libvirt_timeout_ms() -> u64 {
    crate::action::LibvirtConfig::DEFAULT_TIMEOUT_MS
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlertmanager {
    pub url: Spanned<String>,
    #[serde(default = "d_alertmanager_timeout_ms")]
    pub timeout_ms: u64,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExec {
    pub program: Spanned<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default = "d_exec_timeout_ms")]
    pub timeout_ms: u64,
}
fn d_exec_timeout_ms() -> u64 {
    crate::action::ExecConfig::DEFAULT_TIMEOUT_MS
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub url: Spanned<String>,
    pub secret_file: Spanned<String>,
    #[serde(default = "d_webhook_timeout_ms")]
    pub timeout_ms: u64,
}
fn d_webhook_timeout_ms() -> u64 {
    crate::action::WebhookConfig::DEFAULT_TIMEOUT_MS
}

/// Limits that keep vmsentry from making the cloud thrash. Every default is
/// permissive enough for the shipped scenarios; tighten them in production.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStorm {
    pub vm_cooldown_s: u64,
    pub max_actions_per_minute: u32,
    pub max_migrations_per_hypervisor: u32,
    pub max_migrations: u32,
    pub migration_timeout_s: u64,
}
impl Default for RawStorm {
    fn default() -> Self {
        let d = StormRules::default();
        RawStorm {
            vm_cooldown_s: d.vm_cooldown_s,
            max_actions_per_minute: d.max_actions_per_minute,
            max_migrations_per_hypervisor: d.max_migrations_per_hypervisor,
            max_migrations: d.max_migrations,
            migration_timeout_s: d.migration_timeout_s,
        }
    }
}

/// Moving-target defense: what an IDS alert or a host full of HIGH VMs does.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMtd {
    pub mode: crate::policy::EvacuationMode,
    pub host_high_vms: u32,
}
impl Default for RawMtd {
    fn default() -> Self {
        let d = MtdRules::default();
        RawMtd { mode: d.mode, host_high_vms: d.host_high_vms }
    }
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

    /// README's rules reference section.
    fn reference() -> String {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let start = readme.find("\n## Rules reference").expect("README has a rules reference");
        let rest = &readme[start + 1..];
        rest[..rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3)].to_string()
    }

    #[test]
    fn every_rules_key_is_in_the_readme_reference() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let src = std::fs::read_to_string(root.join("src/config/raw.rs")).unwrap();
        let section = &reference();
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

    /// README's default column against the stages' defaults: writing a key's
    /// documented default into a rules file must build exactly what leaving
    /// it out builds (a section with required keys gets them, the same both ways).
    #[test]
    fn every_readme_default_is_what_an_unset_key_gets() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        for f in ["k", "s"] {
            std::fs::write(d.path().join(f), [b'k'; 32]).unwrap();
            std::fs::set_permissions(d.path().join(f), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let head = "[cluster]\nname = \"c\"\nkey_file = \"k\"\n";
        // Required keys of the sections that have them.
        let needs = |key: &str| match key.rsplit_once('.').map_or("", |(s, _)| s) {
            "backend.exec" => "backend.exec.program = \"/bin/true\"\n",
            "backend.webhook" => "backend.webhook.url = \"http://h\"\nbackend.webhook.secret_file = \"s\"\n",
            "backend.alertmanager" => "backend.alertmanager.url = \"http://h\"\n",
            "backend.libvirt" => "backend.libvirt.uri = \"qemu:///system\"\n",
            "backend.openstack" => {
                "backend.openstack.auth_url = \"http://h\"\nbackend.openstack.application_credential_id = \"i\"\n\
                 backend.openstack.application_credential_secret_file = \"s\"\n"
            }
            _ => "",
        };
        let build = |text: &str| {
            super::super::Rules::from_str_in(d.path(), std::path::Path::new("t.toml"), text)
                .map(|r| format!("{r:?}"))
                .map_err(|e| e.to_string())
        };
        let (mut checked, mut wrong) = (Vec::new(), Vec::new());
        for line in reference().lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = line.split(" | ").collect();
            let keys: Vec<&str> = cells[0].split('`').skip(1).step_by(2).collect();
            let written: Vec<&str> = cells[1].split(" / ").collect();
            for (i, key) in keys.iter().enumerate().filter(|(_, k)| !k.starts_with("[[")) {
                let v = written.get(i).or(written.first()).unwrap().trim();
                let v = v.trim_matches('`').replace(" (off)", "").replace(" (all)", "");
                // "65 536" is 65536; "none" and "required" have no value to write.
                let v =
                    if v.chars().all(|c| c.is_ascii_digit() || c == ' ' || c == '.') { v.replace(' ', "") } else { v };
                if v.is_empty() || toml::from_str::<toml::Table>(&format!("v = {v}")).is_err() {
                    continue;
                }
                let unset = build(&format!("{}{head}", needs(key))).unwrap();
                match build(&format!("{key} = {v}\n{}{head}", needs(key))) {
                    Ok(set) if set == unset => checked.push(key.to_string()),
                    Ok(_) => wrong.push(format!("{key} = {v} is not its default")),
                    Err(e) => wrong.push(format!("{key} = {v}: {e}")),
                }
            }
        }
        assert!(wrong.is_empty(), "README's rules reference gives defaults the code does not have: {wrong:#?}");
        // The parse found the table (a broken parse must not pass by checking nothing).
        assert!(checked.len() > 60, "{checked:?}");
        for k in
            ["window.length_ms", "thresholds.high_pps", "migration.ports", "policy.HIGH", "backend.libvirt.timeout_ms"]
        {
            assert!(checked.iter().any(|c| c == k), "{k} not checked: {checked:?}");
        }
    }
}
