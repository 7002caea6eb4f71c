//! Serve: Prometheus metrics and a read-only JSON API over HTTP, fed per window by the pipeline.
//!
//! Routes: `/metrics` (Prometheus text format), `/healthz` (200 once the
//! source is capturing or reading, 503 before), `/v1/vms`, `/v1/hypervisors`,
//! `/v1/actions` (the last [`RECENT_ACTIONS`] actions and their outcomes).
//! The server runs on its own thread with a single-threaded tokio runtime
//! (axum on hyper), with every resource bounded ([`Limits`]): at most
//! [`Limits::max_connections`] connections are open at once, idle or not (one
//! more is answered 503 and closed); a request's headers must arrive within
//! [`Limits::header_timeout`], which is also how long a kept-alive connection
//! may sit idle; a connection is closed (after the request in flight) at
//! [`Limits::connection_lifetime`]; each connection buffers at most
//! [`Limits::buffer_bytes`] (larger headers get a 431); at most
//! [`MAX_CONNECTIONS`] requests are handled at once, each within
//! [`REQUEST_TIMEOUT`]. Only GET is answered (no request body is read); an
//! error answer carries a short JSON body, `{"error": "..."}`.
//! The pipeline writes the API state once per window under a lock; requests
//! read it, so nothing on the packet path waits for HTTP.

pub mod metrics;

pub use metrics::Metrics;

use crate::action::{Action, ActionKind};
use crate::decode::Mac;
use crate::detect::Level;
use crate::vocab::PacketTime;
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
/// Requests handled at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Time handling one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the HTTP server may hold: connections, time, buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once, idle ones included (default 256).
    pub max_connections: usize,
    /// Time to send a request's headers, from the connection's start or the
    /// end of the previous answer: also the idle timeout (default 10 s).
    pub header_timeout: Duration,
    /// Time after which a connection is closed, once its request in flight
    /// is answered (default 60 s).
    pub connection_lifetime: Duration,
    /// Read buffer per connection, so the largest request head (default 16 KiB).
    pub buffer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            connection_lifetime: Duration::from_secs(60),
            buffer_bytes: 16 << 10,
        }
    }
}

/// How long a connection being closed at its lifetime may still take to
/// finish the answer in flight.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The answer to a connection over [`Limits::max_connections`], written once
/// without waiting.
fn busy_answer() -> Vec<u8> {
    let body = "{\"error\":\"too many open connections\"}";
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

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
/// a thread of its own, within the default [`Limits`]. Returns the bound
impl crate::action::Observer for Telemetry {
    fn queue_depth(&self, n: usize) {
        self.metrics.queue_depth.with_label_values(&["actions"]).set(n as i64);
    }

    fn outcome(&self, a: &Action, outcome: &'static str) {
        self.action_outcome(a, outcome);
    }
}

impl crate::capture::live::Observer for Telemetry {
    fn set_ready(&self, ready: bool) {
        Telemetry::set_ready(self, ready);
    }

    fn libpcap_counts(&self, received: u64, kernel_dropped: u64, interface_dropped: u64) {
        self.metrics.capture_received.inc_by(received);
        self.metrics.capture_dropped.with_label_values(&["kernel"]).inc_by(kernel_dropped);
        self.metrics.capture_dropped.with_label_values(&["interface"]).inc_by(interface_dropped);
    }
}

/// address (useful with port 0).
pub fn start(addr: &str, t: Arc<Telemetry>) -> Result<SocketAddr, ServeError> {
    start_with(addr, t, Limits::default())
}

/// [`start`] within the given limits.
pub fn start_with(addr: &str, t: Arc<Telemetry>, limits: Limits) -> Result<SocketAddr, ServeError> {
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
                    .fallback(not_found)
                    .method_not_allowed_fallback(only_get)
                    .layer(
                        tower::ServiceBuilder::new()
                            .layer(axum::error_handling::HandleErrorLayer::new(|_: tower::BoxError| async {
                                error(StatusCode::SERVICE_UNAVAILABLE, "busy, or the request took too long")
                            }))
                            .load_shed()
                            .concurrency_limit(MAX_CONNECTIONS)
                            .timeout(REQUEST_TIMEOUT),
                    )
                    .with_state(t);
                serve_bounded(listener, app, limits).await;
            });
        })
        .map_err(ServeError::Start)?;
    Ok(local)
}

/// The accept loop: one task per connection, each holding a permit of
/// [`Limits::max_connections`] until it is closed.
async fn serve_bounded(listener: tokio::net::TcpListener, app: Router, limits: Limits) {
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let busy = busy_answer();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                // Out of file descriptors and the like: let some close.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Over the cap: say so if the socket takes it at once, and close.
            let _ = stream.try_write(&busy);
            continue;
        };
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.buffer_bytes.max(8192))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = tokio::time::sleep(limits.connection_lifetime) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
                }
            }
        });
    }
}

/// An error answer with its short JSON body.
fn error(status: StatusCode, msg: &str) -> Response {
    (status, Json(serde_json::json!({ "error": msg }))).into_response()
}

async fn not_found(uri: axum::http::Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        &format!("no such path `{}`; try /metrics, /healthz, /v1/vms, /v1/hypervisors or /v1/actions", uri.path()),
    )
}

async fn only_get() -> Response {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "only GET is answered");
    r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
    r
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    fn server(limits: Limits) -> SocketAddr {
        start_with("127.0.0.1:0", Telemetry::new(16), limits).unwrap()
    }

    /// Reads until the server closes; the whole answer, or `None` if it
    /// stays open past `wait`.
    fn read_to_close(s: &mut TcpStream, wait: Duration) -> Option<String> {
        s.set_read_timeout(Some(wait)).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk) {
                Ok(0) => return Some(String::from_utf8_lossy(&buf).into_owned()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Some(String::from_utf8_lossy(&buf).into_owned())
                }
                Err(_) => return None,
            }
        }
    }

    fn request(addr: SocketAddr, req: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        read_to_close(&mut s, Duration::from_secs(5)).expect("no answer")
    }

    #[test]
    fn errors_carry_a_short_json_body() {
        let addr = server(Limits::default());
        let a = request(addr, "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert!(a.starts_with("HTTP/1.1 404"), "{a}");
        assert!(a.contains("content-type: application/json"), "{a}");
        assert!(
            a.ends_with(
                "{\"error\":\"no such path `/nope`; try /metrics, /healthz, /v1/vms, /v1/hypervisors or /v1/actions\"}"
            ),
            "{a}"
        );
        let a = request(addr, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        assert!(a.starts_with("HTTP/1.1 405"), "{a}");
        assert!(a.ends_with("{\"error\":\"only GET is answered\"}"), "{a}");
        let a = request(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert!(a.starts_with("HTTP/1.1 200") && a.contains("vmsentry_packets_total"), "{a}");
    }

    #[test]
    fn idle_and_trickling_connections_are_closed_and_their_number_is_capped() {
        let limits = Limits {
            max_connections: 8,
            header_timeout: Duration::from_millis(600),
            connection_lifetime: Duration::from_secs(30),
            buffer_bytes: 8192,
        };
        let addr = server(limits);
        let t0 = Instant::now();
        // Eight idle connections fill the cap ...
        let mut idle: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(100));
        // ... so the ninth to forty-eighth are answered 503 with a JSON body and closed at once.
        for _ in 0..40 {
            let mut s = TcpStream::connect(addr).unwrap();
            let a = read_to_close(&mut s, Duration::from_secs(2)).expect("a connection over the cap stayed open");
            assert!(a.starts_with("HTTP/1.1 503") && a.ends_with("{\"error\":\"too many open connections\"}"), "{a}");
        }
        // The idle ones are closed at the header timeout, not held.
        for s in &mut idle {
            assert!(read_to_close(s, Duration::from_secs(3)).is_some(), "an idle connection was held");
        }
        assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
        // Headers trickled a byte at a time are cut off at the header timeout
        // (here 600 ms, while sending them all would take 4 s).
        let mut s = TcpStream::connect(addr).unwrap();
        let t1 = Instant::now();
        let req = b"GET /metrics HTTP/1.1\r\nHost: a-long-host-name-sent-slowly\r\n\r\n";
        s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
        for b in req.iter() {
            if s.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(70));
            if t1.elapsed() > Duration::from_secs(3) {
                panic!("a trickling client was held for 3 s");
            }
        }
        let closed_after = t1.elapsed();
        assert!(closed_after < Duration::from_millis(2500), "{closed_after:?}");
        // Permits came back: a normal request is served.
        let a = request(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert!(a.starts_with("HTTP/1.1 503") && a.ends_with("starting\n"), "{a}");
    }

    #[test]
    fn a_kept_alive_connection_closes_after_its_lifetime() {
        let limits = Limits { connection_lifetime: Duration::from_millis(500), ..Limits::default() };
        let addr = server(limits);
        let mut s = TcpStream::connect(addr).unwrap();
        let t = Instant::now();
        // Requests keep it busy; it is still closed at its lifetime, after an answer.
        let mut answers = 0;
        while t.elapsed() < Duration::from_secs(3) {
            if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").is_err() {
                break;
            }
            let mut buf = [0u8; 512];
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => answers += 1,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(answers >= 3, "{answers}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
}
