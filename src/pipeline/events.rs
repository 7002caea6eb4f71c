//! Event translation: what turns pipeline state (samples, moves, conflicts, peaks, actions, holds, plans) into the events of `crate::event`.

use crate::action::{Action, ActionKind, BackendName, Submitted};
use crate::decode::Mac;
use crate::detect::{Conflict, Measured, Move, RttPeaks, Settled, VmState};
use crate::event::{
    ActionEvent, ActionHeldEvent, ActionSignature, ConflictEvent, ConflictKind, EvacuationEvent, GateDeniedEvent,
    MigrationEvent, PlanBecause, PlanLine, PlanOutcome, RttPeaksEvent, RttSampleEvent,
};
use crate::gate::record::GateRecord;
use crate::measure::rtt::RttSample;
use crate::policy::{Decision, Held, PlanEntry};
use crate::trust::Registry;

impl RttSampleEvent {
    pub(crate) fn new(s: &RttSample, vm_name: Option<String>) -> Self {
        RttSampleEvent {
            ts: s.ts,
            vm: s.mac,
            vm_name,
            rtt_ms: s.rtt_us as f64 / 1000.0,
            kind: s.kind,
            src: s.src.0,
            src_port: s.src.1,
            dst: s.dst.0,
            dst_port: s.dst.1,
        }
    }
}

impl MigrationEvent {
    pub(crate) fn new(
        m: &Move,
        vm: &VmState,
        registry: &Registry,
        ram_bytes: Option<u64>,
        flavor: Option<String>,
    ) -> Self {
        let mut ev = MigrationEvent {
            ts: m.ts,
            vm: vm.mac,
            vm_name: Some(vm.name.clone()),
            from_hypervisor: m.from.and_then(|p| p.name(registry)),
            to_hypervisor: m.to.and_then(|p| p.name(registry)),
            to_mac: m.to.and_then(|p| p.mac),
            to_ip: m.to.and_then(|p| p.ip),
            via: m.via,
            signature: m.verdict,
            authorized: m.authorization == crate::trust::token::Authorization::Granted,
            authorization: m.authorization,
            streams: 0,
            bytes: None,
            bytes_per_ram: None,
            total_ms: None,
            downtime_ms: m.downtime_us.map(|u| u as f64 / 1000.0),
            downtime_resolution_ms: None,
            responsive_ms: None,
            source_downtime_ms: None,
            ram_mb: ram_bytes.map(|b| b / (1024 * 1024)),
            flavor,
            gated: m.gated,
        };
        ev.measured(&m.measured, ram_bytes);
        ev
    }

    /// Written before its move was settled (too many events held behind
    /// it): what is not known yet is null, not a guess.
    pub(crate) fn unsettled(&mut self, streams_open: bool) {
        self.responsive_ms = None;
        if streams_open {
            // The resolution rests on the guessed stream's end: the widest
            // honest bound instead (the whole silence).
            self.downtime_resolution_ms = self.downtime_ms;
            self.streams = 0;
            self.bytes = None;
            self.bytes_per_ram = None;
            self.total_ms = None;
            self.source_downtime_ms = None;
        }
    }

    /// Its move's final measurements, settled after the event was made.
    pub(crate) fn settle(&mut self, s: &Settled) {
        // The RAM it was made with: the rules' `ram_mb`, in whole MiB.
        self.measured(&s.measured, self.ram_mb.map(|m| m * 1024 * 1024));
    }

    fn measured(&mut self, m: &Measured, ram_bytes: Option<u64>) {
        let ms = |u: Option<i64>| u.map(|u| u as f64 / 1000.0);
        self.streams = m.streams;
        self.bytes = m.bytes;
        self.bytes_per_ram = match (m.bytes, ram_bytes) {
            (Some(b), Some(r)) if r > 0 => Some(b as f64 / r as f64),
            _ => None,
        };
        self.total_ms = ms(m.total_us);
        self.downtime_resolution_ms = ms(m.downtime_resolution_us);
        self.responsive_ms = ms(m.responsive_us);
        self.source_downtime_ms = ms(m.source_downtime_us);
    }
}

impl GateDeniedEvent {
    /// `name`: the inventory name of a MAC, if it is a VM.
    pub(crate) fn new(r: &GateRecord, name: impl Fn(Mac) -> Option<String>) -> Self {
        let known = r.vms.iter().find_map(|&m| name(m).map(|n| (m, n)));
        GateDeniedEvent {
            ts: r.ts,
            vm: known.as_ref().map(|k| k.0).or(r.vms.first().copied()),
            vm_name: known.map(|k| k.1),
            vms: r.vms.clone(),
            domain: r.domain.clone(),
            hypervisor: r.host.clone(),
            reason: r.reason,
            detail: r.detail.clone(),
            nonce: r.nonce.clone(),
        }
    }
}

impl EvacuationEvent {
    /// Fills the plan and its counts from the policy's entries.
    pub(crate) fn with_plan(mut self, entries: &[PlanEntry]) -> Self {
        for e in entries {
            let (outcome, destination, action_id, because) = match &e.decision {
                Some(Decision::Act(a)) => {
                    if a.kind == ActionKind::Migrate {
                        self.migrate += 1;
                        (PlanOutcome::Migrate, a.destination.clone(), Some(a.id.clone()), None)
                    } else {
                        self.no_destination += 1;
                        (PlanOutcome::Alert, None, Some(a.id.clone()), None)
                    }
                }
                Some(Decision::Held(h)) => {
                    self.held += 1;
                    (PlanOutcome::Held, None, None, Some(PlanBecause::Held(h.because)))
                }
                None => {
                    self.skipped += 1;
                    (PlanOutcome::Skipped, None, None, e.skipped.map(PlanBecause::Skipped))
                }
            };
            self.plan.push(PlanLine {
                vm: e.vm,
                vm_name: e.vm_name.clone(),
                ram_mb: e.ram_mb,
                outcome,
                destination,
                action_id,
                because,
            });
        }
        self
    }
}

impl ConflictEvent {
    pub(crate) fn new<'a>(c: &Conflict, vm_of: impl Fn(usize) -> &'a VmState, registry: &Registry) -> Self {
        let base = ConflictEvent {
            ts: c.ts(),
            kind: ConflictKind::Clone,
            vm: None,
            vm_name: None,
            hypervisors: Vec::new(),
            mac: None,
            ips: Vec::new(),
        };
        match c {
            Conflict::Clone { vm, places, .. } => {
                let v = vm_of(*vm);
                ConflictEvent {
                    kind: ConflictKind::Clone,
                    vm: Some(v.mac),
                    vm_name: Some(v.name.clone()),
                    hypervisors: places.iter().map(|p| p.name(registry)).collect(),
                    ..base
                }
            }
            Conflict::HypervisorIps { mac, ips, .. } => {
                ConflictEvent { kind: ConflictKind::HypervisorIps, mac: Some(*mac), ips: ips.clone(), ..base }
            }
            Conflict::VmUsesHypervisorMac { mac, outer_ip, .. } => ConflictEvent {
                kind: ConflictKind::VmUsesHypervisorMac,
                mac: Some(*mac),
                ips: outer_ip.iter().copied().collect(),
                ..base
            },
        }
    }
}

impl RttPeaksEvent {
    pub(crate) fn new(p: &RttPeaks, vm: &VmState, hypervisor: Option<String>, peak_ms: f64) -> Self {
        RttPeaksEvent {
            ts: p.window_end,
            vm: vm.mac,
            vm_name: Some(vm.name.clone()),
            window_start: p.window_start,
            peaks: p.peaks,
            samples: p.window.count,
            min_ms: p.window.min_ms(),
            mean_ms: p.window.mean_ms(),
            max_ms: p.window.max_ms(),
            p50_ms: p.window.quantile_ms(0.5),
            p99_ms: p.window.quantile_ms(0.99),
            peak_ms,
            baseline_ms: p.baseline_ms,
            hypervisor,
        }
    }
}

impl ActionEvent {
    pub(crate) fn new(a: &Action, backend: BackendName, outcome: Submitted) -> Self {
        ActionEvent {
            ts: a.ts,
            id: a.id.clone(),
            vm: a.vm,
            vm_name: a.vm_name.clone(),
            action: a.kind,
            hypervisor: a.hypervisor.clone(),
            signature: if a.signed { ActionSignature::Signed } else { ActionSignature::Unsigned },
            destination: a.destination.clone(),
            level: a.level,
            reason: a.reason,
            note: a.note.clone(),
            backend,
            outcome,
        }
    }
}

impl ActionHeldEvent {
    pub(crate) fn new(h: &Held) -> Self {
        ActionHeldEvent {
            ts: h.ts,
            vm: h.vm,
            vm_name: h.vm_name.clone(),
            action: h.kind,
            level: h.level,
            reason: h.reason,
            held_because: h.because,
        }
    }
}

#[cfg(test)]
mod tests {
    //! What turns pipeline state (actions, holds, plans, moves, conflicts,
    //! samples) into events, checked line for line.
    use super::*;
    use crate::config::Rules;
    use crate::decode::Mac;
    use crate::detect::{Detector, Place};
    use crate::detect::{Level, Reason};
    use crate::event::Event;
    use crate::measure::placement::Via;
    use crate::measure::rtt::SampleKind;
    use crate::trust::token::Authorization;
    use crate::trust::Verdict;
    use crate::vocab::PacketTime;
    use std::os::unix::fs::PermissionsExt;

    fn line(e: Event) -> String {
        serde_json::to_string(&e).unwrap()
    }

    const T: PacketTime = PacketTime::from_micros(1_700_000_011_000_000);

    /// Hypervisor h1 (signed for its MAC) and h2; VM web-1 (2 GiB, m1.small) on h1.
    fn world() -> (Rules, Registry, VmState) {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("k");
        std::fs::write(&k, [b'k'; 32]).unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        let key = crate::trust::ClusterKey::from_bytes(&[b'k'; 32]).unwrap();
        let sig = key.sign("t", "h1", "52:54:00:aa:00:01".parse().unwrap());
        let text = format!(
            "[cluster]\nname = \"t\"\nkey_file = \"k\"\n\
             [[hypervisor]]\nid = \"h1\"\nmacs = [\"52:54:00:aa:00:01\"]\nips = [\"10.0.0.31\"]\nsignature = \"{sig}\"\n\
             [[hypervisor]]\nid = \"h2\"\nmacs = [\"52:54:00:aa:00:02\"]\n\
             [[vm]]\nname = \"web-1\"\nmac = \"fa:16:3e:00:00:01\"\nram_mb = 2048\nhypervisor = \"h1\"\nflavor = \"m1.small\"\n"
        );
        let rules = Rules::from_str_in(d.path(), std::path::Path::new("t.toml"), &text).unwrap();
        let registry = Registry::build(&rules.key, &rules.cluster, &rules.hypervisors);
        let vm = Detector::new(rules.detect_config(), registry.clone()).vm(0).clone();
        (rules, registry, vm)
    }

    fn action(kind: ActionKind, destination: Option<&str>, note: Option<&str>) -> Action {
        Action {
            id: "1700000011000000-1".into(),
            ts: T,
            kind,
            vm: "fa:16:3e:00:00:01".parse().unwrap(),
            vm_name: Some("web-1".into()),
            hypervisor: Some("h1".into()),
            signed: true,
            destination: destination.map(String::from),
            level: Level::High,
            reason: Reason::Rate,
            note: note.map(String::from),
        }
    }

    #[test]
    fn an_action_and_a_held_action() {
        let a = action(ActionKind::Migrate, Some("h2"), None);
        assert_eq!(
            line(Event::Action(ActionEvent::new(&a, BackendName::Log, Submitted::Queued))),
            r#"{"type":"action","ts":"2023-11-14T22:13:31.000000Z","id":"1700000011000000-1","vm":"fa:16:3e:00:00:01","vm_name":"web-1","action":"migrate","hypervisor":"h1","signature":"signed","destination":"h2","level":"HIGH","reason":"rate","backend":"log","outcome":"queued"}"#
        );
        let a = Action { signed: false, ..action(ActionKind::Alert, None, Some("no room")) };
        assert_eq!(
            line(Event::Action(ActionEvent::new(&a, BackendName::Webhook, Submitted::NotJournaled))),
            r#"{"type":"action","ts":"2023-11-14T22:13:31.000000Z","id":"1700000011000000-1","vm":"fa:16:3e:00:00:01","vm_name":"web-1","action":"alert","hypervisor":"h1","signature":"unsigned","destination":null,"level":"HIGH","reason":"rate","note":"no room","backend":"webhook","outcome":"not_journaled"}"#
        );
        let h = Held {
            ts: T,
            vm: a.vm,
            vm_name: None,
            kind: ActionKind::Quarantine,
            level: Level::Medium,
            reason: Reason::Signature,
            because: crate::vocab::HoldReason::VmCooldown,
        };
        assert_eq!(
            line(Event::ActionHeld(ActionHeldEvent::new(&h))),
            r#"{"type":"action_held","ts":"2023-11-14T22:13:31.000000Z","vm":"fa:16:3e:00:00:01","vm_name":null,"action":"quarantine","level":"MEDIUM","reason":"signature","held_because":"vm_cooldown"}"#
        );
    }

    #[test]
    fn an_evacuation_plan_counts_each_outcome() {
        let vm = |n: u8| Mac([0xfa, 0x16, 0x3e, 0, 0, n]);
        let entry = |n: u8, decision: Option<Decision>, skipped: Option<crate::vocab::SkipReason>| PlanEntry {
            vm: vm(n),
            vm_name: format!("v{n}"),
            ram_mb: u64::from(n) * 1024,
            decision,
            skipped,
        };
        let held = Held {
            ts: T,
            vm: vm(3),
            vm_name: None,
            kind: ActionKind::Migrate,
            level: Level::Low,
            reason: Reason::Ids,
            because: crate::vocab::HoldReason::ClusterMigrations,
        };
        let plan = [
            entry(4, Some(Decision::Act(action(ActionKind::Migrate, Some("h2"), None))), None),
            entry(3, Some(Decision::Held(held)), None),
            entry(2, Some(Decision::Act(action(ActionKind::Alert, None, Some("no room")))), None),
            entry(1, None, Some(crate::vocab::SkipReason::AlreadyMoving)),
        ];
        let ev = EvacuationEvent {
            ts: T,
            hypervisor: "h1".into(),
            trigger: crate::event::Trigger::Ids,
            mode: crate::policy::EvacuationMode::Host,
            sid: Some(9),
            victim: Some([10, 0, 0, 31].into()),
            high_vms: None,
            plan: Vec::new(),
            migrate: 0,
            held: 0,
            skipped: 0,
            no_destination: 0,
        }
        .with_plan(&plan);
        assert_eq!((ev.migrate, ev.held, ev.no_destination, ev.skipped), (1, 1, 1, 1));
        let lines: Vec<String> = ev.plan.iter().map(|p| serde_json::to_string(p).unwrap()).collect();
        assert_eq!(
            lines,
            [
                r#"{"vm":"fa:16:3e:00:00:04","vm_name":"v4","ram_mb":4096,"outcome":"migrate","destination":"h2","action_id":"1700000011000000-1","because":null}"#,
                r#"{"vm":"fa:16:3e:00:00:03","vm_name":"v3","ram_mb":3072,"outcome":"held","destination":null,"action_id":null,"because":"cluster_migrations"}"#,
                r#"{"vm":"fa:16:3e:00:00:02","vm_name":"v2","ram_mb":2048,"outcome":"alert","destination":null,"action_id":"1700000011000000-1","because":null}"#,
                r#"{"vm":"fa:16:3e:00:00:01","vm_name":"v1","ram_mb":1024,"outcome":"skipped","destination":null,"action_id":null,"because":"already_moving"}"#,
            ]
        );
    }

    #[test]
    fn a_migration_names_its_hypervisors_and_converts_its_measurements() {
        let (_r, registry, vm) = world();
        let m = Move {
            vm: 0,
            ts: T,
            from: Some(Place::registered(0)),
            to: Some(Place {
                hv: Some(1),
                mac: Some("52:54:00:aa:00:02".parse().unwrap()),
                ip: Some([10, 0, 0, 32].into()),
            }),
            via: Via::Rarp,
            verdict: Verdict::Invalid,
            authorization: Authorization::Replayed,
            downtime_us: Some(400),
            measured: Measured {
                streams: 2,
                bytes: Some(3 * 1024 * 1024 * 1024),
                total_us: Some(2_300_500),
                downtime_resolution_us: Some(150),
                responsive_us: Some(2500),
                source_downtime_us: Some(300),
            },
            gated: None,
            open: None,
            streams_open: false,
        };
        assert_eq!(
            line(Event::Migration(MigrationEvent::new(
                &m,
                &vm,
                &registry,
                Some(2048 * 1024 * 1024),
                vm.flavor.clone()
            ))),
            r#"{"type":"migration","ts":"2023-11-14T22:13:31.000000Z","vm":"fa:16:3e:00:00:01","vm_name":"web-1","from_hypervisor":"h1","to_hypervisor":"h2","to_mac":"52:54:00:aa:00:02","to_ip":"10.0.0.32","via":"rarp","signature":"invalid","authorized":false,"authorization":"replayed","streams":2,"bytes":3221225472,"bytes_per_ram":1.5,"total_ms":2300.5,"downtime_ms":0.4,"downtime_resolution_ms":0.15,"responsive_ms":2.5,"source_downtime_ms":0.3,"ram_mb":2048,"flavor":"m1.small"}"#
        );
        // Settled after its window: the measurements it was made with give way to the final ones.
        let mut ev = MigrationEvent::new(&m, &vm, &registry, Some(2048 * 1024 * 1024), vm.flavor.clone());
        let measured = Measured {
            streams: 1,
            bytes: Some(1024 * 1024 * 1024),
            total_us: Some(1_000),
            downtime_resolution_us: Some(100),
            responsive_us: Some(12_345),
            source_downtime_us: None,
        };
        ev.settle(&Settled { id: 7, measured });
        assert_eq!(
            line(Event::Migration(ev)),
            r#"{"type":"migration","ts":"2023-11-14T22:13:31.000000Z","vm":"fa:16:3e:00:00:01","vm_name":"web-1","from_hypervisor":"h1","to_hypervisor":"h2","to_mac":"52:54:00:aa:00:02","to_ip":"10.0.0.32","via":"rarp","signature":"invalid","authorized":false,"authorization":"replayed","streams":1,"bytes":1073741824,"bytes_per_ram":0.5,"total_ms":1.0,"downtime_ms":0.4,"downtime_resolution_ms":0.1,"responsive_ms":12.345,"source_downtime_ms":null,"ram_mb":2048,"flavor":"m1.small"}"#
        );
        // An announce with nowhere known, and no measurement.
        let m = Move {
            to: None,
            from: Some(Place { hv: None, mac: Some("52:54:00:66:66:66".parse().unwrap()), ip: None }),
            verdict: Verdict::Unknown,
            authorization: Authorization::Missing,
            downtime_us: None,
            measured: Measured::default(),
            ..m
        };
        assert_eq!(
            line(Event::Migration(MigrationEvent::new(&m, &vm, &registry, None, None))),
            r#"{"type":"migration","ts":"2023-11-14T22:13:31.000000Z","vm":"fa:16:3e:00:00:01","vm_name":"web-1","from_hypervisor":"52:54:00:66:66:66","to_hypervisor":null,"to_mac":null,"to_ip":null,"via":"rarp","signature":"unknown","authorized":false,"authorization":"missing","streams":0,"bytes":null,"bytes_per_ram":null,"total_ms":null,"downtime_ms":null,"downtime_resolution_ms":null,"responsive_ms":null,"source_downtime_ms":null,"ram_mb":null,"flavor":null}"#
        );
    }

    #[test]
    fn conflicts_and_samples() {
        let (_r, registry, vm) = world();
        let clone = Conflict::Clone {
            vm: 0,
            ts: T,
            places: [
                Place::registered(0),
                Place { hv: None, mac: Some(Mac([0x52, 0x54, 0, 0x66, 0x66, 0x66])), ip: None },
            ],
        };
        assert_eq!(
            line(Event::Conflict(ConflictEvent::new(&clone, |_| &vm, &registry))),
            r#"{"type":"conflict","ts":"2023-11-14T22:13:31.000000Z","kind":"clone","vm":"fa:16:3e:00:00:01","vm_name":"web-1","hypervisors":["h1","52:54:00:66:66:66"]}"#
        );
        let ips = Conflict::HypervisorIps {
            ts: T,
            mac: "52:54:00:aa:00:01".parse().unwrap(),
            ips: vec![[10, 0, 0, 31].into(), [10, 0, 0, 99].into()],
        };
        assert_eq!(
            line(Event::Conflict(ConflictEvent::new(&ips, |_| &vm, &registry))),
            r#"{"type":"conflict","ts":"2023-11-14T22:13:31.000000Z","kind":"hypervisor_ips","vm":null,"vm_name":null,"mac":"52:54:00:aa:00:01","ips":["10.0.0.31","10.0.0.99"]}"#
        );
        let odd = Conflict::VmUsesHypervisorMac { ts: T, mac: "52:54:00:aa:00:02".parse().unwrap(), outer_ip: None };
        assert_eq!(
            line(Event::Conflict(ConflictEvent::new(&odd, |_| &vm, &registry))),
            r#"{"type":"conflict","ts":"2023-11-14T22:13:31.000000Z","kind":"vm_uses_hypervisor_mac","vm":null,"vm_name":null,"mac":"52:54:00:aa:00:02"}"#
        );
        let s = RttSample {
            ts: T,
            mac: vm.mac,
            rtt_us: 2_345,
            kind: SampleKind::Handshake,
            src: ([10, 0, 1, 1].into(), 443),
            dst: ([10, 0, 0, 9].into(), 50_000),
        };
        assert_eq!(
            line(Event::RttSample(RttSampleEvent::new(&s, Some("web-1".into())))),
            r#"{"type":"rtt_sample","ts":"2023-11-14T22:13:31.000000Z","vm":"fa:16:3e:00:00:01","vm_name":"web-1","rtt_ms":2.345,"kind":"handshake","src":"10.0.1.1","src_port":443,"dst":"10.0.0.9","dst_port":50000}"#
        );
    }
}
