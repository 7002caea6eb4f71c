//! The stages a window's outcomes go through at the merge: detect's outcomes become events, policy's decisions, and actions handed to the dispatcher.

use super::publish::Publish;
use crate::action::Dispatcher;
use crate::detect::{Detector, Outcome};
use crate::event::{
    ActionEvent, ActionHeldEvent, ConflictEvent, Event, GateDeniedEvent, LevelEvent, MigrationEvent, RttPeaksEvent,
};
use crate::gate::record::GateRecord;
use crate::policy::{Decision, Policy};

fn ev_kind(e: &Event) -> &'static str {
    match e {
        Event::Conflict(c) => c.kind.as_str(),
        _ => "",
    }
}

/// Detect, policy and dispatch, as the merge thread runs them.
pub(super) struct Stages {
    pub detector: Detector,
    pub policy: Policy,
    pub dispatcher: Dispatcher,
}

impl Stages {
    /// Hands the gate's decisions to the detector, counted.
    pub(super) fn gate_decisions(&mut self, records: Vec<GateRecord>, out: &Publish) {
        if let Some(t) = &out.telemetry {
            let allowed = records.iter().filter(|r| r.allowed).count() as u64;
            t.metrics.gate_decisions.with_label_values(&["allowed"]).inc_by(allowed);
            t.metrics.gate_decisions.with_label_values(&["denied"]).inc_by(records.len() as u64 - allowed);
        }
        self.detector.gate_decisions(records);
    }

    pub(super) fn outcome(&mut self, o: &Outcome, out: &mut Publish) {
        match o {
            Outcome::RttPeaks(p) => {
                let vm = self.detector.vm(p.vm);
                let ev = Event::RttPeaks(RttPeaksEvent::new(
                    p,
                    vm,
                    self.detector.hypervisor_name(p.vm),
                    self.detector.peak_ms(),
                ));
                out.emit(&ev);
            }
            Outcome::Migration(m) => {
                let ram_mb = self.detector.ram_bytes(m.vm).unwrap_or(0) / (1024 * 1024);
                let (from, to) = (m.from.and_then(|p| p.hv), m.to.and_then(|p| p.hv));
                self.policy.moved(self.detector.vm(m.vm).mac, from, to, ram_mb);
                if let Some(t) = &out.telemetry {
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
                match m.open {
                    Some(id) => out.emit_open(&ev, id, m.streams_open),
                    None => out.emit(&ev),
                }
            }
            Outcome::GateDenied(r) => {
                let d = &self.detector;
                let ev = Event::GateDenied(GateDeniedEvent::new(r, |m| d.vm_index(m).map(|i| d.vm(i).name.clone())));
                out.emit(&ev);
            }
            Outcome::Conflict(c) => {
                let ev = Event::Conflict(ConflictEvent::new(c, |i| self.detector.vm(i), self.detector.registry()));
                if let Some(t) = &out.telemetry {
                    t.metrics.conflicts.with_label_values(&[ev_kind(&ev)]).inc();
                }
                out.emit(&ev);
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
                out.emit(&ev);
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
    pub(super) fn decision(&mut self, d: Decision, out: &mut Publish) {
        match d {
            Decision::Act(action) => {
                if let Some(t) = &out.telemetry {
                    t.action_decided(&action);
                }
                let submitted = self.dispatcher.submit(action.clone());
                match submitted {
                    crate::action::Submitted::Queued => out.counts.queued += 1,
                    crate::action::Submitted::Dropped | crate::action::Submitted::NotJournaled => {
                        out.counts.dropped += 1
                    }
                    crate::action::Submitted::Duplicate => {}
                }
                if let Some(t) = &out.telemetry {
                    t.action_submitted(&action, submitted.as_str());
                }
                let backend = self.dispatcher.backend(action.kind);
                let ev = Event::Action(ActionEvent::new(&action, backend, submitted));
                out.emit(&ev);
            }
            Decision::Held(h) => {
                out.counts.held += 1;
                if let Some(t) = &out.telemetry {
                    t.metrics.actions.with_label_values(&[h.kind.as_str(), "held"]).inc();
                }
                out.emit(&Event::ActionHeld(ActionHeldEvent::new(&h)));
            }
        }
    }
}
