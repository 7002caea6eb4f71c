//! Window merge: waits for every shard's partial of a window (the watermark), then runs detect, policy and dispatch in packet-time order.

use super::{DecodeCounts, Partial};
use crate::action::Dispatcher;
use crate::detect::{Detector, Outcome};
use crate::event::{ActionEvent, Event, EventSink, LevelEvent, RttPeaksEvent, RttSampleEvent};
use crate::measure::rtt::{RttCounts, RttSample};
use crate::measure::WindowMerge;
use crate::policy::Policy;
use crossbeam_channel::Receiver;
use std::collections::BTreeMap;

/// What the merge stage hands back at the end.
pub(super) struct MergeOutput {
    pub detector: Detector,
    pub dispatcher: Dispatcher,
    pub events: Box<dyn EventSink>,
    pub queued: u64,
    pub dropped: u64,
    pub shard_overflow: u64,
    pub decode: DecodeCounts,
    pub rtt_counts: RttCounts,
    pub rtt_samples: u64,
    pub rtt_dropped: u64,
    pub io_error: Option<std::io::Error>,
}

pub(super) struct Merge {
    pub shards: usize,
    pub detector: Detector,
    pub policy: Policy,
    pub dispatcher: Dispatcher,
    pub events: Box<dyn EventSink>,
    /// Write each RTT sample as an event.
    pub rtt_samples: bool,
}

/// One window's partials as they arrive.
#[derive(Default)]
struct Pending {
    shards: usize,
    merge: WindowMerge,
    samples: Vec<RttSample>,
}

impl Merge {
    pub fn run(mut self, rx: Receiver<Partial>) -> MergeOutput {
        let mut pending: BTreeMap<i64, Pending> = BTreeMap::new();
        let mut out = Counts::default();
        for mut part in rx {
            out.shard_overflow += part.overflow;
            out.decode.add(&part.decode);
            out.rtt_counts.add(&part.rtt_counts);
            out.rtt_dropped += part.rtt_dropped;
            let entry = pending.entry(part.window).or_default();
            entry.shards += 1;
            entry.merge.add(&part.counters);
            entry.samples.append(&mut part.samples);
            // Each shard closes windows in order, so windows complete in order.
            while let Some(e) = pending.first_entry() {
                if e.get().shards < self.shards {
                    break;
                }
                let (w, p) = e.remove_entry();
                self.close(w, p, &mut out);
            }
        }
        // Only reachable with partials missing, i.e. a shard died: close what there is.
        while let Some((w, p)) = pending.pop_first() {
            self.close(w, p, &mut out);
        }
        MergeOutput {
            detector: self.detector,
            dispatcher: self.dispatcher,
            events: self.events,
            queued: out.queued,
            dropped: out.dropped,
            shard_overflow: out.shard_overflow,
            decode: out.decode,
            rtt_counts: out.rtt_counts,
            rtt_samples: out.rtt_samples,
            rtt_dropped: out.rtt_dropped,
            io_error: out.io_error,
        }
    }

    fn close(&mut self, w: i64, p: Pending, out: &mut Counts) {
        let totals = p.merge.finish();
        let mut samples = p.samples;
        // Shards interleave arbitrarily; a total order makes the baseline
        // and the events the same for every thread count.
        samples.sort_unstable();
        out.rtt_samples += samples.len() as u64;
        let outcomes = self.detector.close_window(w, &totals, &samples);
        // Quiet windows before `w` come first, then w's samples, then w's verdicts.
        let start = self.detector.window_start(w);
        let split = outcomes.iter().position(|o| o.ts() > start).unwrap_or(outcomes.len());
        for o in &outcomes[..split] {
            self.outcome(o, out);
        }
        if self.rtt_samples {
            for s in &samples {
                let vm = self.detector.vm_index(s.mac).map(|i| self.detector.vm(i).name.clone());
                let ev = Event::RttSample(RttSampleEvent::new(s, vm));
                out.emit(&mut *self.events, &ev);
            }
        }
        for o in &outcomes[split..] {
            self.outcome(o, out);
        }
    }

    fn outcome(&mut self, o: &Outcome, out: &mut Counts) {
        match o {
            Outcome::RttPeaks(p) => {
                let vm = self.detector.vm(p.vm);
                let ev = Event::RttPeaks(RttPeaksEvent::new(p, vm, self.hypervisor_of(p.vm), self.detector.peak_ms()));
                out.emit(&mut *self.events, &ev);
            }
            Outcome::Level(ch) => {
                let hypervisor = self.hypervisor_of(ch.vm);
                let vm = self.detector.vm(ch.vm);
                let ev = Event::Level(LevelEvent {
                    ts: ch.window_end,
                    vm: vm.mac,
                    vm_name: Some(vm.name.clone()),
                    from: ch.from,
                    to: ch.to,
                    reason: ch.reason,
                    direction: ch.direction,
                    bps: ch.bps,
                    pps: ch.pps,
                    horizon_bytes: ch.horizon_bytes,
                    limit_bytes: ch.limit_bytes,
                    window_start: ch.window_start,
                    hypervisor,
                });
                out.emit(&mut *self.events, &ev);
                if let Some(action) = self.policy.decide(ch, vm) {
                    let submitted = self.dispatcher.submit(action.clone());
                    match submitted {
                        crate::action::Submitted::Queued => out.queued += 1,
                        crate::action::Submitted::Dropped => out.dropped += 1,
                    }
                    let ev = Event::Action(ActionEvent::new(&action, self.dispatcher.backend(), submitted.as_str()));
                    out.emit(&mut *self.events, &ev);
                }
            }
        }
    }

    fn hypervisor_of(&self, vm: usize) -> Option<String> {
        self.detector.vm(vm).hypervisor.and_then(|h| self.policy.registry().get(h)).map(|e| e.id.clone())
    }
}

#[derive(Default)]
struct Counts {
    queued: u64,
    dropped: u64,
    shard_overflow: u64,
    decode: DecodeCounts,
    rtt_counts: RttCounts,
    rtt_samples: u64,
    rtt_dropped: u64,
    io_error: Option<std::io::Error>,
}

impl Counts {
    /// Writes an event; after the first write error, stops writing and keeps the error.
    fn emit(&mut self, sink: &mut dyn EventSink, ev: &Event) {
        if self.io_error.is_none() {
            if let Err(e) = sink.emit(ev) {
                self.io_error = Some(e);
            }
        }
    }
}
