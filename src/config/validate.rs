//! Validation: the rules as written (`raw`) into the stages' configs, one section at a time; no file is read here.

use super::raw::{self, RawBackend, RawHypervisor, RawIds, RawLimits, RawMigration, RawRtt, RawRules};
use super::raw::{RawThresholds, RawTunnels, RawVm, RawVolume, RawWindow};
use super::{check_cluster_name, check_hypervisor_id, check_unicast, is_default, positive, Files, SecretFiles, Src};
use super::{Backend, BackendName, HypervisorEntry, Limits, MigrationRules, MtdRules, PolicyTable, Rules};
use super::{RttRules, RulesError, StormRules, Thresholds, VmEntry, VolumeRules, MAX_DECODE_BYTES, MIN_DECODE_BYTES};
use crate::decode::{Mac, Tunnels};
use crate::detect::Level;
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Checks every section's meaning and builds the rules from the text
/// (`raw`) and the key the loading step read (`files`); the secret files
/// the backends need are named for the loading step to read next.
pub(super) fn rules(dir: &Path, raw: RawRules, files: Files, src: &Src) -> Result<(Rules, SecretFiles), RulesError> {
    let name = raw.cluster.name;
    check_cluster_name(name.get_ref()).map_err(|m| src.at(name.span(), m))?;
    let window_len_ms = window(&raw.window, src)?;
    let thresholds = thresholds(&raw.thresholds, src)?;
    let rtt = rtt(&raw.rtt, src)?;
    let volume = volume(&raw.volume, src)?;
    let policy = PolicyTable { medium: raw.policy.medium.to_rule(), high: raw.policy.high.to_rule() };
    let limits = limits(&raw.limits, src)?;
    let tunnels = tunnels(&raw.tunnels, src)?;
    let mut names = Names::default();
    let hypervisors = hypervisors(raw.hypervisor, &mut names, src)?;
    let sensor = match &raw.sensor.hypervisor {
        None => None,
        Some(h) => Some(names.hypervisor(h, src)?),
    };
    let migration = migration(&raw.migration, dir, src)?;
    let (backend, secrets) = backend(&raw.backend, dir, src)?;
    let vms = vms(raw.vm, &mut names, src)?;
    let mtd = MtdRules { mode: raw.mtd.mode, host_high_vms: raw.mtd.host_high_vms };
    let ids = ids(&raw.ids, dir, src)?;
    let rules = Rules {
        dir: dir.to_path_buf(),
        cluster: name.into_inner(),
        key: files.key,
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
    };
    Ok((rules, secrets))
}

/// What the inventory names so far: hypervisor ids, hypervisor MACs, and
/// the owner of every address (addresses name one hypervisor or VM each:
/// IDS victims, the locator).
#[derive(Default)]
struct Names {
    hv_index: BTreeMap<String, usize>,
    hv_macs: HashSet<Mac>,
    ip_owner: BTreeMap<IpAddr, String>,
}

impl Names {
    /// The index of a `[[hypervisor]]` named by id, or the error at its place.
    fn hypervisor(&self, h: &Spanned<String>, src: &Src) -> Result<usize, RulesError> {
        match self.hv_index.get(h.get_ref()) {
            Some(&i) => Ok(i),
            None => Err(src.at(h.span(), format!("no [[hypervisor]] has id `{}`", h.get_ref()))),
        }
    }
}

fn window(w: &RawWindow, src: &Src) -> Result<u64, RulesError> {
    // [window]
    let window_len_ms = *w.length_ms.get_ref();
    if window_len_ms == 0 || window_len_ms > 3_600_000 {
        return Err(
            src.at(w.length_ms.span(), format!("window.length_ms must be between 1 and 3600000 (got {window_len_ms})"))
        );
    }
    Ok(window_len_ms)
}

fn thresholds(t: &RawThresholds, src: &Src) -> Result<Thresholds, RulesError> {
    // [thresholds]
    for (lo, hi, lo_name, hi_name) in
        [(&t.medium_bps, &t.high_bps, "medium_bps", "high_bps"), (&t.medium_pps, &t.high_pps, "medium_pps", "high_pps")]
    {
        if *lo.get_ref() == 0 {
            return Err(src.at(lo.span(), format!("{lo_name} must be above 0")));
        }
        if lo.get_ref() >= hi.get_ref() {
            // Point at the value that was written: with only one of the
            // two set, the other is its default and has no place.
            let (span, note) = match (is_default(lo.span()), is_default(hi.span())) {
                (true, false) => (hi.span(), format!("; {lo_name} is its default, set it too")),
                (false, true) => (lo.span(), format!("; {hi_name} is its default, set it too")),
                _ => (lo.span(), String::new()),
            };
            return Err(src.at(
                span,
                format!("{lo_name} must be below {hi_name} (got {} >= {}){note}", lo.get_ref(), hi.get_ref()),
            ));
        }
    }
    if *t.clear_windows.get_ref() == 0 {
        return Err(src.at(t.clear_windows.span(), "clear_windows must be at least 1".into()));
    }
    Ok(Thresholds {
        medium_bps: *t.medium_bps.get_ref(),
        high_bps: *t.high_bps.get_ref(),
        medium_pps: *t.medium_pps.get_ref(),
        high_pps: *t.high_pps.get_ref(),
        clear_windows: *t.clear_windows.get_ref(),
    })
}

fn rtt(r: &RawRtt, src: &Src) -> Result<RttRules, RulesError> {
    // [rtt]
    positive(r.peak_ms.get_ref(), "rtt.peak_ms").map_err(|m| src.at(r.peak_ms.span(), m))?;
    if let Some(f) = &r.peak_factor {
        if !(f.get_ref().is_finite() && *f.get_ref() > 1.0) {
            return Err(src.at(f.span(), format!("rtt.peak_factor must be above 1.0 (got {})", f.get_ref())));
        }
    }
    if *r.level.get_ref() == Level::Low {
        return Err(src.at(r.level.span(), "rtt.level must be MEDIUM or HIGH: LOW would raise nothing".into()));
    }
    for (v, name) in [(&r.probe_timeout_ms, "rtt.probe_timeout_ms"), (&r.flow_timeout_s, "rtt.flow_timeout_s")] {
        if *v.get_ref() == 0 {
            return Err(src.at(v.span(), format!("{name} must be at least 1")));
        }
    }
    Ok(RttRules {
        enabled: r.enabled,
        peak_ms: *r.peak_ms.get_ref(),
        peak_factor: r.peak_factor.as_ref().map(|f| *f.get_ref()),
        max_peaks: r.max_peaks,
        level: *r.level.get_ref(),
        probe_timeout_ms: *r.probe_timeout_ms.get_ref(),
        flow_timeout_s: *r.flow_timeout_s.get_ref(),
    })
}

fn volume(v: &RawVolume, src: &Src) -> Result<VolumeRules, RulesError> {
    // [volume]
    positive(v.factor.get_ref(), "volume.factor").map_err(|m| src.at(v.factor.span(), m))?;
    if *v.horizon_s.get_ref() == 0 {
        return Err(src.at(v.horizon_s.span(), "volume.horizon_s must be at least 1".into()));
    }
    Ok(VolumeRules { factor: *v.factor.get_ref(), horizon_s: *v.horizon_s.get_ref() })
}

fn limits(l: &RawLimits, src: &Src) -> Result<Limits, RulesError> {
    // [limits]
    let decode_bytes = *l.decode_bytes.get_ref();
    if !(MIN_DECODE_BYTES..=MAX_DECODE_BYTES).contains(&decode_bytes) {
        return Err(src.at(
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
        (&l.held_events, "limits.held_events"),
    ] {
        if *v.get_ref() == 0 {
            return Err(src.at(v.span(), format!("{name} must be at least 1")));
        }
    }
    Ok(Limits {
        max_macs: *l.max_macs.get_ref(),
        batch_size: *l.batch_size.get_ref(),
        decode_bytes,
        queue_batches: *l.queue_batches.get_ref(),
        action_queue: *l.action_queue.get_ref(),
        metrics_vms: *l.metrics_vms.get_ref(),
        rtt_flows: *l.rtt_flows.get_ref(),
        rtt_echo_probes: *l.rtt_echo_probes.get_ref(),
        rtt_samples_per_window: *l.rtt_samples_per_window.get_ref(),
        held_events: *l.held_events.get_ref(),
    })
}

fn tunnels(t: &RawTunnels, src: &Src) -> Result<Tunnels, RulesError> {
    // [tunnels]
    let vx = &t.vxlan_ports;
    Tunnels::new(vx.get_ref(), t.geneve_port).ok_or_else(|| {
        src.at(vx.span(), format!("tunnels.vxlan_ports takes at most {} ports", Tunnels::MAX_VXLAN_PORTS))
    })
}

fn hypervisors(raw: Vec<RawHypervisor>, names: &mut Names, src: &Src) -> Result<Vec<HypervisorEntry>, RulesError> {
    // [[hypervisor]]
    let mut hypervisors = Vec::with_capacity(raw.len());
    for (i, h) in raw.into_iter().enumerate() {
        check_hypervisor_id(h.id.get_ref()).map_err(|m| src.at(h.id.span(), m))?;
        if names.hv_index.insert(h.id.get_ref().clone(), i).is_some() {
            return Err(src.at(h.id.span(), format!("hypervisor id `{}` is defined twice", h.id.get_ref())));
        }
        let mut macs = Vec::new();
        for m in &h.macs {
            check_unicast(*m.get_ref(), "hypervisor").map_err(|e| src.at(m.span(), e))?;
            if !names.hv_macs.insert(*m.get_ref()) {
                return Err(src.at(m.span(), format!("MAC {} belongs to two hypervisors", m.get_ref())));
            }
            macs.push(*m.get_ref());
        }
        if let Some(sig) = &h.signature {
            let s = sig.get_ref();
            if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                return Err(
                    src.at(sig.span(), "signature must be 64 lowercase hex digits (see `vmsentry sign`)".into())
                );
            }
        }
        let mut ips = Vec::with_capacity(h.ips.len());
        for ip in &h.ips {
            if let Some(other) = names.ip_owner.insert(*ip.get_ref(), format!("hypervisor `{}`", h.id.get_ref())) {
                return Err(src.at(ip.span(), format!("address {} is also {other}'s", ip.get_ref())));
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
    Ok(hypervisors)
}

fn migration(m: &RawMigration, dir: &Path, src: &Src) -> Result<MigrationRules, RulesError> {
    // [migration]
    let mut ports = Vec::new();
    for p in &m.ports {
        let bad = |what: String| {
            src.at(
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
    positive(m.factor.get_ref(), "migration.factor").map_err(|e| src.at(m.factor.span(), e))?;
    if *m.downtime_level.get_ref() == Level::Low {
        return Err(src.at(m.downtime_level.span(), "migration.downtime_level must be MEDIUM or HIGH".into()));
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
        return Err(src.at(
            m.require_gate.span(),
            "migration.require_gate = true needs migration.gate_decisions (the gate's decision files)".into(),
        ));
    }
    if migration.gate_window_s == 0 {
        return Err(src.at(m.gate_window_s.span(), "migration.gate_window_s must be at least 1".into()));
    }
    if migration.gate_grace_s > 3600 {
        return Err(src.at(m.gate_grace_s.span(), "migration.gate_grace_s must be at most 3600".into()));
    }
    // require_authorization needs no tokens_dir: on a hypervisor it is
    // the migration gate's setting (tokens travel in the domain XML), and
    // a sensor may learn authorizations from the gate's decisions; with
    // neither, no move is authorized.
    Ok(migration)
}

fn backend(b: &RawBackend, dir: &Path, src: &Src) -> Result<(Backend, SecretFiles), RulesError> {
    // [backend]; each secret is empty until the loading step reads the file named in `secrets`.
    let mut secrets = SecretFiles::default();
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
            Err(src.at(u.span(), format!("{what} url must start with http:// or https:// (got `{url}`)")))
        }
    };
    let webhook = match &b.webhook {
        None => None,
        Some(w) => {
            let url = http_url(&w.url, "webhook")?;
            secrets.webhook = Some(w.secret_file.clone());
            Some(crate::action::WebhookConfig {
                url,
                secret: Vec::new(),
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
            let auth = match (
                &o.application_credential_id,
                &o.application_credential_secret_file,
                &o.username,
                &o.password_file,
                &o.project,
            ) {
                (Some(id), Some(s), None, None, _) => {
                    secrets.openstack = Some(s.clone());
                    crate::action::OpenstackAuth::ApplicationCredential { id: id.clone(), secret: String::new() }
                }
                (None, None, Some(u), Some(p), Some(project)) => crate::action::OpenstackAuth::Password {
                    username: u.clone(),
                    password: {
                        secrets.openstack = Some(p.clone());
                        String::new()
                    },
                    user_domain: o.user_domain.clone(),
                    project: project.clone(),
                    project_domain: o.project_domain.clone(),
                },
                _ => {
                    return Err(src.at(
                        o.auth_url.span(),
                        "openstack needs either application_credential_id and application_credential_secret_file, \
                         or username, password_file and project"
                            .into(),
                    ))
                }
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
        return Err(src.at(b.max_attempts.span(), "backend.max_attempts must be at least 1".into()));
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
            return Err(
                src.at(r.span(), format!("backend `{}` is used but {section} is missing", r.get_ref().as_str()))
            );
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
    Ok((backend, secrets))
}

fn vms(raw: Vec<RawVm>, names: &mut Names, src: &Src) -> Result<Vec<VmEntry>, RulesError> {
    // [[vm]]
    let mut vm_macs: HashSet<Mac> = HashSet::new();
    let mut vm_names: HashSet<String> = HashSet::new();
    let mut vms = Vec::with_capacity(raw.len());
    for v in raw {
        let mac = *v.mac.get_ref();
        check_unicast(mac, "VM").map_err(|e| src.at(v.mac.span(), e))?;
        if !vm_macs.insert(mac) {
            return Err(src.at(v.mac.span(), format!("VM MAC {mac} is listed twice")));
        }
        if names.hv_macs.contains(&mac) {
            return Err(src.at(v.mac.span(), format!("VM MAC {mac} is also a hypervisor's MAC")));
        }
        if !vm_names.insert(v.name.get_ref().clone()) {
            return Err(src.at(v.name.span(), format!("VM name `{}` is listed twice", v.name.get_ref())));
        }
        if let Some(r) = &v.ram_mb {
            if *r.get_ref() == 0 {
                return Err(src.at(r.span(), "ram_mb must be above 0".into()));
            }
        }
        let hypervisor = match &v.hypervisor {
            None => None,
            Some(h) => Some(names.hypervisor(h, src)?),
        };
        let mut ips = Vec::with_capacity(v.ips.len());
        for ip in &v.ips {
            let owner = format!("VM `{}`", v.name.get_ref());
            if let Some(other) = names.ip_owner.insert(*ip.get_ref(), owner) {
                return Err(src.at(ip.span(), format!("address {} is also {other}'s", ip.get_ref())));
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
    Ok(vms)
}

fn ids(raw: &[RawIds], dir: &Path, src: &Src) -> Result<Vec<crate::ids::Input>, RulesError> {
    // [[ids]]
    let mut ids = Vec::with_capacity(raw.len());
    let mut ids_paths: HashSet<PathBuf> = HashSet::new();
    for i in raw {
        if i.path.get_ref().is_empty() {
            return Err(src.at(i.path.span(), "ids.path must name a file".into()));
        }
        let path = dir.join(i.path.get_ref());
        if !ids_paths.insert(path.clone()) {
            return Err(src.at(i.path.span(), format!("ids.path `{}` is followed twice", i.path.get_ref())));
        }
        let checkpoint = i.checkpoint.as_ref().map(|c| dir.join(c.get_ref()));
        if let Some(c) = &checkpoint {
            if !ids_paths.insert(c.clone()) {
                return Err(src.at(
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
    Ok(ids)
}
