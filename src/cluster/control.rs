//! Control: the cluster's merge: every sensor's partials from JetStream → windows closed once every live sensor passed them → detect, policy, journal, backends; one controller acts at a time (a KV lease).
//!
//! Threads: the NATS runtime (the durable consumer, the lease), a collector
//! (per-sensor watermarks, liveness, the combined partial of each window),
//! and the pipeline's own merge and dispatcher, which run exactly as in one
//! process: the collector hands the merge one partial per window, in window
//! order ([`crate::pipeline`]'s `Seam::Control`).
//!
//! **Windows.** A sensor's messages arrive in its window order. Window `w`
//! closes when every sensor that is up and has not ended has sent a window
//! `>= w`. A sensor silent (no message) for `down_after_s` of wall clock is
//! declared down (a `sensor` event) and holds nothing back; if it is heard
//! again it is up again, and its windows the controller already merged are
//! counted as late (`vmsentry_cluster_partials_total{outcome="late"}`) and
//! dropped. A window a sensor sends twice (a restarted sensor replaying, a
//! spool re-sent) counts once: the second is a duplicate by the sensor's
//! watermark (and JetStream drops a same-id message within two minutes).
//!
//! **State and takeover.** Each controller reads the stream from its start
//! through its own durable consumer (`control-<id>`, recreated at start),
//! so it rebuilds the whole state (levels, placement, migrations in flight,
//! cooldowns, storm limits, action ids) by the same deterministic merge: a
//! standby is hot, and has the same state as the active one. Only the
//! controller that holds the lease (KV `vmsentry_<cluster>_lease`, key
//! `controller`, renewed every third of `lease_ttl_s`, and only while its
//! last renewal is younger than two thirds of it) delivers actions;
//! the action ids are the same on every controller, and the actions bucket
//! records each as `sent` (before delivery) and `done` (after). A standby
//! holds each action it decided until the active one marks it `done` (then
//! skips it) or until it takes the lease (then delivers what is not `done`).
//! So when the active controller dies, the standby takes over within
//! `lease_ttl_s` plus one renewal period, loses no action, and repeats at
//! most those that were `sent` but not `done`, with the same id (the
//! at-least-once the journal already documents). The used move tokens are
//! the one decision state the stream cannot rebuild once its history is
//! gone: they are claimed in KV ([`super::tokens`]), through the detector's
//! token store ([`crate::trust::token::UsedNonces`]), from the merge thread,
//! which waits for KV's answer (bounded: [`super::tokens`]).

use super::nats::{kv_key, BlockingKv, Nats};
use super::wire::{self, EndMsg, Message};
use super::Cluster;
use crate::action::{Action, DeliveryGate};
use crate::capture::{CaptureError, PacketSource, SourceItem, SourceStats};
use crate::config::Rules;
use crate::event::{Event, EventSink, SensorEvent, SensorState as Heard, SummaryEvent};
use crate::pipeline::{self, Options, Partial, PipelineError, ReaderStats, Seam, SharedReader};
use crate::vocab::PacketTime;
use async_nats::jetstream;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use futures_util::StreamExt;
use prometheus::{Gauge, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Nats(#[from] super::nats::NatsError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("cannot start a controller thread: {0}")]
    Thread(std::io::Error),
}

pub struct ControlOptions {
    /// This controller's id (the lease's holder, its consumer's name).
    pub controller: String,
    pub nats: String,
    /// Stop (SIGINT/SIGTERM): close what is pending and finish.
    pub stop: Arc<AtomicBool>,
    /// Finish once every sensor has ended (sent its end) or is down.
    pub until_end: bool,
}

/// The controller's Prometheus series.
#[derive(Clone)]
pub struct ControlMetrics {
    pub partials: IntCounterVec,
    pub sensors_up: IntGauge,
    pub sensor_up: IntGaugeVec,
    pub lag: Gauge,
    pub pending: IntGauge,
    pub lease: IntGaugeVec,
    pub level_delay: Histogram,
    pub window_delay: Histogram,
    pub token_claims: IntCounterVec,
    pub token_claim_wait: prometheus::Counter,
}

impl ControlMetrics {
    fn new(registry: Option<&prometheus::Registry>) -> ControlMetrics {
        // Buckets doubling from 0.5 ms to 16 s.
        let delay = |name: &str, help: &str| {
            Histogram::with_opts(
                HistogramOpts::new(name, help)
                    .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16).unwrap_or_default()),
            )
            .unwrap_or_else(|_| unreachable!())
        };
        let m = ControlMetrics {
            partials: IntCounterVec::new(
                Opts::new("vmsentry_cluster_partials_total", "Window partials received, by what became of them."),
                &["outcome"],
            )
            .unwrap_or_else(|_| unreachable!()),
            sensors_up: IntGauge::new("vmsentry_cluster_sensors_up", "Sensors not declared down.")
                .unwrap_or_else(|_| unreachable!()),
            sensor_up: IntGaugeVec::new(
                Opts::new("vmsentry_cluster_sensor_up", "1 while a sensor is up."),
                &["sensor"],
            )
            .unwrap_or_else(|_| unreachable!()),
            lag: Gauge::new(
                "vmsentry_cluster_lag_seconds",
                "Wall clock from the newest merged window's close at its last sensor to its merge here.",
            )
            .unwrap_or_else(|_| unreachable!()),
            pending: IntGauge::new("vmsentry_cluster_windows_pending", "Windows waiting for a sensor's watermark.")
                .unwrap_or_else(|_| unreachable!()),
            lease: IntGaugeVec::new(
                Opts::new("vmsentry_cluster_lease_held", "1 while this controller holds the lease (acts)."),
                &["controller"],
            )
            .unwrap_or_else(|_| unreachable!()),
            level_delay: delay(
                "vmsentry_cluster_level_event_delay_seconds",
                "Wall clock from a window's close at its last sensor to a level event of it here.",
            ),
            window_delay: delay(
                "vmsentry_cluster_window_delay_seconds",
                "Wall clock from a window's close at its last sensor to its merge here, every window.",
            ),
            token_claims: IntCounterVec::new(
                Opts::new(
                    "vmsentry_cluster_token_claims_total",
                    "Migration tokens claimed in the shared used-tokens bucket, by outcome (unavailable: refused).",
                ),
                &["outcome"],
            )
            .unwrap_or_else(|_| unreachable!()),
            token_claim_wait: prometheus::Counter::new(
                "vmsentry_cluster_token_claim_wait_seconds_total",
                "Wall clock the merge spent waiting for the used-tokens bucket to answer token claims.",
            )
            .unwrap_or_else(|_| unreachable!()),
        };
        if let Some(r) = registry {
            let _ = r.register(Box::new(m.token_claims.clone()));
            let _ = r.register(Box::new(m.token_claim_wait.clone()));
            let _ = r.register(Box::new(m.window_delay.clone()));
            let _ = r.register(Box::new(m.level_delay.clone()));
            let _ = r.register(Box::new(m.partials.clone()));
            let _ = r.register(Box::new(m.sensors_up.clone()));
            let _ = r.register(Box::new(m.sensor_up.clone()));
            let _ = r.register(Box::new(m.lag.clone()));
            let _ = r.register(Box::new(m.pending.clone()));
            let _ = r.register(Box::new(m.lease.clone()));
        }
        m
    }
}

/// The controller's source: no frames (they are the sensors'); its stats
/// are the sensors' file stats, summed as their ends arrive.
struct Sensors(Arc<Mutex<SourceStats>>);

impl PacketSource for Sensors {
    fn run(&mut self, _: &mut dyn FnMut(SourceItem<'_>) -> ControlFlow<()>) -> Result<(), CaptureError> {
        Ok(())
    }
    fn stats(&self) -> SourceStats {
        self.0.lock().map(|s| *s).unwrap_or_default()
    }
}

/// The merge's events, with the collector's `sensor` events put in before
/// the next one (they are stamped with the newest merged window's end).
struct WithSensorEvents {
    inner: Box<dyn EventSink>,
    queued: Arc<Mutex<Vec<Event>>>,
    closed_at: ClosedAt,
    metrics: ControlMetrics,
    /// The newest packet time written.
    last: Option<PacketTime>,
}

impl WithSensorEvents {
    /// Writes the queued events stamped before `before` (all of them with `None`).
    fn drain(&mut self, before: Option<PacketTime>) -> std::io::Result<()> {
        let due: Vec<Event> = {
            let mut q = self.queued.lock().unwrap_or_else(|p| p.into_inner());
            let (due, keep) = q.drain(..).partition(|e| before.is_none_or(|b| e.ts() < b));
            *q = keep;
            due
        };
        for e in &due {
            self.inner.emit(e)?;
        }
        Ok(())
    }
}

/// A sensor event stamped `T` goes after the merge's events up to `T` (the
/// verdicts of the window ending at `T`) and before any later one.
impl EventSink for WithSensorEvents {
    fn emit(&mut self, e: &Event) -> std::io::Result<()> {
        if let Event::Level(l) = e {
            if let Some(closed) = self.closed_at.lock().ok().and_then(|c| c.get(&l.ts).copied()) {
                self.metrics.level_delay.observe((super::sense::now_unix_us() - closed).max(0) as f64 / 1e6);
            }
        }
        // The end of the run's events come after every sensor event.
        let before = if matches!(e, Event::VmStats(_) | Event::Summary(_)) { None } else { Some(e.ts()) };
        self.drain(before)?;
        self.last = self.last.max(Some(e.ts()));
        self.inner.emit(e)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        // After a window's events: those stamped at its end or earlier.
        if let Some(t) = self.last {
            self.drain(Some(t.saturating_add_micros(1)))?;
        }
        self.inner.flush()
    }
}

/// What the NATS side hands the collector.
enum Input {
    Msg(Vec<u8>),
}

struct SensorState {
    up: bool,
    ended: bool,
    /// The newest window merged from it (or dropped as late).
    wm: Option<i64>,
    last_heard: Instant,
    end: Option<EndMsg>,
}

struct Collector {
    cluster: Cluster,
    window_len_us: i64,
    sensors: Vec<SensorState>,
    /// Window → (combined partial, newest close time at a sensor).
    pending: BTreeMap<i64, (Partial, i64)>,
    closed_through: Option<i64>,
    out: Option<Sender<Partial>>,
    reader: SharedReader,
    source: Arc<Mutex<SourceStats>>,
    events: Arc<Mutex<Vec<Event>>>,
    metrics: ControlMetrics,
    warned_len: bool,
    /// Window end → wall clock of its close at its last sensor (for the delay histogram).
    closed_at: ClosedAt,
}

type ClosedAt = Arc<Mutex<BTreeMap<PacketTime, i64>>>;

impl Collector {
    fn count(&self, outcome: &str) {
        self.metrics.partials.with_label_values(&[outcome]).inc();
    }

    fn heard(&mut self, s: usize) {
        let st = &mut self.sensors[s];
        st.last_heard = Instant::now();
        if !st.up {
            st.up = true;
            eprintln!("vmsentry: control: sensor {} is up again", self.cluster.sensors[s].id);
            self.sensor_event(s, Heard::Up, None);
        }
    }

    fn sensor_event(&mut self, s: usize, state: Heard, silent_s: Option<f64>) {
        let ts = self.closed_through.map_or(PacketTime::ZERO, |w| PacketTime::window_end(w, self.window_len_us));
        let last = self.sensors[s].wm.map(|w| PacketTime::window_start(w, self.window_len_us));
        let ev = Event::Sensor(SensorEvent {
            ts,
            sensor: self.cluster.sensors[s].id.clone(),
            state,
            silent_s,
            last_window_start: last,
        });
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push(ev);
        let up = self.sensors.iter().filter(|s| s.up).count();
        self.metrics.sensors_up.set(up as i64);
        let v = i64::from(state == Heard::Up);
        self.metrics.sensor_up.with_label_values(&[&self.cluster.sensors[s].id]).set(v);
    }

    fn message(&mut self, bytes: &[u8]) {
        let m = match wire::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.count("malformed");
                eprintln!("vmsentry: control: a partial was refused: {e}");
                return;
            }
        };
        match m {
            Message::Window(w) => {
                let Some(s) = self.cluster.sensor_index(&w.sensor) else {
                    self.count("unknown_sensor");
                    return;
                };
                if w.window_len_us != self.window_len_us {
                    self.count("window_mismatch");
                    if !self.warned_len {
                        self.warned_len = true;
                        eprintln!(
                            "vmsentry: control: sensor {} uses {} µs windows, the rules {}: its partials are dropped",
                            w.sensor, w.window_len_us, self.window_len_us
                        );
                    }
                    return;
                }
                self.heard(s);
                if self.sensors[s].wm.is_some_and(|wm| wm >= w.window) {
                    self.count("duplicate");
                    return;
                }
                self.sensors[s].wm = Some(w.window);
                // A sensor that ended and sends a new window runs again (restarted).
                self.sensors[s].ended = false;
                if self.closed_through.is_some_and(|c| c >= w.window) {
                    self.count("late");
                    return;
                }
                let part = match w.to_partial() {
                    Ok(p) => p,
                    Err(e) => {
                        self.count("malformed");
                        eprintln!("vmsentry: control: a partial of {} was refused: {e}", w.sensor);
                        return;
                    }
                };
                self.count("merged");
                let e = self
                    .pending
                    .entry(w.window)
                    .or_insert_with(|| (Partial { window: w.window, ..Partial::default() }, i64::MIN));
                wire::combine(&mut e.0, part);
                e.1 = e.1.max(w.closed_unix_us);
            }
            Message::End(end) => {
                let Some(s) = self.cluster.sensor_index(&end.sensor) else {
                    self.count("unknown_sensor");
                    return;
                };
                self.heard(s);
                self.count("end");
                self.sensors[s].ended = true;
                self.sensors[s].end = Some(end);
                self.sum_ends();
            }
        }
        self.try_close();
    }

    /// The summary's reader counts: every sensor's last run, summed.
    fn sum_ends(&mut self) {
        let (mut st, mut queue, mut src) = (ReaderStats::default(), 0u64, SourceStats::default());
        for e in self.sensors.iter().filter_map(|s| s.end.as_ref()) {
            let r = e.reader_stats();
            st.packets += r.packets;
            st.bytes += r.bytes;
            st.first_ts = match (st.first_ts, r.first_ts) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            st.last_ts = st.last_ts.max(r.last_ts);
            st.late_frames += r.late_frames;
            st.bad_length += r.bad_length;
            st.bad_time += r.bad_time;
            queue += e.queue_dropped;
            src.damaged_files += e.damaged_files;
            src.unsupported_link_files += e.unsupported_link_files;
        }
        if let Ok(mut r) = self.reader.lock() {
            *r = (st, queue);
        }
        if let Ok(mut s) = self.source.lock() {
            *s = src;
        }
    }

    /// Declares silent sensors down; their events are stamped with the end
    /// of the newest window that closes once they no longer hold it back.
    fn tick(&mut self, down_after: Duration) {
        let mut down = Vec::new();
        for s in 0..self.sensors.len() {
            let st = &self.sensors[s];
            if st.up && !st.ended && st.last_heard.elapsed() > down_after {
                let silent = st.last_heard.elapsed().as_secs_f64();
                self.sensors[s].up = false;
                eprintln!(
                    "vmsentry: control: sensor {} silent for {silent:.1} s: down; windows no longer wait for it",
                    self.cluster.sensors[s].id
                );
                down.push((s, (silent * 1000.0).round() / 1000.0));
            }
        }
        self.try_close();
        for (s, silent) in down {
            self.sensor_event(s, Heard::Down, Some(silent));
        }
    }

    /// Closes every window all live sensors have passed, in order.
    fn try_close(&mut self) {
        let limit = self.sensors.iter().filter(|s| s.up && !s.ended).map(|s| s.wm.unwrap_or(i64::MIN)).min();
        let limit = limit.unwrap_or(i64::MAX);
        while let Some(first) = self.pending.first_entry() {
            if *first.key() > limit {
                break;
            }
            let (w, (mut p, closed)) = first.remove_entry();
            wire::sum_counters(&mut p);
            self.closed_through = Some(w);
            if closed > 0 {
                let lag = (super::sense::now_unix_us() - closed) as f64 / 1e6;
                self.metrics.lag.set(lag);
                self.metrics.window_delay.observe(lag.max(0.0));
                let end = PacketTime::window_end(w, self.window_len_us);
                let mut c = self.closed_at.lock().unwrap_or_else(|p| p.into_inner());
                c.insert(end, closed);
                while c.len() > 4096 {
                    c.pop_first();
                }
            }
            if let Some(out) = &self.out {
                if out.send(p).is_err() {
                    self.out = None;
                }
            }
        }
        self.metrics.pending.set(self.pending.len() as i64);
    }

    fn all_done(&self) -> bool {
        self.sensors.iter().all(|s| s.ended || !s.up) && self.sensors.iter().any(|s| s.ended)
    }

    fn run(mut self, rx: Receiver<Input>, down_after: Duration, stop: &AtomicBool, until_end: bool) {
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(Input::Msg(b)) => self.message(&b),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if rx.is_empty() {
                self.tick(down_after);
            }
            if stop.load(Ordering::Acquire) || (until_end && rx.is_empty() && self.all_done()) {
                break;
            }
        }
        // Finishing: what is pending closes as it is.
        for s in &mut self.sensors {
            s.ended = true;
        }
        self.try_close();
    }
}

/// The lease and the actions bucket, shared by the NATS side and the dispatcher.
struct Lease {
    held: AtomicBool,
    /// Milliseconds after `t0` of the last renewal that JetStream accepted.
    renewed_ms: std::sync::atomic::AtomicU64,
    t0: Instant,
    ttl: Duration,
    /// Set when the controller has finished: the lease is handed over.
    closing: AtomicBool,
    /// SIGINT/SIGTERM: a standby stops waiting for its actions.
    stop: Arc<AtomicBool>,
    actions: BlockingKv,
}

impl Lease {
    fn state(&self, id: &str) -> Option<String> {
        match self.actions.get(&kv_key(id), super::nats::REQUEST_TIMEOUT) {
            Ok(Some(v)) => Some(String::from_utf8_lossy(&v).into_owned()),
            _ => None,
        }
    }

    fn mark(&self, id: &str, state: &'static str) {
        let key = kv_key(id);
        for _ in 0..10 {
            if self.actions.put(&key, state.as_bytes(), super::nats::REQUEST_TIMEOUT).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("vmsentry: control: cannot record action {id} as {state} in NATS");
    }
}

impl Lease {
    /// Held, and renewed recently enough that no other controller can have
    /// taken it (a renewal stuck on a slow NATS must not let two act).
    fn acting(&self) -> bool {
        let since = (self.t0.elapsed().as_millis() as u64).saturating_sub(self.renewed_ms.load(Ordering::Acquire));
        self.held.load(Ordering::Acquire) && since < (self.ttl.as_millis() as u64) * 2 / 3
    }
}

impl DeliveryGate for Lease {
    fn before(&self, action: &Action) -> bool {
        loop {
            if self.state(&action.id).as_deref() == Some("done") {
                return false;
            }
            if self.acting() {
                self.mark(&action.id, "sent");
                return true;
            }
            if self.stop.load(Ordering::Acquire) {
                eprintln!("vmsentry: control: action {} left to the controller holding the lease", action.id);
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    fn after(&self, action: &Action) {
        self.mark(&action.id, "done");
    }
}

const LEASE_KEY: &str = "controller";

/// Keeps or takes the lease, every third of its time to live.
async fn hold_lease(
    kv: async_nats::jetstream::kv::Store,
    me: String,
    ttl: Duration,
    lease: Arc<Lease>,
    m: ControlMetrics,
) {
    let every = ttl / 3;
    let mut revision: Option<u64> = None;
    loop {
        if lease.closing.load(Ordering::Acquire) {
            if revision.is_some() {
                // Hand over at once rather than after the time to live.
                let _ = tokio::time::timeout(super::nats::REQUEST_TIMEOUT, kv.purge(LEASE_KEY)).await;
                lease.held.store(false, Ordering::Release);
                m.lease.with_label_values(&[&me]).set(0);
            }
            return;
        }
        let t = every;
        revision = match revision {
            Some(rev) => match tokio::time::timeout(t, kv.update(LEASE_KEY, me.clone().into(), rev)).await {
                Ok(Ok(r)) => Some(r),
                _ => {
                    eprintln!("vmsentry: control: {me} lost the lease");
                    None
                }
            },
            None => match tokio::time::timeout(t, kv.create(LEASE_KEY, me.clone().into())).await {
                Ok(Ok(r)) => {
                    eprintln!("vmsentry: control: {me} holds the lease and acts");
                    Some(r)
                }
                _ => None,
            },
        };
        if revision.is_some() {
            lease.renewed_ms.store(lease.t0.elapsed().as_millis() as u64, Ordering::Release);
        }
        lease.held.store(revision.is_some(), Ordering::Release);
        m.lease.with_label_values(&[&me]).set(i64::from(revision.is_some()));
        tokio::time::sleep(every).await;
    }
}

/// Reads the stream from its start into the collector, for as long as the collector listens.
async fn consume(nats_js: async_nats::jetstream::Context, cluster: Cluster, me: String, tx: Sender<Input>) {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    let durable = format!("control-{me}");
    let mut fresh = true;
    loop {
        let stream = match super::nats::partials_stream(&nats_js, &cluster).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("vmsentry: control: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if fresh {
            // A starting controller rebuilds its state from the stream's start.
            let _ = stream.delete_consumer(&durable).await;
            fresh = false;
        }
        let consumer = stream
            .get_or_create_consumer(
                &durable,
                pull::Config {
                    durable_name: Some(durable.clone()),
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::Explicit,
                    max_ack_pending: 4096,
                    ..Default::default()
                },
            )
            .await;
        let consumer = match consumer {
            Ok(c) => c,
            Err(e) => {
                eprintln!("vmsentry: control: consumer {durable}: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                eprintln!("vmsentry: control: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(m) = messages.next().await {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("vmsentry: control: reading partials: {e}");
                    break;
                }
            };
            let mut item = Input::Msg(m.payload.to_vec());
            loop {
                match tx.try_send(item) {
                    Ok(()) => break,
                    Err(crossbeam_channel::TrySendError::Full(back)) => {
                        item = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(crossbeam_channel::TrySendError::Disconnected(_)) => return,
                }
            }
            let _ = m.ack().await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs a controller until every sensor ended (`until_end`) or `stop`.
pub fn run(
    rules: &Rules,
    cluster: &Cluster,
    events: Box<dyn EventSink>,
    popts: &Options,
    copts: &ControlOptions,
) -> Result<SummaryEvent, ControlError> {
    let metrics = ControlMetrics::new(popts.telemetry.as_ref().map(|t| &t.metrics.registry));
    let nats = Nats::connect(&copts.nats, &format!("vmsentry-control-{}", copts.controller), true)?;
    // A NATS cluster that is still electing its JetStream leader answers
    // "temporarily unavailable": wait for it, up to a minute.
    type Buckets = (jetstream::kv::Store, jetstream::kv::Store, (jetstream::kv::Store, bool));
    let setup = |what: &str| -> Result<Buckets, super::nats::NatsError> {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let r = nats.block_on(async {
                super::nats::partials_stream(&nats.js, cluster).await?;
                let (lb, ab) = (cluster.lease_bucket(), cluster.actions_bucket());
                let lease = super::nats::bucket(&nats.js, &lb, cluster.lease_ttl, cluster.replicas).await?;
                let actions = super::nats::bucket(&nats.js, &ab, cluster.retention, cluster.replicas).await?;
                // Used nonces are kept for good (no age limit; one with a limit is refused).
                let tokens = super::nats::tokens_bucket(&nats.js, &cluster.tokens_bucket(), cluster.replicas).await?;
                Ok((lease, actions, tokens))
            });
            match r {
                Ok(x) => return Ok(x),
                Err(
                    e @ (super::nats::NatsError::TokensExpire { .. } | super::nats::NatsError::TokensDropped { .. }),
                ) => return Err(e),
                Err(e) if Instant::now() < until => {
                    eprintln!("vmsentry: control: {what}: {e}; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    };
    let (lease_kv, actions_kv, (tokens_kv, made)) = setup("setting up the stream and buckets")?;
    if made {
        eprintln!(
            "vmsentry: control: warning: the used-tokens bucket {} was missing and is made now, empty: \
             tokens used before it was lost (and no longer in the stream) are not known to be used, \
             and a replay of one is accepted until it expires",
            cluster.tokens_bucket()
        );
    }
    let used_tokens = Arc::new(super::tokens::KvNonces::new(
        BlockingKv::new(tokens_kv, nats.rt.handle().clone()),
        metrics.token_claims.clone(),
        metrics.token_claim_wait.clone(),
        super::tokens::CLAIM_WAIT,
    ));
    let lease = Arc::new(Lease {
        held: AtomicBool::new(false),
        renewed_ms: std::sync::atomic::AtomicU64::new(0),
        t0: Instant::now(),
        ttl: cluster.lease_ttl,
        closing: AtomicBool::new(false),
        stop: copts.stop.clone(),
        actions: BlockingKv::new(actions_kv, nats.rt.handle().clone()),
    });
    metrics.sensors_up.set(cluster.sensors.len() as i64);
    for s in &cluster.sensors {
        metrics.sensor_up.with_label_values(&[&s.id]).set(1);
    }
    nats.rt.spawn(hold_lease(lease_kv, copts.controller.clone(), cluster.lease_ttl, lease.clone(), metrics.clone()));

    let (in_tx, in_rx) = bounded::<Input>(1024);
    nats.rt.spawn(consume(nats.js.clone(), cluster.clone(), copts.controller.clone(), in_tx));

    let (part_tx, part_rx) = bounded::<Partial>(16);
    let reader: SharedReader = Arc::new(Mutex::new((ReaderStats::default(), 0)));
    let source_stats = Arc::new(Mutex::new(SourceStats::default()));
    let queued = Arc::new(Mutex::new(Vec::new()));
    let closed_at: ClosedAt = Arc::new(Mutex::new(BTreeMap::new()));
    let now = Instant::now();
    let collector = Collector {
        cluster: cluster.clone(),
        window_len_us: rules.window_len_us(),
        sensors: cluster
            .sensors
            .iter()
            .map(|_| SensorState { up: true, ended: false, wm: None, last_heard: now, end: None })
            .collect(),
        pending: BTreeMap::new(),
        closed_through: None,
        out: Some(part_tx),
        reader: reader.clone(),
        source: source_stats.clone(),
        events: queued.clone(),
        metrics: metrics.clone(),
        warned_len: false,
        closed_at: closed_at.clone(),
    };
    let (stop, until_end, down_after) = (copts.stop.clone(), copts.until_end, cluster.down_after);
    let collector = std::thread::Builder::new()
        .name("vmsentry-collect".into())
        .spawn(move || collector.run(in_rx, down_after, &stop, until_end))
        .map_err(ControlError::Thread)?;

    let mut source = Sensors(source_stats);
    let events = Box::new(WithSensorEvents { inner: events, queued, closed_at, metrics: metrics.clone(), last: None });
    let gate: Arc<dyn DeliveryGate> = lease.clone();
    let result = pipeline::run_with(
        &mut source,
        rules,
        Box::new(crate::action::LogSink::stderr()),
        events,
        popts,
        Seam::Control { partials: part_rx, reader, gate, used_tokens },
    );
    lease.closing.store(true, Ordering::Release);
    let _ = collector.join();
    // Let the lease task hand the lease over before the runtime goes.
    let until = Instant::now() + Duration::from_secs(3);
    while lease.held.load(Ordering::Acquire) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = nats.block_on(nats.client.flush());
    Ok(result?)
}

#[cfg(test)]
mod tests {
    //! The collector's window rule: a window closes once every live sensor
    //! has passed it; duplicates and late windows count once or not at all.
    use super::*;
    use crate::cluster::wire::WindowMsg;
    use std::os::unix::fs::PermissionsExt;

    fn cluster() -> (tempfile::TempDir, Cluster) {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("k"), [b'k'; 32]).unwrap();
        std::fs::set_permissions(d.path().join("k"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = "[cluster]\nname = \"t\"\nkey_file = \"k\"\n";
        let rules = Rules::from_str_in(d.path(), std::path::Path::new("t.toml"), text).unwrap();
        let c = "[[sensor]]\nid = \"a\"\n[[sensor]]\nid = \"b\"\n";
        (d, Cluster::from_str(&rules, std::path::Path::new("cluster.toml"), c).unwrap())
    }

    fn collector(c: &Cluster) -> (Collector, Receiver<Partial>, Arc<Mutex<Vec<Event>>>) {
        let (tx, rx) = bounded(64);
        let events = Arc::new(Mutex::new(Vec::new()));
        let now = Instant::now();
        let col = Collector {
            cluster: c.clone(),
            window_len_us: 1_000_000,
            sensors: c
                .sensors
                .iter()
                .map(|_| SensorState { up: true, ended: false, wm: None, last_heard: now, end: None })
                .collect(),
            pending: BTreeMap::new(),
            closed_through: None,
            out: Some(tx),
            reader: Arc::new(Mutex::new((ReaderStats::default(), 0))),
            source: Arc::new(Mutex::new(SourceStats::default())),
            events: events.clone(),
            metrics: ControlMetrics::new(None),
            warned_len: false,
            closed_at: Arc::new(Mutex::new(BTreeMap::new())),
        };
        (col, rx, events)
    }

    fn window(sensor: &str, w: i64, tx_packets: u64) -> Vec<u8> {
        let msg = WindowMsg {
            sensor: sensor.into(),
            window: w,
            window_len_us: 1_000_000,
            counters: vec![([2, 0, 0, 0, 0, 1], [tx_packets * 100, tx_packets, 0, 0])],
            decode_errors: vec![0; crate::decode::DecodeErrorKind::COUNT],
            ..Default::default()
        };
        wire::encode(&Message::Window(msg))
    }

    fn closed(rx: &Receiver<Partial>) -> Vec<(i64, u64)> {
        rx.try_iter().map(|p| (p.window, p.counters.iter().map(|c| c.1.tx_packets).sum())).collect()
    }

    #[test]
    fn a_window_waits_for_every_live_sensor_and_duplicates_count_once() {
        let (_d, c) = cluster();
        let (mut col, rx, _) = collector(&c);
        col.message(&window("a", 5, 1));
        col.message(&window("a", 6, 2));
        assert_eq!(closed(&rx), [], "b has sent nothing");
        col.message(&window("b", 5, 10));
        assert_eq!(closed(&rx), [(5, 11)]);
        // A sends 6 again (a restarted sensor): counted once.
        col.message(&window("a", 6, 2));
        col.message(&window("b", 7, 30));
        assert_eq!(closed(&rx), [(6, 2)]);
        assert_eq!(col.metrics.partials.with_label_values(&["duplicate"]).get(), 1);
        // A's end lets 7 close without it.
        let end = EndMsg { sensor: "a".into(), packets: 3, ..Default::default() };
        col.message(&wire::encode(&Message::End(end)));
        assert_eq!(closed(&rx), [(7, 30)]);
        assert_eq!(col.reader.lock().unwrap().0.packets, 3);
        col.message(b"not a partial");
        assert_eq!(col.metrics.partials.with_label_values(&["malformed"]).get(), 1);
    }

    #[test]
    fn a_silent_sensor_is_declared_down_and_its_late_windows_are_dropped() {
        let (_d, c) = cluster();
        let (mut col, rx, events) = collector(&c);
        col.message(&window("a", 1, 1));
        col.message(&window("a", 2, 2));
        col.sensors[1].last_heard = Instant::now() - Duration::from_secs(11);
        col.tick(Duration::from_secs(10));
        assert_eq!(closed(&rx), [(1, 1), (2, 2)]);
        let ev = events.lock().unwrap().clone();
        let Event::Sensor(s) = &ev[0] else { panic!("{ev:?}") };
        assert_eq!((s.sensor.as_str(), s.state, s.ts.as_micros()), ("b", Heard::Down, 3_000_000));
        // b comes back with window 2, already merged: late, dropped; up again.
        col.message(&window("b", 2, 50));
        assert_eq!(col.metrics.partials.with_label_values(&["late"]).get(), 1);
        assert_eq!(closed(&rx), []);
        let ev = events.lock().unwrap().clone();
        let Event::Sensor(s) = &ev[1] else { panic!("{ev:?}") };
        assert_eq!(s.state, Heard::Up);
        // And holds windows back again.
        col.message(&window("a", 3, 3));
        assert_eq!(closed(&rx), []);
        col.message(&window("b", 3, 4));
        assert_eq!(closed(&rx), [(3, 7)]);
    }
}
