//! Actions: what the policy decided, the [`ActionSink`] contract backends implement, and the dispatcher thread.
//!
//! The pipeline never waits on a backend: [`Dispatcher::submit`] journals the
//! action (when a journal is configured) and puts it on a bounded queue; a
//! dispatcher thread hands each action to the backend its kind is routed to,
//! and retries. A full queue drops the action from this run and says so in
//! its `action` event (`outcome: "dropped"`); with a journal it stays
//! pending there and is sent after the next start.

mod alertmanager;
mod exec;
pub mod journal;
mod libvirt;
mod log;
mod openstack;
mod webhook;

pub use alertmanager::{AlertmanagerConfig, AlertmanagerSink};
pub use exec::{ExecConfig, ExecSink, EX_TEMPFAIL};
pub use libvirt::{LibvirtConfig, LibvirtSink, Quarantine};
pub use log::LogSink;
pub use openstack::{OpenstackAuth, OpenstackConfig, OpenstackSink};
pub use webhook::{signature as webhook_signature, WebhookConfig, WebhookSink};

use crate::decode::Mac;
use crate::vocab::PacketTime;
pub use crate::vocab::{Action, ActionKind};
use crossbeam_channel::{bounded, RecvTimeoutError, Sender, TrySendError};
use journal::{Journal, State};
use serde::{Deserialize, Serialize};
use std::collections::BinaryHeap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the dispatcher reports as it works. The telemetry
/// ([`serve::Telemetry`](crate::serve::Telemetry)) implements it, so the
/// dispatcher knows no metric; both methods are called from the dispatcher
/// thread, once per action or per loop turn, and must not block.
pub trait Observer: Send + Sync {
    /// Actions waiting in the queue.
    fn queue_depth(&self, n: usize);
    /// What became of an action (`delivered`, `failed`, `given_up`, ...).
    fn outcome(&self, a: &Action, outcome: &'static str);
}

/// A backend, as the rules name it (and `action` events).
#[derive(Deserialize, Serialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum BackendName {
    Log,
    Exec,
    Webhook,
    Alertmanager,
    Libvirt,
    Openstack,
}

impl BackendName {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendName::Log => "log",
            BackendName::Exec => "exec",
            BackendName::Webhook => "webhook",
            BackendName::Alertmanager => "alertmanager",
            BackendName::Libvirt => "libvirt",
            BackendName::Openstack => "openstack",
        }
    }
}

/// Where actions go, and how they are retried and journaled.
#[derive(Clone, Debug, PartialEq)]
pub struct Backend {
    /// The backend of each action kind: alert, quarantine, migrate.
    pub routes: [BackendName; 3],
    pub exec: Option<ExecConfig>,
    pub webhook: Option<WebhookConfig>,
    pub alertmanager: Option<AlertmanagerConfig>,
    pub libvirt: Option<LibvirtConfig>,
    pub openstack: Option<OpenstackConfig>,
    pub max_attempts: u32,
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub shutdown_grace_ms: u64,
    /// Absolute path of the action journal, if any.
    pub journal: Option<PathBuf>,
}

impl Default for Backend {
    fn default() -> Self {
        Backend {
            routes: [BackendName::Log; 3],
            exec: None,
            webhook: None,
            alertmanager: None,
            libvirt: None,
            openstack: None,
            max_attempts: 8,
            backoff_ms: 500,
            max_backoff_ms: 60_000,
            shutdown_grace_ms: 5_000,
            journal: None,
        }
    }
}

impl Backend {
    pub fn route(&self, kind: ActionKind) -> BackendName {
        self.routes[kind as usize]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth trying again later (timeout, connection refused, 5xx).
    #[error("{backend}: temporary failure: {msg}")]
    Temporary { backend: &'static str, msg: String },
    /// Will not succeed by retrying (bad request, VM unknown to the backend).
    #[error("{backend}: failed: {msg}")]
    Permanent { backend: &'static str, msg: String },
}

/// A backend that carries out actions.
///
/// Required: [`name`](ActionSink::name), a short stable name used in events
/// and metrics, and [`deliver`](ActionSink::deliver), which carries out one
/// action and returns when the backend has accepted or refused it.
///
/// `deliver` runs on the dispatcher thread, never on the capture path, so it
/// may block; it should still bound its own time (a timeout per call) since
/// actions behind it wait. It must be idempotent per [`Action::id`]: the same
/// action may be delivered more than once. On error it returns
/// [`SinkError::Temporary`] when a retry may succeed and
/// [`SinkError::Permanent`] when not; it must not panic.
///
/// Optional: [`resolve`](ActionSink::resolve), told (best effort, once, not
/// journaled) when a VM an action was about fell back to LOW; the default
/// does nothing.
pub trait ActionSink: Send {
    fn name(&self) -> &'static str;
    fn deliver(&mut self, action: &Action) -> Result<(), SinkError>;
    fn resolve(&mut self, _vm: Mac, _at: PacketTime) -> Result<(), SinkError> {
        Ok(())
    }
}

/// What the dispatcher thread is handed.
enum Job {
    Act(Action),
    /// The VM fell back to LOW at this packet time.
    Resolve(Mac, PacketTime),
}

/// What the dispatcher did, counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DispatchStats {
    pub delivered: u64,
    /// Given up: a permanent failure, or out of attempts.
    pub failed: u64,
    /// Retries made.
    pub retries: u64,
    /// Still unfinished at exit (kept in the journal, resumed at the next start).
    pub pending: u64,
    /// Resumed from the journal at start.
    pub resumed: u64,
}

/// Whether [`Dispatcher::submit`] queued the action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Submitted {
    Queued,
    /// The queue was full (or the dispatcher is gone). With a journal the
    /// action stays pending there and is sent after the next start.
    Dropped,
    /// The journal already has this action (decided again after a restart).
    Duplicate,
    /// The journal could not record it (a write error, or its lock poisoned
    /// by a panic), so it is not sent: an action is never sent unjournaled.
    NotJournaled,
}

impl Submitted {
    pub fn as_str(self) -> &'static str {
        match self {
            Submitted::Queued => "queued",
            Submitted::Dropped => "dropped",
            Submitted::Duplicate => "duplicate",
            Submitted::NotJournaled => "not_journaled",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error("cannot start the dispatcher thread: {0}")]
    Thread(std::io::Error),
}

/// The dispatcher thread, its bounded queue and the journal.
///
/// Every action is journaled (fsync) in [`submit`](Dispatcher::submit),
/// before it is queued; the thread hands it to the backend its kind is
/// routed to. A temporary failure is retried with exponential backoff and
/// jitter (`backend.backoff_ms`, doubling, up to `backend.max_backoff_ms`,
/// at most `backend.max_attempts` attempts); a permanent one is given up.
/// Unfinished actions found in the journal at start are resumed first.
pub struct Dispatcher {
    tx: Sender<Job>,
    /// Set by `finish`: from then on the shutdown grace runs.
    closing: Arc<std::sync::atomic::AtomicBool>,
    routes: [BackendName; 3],
    journal: Option<Arc<Mutex<Journal>>>,
    handle: JoinHandle<DispatchStats>,
}

struct Retry {
    due: Instant,
    seq: u64,
    action: Action,
    attempts: u32,
}

impl PartialEq for Retry {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Retry {}
impl PartialOrd for Retry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Retry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.due, o.seq).cmp(&(self.due, self.seq))
    }
}

/// Backoff before attempt `n + 1`: base x 2^n, capped, with "equal jitter"
/// (half fixed, half random) so retries of many actions spread out.
fn backoff(cfg: &Backend, n: u32) -> Duration {
    let exp = cfg.backoff_ms.saturating_mul(1u64 << n.min(20)).min(cfg.max_backoff_ms);
    let mut r = [0u8; 8];
    let rand = if getrandom::fill(&mut r).is_ok() { u64::from_le_bytes(r) } else { 0 };
    let half = exp / 2;
    Duration::from_millis(half + if half > 0 { rand % (half + 1) } else { 0 })
}

impl Dispatcher {
    /// Starts the thread with the backends `cfg` routes to, and resumes what
    /// the journal left unfinished.
    pub fn start(
        cfg: &Backend,
        queue: usize,
        telemetry: Option<Arc<dyn Observer>>,
    ) -> Result<Dispatcher, DispatchError> {
        Self::start_with(cfg, queue, telemetry, Box::new(LogSink::stderr()))
    }

    /// As [`start`](Dispatcher::start), with a given `log` sink (tests).
    pub fn start_with(
        cfg: &Backend,
        queue: usize,
        telemetry: Option<Arc<dyn Observer>>,
        log: Box<dyn ActionSink>,
    ) -> Result<Dispatcher, DispatchError> {
        let (tx, rx) = bounded::<Job>(queue);
        let mut sinks: Vec<(BackendName, Box<dyn ActionSink>)> = vec![(BackendName::Log, log)];
        if let Some(e) = &cfg.exec {
            sinks.push((BackendName::Exec, Box::new(ExecSink::new(e.clone()))));
        }
        if let Some(w) = &cfg.webhook {
            sinks.push((BackendName::Webhook, Box::new(WebhookSink::new(w.clone()))));
        }
        if let Some(a) = &cfg.alertmanager {
            sinks.push((BackendName::Alertmanager, Box::new(AlertmanagerSink::new(a.clone()))));
        }
        if let Some(l) = &cfg.libvirt {
            sinks.push((BackendName::Libvirt, Box::new(LibvirtSink::new(l.clone()))));
        }
        if let Some(o) = &cfg.openstack {
            sinks.push((BackendName::Openstack, Box::new(OpenstackSink::new(o.clone()))));
        }
        let (journal, resume) = match &cfg.journal {
            Some(p) => {
                let (j, r) = Journal::open(p, journal::DEFAULT_MAX_LINES)?;
                (Some(Arc::new(Mutex::new(j))), r)
            }
            None => (None, Vec::new()),
        };
        let routes = cfg.routes;
        let cfg = cfg.clone();
        let thread_journal = journal.clone();
        let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread_closing = closing.clone();
        let handle =
            std::thread::Builder::new()
                .name("vmsentry-actions".into())
                .spawn(move || {
                    Worker { cfg, sinks, journal: thread_journal, telemetry, stats: DispatchStats::default(), seq: 0 }
                        .run(rx, resume, thread_closing)
                })
                .map_err(DispatchError::Thread)?;
        Ok(Dispatcher { tx, closing, routes, journal, handle })
    }

    /// The backend an action of this kind goes to.
    pub fn backend(&self, kind: ActionKind) -> BackendName {
        self.routes[kind as usize]
    }

    /// Journals the action, then queues it without blocking. An action the
    /// journal cannot record is not sent (the delivery guarantee rests on it).
    pub fn submit(&self, action: Action) -> Submitted {
        if let Some(j) = &self.journal {
            match j.lock().map(|mut j| j.pending(&action)) {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => return Submitted::Duplicate,
                Ok(Err(e)) => {
                    eprintln!("vmsentry: cannot journal action {}: {e}; not sent", action.id);
                    return Submitted::NotJournaled;
                }
                Err(_) => {
                    eprintln!(
                        "vmsentry: the journal is unusable (a thread panicked holding it); action {} not sent",
                        action.id
                    );
                    return Submitted::NotJournaled;
                }
            }
        }
        match self.tx.try_send(Job::Act(action)) {
            Ok(()) => Submitted::Queued,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => Submitted::Dropped,
        }
    }

    /// Tells the backends a VM fell back to LOW (best effort: dropped when
    /// the queue is full).
    pub fn resolve(&self, vm: Mac, at: PacketTime) {
        let _ = self.tx.try_send(Job::Resolve(vm, at));
    }

    /// Waits until every queued action was delivered, given up, or (after
    /// `backend.shutdown_grace_ms`) left pending in the journal.
    pub fn finish(self) -> DispatchStats {
        self.closing.store(true, std::sync::atomic::Ordering::Release);
        drop(self.tx);
        self.handle.join().unwrap_or_default()
    }
}

struct Worker {
    cfg: Backend,
    sinks: Vec<(BackendName, Box<dyn ActionSink>)>,
    journal: Option<Arc<Mutex<Journal>>>,
    telemetry: Option<Arc<dyn Observer>>,
    stats: DispatchStats,
    seq: u64,
}

impl Worker {
    fn run(
        mut self,
        rx: crossbeam_channel::Receiver<Job>,
        resume: Vec<(Action, u32)>,
        closing: Arc<std::sync::atomic::AtomicBool>,
    ) -> DispatchStats {
        let mut retries: BinaryHeap<Retry> = BinaryHeap::new();
        self.stats.resumed = resume.len() as u64;
        for (action, attempts) in resume {
            self.attempt(action, attempts, &mut retries);
        }
        let mut closed_at: Option<Instant> = None;
        let grace = Duration::from_millis(self.cfg.shutdown_grace_ms);
        let mut closing_since: Option<Instant> = None;
        loop {
            let now = Instant::now();
            // At exit, queued actions too get only the grace period; the rest
            // stay pending in the journal.
            if closing_since.is_none() && closing.load(std::sync::atomic::Ordering::Acquire) {
                closing_since = Some(now);
            }
            if closing_since.is_some_and(|t| t.elapsed() >= grace) && (!rx.is_empty() || !retries.is_empty()) {
                let queued = rx.len() as u64;
                if queued > 0 {
                    eprintln!("vmsentry: {queued} queued actions not sent before exit; they stay in the journal");
                }
                self.stats.pending += queued;
                break;
            }
            while retries.peek().is_some_and(|r| r.due <= now) {
                if let Some(r) = retries.pop() {
                    self.attempt(r.action, r.attempts, &mut retries);
                }
            }
            if let Some(t) = closed_at {
                if retries.is_empty() || t.elapsed() >= grace {
                    break;
                }
            }
            let wait =
                retries.peek().map_or(Duration::from_millis(200), |r| r.due.saturating_duration_since(Instant::now()));
            if closed_at.is_some() {
                std::thread::sleep(wait.min(Duration::from_millis(50)));
                continue;
            }
            match rx.recv_timeout(wait) {
                Ok(Job::Act(a)) => self.attempt(a, 0, &mut retries),
                Ok(Job::Resolve(vm, at)) => {
                    for (_, sink) in self.sinks.iter_mut() {
                        if let Err(e) = sink.resolve(vm, at) {
                            eprintln!("vmsentry: telling {} that {vm} is LOW again failed: {e}", sink.name());
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => closed_at = Some(Instant::now()),
            }
            if let Some(t) = &self.telemetry {
                t.queue_depth(rx.len());
            }
        }
        self.stats.pending += retries.len() as u64;
        for r in retries {
            eprintln!("vmsentry: action {} still undelivered at exit; it stays in the journal", r.action.id);
        }
        self.stats
    }

    fn journal(&self, id: &str, state: State, attempts: u32, error: Option<String>) {
        if let Some(j) = &self.journal {
            if let Ok(mut j) = j.lock() {
                if let Err(e) = j.outcome(id, state, attempts, error) {
                    eprintln!("vmsentry: cannot journal the outcome of action {id}: {e}");
                }
            }
        }
    }

    fn attempt(&mut self, action: Action, before: u32, retries: &mut BinaryHeap<Retry>) {
        let route = self.cfg.route(action.kind);
        let attempts = before + 1;
        if !self.sinks.iter().any(|(n, _)| *n == route) {
            // The rules refuse a route to an unconfigured backend; this is a bug if reached.
            self.stats.failed += 1;
            eprintln!("vmsentry: action {}: backend {} is not configured", action.id, route.as_str());
            self.journal(&action.id, State::GivenUp, attempts, Some("backend not configured".into()));
            return;
        }
        self.journal(&action.id, State::Sent, attempts, None);
        let Some((_, sink)) = self.sinks.iter_mut().find(|(n, _)| *n == route) else { return };
        let outcome = match sink.deliver(&action) {
            Ok(()) => {
                self.stats.delivered += 1;
                self.journal(&action.id, State::Done, attempts, None);
                "delivered"
            }
            Err(SinkError::Temporary { msg, .. }) if attempts < self.cfg.max_attempts => {
                self.stats.retries += 1;
                self.journal(&action.id, State::Failed, attempts, Some(msg.clone()));
                let due = Instant::now() + backoff(&self.cfg, before);
                self.seq += 1;
                retries.push(Retry { due, seq: self.seq, action, attempts });
                return;
            }
            Err(e) => {
                self.stats.failed += 1;
                eprintln!(
                    "vmsentry: action {} ({}) given up after {attempts} attempts: {e}",
                    action.id,
                    action.kind.as_str()
                );
                self.journal(&action.id, State::GivenUp, attempts, Some(e.to_string()));
                "failed"
            }
        };
        if let Some(t) = &self.telemetry {
            t.outcome(&action, outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::{Level, Reason};
    use std::sync::mpsc;

    /// A `log` sink that records what it is handed and answers from a script
    /// (then `Ok` for ever); `gate`, when set, makes each delivery wait for a message.
    struct Recorder {
        got: Arc<Mutex<Vec<String>>>,
        script: Vec<Result<(), SinkError>>,
        gate: Option<mpsc::Receiver<()>>,
    }

    impl ActionSink for Recorder {
        fn name(&self) -> &'static str {
            "log"
        }
        fn deliver(&mut self, a: &Action) -> Result<(), SinkError> {
            if let Some(g) = &self.gate {
                let _ = g.recv();
            }
            self.got.lock().unwrap().push(a.id.clone());
            if self.script.is_empty() {
                Ok(())
            } else {
                self.script.remove(0)
            }
        }
    }

    fn recorder(script: Vec<Result<(), SinkError>>) -> (Box<dyn ActionSink>, Arc<Mutex<Vec<String>>>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        (Box::new(Recorder { got: got.clone(), script, gate: None }), got)
    }

    fn action(id: &str, kind: ActionKind) -> Action {
        Action {
            id: id.into(),
            ts: PacketTime::from_micros(1_000_000),
            kind,
            vm: "fa:16:3e:00:00:01".parse().unwrap(),
            vm_name: Some("web-1".into()),
            hypervisor: Some("compute-1".into()),
            signed: true,
            destination: None,
            level: Level::High,
            reason: Reason::Rate,
            note: None,
        }
    }

    fn fast() -> Backend {
        Backend { backoff_ms: 1, max_backoff_ms: 2, max_attempts: 3, shutdown_grace_ms: 2_000, ..Backend::default() }
    }

    fn temporary() -> Result<(), SinkError> {
        Err(SinkError::Temporary { backend: "log", msg: "503".into() })
    }

    #[test]
    fn actions_are_delivered_in_order_and_counted() {
        let (sink, got) = recorder(vec![]);
        let d = Dispatcher::start_with(&fast(), 16, None, sink).unwrap();
        for id in ["a", "b", "c"] {
            assert_eq!(d.submit(action(id, ActionKind::Quarantine)), Submitted::Queued);
        }
        assert_eq!(d.backend(ActionKind::Migrate), BackendName::Log);
        let stats = d.finish();
        assert_eq!(*got.lock().unwrap(), ["a", "b", "c"]);
        assert_eq!(stats, DispatchStats { delivered: 3, ..Default::default() });
    }

    #[test]
    fn a_temporary_failure_is_retried_and_a_permanent_one_given_up() {
        let permanent = Err(SinkError::Permanent { backend: "log", msg: "no such VM".into() });
        let (sink, got) = recorder(vec![temporary(), temporary(), Ok(()), permanent]);
        let d = Dispatcher::start_with(&fast(), 16, None, sink).unwrap();
        d.submit(action("retried", ActionKind::Alert));
        // Wait for the retries to finish before the next one is queued, so the script applies in order.
        let t0 = Instant::now();
        while got.lock().unwrap().len() < 3 && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(2));
        }
        d.submit(action("refused", ActionKind::Alert));
        let stats = d.finish();
        assert_eq!(*got.lock().unwrap(), ["retried", "retried", "retried", "refused"]);
        assert_eq!(stats, DispatchStats { delivered: 1, failed: 1, retries: 2, ..Default::default() });
    }

    #[test]
    fn out_of_attempts_is_given_up_and_journaled_so() {
        let d = tempfile::tempdir().unwrap();
        let cfg = Backend { journal: Some(d.path().join("j")), ..fast() };
        let (sink, got) = recorder(vec![temporary(), temporary(), temporary()]);
        let disp = Dispatcher::start_with(&cfg, 16, None, sink).unwrap();
        disp.submit(action("x", ActionKind::Alert));
        let stats = disp.finish();
        assert_eq!(got.lock().unwrap().len(), 3, "max_attempts = 3");
        assert_eq!(stats, DispatchStats { failed: 1, retries: 2, ..Default::default() });
        let states: Vec<String> = std::fs::read_to_string(d.path().join("j"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["state"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(states, ["pending", "sent", "failed", "sent", "failed", "sent", "given_up"]);
    }

    #[test]
    fn a_full_queue_drops_and_a_journaled_action_is_resumed_at_the_next_start() {
        let d = tempfile::tempdir().unwrap();
        let cfg = Backend { journal: Some(d.path().join("j")), shutdown_grace_ms: 0, ..fast() };
        let (gate_tx, gate) = mpsc::channel();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Box::new(Recorder { got: got.clone(), script: vec![], gate: Some(gate) });
        let disp = Dispatcher::start_with(&cfg, 1, None, sink).unwrap();
        assert_eq!(disp.submit(action("first", ActionKind::Alert)), Submitted::Queued);
        // The worker takes "first" and waits at the gate; "second" fills the queue of 1.
        let t0 = Instant::now();
        while !disp.tx.is_empty() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(disp.submit(action("second", ActionKind::Alert)), Submitted::Queued);
        assert_eq!(disp.submit(action("third", ActionKind::Alert)), Submitted::Dropped);
        assert_eq!(disp.submit(action("first", ActionKind::Alert)), Submitted::Duplicate);
        gate_tx.send(()).unwrap();
        drop(gate_tx);
        let stats = disp.finish();
        assert_eq!(stats.delivered, 1, "{stats:?}");
        assert_eq!(*got.lock().unwrap(), ["first"]);
        // second (queued, not sent within the grace) and third (dropped) stay pending.
        let (sink, got) = recorder(vec![]);
        let disp = Dispatcher::start_with(&cfg, 16, None, sink).unwrap();
        let stats = disp.finish();
        assert_eq!(*got.lock().unwrap(), ["second", "third"]);
        assert_eq!(stats, DispatchStats { delivered: 2, resumed: 2, ..Default::default() });
    }

    #[test]
    fn a_poisoned_journal_lock_sends_nothing_unjournaled() {
        let d = tempfile::tempdir().unwrap();
        let cfg = Backend { journal: Some(d.path().join("j")), ..fast() };
        let (sink, got) = recorder(vec![]);
        let disp = Dispatcher::start_with(&cfg, 16, None, sink).unwrap();
        let j = disp.journal.clone().unwrap();
        let _ = std::thread::spawn(move || {
            let _guard = j.lock().unwrap();
            panic!("poison the journal lock");
        })
        .join();
        assert_eq!(disp.submit(action("a", ActionKind::Quarantine)), Submitted::NotJournaled);
        let stats = disp.finish();
        assert!(got.lock().unwrap().is_empty(), "sent without a journal record");
        assert_eq!(stats, DispatchStats::default());
        assert_eq!(std::fs::read_to_string(d.path().join("j")).unwrap(), "");
    }
}
