//! Actions: what the policy decided, the [`ActionSink`] contract backends implement, and the dispatcher thread.
//!
//! The pipeline never waits on a backend: [`Dispatcher::submit`] puts the
//! action on a bounded queue and returns at once; a dispatcher thread hands
//! each action to the sink. A full queue drops the action and says so in its
//! `action` event (`outcome: "dropped"`) and the summary's counts.

mod log;

pub use log::LogSink;

use crate::decode::Mac;
use crate::detect::{Level, Reason};
use crate::serve::Telemetry;
use crate::time::PacketTime;
use crossbeam_channel::{bounded, Sender, TrySendError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::thread::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    /// Tell an operator; change nothing.
    Alert,
    /// Isolate the VM (suspend, pause or destroy, by backend).
    Quarantine,
    /// Live-migrate the VM to `destination`.
    Migrate,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Alert => "alert",
            ActionKind::Quarantine => "quarantine",
            ActionKind::Migrate => "migrate",
        }
    }
}

/// One decided action.
#[derive(Clone, Debug, PartialEq)]
pub struct Action {
    /// Unique: packet time of the decision and a run-wide sequence number.
    /// Backends use it as the idempotency key.
    pub id: String,
    pub ts: PacketTime,
    pub kind: ActionKind,
    pub vm: Mac,
    pub vm_name: Option<String>,
    /// Registry id of the VM's hypervisor, if known.
    pub hypervisor: Option<String>,
    pub signed: bool,
    /// For `migrate`: the chosen hypervisor's id.
    pub destination: Option<String>,
    pub level: Level,
    pub reason: Reason,
    /// Why the action differs from the policy's (e.g. no destination to migrate to).
    pub note: Option<String>,
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
pub trait ActionSink: Send {
    fn name(&self) -> &'static str;
    fn deliver(&mut self, action: &Action) -> Result<(), SinkError>;
}

/// What the dispatcher did, counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DispatchStats {
    pub delivered: u64,
    pub failed: u64,
}

/// Whether [`Dispatcher::submit`] queued the action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submitted {
    Queued,
    /// The queue was full (or the dispatcher is gone).
    Dropped,
}

impl Submitted {
    pub fn as_str(self) -> &'static str {
        match self {
            Submitted::Queued => "queued",
            Submitted::Dropped => "dropped",
        }
    }
}

/// The dispatcher thread and its bounded queue.
pub struct Dispatcher {
    tx: Sender<Action>,
    backend: &'static str,
    handle: JoinHandle<DispatchStats>,
}

impl Dispatcher {
    pub fn start(
        mut sink: Box<dyn ActionSink>,
        queue: usize,
        telemetry: Option<Arc<Telemetry>>,
    ) -> std::io::Result<Dispatcher> {
        let (tx, rx) = bounded::<Action>(queue);
        let backend = sink.name();
        let depth = rx.clone();
        let handle = std::thread::Builder::new().name("vmsentry-actions".into()).spawn(move || {
            let mut stats = DispatchStats::default();
            for action in rx {
                let outcome = match sink.deliver(&action) {
                    Ok(()) => {
                        stats.delivered += 1;
                        "delivered"
                    }
                    Err(e) => {
                        stats.failed += 1;
                        eprintln!("vmsentry: action {} ({}) not delivered: {e}", action.id, action.kind.as_str());
                        "failed"
                    }
                };
                if let Some(t) = &telemetry {
                    t.action_outcome(&action, outcome);
                    t.metrics.queue_depth.with_label_values(&["actions"]).set(depth.len() as i64);
                }
            }
            stats
        })?;
        Ok(Dispatcher { tx, backend, handle })
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Queues an action without blocking.
    pub fn submit(&self, action: Action) -> Submitted {
        match self.tx.try_send(action) {
            Ok(()) => Submitted::Queued,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => Submitted::Dropped,
        }
    }

    /// Waits until every queued action was handed to the sink.
    pub fn finish(self) -> DispatchStats {
        drop(self.tx);
        self.handle.join().unwrap_or_default()
    }
}
