//! Serve: Prometheus metrics and a read-only JSON API over HTTP, fed per window by the pipeline.
//!
//! Routes: `/metrics` (Prometheus text format), `/healthz` (200 once the
//! source is capturing or reading, 503 before), `/v1/vms`, `/v1/hypervisors`,
//! `/v1/actions` (the last [`RECENT_ACTIONS`] actions and their outcomes).
//! The server runs on its own thread with a single-threaded tokio runtime
//! (axum); at most [`MAX_CONNECTIONS`] requests are served at once, each within
//! [`REQUEST_TIMEOUT`], and only GET is answered (no request body is read).
//! The pipeline writes the API state once per window under a lock; requests
//! read it, so nothing on the packet path waits for HTTP.

pub mod metrics;

pub use metrics::Metrics;

use crate::action::{Action, ActionKind};
use crate::decode::Mac;
use crate::detect::Level;
use crate::time::PacketTime;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Actions kept for `/v1/actions`.
pub const RECENT_ACTIONS: usize = 256;
/// Requests served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Time one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the pipeline shares with the server.
pub struct Telemetry {
    pub metrics: Metrics,
    api: RwLock<ApiState>,
    ready: AtomicBool,
    /// Inventory VMs that get per-VM series (`limits.metrics_vms`).
    pub metrics_vms: usize,
}

#[derive(Default, Serialize, Clone)]
struct ApiState {
    vms: Vec<VmView>,
    hypervisors: Vec<HypervisorView>,
    actions: VecDeque<ActionView>,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct VmView {
    pub vm: Mac,
    pub name: String,
    pub level: Level,
    pub hypervisor: Option<String>,
    /// The hypervisor's signature for the MAC the wire shows.
    pub signature: &'static str,
    pub tx_bps: u64,
    pub tx_pps: u64,
    pub rx_bps: u64,
    pub rx_pps: u64,
    /// RTT of the last window.
    pub rtt_samples: u64,
    pub rtt_mean_ms: Option<f64>,
    pub rtt_p50_ms: Option<f64>,
    pub rtt_p99_ms: Option<f64>,
    pub rtt_baseline_ms: Option<f64>,
    /// End of the last window it sent or received in.
    pub last_seen: Option<PacketTime>,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct HypervisorView {
    pub id: String,
    pub macs: Vec<HypervisorMac>,
    pub ips: Vec<std::net::IpAddr>,
    /// `valid` when the signature verifies for at least one MAC.
    pub signature: &'static str,
    /// Inventory VMs located there now.
    pub vms: usize,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct HypervisorMac {
    pub mac: Mac,
    pub signature: &'static str,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct ActionView {
    pub id: String,
    pub ts: PacketTime,
    pub action: ActionKind,
    pub vm: Mac,
    pub vm_name: Option<String>,
    pub hypervisor: Option<String>,
    pub destination: Option<String>,
    pub level: Level,
    pub reason: crate::detect::Reason,
    pub outcome: &'static str,
}

impl Telemetry {
    pub fn new(metrics_vms: usize) -> Arc<Telemetry> {
        Arc::new(Telemetry {
            metrics: Metrics::new(),
            api: RwLock::new(ApiState::default()),
            ready: AtomicBool::new(false),
            metrics_vms,
        })
    }

    /// The source is capturing (or reading): `/healthz` answers 200.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Replaces the per-window views (called once per window).
    pub fn publish(&self, vms: Vec<VmView>, hypervisors: Vec<HypervisorView>) {
        if let Ok(mut s) = self.api.write() {
            s.vms = vms;
            s.hypervisors = hypervisors;
        }
    }

    /// Records a decided action, before it is handed to the dispatcher (so
    /// the dispatcher's outcome always finds it).
    pub fn action_decided(&self, a: &Action) {
        if let Ok(mut s) = self.api.write() {
            if s.actions.len() == RECENT_ACTIONS {
                s.actions.pop_front();
            }
            s.actions.push_back(ActionView {
                id: a.id.clone(),
                ts: a.ts,
                action: a.kind,
                vm: a.vm,
                vm_name: a.vm_name.clone(),
                hypervisor: a.hypervisor.clone(),
                destination: a.destination.clone(),
                level: a.level,
                reason: a.reason,
                outcome: "queued",
            });
        }
    }

    /// What submitting it gave (`queued`, `dropped`, `duplicate`).
    pub fn action_submitted(&self, a: &Action, outcome: &'static str) {
        self.metrics.actions.with_label_values(&[a.kind.as_str(), outcome]).inc();
        if outcome != "queued" {
            self.set_outcome(a, outcome);
        }
    }

    fn set_outcome(&self, a: &Action, outcome: &'static str) {
        if let Ok(mut s) = self.api.write() {
            if let Some(v) = s.actions.iter_mut().rev().find(|v| v.id == a.id) {
                v.outcome = outcome;
            }
        }
    }

    /// The backend's answer for an action.
    pub fn action_outcome(&self, a: &Action, outcome: &'static str) {
        self.metrics.actions.with_label_values(&[a.kind.as_str(), outcome]).inc();
        self.set_outcome(a, outcome);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the HTTP server: {0}")]
    Start(std::io::Error),
}

/// Binds `addr` now (so a bad address is an error at start-up) and serves on
/// a thread of its own. Returns the bound address (useful with port 0).
pub fn start(addr: &str, t: Arc<Telemetry>) -> Result<SocketAddr, ServeError> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| ServeError::Bind { addr: addr.into(), source })?;
    listener.set_nonblocking(true).map_err(ServeError::Start)?;
    let local = listener.local_addr().map_err(ServeError::Start)?;
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build().map_err(ServeError::Start)?;
    std::thread::Builder::new()
        .name("vmsentry-http".into())
        .spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
                let app = Router::new()
                    .route("/metrics", get(metrics))
                    .route("/healthz", get(healthz))
                    .route("/v1/vms", get(vms))
                    .route("/v1/hypervisors", get(hypervisors))
                    .route("/v1/actions", get(actions))
                    .layer(
                        tower::ServiceBuilder::new()
                            .layer(axum::error_handling::HandleErrorLayer::new(|_: tower::BoxError| async {
                                StatusCode::SERVICE_UNAVAILABLE
                            }))
                            .load_shed()
                            .concurrency_limit(MAX_CONNECTIONS)
                            .timeout(REQUEST_TIMEOUT),
                    )
                    .with_state(t);
                if let Err(e) = axum::serve(listener, app).await {
                    eprintln!("vmsentry: HTTP server stopped: {e}");
                }
            });
        })
        .map_err(ServeError::Start)?;
    Ok(local)
}

async fn metrics(State(t): State<Arc<Telemetry>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], t.metrics.render()).into_response()
}

async fn healthz(State(t): State<Arc<Telemetry>>) -> Response {
    if t.is_ready() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn vms(State(t): State<Arc<Telemetry>>) -> Response {
    let v = t.api.read().map(|s| s.vms.clone()).unwrap_or_default();
    Json(v).into_response()
}

async fn hypervisors(State(t): State<Arc<Telemetry>>) -> Response {
    let v = t.api.read().map(|s| s.hypervisors.clone()).unwrap_or_default();
    Json(v).into_response()
}

async fn actions(State(t): State<Arc<Telemetry>>) -> Response {
    let v: Vec<ActionView> = t.api.read().map(|s| s.actions.iter().cloned().collect()).unwrap_or_default();
    Json(v).into_response()
}
