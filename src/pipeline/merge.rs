//! Window merge: waits for every shard's partial of a window (the watermark), then runs detect, policy and dispatch in packet-time order.

use super::{DecodeCounts, Partial};
use crate::action::Dispatcher;
use crate::config::Rules;
use crate::decode::DecodeErrorKind;
use crate::detect::{Detector, Outcome};
use crate::event::{
    ActionEvent, ActionHeldEvent, ConflictEvent, Event, EventSink, GateDeniedEvent, LevelEvent, MigrationEvent,
    RttPeaksEvent, RttSampleEvent,
};
use crate::gate::record::GateRecord;
use crate::measure::placement::Evidence;
use crate::measure::placement::{PlacementConfig, SharedPlacement};
use crate::measure::rtt::{RttCounts, RttSample};
use crate::measure::WindowMerge;
use crate::policy::Decision;
use crate::policy::Policy;
use crate::serve::{HypervisorMac, HypervisorView, Telemetry, VmView};
use crate::time::PacketTime;
use crate::trust::Registry;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn ev_kind(e: &Event) -> &'static str {
    match e {
        Event::Conflict(c) => c.kind.as_str(),
        _ => "",
    }
}
use super::evacuation::AlertBatch;
use crossbeam_channel::Receiver;
use std::collections::BTreeMap;

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
    pub io_error: Option<std::io::Error>,
    pub ids: super::IdsCounts,
}

pub(super) struct Merge {
    pub shards: usize,
    pub detector: Detector,
    pub policy: Policy,
    pub dispatcher: Dispatcher,
    pub events: Box<dyn EventSink>,
    /// Write each RTT sample as an event.
    pub rtt_samples: bool,
    /// Write each VM's rates of each window as an event.
    pub vm_windows: bool,
    /// IDS alerts and evacuations.
    pub mtd: super::evacuation::Mtd,
    /// Replay: the gate's decisions not yet due, in time order.
    pub gate_replay: std::collections::VecDeque<GateRecord>,
    pub telemetry: Option<Arc<Telemetry>>,
    /// The reload flag (SIGHUP), the rules directory, and the shards' shared config.
    pub reload: Option<(Arc<AtomicBool>, PathBuf, Arc<SharedPlacement>)>,
    /// The settings running now that only a restart changes.
    pub running: crate::config::RestartOnly,
}

/// One window's partials as they arrive.
#[derive(Default)]
struct Pending {
    shards: usize,
    merge: WindowMerge,
    samples: Vec<RttSample>,
    evidence: Evidence,
    decode: DecodeCounts,
    rtt: RttCounts,
}

impl Merge {
    pub fn run(
        mut self,
        rx: Receiver<Partial>,
        alerts: Receiver<AlertBatch>,
        gate: Receiver<Vec<GateRecord>>,
    ) -> MergeOutput {
        let mut pending: BTreeMap<i64, Pending> = BTreeMap::new();
        let mut out = Counts::default();
        let mut alerts = alerts;
        let mut gate = gate;
        loop {
            crossbeam_channel::select! {
                recv(rx) -> part => match part {
                    Ok(part) => self.partial(part, &mut pending, &mut out),
                    Err(_) => break,
                },
                recv(alerts) -> batch => match batch {
                    Ok(batch) => self.alert_batch(batch, &mut out),
                    Err(_) => alerts = crossbeam_channel::never(),
                },
                recv(gate) -> batch => match batch {
                    Ok(records) => self.gate_decisions(records),
                    Err(_) => gate = crossbeam_channel::never(),
                },
            }
        }
        // Only reachable with partials missing, i.e. a shard died: close what there is.
        while let Some((w, p)) = pending.pop_first() {
            self.close(w, p, &mut out);
        }
        self.replay_leftover();
        MergeOutput {
            detector: self.detector,
            dispatcher: self.dispatcher,
            events: self.events,
            queued: out.queued,
            dropped: out.dropped,
            held: out.held,
            shard_overflow: out.shard_overflow,
            decode: out.decode,
            rtt_counts: out.rtt_counts,
            rtt_samples: out.rtt_samples,
            rtt_dropped: out.rtt_dropped,
            io_error: out.io_error,
            ids: self.mtd.counts.clone(),
        }
    }

    fn partial(&mut self, mut part: Partial, pending: &mut BTreeMap<i64, Pending>, out: &mut Counts) {
        out.shard_overflow += part.overflow;
        out.decode.add(&part.decode);
        out.rtt_counts.add(&part.rtt_counts);
        out.rtt_dropped += part.rtt_dropped;
        let entry = pending.entry(part.window).or_default();
        entry.shards += 1;
        entry.merge.add(&part.counters);
        entry.samples.append(&mut part.samples);
        entry.evidence.append(&mut part.evidence);
        entry.decode.add(&part.decode);
        entry.rtt.add(&part.rtt_counts);
        // Each shard closes windows in order, so windows complete in order.
        while let Some(e) = pending.first_entry() {
            if e.get().shards < self.shards {
                break;
            }
            let (w, p) = e.remove_entry();
            self.close(w, p, out);
        }
    }

    fn close(&mut self, w: i64, p: Pending, out: &mut Counts) {
        self.maybe_reload();
        let evictions_before = self.detector.evictions;
        let totals = p.merge.finish();
        let mut samples = p.samples;
        // Shards interleave arbitrarily; a total order makes the baseline
        // and the events the same for every thread count.
        samples.sort_unstable();
        out.rtt_samples += samples.len() as u64;
        let mut evidence = p.evidence;
        evidence.normalize();
        // Replayed gate decisions due by the window's end, before its moves
        // look for them (each move only takes one from before itself).
        let end = self.detector.window_start(w + 1);
        let mut due = Vec::new();
        while self.gate_replay.front().is_some_and(|r| r.ts < end) {
            due.extend(self.gate_replay.pop_front());
        }
        if !due.is_empty() {
            self.gate_decisions(due);
        }
        let outcomes = self.detector.close_window(w, &totals, &samples, &evidence);
        // Quiet windows before `w` first; then what happened inside `w`
        // (samples, moves, conflicts) by time; then w's verdicts at its end.
        let start = self.detector.window_start(w);
        let split = outcomes.iter().position(|o| o.ts() > start).unwrap_or(outcomes.len());
        // Replayed IDS alerts due by the window's end go in time order among
        // the rest: those before its start among the quiet windows' outcomes.
        let mut due = self.mtd.due(start, end).into_iter().peekable();
        for o in &outcomes[..split] {
            while let Some(a) = due.next_if(|a| a.0 < o.ts()) {
                self.replayed_alert(a, out);
            }
            self.outcome(o, out);
        }
        while let Some(a) = due.next_if(|a| a.0 <= start) {
            self.replayed_alert(a, out);
        }
        let (timed, at_end): (Vec<&Outcome>, Vec<&Outcome>) = outcomes[split..]
            .iter()
            .partition(|o| matches!(o, Outcome::Migration(_) | Outcome::Conflict(_) | Outcome::GateDenied(_)));
        let mut inside: Vec<(PacketTime, usize, Option<&Outcome>, Option<&RttSample>)> = Vec::new();
        if self.rtt_samples {
            inside.extend(samples.iter().enumerate().map(|(k, s)| (s.ts, k, None, Some(s))));
        }
        let n = inside.len();
        inside.extend(timed.iter().enumerate().map(|(k, o)| (o.ts(), n + k, Some(*o), None)));
        inside.sort_by_key(|x| (x.0, x.1));
        for (ts, _, o, s) in inside {
            while let Some(a) = due.next_if(|a| a.0 < ts) {
                self.replayed_alert(a, out);
            }
            if let Some(s) = s {
                let vm = self.detector.vm_index(s.mac).map(|i| self.detector.vm(i).name.clone());
                out.emit(&mut *self.events, &Event::RttSample(RttSampleEvent::new(s, vm)));
            }
            if let Some(o) = o {
                self.outcome(o, out);
            }
        }
        for a in due {
            self.replayed_alert(a, out);
        }
        if self.vm_windows {
            self.vm_window_events(end, out);
        }
        for o in at_end {
            self.outcome(o, out);
        }
        self.host_high(end, out);
        self.retry_deferred(end, out);
        self.publish_ids();
        if let Some(t) = self.telemetry.clone() {
            self.publish(&t, &p.decode, &p.rtt, &samples, self.detector.evictions - evictions_before);
        }
        // A window's events are readable when it closes (tail -f on a live run).
        if out.io_error.is_none() {
            if let Err(e) = self.events.flush() {
                out.io_error = Some(e);
            }
        }
    }

    /// Hands the gate's decisions to the detector, counted.
    fn gate_decisions(&mut self, records: Vec<GateRecord>) {
        if let Some(t) = &self.telemetry {
            let allowed = records.iter().filter(|r| r.allowed).count() as u64;
            t.metrics.gate_decisions.with_label_values(&["allowed"]).inc_by(allowed);
            t.metrics.gate_decisions.with_label_values(&["denied"]).inc_by(records.len() as u64 - allowed);
        }
        self.detector.gate_decisions(records);
    }

    /// Re-reads the rules when SIGHUP asked: valid rules take effect now,
    /// keeping every measurement; invalid ones are refused with the same
    /// message as `vmsentry check` and the old rules stay.
    fn maybe_reload(&mut self) {
        let Some((flag, dir, shared)) = &self.reload else { return };
        if !flag.swap(false, Ordering::AcqRel) {
            return;
        }
        let result = match Rules::load(dir) {
            Ok(rules) => {
                shared.replace(PlacementConfig::from_rules(&rules));
                eprintln!("vmsentry: rules reloaded from {}", dir.display());
                let later = self.running.restart_only_changes(&rules);
                if !later.is_empty() {
                    eprintln!(
                        "vmsentry: changed, but only a restart applies them (the running ones stay): {}",
                        later.join(", ")
                    );
                }
                self.apply_rules(&rules);
                "ok"
            }
            Err(e) => {
                eprintln!("vmsentry: rules not reloaded, the old rules stay: {e}");
                "error"
            }
        };
        if let Some(t) = &self.telemetry {
            t.metrics.reloads.with_label_values(&[result]).inc();
        }
    }

    /// Takes valid new rules. Everything keyed by hypervisor follows it by id:
    /// the detector's places, the policy's migrations in flight, the
    /// evacuation state; the storm limits' memory carries over.
    pub(super) fn apply_rules(&mut self, rules: &Rules) {
        let old_ids: Vec<String> = self.detector.registry().entries().iter().map(|e| e.id.clone()).collect();
        let registry = Registry::build(&rules.key, &rules.cluster, &rules.hypervisors);
        self.detector.reload(rules, registry.clone());
        let d = &self.detector;
        let placed = (0..d.vms().len()).map(|i| (d.place(i).and_then(|p| p.hv), d.vm(i).ram_mb.unwrap_or(0)));
        self.policy.reload(rules, registry, placed);
        self.mtd.reload(rules, &old_ids);
    }

    /// The window's metrics and the API's views.
    fn publish(&self, t: &Telemetry, decode: &DecodeCounts, rtt: &RttCounts, samples: &[RttSample], evicted: u64) {
        let m = &t.metrics;
        m.windows.inc();
        for k in DecodeErrorKind::ALL {
            let n = decode.errors[k as usize];
            if n > 0 {
                m.decode_errors.with_label_values(&[k.as_str()]).inc_by(n);
            }
        }
        m.snaplen_cut.inc_by(decode.snaplen_cut);
        m.mac_evictions.inc_by(evicted);
        for s in samples {
            m.rtt.observe(s.rtt_us as f64 / 1e6);
        }
        for (event, n) in [
            ("flow_evicted", rtt.flow_evictions),
            ("probe_evicted", rtt.probe_evictions),
            ("probe_timed_out", rtt.probe_timeouts),
        ] {
            if n > 0 {
                m.rtt_events.with_label_values(&[event]).inc_by(n);
            }
        }
        let d = &self.detector;
        let registry = d.registry();
        let vms = d.vms();
        let capped = vms.len().saturating_sub(t.metrics_vms);
        m.vm_series_capped.set(capped as i64);
        let mut views = Vec::with_capacity(vms.len());
        for (i, v) in vms.iter().enumerate() {
            let mac = v.mac.to_string();
            if i < t.metrics_vms {
                m.vm_level.with_label_values(&[&mac, &v.name]).set(i64::from(v.level.as_u8()));
                for (dir, (bps, pps)) in [("tx", v.last_rates[0]), ("rx", v.last_rates[1])] {
                    m.vm_rate_bytes.with_label_values(&[&mac, &v.name, dir]).set(bps as f64 / 8.0);
                    m.vm_rate_packets.with_label_values(&[&mac, &v.name, dir]).set(pps as f64);
                }
            }
            views.push(VmView {
                vm: v.mac,
                name: v.name.clone(),
                level: v.level,
                hypervisor: d.hypervisor_name(i),
                signature: d.verdict(i).as_str(),
                tx_bps: v.last_rates[0].0,
                tx_pps: v.last_rates[0].1,
                rx_bps: v.last_rates[1].0,
                rx_pps: v.last_rates[1].1,
                rtt_samples: v.last_rtt.count,
                rtt_mean_ms: v.last_rtt.mean_ms(),
                rtt_p50_ms: v.last_rtt.quantile_ms(0.5),
                rtt_p99_ms: v.last_rtt.quantile_ms(0.99),
                rtt_baseline_ms: v.rtt_baseline_ms,
                last_seen: d.last_seen(v.mac),
            });
        }
        let hypervisors = registry
            .entries()
            .iter()
            .enumerate()
            .map(|(h, e)| HypervisorView {
                id: e.id.clone(),
                macs: e
                    .macs
                    .iter()
                    .map(|&(mac, ok)| HypervisorMac { mac, signature: if ok { "valid" } else { "invalid" } })
                    .collect(),
                ips: e.ips.clone(),
                signature: e.verdict().as_str(),
                vms: d.vms_on(h).len(),
            })
            .collect();
        t.publish(views, hypervisors);
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
                let ram_mb = self.detector.ram_bytes(m.vm).unwrap_or(0) / (1024 * 1024);
                let (from, to) = (m.from.and_then(|p| p.hv), m.to.and_then(|p| p.hv));
                self.policy.moved(self.detector.vm(m.vm).mac, from, to, ram_mb);
                if let Some(t) = &self.telemetry {
                    t.metrics.migrations.with_label_values(&[m.verdict.as_str()]).inc();
                }
                let vm = self.detector.vm(m.vm);
                let ev = Event::Migration(MigrationEvent::new(
                    m,
                    vm,
                    self.detector.registry(),
                    self.detector.ram_bytes(m.vm),
                    vm.flavor.clone(),
                ));
                out.emit(&mut *self.events, &ev);
            }
            Outcome::GateDenied(r) => {
                let d = &self.detector;
                let ev = Event::GateDenied(GateDeniedEvent::new(r, |m| d.vm_index(m).map(|i| d.vm(i).name.clone())));
                out.emit(&mut *self.events, &ev);
            }
            Outcome::Conflict(c) => {
                let ev = Event::Conflict(ConflictEvent::new(c, |i| self.detector.vm(i), self.detector.registry()));
                if let Some(t) = &self.telemetry {
                    t.metrics.conflicts.with_label_values(&[ev_kind(&ev)]).inc();
                }
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
                if ch.to == crate::detect::Level::Low {
                    self.dispatcher.resolve(vm.mac, ch.window_end);
                }
                let signed = self.detector.signed(ch.vm);
                let current = self.detector.place(ch.vm).and_then(|p| p.hv);
                let ram_mb = self.detector.ram_bytes(ch.vm).unwrap_or(0) / (1024 * 1024);
                let decision = self.policy.decide(ch, vm, signed, current, hypervisor, ram_mb);
                if let Some(d) = decision {
                    self.decision(d, out);
                }
            }
        }
    }

    /// Sends an action (journaled first) or reports it held, with its event.
    pub(super) fn decision(&mut self, d: Decision, out: &mut Counts) {
        match d {
            Decision::Act(action) => {
                if let Some(t) = &self.telemetry {
                    t.action_decided(&action);
                }
                let submitted = self.dispatcher.submit(action.clone());
                match submitted {
                    crate::action::Submitted::Queued => out.queued += 1,
                    crate::action::Submitted::Dropped | crate::action::Submitted::NotJournaled => out.dropped += 1,
                    crate::action::Submitted::Duplicate => {}
                }
                if let Some(t) = &self.telemetry {
                    t.action_submitted(&action, submitted.as_str());
                }
                let backend = self.dispatcher.backend(action.kind);
                let ev = Event::Action(ActionEvent::new(&action, backend, submitted));
                out.emit(&mut *self.events, &ev);
            }
            Decision::Held(h) => {
                out.held += 1;
                if let Some(t) = &self.telemetry {
                    t.metrics.actions.with_label_values(&[h.kind.as_str(), "held"]).inc();
                }
                out.emit(&mut *self.events, &Event::ActionHeld(ActionHeldEvent::new(&h)));
            }
        }
    }
}

#[derive(Default)]
pub(super) struct Counts {
    queued: u64,
    dropped: u64,
    held: u64,
    shard_overflow: u64,
    decode: DecodeCounts,
    rtt_counts: RttCounts,
    rtt_samples: u64,
    rtt_dropped: u64,
    pub(super) io_error: Option<std::io::Error>,
}

impl Counts {
    /// Writes an event; after the first write error, stops writing and keeps the error.
    pub(super) fn emit(&mut self, sink: &mut dyn EventSink, ev: &Event) {
        if self.io_error.is_none() {
            if let Err(e) = sink.emit(ev) {
                self.io_error = Some(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The merge's window ordering: a window closes once every shard has
    //! reported it, windows close in order, and inside a window events go
    //! by packet time: the quiet windows before it, then what happened inside
    //! it (moves, samples), then its verdicts at its end.
    use super::*;
    use crate::event::Event;
    use crate::measure::placement::{Origin, Sighting};
    use crate::measure::rtt::SampleKind;
    use crate::measure::Counters;
    use crate::trust::ClusterKey;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Mutex;

    struct Shared(Arc<Mutex<Vec<Event>>>);
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
            detector: Detector::new(&rules, registry.clone()),
            policy: Policy::new(&rules, registry),
            dispatcher: Dispatcher::start_with(&rules.backend, 16, None, log).unwrap(),
            events: Box::new(Shared(got.clone())),
            rtt_samples: true,
            vm_windows: false,
            mtd: super::super::evacuation::Mtd::new(&rules),
            telemetry: None,
            reload: None,
            running: crate::config::RestartOnly::of(&rules),
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
            }],
            ..Default::default()
        }
    }

    /// Each event as (type, µs since 0, what).
    fn order(got: &Mutex<Vec<Event>>) -> Vec<(&'static str, i64, String)> {
        got.lock()
            .unwrap()
            .iter()
            .map(|e| match e {
                Event::Level(l) => ("level", l.ts.as_micros(), format!("{:?}->{:?}", l.from, l.to)),
                Event::Action(a) => ("action", a.ts.as_micros(), a.action.as_str().to_string()),
                Event::Migration(m) => ("migration", m.ts.as_micros(), format!("{:?}", m.to_hypervisor)),
                Event::RttSample(s) => ("rtt_sample", s.ts.as_micros(), format!("{}", s.rtt_ms)),
                other => ("other", other.ts().as_micros(), String::new()),
            })
            .collect()
    }

    #[test]
    fn a_window_closes_when_every_shard_reported_it_and_windows_close_in_order() {
        let (mut m, got) = merge();
        let (mut pending, mut out) = (BTreeMap::new(), Counts::default());
        m.partial(part(0, 5, 150, Evidence::default(), vec![]), &mut pending, &mut out);
        m.partial(part(0, 6, 0, Evidence::default(), vec![]), &mut pending, &mut out);
        assert!(got.lock().unwrap().is_empty(), "shard 1 has not reported window 5");
        // Shard 1's share of window 5 brings it to 200 packets/s.
        m.partial(part(1, 5, 50, Evidence::default(), vec![]), &mut pending, &mut out);
        let low_to_medium = ("level", 6_000_000, "Low->Medium".to_string());
        let alert = ("action", 6_000_000, "alert".to_string());
        assert_eq!(order(&got), [low_to_medium.clone(), alert.clone()]);
        m.partial(part(1, 6, 0, Evidence::default(), vec![]), &mut pending, &mut out);
        assert_eq!(order(&got), [low_to_medium, alert, ("level", 7_000_000, "Medium->Low".to_string())]);
        assert!(pending.is_empty());
        assert_eq!(out.queued, 1);
        m.dispatcher.finish();
    }

    #[test]
    fn inside_a_window_quiet_windows_come_first_then_moves_and_samples_by_time_then_verdicts() {
        let (mut m, got) = merge();
        let (mut pending, mut out) = (BTreeMap::new(), Counts::default());
        for s in 0..2 {
            m.partial(
                part(s, 2, 100, if s == 0 { seen(1, 2_100_000) } else { Evidence::default() }, vec![]),
                &mut pending,
                &mut out,
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
        m.partial(part(0, 5, 60, seen(2, 5_400_000), vec![sample(5_700_000, 2_000)]), &mut pending, &mut out);
        m.partial(part(1, 5, 60, Evidence::default(), vec![sample(5_200_000, 3_000)]), &mut pending, &mut out);
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
        m.dispatcher.finish();
    }
}
