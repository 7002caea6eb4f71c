//! The migration gate seen from the sensor: its decisions approve the moves the wire shows, moves without one are `ungated`, refusals are events, all at their own timestamps.

use super::*;
use vmsentry::gate::record::{GateReason, GateRecord};

/// One decision of the gate on `host` about the domain with MAC `vm`, at `T` + `at`.
pub(super) fn decision(at: &str, vm: &str, host: &str, reason: GateReason) -> GateRecord {
    let allowed = matches!(reason, GateReason::Signed | GateReason::Authorized);
    let ts = time::OffsetDateTime::parse(&format!("{T}{at}Z"), &time::format_description::well_known::Rfc3339).unwrap();
    GateRecord {
        ts: vmsentry::vocab::PacketTime::from_micros((ts.unix_timestamp_nanos() / 1000) as i64),
        allowed,
        reason,
        detail: (!allowed).then(|| format!("{} (test)", reason.as_str())),
        domain: format!("domain-{vm}"),
        uuid: None,
        vms: vec![vm.parse().unwrap()],
        host: host.into(),
        nonce: (reason == GateReason::Authorized || reason == GateReason::TokenReplayed)
            .then(|| "00112233aabbccdd".to_string()),
        elapsed_us: 900,
        mac: None,
    }
}

/// The shipped rules following a decisions file, with `require_gate` on.
pub(super) fn gated_rules(records: &[GateRecord]) -> tempfile::TempDir {
    let rules = with_rules("");
    let p = rules.path().join("vmsentry.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains("require_authorization = false\n"));
    let text = text.replace(
        "require_authorization = false\n",
        "require_authorization = false\ngate_decisions = [\"gate/decisions.jsonl\"]\nrequire_gate = true\ngate_window_s = 10\ngate_grace_s = 0\n",
    );
    std::fs::write(&p, text).unwrap();
    std::fs::create_dir_all(rules.path().join("gate")).unwrap();
    // The gate signs each record with the cluster key; a test that wants a
    // bad one appends it itself.
    let key = vmsentry::config::Rules::load(rules.path()).unwrap().key;
    let lines: String = records
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.sign(&key);
            serde_json::to_string(&r).unwrap() + "\n"
        })
        .collect();
    std::fs::write(rules.path().join("gate/decisions.jsonl"), lines).unwrap();
    rules
}

#[test]
fn moves_without_an_allowed_gate_decision_are_ungated_and_quarantined() {
    let records = [
        // Approves mig-1's move at 25.0.
        decision("24.000000", "fa:16:3e:00:01:01", "compute-2", GateReason::Signed),
        // Too old for mig-4's move at 40.3 (gate_window_s = 10).
        decision("30.200000", "fa:16:3e:00:01:04", "compute-3", GateReason::Signed),
        // compute-9's gate refused mig-3 (it moved anyway at 35.0).
        decision("34.500000", "fa:16:3e:00:01:03", "compute-9", GateReason::UnsignedHost),
        // For mig-5, but to another host than the one it went to at 45.0.
        decision("44.000000", "fa:16:3e:00:01:05", "compute-1", GateReason::Signed),
        // A refusal for a domain that is no VM of the inventory.
        decision("50.000000", "52:54:00:de:ad:01", "compute-2", GateReason::TokenReplayed),
        // Approves mig-6's move at 53.0 with a token the gate used up; its
        // moves at 56.0 and 59.0 have none (one decision, one move).
        decision("52.900000", "fa:16:3e:00:01:06", "compute-2", GateReason::Authorized),
    ];
    let rules = gated_rules(&records);
    let ev = replay(rules.path(), 2, &[capture("migration-vxlan.pcap")]);
    let gated: Vec<Value> = of_type(&ev, "migration")
        .into_iter()
        .map(|e| json!([e["ts"], e["vm_name"], e["gated"], e["authorization"]]))
        .collect();
    assert_eq!(
        gated,
        vec![
            json!([format!("{T}25.000000Z"), "mig-1", true, "granted"]),
            json!([format!("{T}30.000000Z"), "mig-2", false, "missing"]),
            json!([format!("{T}35.000000Z"), "mig-3", false, "missing"]),
            json!([format!("{T}40.300000Z"), "mig-4", false, "granted"]),
            json!([format!("{T}45.000000Z"), "mig-5", false, "missing"]),
            // The gate's token stands for the move.
            json!([format!("{T}53.000000Z"), "mig-6", true, "granted"]),
            json!([format!("{T}56.000000Z"), "mig-6", false, "missing"]),
            // The demo token in tokens_dir was not used at 53.0, so it is now.
            json!([format!("{T}59.000000Z"), "mig-6", false, "granted"]),
        ]
    );
    assert_eq!(
        rises(&ev),
        vec![
            json!([format!("{T}31.000000Z"), "mig-2", "HIGH", "signature", "52:54:00:66:66:66"]),
            json!([format!("{T}36.000000Z"), "mig-3", "HIGH", "signature", "compute-9"]),
            // Bypassing the gate is named before moving too many bytes.
            json!([format!("{T}41.000000Z"), "mig-4", "HIGH", "ungated", "compute-3"]),
            json!([format!("{T}46.000000Z"), "mig-5", "HIGH", "ungated", "compute-3"]),
            json!([format!("{T}57.000000Z"), "mig-6", "HIGH", "ungated", "compute-1"]),
        ]
    );
    // Ungated is treated as unsigned: quarantine, never a migrate.
    assert_eq!(
        actions(&ev),
        vec![
            json!([format!("{T}31.000000Z"), "mig-2", "quarantine", "signature", null]),
            json!([format!("{T}36.000000Z"), "mig-3", "quarantine", "signature", null]),
            json!([format!("{T}41.000000Z"), "mig-4", "quarantine", "ungated", null]),
            json!([format!("{T}46.000000Z"), "mig-5", "quarantine", "ungated", null]),
            json!([format!("{T}57.000000Z"), "mig-6", "quarantine", "ungated", null]),
        ]
    );
    let denied: Vec<Value> = of_type(&ev, "gate_denied")
        .into_iter()
        .map(|e| json!([e["ts"], e["vm"], e["vm_name"], e["hypervisor"], e["reason"], e["domain"], e["nonce"]]))
        .collect();
    assert_eq!(
        denied,
        vec![
            json!([
                format!("{T}34.500000Z"),
                "fa:16:3e:00:01:03",
                "mig-3",
                "compute-9",
                "unsigned_host",
                "domain-fa:16:3e:00:01:03",
                null
            ]),
            json!([
                format!("{T}50.000000Z"),
                "52:54:00:de:ad:01",
                null,
                "compute-2",
                "token_replayed",
                "domain-52:54:00:de:ad:01",
                "00112233aabbccdd"
            ]),
        ]
    );
    // Refusals come in packet-time order among the rest.
    let ts: Vec<&str> = ev
        .iter()
        .filter(|e| e["type"] != "vm_stats" && e["type"] != "summary")
        .map(|e| e["ts"].as_str().unwrap())
        .collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "events out of order");
    // The same for any thread count (fresh rules: tokens used stay used).
    let fresh = gated_rules(&records);
    let again = replay(fresh.path(), 1, &[capture("migration-vxlan.pcap")]);
    assert_eq!(stable(again), stable(ev));
}

#[test]
fn require_gate_needs_decision_files_and_says_where() {
    let rules = with_rules("");
    let p = rules.path().join("vmsentry.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(
        &p,
        text.replace("require_authorization = false\n", "require_authorization = false\nrequire_gate = true\n"),
    )
    .unwrap();
    let out = vmsentry(&["check", "--rules", rules.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vmsentry.toml:34:16: migration.require_gate = true needs migration.gate_decisions"), "{err}");
}

#[test]
fn gate_decisions_are_counted_in_the_metrics_and_unauthenticated_ones_rejected() {
    let records = [
        decision("24.000000", "fa:16:3e:00:01:01", "compute-2", GateReason::Signed),
        decision("34.500000", "fa:16:3e:00:01:03", "compute-9", GateReason::UnsignedHost),
        decision("50.000000", "52:54:00:de:ad:01", "compute-2", GateReason::TokenReplayed),
    ];
    let rules_dir = gated_rules(&records);
    let rules = vmsentry::config::Rules::load(rules_dir.path()).unwrap();
    // Lines anyone who can append to the file could write: each would
    // approve a move of the capture (mig-2 to its unregistered host at 30.0,
    // mig-5 to compute-3 at 45.0) and must be refused instead.
    let mut unsigned = decision("44.500000", "fa:16:3e:00:01:05", "compute-3", GateReason::Signed);
    let mut forged = unsigned.clone();
    forged.sign(&vmsentry::trust::ClusterKey::from_bytes(&[b'x'; 32]).unwrap());
    let mut tampered = unsigned.clone();
    tampered.sign(&rules.key);
    tampered.domain = "other".into();
    let mut rogue = decision("29.500000", "fa:16:3e:00:01:02", "52:54:00:66:66:66", GateReason::Signed);
    rogue.sign(&rules.key);
    unsigned.mac = None;
    let bad: String =
        [&unsigned, &forged, &tampered, &rogue].iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
    let p = rules_dir.path().join("gate/decisions.jsonl");
    let text = std::fs::read_to_string(&p).unwrap() + &bad;
    std::fs::write(&p, text).unwrap();
    let ev = replay(rules_dir.path(), 2, &[capture("migration-vxlan.pcap")]);
    let gated: Vec<Value> = of_type(&ev, "migration").into_iter().map(|e| json!([e["vm_name"], e["gated"]])).collect();
    assert_eq!(gated[1], json!(["mig-2", false]));
    assert_eq!(gated[4], json!(["mig-5", false]));
    let telemetry = vmsentry::serve::Telemetry::new(16);
    let mut source = vmsentry::capture::FileSource::open(&[capture("migration-vxlan.pcap")]).unwrap();
    let opts = vmsentry::pipeline::Options { threads: 2, telemetry: Some(telemetry.clone()), ..Default::default() };
    vmsentry::pipeline::run(
        &mut source,
        &rules,
        Box::new(vmsentry::action::LogSink::stderr()),
        Box::new(vmsentry::event::JsonLines(std::io::sink())),
        &opts,
    )
    .unwrap();
    let text = telemetry.metrics.render();
    assert!(text.contains("vmsentry_gate_decisions_total{outcome=\"allowed\"} 1\n"), "{text}");
    assert!(text.contains("vmsentry_gate_decisions_total{outcome=\"denied\"} 2\n"), "{text}");
    assert!(text.contains("vmsentry_gate_decisions_total{outcome=\"rejected\"} 4\n"), "{text}");
}

#[test]
fn a_domain_named_like_a_flag_is_libvirts_argument_not_ours() {
    // Pass-through: exit 0, nothing on stdout (libvirt would take it as XML).
    for name in ["--help", "-h", "--version", "--config"] {
        let out = vmsentry(&["gate", "--config", "/nonexistent/gate.toml", "--", name, "start", "begin", "-"]);
        assert_eq!(
            (out.status.code(), out.stdout.len()),
            (Some(0), 0),
            "{name}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // A migration of `--help` is decided (here: refused, no usable config), not answered with help.
    let out = vmsentry(&["gate", "--config", "/nonexistent/gate.toml", "--", "--help", "migrate", "begin", "-"]);
    assert_eq!((out.status.code(), out.stdout.len()), (Some(2), 0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing the migration of --help"), "{err}");
}
