//! Sense: a sensor's run: capture → its own frames → decode → shards → one partial per window → spool → JetStream.
//!
//! Threads: the caller's (the reader), the shards, a combiner (sums the
//! shards' partials of a window into one message and spools it), and the
//! NATS runtime's publisher (spool → JetStream, oldest first, each message
//! published with its `Nats-Msg-Id` and deleted from the spool once
//! JetStream acknowledged it). The capture side never waits on NATS: the
//! spool is on disk and bounded (see [`super::spool`]).

use super::nats::Nats;
use super::spool::Spool;
use super::wire::{self, EndMsg, Message, WindowMsg};
use super::Cluster;
use crate::capture::{CaptureError, PacketSource, SourceItem, SourceStats};
use crate::config::Rules;
use crate::event::{Event, EventSink};
use crate::pipeline::{self, Options, Partial, PipelineError, ReaderStats, Seam};
use crossbeam_channel::{bounded, Receiver};
use prometheus::{IntCounter, IntGauge};
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SenseError {
    #[error("sensor `{0}` is not in cluster.toml's [[sensor]] list")]
    UnknownSensor(String),
    #[error(transparent)]
    Spool(#[from] super::spool::SpoolError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("cannot start a sensor thread: {0}")]
    Thread(std::io::Error),
}

pub struct SenseOptions {
    pub sensor: String,
    pub nats: String,
    pub spool_dir: PathBuf,
    pub spool_bytes: u64,
    /// Set (SIGINT/SIGTERM) to stop waiting for the spool to drain.
    pub stop: Arc<AtomicBool>,
}

/// What a sensor did, at the end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SenseSummary {
    pub windows: u64,
    pub not_owned: u64,
    pub published: u64,
    /// Their bytes on the wire to NATS (the messages' payloads).
    pub published_bytes: u64,
    pub spool_dropped: u64,
    /// Messages still in the spool at exit (sent at the next start).
    pub left: u64,
}

/// The sensor's Prometheus series.
#[derive(Clone)]
pub struct SenseMetrics {
    pub published: IntCounter,
    pub published_bytes: IntCounter,
    pub publish_errors: IntCounter,
    pub spool_messages: IntGauge,
    pub spool_bytes: IntGauge,
    pub dropped: IntCounter,
    pub not_owned: IntCounter,
}

impl SenseMetrics {
    pub fn new(registry: Option<&prometheus::Registry>) -> SenseMetrics {
        let c = |n: &str, h: &str| IntCounter::new(n, h).unwrap_or_else(|_| IntCounter::new("x", "x").unwrap());
        let g = |n: &str, h: &str| IntGauge::new(n, h).unwrap_or_else(|_| IntGauge::new("x", "x").unwrap());
        let m = SenseMetrics {
            published: c("vmsentry_cluster_partials_published_total", "Window partials JetStream acknowledged."),
            published_bytes: c(
                "vmsentry_cluster_published_bytes_total",
                "Bytes of the partials JetStream acknowledged.",
            ),
            publish_errors: c("vmsentry_cluster_publish_errors_total", "Publish attempts that failed (retried)."),
            spool_messages: g("vmsentry_cluster_spool_messages", "Partials buffered on disk, not yet acknowledged."),
            spool_bytes: g("vmsentry_cluster_spool_bytes", "Bytes of partials buffered on disk."),
            dropped: c("vmsentry_cluster_partials_dropped_total", "Partials dropped because the spool was full."),
            not_owned: c("vmsentry_cluster_frames_not_owned_total", "Frames seen here that another sensor owns."),
        };
        if let Some(r) = registry {
            for x in [&m.published, &m.published_bytes, &m.publish_errors, &m.dropped, &m.not_owned] {
                let _ = r.register(Box::new(x.clone()));
            }
            for x in [&m.spool_messages, &m.spool_bytes] {
                let _ = r.register(Box::new(x.clone()));
            }
        }
        m
    }
}

/// Passes on only the frames this sensor owns (see the ownership rule in [`super`]).
struct Owned<'a> {
    inner: &'a mut dyn PacketSource,
    cluster: &'a Cluster,
    me: usize,
    not_owned: u64,
}

impl PacketSource for Owned<'_> {
    fn run(&mut self, each: &mut dyn FnMut(SourceItem<'_>) -> ControlFlow<()>) -> Result<(), CaptureError> {
        let (cluster, me, not_owned) = (self.cluster, self.me, &mut self.not_owned);
        self.inner.run(&mut |item| match item {
            SourceItem::Packet(p) if cluster.owner(p.data, p.linktype) != me => {
                *not_owned += 1;
                ControlFlow::Continue(())
            }
            other => each(other),
        })
    }
    fn stats(&self) -> SourceStats {
        self.inner.stats()
    }
    fn total_bytes(&self) -> Option<u64> {
        self.inner.total_bytes()
    }
}

struct Discard;
impl EventSink for Discard {
    fn emit(&mut self, _: &Event) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a sensor's rules keep: measuring only. IDS alerts, gate decisions
/// and backends are the controller's.
fn sensor_rules(rules: &Rules) -> Rules {
    let mut r = rules.clone();
    r.ids.clear();
    r.migration.gate_decisions.clear();
    r.backend = crate::config::Backend::default();
    r
}

pub(crate) fn now_unix_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// Runs a sensor over `source` to its end (a replay) or until the source
/// stops (live: SIGINT/SIGTERM), then waits for the spool to drain.
pub fn run(
    source: &mut dyn PacketSource,
    rules: &Rules,
    cluster: &Cluster,
    popts: &Options,
    sopts: &SenseOptions,
) -> Result<SenseSummary, SenseError> {
    let me = cluster.sensor_index(&sopts.sensor).ok_or_else(|| SenseError::UnknownSensor(sopts.sensor.clone()))?;
    let metrics = SenseMetrics::new(popts.telemetry.as_ref().map(|t| &t.metrics.registry));
    let spool = Arc::new(Spool::open(&sopts.spool_dir, sopts.spool_bytes)?);
    let shards = popts.threads.max(1);

    let published = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (spool, cluster, metrics, published) = (spool.clone(), cluster.clone(), metrics.clone(), published.clone());
        let (url, sensor, stop) = (sopts.nats.clone(), sopts.sensor.clone(), sopts.stop.clone());
        std::thread::Builder::new()
            .name("vmsentry-publish".into())
            .spawn(move || publish(&url, &sensor, &cluster, &spool, &metrics, &published, &stop))
            .map_err(SenseError::Thread)?
    };

    let (tx, rx) = bounded::<Partial>(shards * 4);
    let combiner = {
        let (spool, metrics, sensor) = (spool.clone(), metrics.clone(), sopts.sensor.clone());
        let window_len_us = rules.window_len_us();
        std::thread::Builder::new()
            .name("vmsentry-combine".into())
            .spawn(move || combine(rx, shards, &sensor, window_len_us, &spool, &metrics))
            .map_err(SenseError::Thread)?
    };

    let reader = Arc::new(Mutex::new((ReaderStats::default(), 0u64)));
    let mut owned = Owned { inner: source, cluster, me, not_owned: 0 };
    let srules = sensor_rules(rules);
    let result = pipeline::run_with(
        &mut owned,
        &srules,
        Box::new(crate::action::LogSink::stderr()),
        Box::new(Discard),
        popts,
        Seam::Sense(tx, reader.clone()),
    );
    let not_owned = owned.not_owned;
    metrics.not_owned.inc_by(not_owned);
    let (windows, last_window) = combiner.join().unwrap_or_default();
    let source_stats = owned.stats();
    result?;
    let (st, queue_dropped) = reader.lock().map(|r| r.clone()).unwrap_or_default();
    let (_, _, spool_dropped) = spool.depth();
    let end = EndMsg {
        sensor: sopts.sensor.clone(),
        last_window,
        packets: st.packets,
        bytes: st.bytes,
        first_ts: st.first_ts.map(|t| t.as_micros()),
        last_ts: st.last_ts.map(|t| t.as_micros()),
        late_frames: st.late_frames,
        bad_length: st.bad_length,
        bad_time: st.bad_time,
        queue_dropped,
        damaged_files: source_stats.damaged_files,
        unsupported_link_files: source_stats.unsupported_link_files,
        not_owned,
        spool_dropped,
    };
    // The end is never dropped for room: it is what lets the controller finish.
    if !spool.push(&wire::encode(&Message::End(end)))? {
        eprintln!("vmsentry: sense: the spool is full; the end of this run was not recorded");
    }
    let mut waited = 0u64;
    while !spool.wait_empty(Duration::from_secs(1)) {
        if sopts.stop.load(Ordering::Acquire) || publisher.is_finished() {
            break;
        }
        waited += 1;
        if waited % 10 == 0 {
            let (n, bytes, _) = spool.depth();
            eprintln!("vmsentry: sense: waiting for NATS to take {n} buffered partials ({bytes} bytes)");
        }
    }
    spool.close();
    let _ = publisher.join();
    let (left, _, spool_dropped) = spool.depth();
    Ok(SenseSummary {
        windows,
        not_owned,
        published: published.load(Ordering::Acquire),
        published_bytes: metrics.published_bytes.get(),
        spool_dropped,
        left: left as u64,
    })
}

/// Sums the shards' partials of each window into one message and spools it.
/// Returns the windows sent and the last one.
fn combine(
    rx: Receiver<Partial>,
    shards: usize,
    sensor: &str,
    window_len_us: i64,
    spool: &Spool,
    metrics: &SenseMetrics,
) -> (u64, Option<i64>) {
    let mut pending: BTreeMap<i64, (usize, Partial)> = BTreeMap::new();
    let (mut windows, mut last) = (0u64, None);
    for part in rx {
        let e =
            pending.entry(part.window).or_insert_with(|| (0, Partial { window: part.window, ..Partial::default() }));
        e.0 += 1;
        wire::combine(&mut e.1, part);
        // Each shard closes windows in order, so they complete in order.
        while let Some(first) = pending.first_entry() {
            if first.get().0 < shards {
                break;
            }
            let (w, (_, mut p)) = first.remove_entry();
            wire::sum_counters(&mut p);
            let mut msg = WindowMsg::from_partial(sensor, window_len_us, &p);
            msg.closed_unix_us = now_unix_us();
            msg.spool_dropped = spool.depth().2;
            match spool.push(&wire::encode(&Message::Window(msg))) {
                Ok(true) => {}
                Ok(false) => metrics.dropped.inc(),
                Err(e) => {
                    metrics.dropped.inc();
                    eprintln!("vmsentry: sense: window {w} not buffered: {e}");
                }
            }
            let (n, bytes, _) = spool.depth();
            metrics.spool_messages.set(n as i64);
            metrics.spool_bytes.set(bytes as i64);
            windows += 1;
            last = Some(w);
        }
    }
    (windows, last)
}

/// The message id JetStream deduplicates by.
fn msg_id(m: &Message) -> String {
    match m {
        Message::Window(w) => format!("{}.{}", w.sensor, w.window),
        Message::End(e) => format!("{}.end.{}", e.sensor, e.last_window.map_or("none".into(), |w| w.to_string())),
    }
}

/// Spool → JetStream until the spool is closed and empty (or `stop` with the spool closed).
fn publish(
    url: &str,
    sensor: &str,
    cluster: &Cluster,
    spool: &Spool,
    metrics: &SenseMetrics,
    published: &AtomicU64,
    stop: &AtomicBool,
) {
    let name = format!("vmsentry-sense-{sensor}");
    let nats = loop {
        match Nats::connect(url, &name, true) {
            Ok(n) => break n,
            Err(e) => {
                eprintln!("vmsentry: sense: {e}; retrying");
                if spool.is_closed() && stop.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    let subject = cluster.subject(sensor);
    let mut backoff = Duration::from_millis(100);
    let mut stream_ok = false;
    loop {
        if !stream_ok {
            match nats.block_on(super::nats::partials_stream(&nats.js, cluster)) {
                Ok(_) => stream_ok = true,
                Err(e) => {
                    metrics.publish_errors.inc();
                    eprintln!("vmsentry: sense: {e}; retrying");
                    if spool.is_closed() && stop.load(Ordering::Acquire) {
                        return;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
        }
        let next = match spool.peek(Duration::from_millis(200)) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("vmsentry: sense: {e}");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let Some((seq, bytes)) = next else {
            if spool.is_closed() {
                return;
            }
            continue;
        };
        let id = match wire::decode(&bytes) {
            Ok(m) => msg_id(&m),
            Err(e) => {
                // Only this process writes the spool; a damaged file is skipped.
                eprintln!("vmsentry: sense: a buffered message is damaged ({e}); skipped");
                spool.remove(seq);
                continue;
            }
        };
        let size = bytes.len() as u64;
        let msg = async_nats::jetstream::message::PublishMessage::build().message_id(&id).payload(bytes.into());
        let sent = nats.block_on(async {
            let ack = nats.js.send_publish(subject.clone(), msg).await.map_err(|e| e.to_string())?;
            ack.await.map_err(|e| e.to_string())
        });
        match sent {
            Ok(_) => {
                spool.remove(seq);
                published.fetch_add(1, Ordering::AcqRel);
                metrics.published.inc();
                metrics.published_bytes.inc_by(size);
                let (n, b, _) = spool.depth();
                metrics.spool_messages.set(n as i64);
                metrics.spool_bytes.set(b as i64);
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                metrics.publish_errors.inc();
                if backoff >= Duration::from_secs(1) {
                    eprintln!("vmsentry: sense: publishing to NATS failed ({e}); buffering and retrying");
                }
                if spool.is_closed() && stop.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}
