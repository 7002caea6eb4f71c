//! Pipeline: reader → batches → shard workers → window merge → detect → policy → dispatch.
//!
//! The reader (the calling thread) picks a shard for each frame by a
//! direction-independent flow hash over fixed header offsets
//! ([`flow_hash`]), and copies what decoding reads of the frame into that
//! shard's batch: the headers of a common frame, else its first
//! `limits.decode_bytes` ([`needed_prefix`]). A batch is a byte arena plus
//! one small record per frame. Full
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
//! The window of a frame is decided by the reader alone, so events are the
//! same for every thread count. Frames may be out of order inside the
//! window of the newest frame; time going back past it (a clock step, the
//! same file replayed twice, files given out of order) starts a *late*
//! stretch: every frame up
//! to the newest time seen before the jump is counted in `late_frames`
//! (metric `vmsentry_late_frames_total`) and not measured, with one warning
//! per input naming it and the jump (a lone frame stamped far ahead, the next
//! one back near the earlier time, is the decode error `timestamp` instead:
//! see [`TIME_JUMP_WINDOWS`]). Windows never reopen, so late traffic
//! can neither double a window nor raise a level. A frame whose capture
//! header gives an impossible length ([`crate::decode::frame_len_ok`]) is
//! counted as the decode error `frame_length` and is not traffic either.

mod evacuation;
mod events;
mod merge;
mod publish;
mod reload;
mod shard;
mod stages;
mod window;

pub use crate::event::IdsCounts;

use crate::action::{ActionSink, Dispatcher};
use crate::capture::{CaptureError, PacketSource, RawPacket, SourceItem};
use crate::config::Rules;
use crate::decode::{flow_hash, needed_prefix, DecodeErrorKind, Mac};
use crate::decode::{frame_len_ok, TIME_JUMP_WINDOWS};
use crate::detect::Detector;
use crate::event::{ActionCounts, Event, EventSink, RttSummary, SummaryEvent, VmStatsEvent};
use crate::gate::record::GateRecord;
use crate::measure::placement::{Evidence, PlacementConfig, SharedPlacement};
use crate::measure::rtt::{RttCounts, RttSample};
use crate::measure::Counters;
use crate::policy::Policy;
use crate::serve::Telemetry;
use crate::trust::Registry;
use crate::vocab::PacketTime;
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
#[derive(Debug, Default)]
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

/// Counters the reader keeps; published per window (never per packet).
#[derive(Clone, Debug, Default)]
pub struct ReaderStats {
    /// Every frame read.
    pub packets: u64,
    /// Wire bytes of the frames read, but for those with an impossible length.
    pub bytes: u64,
    /// The earliest and the latest time of a measured frame.
    pub first_ts: Option<PacketTime>,
    pub last_ts: Option<PacketTime>,
    /// Frames earlier than the open window after time went back: not measured.
    pub late_frames: u64,
    /// Frames whose capture header gives an impossible length: not measured.
    pub bad_length: u64,
    /// Lone frames stamped far ahead of their neighbours (decode error
    /// `timestamp`): not measured.
    pub bad_time: u64,
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
    run_with(source, rules, sink, events, opts, Seam::Local)
}

/// Where the shards' partials go and where the merge's come from: both in
/// this process (the default), or split across machines by
/// [`crate::cluster`]: a sensor's shards hand theirs out and its merge gets
/// none; a controller's merge takes one partial per window, already
/// combined across sensors, and its summary the sensors' reader counts;
/// its actions pass the lease's gate and its used tokens are the cluster's.
pub(crate) enum Seam {
    Local,
    Sense(Sender<Partial>, SharedReader),
    Control {
        partials: Receiver<Partial>,
        reader: SharedReader,
        gate: Arc<dyn crate::action::DeliveryGate>,
        used_tokens: Arc<dyn crate::trust::token::UsedNonces>,
    },
}

/// The reader's counts and its queue drops, handed across the seam.
pub(crate) type SharedReader = Arc<std::sync::Mutex<(ReaderStats, u64)>>;

pub(crate) fn run_with(
    source: &mut dyn PacketSource,
    rules: &Rules,
    sink: Box<dyn ActionSink>,
    events: Box<dyn EventSink>,
    opts: &Options,
    seam: Seam,
) -> Result<SummaryEvent, PipelineError> {
    let started = Instant::now();
    let shards = opts.threads.max(1);
    let limits = &rules.limits;
    let window_len_us = rules.window_len_us();

    let registry = Registry::build(&rules.key, &rules.cluster, &rules.hypervisors);
    let policy = Policy::new(rules, registry.clone());
    let mut detect = rules.detect_config();
    if let Seam::Control { used_tokens, .. } = &seam {
        // Kept across reloads: a reloaded store absorbs it.
        detect.tokens = detect.tokens.with_shared(used_tokens.clone());
    }
    let detector = Detector::new(detect, registry);
    let placement = Arc::new(SharedPlacement::new(PlacementConfig::from(rules)));
    let observer = opts.telemetry.clone().map(|t| t as Arc<dyn crate::action::Observer>);
    let gate = match &seam {
        Seam::Control { gate, .. } => Some(gate.clone()),
        _ => None,
    };
    let dispatcher = Dispatcher::start_gated(&rules.backend, limits.action_queue, observer, sink, gate)?;

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

    // The migration gate's decisions: followed live, or read whole and fed
    // to the detector as packet time reaches each one's own timestamp.
    let (gate_tx, gate_rx) = bounded::<Vec<GateRecord>>(64);
    let mut gate_followers = Vec::new();
    let mut gate_replay = Vec::new();
    // Each record must carry a MAC under the cluster key and name a
    // registered hypervisor; any other line is refused (counted as rejected).
    let gate_hosts: Arc<Vec<String>> = Arc::new(rules.hypervisors.iter().map(|h| h.id.clone()).collect());
    let reject = |n: u64| {
        if let Some(t) = &opts.telemetry {
            t.metrics.gate_decisions.with_label_values(&["rejected"]).inc_by(n);
        }
    };
    for path in &rules.migration.gate_decisions {
        let (key, hosts) = (rules.key.clone(), gate_hosts.clone());
        let parse: crate::ids::LineParser<GateRecord> =
            Box::new(move |l| GateRecord::parse_verified(l, &key, &hosts).map_err(|_| ()));
        if opts.live {
            let tx = gate_tx.clone();
            let telemetry = opts.telemetry.clone();
            let f = crate::ids::Follower::open_with(path, parse, None, false);
            let h = f
                .watch(followers_stop.clone(), move |records, malformed| {
                    if malformed > 0 {
                        eprintln!(
                            "vmsentry: {malformed} malformed or unauthenticated line(s) in a gate decisions file"
                        );
                        if let Some(t) = &telemetry {
                            t.metrics.gate_decisions.with_label_values(&["rejected"]).inc_by(malformed);
                        }
                    }
                    tx.send(records).is_ok()
                })
                .map_err(|source| PipelineError::Ids { path: path.clone(), source })?;
            gate_followers.push(h);
        } else if path.exists() {
            let mut f = crate::ids::Follower::open_with(path, parse, None, true);
            f.poll(&mut gate_replay).map_err(|source| PipelineError::Ids { path: path.clone(), source })?;
            if f.malformed > 0 {
                eprintln!("vmsentry: {} malformed or unauthenticated line(s) in {}", f.malformed, path.display());
                reject(f.malformed);
            }
        } else {
            eprintln!("vmsentry: gate decisions file {} not found; replaying without it", path.display());
        }
    }
    drop(gate_tx);
    gate_replay.sort_by_key(|r| r.ts);

    let (merge_tx, merge_rx) = bounded::<Partial>(shards * 4);
    // Sample buffers from the merge back to the shards (in this process).
    let (recycle_tx, recycle_rx) = bounded::<Vec<RttSample>>(shards + 2);
    let (merge_rx, merged) = match &seam {
        Seam::Control { partials, .. } => (partials.clone(), 1),
        _ => (merge_rx, shards),
    };
    let merge = merge::Merge {
        shards: merged,
        stages: stages::Stages { detector, policy, dispatcher },
        out: publish::Publish {
            events,
            telemetry: opts.telemetry.clone(),
            rtt_samples: opts.rtt_samples,
            vm_windows: opts.vm_windows,
            counts: Default::default(),
            held: Default::default(),
            max_held: limits.held_events,
        },
        mtd,
        gate_replay: gate_replay.into(),
        recycle: matches!(seam, Seam::Local).then_some(recycle_tx),
        reload: opts.reload.clone().map(|flag| reload::Reload {
            flag,
            dir: rules.dir.clone(),
            shared: placement.clone(),
            running: crate::config::RestartOnly::of(rules),
        }),
    };
    let merge_handle = std::thread::Builder::new()
        .name("vmsentry-merge".into())
        .spawn(move || merge.run(merge_rx, alert_rx, gate_rx))
        .map_err(PipelineError::Thread)?;

    let mut shard_tx: Vec<Sender<ShardMsg>> = Vec::with_capacity(shards);
    let mut pools: Vec<Receiver<RawBatch>> = Vec::with_capacity(shards);
    let mut shard_handles = Vec::with_capacity(shards);
    for s in 0..shards {
        let (tx, rx) = bounded::<ShardMsg>(limits.queue_batches);
        let (pool_tx, pool_rx) = bounded::<RawBatch>(limits.queue_batches + 2);
        let merge_tx = match &seam {
            Seam::Sense(out, _) => out.clone(),
            _ => merge_tx.clone(),
        };
        let cfg = shard::ShardConfig::new(rules, shards, placement.clone());
        let recycled = recycle_rx.clone();
        let h = std::thread::Builder::new()
            .name(format!("vmsentry-shard-{s}"))
            .spawn(move || shard::run(s, rx, pool_tx, merge_tx, recycled, cfg))
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
        published: (0, 0, 0, 0, 0, 0),
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
        behind_until: None,
        jump_us: window_len_us.saturating_mul(TIME_JUMP_WINDOWS),
        held: HeldFrame {
            on: false,
            ts: PacketTime::from_micros(0),
            orig_len: 0,
            cap_len: 0,
            linktype: 0,
            data: Vec::with_capacity(limits.decode_bytes),
        },
        input: None,
        warned_late: false,
        failed: false,
        pace: opts.speed.map(|s| Pace { speed: s, wall0: Instant::now(), ts0: None, checked: i64::MIN, last: None }),
        progress,
        progress_bytes: 0,
    };
    let read_result = source.run(&mut |item| match item {
        SourceItem::Packet(pkt) => reader.push(pkt),
        SourceItem::Tick(ts) => reader.tick(ts),
        SourceItem::Input(name) => {
            reader.input = Some(name.display().to_string());
            reader.warned_late = false;
            ControlFlow::Continue(())
        }
    });
    reader.finish();
    let read_s = started.elapsed().as_secs_f64();
    if let Some(t) = &opts.telemetry {
        t.set_ready(false);
    }
    let mut queue_dropped = reader.queue_dropped;
    let failed = reader.failed;
    if let Some(pb) = reader.progress.take() {
        pb.finish_and_clear();
    }
    let mut stats = std::mem::take(&mut reader.stats);
    drop(reader);

    for h in shard_handles {
        h.join().map_err(|_| PipelineError::ThreadDied)?;
    }
    let out = merge_handle.join().map_err(|_| PipelineError::ThreadDied)?;
    match &seam {
        Seam::Control { reader, .. } => (stats, queue_dropped) = reader.lock().map(|r| r.clone()).unwrap_or_default(),
        Seam::Sense(_, reader) => {
            if let Ok(mut r) = reader.lock() {
                *r = (stats.clone(), queue_dropped);
            }
        }
        Seam::Local => {}
    }
    drop(stop_followers);
    for f in followers {
        let _ = f.join();
    }
    for f in gate_followers {
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
            by_kind.insert(k, n);
        }
    }
    if stats.bad_length > 0 {
        by_kind.insert(DecodeErrorKind::FrameLength, stats.bad_length);
    }
    if stats.bad_time > 0 {
        by_kind.insert(DecodeErrorKind::Timestamp, stats.bad_time);
    }
    if stats.late_frames > 0 {
        eprintln!(
            "vmsentry: {} frames came after time went backwards and were counted as late, not measured",
            stats.late_frames
        );
    }
    let wall_s = started.elapsed().as_secs_f64();
    // Earliest to latest measured frame: never negative.
    let duration_s = match (stats.first_ts, stats.last_ts) {
        (Some(a), Some(b)) => b.as_micros().saturating_sub(a.as_micros()).max(0) as f64 / 1e6,
        _ => 0.0,
    };
    let summary = SummaryEvent {
        ts: end_ts,
        packets: stats.packets,
        bytes: stats.bytes,
        decode_errors: out.decode.errors.iter().sum::<u64>() + stats.bad_length + stats.bad_time,
        decode_errors_by_kind: by_kind,
        snaplen_cut: out.decode.snaplen_cut,
        vms: seen.len() as u64,
        known_vms,
        mac_evictions: detector.evictions,
        duration_s,
        windows: detector.windows,
        late_frames: stats.late_frames,
        queue_dropped,
        damaged_files: source.stats().damaged_files,
        unsupported_link_files: source.stats().unsupported_link_files,
        placement_dropped: detector.placement_dropped() + detector.addresses_dropped(),
        gate_approvals_dropped: detector.gate_approvals_dropped(),
        migrations_written_open: out.written_open,
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
    /// Packet time of the last frame paced.
    last: Option<i64>,
}

/// The longest gap in packet time `--speed` waits out: a capture that jumps
/// by years must not sleep for years.
const MAX_PACED_GAP_US: i64 = 60_000_000;

struct Reader {
    live: bool,
    telemetry: Option<Arc<Telemetry>>,
    queue_cap: usize,
    /// Batches sent to each shard and not yet back in `spare`.
    in_flight: Vec<usize>,
    spare: Vec<Vec<RawBatch>>,
    /// Frames of batches dropped because a shard's queue was full (live only).
    queue_dropped: u64,
    /// (packets, bytes, queue drops, late frames, bad lengths, bad times) already published to the metrics.
    published: (u64, u64, u64, u64, u64, u64),
    /// A frame far ahead of the one before it, held until the next frame
    /// says whether time carries on from it (see [`TIME_JUMP_WINDOWS`]).
    held: HeldFrame,
    /// A jump of packet time this large holds a frame back: `TIME_JUMP_WINDOWS` windows.
    jump_us: i64,
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
    /// In a late stretch: frames up to this time are late.
    behind_until: Option<i64>,
    /// The input being read, for messages.
    input: Option<String>,
    /// The late warning was given for this input.
    warned_late: bool,
    failed: bool,
    pace: Option<Pace>,
    progress: Option<indicatif::ProgressBar>,
    progress_bytes: u64,
}

/// A frame held back by the reader (see [`Reader::held`]).
struct HeldFrame {
    on: bool,
    ts: PacketTime,
    orig_len: u32,
    cap_len: u32,
    linktype: i32,
    /// Its first `decode_bytes`, all a shard reads.
    data: Vec<u8>,
}

impl Reader {
    #[inline]
    fn push(&mut self, pkt: RawPacket<'_>) -> ControlFlow<()> {
        let st = &mut self.stats;
        st.packets += 1;
        self.progress_bytes += 16 + pkt.data.len() as u64;
        if !frame_len_ok(pkt.orig_len, pkt.data.len()) {
            // Neither its length nor its time can be trusted.
            st.bad_length += 1;
            return ControlFlow::Continue(());
        }
        let t = pkt.ts.as_micros();
        if self.held.on {
            if t < self.held.ts.as_micros().saturating_sub(self.jump_us / 2) {
                // Back near the time before the jump: the held frame alone was off.
                self.held.on = false;
                self.stats.bad_time += 1;
            } else if self.release_held().is_break() {
                return ControlFlow::Break(());
            }
        }
        // The first frame of a run is believed: with nothing before it, the
        // next frame alone cannot tell which of the two is damaged (a real
        // capture, sv__bug-1450-04, has its second frame 21 years early).
        let far = self.stats.last_ts.is_some_and(|newest| t.saturating_sub(newest.as_micros()) > self.jump_us);
        if !self.held.on && self.behind_until.is_none() && far {
            // No allocation: the buffer was sized for `decode_bytes` at start.
            let h = &mut self.held;
            h.on = true;
            (h.ts, h.orig_len, h.cap_len, h.linktype) = (pkt.ts, pkt.orig_len, pkt.data.len() as u32, pkt.linktype);
            h.data.clear();
            h.data.extend_from_slice(&pkt.data[..pkt.data.len().min(self.decode_bytes)]);
            return ControlFlow::Continue(());
        }
        self.accept(pkt, pkt.data.len() as u32)
    }

    /// Measures the held frame: time carried on from it.
    fn release_held(&mut self) -> ControlFlow<()> {
        self.held.on = false;
        let data = std::mem::take(&mut self.held.data);
        let h = &self.held;
        let pkt = RawPacket { ts: h.ts, orig_len: h.orig_len, data: &data, linktype: h.linktype };
        let cap_len = h.cap_len;
        let flow = self.accept(pkt, cap_len);
        self.held.data = data;
        flow
    }

    /// A frame whose length and time are believed: late, or into its
    /// shard's batch. `cap_len` is its captured length (a held frame keeps
    /// only its first `decode_bytes`).
    #[inline]
    fn accept(&mut self, pkt: RawPacket<'_>, cap_len: u32) -> ControlFlow<()> {
        self.stats.bytes += u64::from(pkt.orig_len);
        let t = pkt.ts.as_micros();
        if self.late(t) {
            self.stats.late_frames += 1;
            return ControlFlow::Continue(());
        }
        let st = &mut self.stats;
        st.first_ts = Some(st.first_ts.map_or(pkt.ts, |f| f.min(pkt.ts)));
        st.last_ts = Some(st.last_ts.map_or(pkt.ts, |l| l.max(pkt.ts)));

        // The last window of time ends (saturated) on its own last microsecond.
        if t >= self.next_boundary && self.window != Some(pkt.ts.window_index(self.window_len_us)) {
            let w = pkt.ts.window_index(self.window_len_us);
            if let Some(old) = self.window {
                if self.close(old).is_break() {
                    return ControlFlow::Break(());
                }
            }
            self.window = Some(w);
            self.next_boundary = PacketTime::window_end(w, self.window_len_us).as_micros();
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
        // Only the headers decoding reads, for the common frame: bytes
        // copied here are cache lines the shard's core must fetch.
        let keep = &pkt.data[..needed_prefix(&self.tunnels, pkt.linktype, pkt.data, pkt.orig_len, self.decode_bytes)];
        b.bytes.extend_from_slice(keep);
        b.meta.push(FrameMeta {
            ts: pkt.ts,
            orig_len: pkt.orig_len,
            cap_len,
            linktype: pkt.linktype,
            end: b.bytes.len() as u32,
        });
        if b.len() >= self.batch_size {
            return self.send(s);
        }
        ControlFlow::Continue(())
    }

    /// Whether a frame at `t` is late (see the module's doc): inside a late
    /// stretch, or earlier than the window of the newest frame, which starts
    /// one. That window is the open one, except live, where the capture
    /// clock's tick may have closed it just before the kernel handed over
    /// its last frames: those still count, in the open window.
    fn late(&mut self, t: i64) -> bool {
        if let Some(until) = self.behind_until {
            if t <= until {
                return true;
            }
            self.behind_until = None;
        }
        let Some(newest) = self.stats.last_ts else { return false };
        let newest_start = PacketTime::window_start(newest.window_index(self.window_len_us), self.window_len_us);
        if t >= newest_start.as_micros() {
            return false;
        }
        let newest = newest.as_micros();
        self.behind_until = Some(newest);
        if !self.warned_late {
            self.warned_late = true;
            eprintln!(
                "vmsentry: {}: time goes backwards by {:.6} s (a frame at {} after one at {}); \
                 frames up to {} are counted as late and not measured",
                self.input.as_deref().unwrap_or("the capture"),
                newest.saturating_sub(t) as f64 / 1e6,
                PacketTime::from_micros(t),
                PacketTime::from_micros(newest),
                PacketTime::from_micros(newest),
            );
        }
        true
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
        // The capture clock has reached the held frame's time: it was right.
        if self.held.on && ts >= self.held.ts && self.release_held().is_break() {
            return ControlFlow::Break(());
        }
        let w = ts.window_index(self.window_len_us);
        if self.window.is_none_or(|open| open == w) || ts.as_micros() < self.next_boundary {
            return ControlFlow::Continue(());
        }
        if let Some(old) = self.window {
            if self.close(old).is_break() {
                return ControlFlow::Break(());
            }
        }
        self.window = Some(w);
        self.next_boundary = PacketTime::window_end(w, self.window_len_us).as_micros();
        ControlFlow::Continue(())
    }

    /// Per-window metrics of the reader: counters by their growth since the
    /// last window, queue depths as they stand.
    fn publish(&mut self) {
        let Some(t) = &self.telemetry else { return };
        let m = &t.metrics;
        let (p, b, d, late, bad, bad_t) = self.published;
        let st = &self.stats;
        m.packets.inc_by(st.packets - p);
        m.bytes.inc_by(st.bytes - b);
        m.capture_dropped.with_label_values(&["queue"]).inc_by(self.queue_dropped - d);
        m.late_frames.inc_by(st.late_frames - late);
        if st.bad_length > bad {
            m.decode_errors
                .with_label_values(&[crate::decode::DecodeErrorKind::FrameLength.as_str()])
                .inc_by(st.bad_length - bad);
        }
        if st.bad_time > bad_t {
            m.decode_errors
                .with_label_values(&[crate::decode::DecodeErrorKind::Timestamp.as_str()])
                .inc_by(st.bad_time - bad_t);
        }
        self.published = (st.packets, st.bytes, self.queue_dropped, st.late_frames, st.bad_length, st.bad_time);
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
        let t = ts.as_micros();
        if let (Some(last), Some(ts0)) = (p.last, p.ts0.as_mut()) {
            let gap = t.saturating_sub(last);
            if gap > MAX_PACED_GAP_US {
                // Paced as MAX_PACED_GAP_US: the origin moves by the rest.
                *ts0 = ts0.saturating_add_micros(gap - MAX_PACED_GAP_US);
            }
        }
        p.last = Some(p.last.map_or(t, |l| l.max(t)));
        let ts0 = *p.ts0.get_or_insert(ts);
        if t < p.checked.saturating_add(1000) {
            return ControlFlow::Continue(());
        }
        p.checked = t;
        let due = Duration::from_secs_f64((t.saturating_sub(ts0.as_micros()).max(0) as f64 / 1e6) / p.speed);
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
        // Nothing came after it to say otherwise.
        if self.held.on && self.release_held().is_break() {
            return;
        }
        if let Some(w) = self.window {
            let _ = self.close(w);
        }
        self.publish();
        self.shard_tx.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::SourceStats;
    use crate::synth::frames;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    /// Frames given as (time, orig_len, bytes), all Ethernet.
    struct Frames(Vec<(i64, u32, Vec<u8>)>);

    impl PacketSource for Frames {
        fn run(&mut self, each: &mut dyn FnMut(SourceItem<'_>) -> ControlFlow<()>) -> Result<(), CaptureError> {
            for (t, orig_len, data) in &self.0 {
                let pkt = RawPacket { ts: PacketTime::from_micros(*t), orig_len: *orig_len, data, linktype: 1 };
                if each(SourceItem::Packet(pkt)).is_break() {
                    break;
                }
            }
            Ok(())
        }
        fn stats(&self) -> SourceStats {
            SourceStats::default()
        }
    }

    fn rules() -> (tempfile::TempDir, Rules) {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("k");
        std::fs::write(&k, [b'k'; 32]).unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = "[cluster]\nname = \"t\"\nkey_file = \"k\"\n\
                    [thresholds]\nmedium_bps = 8000\nhigh_bps = 80000\nmedium_pps = 100\nhigh_pps = 1000\n\
                    [[vm]]\nname = \"a\"\nmac = \"02:00:00:00:00:0a\"\n";
        let r = Rules::from_str_in(d.path(), Path::new("t.toml"), text).unwrap();
        (d, r)
    }

    fn frame() -> Vec<u8> {
        let a = "02:00:00:00:00:0a".parse().unwrap();
        let b = "02:00:00:00:00:0b".parse().unwrap();
        frames::udp4(a, b, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 1000, 2000, 18)
    }

    fn run_frames(f: Vec<(i64, u32, Vec<u8>)>) -> (SummaryEvent, Vec<Event>) {
        run_frames_with(f, &Options::default())
    }

    fn run_frames_with(f: Vec<(i64, u32, Vec<u8>)>, opts: &Options) -> (SummaryEvent, Vec<Event>) {
        let (_d, rules) = rules();
        let mut events: Vec<Event> = Vec::new();
        struct Shared(Arc<std::sync::Mutex<Vec<Event>>>);
        impl EventSink for Shared {
            fn emit(&mut self, e: &Event) -> std::io::Result<()> {
                self.0.lock().unwrap().push(e.clone());
                Ok(())
            }
        }
        let store = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Box::new(crate::action::LogSink::stderr());
        let s = run(&mut Frames(f), &rules, sink, Box::new(Shared(store.clone())), opts).unwrap();
        events.append(&mut store.lock().unwrap());
        (s, events)
    }

    fn level_events(ev: &[Event]) -> usize {
        ev.iter().filter(|e| matches!(e, Event::Level(_))).count()
    }

    #[test]
    fn frames_at_the_end_of_time_do_not_overflow_the_windows() {
        let f = frame();
        let n = f.len() as u32;
        let (s, _) = run_frames(vec![(i64::MAX - 5, n, f.clone()), (i64::MAX, n, f)]);
        assert_eq!((s.packets, s.windows, s.late_frames), (2, 1, 0));
        assert_eq!(s.ts.as_micros(), i64::MAX);
    }

    #[test]
    fn time_going_back_is_late_until_it_passes_the_newest_frame() {
        let f = frame();
        let n = f.len() as u32;
        let s = 1_000_000i64;
        // Window 5 holds two frames out of order; then time steps back to
        // window 2 (late), stays behind (late, even inside window 5, up to
        // the newest frame at 5.5 s), then moves past it.
        let times = [5 * s + 500_000, 5 * s + 100_000, 2 * s, 3 * s, 5 * s + 200_000, 5 * s + 500_000, 5 * s + 600_000];
        let (sum, ev) = run_frames(times.iter().map(|&t| (t, n, f.clone())).collect());
        assert_eq!((sum.packets, sum.late_frames, sum.windows), (7, 4, 1));
        assert_eq!(sum.duration_s, 0.5);
        assert_eq!(level_events(&ev), 0);
        let Some(Event::VmStats(v)) = ev.iter().find(|e| matches!(e, Event::VmStats(v) if v.known)) else {
            panic!("no vm_stats")
        };
        assert_eq!(v.tx_packets, 3);
    }

    #[test]
    fn a_lone_frame_far_ahead_is_damage_and_does_not_make_the_rest_late() {
        let f = frame();
        let n = f.len() as u32;
        let s = 1_000_000i64;
        let year = 365 * 86_400 * s;
        // Two frames, one stamped 70 years on, then a hundred at the old time again.
        let mut times = vec![10 * s, 10 * s + 1, 10 * s + 70 * year];
        times.extend((0..100).map(|i| 10 * s + 2 + i * 10_000));
        let (sum, ev) = run_frames(times.iter().map(|&t| (t, n, f.clone())).collect());
        assert_eq!((sum.packets, sum.late_frames, sum.decode_errors), (103, 0, 1));
        assert_eq!(sum.decode_errors_by_kind.get(&DecodeErrorKind::Timestamp), Some(&1));
        assert_eq!(sum.duration_s, 0.990002);
        assert_eq!(sum.bytes, 102 * u64::from(n));
        let Some(Event::VmStats(v)) = ev.iter().find(|e| matches!(e, Event::VmStats(v) if v.known)) else {
            panic!("no vm_stats")
        };
        assert_eq!(v.tx_packets, 102);
    }

    #[test]
    fn a_frame_minutes_ahead_does_not_make_the_rest_late() {
        let f = frame();
        let n = f.len() as u32;
        let s = 1_000_000i64;
        let steady: Vec<i64> = (0..100).map(|i| 10 * s + i * 10_000).collect();
        // The second frame 50 minutes ahead (more than 16 one-second windows).
        let mut times = vec![steady[0], steady[0] + 50 * 60 * s];
        times.extend(&steady[1..]);
        let (sum, _) = run_frames(times.iter().map(|&t| (t, n, f.clone())).collect());
        assert_eq!((sum.packets, sum.late_frames, sum.decode_errors), (101, 0, 1));
        // Ten seconds ahead is within 16 windows: believed, and what follows it is late.
        let mut times = vec![steady[0], steady[0] + 10 * s];
        times.extend(&steady[1..]);
        let (sum, _) = run_frames(times.iter().map(|&t| (t, n, f.clone())).collect());
        assert_eq!((sum.packets, sum.late_frames, sum.decode_errors), (101, 99, 0));
    }

    #[test]
    fn a_jump_that_time_carries_on_from_is_measured() {
        let f = frame();
        let n = f.len() as u32;
        let s = 1_000_000i64;
        let far = 50 * 365 * 86_400 * s;
        // A jump of decades, then more frames there; and one at the very end, alone.
        let times = [s, 2 * s, far, far + s, far + 2 * s, 3 * far];
        let (sum, ev) = run_frames(times.iter().map(|&t| (t, n, f.clone())).collect());
        assert_eq!((sum.packets, sum.late_frames, sum.decode_errors), (6, 0, 0));
        assert_eq!(sum.duration_s, (3 * far - s) as f64 / 1e6);
        let Some(Event::VmStats(v)) = ev.iter().find(|e| matches!(e, Event::VmStats(v) if v.known)) else {
            panic!("no vm_stats")
        };
        assert_eq!(v.tx_packets, 6);
    }

    #[test]
    fn late_frames_and_impossible_lengths_are_in_the_metrics() {
        let f = frame();
        let n = f.len() as u32;
        let t = Telemetry::new(16);
        let opts = Options { telemetry: Some(t.clone()), ..Options::default() };
        let frames = vec![(5_000_000, n, f.clone()), (1_000_000, n, f.clone()), (5_000_001, u32::MAX, f.clone())];
        let (s, _) = run_frames_with(frames, &opts);
        assert_eq!((s.late_frames, s.decode_errors), (1, 1));
        let m = &t.metrics;
        assert_eq!((m.late_frames.get(), m.packets.get(), m.bytes.get()), (1, 3, 2 * u64::from(n)));
        assert_eq!(m.decode_errors.with_label_values(&["frame_length"]).get(), 1);
    }

    #[test]
    fn frames_behind_an_idle_tick_still_count_in_the_open_window() {
        // Live: the capture clock's tick closed window 1 while the kernel
        // still held a frame of it; that frame is not late.
        let (_d, rules) = rules();
        struct Live(Vec<u8>);
        impl PacketSource for Live {
            fn run(&mut self, each: &mut dyn FnMut(SourceItem<'_>) -> ControlFlow<()>) -> Result<(), CaptureError> {
                let n = self.0.len() as u32;
                for item in [
                    SourceItem::Packet(RawPacket {
                        ts: PacketTime::from_micros(1_100_000),
                        orig_len: n,
                        data: &self.0,
                        linktype: 1,
                    }),
                    SourceItem::Tick(PacketTime::from_micros(2_000_100)),
                    SourceItem::Packet(RawPacket {
                        ts: PacketTime::from_micros(1_999_000),
                        orig_len: n,
                        data: &self.0,
                        linktype: 1,
                    }),
                    SourceItem::Packet(RawPacket {
                        ts: PacketTime::from_micros(900_000),
                        orig_len: n,
                        data: &self.0,
                        linktype: 1,
                    }),
                ] {
                    let _ = each(item);
                }
                Ok(())
            }
            fn stats(&self) -> SourceStats {
                SourceStats::default()
            }
        }
        let sink = Box::new(crate::action::LogSink::stderr());
        let s = run(&mut Live(frame()), &rules, sink, Box::new(Vec::<Event>::new()), &Options::default()).unwrap();
        // The frame of window 1 after the tick counts; the one of window 0 is late.
        assert_eq!((s.packets, s.late_frames, s.windows), (3, 1, 2));
    }

    #[test]
    fn pacing_does_not_wait_out_a_jump_of_decades() {
        let f = frame();
        let n = f.len() as u32;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // 1970, then 2023: at 1000x, a gap is waited as at most 60 s / 1000.
            let frames = vec![(1_000_000, n, f.clone()), (1_700_000_000_000_000, n, f)];
            let _ = tx.send(run_frames_with(frames, &Options { speed: Some(1000.0), ..Options::default() }));
        });
        let (s, _) = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("the replay slept through the jump");
        assert_eq!((s.packets, s.windows), (2, 2));
        assert!(s.wall_s < 10.0, "{}", s.wall_s);
    }

    #[test]
    fn impossible_lengths_are_decode_errors_not_bytes() {
        let f = frame();
        let n = f.len() as u32;
        let (s, ev) = run_frames(vec![(0, n, f.clone()), (1, u32::MAX, f.clone()), (2, n - 1, f.clone())]);
        assert_eq!((s.packets, s.bytes, s.decode_errors), (3, u64::from(n), 2));
        assert_eq!(s.decode_errors_by_kind.get(&DecodeErrorKind::FrameLength), Some(&2));
        assert_eq!(level_events(&ev), 0);
    }
}
