//! Window close at the merge: one window's merged partials through detect, in packet-time order among replayed alerts, gate decisions and samples, then MTD and publishing.

use super::evacuation::Mtd;
use super::publish::Publish;
use super::stages::Stages;
use super::DecodeCounts;
use crate::detect::Outcome;
use crate::event::{Event, RttSampleEvent};
use crate::gate::record::GateRecord;
use crate::measure::placement::Evidence;
use crate::measure::rtt::{RttCounts, RttSample};
use crate::measure::WindowMerge;
use crate::vocab::PacketTime;
use std::collections::VecDeque;

/// One window's partials as they arrive.
#[derive(Default)]
pub(super) struct Pending {
    pub shards: usize,
    pub merge: WindowMerge,
    pub samples: Samples,
    pub evidence: Evidence,
    pub decode: DecodeCounts,
    pub rtt: RttCounts,
}

/// A window's RTT samples as the shards handed them over: one run per
/// shard, each sorted on its own, read in their total order
/// ([`RttSample`]'s `Ord`) by merging the runs as they are read. The shards
/// interleave arbitrarily, and the total order makes the baseline and the
/// events the same for every thread count; merging the runs (each already
/// in time order, as a shard takes frames in time order) costs one
/// comparison per sample and per run, where sorting their concatenation
/// cost n log n comparisons and a stable sort's window-sized scratch buffer.
/// (A cluster controller's partial holds several sensors' samples appended:
/// that run is not in time order and is sorted in full, as before.)
#[derive(Default)]
pub(super) struct Samples {
    runs: Vec<Vec<RttSample>>,
}

impl Samples {
    /// A shard's samples of the window; an empty buffer is handed back.
    pub fn add(&mut self, run: Vec<RttSample>) -> Option<Vec<RttSample>> {
        if run.is_empty() {
            return Some(run);
        }
        self.runs.push(run);
        None
    }

    pub fn len(&self) -> usize {
        self.runs.iter().map(Vec::len).sum()
    }

    /// Puts each run into the total order (linear for a run already in time order).
    fn sort(&mut self) {
        for run in &mut self.runs {
            sort_samples(run);
        }
    }

    /// The samples in their total order (after [`Samples::sort`]).
    fn iter(&self) -> Merged<'_> {
        Merged { heads: self.runs.iter().map(Vec::as_slice).collect() }
    }

    /// The emptied buffers, for the shards to fill again.
    fn into_buffers(self) -> Vec<Vec<RttSample>> {
        let mut runs = self.runs;
        for r in &mut runs {
            r.clear();
        }
        runs
    }
}

/// A k-way merge of sorted runs (k: the shards, a handful: a linear scan
/// of their heads).
pub(super) struct Merged<'a> {
    heads: Vec<&'a [RttSample]>,
}

impl<'a> Iterator for Merged<'a> {
    type Item = &'a RttSample;

    #[inline]
    fn next(&mut self) -> Option<&'a RttSample> {
        let mut best: Option<(usize, &'a RttSample)> = None;
        for (i, run) in self.heads.iter().enumerate() {
            if let Some(s) = run.first() {
                if best.is_none_or(|(_, b)| s < b) {
                    best = Some((i, s));
                }
            }
        }
        let (i, s) = best?;
        self.heads[i] = &self.heads[i][1..];
        Some(s)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.heads.iter().map(|r| r.len()).sum();
        (n, Some(n))
    }
}

/// Sorts samples into their total order ([`RttSample`]'s `Ord`), cheaply:
/// by time alone first (one integer to compare, in place, and linear when
/// they are in time order already), then the few samples of one instant
/// among themselves.
fn sort_samples(samples: &mut [RttSample]) {
    samples.sort_unstable_by_key(|s| s.ts);
    let mut rest = samples;
    while let Some(first) = rest.first() {
        let ts = first.ts;
        let n = rest.iter().position(|s| s.ts != ts).unwrap_or(rest.len());
        let (same, after) = rest.split_at_mut(n);
        if n > 1 {
            same.sort_unstable();
        }
        rest = after;
    }
}

/// Closes window `w` (the caller polled for a reload first); returns the
/// samples' buffers, emptied, for the shards to fill again.
pub(super) fn close(
    st: &mut Stages,
    mtd: &mut Mtd,
    out: &mut Publish,
    gate_replay: &mut VecDeque<GateRecord>,
    w: i64,
    p: Pending,
) -> Vec<Vec<RttSample>> {
    let evictions_before = st.detector.evictions;
    let totals = p.merge.finish();
    let mut samples = p.samples;
    samples.sort();
    out.counts.rtt_samples += samples.len() as u64;
    let mut evidence = p.evidence;
    evidence.normalize();
    // Replayed gate decisions due by the window's end, before its moves
    // look for them (each move only takes one from before itself).
    let end = st.detector.window_start(w + 1);
    let mut due = Vec::new();
    while gate_replay.front().is_some_and(|r| r.ts < end) {
        due.extend(gate_replay.pop_front());
    }
    if !due.is_empty() {
        st.gate_decisions(due, out);
    }
    let outcomes = st.detector.close_window(w, &totals, samples.iter(), &evidence);
    // Moves of earlier windows settled by this one: their events, held
    // back until now, go out before this window's.
    for s in st.detector.take_settled() {
        out.settle(&s);
    }
    // Quiet windows before `w` first; then what happened inside `w`
    // (samples, moves, conflicts) by time; then w's verdicts at its end.
    let start = st.detector.window_start(w);
    let split = outcomes.iter().position(|o| o.ts() > start).unwrap_or(outcomes.len());
    // Replayed IDS alerts due by the window's end go in time order among
    // the rest: those before its start among the quiet windows' outcomes.
    let mut due = mtd.due(start, end).into_iter().peekable();
    for o in &outcomes[..split] {
        while let Some(a) = due.next_if(|a| a.0 < o.ts()) {
            mtd.replayed(st, out, a);
        }
        st.outcome(o, out);
    }
    while let Some(a) = due.next_if(|a| a.0 <= start) {
        mtd.replayed(st, out, a);
    }
    let (timed, at_end): (Vec<&Outcome>, Vec<&Outcome>) = outcomes[split..]
        .iter()
        .partition(|o| matches!(o, Outcome::Migration(_) | Outcome::Conflict(_) | Outcome::GateDenied(_)));
    let mut inside: Vec<(PacketTime, usize, Option<&Outcome>, Option<&RttSample>)> = Vec::new();
    if out.rtt_samples {
        inside.extend(samples.iter().enumerate().map(|(k, s)| (s.ts, k, None, Some(s))));
    }
    let n = inside.len();
    inside.extend(timed.iter().enumerate().map(|(k, o)| (o.ts(), n + k, Some(*o), None)));
    inside.sort_by_key(|x| (x.0, x.1));
    for (ts, _, o, s) in inside {
        while let Some(a) = due.next_if(|a| a.0 < ts) {
            mtd.replayed(st, out, a);
        }
        if let Some(s) = s {
            let vm = st.detector.vm_index(s.mac).map(|i| st.detector.vm(i).name.clone());
            out.emit(&Event::RttSample(RttSampleEvent::new(s, vm)));
        }
        if let Some(o) = o {
            st.outcome(o, out);
        }
    }
    for a in due {
        mtd.replayed(st, out, a);
    }
    if out.vm_windows {
        out.vm_windows(&st.detector, end);
    }
    for o in at_end {
        st.outcome(o, out);
    }
    mtd.host_high(st, out, end);
    mtd.retry_deferred(st, out, end);
    mtd.publish(out);
    out.window(&st.detector, &p.decode, &p.rtt, samples.iter(), st.detector.evictions - evictions_before);
    // A window's events are readable when it closes (tail -f on a live run).
    out.flush();
    samples.into_buffers()
}

#[cfg(test)]
mod tests {
    use super::{sort_samples, Samples};
    use crate::decode::Mac;
    use crate::measure::rtt::{RttSample, SampleKind};
    use crate::vocab::PacketTime;
    use std::net::{IpAddr, Ipv4Addr};

    /// Seeded pseudo-random numbers below `m`.
    fn xorshift(seed: u64) -> impl FnMut(u64) -> u64 {
        let mut x = seed;
        move |m| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        }
    }

    #[test]
    fn samples_are_sorted_into_the_total_order_whatever_the_shards_interleaving() {
        // Two shards' runs, each in time order, with many samples of one
        // instant, ties on every field but the last, and exact duplicates.
        let mut next = xorshift(12345);
        let mut shards: [Vec<RttSample>; 2] = Default::default();
        let mut t = [0i64; 2];
        for _ in 0..5000 {
            let k = next(2) as usize;
            t[k] += next(3) as i64; // a third of them at the same instant
            let s = RttSample {
                ts: PacketTime::from_micros(t[k]),
                mac: Mac([2, 0, 0, 0, 0, next(3) as u8]),
                rtt_us: next(4) as i64,
                kind: [SampleKind::Echo, SampleKind::Timestamp][next(2) as usize],
                src: (IpAddr::V4(Ipv4Addr::new(10, 0, 0, next(3) as u8)), next(2) as u16),
                dst: (IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)), next(2) as u16),
            };
            shards[k].push(s);
        }
        for order in [[0, 1], [1, 0]] {
            let mut got: Vec<RttSample> = order.iter().flat_map(|&k| shards[k].clone()).collect();
            let mut want = got.clone();
            want.sort_unstable();
            sort_samples(&mut got);
            assert_eq!(got, want);
        }
        // And any order at all.
        let mut got: Vec<RttSample> = shards.concat();
        got.reverse();
        let mut want = got.clone();
        want.sort_unstable();
        sort_samples(&mut got);
        assert_eq!(got, want);
    }

    #[test]
    fn a_windows_runs_are_read_in_the_total_order_whatever_their_number_and_order() {
        let mut next = xorshift(99);
        let sample = |t: i64, m: u8, rtt: i64, port: u16| RttSample {
            ts: PacketTime::from_micros(t),
            mac: Mac([2, 0, 0, 0, 0, m]),
            rtt_us: rtt,
            kind: SampleKind::Timestamp,
            src: (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), port),
            dst: (IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)), 80),
        };
        for shards in [1usize, 2, 3, 5] {
            // Each shard's run in time order (ties in push order, not
            // sorted), one of them reversed (a capture whose time ran
            // backwards inside a shard), and an empty one.
            let mut runs: Vec<Vec<RttSample>> = vec![Vec::new(); shards + 1];
            let mut t = vec![0i64; shards];
            for _ in 0..3000 {
                let k = next(shards as u64) as usize;
                t[k] += next(3) as i64;
                runs[k].push(sample(t[k], next(3) as u8, next(4) as i64, next(3) as u16));
            }
            runs[0].reverse();
            let mut want: Vec<RttSample> = runs.concat();
            want.sort_unstable();
            // Every rotation of the arrival order, forwards and backwards.
            for turn in 0..runs.len() {
                for backwards in [false, true] {
                    let mut order = runs.clone();
                    order.rotate_left(turn);
                    if backwards {
                        order.reverse();
                    }
                    let mut samples = Samples::default();
                    let mut handed_back = 0;
                    for run in order {
                        handed_back += usize::from(samples.add(run).is_some());
                    }
                    assert_eq!(handed_back, 1, "the empty run is handed back at once");
                    assert_eq!(samples.len(), 3000);
                    samples.sort();
                    let got: Vec<RttSample> = samples.iter().copied().collect();
                    assert_eq!(got, want, "{shards} shards, turn {turn}, backwards {backwards}");
                    assert_eq!(samples.iter().size_hint(), (3000, Some(3000)));
                    let buffers = samples.into_buffers();
                    assert_eq!(buffers.len(), shards);
                    assert!(buffers.iter().all(|b| b.is_empty() && b.capacity() > 0));
                }
            }
        }
    }
}
