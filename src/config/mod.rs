//! Rules: the `vmsentry.toml` schema, its defaults, and strict validation with `file:line:col` errors.
//!
//! Parsing is two steps. serde reads the TOML into `raw` structs that deny
//! unknown keys and keep the byte span of every value a later check may
//! complain about; [`Rules::load`] then validates meaning (threshold order,
//! references, the key file) and builds the runtime [`Rules`]. Every error,
//! syntactic or semantic, reads like a compiler's:
//! `rules/vmsentry.toml:14:9: medium_bps must be below high_bps (got 500000000 >= 100000000)`.

mod raw;

pub use crate::action::{Backend, BackendName};
use crate::decode::{Mac, Tunnels};
pub use crate::detect::location::MigrationRules;
use crate::detect::Level;
pub use crate::detect::{RttRules, Thresholds, VolumeRules};
pub use crate::policy::{MtdRules, PolicyRule, PolicyTable, StormRules};
use crate::trust::token::TokenStore;
use crate::trust::{ClusterKey, KeyError};
pub use crate::vocab::{HypervisorEntry, VmEntry};
use raw::RawRules;
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// `limits.decode_bytes` bounds: the headers decode needs, and a frame's
/// worth (each batch holds `batch_size` times this).
pub const MIN_DECODE_BYTES: usize = 64;
pub const MAX_DECODE_BYTES: usize = 65_536;

/// A span serde gave no place: the value is a default, not written.
fn is_default(span: Range<usize>) -> bool {
    span == (0..0)
}

/// The name of the rules file inside the rules directory.
pub const RULES_FILE: &str = "vmsentry.toml";

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{path}: cannot read the rules file: {why}")]
    Read {
        path: PathBuf,
        #[source]
        why: crate::small_file::SmallFileError,
    },
    /// A syntax, schema or meaning error at a place in the file.
    #[error("{path}:{line}:{col}: {msg}")]
    At { path: PathBuf, line: usize, col: usize, msg: String },
}

/// Caps on every bounded structure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// MACs tracked at once; unknown MACs are evicted oldest-seen first.
    pub max_macs: usize,
    /// Observations per batch handed from the reader to a shard.
    pub batch_size: usize,
    /// Leading bytes of each frame handed to decode (headers; the rest is not read).
    pub decode_bytes: usize,
    /// Batches in flight per shard queue.
    pub queue_batches: usize,
    /// Actions waiting for the dispatcher.
    pub action_queue: usize,
    /// Inventory VMs with per-VM metric series (label cardinality cap).
    pub metrics_vms: usize,
    /// TCP flows tracked for RTT (all shards together).
    pub rtt_flows: usize,
    /// Outstanding ICMP echo requests (all shards together).
    pub rtt_echo_probes: usize,
    /// RTT samples one shard hands over per window; more are dropped (counted).
    pub rtt_samples_per_window: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_macs: crate::detect::DEFAULT_MAX_MACS,
            batch_size: 512,
            // Room for VLAN tags, a tunnel and the inner headers.
            decode_bytes: 320,
            queue_batches: 16,
            action_queue: 4096,
            metrics_vms: 4096,
            rtt_flows: 65_536,
            rtt_echo_probes: 65_536,
            rtt_samples_per_window: 100_000,
        }
    }
}

/// Validated rules, ready to run.
#[derive(Clone, Debug)]
pub struct Rules {
    pub dir: PathBuf,
    pub cluster: String,
    pub key: ClusterKey,
    pub window_len_ms: u64,
    pub thresholds: Thresholds,
    pub rtt: RttRules,
    pub volume: VolumeRules,
    pub policy: PolicyTable,
    pub limits: Limits,
    pub tunnels: Tunnels,
    /// Index of the hypervisor whose uplink this sensor watches.
    pub sensor: Option<usize>,
    pub migration: MigrationRules,
    pub backend: Backend,
    pub storm: StormRules,
    pub mtd: MtdRules,
    /// IDS alert files to follow.
    pub ids: Vec<crate::ids::Input>,
    pub hypervisors: Vec<HypervisorEntry>,
    pub vms: Vec<VmEntry>,
    /// The move tokens of `migration.tokens_dir` (its used nonces read at load).
    pub tokens: TokenStore,
}

/// The settings a reload does not change: they size the reader's and the
/// shards' structures (`window.length_ms`, `[limits]`, `[tunnels]`), own a
/// thread each (`[[ids]]`), or hold the dispatcher's backends, connections,
/// retries in progress and journal (`[backend]`: swapping them mid-run could
/// lose or repeat an action being retried, so a restart, which resumes from
/// the journal, is the safe way).
#[derive(Clone, Debug, PartialEq)]
pub struct RestartOnly {
    window_len_ms: u64,
    limits: Limits,
    tunnels: Tunnels,
    ids: Vec<crate::ids::Input>,
    backend: Backend,
}

impl RestartOnly {
    pub fn of(rules: &Rules) -> RestartOnly {
        RestartOnly {
            window_len_ms: rules.window_len_ms,
            limits: rules.limits.clone(),
            tunnels: rules.tunnels,
            ids: rules.ids.clone(),
            backend: rules.backend.clone(),
        }
    }

    /// Which of them `new` changes, by section name, in file order.
    pub fn restart_only_changes(&self, new: &Rules) -> Vec<&'static str> {
        let n = RestartOnly::of(new);
        [
            (self.window_len_ms != n.window_len_ms, "window.length_ms"),
            (self.limits != n.limits, "[limits]"),
            (self.tunnels != n.tunnels, "[tunnels]"),
            (self.backend != n.backend, "[backend]"),
            (self.ids != n.ids, "[[ids]]"),
        ]
        .into_iter()
        .filter_map(|(changed, name)| changed.then_some(name))
        .collect()
    }
}

impl Rules {
    /// Reads and validates `DIR/vmsentry.toml`.
    pub fn load(dir: &Path) -> Result<Rules, RulesError> {
        let path = dir.join(RULES_FILE);
        let bytes = crate::small_file::read(&path, crate::small_file::MAX_RULES_BYTES)
            .map_err(|why| RulesError::Read { path: path.clone(), why })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let (line, col) = line_col(&String::from_utf8_lossy(e.as_bytes()), e.utf8_error().valid_up_to());
            RulesError::At { path: path.clone(), line, col, msg: "the rules file is not UTF-8 text".into() }
        })?;
        Self::from_str_in(dir, &path, &text)
    }

    /// Validates rules text; `path` names the file in messages and `dir`
    /// anchors relative paths.
    pub fn from_str_in(dir: &Path, path: &Path, text: &str) -> Result<Rules, RulesError> {
        let at = |span: Range<usize>, msg: String| {
            let (line, col) = line_col(text, span.start);
            RulesError::At { path: path.to_path_buf(), line, col, msg }
        };
        let raw: RawRules = toml::from_str(text)
            .map_err(|e| at(e.span().unwrap_or(0..0), e.message().trim_end().replace('\n', "; ")))?;

        // [cluster]
        let name = raw.cluster.name;
        check_cluster_name(name.get_ref()).map_err(|m| at(name.span(), m))?;
        let key_path = dir.join(raw.cluster.key_file.get_ref());
        let key = ClusterKey::load(&key_path).map_err(|e| match e {
            KeyError::Read { .. }
            | KeyError::TooShort { .. }
            | KeyError::Permissions { .. }
            | KeyError::Unusable { .. } => at(raw.cluster.key_file.span(), e.to_string()),
        })?;

        // [window]
        let window_len_ms = *raw.window.length_ms.get_ref();
        if window_len_ms == 0 || window_len_ms > 3_600_000 {
            return Err(at(
                raw.window.length_ms.span(),
                format!("window.length_ms must be between 1 and 3600000 (got {window_len_ms})"),
            ));
        }

        // [thresholds]
        let t = &raw.thresholds;
        for (lo, hi, lo_name, hi_name) in [
            (&t.medium_bps, &t.high_bps, "medium_bps", "high_bps"),
            (&t.medium_pps, &t.high_pps, "medium_pps", "high_pps"),
        ] {
            if *lo.get_ref() == 0 {
                return Err(at(lo.span(), format!("{lo_name} must be above 0")));
            }
            if lo.get_ref() >= hi.get_ref() {
                // Point at the value that was written: with only one of the
                // two set, the other is its default and has no place.
                let (span, note) = match (is_default(lo.span()), is_default(hi.span())) {
                    (true, false) => (hi.span(), format!("; {lo_name} is its default, set it too")),
                    (false, true) => (lo.span(), format!("; {hi_name} is its default, set it too")),
                    _ => (lo.span(), String::new()),
                };
                return Err(at(
                    span,
                    format!("{lo_name} must be below {hi_name} (got {} >= {}){note}", lo.get_ref(), hi.get_ref()),
                ));
            }
        }
        if *t.clear_windows.get_ref() == 0 {
            return Err(at(t.clear_windows.span(), "clear_windows must be at least 1".into()));
        }
        let thresholds = Thresholds {
            medium_bps: *t.medium_bps.get_ref(),
            high_bps: *t.high_bps.get_ref(),
            medium_pps: *t.medium_pps.get_ref(),
            high_pps: *t.high_pps.get_ref(),
            clear_windows: *t.clear_windows.get_ref(),
        };

        // [rtt]
        let r = &raw.rtt;
        positive(r.peak_ms.get_ref(), "rtt.peak_ms").map_err(|m| at(r.peak_ms.span(), m))?;
        if let Some(f) = &r.peak_factor {
            if !(f.get_ref().is_finite() && *f.get_ref() > 1.0) {
                return Err(at(f.span(), format!("rtt.peak_factor must be above 1.0 (got {})", f.get_ref())));
            }
        }
        if *r.level.get_ref() == Level::Low {
            return Err(at(r.level.span(), "rtt.level must be MEDIUM or HIGH: LOW would raise nothing".into()));
        }
        for (v, name) in [(&r.probe_timeout_ms, "rtt.probe_timeout_ms"), (&r.flow_timeout_s, "rtt.flow_timeout_s")] {
            if *v.get_ref() == 0 {
                return Err(at(v.span(), format!("{name} must be at least 1")));
            }
        }
        let rtt = RttRules {
            enabled: r.enabled,
            peak_ms: *r.peak_ms.get_ref(),
            peak_factor: r.peak_factor.as_ref().map(|f| *f.get_ref()),
            max_peaks: r.max_peaks,
            level: *r.level.get_ref(),
            probe_timeout_ms: *r.probe_timeout_ms.get_ref(),
            flow_timeout_s: *r.flow_timeout_s.get_ref(),
        };

        // [volume]
        let v = &raw.volume;
        positive(v.factor.get_ref(), "volume.factor").map_err(|m| at(v.factor.span(), m))?;
        if *v.horizon_s.get_ref() == 0 {
            return Err(at(v.horizon_s.span(), "volume.horizon_s must be at least 1".into()));
        }
        let volume = VolumeRules { factor: *v.factor.get_ref(), horizon_s: *v.horizon_s.get_ref() };

        // [policy]
        let policy = PolicyTable { medium: raw.policy.medium.to_rule(), high: raw.policy.high.to_rule() };

        // [limits]
        let l = &raw.limits;
        let decode_bytes = *l.decode_bytes.get_ref();
        if !(MIN_DECODE_BYTES..=MAX_DECODE_BYTES).contains(&decode_bytes) {
            return Err(at(
                l.decode_bytes.span(),
                format!(
                    "limits.decode_bytes must be from {MIN_DECODE_BYTES} (an Ethernet, IP and TCP header) to \
                     {MAX_DECODE_BYTES} (got {decode_bytes})"
                ),
            ));
        }
        for (v, name) in [
            (&l.max_macs, "limits.max_macs"),
            (&l.batch_size, "limits.batch_size"),
            (&l.queue_batches, "limits.queue_batches"),
            (&l.action_queue, "limits.action_queue"),
            (&l.rtt_flows, "limits.rtt_flows"),
            (&l.rtt_echo_probes, "limits.rtt_echo_probes"),
            (&l.rtt_samples_per_window, "limits.rtt_samples_per_window"),
        ] {
            if *v.get_ref() == 0 {
                return Err(at(v.span(), format!("{name} must be at least 1")));
            }
        }
        let limits = Limits {
            max_macs: *l.max_macs.get_ref(),
            batch_size: *l.batch_size.get_ref(),
            decode_bytes,
            queue_batches: *l.queue_batches.get_ref(),
            action_queue: *l.action_queue.get_ref(),
            metrics_vms: *l.metrics_vms.get_ref(),
            rtt_flows: *l.rtt_flows.get_ref(),
            rtt_echo_probes: *l.rtt_echo_probes.get_ref(),
            rtt_samples_per_window: *l.rtt_samples_per_window.get_ref(),
        };

        // [tunnels]
        let vx = &raw.tunnels.vxlan_ports;
        let tunnels = Tunnels::new(vx.get_ref(), raw.tunnels.geneve_port).ok_or_else(|| {
            at(vx.span(), format!("tunnels.vxlan_ports takes at most {} ports", Tunnels::MAX_VXLAN_PORTS))
        })?;

        // [[hypervisor]]
        let mut hv_index: BTreeMap<String, usize> = BTreeMap::new();
        let mut hv_macs: HashSet<Mac> = HashSet::new();
        // Addresses name one hypervisor or VM each (IDS victims, the locator).
        let mut ip_owner: BTreeMap<IpAddr, String> = BTreeMap::new();
        let mut hypervisors = Vec::with_capacity(raw.hypervisor.len());
        for (i, h) in raw.hypervisor.into_iter().enumerate() {
            check_hypervisor_id(h.id.get_ref()).map_err(|m| at(h.id.span(), m))?;
            if hv_index.insert(h.id.get_ref().clone(), i).is_some() {
                return Err(at(h.id.span(), format!("hypervisor id `{}` is defined twice", h.id.get_ref())));
            }
            let mut macs = Vec::new();
            for m in &h.macs {
                check_unicast(*m.get_ref(), "hypervisor").map_err(|e| at(m.span(), e))?;
                if !hv_macs.insert(*m.get_ref()) {
                    return Err(at(m.span(), format!("MAC {} belongs to two hypervisors", m.get_ref())));
                }
                macs.push(*m.get_ref());
            }
            if let Some(sig) = &h.signature {
                let s = sig.get_ref();
                if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                    return Err(at(
                        sig.span(),
                        "signature must be 64 lowercase hex digits (see `vmsentry sign`)".into(),
                    ));
                }
            }
            let mut ips = Vec::with_capacity(h.ips.len());
            for ip in &h.ips {
                if let Some(other) = ip_owner.insert(*ip.get_ref(), format!("hypervisor `{}`", h.id.get_ref())) {
                    return Err(at(ip.span(), format!("address {} is also {other}'s", ip.get_ref())));
                }
                ips.push(*ip.get_ref());
            }
            hypervisors.push(HypervisorEntry {
                ram_mb: h.ram_mb,
                id: h.id.into_inner(),
                macs,
                ips,
                signature: h.signature.map(Spanned::into_inner),
            });
        }

        // [sensor]
        let sensor = match &raw.sensor.hypervisor {
            None => None,
            Some(h) => match hv_index.get(h.get_ref()) {
                Some(&i) => Some(i),
                None => return Err(at(h.span(), format!("no [[hypervisor]] has id `{}`", h.get_ref()))),
            },
        };

        // [migration]
        let m = &raw.migration;
        let mut ports = Vec::new();
        for p in &m.ports {
            let bad = |what: String| {
                at(
                    p.span(),
                    format!("migration.ports: {what} is not a TCP port (1 to 65535) or a range like \"49152-49215\""),
                )
            };
            let port = |n: i64| u16::try_from(n).ok().filter(|&n| n > 0);
            match p.get_ref() {
                raw::RawPorts::One(n) => {
                    let n = port(*n).ok_or_else(|| bad(n.to_string()))?;
                    ports.push((n, n));
                }
                raw::RawPorts::Range(r) => {
                    let bad = || bad(format!("`{r}`"));
                    let (a, b) = r.split_once('-').ok_or_else(bad)?;
                    let num = |s: &str| s.trim().parse::<i64>().ok().and_then(port).ok_or_else(bad);
                    let (a, b) = (num(a)?, num(b)?);
                    if a > b {
                        return Err(bad());
                    }
                    ports.push((a, b));
                }
                raw::RawPorts::Other(v) => return Err(bad(format!("`{v}`"))),
            }
        }
        positive(m.factor.get_ref(), "migration.factor").map_err(|e| at(m.factor.span(), e))?;
        if *m.downtime_level.get_ref() == Level::Low {
            return Err(at(m.downtime_level.span(), "migration.downtime_level must be MEDIUM or HIGH".into()));
        }
        let migration = MigrationRules {
            ports,
            factor: *m.factor.get_ref(),
            max_downtime_ms: m.max_downtime_ms,
            downtime_level: *m.downtime_level.get_ref(),
            announce_burst_ms: m.announce_burst_ms,
            clone_overlap_ms: m.clone_overlap_ms,
            stream_gap_s: m.stream_gap_s,
            require_authorization: *m.require_authorization.get_ref(),
            tokens_dir: m.tokens_dir.as_ref().map(|t| dir.join(t.get_ref())),
            gate_decisions: m.gate_decisions.iter().map(|p| dir.join(p.get_ref())).collect(),
            require_gate: *m.require_gate.get_ref(),
            gate_window_s: *m.gate_window_s.get_ref(),
            gate_grace_s: *m.gate_grace_s.get_ref(),
        };
        if migration.require_gate && migration.gate_decisions.is_empty() {
            return Err(at(
                m.require_gate.span(),
                "migration.require_gate = true needs migration.gate_decisions (the gate's decision files)".into(),
            ));
        }
        if migration.gate_window_s == 0 {
            return Err(at(m.gate_window_s.span(), "migration.gate_window_s must be at least 1".into()));
        }
        if migration.gate_grace_s > 3600 {
            return Err(at(m.gate_grace_s.span(), "migration.gate_grace_s must be at most 3600".into()));
        }
        // require_authorization needs no tokens_dir: on a hypervisor it is
        // the migration gate's setting (tokens travel in the domain XML), and
        // a sensor may learn authorizations from the gate's decisions; with
        // neither, no move is authorized.

        // [backend]
        let b = &raw.backend;
        let exec = b.exec.as_ref().map(|e| crate::action::ExecConfig {
            program: PathBuf::from(e.program.get_ref()),
            args: e.args.clone(),
            timeout: std::time::Duration::from_millis(e.timeout_ms.max(1)),
        });
        // An http(s) URL, or the error at its place.
        let http_url = |u: &Spanned<String>, what: &str| -> Result<String, RulesError> {
            let url = u.get_ref();
            if url.starts_with("http://") || url.starts_with("https://") {
                Ok(url.clone())
            } else {
                Err(at(u.span(), format!("{what} url must start with http:// or https:// (got `{url}`)")))
            }
        };
        let webhook = match &b.webhook {
            None => None,
            Some(w) => {
                let url = http_url(&w.url, "webhook")?;
                let secret =
                    read_secret(&dir.join(w.secret_file.get_ref())).map_err(|m| at(w.secret_file.span(), m))?;
                Some(crate::action::WebhookConfig {
                    url,
                    secret,
                    timeout: std::time::Duration::from_millis(w.timeout_ms.max(1)),
                })
            }
        };
        let alertmanager = match &b.alertmanager {
            None => None,
            Some(a) => {
                let url = http_url(&a.url, "alertmanager")?;
                Some(crate::action::AlertmanagerConfig {
                    url,
                    timeout: std::time::Duration::from_millis(a.timeout_ms.max(1)),
                })
            }
        };
        let libvirt = b.libvirt.as_ref().map(|l| crate::action::LibvirtConfig {
            uri: l.uri.get_ref().clone(),
            migrate_uri: l.migrate_uri.clone(),
            quarantine: match l.quarantine {
                raw::RawQuarantine::Suspend => crate::action::Quarantine::Suspend,
                raw::RawQuarantine::Destroy => crate::action::Quarantine::Destroy,
            },
            virsh: l.virsh.clone(),
            timeout: std::time::Duration::from_millis(l.timeout_ms.max(1)),
        });
        let openstack = match &b.openstack {
            None => None,
            Some(o) => {
                let secret = |f: &Spanned<String>| {
                    read_secret(&dir.join(f.get_ref()))
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .map_err(|m| at(f.span(), m))
                };
                let auth =
                    match (
                        &o.application_credential_id,
                        &o.application_credential_secret_file,
                        &o.username,
                        &o.password_file,
                        &o.project,
                    ) {
                        (Some(id), Some(s), None, None, _) => {
                            crate::action::OpenstackAuth::ApplicationCredential { id: id.clone(), secret: secret(s)? }
                        }
                        (None, None, Some(u), Some(p), Some(project)) => crate::action::OpenstackAuth::Password {
                            username: u.clone(),
                            password: secret(p)?,
                            user_domain: o.user_domain.clone(),
                            project: project.clone(),
                            project_domain: o.project_domain.clone(),
                        },
                        _ => return Err(at(
                            o.auth_url.span(),
                            "openstack needs either application_credential_id and application_credential_secret_file, \
                             or username, password_file and project"
                                .into(),
                        )),
                    };
                Some(crate::action::OpenstackConfig {
                    auth_url: o.auth_url.get_ref().clone(),
                    auth,
                    region: o.region.clone(),
                    interface: o.interface.clone(),
                    lock: o.lock,
                    timeout: std::time::Duration::from_millis(o.timeout_ms.max(1)),
                })
            }
        };
        if *b.max_attempts.get_ref() == 0 {
            return Err(at(b.max_attempts.span(), "backend.max_attempts must be at least 1".into()));
        }
        let mut routes = [*b.default.get_ref(); 3];
        for (i, r) in [&b.alert, &b.quarantine, &b.migrate].into_iter().enumerate() {
            if let Some(r) = r {
                routes[i] = *r.get_ref();
            }
        }
        for r in [Some(&b.default), b.alert.as_ref(), b.quarantine.as_ref(), b.migrate.as_ref()].into_iter().flatten() {
            let missing = match r.get_ref() {
                BackendName::Exec if exec.is_none() => Some("[backend.exec]"),
                BackendName::Webhook if webhook.is_none() => Some("[backend.webhook]"),
                BackendName::Alertmanager if alertmanager.is_none() => Some("[backend.alertmanager]"),
                BackendName::Libvirt if libvirt.is_none() => Some("[backend.libvirt]"),
                BackendName::Openstack if openstack.is_none() => Some("[backend.openstack]"),
                _ => None,
            };
            if let (Some(section), true) = (missing, routes.contains(r.get_ref())) {
                return Err(at(
                    r.span(),
                    format!("backend `{}` is used but {section} is missing", r.get_ref().as_str()),
                ));
            }
        }
        let backend = Backend {
            routes,
            exec,
            webhook,
            alertmanager,
            libvirt,
            openstack,
            max_attempts: *b.max_attempts.get_ref(),
            backoff_ms: b.backoff_ms,
            max_backoff_ms: b.max_backoff_ms.max(b.backoff_ms),
            shutdown_grace_ms: b.shutdown_grace_ms,
            journal: b.journal.as_ref().map(|j| dir.join(j.get_ref())),
        };

        let tokens = TokenStore::open(key.clone(), migration.tokens_dir.as_deref());

        // [[vm]]
        let mut vm_macs: HashSet<Mac> = HashSet::new();
        let mut vm_names: HashSet<String> = HashSet::new();
        let mut vms = Vec::with_capacity(raw.vm.len());
        for v in raw.vm {
            let mac = *v.mac.get_ref();
            check_unicast(mac, "VM").map_err(|e| at(v.mac.span(), e))?;
            if !vm_macs.insert(mac) {
                return Err(at(v.mac.span(), format!("VM MAC {mac} is listed twice")));
            }
            if hv_macs.contains(&mac) {
                return Err(at(v.mac.span(), format!("VM MAC {mac} is also a hypervisor's MAC")));
            }
            if !vm_names.insert(v.name.get_ref().clone()) {
                return Err(at(v.name.span(), format!("VM name `{}` is listed twice", v.name.get_ref())));
            }
            if let Some(r) = &v.ram_mb {
                if *r.get_ref() == 0 {
                    return Err(at(r.span(), "ram_mb must be above 0".into()));
                }
            }
            let hypervisor = match &v.hypervisor {
                None => None,
                Some(h) => match hv_index.get(h.get_ref()) {
                    Some(&i) => Some(i),
                    None => return Err(at(h.span(), format!("no [[hypervisor]] has id `{}`", h.get_ref()))),
                },
            };
            let mut ips = Vec::with_capacity(v.ips.len());
            for ip in &v.ips {
                let owner = format!("VM `{}`", v.name.get_ref());
                if let Some(other) = ip_owner.insert(*ip.get_ref(), owner) {
                    return Err(at(ip.span(), format!("address {} is also {other}'s", ip.get_ref())));
                }
                ips.push(*ip.get_ref());
            }
            vms.push(VmEntry {
                name: v.name.into_inner(),
                mac,
                ram_mb: v.ram_mb.map(Spanned::into_inner),
                hypervisor,
                ips,
                flavor: v.flavor,
            });
        }

        // [mtd], [[ids]]
        let mtd = MtdRules { mode: raw.mtd.mode, host_high_vms: raw.mtd.host_high_vms };
        let mut ids = Vec::with_capacity(raw.ids.len());
        let mut ids_paths: HashSet<PathBuf> = HashSet::new();
        for i in &raw.ids {
            if i.path.get_ref().is_empty() {
                return Err(at(i.path.span(), "ids.path must name a file".into()));
            }
            let path = dir.join(i.path.get_ref());
            if !ids_paths.insert(path.clone()) {
                return Err(at(i.path.span(), format!("ids.path `{}` is followed twice", i.path.get_ref())));
            }
            let checkpoint = i.checkpoint.as_ref().map(|c| dir.join(c.get_ref()));
            if let Some(c) = &checkpoint {
                if !ids_paths.insert(c.clone()) {
                    return Err(at(
                        i.checkpoint.as_ref().map_or(0..0, Spanned::span),
                        format!("ids.checkpoint `{}` is used twice, or is an alert file", c.display()),
                    ));
                }
            }
            ids.push(crate::ids::Input {
                path,
                format: i.format,
                checkpoint,
                from_start: i.from_start,
                min_severity: i.min_severity,
                include_sids: i.include_sids.clone(),
                exclude_sids: i.exclude_sids.clone(),
                cooldown_s: i.cooldown_s,
                victim: i.victim,
            });
        }

        Ok(Rules {
            dir: dir.to_path_buf(),
            cluster: name.into_inner(),
            key,
            window_len_ms,
            thresholds,
            rtt,
            volume,
            policy,
            limits,
            tunnels,
            sensor,
            migration,
            backend,
            storm: StormRules {
                vm_cooldown_s: raw.storm.vm_cooldown_s,
                max_actions_per_minute: raw.storm.max_actions_per_minute,
                max_migrations_per_hypervisor: raw.storm.max_migrations_per_hypervisor,
                max_migrations: raw.storm.max_migrations,
                migration_timeout_s: raw.storm.migration_timeout_s.max(1),
            },
            mtd,
            ids,
            hypervisors,
            vms,
            tokens,
        })
    }

    /// What the rules name that is not there yet: not errors (a file may
    /// appear later, a program be installed), but what `check` warns about
    /// so that replay and live hold no surprise.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if let Some(e) = &self.backend.exec {
            if let Err(why) = runnable(&e.program) {
                w.push(format!("backend.exec.program `{}` {why}: every exec action will fail", e.program.display()));
            }
        }
        for i in &self.ids {
            let dir_ok = i.path.parent().is_none_or(|d| d.as_os_str().is_empty() || d.is_dir());
            if !dir_ok {
                w.push(format!(
                    "IDS alert file {}: its directory does not exist: replay runs without it, live refuses to start",
                    i.path.display()
                ));
            } else if !i.path.exists() {
                w.push(format!(
                    "IDS alert file {} not found: replay runs without it, live waits for it to appear",
                    i.path.display()
                ));
            }
        }
        if let Some(t) = &self.migration.tokens_dir {
            if !t.is_dir() {
                w.push(format!(
                    "migration.tokens_dir {} is not a directory: no move can be authorized{}",
                    t.display(),
                    if self.migration.require_authorization { ", so every move counts as unsigned" } else { "" }
                ));
            }
        }
        if self.migration.require_authorization
            && self.migration.tokens_dir.is_none()
            && self.migration.gate_decisions.is_empty()
        {
            w.push(
                "migration.require_authorization = true with neither migration.tokens_dir nor migration.gate_decisions: \
                 a sensor can authorize no move, so every move counts as unsigned (a hypervisor's gate is fine: \
                 it reads tokens from the domain XML)"
                    .into(),
            );
        }
        w
    }

    pub fn window_len_us(&self) -> i64 {
        self.window_len_ms as i64 * 1000
    }
}

/// The rules build each stage's own configuration: a stage knows its
/// config type, never the rules file.
impl From<&Rules> for crate::detect::Config {
    fn from(r: &Rules) -> Self {
        crate::detect::Config {
            window_len_ms: r.window_len_ms,
            thresholds: r.thresholds.clone(),
            rtt: r.rtt.clone(),
            volume: r.volume.clone(),
            migration: r.migration.clone(),
            max_macs: r.limits.max_macs,
            sensor: r.sensor,
            hypervisors: r.hypervisors.clone(),
            vms: r.vms.clone(),
            tokens: r.tokens.clone(),
        }
    }
}

impl From<&Rules> for crate::policy::Config {
    fn from(r: &Rules) -> Self {
        crate::policy::Config {
            table: r.policy.clone(),
            storm: r.storm.clone(),
            hypervisors: r.hypervisors.clone(),
            vms: r.vms.clone(),
        }
    }
}

impl From<&Rules> for crate::measure::placement::PlacementConfig {
    fn from(r: &Rules) -> Self {
        crate::measure::placement::PlacementConfig {
            vms: r.vms.iter().map(|v| v.mac).collect(),
            hypervisor_macs: r.hypervisors.iter().flat_map(|h| h.macs.iter().copied()).collect(),
            sensor: r.sensor.is_some(),
            ports: r.migration.ports.clone(),
        }
    }
}

/// A secret file: refused when not a regular file, readable by group or
/// others, over [`crate::small_file::MAX_SECRET_BYTES`], or empty.
fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let (file, meta) = crate::small_file::open(path).map_err(|e| match e {
        crate::small_file::SmallFileError::Io(e) => format!("cannot read secret file {}: {e}", path.display()),
        why => format!("secret file {} {why}", path.display()),
    })?;
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o044 != 0 {
            return Err(format!(
                "secret file {} is readable by group or others (mode {mode:o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            ));
        }
    }
    let bytes = crate::small_file::read_open(file, crate::small_file::MAX_SECRET_BYTES)
        .map_err(|e| format!("secret file {} {e}", path.display()))?;
    let t = bytes.trim_ascii();
    if t.is_empty() {
        return Err(format!("secret file {} is empty", path.display()));
    }
    Ok(t.to_vec())
}

/// Whether a program can be run as `Command::new` would find it: a path
/// with a `/` as it is, a bare name on `PATH`.
fn runnable(program: &Path) -> Result<(), &'static str> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.as_os_str().to_string_lossy().contains('/') {
        return match program.exists() {
            false => Err("does not exist"),
            true if executable(program) => Ok(()),
            true => Err("is not an executable file"),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|d| executable(&d.join(program))) {
        Ok(())
    } else {
        Err("is not found on PATH")
    }
}

/// The rules' check of `cluster.name`, shared with `vmsentry sign`.
pub fn check_cluster_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('\0') {
        return Err("cluster.name must be a non-empty name without NUL bytes".into());
    }
    Ok(())
}

/// The rules' check of a hypervisor id, shared with `sign --id` and `authorize --to`.
pub fn check_hypervisor_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.contains(|c: char| c == '\0' || c.is_whitespace()) {
        return Err("hypervisor id must be non-empty, without spaces or NUL bytes".into());
    }
    Ok(())
}

/// The rules' check of a hypervisor's or a VM's MAC (`what`), shared with
/// `sign --mac` and `authorize --vm`: a unicast, non-zero address.
pub fn check_unicast(mac: Mac, what: &str) -> Result<(), String> {
    if !mac.is_unicast() || mac.is_zero() {
        return Err(format!("{what} MAC {mac} must be a unicast address"));
    }
    Ok(())
}

fn positive(v: &f64, name: &str) -> Result<(), String> {
    if v.is_finite() && *v > 0.0 {
        Ok(())
    } else {
        Err(format!("{name} must be a positive number (got {v})"))
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests;
