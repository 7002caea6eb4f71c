//! Shard worker: measures its share of the flows, shared-nothing, and hands each closed window to the merge.

use super::{DecodeCounts, Partial, RawBatch, ShardMsg};
use crate::config::Rules;
use crate::decode::{decode_into, Observation, Tunnels};
use crate::measure::placement::{PlacementCollector, SharedPlacement};
use crate::measure::rtt::{RttInput, RttSample, RttTracker};
use crate::measure::WindowCounters;
use crate::vocab::PacketTime;
use crossbeam_channel::{Receiver, Sender};
use std::sync::Arc;

/// What a shard needs of the rules; caps are this shard's share.
pub(super) struct ShardConfig {
    pub max_macs: usize,
    pub window_len_us: i64,
    pub rtt_flows: usize,
    pub rtt_echo_probes: usize,
    pub probe_timeout_ms: u64,
    pub flow_timeout_s: u64,
    pub max_samples: usize,
    pub rtt_enabled: bool,
    pub tunnels: Tunnels,
    pub placement: Arc<SharedPlacement>,
}

impl ShardConfig {
    pub fn new(rules: &Rules, shards: usize, placement: Arc<SharedPlacement>) -> ShardConfig {
        let l = &rules.limits;
        ShardConfig {
            max_macs: l.max_macs,
            window_len_us: rules.window_len_us(),
            rtt_flows: (l.rtt_flows / shards).max(1),
            rtt_echo_probes: (l.rtt_echo_probes / shards).max(1),
            probe_timeout_ms: rules.rtt.probe_timeout_ms,
            flow_timeout_s: rules.rtt.flow_timeout_s,
            max_samples: l.rtt_samples_per_window,
            rtt_enabled: rules.rtt.enabled,
            tunnels: rules.tunnels,
            placement,
        }
    }
}

pub(super) fn run(
    shard: usize,
    rx: Receiver<ShardMsg>,
    pool: Sender<RawBatch>,
    merge: Sender<Partial>,
    recycled: Receiver<Vec<RttSample>>,
    cfg: ShardConfig,
) {
    let mut counters = WindowCounters::new(cfg.max_macs);
    let mut rtt = RttTracker::new(cfg.rtt_flows, cfg.rtt_echo_probes, cfg.probe_timeout_ms, cfg.flow_timeout_s);
    let mut dc = DecodeCounts::default();
    let mut placement = PlacementCollector::new(cfg.placement.clone());
    // What RTT takes of the batch's frames, handed over as a batch (it
    // prefetches the flow table a few frames ahead). Grows to the batch
    // size once, then is reused.
    let mut rtt_in = Vec::new();
    // Every frame is decoded into this one (see `decode_into`).
    let mut o = Observation::empty(PacketTime::from_micros(0), 0, 0);
    for msg in rx {
        match msg {
            ShardMsg::Batch(mut batch) => {
                let mut start = 0usize;
                rtt_in.clear();
                for m in &batch.meta {
                    let end = m.end as usize;
                    let data = batch.bytes.get(start..end).unwrap_or(&[]);
                    start = end;
                    decode_into(&mut o, &cfg.tunnels, m.linktype, m.ts, m.orig_len, m.cap_len, data);
                    if let Some(k) = o.error {
                        dc.errors[k as usize] += 1;
                    }
                    dc.snaplen_cut += u64::from(o.snaplen_cut);
                    counters.observe(&o);
                    placement.observe(&o);
                    if cfg.rtt_enabled {
                        rtt_in.extend(RttInput::of(&o));
                    }
                }
                // The stages share nothing, so RTT after the others sees
                // the same frames in the same order.
                rtt.observe_batch(&rtt_in);
                batch.clear();
                // The reader may have gone; then the batch is simply freed.
                let _ = pool.try_send(batch);
            }
            ShardMsg::Close { window } => {
                let overflow = std::mem::take(&mut counters.overflow);
                let decode = std::mem::take(&mut dc);
                if let Ok(buffer) = recycled.try_recv() {
                    rtt.recycle(buffer);
                }
                let mut samples = rtt.close_window(PacketTime::window_end(window, cfg.window_len_us));
                let rtt_dropped = samples.len().saturating_sub(cfg.max_samples) as u64;
                samples.truncate(cfg.max_samples);
                let part = Partial {
                    shard,
                    window,
                    counters: counters.take(),
                    overflow,
                    decode,
                    samples,
                    rtt_counts: std::mem::take(&mut rtt.counts),
                    rtt_dropped,
                    evidence: placement.take(),
                };
                if merge.send(part).is_err() {
                    return;
                }
            }
        }
    }
}
