//! Window merge: waits for every shard's partial of a window (the watermark), then runs detect, policy and dispatch in packet-time order.

use super::{DecodeCounts, Partial};
use crate::action::Dispatcher;
use crate::detect::Detector;
use crate::event::{ActionEvent, Event, EventSink, LevelEvent};
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
    pub io_error: Option<std::io::Error>,
}

pub(super) struct Merge {
    pub shards: usize,
    pub detector: Detector,
    pub policy: Policy,
    pub dispatcher: Dispatcher,
    pub events: Box<dyn EventSink>,
}

impl Merge {
    pub fn run(mut self, rx: Receiver<Partial>) -> MergeOutput {
        let mut pending: BTreeMap<i64, (usize, WindowMerge)> = BTreeMap::new();
        let mut out = Counts::default();
        for part in rx {
            out.shard_overflow += part.overflow;
            out.decode.add(&part.decode);
            let entry = pending.entry(part.window).or_insert_with(|| (0, WindowMerge::default()));
            entry.0 += 1;
            entry.1.add(&part.counters);
            // Each shard closes windows in order, so windows complete in order.
            while let Some(e) = pending.first_entry() {
                if e.get().0 < self.shards {
                    break;
                }
                let (w, (_, merged)) = e.remove_entry();
                self.close(w, merged, &mut out);
            }
        }
        // Only reachable with partials missing, i.e. a shard died: close what there is.
        while let Some((w, (_, merged))) = pending.pop_first() {
            self.close(w, merged, &mut out);
        }
        MergeOutput {
            detector: self.detector,
            dispatcher: self.dispatcher,
            events: self.events,
            queued: out.queued,
            dropped: out.dropped,
            shard_overflow: out.shard_overflow,
            decode: out.decode,
            io_error: out.io_error,
        }
    }

    fn close(&mut self, w: i64, merged: WindowMerge, out: &mut Counts) {
        let totals = merged.finish();
        let changes = self.detector.close_window(w, &totals);
        for ch in changes {
            let vm = self.detector.vm(ch.vm);
            let hypervisor = vm.hypervisor.and_then(|h| self.policy.registry().get(h)).map(|e| e.id.clone());
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
            if let Some(action) = self.policy.decide(&ch, vm) {
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

#[derive(Default)]
struct Counts {
    queued: u64,
    dropped: u64,
    shard_overflow: u64,
    decode: DecodeCounts,
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
