//! The `exec` backend: runs a program (argv, no shell) with the action as arguments and as JSON on stdin.
//!
//! The program is run as `PROGRAM ARGS... --id ID --action KIND --vm MAC
//! --level LEVEL --reason REASON [--vm-name NAME] [--hypervisor ID]
//! [--destination ID]`, with the action's JSON on stdin. Exit status 0 is
//! success; 75 (EX_TEMPFAIL) asks for a retry; any other status is a failure
//! that is not retried. A program still running after the timeout is killed
//! and the attempt is retried.

use super::{Action, ActionSink, SinkError};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The exit status that asks for a retry (sysexits.h's EX_TEMPFAIL).
pub const EX_TEMPFAIL: i32 = 75;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecConfig {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub timeout: Duration,
}

impl ExecConfig {
    /// `backend.exec.timeout_ms`.
    pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
}

pub struct ExecSink {
    cfg: ExecConfig,
}

impl ExecSink {
    pub fn new(cfg: ExecConfig) -> Self {
        ExecSink { cfg }
    }
}

const NAME: &str = "exec";

fn temporary(msg: String) -> SinkError {
    SinkError::Temporary { backend: NAME, msg }
}

impl ActionSink for ExecSink {
    fn name(&self) -> &'static str {
        NAME
    }

    fn deliver(&mut self, a: &Action) -> Result<(), SinkError> {
        let mut cmd = Command::new(&self.cfg.program);
        cmd.args(&self.cfg.args);
        cmd.args(["--id", &a.id, "--action", a.kind.as_str(), "--vm", &a.vm.to_string()]);
        cmd.args(["--level", a.level.as_str(), "--reason", a.reason.as_str()]);
        for (flag, v) in [("--vm-name", &a.vm_name), ("--hypervisor", &a.hypervisor), ("--destination", &a.destination)]
        {
            if let Some(v) = v {
                cmd.args([flag, v]);
            }
        }
        let mut child =
            cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().map_err(|e| {
                SinkError::Permanent { backend: NAME, msg: format!("cannot run {}: {e}", self.cfg.program.display()) }
            })?;
        let body = serde_json::to_vec(a).unwrap_or_default();
        if let Some(mut stdin) = child.stdin.take() {
            // A program that does not read stdin is its business.
            let _ = stdin.write_all(&body);
        }
        let deadline = Instant::now() + self.cfg.timeout;
        loop {
            match child.try_wait() {
                Ok(Some(st)) => {
                    return match st.code() {
                        Some(0) => Ok(()),
                        Some(EX_TEMPFAIL) => {
                            Err(temporary(format!("{} asked for a retry (exit 75)", self.cfg.program.display())))
                        }
                        Some(c) => Err(SinkError::Permanent {
                            backend: NAME,
                            msg: format!("{} exited with {c}", self.cfg.program.display()),
                        }),
                        None => Err(temporary(format!("{} was killed by a signal", self.cfg.program.display()))),
                    };
                }
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(temporary(format!(
                        "{} timed out after {:?}",
                        self.cfg.program.display(),
                        self.cfg.timeout
                    )));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(temporary(format!("waiting for {}: {e}", self.cfg.program.display()))),
            }
        }
    }
}
