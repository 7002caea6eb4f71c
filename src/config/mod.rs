//! Rules: the `vmsentry.toml` schema, and the loader that builds every stage's config from it with `file:line:col` errors.
//!
//! Loading is three steps. `parse`: serde reads the TOML into `raw`
//! structs that deny unknown keys and keep the byte span of every value a
//! later check may complain about (their defaults are the stages' own
//! `Default`s). `Files::read`: the one step that reads files, the cluster
//! key and the backends' secrets (and, once the rules are valid, the move
//! tokens' used nonces). `validate`: each section's meaning (threshold
//! order, references, addresses owned once) into the section types the
//! stages own. Every error, syntactic or semantic, reads like a compiler's:
//! `rules/vmsentry.toml:14:9: medium_bps must be below high_bps (got 500000000 >= 100000000)`.

mod raw;
mod validate;

pub use crate::action::{Backend, BackendName};
use crate::decode::{Mac, Tunnels};
pub use crate::detect::location::MigrationRules;
pub use crate::detect::{RttRules, Thresholds, VolumeRules};
pub use crate::policy::{MtdRules, PolicyRule, PolicyTable, StormRules};
use crate::trust::token::TokenStore;
use crate::trust::{ClusterKey, KeyError};
pub use crate::vocab::{HypervisorEntry, VmEntry};
use raw::RawRules;
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
    /// Events held back behind moves not settled yet; past it, the oldest
    /// open move's event is written with what is known (counted).
    pub held_events: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_macs: crate::detect::DEFAULT_MAX_MACS,
            // 1024 x 8 has as many channel slots as 512 x 16 did, with half the
            // hand-overs: on a 2-vCPU VM every one of them woke a thread
            // (benches/README, "Fewer, larger batches").
            batch_size: 1024,
            // Room for VLAN tags, a tunnel and the inner headers.
            decode_bytes: 320,
            queue_batches: 8,
            action_queue: 4096,
            metrics_vms: 4096,
            rtt_flows: 65_536,
            rtt_echo_probes: 65_536,
            rtt_samples_per_window: 100_000,
            held_events: 100_000,
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

    /// Puts the running ones back into `new`, so that a reload applies
    /// the rest of it and these stay as the shards and threads were built
    /// (the detector's windows the reader's, the backends the dispatcher's).
    pub fn keep_running(&self, new: &mut Rules) {
        new.window_len_ms = self.window_len_ms;
        new.limits = self.limits.clone();
        new.tunnels = self.tunnels;
        new.ids = self.ids.clone();
        new.backend = self.backend.clone();
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
    /// anchors relative paths. Steps: `parse` the text, the loading step
    /// reads the cluster key (`Files::read`), `validate` checks meaning and
    /// builds the stages' configs, naming the secret files the validated
    /// backends need, and the loading step reads those
    /// (`SecretFiles::read_into`): a meaning error wins over a missing
    /// secret, as it always has. The move tokens are not opened here:
    /// `detect_config` does that where a detector is built, so `check`,
    /// `report` and the gate hook never touch `migration.tokens_dir`.
    pub fn from_str_in(dir: &Path, path: &Path, text: &str) -> Result<Rules, RulesError> {
        let src = Src { path, text };
        let raw = parse(&src)?;
        let files = Files::read(dir, &raw, &src)?;
        let (mut rules, secrets) = validate::rules(dir, raw, files, &src)?;
        secrets.read_into(dir, &src, &mut rules.backend)?;
        Ok(rules)
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

/// The rules text and its name, for errors at a place in it.
struct Src<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Src<'_> {
    /// The error `msg` at the byte span's start.
    fn at(&self, span: Range<usize>, msg: String) -> RulesError {
        let (line, col) = line_col(self.text, span.start);
        RulesError::At { path: self.path.to_path_buf(), line, col, msg }
    }
}

/// Syntax and schema: the text into the rules as written (unknown keys,
/// wrong types and missing required keys are errors here).
fn parse(src: &Src) -> Result<RawRules, RulesError> {
    toml::from_str(src.text).map_err(|e| src.at(e.span().unwrap_or(0..0), e.message().trim_end().replace('\n', "; ")))
}

/// The file the rules' meaning needs before validation: the cluster key,
/// read (and its mode checked) in the loading step, so validation and the
/// stages read no file.
struct Files {
    key: ClusterKey,
}

/// The secret files the validated `[backend]` uses, where each goes: read
/// by the loading step after validation, so a meaning error comes first and
/// only the secrets of the chosen authentication are read.
#[derive(Default)]
struct SecretFiles {
    webhook: Option<Spanned<String>>,
    openstack: Option<Spanned<String>>,
}

impl SecretFiles {
    fn read_into(self, dir: &Path, src: &Src, backend: &mut Backend) -> Result<(), RulesError> {
        let read = |f: &Spanned<String>| read_secret(&dir.join(f.get_ref())).map_err(|m| src.at(f.span(), m));
        if let (Some(f), Some(w)) = (&self.webhook, backend.webhook.as_mut()) {
            w.secret = read(f)?;
        }
        if let (Some(f), Some(o)) = (&self.openstack, backend.openstack.as_mut()) {
            let s = String::from_utf8_lossy(&read(f)?).into_owned();
            match &mut o.auth {
                crate::action::OpenstackAuth::ApplicationCredential { secret, .. } => *secret = s,
                crate::action::OpenstackAuth::Password { password, .. } => *password = s,
            }
        }
        Ok(())
    }
}

impl Files {
    fn read(dir: &Path, raw: &RawRules, src: &Src) -> Result<Files, RulesError> {
        let key_path = dir.join(raw.cluster.key_file.get_ref());
        let key = ClusterKey::load(&key_path).map_err(|e| match e {
            KeyError::Read { .. }
            | KeyError::TooShort { .. }
            | KeyError::Permissions { .. }
            | KeyError::Unusable { .. } => src.at(raw.cluster.key_file.span(), e.to_string()),
        })?;
        Ok(Files { key })
    }
}

impl Rules {
    /// The detector's configuration, with the move tokens of
    /// `migration.tokens_dir` opened (their used nonces read): the loading
    /// step of `run`, `replay` and `live` (and a reload), where a detector is
    /// built; nothing else reads the tokens directory.
    pub fn detect_config(&self) -> crate::detect::Config {
        let r = self;
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
            tokens: TokenStore::open(r.key.clone(), r.migration.tokens_dir.as_deref()),
        }
    }
}

/// The rules build each stage's own configuration: a stage knows its
/// config type, never the rules file.
impl From<&Rules> for crate::gate::Trust {
    fn from(r: &Rules) -> Self {
        crate::gate::Trust {
            key: r.key.clone(),
            cluster: r.cluster.clone(),
            hypervisors: r.hypervisors.clone(),
            require_authorization: r.migration.require_authorization,
        }
    }
}

impl Rules {
    /// The rules of `dir` as the migration gate reads them ([`crate::gate::LoadRules`]).
    pub fn load_for_gate(dir: &Path) -> Result<crate::gate::Trust, String> {
        Rules::load(dir).map(|r| crate::gate::Trust::from(&r)).map_err(|e| e.to_string())
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
            window_len_us: r.window_len_us(),
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
