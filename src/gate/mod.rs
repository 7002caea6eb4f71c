//! The migration gate: libvirt's `qemu` hook on a destination hypervisor, refusing a live migration before any page moves.
//!
//! libvirt runs `/etc/libvirt/hooks/qemu DOMAIN migrate begin -` on the
//! destination with the incoming domain XML on standard input before it
//! prepares the domain; a non-zero exit cancels the migration. The gate
//! allows it only when this host (`hypervisor` of `gate.toml`) is a signed
//! hypervisor of the cluster in the rules' registry and, with
//! `migration.require_authorization`, the XML's `<metadata>` carries a valid,
//! unexpired token from `vmsentry authorize` for one of the domain's MACs to
//! this host, whose nonce it uses up durably. This host's signature is
//! judged before the source's XML is read, and nothing wrong with the XML
//! (`bad_xml`) is ever opened by `fail_closed = false`: only local failures
//! are. Every decision is appended to a JSON-lines file ([`record`]), with
//! an HMAC under the cluster key, that the sensor follows. Any other hook
//! call drains its input and exits 0 without reading any configuration.
//!
//! Nothing is ever written to standard output: libvirt would take it as a
//! replacement domain XML.

pub mod domain;
pub mod record;

use crate::trust::token::{consume_nonce, Token};
use crate::trust::ClusterKey;
use crate::trust::Verdict;
use crate::vocab::PacketTime;
use domain::Domain;
use record::{GateReason, GateRecord};
use serde::Deserialize;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Where the gate's configuration is unless `--config` says otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/vmsentry/gate.toml";
/// Exit status of a refused migration (libvirt cancels on any non-zero).
pub const EXIT_REFUSED: u8 = 1;
/// Exit status when the configuration is unusable (the migration is refused too).
pub const EXIT_BAD_CONFIG: u8 = 2;
/// The smallest `max_xml_bytes` accepted.
pub const MIN_XML_BYTES: u64 = 1024;
/// How long a pass-through call waits for its input to end.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Input a pass-through call drains at most.
const DRAIN_MAX_BYTES: u64 = 64 << 20;

/// `gate.toml`. Relative paths are relative to the file's directory.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateConfig {
    /// The rules directory: cluster key, hypervisor registry, `[migration]`.
    pub rules: PathBuf,
    /// This host's id in the registry.
    pub hypervisor: String,
    /// The MAC this host's signature must verify for (default: any of its registered MACs).
    #[serde(default)]
    pub mac: Option<String>,
    /// Default `/var/lib/vmsentry/gate-decisions.jsonl`.
    #[serde(default = "d_decisions")]
    pub decisions: PathBuf,
    /// Default `/var/lib/vmsentry/gate-used-tokens`: the used-nonce file.
    #[serde(default = "d_used_tokens")]
    pub used_tokens: PathBuf,
    /// Default true: an error refuses the migration.
    #[serde(default = "d_true")]
    pub fail_closed: bool,
    /// Default 2000 ms: a decision not made by then refuses the migration.
    #[serde(default = "d_timeout_ms")]
    pub timeout_ms: u64,
    /// Default 4 MiB: a larger domain XML is an error.
    #[serde(default = "d_max_xml_bytes")]
    pub max_xml_bytes: u64,
}
fn d_decisions() -> PathBuf {
    PathBuf::from("/var/lib/vmsentry/gate-decisions.jsonl")
}
fn d_used_tokens() -> PathBuf {
    PathBuf::from("/var/lib/vmsentry/gate-used-tokens")
}
fn d_true() -> bool {
    true
}
fn d_timeout_ms() -> u64 {
    2000
}
fn d_max_xml_bytes() -> u64 {
    4 << 20
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct GateConfig {
    pub rules_dir: PathBuf,
    pub hypervisor: String,
    pub mac: Option<crate::decode::Mac>,
    pub decisions: PathBuf,
    pub used_tokens: PathBuf,
    pub fail_closed: bool,
    pub timeout: Duration,
    pub max_xml_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("{0}")]
    Rules(String),
    #[error("reading the domain XML from standard input: {0}")]
    Stdin(std::io::Error),
    #[error("the domain XML is larger than max_xml_bytes ({0} bytes)")]
    TooLarge(u64),
    #[error("the domain XML is not UTF-8")]
    NotUtf8,
    #[error(transparent)]
    Domain(#[from] domain::DomainError),
    #[error("the used-token file {path}: {source}")]
    Used {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl GateConfig {
    pub fn load(path: &Path) -> Result<GateConfig, GateError> {
        // As the rules' files: regular, small, and never a FIFO that would hold libvirt.
        let read_err = |e: crate::small_file::SmallFileError| match e {
            crate::small_file::SmallFileError::Io(source) => source,
            e => std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
        };
        let bytes = crate::small_file::read(path, 1 << 20)
            .map_err(|e| GateError::Read { path: path.into(), source: read_err(e) })?;
        let text = String::from_utf8(bytes).map_err(|e| GateError::Read {
            path: path.into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
        })?;
        let at = |msg: String| GateError::Config { path: path.into(), msg };
        let raw: RawGateConfig = toml::from_str(&text).map_err(|e| {
            let (line, col) = e.span().map_or((0, 0), |s| line_col(&text, s.start));
            at(format!("{line}:{col}: {}", e.message().trim_end()))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mac = match raw.mac {
            Some(m) => Some(m.parse().map_err(|_| at(format!("mac `{m}` is not a MAC address")))?),
            None => None,
        };
        if raw.hypervisor.is_empty() {
            return Err(at("hypervisor must name this host's registry id".into()));
        }
        if raw.max_xml_bytes < MIN_XML_BYTES {
            return Err(at(format!(
                "max_xml_bytes must be at least {MIN_XML_BYTES} (got {}); a domain XML is rarely under 1 KiB",
                raw.max_xml_bytes
            )));
        }
        if raw.timeout_ms == 0 || raw.timeout_ms > 60_000 {
            return Err(at(format!("timeout_ms must be 1..=60000 (got {})", raw.timeout_ms)));
        }
        Ok(GateConfig {
            rules_dir: base.join(raw.rules),
            hypervisor: raw.hypervisor,
            mac,
            decisions: base.join(raw.decisions),
            used_tokens: base.join(raw.used_tokens),
            fail_closed: raw.fail_closed,
            timeout: Duration::from_millis(raw.timeout_ms),
            max_xml_bytes: raw.max_xml_bytes,
        })
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The hook's arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub domain: String,
    pub operation: String,
    pub sub_operation: String,
    pub extra: String,
}

impl Call {
    /// The one call the gate decides; every other passes through.
    pub fn is_migrate_begin(&self) -> bool {
        self.operation == "migrate" && self.sub_operation == "begin"
    }
}

/// What the gate answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub exit: u8,
    /// The record written (none for pass-through calls).
    pub record: Option<GateRecord>,
}

/// What the gate needs of the rules: the cluster's key, name and
/// hypervisors, and whether a move needs a token.
pub struct Trust {
    pub key: ClusterKey,
    pub cluster: String,
    pub hypervisors: Vec<crate::vocab::HypervisorEntry>,
    pub require_authorization: bool,
}

/// Loads the rules of a directory (`rules_dir` of `gate.toml`) into what
/// the gate needs; the error is the rules' message (`file:line:col: ...`).
/// The binary passes the rules loader (`config`), which the gate is below.
pub type LoadRules = fn(&Path) -> Result<Trust, String>;

/// Runs one hook call: `config` is `gate.toml`, `input` libvirt's standard input,
/// `load` reads the rules (each call reads them afresh).
/// Messages go to stderr (libvirt shows them in the failed migration's error).
pub fn run(config: &Path, call: &Call, input: impl Read + Send + 'static, load: LoadRules) -> Answer {
    if !call.is_migrate_begin() {
        // Read what libvirt wrote, so it never waits on a full pipe, but
        // never wait on it for long either.
        let (tx, rx) = crossbeam_channel::bounded(1);
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        if std::thread::Builder::new()
            .name("vmsentry-gate-drain".into())
            .spawn(move || {
                let _ = tx.send(read_bounded(input, DRAIN_MAX_BYTES, deadline).is_ok());
            })
            .is_ok()
        {
            let _ = rx.recv_deadline(deadline);
        }
        return Answer { exit: 0, record: None };
    }
    let started = Instant::now();
    let cfg = match GateConfig::load(config) {
        Ok(c) => c,
        Err(e) => {
            // Without a config there is neither a host to vouch for nor a
            // fail_closed = false to honour: refuse.
            eprintln!("vmsentry gate: refusing the migration of {}: {e}", call.domain);
            return Answer { exit: EXIT_BAD_CONFIG, record: None };
        }
    };
    let deadline = started + cfg.timeout;
    let (tx, rx) = crossbeam_channel::bounded(1);
    let c2 = cfg.clone();
    // The cluster key, as soon as the worker has it: a record is signed with
    // it even when the worker then runs out of time.
    let key: Arc<OnceLock<ClusterKey>> = Arc::default();
    let k2 = key.clone();
    let worker = std::thread::Builder::new().name("vmsentry-gate".into()).spawn(move || {
        let r = decide(&c2, input, deadline, &k2, load);
        let _ = tx.send(r);
    });
    let mut decision = match worker {
        Ok(_) => match rx.recv_deadline(deadline) {
            Ok(d) => d,
            Err(_) => Decision {
                reason: GateReason::Timeout,
                detail: Some(format!("no decision within {} ms", cfg.timeout.as_millis())),
                ..Decision::empty()
            },
        },
        Err(e) => Decision { reason: GateReason::Error, detail: Some(e.to_string()), ..Decision::empty() },
    };
    // Only local failures (`Error`: the rules, the used-token store) open
    // with fail_closed = false; what the source sent is judged on its merits.
    if decision.reason == GateReason::Error && !cfg.fail_closed {
        decision.reason = GateReason::FailOpen;
    }
    let allowed = matches!(decision.reason, GateReason::Signed | GateReason::Authorized | GateReason::FailOpen);
    let mut rec = GateRecord {
        ts: PacketTime::now(),
        allowed,
        reason: decision.reason,
        detail: decision.detail,
        domain: call.domain.clone(),
        uuid: decision.uuid,
        vms: decision.macs,
        host: cfg.hypervisor.clone(),
        nonce: decision.nonce,
        elapsed_us: started.elapsed().as_micros() as u64,
        mac: None,
    };
    let sign = |rec: &mut GateRecord| {
        if let Some(k) = key.get() {
            rec.sign(k);
        }
    };
    sign(&mut rec);
    if let Err(e) = rec.append(&cfg.decisions) {
        eprintln!("vmsentry gate: cannot write the decision to {}: {e}", cfg.decisions.display());
        if rec.allowed && cfg.fail_closed {
            // An allowed move the sensor cannot see approved would be flagged
            // as ungated anyway; refuse rather than move unrecorded.
            rec.allowed = false;
            rec.reason = GateReason::Error;
            rec.detail = Some(format!("cannot write the decision to {}: {e}", cfg.decisions.display()));
            sign(&mut rec);
        }
    }
    if !rec.allowed {
        eprintln!(
            "vmsentry gate: refusing the migration of {} to {}: {}{}",
            call.domain,
            cfg.hypervisor,
            rec.reason.as_str(),
            rec.detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default()
        );
    } else if rec.reason == GateReason::FailOpen {
        eprintln!(
            "vmsentry gate: allowing the migration of {} although the gate failed (fail_closed = false): {}",
            call.domain,
            rec.detail.as_deref().unwrap_or("")
        );
    }
    Answer { exit: if rec.allowed { 0 } else { EXIT_REFUSED }, record: Some(rec) }
}

/// The decision before it is recorded.
struct Decision {
    reason: GateReason,
    detail: Option<String>,
    uuid: Option<String>,
    macs: Vec<crate::decode::Mac>,
    nonce: Option<String>,
}

impl Decision {
    fn empty() -> Decision {
        Decision { reason: GateReason::Error, detail: None, uuid: None, macs: Vec::new(), nonce: None }
    }
}

fn decide(
    cfg: &GateConfig,
    input: impl Read,
    deadline: Instant,
    key: &OnceLock<ClusterKey>,
    load: LoadRules,
) -> Decision {
    let mut d = Decision::empty();
    match judge(cfg, input, deadline, key, load, &mut d) {
        Ok((reason, detail)) => {
            d.reason = reason;
            d.detail = detail;
        }
        Err(e) => {
            // Running out of time is a timeout whatever fail_closed says.
            let timed_out = match &e {
                GateError::Used { source: io, .. } => io.kind() == std::io::ErrorKind::TimedOut,
                _ => false,
            };
            d.reason = if timed_out { GateReason::Timeout } else { GateReason::Error };
            d.detail = Some(e.to_string());
        }
    }
    d
}

/// Reads and parses the domain XML. Every error is the input's: a refusal.
fn read_domain(cfg: &GateConfig, input: impl Read, deadline: Instant) -> Result<Domain, GateError> {
    let bytes = read_bounded(input, cfg.max_xml_bytes, deadline)?;
    let xml = std::str::from_utf8(&bytes).map_err(|_| GateError::NotUtf8)?;
    Ok(Domain::parse(xml)?)
}

/// `Err` only for local failures (the rules, the used-token store): the
/// ones `fail_closed = false` may open. This host's signature is judged
/// before the source's XML is read, so nothing in it can open the gate.
fn judge(
    cfg: &GateConfig,
    input: impl Read,
    deadline: Instant,
    key: &OnceLock<ClusterKey>,
    load: LoadRules,
    d: &mut Decision,
) -> Result<(GateReason, Option<String>), GateError> {
    let rules = load(&cfg.rules_dir).map_err(GateError::Rules)?;
    let _ = key.set(rules.key.clone());
    let registry = crate::trust::Registry::build(&rules.key, &rules.cluster, &rules.hypervisors);
    let verdict = match registry.entries().iter().find(|e| e.id == cfg.hypervisor) {
        None => Verdict::Unknown,
        Some(e) => match cfg.mac {
            Some(m) => e.verdict_for_mac(m),
            None => e.verdict(),
        },
    };
    if !verdict.is_signed() {
        let why = match verdict {
            Verdict::Unknown => format!("`{}` is not in the registry of cluster `{}`", cfg.hypervisor, rules.cluster),
            _ => format!("the signature of `{}` does not verify", cfg.hypervisor),
        };
        // Refused already; the XML only names the domain in the record.
        if let Ok(dom) = read_domain(cfg, input, deadline) {
            d.uuid = dom.uuid;
            d.macs = dom.macs;
        }
        return Ok((GateReason::UnsignedHost, Some(why)));
    }
    let dom = match read_domain(cfg, input, deadline) {
        Ok(dom) => dom,
        Err(GateError::Stdin(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
            return Ok((GateReason::Timeout, Some(GateError::Stdin(e).to_string())))
        }
        Err(e) => return Ok((GateReason::BadXml, Some(e.to_string()))),
    };
    d.uuid = dom.uuid.clone();
    d.macs = dom.macs.clone();
    if !rules.require_authorization {
        return Ok((GateReason::Signed, None));
    }
    let Some(text) = dom.token else {
        return Ok((GateReason::NoToken, Some("no <vms:authorization> in the domain's metadata".into())));
    };
    let token = match Token::parse(&text) {
        Ok(t) => t,
        Err(e) => return Ok((GateReason::TokenMalformed, Some(e.to_string()))),
    };
    d.nonce = Some(token.nonce.clone());
    let now_s = PacketTime::now().as_micros().div_euclid(1_000_000);
    if let Err(r) = token.check(&rules.key, &dom.macs, &cfg.hypervisor, now_s) {
        let reason = match r {
            crate::trust::token::Refusal::Forged => GateReason::TokenForged,
            crate::trust::token::Refusal::OtherVm => GateReason::TokenOtherVm,
            crate::trust::token::Refusal::OtherHost => GateReason::TokenOtherHost,
            crate::trust::token::Refusal::Expired => GateReason::TokenExpired,
        };
        let detail = match r {
            crate::trust::token::Refusal::Forged => "its signature does not verify with the cluster key".to_string(),
            crate::trust::token::Refusal::OtherVm => {
                format!("it is for VM {}, not one of this domain's MACs", token.vm)
            }
            crate::trust::token::Refusal::OtherHost => format!("it is for `{}`, not this host", token.to),
            crate::trust::token::Refusal::Expired => format!("it expired at {}", token.expires),
        };
        return Ok((reason, Some(detail)));
    }
    let fresh = consume_nonce(&cfg.used_tokens, &token.nonce, deadline)
        .map_err(|source| GateError::Used { path: cfg.used_tokens.clone(), source })?;
    if !fresh {
        return Ok((GateReason::TokenReplayed, Some(format!("nonce {} was used already", token.nonce))));
    }
    Ok((GateReason::Authorized, None))
}

/// Reads at most `max` bytes (more is an error) until end of input or `deadline`.
fn read_bounded(input: impl Read, max: u64, deadline: Instant) -> Result<Vec<u8>, GateError> {
    let mut buf = Vec::new();
    // A blocking read cannot be cut short from here; the caller's deadline
    // (the worker thread) bounds it, and this check stops a slow trickle.
    let mut limited = input.take(max + 1);
    let mut chunk = [0u8; 64 * 1024];
    loop {
        if Instant::now() > deadline {
            return Err(GateError::Stdin(std::io::Error::new(std::io::ErrorKind::TimedOut, "input not ended in time")));
        }
        match limited.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(GateError::Stdin(e)),
        }
    }
    if buf.len() as u64 > max {
        return Err(GateError::TooLarge(max));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests;
