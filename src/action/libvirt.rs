//! The `libvirt` backend: quarantine suspends (or destroys) the VM's domain, migrate live-migrates it, through `virsh`.
//!
//! Why `virsh` and not the libvirt C API (the `virt` crate): it needs no
//! libvirt development headers to build, it is what operators already run
//! and read, and each step shows in its own words in the logs. Each
//! connection URI gets one long-lived `virsh` session (stdin/stdout), so a
//! step and its check run on the same connection: after `suspend` the
//! domain must be `paused`, after `destroy` `shut off`, or the delivery
//! fails. The domain is found by the action's MAC (`domiflist` of each
//! domain). The connection URI and the migration destination URI are
//! templates: `{hypervisor}` is replaced by the registry id of the VM's
//! hypervisor, `{destination}` by the destination's.
//!
//! A domain that no interface of has the MAC, and a command that does not
//! exist, are failures not retried; every other virsh error (connection,
//! migration refused, a driver without migration) is retried.

use super::{Action, ActionKind, ActionSink, SinkError};
use crate::decode::Mac;
use crossbeam_channel::{unbounded, Receiver};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// What quarantine does to the domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quarantine {
    /// Pause it: its memory stays, for forensics (the default).
    Suspend,
    /// Stop it at once: the paper's "self-destruct".
    Destroy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LibvirtConfig {
    /// The connection to the hypervisor the VM runs on, e.g.
    /// `qemu+ssh://{hypervisor}/system`.
    pub uri: String,
    /// Where `migrate` sends it, e.g. `qemu+ssh://{destination}/system`.
    pub migrate_uri: String,
    pub quarantine: Quarantine,
    pub virsh: String,
    pub timeout: Duration,
}

impl LibvirtConfig {
    /// `backend.libvirt.migrate_uri`.
    pub const DEFAULT_MIGRATE_URI: &'static str = "qemu+ssh://{destination}/system";
    /// `backend.libvirt.virsh` (from `PATH`).
    pub const DEFAULT_VIRSH: &'static str = "virsh";
    /// `backend.libvirt.timeout_ms`, per virsh command (a live migration takes time).
    pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;
}

const NAME: &str = "libvirt";

struct Session {
    child: Child,
    stdin: ChildStdin,
    out: Receiver<u8>,
    seq: u64,
    /// Domain of each MAC, as `domiflist` showed it.
    domains: HashMap<Mac, String>,
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One command's result: its output lines, and the `error:` lines.
struct Reply {
    lines: Vec<String>,
    errors: Vec<String>,
}

impl Session {
    fn open(virsh: &str, uri: &str) -> Result<Session, SinkError> {
        // virsh writes errors on stderr; `2>&1` keeps them in order with the output.
        let mut child = Command::new("sh")
            .args(["-c", "exec \"$0\" -q -c \"$1\" 2>&1", virsh, uri])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| SinkError::Temporary { backend: NAME, msg: format!("cannot run {virsh}: {e}") })?;
        let (Some(stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(SinkError::Temporary { backend: NAME, msg: "virsh has no pipes".into() });
        };
        let (tx, out) = unbounded();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || buf[..n].iter().any(|&b| tx.send(b).is_err()) {
                    break;
                }
            }
        });
        Ok(Session { child, stdin, out, seq: 0, domains: HashMap::new() })
    }

    fn run(&mut self, cmd: &str, timeout: Duration) -> Result<Reply, SinkError> {
        self.seq += 1;
        let end = format!("__VMSENTRY_END_{}__", self.seq);
        writeln!(self.stdin, "{cmd}\necho {end}")
            .and_then(|_| self.stdin.flush())
            .map_err(|e| SinkError::Temporary { backend: NAME, msg: format!("virsh session lost: {e}") })?;
        let deadline = Instant::now() + timeout;
        let mut text = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left) {
                Ok(b) => {
                    text.push(b);
                    if text.ends_with(end.as_bytes()) && !text.ends_with(format!("echo {end}").as_bytes()) {
                        break;
                    }
                }
                Err(_) => {
                    return Err(SinkError::Temporary {
                        backend: NAME,
                        msg: format!("virsh did not answer `{cmd}` in {timeout:?}"),
                    })
                }
            }
        }
        let text = String::from_utf8_lossy(&text[..text.len() - end.len()]).into_owned();
        let mut reply = Reply { lines: Vec::new(), errors: Vec::new() };
        for line in text.lines() {
            // Interactive virsh echoes its prompt and the command.
            let line = line.trim_start_matches("virsh # ").trim();
            if line.is_empty() || line == cmd || line == format!("echo {end}") {
                continue;
            }
            if let Some(e) = line.strip_prefix("error: ") {
                reply.errors.push(e.to_string());
            } else {
                reply.lines.push(line.to_string());
            }
        }
        Ok(reply)
    }
}

pub struct LibvirtSink {
    cfg: LibvirtConfig,
    sessions: HashMap<String, Session>,
}

impl LibvirtSink {
    pub fn new(cfg: LibvirtConfig) -> Self {
        LibvirtSink { cfg, sessions: HashMap::new() }
    }

    /// Runs a command on the URI's session; a session that timed out is
    /// dropped (its output is no longer in step), so the next try starts fresh.
    fn run(&mut self, uri: &str, cmd: &str) -> Result<Reply, SinkError> {
        let timeout = self.cfg.timeout;
        let r = self.session(uri)?.run(cmd, timeout);
        if r.is_err() {
            self.sessions.remove(uri);
        }
        r
    }

    fn session(&mut self, uri: &str) -> Result<&mut Session, SinkError> {
        if !self.sessions.contains_key(uri) {
            let s = Session::open(&self.cfg.virsh, uri)?;
            self.sessions.insert(uri.to_string(), s);
        }
        self.sessions.get_mut(uri).ok_or_else(|| SinkError::Temporary { backend: NAME, msg: "no virsh session".into() })
    }

    /// The domain with an interface of this MAC.
    fn domain(&mut self, uri: &str, mac: Mac) -> Result<String, SinkError> {
        if let Some(d) = self.session(uri)?.domains.get(&mac) {
            return Ok(d.clone());
        }
        let names = self.run(uri, "list --all --name")?;
        if let Some(e) = names.errors.first() {
            return Err(SinkError::Temporary { backend: NAME, msg: format!("{uri}: {e}") });
        }
        for name in names.lines {
            let r = self.run(uri, &format!("domiflist {name}"))?;
            let has = r.lines.iter().any(|l| l.split_whitespace().any(|w| w.parse::<Mac>() == Ok(mac)));
            if has {
                self.session(uri)?.domains.insert(mac, name.clone());
                return Ok(name);
            }
        }
        Err(SinkError::Permanent { backend: NAME, msg: format!("no domain on {uri} has an interface with MAC {mac}") })
    }

    fn check(reply: &Reply, what: &str) -> Result<(), SinkError> {
        match reply.errors.first() {
            None => Ok(()),
            Some(e) if e.contains("unknown command") => {
                Err(SinkError::Permanent { backend: NAME, msg: format!("{what}: {e}") })
            }
            Some(e) => Err(SinkError::Temporary { backend: NAME, msg: format!("{what}: {e}") }),
        }
    }
}

fn fill(template: &str, hypervisor: Option<&str>, destination: Option<&str>) -> String {
    template.replace("{hypervisor}", hypervisor.unwrap_or("")).replace("{destination}", destination.unwrap_or(""))
}

impl ActionSink for LibvirtSink {
    fn name(&self) -> &'static str {
        NAME
    }

    fn deliver(&mut self, a: &Action) -> Result<(), SinkError> {
        let uri = fill(&self.cfg.uri, a.hypervisor.as_deref(), a.destination.as_deref());
        match a.kind {
            // Nothing to change for an alert.
            ActionKind::Alert => Ok(()),
            ActionKind::Quarantine => {
                let dom = self.domain(&uri, a.vm)?;
                let (cmd, state) = match self.cfg.quarantine {
                    Quarantine::Suspend => ("suspend", "paused"),
                    Quarantine::Destroy => ("destroy", "shut off"),
                };
                Self::check(&self.run(&uri, &format!("{cmd} {dom}"))?, &format!("{cmd} {dom}"))?;
                let st = self.run(&uri, &format!("domstate {dom}"))?;
                Self::check(&st, &format!("domstate {dom}"))?;
                let now = st.lines.first().cloned().unwrap_or_default();
                if now != state {
                    return Err(SinkError::Temporary {
                        backend: NAME,
                        msg: format!("{dom} is `{now}` after {cmd}, not `{state}`"),
                    });
                }
                eprintln!("vmsentry: libvirt: {cmd} {dom} ({}) on {uri}: now {now}", a.vm);
                Ok(())
            }
            ActionKind::Migrate => {
                let dom = self.domain(&uri, a.vm)?;
                let dest = fill(&self.cfg.migrate_uri, a.hypervisor.as_deref(), a.destination.as_deref());
                Self::check(
                    &self.run(&uri, &format!("migrate --live {dom} {dest}"))?,
                    &format!("migrate {dom} to {dest}"),
                )?;
                eprintln!("vmsentry: libvirt: migrated {dom} ({}) from {uri} to {dest}", a.vm);
                self.session(&uri)?.domains.remove(&a.vm);
                Ok(())
            }
        }
    }
}
