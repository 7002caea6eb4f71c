//! Window merge: waits for every shard's partial of a window (the watermark), then has its parts close it in packet-time order.
//!
//! The merge thread owns the stages after the shards ([`Stages`]: detect,
//! policy, dispatch) and calls named parts, each in its own file: the
//! window close ([`window`](super::window)), moving-target defense
//! ([`Mtd`], IDS alerts and evacuations), reload ([`Reload`]) and
//! publishing ([`Publish`]: events, metrics, the API's views).

use super::evacuation::{AlertBatch, Mtd};
use super::publish::Publish;
use super::reload::Reload;
use super::stages::Stages;
use super::window::{self, Pending};
use super::{DecodeCounts, Partial};
use crate::action::Dispatcher;
use crate::detect::Detector;
use crate::event::EventSink;
use crate::gate::record::GateRecord;
use crate::measure::rtt::{RttCounts, RttSample};
use crossbeam_channel::{Receiver, Sender};
use std::collections::{BTreeMap, VecDeque};

/// What the merge stage hands back at the end.
pub(super) struct MergeOutput {
    pub detector: Detector,
    pub dispatcher: Dispatcher,
    pub events: Box<dyn EventSink>,
    pub queued: u64,
    pub dropped: u64,
    pub held: u64,
    pub shard_overflow: u64,
    pub decode: DecodeCounts,
    pub rtt_counts: RttCounts,
    pub rtt_samples: u64,
    pub rtt_dropped: u64,
    pub written_open: u64,
    pub io_error: Option<std::io::Error>,
    pub ids: super::IdsCounts,
}

pub(super) struct Merge {
    pub shards: usize,
    pub stages: Stages,
    pub out: Publish,
    /// IDS alerts and evacuations.
    pub mtd: Mtd,
    /// Reload on SIGHUP (live and paced replays).
    pub reload: Option<Reload>,
    /// Replay: the gate's decisions not yet due, in time order.
    pub gate_replay: VecDeque<GateRecord>,
    /// Emptied sample buffers back to the shards (`None` when they are
    /// not in this process): a buffer whose pages are mapped already, so a
    /// window's samples do not fault in fresh memory.
    pub recycle: Option<Sender<Vec<RttSample>>>,
}

impl Merge {
    pub fn run(
        mut self,
        rx: Receiver<Partial>,
        alerts: Receiver<AlertBatch>,
        gate: Receiver<Vec<GateRecord>>,
    ) -> MergeOutput {
        let mut pending: BTreeMap<i64, Pending> = BTreeMap::new();
        let mut alerts = alerts;
        let mut gate = gate;
        loop {
            crossbeam_channel::select! {
                recv(rx) -> part => match part {
                    Ok(part) => self.partial(part, &mut pending),
                    Err(_) => break,
                },
                recv(alerts) -> batch => match batch {
                    Ok(batch) => self.mtd.batch(&mut self.stages, &mut self.out, batch),
                    Err(_) => alerts = crossbeam_channel::never(),
                },
                recv(gate) -> batch => match batch {
                    Ok(records) => self.stages.gate_decisions(records, &self.out),
                    Err(_) => gate = crossbeam_channel::never(),
                },
            }
        }
        // Only reachable with partials missing, i.e. a shard died: close what there is.
        while let Some((w, p)) = pending.pop_first() {
            self.close(w, p);
        }
        // The input ended: moves still open are settled with what was seen.
        for s in self.stages.detector.settle_all() {
            self.out.settle(&s);
        }
        // What only their final measurements show is graded (and acted on) now.
        for o in self.stages.detector.grade_settled() {
            self.stages.outcome(&o, &mut self.out);
        }
        self.out.release();
        self.out.flush();
        self.mtd.replay_leftover(&self.out);
        let c = self.out.counts;
        MergeOutput {
            detector: self.stages.detector,
            dispatcher: self.stages.dispatcher,
            events: self.out.events,
            queued: c.queued,
            dropped: c.dropped,
            held: c.held,
            shard_overflow: c.shard_overflow,
            decode: c.decode,
            rtt_counts: c.rtt_counts,
            rtt_samples: c.rtt_samples,
            rtt_dropped: c.rtt_dropped,
            written_open: c.written_open,
            io_error: c.io_error,
            ids: self.mtd.counts.clone(),
        }
    }

    fn partial(&mut self, mut part: Partial, pending: &mut BTreeMap<i64, Pending>) {
        let out = &mut self.out.counts;
        out.shard_overflow += part.overflow;
        out.decode.add(&part.decode);
        out.rtt_counts.add(&part.rtt_counts);
        out.rtt_dropped += part.rtt_dropped;
        let entry = pending.entry(part.window).or_default();
        entry.shards += 1;
        entry.merge.add(&part.counters);
        if let Some(empty) = entry.samples.add(std::mem::take(&mut part.samples)) {
            self.recycle(empty);
        }
        entry.evidence.append(&mut part.evidence);
        entry.decode.add(&part.decode);
        entry.rtt.add(&part.rtt_counts);
        // Each shard closes windows in order, so windows complete in order.
        while let Some(e) = pending.first_entry() {
            if e.get().shards < self.shards {
                break;
            }
            let (w, p) = e.remove_entry();
            self.close(w, p);
        }
    }

    /// Between windows: a reload SIGHUP asked for, then the window.
    fn close(&mut self, w: i64, p: Pending) {
        if let Some(r) = &mut self.reload {
            r.poll(&mut self.stages, &mut self.mtd, self.out.telemetry.as_deref());
        }
        for spent in window::close(&mut self.stages, &mut self.mtd, &mut self.out, &mut self.gate_replay, w, p) {
            self.recycle(spent);
        }
    }

    fn recycle(&self, buffer: Vec<RttSample>) {
        if let Some(tx) = &self.recycle {
            if buffer.capacity() > 0 {
                // Full: the shards have spares enough; this one is freed.
                let _ = tx.try_send(buffer);
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    //! The merge's window ordering: a window closes once every shard has
    //! reported it, windows close in order, and inside a window events go
    //! by packet time: the quiet windows before it, then what happened inside
    //! it (moves, samples), then its verdicts at its end.
    use super::super::publish::Counts;
    use super::*;
    use crate::config::Rules;
    use crate::event::Event;
    use crate::measure::placement::Evidence;
    use crate::measure::placement::{Origin, Sighting};
    use crate::measure::rtt::RttSample;
    use crate::measure::rtt::SampleKind;
    use crate::measure::Counters;
    use crate::policy::Policy;
    use crate::trust::ClusterKey;
    use crate::trust::Registry;
    use crate::vocab::PacketTime;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;
    use std::sync::Mutex;

    /// A sink that keeps what it is given.
    pub(in crate::pipeline) struct Shared(pub(in crate::pipeline) Arc<Mutex<Vec<Event>>>);
    impl EventSink for Shared {
        fn emit(&mut self, e: &Event) -> std::io::Result<()> {
            self.0.lock().unwrap().push(e.clone());
            Ok(())
        }
    }

    fn vm() -> crate::decode::Mac {
        "fa:16:3e:00:00:01".parse().unwrap()
    }

    /// 1 s windows, MEDIUM at 100 packets/s, clear after one window; VM a on
    /// h1; h1 and h2 signed. Two shards.
    fn merge() -> (Merge, Arc<Mutex<Vec<Event>>>) {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("k");
        std::fs::write(&k, [b'k'; 32]).unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        let key = ClusterKey::from_bytes(&[b'k'; 32]).unwrap();
        let hv = |id: &str, n: u8| {
            let mac: crate::decode::Mac = format!("52:54:00:00:00:0{n}").parse().unwrap();
            format!("[[hypervisor]]\nid = \"{id}\"\nmacs = [\"{mac}\"]\nsignature = \"{}\"\n", key.sign("t", id, mac))
        };
        let text = format!(
            "[cluster]\nname = \"t\"\nkey_file = \"k\"\n\
             [thresholds]\nmedium_pps = 100\nhigh_pps = 1000\nclear_windows = 1\n{}{}\
             [[vm]]\nname = \"a\"\nmac = \"{}\"\nhypervisor = \"h1\"\n",
            hv("h1", 1),
            hv("h2", 2),
            vm()
        );
        let rules = Rules::from_str_in(d.path(), std::path::Path::new("t.toml"), &text).unwrap();
        let registry = Registry::build(&rules.key, &rules.cluster, &rules.hypervisors);
        let got = Arc::new(Mutex::new(Vec::new()));
        let log = Box::new(crate::action::LogSink::to_writer(Box::new(std::io::sink())));
        let m = Merge {
            shards: 2,
            stages: Stages {
                detector: Detector::new(rules.detect_config(), registry.clone()),
                policy: Policy::new(&rules, registry),
                dispatcher: Dispatcher::start_with(&rules.backend, 16, None, log).unwrap(),
            },
            out: Publish {
                events: Box::new(Shared(got.clone())),
                telemetry: None,
                rtt_samples: true,
                vm_windows: false,
                counts: Counts::default(),
                held: Default::default(),
                max_held: 100,
            },
            mtd: Mtd::new(&rules),
            recycle: None,
            reload: None,
            gate_replay: Default::default(),
        };
        (m, got)
    }

    fn part(shard: usize, window: i64, packets: u64, evidence: Evidence, samples: Vec<RttSample>) -> Partial {
        let counters = if packets > 0 {
            vec![(vm(), Counters { tx_bytes: packets * 100, tx_packets: packets, rx_bytes: 0, rx_packets: 0 })]
        } else {
            vec![]
        };
        Partial {
            shard,
            window,
            counters,
            overflow: 0,
            decode: DecodeCounts::default(),
            samples,
            rtt_counts: RttCounts::default(),
            rtt_dropped: 0,
            evidence,
        }
    }

    /// a seen behind hypervisor `n` at `t_us`.
    fn seen(n: u8, t_us: i64) -> Evidence {
        let t = PacketTime::from_micros(t_us);
        Evidence {
            sightings: vec![Sighting {
                vm: vm(),
                origin: Origin::Outer { mac: crate::decode::Mac([0x52, 0x54, 0, 0, 0, n]), ip: [10, 0, 0, n].into() },
                first: t,
                last: t,
                frames: 1,
                announce: None,
                slots: [0; crate::measure::placement::SLOTS],
            }],
            ..Default::default()
        }
    }

    /// a sending behind hypervisor `n` every 2 ms from `from_us` to `to_us` (one window).
    fn busy(n: u8, from_us: i64, to_us: i64) -> Evidence {
        let mut e = seen(n, from_us);
        let s = &mut e.sightings[0];
        s.last = PacketTime::from_micros(to_us);
        for t in (from_us..=to_us).step_by(2_000) {
            s.slots[crate::measure::placement::slot_of(PacketTime::from_micros(t), 1_000_000)] += 1;
            s.frames += 1;
        }
        e
    }

    /// Each event as (type, µs since 0, what).
    fn order(got: &Mutex<Vec<Event>>) -> Vec<(&'static str, i64, String)> {
        got.lock()
            .unwrap()
            .iter()
            .map(|e| match e {
                Event::Level(l) => ("level", l.ts.as_micros(), format!("{:?}->{:?}", l.from, l.to)),
                Event::Action(a) => ("action", a.ts.as_micros(), a.action.as_str().to_string()),
                Event::Migration(m) => (
                    "migration",
                    m.ts.as_micros(),
                    format!("{:?} {:?}", m.to_hypervisor, m.responsive_ms).replace(" None", ""),
                ),
                Event::RttSample(s) => ("rtt_sample", s.ts.as_micros(), format!("{}", s.rtt_ms)),
                other => ("other", other.ts().as_micros(), String::new()),
            })
            .collect()
    }

    #[test]
    fn a_window_closes_when_every_shard_reported_it_and_windows_close_in_order() {
        let (mut m, got) = merge();
        let mut pending = BTreeMap::new();
        m.partial(part(0, 5, 150, Evidence::default(), vec![]), &mut pending);
        m.partial(part(0, 6, 0, Evidence::default(), vec![]), &mut pending);
        assert!(got.lock().unwrap().is_empty(), "shard 1 has not reported window 5");
        // Shard 1's share of window 5 brings it to 200 packets/s.
        m.partial(part(1, 5, 50, Evidence::default(), vec![]), &mut pending);
        let low_to_medium = ("level", 6_000_000, "Low->Medium".to_string());
        let alert = ("action", 6_000_000, "alert".to_string());
        assert_eq!(order(&got), [low_to_medium.clone(), alert.clone()]);
        m.partial(part(1, 6, 0, Evidence::default(), vec![]), &mut pending);
        assert_eq!(order(&got), [low_to_medium, alert, ("level", 7_000_000, "Medium->Low".to_string())]);
        assert!(pending.is_empty());
        assert_eq!(m.out.counts.queued, 1);
        m.stages.dispatcher.finish();
    }

    #[test]
    fn inside_a_window_quiet_windows_come_first_then_moves_and_samples_by_time_then_verdicts() {
        let (mut m, got) = merge();
        let mut pending = BTreeMap::new();
        for s in 0..2 {
            m.partial(
                part(s, 2, 100, if s == 0 { seen(1, 2_100_000) } else { Evidence::default() }, vec![]),
                &mut pending,
            );
        }
        let sample = |t_us: i64, rtt_us: i64| RttSample {
            ts: PacketTime::from_micros(t_us),
            mac: vm(),
            rtt_us,
            kind: SampleKind::Echo,
            src: ([10, 0, 1, 1].into(), 0),
            dst: ([10, 0, 0, 9].into(), 0),
        };
        // Window 5 (3 and 4 were quiet): a sample from each shard around a move to h2.
        m.partial(part(0, 5, 60, seen(2, 5_400_000), vec![sample(5_700_000, 2_000)]), &mut pending);
        m.partial(part(1, 5, 60, Evidence::default(), vec![sample(5_200_000, 3_000)]), &mut pending);
        assert_eq!(
            order(&got),
            [
                ("level", 3_000_000, "Low->Medium".to_string()),
                ("action", 3_000_000, "alert".to_string()),
                ("level", 4_000_000, "Medium->Low".to_string()),
                ("rtt_sample", 5_200_000, "3".to_string()),
                ("migration", 5_400_000, "Some(\"h2\")".to_string()),
                ("rtt_sample", 5_700_000, "2".to_string()),
                ("level", 6_000_000, "Low->Medium".to_string()),
                ("action", 6_000_000, "alert".to_string()),
            ]
        );
        m.stages.dispatcher.finish();
    }

    #[test]
    fn an_open_move_holds_its_event_and_all_after_it_until_settled_but_not_its_actions() {
        let (mut m, got) = merge();
        let mut pending = BTreeMap::new();
        let both = |m: &mut Merge, pending: &mut BTreeMap<i64, Pending>, w: i64, packets: u64, ev: Evidence| {
            m.partial(part(0, w, packets, ev, vec![]), pending);
            m.partial(part(1, w, 0, Evidence::default(), vec![]), pending);
        };
        // Busy at h1 (a frame every 2 ms) to 2.99 s; at h2 from 3.9 s with one frame, 150 packets/s: MEDIUM.
        both(&mut m, &mut pending, 2, 0, busy(1, 2_500_000, 2_990_000));
        both(&mut m, &mut pending, 3, 150, seen(2, 3_900_000));
        // Not back at its pace yet: the move is open; its event and the
        // window's verdict wait, the alert went to the dispatcher.
        assert_eq!(order(&got), []);
        assert_eq!(m.out.counts.queued, 1);
        assert_eq!(m.out.held.len(), 3);
        // Back at its pace from 4.0 s: settled, 100 ms after the move; what
        // was held goes out first, in order, then this window's.
        both(&mut m, &mut pending, 4, 0, busy(2, 4_000_000, 4_500_000));
        assert_eq!(
            order(&got),
            [
                ("migration", 3_900_000, "Some(\"h2\") Some(100.0)".to_string()),
                ("level", 4_000_000, "Low->Medium".to_string()),
                ("action", 4_000_000, "alert".to_string()),
                ("level", 5_000_000, "Medium->Low".to_string()),
            ]
        );
        assert!(m.out.held.is_empty());
        // Never back: given up at the bound (1 s), or when the input ends first.
        let (mut m, got) = merge();
        let mut pending = BTreeMap::new();
        both(&mut m, &mut pending, 2, 0, busy(1, 2_500_000, 2_990_000));
        both(&mut m, &mut pending, 3, 0, seen(2, 3_900_000));
        assert_eq!(order(&got), []);
        // Window 4 holds 4.9 s, the bound.
        both(&mut m, &mut pending, 4, 0, seen(2, 4_800_000));
        assert_eq!(order(&got), [("migration", 3_900_000, "Some(\"h2\")".to_string())]);
        let (mut m, got) = merge();
        let mut pending = BTreeMap::new();
        both(&mut m, &mut pending, 2, 0, busy(1, 2_500_000, 2_990_000));
        both(&mut m, &mut pending, 3, 0, seen(2, 3_900_000));
        let (_tx, rx) = crossbeam_channel::bounded::<Partial>(1);
        drop(_tx);
        let out = m.run(rx, crossbeam_channel::never(), crossbeam_channel::never());
        assert_eq!(order(&got), [("migration", 3_900_000, "Some(\"h2\")".to_string())]);
        out.dispatcher.finish();
    }
}
