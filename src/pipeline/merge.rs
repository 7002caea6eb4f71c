//! Window merge: waits for every shard's partial of a window (the watermark), then runs detect, policy and dispatch in packet-time order.

use super::{DecodeCounts, Partial};
use crate::action::Dispatcher;
use crate::detect::{Detector, Outcome};
use crate::event::{
    ActionEvent, ConflictEvent, Event, EventSink, LevelEvent, MigrationEvent, RttPeaksEvent, RttSampleEvent,
};
use crate::measure::placement::Evidence;
use crate::measure::rtt::{RttCounts, RttSample};
use crate::measure::WindowMerge;
use crate::policy::Policy;
use crate::time::PacketTime;
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
    evidence: Evidence,
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
            entry.evidence.append(&mut part.evidence);
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
        let mut evidence = p.evidence;
        evidence.normalize();
        let outcomes = self.detector.close_window(w, &totals, &samples, &evidence);
        // Quiet windows before `w` first; then what happened inside `w`
        // (samples, moves, conflicts) by time; then w's verdicts at its end.
        let start = self.detector.window_start(w);
        let split = outcomes.iter().position(|o| o.ts() > start).unwrap_or(outcomes.len());
        for o in &outcomes[..split] {
            self.outcome(o, out);
        }
        let (timed, at_end): (Vec<&Outcome>, Vec<&Outcome>) =
            outcomes[split..].iter().partition(|o| matches!(o, Outcome::Migration(_) | Outcome::Conflict(_)));
        let mut inside: Vec<(PacketTime, usize, Option<&Outcome>, Option<&RttSample>)> = Vec::new();
        if self.rtt_samples {
            inside.extend(samples.iter().enumerate().map(|(k, s)| (s.ts, k, None, Some(s))));
        }
        let n = inside.len();
        inside.extend(timed.iter().enumerate().map(|(k, o)| (o.ts(), n + k, Some(*o), None)));
        inside.sort_by_key(|x| (x.0, x.1));
        for (_, _, o, s) in inside {
            if let Some(s) = s {
                let vm = self.detector.vm_index(s.mac).map(|i| self.detector.vm(i).name.clone());
                out.emit(&mut *self.events, &Event::RttSample(RttSampleEvent::new(s, vm)));
            }
            if let Some(o) = o {
                self.outcome(o, out);
            }
        }
        for o in at_end {
            self.outcome(o, out);
        }
    }

    fn outcome(&mut self, o: &Outcome, out: &mut Counts) {
        match o {
            Outcome::RttPeaks(p) => {
                let vm = self.detector.vm(p.vm);
                let ev = Event::RttPeaks(RttPeaksEvent::new(
                    p,
                    vm,
                    self.detector.hypervisor_name(p.vm),
                    self.detector.peak_ms(),
                ));
                out.emit(&mut *self.events, &ev);
            }
            Outcome::Migration(m) => {
                if let (Some(from), Some(to)) = (m.from.and_then(|p| p.hv), m.to.and_then(|p| p.hv)) {
                    self.policy.note_move(from, to);
                }
                let vm = self.detector.vm(m.vm);
                let ev = Event::Migration(MigrationEvent::new(
                    m,
                    vm,
                    self.detector.registry(),
                    self.detector.ram_bytes(m.vm),
                ));
                out.emit(&mut *self.events, &ev);
            }
            Outcome::Conflict(c) => {
                let ev = Event::Conflict(ConflictEvent::new(c, |i| self.detector.vm(i), self.detector.registry()));
                out.emit(&mut *self.events, &ev);
            }
            Outcome::Level(ch) => {
                let hypervisor = self.detector.hypervisor_name(ch.vm);
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
                    hypervisor: hypervisor.clone(),
                });
                out.emit(&mut *self.events, &ev);
                let signed = self.detector.signed(ch.vm);
                let current = self.detector.place(ch.vm).and_then(|p| p.hv);
                if let Some(action) = self.policy.decide(ch, vm, signed, current, hypervisor) {
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
