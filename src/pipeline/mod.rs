//! Pipeline: reader → batches → shard workers → window merge → detect → policy → dispatch.
//!
//! The reader (the calling thread) picks a shard for each frame by a
//! direction-independent flow hash over fixed header offsets
//! ([`flow_hash`]), and copies the frame's first `limits.decode_bytes` into
//! that shard's batch: a byte arena plus one small record per frame. Full
//! batches cross to the shard's bounded queue, and emptied batches come back
//! through a pool, so the hot path does not allocate. The shard decodes
//! (etherparse) and measures. Keeping decode off the reader is measured, not
//! guessed: the reader is the one stage that cannot be split, and with
//! decode on it replay ran at 0.8x tcpdump's speed (benches/README.md). When packet time enters a new window, the reader flushes
//! every batch and sends every shard a `Close` for the old window: that is
//! the watermark. Each shard then hands its partial counters to the merge,
//! which closes the window once all shards have reported. Replay never drops:
//! a full queue makes the reader wait.
//!
//! The window of a frame is decided by the reader alone (a frame stamped
//! earlier than the current window counts in the current one), so events are
//! the same for every thread count.

mod evacuation;
mod merge;
mod shard;

pub use evacuation::IdsCounts;

use crate::action::{ActionSink, Dispatcher};
use crate::capture::{CaptureError, PacketSource, RawPacket, SourceItem};
use crate::config::Rules;
use crate::decode::{flow_hash, DecodeErrorKind, Mac};
use crate::detect::Detector;
use crate::event::{ActionCounts, Event, EventSink, RttSummary, SummaryEvent, VmStatsEvent};
use crate::measure::placement::{Evidence, PlacementConfig, SharedPlacement};
use crate::measure::rtt::{RttCounts, RttSample};
use crate::measure::Counters;
use crate::policy::Policy;
use crate::serve::Telemetry;
use crate::time::PacketTime;
use crate::trust::Registry;
use crossbeam_channel::{bounded, Receiver, Sender};
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One frame in a [`RawBatch`]: its bytes are `bytes[prev.end..end]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FrameMeta {
    pub ts: PacketTime,
    pub orig_len: u32,
    pub cap_len: u32,
    pub linktype: i32,
    pub end: u32,
}

/// Frames for one shard: their leading bytes, back to back, and their records.
#[derive(Default)]
pub(crate) struct RawBatch {
    pub meta: Vec<FrameMeta>,
    pub bytes: Vec<u8>,
}

impl RawBatch {
    fn with_capacity(frames: usize, decode_bytes: usize) -> RawBatch {
        RawBatch { meta: Vec::with_capacity(frames), bytes: Vec::with_capacity(frames * decode_bytes) }
    }
    pub fn clear(&mut self) {
        self.meta.clear();
        self.bytes.clear();
    }
    pub fn len(&self) -> usize {
        self.meta.len()
    }
    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }
}

/// Reader to shard.
pub(crate) enum ShardMsg {
    Batch(RawBatch),
    /// Every frame of `window` has been sent: hand its counters to the merge.
    Close {
        window: i64,
    },
}

/// Shard to merge: one shard's counters of one window.
pub(crate) struct Partial {
    #[allow(dead_code)]
    pub shard: usize,
    pub window: i64,
    pub counters: Vec<(Mac, Counters)>,
    pub overflow: u64,
    pub decode: DecodeCounts,
    pub samples: Vec<RttSample>,
    pub rtt_counts: RttCounts,
    pub rtt_dropped: u64,
    pub evidence: Evidence,
}

/// Decode outcomes, counted by the shards and summed at the merge.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecodeCounts {
    pub errors: [u64; DecodeErrorKind::COUNT],
    pub snaplen_cut: u64,
}

impl DecodeCounts {
    pub fn add(&mut self, o: &DecodeCounts) {
        for (a, b) in self.errors.iter_mut().zip(o.errors.iter()) {
            *a += b;
        }
        self.snaplen_cut += o.snaplen_cut;
    }
}

#[derive(Clone)]
pub struct Options {
    /// Shard workers (at least 1).
    pub threads: usize,
    /// Pace the replay at this multiple of packet time; `None`: as fast as possible.
    pub speed: Option<f64>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Write every RTT sample as an `rtt_sample` event.
    pub rtt_samples: bool,
    /// Write each VM's rates of each window as a `vm_window` event.
    pub vm_windows: bool,
    /// A live source: when a shard's queue is full, drop the batch (counted)
    /// instead of waiting, so the capture never stalls.
    pub live: bool,
    /// Metrics and the HTTP API's state, when serving.
    pub telemetry: Option<Arc<Telemetry>>,
    /// Set (by SIGHUP) to re-read the rules at the next window.
    pub reload: Option<Arc<AtomicBool>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            threads: 1,
            speed: None,
            progress: false,
            rtt_samples: false,
            vm_windows: false,
            live: false,
            telemetry: None,
            reload: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("cannot start a pipeline thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Dispatch(#[from] crate::action::DispatchError),
    #[error("a pipeline thread stopped unexpectedly")]
    ThreadDied,
    #[error("cannot write events: {0}")]
    Events(std::io::Error),
    #[error("cannot follow the IDS alert file {path}: {source}")]
    Ids {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Counters the reader keeps; published once at the end (never per packet).
#[derive(Clone, Debug, Default)]
pub struct ReaderStats {
    pub packets: u64,
    pub bytes: u64,
    pub first_ts: Option<PacketTime>,
    pub last_ts: Option<PacketTime>,
}

/// Replays a source through the whole pipeline, writing events to `events`,
/// and returns the final summary (also written as the last event).
pub fn run(
    source: &mut dyn PacketSource,
    rules: &Rules,
    sink: Box<dyn ActionSink>,
    events: Box<dyn EventSink>,
    opts: &Options,
) -> Result<SummaryEvent, PipelineError> {
    let started = Instant::now();
    let shards = opts.threads.max(1);
    let limits = &rules.limits;
    let window_len_us = rules.window_len_us();

    let registry = Registry::build(&rules.key, &rules.cluster, &rules.hypervisors);
    let policy = Policy::new(rules, registry.clone());
    let detector = Detector::new(rules, registry);
    let placement = Arc::new(SharedPlacement::new(PlacementConfig::from_rules(rules)));
    let dispatcher = Dispatcher::start_with(&rules.backend, limits.action_queue, opts.telemetry.clone(), sink)?;

    // IDS alerts: followed live, or read whole to replay along with the capture.
    let (alert_tx, alert_rx) = bounded::<evacuation::AlertBatch>(64);
    let (stop_followers, followers_stop) = bounded::<()>(0);
    let mut followers = Vec::new();
    let mut mtd = evacuation::Mtd::new(rules);
    if opts.live {
        for (input, i) in rules.ids.iter().enumerate() {
            let tx = alert_tx.clone();
            let f = crate::ids::Follower::open(&i.path, i.format, i.checkpoint.as_deref(), i.from_start);
            let h = f
                .watch(followers_stop.clone(), move |alerts, malformed| {
                    let (done, handled) = bounded(1);
                    tx.send(evacuation::AlertBatch { input, alerts, malformed, done }).is_ok() && handled.recv().is_ok()
                })
                .map_err(|source| PipelineError::Ids { path: i.path.clone(), source })?;
            followers.push(h);
        }
    } else {
        let (mut all, mut malformed) = (Vec::new(), 0);
        for (input, i) in rules.ids.iter().enumerate() {
            if !i.path.exists() {
                eprintln!("vmsentry: IDS alert file {} not found; replaying without it", i.path.display());
                continue;
            }
            let mut f = crate::ids::Follower::open(&i.path, i.format, None, true);
            let mut alerts = Vec::new();
            f.poll(&mut alerts).map_err(|source| PipelineError::Ids { path: i.path.clone(), source })?;
            malformed += f.malformed;
            all.extend(alerts.into_iter().map(|a| (input, a)));
        }
        mtd = mtd.with_replay(all, malformed);
    }
    drop(alert_tx);

    let (merge_tx, merge_rx) = bounded::<Partial>(shards * 4);
    let merge = merge::Merge {
        shards,
        detector,
        policy,
        dispatcher,
        events,
        rtt_samples: opts.rtt_samples,
        vm_windows: opts.vm_windows,
        mtd,
        telemetry: opts.telemetry.clone(),
        reload: opts.reload.clone().map(|flag| (flag, rules.dir.clone(), placement.clone())),
        running: crate::config::RestartOnly::of(rules),
    };
    let merge_handle = std::thread::Builder::new()
        .name("vmsentry-merge".into())
        .spawn(move || merge.run(merge_rx, alert_rx))
        .map_err(PipelineError::Thread)?;

    let mut shard_tx: Vec<Sender<ShardMsg>> = Vec::with_capacity(shards);
    let mut pools: Vec<Receiver<RawBatch>> = Vec::with_capacity(shards);
    let mut shard_handles = Vec::with_capacity(shards);
    for s in 0..shards {
        let (tx, rx) = bounded::<ShardMsg>(limits.queue_batches);
        let (pool_tx, pool_rx) = bounded::<RawBatch>(limits.queue_batches + 2);
        let merge_tx = merge_tx.clone();
        let cfg = shard::ShardConfig::new(rules, shards, placement.clone());
        let h = std::thread::Builder::new()
            .name(format!("vmsentry-shard-{s}"))
            .spawn(move || shard::run(s, rx, pool_tx, merge_tx, cfg))
            .map_err(PipelineError::Thread)?;
        shard_tx.push(tx);
        pools.push(pool_rx);
        shard_handles.push(h);
    }
    drop(merge_tx);

    let progress = match (opts.progress, source.total_bytes()) {
        (true, Some(total)) => Some(progress_bar(total)),
        _ => None,
    };

    if let Some(t) = &opts.telemetry {
        t.set_ready(true);
    }
    let mut reader = Reader {
        live: opts.live,
        telemetry: opts.telemetry.clone(),
        queue_cap: limits.queue_batches,
        in_flight: vec![0; shards],
        spare: (0..shards).map(|_| Vec::new()).collect(),
        queue_dropped: 0,
        published: (0, 0, 0),
        tunnels: rules.tunnels,
        batch_size: limits.batch_size,
        decode_bytes: limits.decode_bytes,
        batches: (0..shards).map(|_| RawBatch::with_capacity(limits.batch_size, limits.decode_bytes)).collect(),
        shard_tx,
        pools,
        window_len_us,
        window: None,
        next_boundary: i64::MIN,
        stats: ReaderStats::default(),
        failed: false,
        pace: opts.speed.map(|s| Pace { speed: s, wall0: Instant::now(), ts0: None, checked: i64::MIN }),
        progress,
        progress_bytes: 0,
    };
    let read_result = source.run(&mut |item| match item {
        SourceItem::Packet(pkt) => reader.push(pkt),
        SourceItem::Tick(ts) => reader.tick(ts),
    });
    reader.finish();
    let read_s = started.elapsed().as_secs_f64();
    if let Some(t) = &opts.telemetry {
        t.set_ready(false);
    }
    let queue_dropped = reader.queue_dropped;
    let failed = reader.failed;
    if let Some(pb) = reader.progress.take() {
        pb.finish_and_clear();
    }
    let stats = std::mem::take(&mut reader.stats);
    drop(reader);

    for h in shard_handles {
        h.join().map_err(|_| PipelineError::ThreadDied)?;
    }
    let out = merge_handle.join().map_err(|_| PipelineError::ThreadDied)?;
    drop(stop_followers);
    for f in followers {
        let _ = f.join();
    }
    read_result?;
    if failed {
        return Err(PipelineError::ThreadDied);
    }
    let dispatch = out.dispatcher.finish();
    let mut events = out.events;
    if let Some(e) = out.io_error {
        return Err(PipelineError::Events(e));
    }

    // End of replay: one vm_stats per unicast MAC, then the summary.
    let detector = out.detector;
    let end_ts = detector.last_window_end().or(stats.last_ts).unwrap_or(PacketTime::ZERO);
    let seen = detector.seen_macs();
    let mut known_vms = 0;
    for (mac, st) in &seen {
        let vm = st.vm.map(|i| detector.vm(i));
        known_vms += u64::from(vm.is_some());
        let ev = Event::VmStats(VmStatsEvent {
            ts: end_ts,
            vm: *mac,
            vm_name: vm.map(|v| v.name.clone()),
            known: vm.is_some(),
            level: vm.map_or(crate::detect::Level::Low, |v| v.level),
            tx_bytes: st.totals.tx_bytes,
            tx_packets: st.totals.tx_packets,
            rx_bytes: st.totals.rx_bytes,
            rx_packets: st.totals.rx_packets,
            rtt_samples: st.rtt.count,
            rtt_min_ms: st.rtt.min_ms(),
            rtt_max_ms: st.rtt.max_ms(),
            rtt_mean_ms: st.rtt.mean_ms(),
            rtt_p50_ms: st.rtt.quantile_ms(0.5),
            rtt_p99_ms: st.rtt.quantile_ms(0.99),
        });
        events.emit(&ev).map_err(PipelineError::Events)?;
    }
    let mut by_kind = BTreeMap::new();
    for k in DecodeErrorKind::ALL {
        let n = out.decode.errors[k as usize];
        if n > 0 {
            by_kind.insert(k.as_str(), n);
        }
    }
    let wall_s = started.elapsed().as_secs_f64();
    let duration_s = match (stats.first_ts, stats.last_ts) {
        (Some(a), Some(b)) => (b.as_micros() - a.as_micros()) as f64 / 1e6,
        _ => 0.0,
    };
    let summary = SummaryEvent {
        ts: end_ts,
        packets: stats.packets,
        bytes: stats.bytes,
        decode_errors: out.decode.errors.iter().sum(),
        decode_errors_by_kind: by_kind,
        snaplen_cut: out.decode.snaplen_cut,
        vms: seen.len() as u64,
        known_vms,
        mac_evictions: detector.evictions,
        duration_s,
        windows: detector.windows,
        queue_dropped,
        damaged_files: source.stats().damaged_files,
        placement_dropped: detector.placement_dropped() + detector.addresses_dropped(),
        ids: out.ids,
        rtt: RttSummary {
            samples: out.rtt_samples,
            dropped: out.rtt_dropped,
            flow_evictions: out.rtt_counts.flow_evictions,
            probe_evictions: out.rtt_counts.probe_evictions,
            probe_timeouts: out.rtt_counts.probe_timeouts,
        },
        actions: ActionCounts {
            queued: out.queued,
            dropped: out.dropped,
            held: out.held,
            delivered: dispatch.delivered,
            failed: dispatch.failed,
            retries: dispatch.retries,
            pending: dispatch.pending,
            resumed: dispatch.resumed,
        },
        wall_s,
        read_s,
        processing_pps: if wall_s > 0.0 { stats.packets as f64 / wall_s } else { 0.0 },
        peak_rss_bytes: crate::event::peak_rss_bytes(),
    };
    if out.shard_overflow > 0 {
        eprintln!(
            "vmsentry: {} observations found a shard's MAC table full (limits.max_macs = {})",
            out.shard_overflow, limits.max_macs
        );
    }
    events.emit(&Event::Summary(summary.clone())).map_err(PipelineError::Events)?;
    events.flush().map_err(PipelineError::Events)?;
    Ok(summary)
}

fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} replay [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
    ) {
        pb.set_style(style);
    }
    pb
}

struct Pace {
    speed: f64,
    wall0: Instant,
    ts0: Option<PacketTime>,
    /// Packet time of the last check; checks happen at most once per millisecond of packet time.
    checked: i64,
}

struct Reader {
    live: bool,
    telemetry: Option<Arc<Telemetry>>,
    queue_cap: usize,
    /// Batches sent to each shard and not yet back in `spare`.
    in_flight: Vec<usize>,
    spare: Vec<Vec<RawBatch>>,
    /// Frames of batches dropped because a shard's queue was full (live only).
    queue_dropped: u64,
    /// (packets, bytes, queue drops) already published to the metrics.
    published: (u64, u64, u64),
    tunnels: crate::decode::Tunnels,
    batch_size: usize,
    decode_bytes: usize,
    batches: Vec<RawBatch>,
    shard_tx: Vec<Sender<ShardMsg>>,
    pools: Vec<Receiver<RawBatch>>,
    window_len_us: i64,
    window: Option<i64>,
    /// First microsecond of the next window: crossing it closes the current one.
    next_boundary: i64,
    stats: ReaderStats,
    failed: bool,
    pace: Option<Pace>,
    progress: Option<indicatif::ProgressBar>,
    progress_bytes: u64,
}

impl Reader {
    #[inline]
    fn push(&mut self, pkt: RawPacket<'_>) -> ControlFlow<()> {
        let st = &mut self.stats;
        st.packets += 1;
        st.bytes += u64::from(pkt.orig_len);
        if st.first_ts.is_none() {
            st.first_ts = Some(pkt.ts);
        }
        st.last_ts = Some(pkt.ts);
        self.progress_bytes += 16 + pkt.data.len() as u64;

        let t = pkt.ts.as_micros();
        if t >= self.next_boundary {
            let w = pkt.ts.window_index(self.window_len_us);
            if let Some(old) = self.window {
                if self.close(old).is_break() {
                    return ControlFlow::Break(());
                }
            }
            self.window = Some(w);
            self.next_boundary = (w + 1) * self.window_len_us;
        }
        if self.pace.is_some() && self.pace_to(pkt.ts).is_break() {
            return ControlFlow::Break(());
        }
        let n = self.batches.len();
        let s = if n == 1 {
            0
        } else {
            ((u128::from(flow_hash(&self.tunnels, pkt.linktype, pkt.data)) * n as u128) >> 64) as usize
        };
        let b = &mut self.batches[s];
        let keep = &pkt.data[..pkt.data.len().min(self.decode_bytes)];
        b.bytes.extend_from_slice(keep);
        b.meta.push(FrameMeta {
            ts: pkt.ts,
            orig_len: pkt.orig_len,
            cap_len: pkt.data.len() as u32,
            linktype: pkt.linktype,
            end: b.bytes.len() as u32,
        });
        if b.len() >= self.batch_size {
            return self.send(s);
        }
        ControlFlow::Continue(())
    }

    fn send(&mut self, s: usize) -> ControlFlow<()> {
        // Batches the shard is done with come back through its pool.
        while let Ok(b) = self.pools[s].try_recv() {
            self.in_flight[s] = self.in_flight[s].saturating_sub(1);
            self.spare[s].push(b);
        }
        if self.live && self.in_flight[s] + 1 >= self.queue_cap {
            // The shard is behind: drop this batch rather than stall the
            // capture, and keep a slot free for the window's `Close`.
            self.queue_dropped += self.batches[s].len() as u64;
            self.batches[s].clear();
            return ControlFlow::Continue(());
        }
        let fresh = self.spare[s].pop().unwrap_or_else(|| RawBatch::with_capacity(self.batch_size, self.decode_bytes));
        let full = std::mem::replace(&mut self.batches[s], fresh);
        if self.shard_tx[s].send(ShardMsg::Batch(full)).is_err() {
            self.failed = true;
            return ControlFlow::Break(());
        }
        self.in_flight[s] += 1;
        if let Some(pb) = &self.progress {
            pb.set_position(self.progress_bytes);
        }
        ControlFlow::Continue(())
    }

    /// Packet time reached `ts` with no frame (live sources): close the
    /// window it ended, if any.
    fn tick(&mut self, ts: PacketTime) -> ControlFlow<()> {
        if self.window.is_none() || ts.as_micros() < self.next_boundary {
            return ControlFlow::Continue(());
        }
        if let Some(old) = self.window {
            if self.close(old).is_break() {
                return ControlFlow::Break(());
            }
        }
        let w = ts.window_index(self.window_len_us);
        self.window = Some(w);
        self.next_boundary = (w + 1) * self.window_len_us;
        ControlFlow::Continue(())
    }

    /// Per-window metrics of the reader: counters by their growth since the
    /// last window, queue depths as they stand.
    fn publish(&mut self) {
        let Some(t) = &self.telemetry else { return };
        let m = &t.metrics;
        let (p, b, d) = self.published;
        m.packets.inc_by(self.stats.packets - p);
        m.bytes.inc_by(self.stats.bytes - b);
        m.capture_dropped.with_label_values(&["queue"]).inc_by(self.queue_dropped - d);
        self.published = (self.stats.packets, self.stats.bytes, self.queue_dropped);
        for (i, tx) in self.shard_tx.iter().enumerate() {
            m.queue_depth.with_label_values(&[&format!("shard-{i}")]).set(tx.len() as i64);
        }
    }

    /// The watermark: every shard gets its pending batch, then `Close`.
    fn close(&mut self, window: i64) -> ControlFlow<()> {
        self.publish();
        for s in 0..self.batches.len() {
            if !self.batches[s].is_empty() && self.send(s).is_break() {
                return ControlFlow::Break(());
            }
            // Never dropped: `send` keeps a slot free for it in live mode.
            if self.shard_tx[s].send(ShardMsg::Close { window }).is_err() {
                self.failed = true;
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }

    fn pace_to(&mut self, ts: PacketTime) -> ControlFlow<()> {
        let Some(p) = self.pace.as_mut() else { return ControlFlow::Continue(()) };
        let ts0 = *p.ts0.get_or_insert(ts);
        let t = ts.as_micros();
        if t < p.checked.saturating_add(1000) {
            return ControlFlow::Continue(());
        }
        p.checked = t;
        let due = Duration::from_secs_f64(((t - ts0.as_micros()).max(0) as f64 / 1e6) / p.speed);
        let elapsed = p.wall0.elapsed();
        if due > elapsed + Duration::from_millis(1) {
            let wait = due - elapsed;
            // Let the shards see what was read before waiting.
            for s in 0..self.batches.len() {
                if !self.batches[s].is_empty() && self.send(s).is_break() {
                    return ControlFlow::Break(());
                }
            }
            std::thread::sleep(wait);
        }
        ControlFlow::Continue(())
    }

    fn finish(&mut self) {
        if self.failed {
            return;
        }
        if let Some(w) = self.window {
            let _ = self.close(w);
        }
        self.publish();
        self.shard_tx.clear();
    }
}
