//! Moving-target defense at the merge (IDS alerts and evacuations): an alert's victim becomes a hypervisor to evacuate, as does a hypervisor with too many HIGH VMs.
//!
//! Live, each `[[ids]]` follower hands its alerts over as they are read;
//! they are filtered, mapped and acted on at once (stamped with the wall
//! clock), and the follower writes its checkpoint only after that, so an
//! alert is either acted on (its action journaled) or read again after a
//! restart. In a replay, the alert files are read whole before the capture
//! and each alert fires when packet time passes its own timestamp, in
//! order among the window's other events; alerts before the capture's first
//! window or after its last are counted (`outside_replay`) and skipped.

use super::publish::Publish;
use super::stages::Stages;
use crate::config::Rules;
use crate::detect::{Level, Reason, Victim};
use crate::event::{self, AlertOutcome, EvacuationEvent, Event, IdsAlertEvent, IdsCounts, KnownBy};
use crate::ids::{Alert, Filter, Format, VictimSide};
use crate::policy::{EvacuationMode, Evacuee};
use crate::vocab::PacketTime;
use crossbeam_channel::Sender;
use std::collections::VecDeque;
use std::net::IpAddr;

/// Alerts one follower read, handed to the merge; `done` is answered once
/// they are handled.
pub(crate) struct AlertBatch {
    pub input: usize,
    pub alerts: Vec<Alert>,
    pub malformed: u64,
    pub done: Sender<()>,
}

struct InputState {
    name: String,
    format: Format,
    victim: VictimSide,
    filter: Filter,
}

pub(crate) struct Mtd {
    mode: EvacuationMode,
    host_high_vms: u32,
    inputs: Vec<InputState>,
    replay_raw: Vec<(usize, Alert)>,
    replay: VecDeque<(PacketTime, usize, Alert)>,
    started: bool,
    /// Per hypervisor: whether it had `host_high_vms` HIGH VMs last window.
    high: Vec<bool>,
    pub counts: IdsCounts,
    /// (malformed, outside_replay) already added to the metrics.
    published: (u64, u64),
    /// Migrations of evacuations the storm limits held back, tried again
    /// after every window until sent, moot, or timed out.
    deferred: Vec<Deferred>,
}

struct Deferred {
    since: PacketTime,
    hypervisor: usize,
    vm: crate::decode::Mac,
    reason: Reason,
    note: String,
    id_base: Option<String>,
}

impl Mtd {
    pub fn new(rules: &Rules) -> Mtd {
        Mtd {
            mode: rules.mtd.mode,
            host_high_vms: rules.mtd.host_high_vms,
            inputs: rules
                .ids
                .iter()
                .map(|i| InputState {
                    name: i.path.display().to_string(),
                    format: i.format,
                    victim: i.victim,
                    filter: i.filter(),
                })
                .collect(),
            replay_raw: Vec::new(),
            replay: VecDeque::new(),
            started: false,
            high: vec![false; rules.hypervisors.len()],
            counts: IdsCounts::default(),
            published: (0, 0),
            deferred: Vec::new(),
        }
    }

    /// Alerts to replay (read whole from the inputs), and the lines that did not parse.
    pub fn with_replay(mut self, alerts: Vec<(usize, Alert)>, malformed: u64) -> Mtd {
        self.replay_raw = alerts;
        self.counts.malformed += malformed;
        self
    }

    /// New rules: the mode and trigger now; inputs and filters on restart.
    /// What is kept per hypervisor (whether it was over `host_high_vms`, the
    /// held migrations leaving it) follows it by id (`old_ids`: the registry
    /// before the reload); a hypervisor gone from the rules takes its held
    /// migrations with it.
    pub fn reload(&mut self, rules: &Rules, old_ids: &[String]) {
        self.mode = rules.mtd.mode;
        self.host_high_vms = rules.mtd.host_high_vms;
        let index = |old: usize| old_ids.get(old).and_then(|id| rules.hypervisors.iter().position(|h| &h.id == id));
        let mut high = vec![false; rules.hypervisors.len()];
        for (h, _) in self.high.iter().enumerate().filter(|(_, &was)| was) {
            if let Some(n) = index(h) {
                high[n] = true;
            }
        }
        self.high = high;
        self.deferred = std::mem::take(&mut self.deferred)
            .into_iter()
            .filter_map(|d| Some(Deferred { hypervisor: index(d.hypervisor)?, ..d }))
            .collect();
    }

    /// Replayed alerts due before `end`. The first call times them all
    /// (Snort's year-less stamps take the year of `start`) and counts the
    /// ones before `start` as outside the replay.
    pub fn due(&mut self, start: PacketTime, end: PacketTime) -> Vec<(PacketTime, usize, Alert)> {
        if !self.started {
            self.started = true;
            let year = time::OffsetDateTime::from_unix_timestamp(start.as_micros().div_euclid(1_000_000))
                .map_or(1970, |t| t.year());
            let mut timed = Vec::with_capacity(self.replay_raw.len());
            for (k, (input, a)) in std::mem::take(&mut self.replay_raw).into_iter().enumerate() {
                match a.time(year) {
                    Some(t) if t >= start => timed.push((t, input, k, a)),
                    Some(_) => self.counts.outside_replay += 1,
                    None => self.counts.malformed += 1,
                }
            }
            timed.sort_by_key(|x| (x.0, x.1, x.2));
            self.replay = timed.into_iter().map(|(t, i, _, a)| (t, i, a)).collect();
        }
        let mut out = Vec::new();
        while self.replay.front().is_some_and(|a| a.0 < end) {
            out.extend(self.replay.pop_front());
        }
        out
    }
}

/// What the merge thread asks of moving-target defense.
impl Mtd {
    /// A live follower's batch: handled now, stamped with the wall clock.
    pub(super) fn batch(&mut self, st: &mut Stages, out: &mut Publish, b: AlertBatch) {
        self.counts.malformed += b.malformed;
        for a in &b.alerts {
            self.alert(st, out, PacketTime::now(), b.input, a);
        }
        self.publish(out);
        out.flush();
        let _ = b.done.send(());
    }

    /// The counts found in bulk (malformed lines, alerts outside the
    /// replay) into the metrics; the others are counted as they happen.
    pub(super) fn publish(&mut self, out: &Publish) {
        let Some(t) = &out.telemetry else { return };
        let c = &self.counts;
        let (m, o) = self.published;
        t.metrics.ids_alerts.with_label_values(&["malformed"]).inc_by(c.malformed - m);
        t.metrics.ids_alerts.with_label_values(&["outside_replay"]).inc_by(c.outside_replay - o);
        self.published = (c.malformed, c.outside_replay);
    }

    /// A replayed alert, at its own time.
    pub(super) fn replayed(&mut self, st: &mut Stages, out: &mut Publish, (ts, input, a): (PacketTime, usize, Alert)) {
        self.alert(st, out, ts, input, &a);
    }

    /// Alerts left after the replay's last window.
    pub(super) fn replay_leftover(&mut self, out: &Publish) {
        let left = self.replay.len() as u64 + self.replay_raw.len() as u64;
        self.replay.clear();
        self.replay_raw.clear();
        self.counts.outside_replay += left;
        self.publish(out);
    }

    fn count(&mut self, out: &Publish, outcome: &'static str) {
        let c = &mut self.counts;
        match outcome {
            "evacuated" => c.evacuated += 1,
            "unmapped" => c.unmapped += 1,
            _ => c.filtered += 1,
        }
        if let Some(t) = &out.telemetry {
            t.metrics.ids_alerts.with_label_values(&[outcome]).inc();
        }
    }

    fn alert(&mut self, st: &mut Stages, out: &mut Publish, ts: PacketTime, input: usize, a: &Alert) {
        let Some(inp) = self.inputs.get_mut(input) else { return };
        let victim_ip = a.victim(inp.victim);
        if !inp.filter.pass(a, victim_ip, ts.as_micros().max(0) as u64 / 1_000_000) {
            self.count(out, "filtered");
            return;
        }
        let name = inp.name.clone();
        let format = inp.format;
        let d = &st.detector;
        let (vm, known_by, hv) = match d.victim(victim_ip) {
            Some(Victim::Hypervisor(h)) => (None, None, Some(h)),
            Some(Victim::Vm { vm, learned }) => (
                Some(vm),
                Some(if learned { KnownBy::Learned } else { KnownBy::Rules }),
                d.place(vm).and_then(|p| p.hv),
            ),
            None => (None, None, None),
        };
        let outcome = if hv.is_some() { AlertOutcome::Evacuated } else { AlertOutcome::Unmapped };
        let ev = Event::IdsAlert(IdsAlertEvent {
            ts,
            input: name,
            format,
            alert_ts: a.timestamp.clone(),
            sid: a.sid,
            severity: a.severity,
            msg: a.msg.clone(),
            src: a.src,
            dst: a.dst,
            victim: victim_ip,
            victim_vm: vm.map(|i| d.vm(i).mac),
            victim_vm_name: vm.map(|i| d.vm(i).name.clone()),
            victim_known_by: known_by,
            victim_hypervisor: hv.and_then(|h| d.registry().get(h)).map(|e| e.id.clone()),
            outcome,
        });
        out.emit(&ev);
        self.count(out, outcome.as_str());
        let Some(h) = hv else { return };
        let (mode, vms) = match (self.mode, vm) {
            (EvacuationMode::Vm, Some(i)) => (EvacuationMode::Vm, vec![i]),
            _ => (EvacuationMode::Host, st.detector.vms_on(h)),
        };
        let note = format!("evacuating after IDS alert sid {} on {victim_ip}", a.sid);
        let id_base = format!("ids-{}", a.key);
        self.evacuate(
            st,
            out,
            ts,
            h,
            &vms,
            Trigger::Ids { sid: a.sid, victim: victim_ip, mode },
            &note,
            Some(&id_base),
        );
    }

    /// After a window: evacuate each hypervisor that now has
    /// `mtd.host_high_vms` HIGH VMs and did not the window before.
    pub(super) fn host_high(&mut self, st: &mut Stages, out: &mut Publish, ts: PacketTime) {
        let n = self.host_high_vms;
        if n == 0 {
            return;
        }
        // One pass over the VMs: HIGH ones per hypervisor.
        let mut high_on = vec![0u32; self.high.len()];
        for (i, v) in st.detector.vms().iter().enumerate() {
            if let (Level::High, Some(h)) = (v.level, st.detector.place(i).and_then(|p| p.hv)) {
                if let Some(c) = high_on.get_mut(h) {
                    *c += 1;
                }
            }
        }
        for (h, &high) in high_on.iter().enumerate() {
            let was = std::mem::replace(&mut self.high[h], high >= n);
            if high >= n && !was {
                let vms = st.detector.vms_on(h);
                let name = st.detector.registry().get(h).map_or_else(String::new, |e| e.id.clone());
                let note = format!("evacuating {name}: {high} of its VMs are HIGH (mtd.host_high_vms = {n})");
                self.evacuate(st, out, ts, h, &vms, Trigger::HostHigh { high }, &note, None);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn evacuate(
        &mut self,
        st: &mut Stages,
        out: &mut Publish,
        ts: PacketTime,
        h: usize,
        vms: &[usize],
        trigger: Trigger,
        note: &str,
        id_base: Option<&str>,
    ) {
        let d = &st.detector;
        let evacuees: Vec<Evacuee> = vms
            .iter()
            .map(|&i| {
                let v = d.vm(i);
                Evacuee { vm: v.mac, name: v.name.clone(), ram_mb: v.ram_mb.unwrap_or(0), level: v.level }
            })
            .collect();
        let reason = match trigger {
            Trigger::Ids { .. } => Reason::Ids,
            Trigger::HostHigh { .. } => Reason::HostHigh,
        };
        let plan = st.policy.evacuate(ts, h, &evacuees, reason, note, id_base);
        let (name, t, mode, sid, victim, high_vms) = match trigger {
            Trigger::Ids { sid, victim, mode } => (event::Trigger::Ids, ts, mode, Some(sid), Some(victim), None),
            Trigger::HostHigh { high } => (event::Trigger::HostHigh, ts, EvacuationMode::Host, None, None, Some(high)),
        };
        let ev = EvacuationEvent {
            ts: t,
            hypervisor: st.detector.registry().get(h).map_or_else(String::new, |e| e.id.clone()),
            trigger: name,
            mode,
            sid,
            victim,
            high_vms,
            plan: Vec::new(),
            migrate: 0,
            held: 0,
            skipped: 0,
            no_destination: 0,
        }
        .with_plan(&plan);
        out.emit(&Event::Evacuation(ev));
        self.counts.evacuations += 1;
        if let Some(tm) = &out.telemetry {
            tm.metrics.evacuations.with_label_values(&[name.as_str()]).inc();
        }
        for e in plan {
            if let Some(crate::policy::Decision::Held(_)) = &e.decision {
                if !self.deferred.iter().any(|d| d.vm == e.vm) {
                    self.deferred.push(Deferred {
                        since: ts,
                        hypervisor: h,
                        vm: e.vm,
                        reason,
                        note: note.to_string(),
                        id_base: id_base.map(str::to_string),
                    });
                }
            }
            if let Some(dcs) = e.decision {
                st.decision(dcs, out);
            }
        }
    }

    /// After a window: each held evacuation migration is tried again. It is
    /// sent when the storm limits allow, and dropped when the VM has left
    /// the hypervisor or is already moving, or after
    /// `storm.migration_timeout_s`; while still held it stays quiet (its
    /// `action_held` event was written once).
    pub(super) fn retry_deferred(&mut self, st: &mut Stages, out: &mut Publish, ts: PacketTime) {
        let timeout = st.policy.migration_timeout_us();
        for d in std::mem::take(&mut self.deferred) {
            let Some(i) = st.detector.vm_index(d.vm) else { continue };
            let here = st.detector.place(i).and_then(|p| p.hv) == Some(d.hypervisor);
            if !here || ts.as_micros() - d.since.as_micros() >= timeout {
                continue;
            }
            let v = st.detector.vm(i);
            let e = Evacuee { vm: v.mac, name: v.name.clone(), ram_mb: v.ram_mb.unwrap_or(0), level: v.level };
            let note = format!("{} (held back at {}, sent when the storm limits allowed)", d.note, d.since);
            let plan = st.policy.evacuate(ts, d.hypervisor, &[e], d.reason, &note, d.id_base.as_deref());
            match plan.into_iter().next().and_then(|p| p.decision) {
                Some(crate::policy::Decision::Held(_)) => self.deferred.push(d),
                Some(act) => st.decision(act, out),
                None => {}
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Trigger {
    Ids { sid: u64, victim: IpAddr, mode: EvacuationMode },
    HostHigh { high: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn rules(ids: &[&str]) -> Rules {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("k");
        std::fs::write(&k, [b'k'; 32]).unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        let hvs: String = ids.iter().map(|id| format!("[[hypervisor]]\nid = \"{id}\"\n")).collect();
        let text = format!("[cluster]\nname = \"t\"\nkey_file = \"k\"\n{hvs}");
        Rules::from_str_in(d.path(), std::path::Path::new("t.toml"), &text).unwrap()
    }

    #[test]
    fn a_reload_keeps_the_high_set_and_held_migrations_by_hypervisor_id() {
        let mut m = Mtd::new(&rules(&["a", "b", "c"]));
        m.high[0] = true;
        let held = |h: usize, vm: u8| Deferred {
            since: PacketTime::ZERO,
            hypervisor: h,
            vm: crate::decode::Mac([2, 0, 0, 0, 0, vm]),
            reason: Reason::Ids,
            note: String::new(),
            id_base: None,
        };
        m.deferred = vec![held(0, 1), held(1, 2)];
        let old: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        // Reordered, and b is gone.
        m.reload(&rules(&["c", "a"]), &old);
        assert_eq!(m.high, [false, true]);
        let kept: Vec<(usize, u8)> = m.deferred.iter().map(|d| (d.hypervisor, d.vm.0[5])).collect();
        assert_eq!(kept, [(1, 1)]);
    }
}
