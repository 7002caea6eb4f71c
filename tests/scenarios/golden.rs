//! The events of every shipped scenario, byte for byte, against the files in `tests/golden/`.
//!
//! The files were written by the code before the events were typed
//! (d7c49ee; the later ones with `GOLDEN_BIN=` that build's binary, which
//! reproduces the earlier ones byte for byte); a change
//! to the JSON of any event (a field's name, order, value or spelling) fails
//! here. Run-dependent summary fields (`wall_s`, `read_s`, `processing_pps`,
//! `peak_rss_bytes`; a null stays null) are written as 0 and the rules'
//! temporary directory as `$RULES`. `GOLDEN_WRITE=1` rewrites the files
//! (only when the JSON is meant to change) and fails the test, so that a
//! run that rewrote them never passes.

use super::*;
use vmsentry::gate::record::GateReason;

/// The run's stdout with the run-dependent summary values set to 0.
fn normalized(stdout: &str) -> String {
    let mut out = String::with_capacity(stdout.len());
    for line in stdout.split_inclusive('\n') {
        if !line.starts_with("{\"type\":\"summary\"") {
            out.push_str(line);
            continue;
        }
        let mut l = line.to_string();
        for k in ["wall_s", "read_s", "processing_pps", "peak_rss_bytes"] {
            let key = format!("\"{k}\":");
            let start = l.find(&key).unwrap_or_else(|| panic!("no {k} in {line}")) + key.len();
            let end = start + l[start..].find([',', '}']).unwrap();
            // A number becomes 0; null (no peak RSS known) stays null.
            if &l[start..end] != "null" {
                l.replace_range(start..end, "0");
            }
        }
        out.push_str(&l);
    }
    out
}

fn events_of(rules: &Path, extra: &[&str], pcaps: &[PathBuf]) -> String {
    let mut args =
        vec!["replay".to_string(), "--rules".into(), rules.display().to_string(), "--threads".into(), "2".into()];
    args.extend(extra.iter().map(|a| a.to_string()));
    args.extend(pcaps.iter().map(|p| p.display().to_string()));
    // GOLDEN_BIN: record with another build (the code before a change).
    let bin = std::env::var_os("GOLDEN_BIN").map_or_else(|| env!("CARGO_BIN_EXE_vmsentry").into(), PathBuf::from);
    let out = Command::new(bin).args(&args).current_dir(rules).output().unwrap();
    assert!(out.status.success(), "replay {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    normalized(&String::from_utf8(out.stdout).unwrap()).replace(&rules.display().to_string(), "$RULES")
}

/// Compares events with their golden files, or, with `GOLDEN_WRITE=1`,
/// writes them; a test that wrote any fails at its end (dropping this).
#[derive(Default)]
struct Golden(Vec<String>);

impl Drop for Golden {
    fn drop(&mut self) {
        if !self.0.is_empty() && !std::thread::panicking() {
            panic!("GOLDEN_WRITE: {}: rerun without GOLDEN_WRITE", self.0.join(", "));
        }
    }
}

impl Golden {
    /// Compares (or writes) `tests/golden/NAME.jsonl`.
    fn check(&mut self, name: &str, got: &str) {
        let p = root().join("tests/golden").join(format!("{name}.jsonl"));
        if std::env::var_os("GOLDEN_WRITE").is_some() {
            let was = std::fs::read_to_string(&p).ok();
            std::fs::write(&p, got).unwrap();
            self.0.push(format!("{name} {}", if was.as_deref() == Some(got) { "unchanged" } else { "rewritten" }));
            return;
        }
        let want = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        if want != got {
            let (w, g): (Vec<_>, Vec<_>) = (want.lines().collect(), got.lines().collect());
            let i = w.iter().zip(&g).position(|(a, b)| a != b).unwrap_or(w.len().min(g.len()));
            panic!(
                "{name}: the events differ from {} at line {} ({} lines wanted, {} got)\nwant: {}\n got: {}",
                p.display(),
                i + 1,
                w.len(),
                g.len(),
                w.get(i).unwrap_or(&"<end>"),
                g.get(i).unwrap_or(&"<end>")
            );
        }
    }
}

/// The shipped scenario captures with the shipped rules (and the demo's
/// tokens), with the optional event types turned on where they say something.
#[test]
fn every_shipped_scenario_gives_the_golden_events_byte_for_byte() {
    let mut g = Golden::default();
    let cases: [(&str, &[&str], &str); 7] = [
        ("basic", &["--vm-windows"], "basic.pcap"),
        ("rtt", &["--rtt-samples", "--vm-windows"], "rtt.pcap"),
        ("migration-vxlan", &[], "migration-vxlan.pcap"),
        ("migration-geneve", &[], "migration-geneve.pcap"),
        ("migration-plain", &[], "migration-plain.pcap"),
        ("mtd", &["--vm-windows"], "mtd.pcap"),
        ("icmp-fragmented", &["--rtt-samples"], "icmp-fragmented.pcap"),
    ];
    for (name, extra, pcap) in cases {
        let rules = with_rules("");
        g.check(name, &events_of(rules.path(), extra, &[capture(pcap)]));
    }
    // The storm limits hold an evacuation's migrations back (`action_held`, `held` plan lines).
    let rules = with_rules("\n[storm]\nmax_migrations_per_hypervisor = 2\n");
    g.check("mtd-storm", &events_of(rules.path(), &[], &[capture("mtd.pcap")]));
}

/// Every real capture of `captures/third_party`, each replayed alone, in name order.
#[test]
fn every_third_party_capture_gives_the_golden_events_byte_for_byte() {
    let mut g = Golden::default();
    let mut names: Vec<String> = std::fs::read_dir(capture("third_party"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".pcap") || n.ends_with(".pcapng"))
        .collect();
    names.sort();
    let rules = rules_dir();
    let mut all = String::new();
    for n in names {
        all.push_str(&events_of(rules.path(), &[], &[capture(&format!("third_party/{n}"))]));
    }
    g.check("third_party", &all);
}

/// The gate scenario: decisions that approve, refuse and miss (`gate_denied`, `gated`).
#[test]
fn the_gate_scenario_gives_the_golden_events_byte_for_byte() {
    let mut g = Golden::default();
    let records = [
        gate::decision("24.000000", "fa:16:3e:00:01:01", "compute-2", GateReason::Signed),
        gate::decision("30.200000", "fa:16:3e:00:01:04", "compute-3", GateReason::Signed),
        gate::decision("34.500000", "fa:16:3e:00:01:03", "compute-9", GateReason::UnsignedHost),
        gate::decision("44.000000", "fa:16:3e:00:01:05", "compute-1", GateReason::Signed),
        gate::decision("50.000000", "52:54:00:de:ad:01", "compute-2", GateReason::TokenReplayed),
        gate::decision("52.900000", "fa:16:3e:00:01:06", "compute-2", GateReason::Authorized),
    ];
    let rules = gate::gated_rules(&records);
    g.check("gate", &events_of(rules.path(), &[], &[capture("migration-vxlan.pcap")]));
    // A refusal without a detail, and one naming no MAC (null `vm`).
    let mut bare = gate::decision("34.500000", "fa:16:3e:00:01:03", "compute-9", GateReason::Timeout);
    bare.detail = None;
    let mut no_mac = gate::decision("50.000000", "52:54:00:de:ad:01", "compute-2", GateReason::BadXml);
    no_mac.vms.clear();
    let rules = gate::gated_rules(&[bare, no_mac]);
    g.check("gate-bare", &events_of(rules.path(), &[], &[capture("migration-vxlan.pcap")]));
}

/// Rewrites the rules file of `dir`: each `(from, to)` must be found.
fn edit_rules(dir: &Path, edits: &[(&str, &str)]) {
    let toml = dir.join("vmsentry.toml");
    let mut text = std::fs::read_to_string(&toml).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "the rules have no `{from}`");
        text = text.replace(from, to);
    }
    std::fs::write(&toml, text).unwrap();
}

/// The paths the shipped scenarios do not take, from the same inputs as
/// the scenario tests (`mtd.rs`, `scenarios.rs`): `vm` mode, Snort's
/// formats, `learned` and `rules` victims, `already_moving`, the
/// `host_high` trigger, `alert` plan lines, the other storm limits, the
/// exec backend, `duplicate` actions, the MAC conflicts and a GARP move.
#[test]
fn the_less_travelled_paths_give_the_golden_events_byte_for_byte() {
    let mut g = Golden::default();
    // Snort 3 (victim = source, a learned address) and alert_fast (a
    // hypervisor's own address), `mode = "vm"`.
    let rules = rules_dir();
    let dir = rules.path();
    std::fs::write(
        dir.join("alerts/snort3.json"),
        "{\"timestamp\":\"11/15-22:13:31.000000\",\"sid\":1000042,\"priority\":1,\"msg\":\"outbound scan\",\"src_ap\":\"10.1.0.14:5000\",\"dst_ap\":\"192.0.2.80:22\"}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("alerts/fast.log"),
        "11/15-22:13:35.000000  [**] [1:1000043:1] attack on a hypervisor [**] [Classification: Attempted Administrator Privilege Gain] [Priority: 1] {TCP} 203.0.113.9:4444 -> 10.0.0.34:22\n",
    )
    .unwrap();
    edit_rules(
        dir,
        &[
            ("mode = \"host\" ", "mode = \"vm\"   "),
            (
                "[policy]",
                "[[ids]]\npath = \"alerts/snort3.json\"\nformat = \"snort3_json\"\nvictim = \"source\"\n\
                 \n[[ids]]\npath = \"alerts/fast.log\"\nformat = \"snort_fast\"\n\n[policy]",
            ),
        ],
    );
    g.check("mtd-snort-vm", &events_of(dir, &[], &[capture("mtd.pcap")]));

    // host_high: one HIGH VM evacuates its hypervisor (its own migrate came first: skipped).
    let rules = rules_dir();
    edit_rules(rules.path(), &[("host_high_vms = 0 ", "host_high_vms = 1 ")]);
    g.check("basic-host-high", &events_of(rules.path(), &[], &[capture("basic.pcap")]));

    // No destination with room for some: `alert` plan lines.
    let rules = rules_dir();
    edit_rules(
        rules.path(),
        &[
            ("id = \"compute-1\"\nram_mb = 16384", "id = \"compute-1\"\nram_mb = 10243"),
            ("id = \"compute-2\"\nram_mb = 16384", "id = \"compute-2\"\nram_mb = 2562"),
            ("b1f7ae5e79f585a558be359cae56cffe97ff39e44e0b6568129bbd58dd299f91", &"0".repeat(64)),
        ],
    );
    g.check("mtd-no-room", &events_of(rules.path(), &[], &[capture("mtd.pcap")]));

    // The other storm limits: cooldown, the action rate, the cluster's migrations.
    let rules = with_rules("\n[storm]\nvm_cooldown_s = 300\nmax_actions_per_minute = 3\nmax_migrations = 1\n");
    g.check("basic-storm", &events_of(rules.path(), &["--vm-windows"], &[capture("basic.pcap")]));

    // The exec backend with a journal, twice: the second run's actions are duplicates.
    let rules = with_rules(
        "\n[backend]\ndefault = \"exec\"\njournal = \"journal.jsonl\"\n\n[backend.exec]\nprogram = \"/bin/true\"\n",
    );
    g.check("basic-exec", &events_of(rules.path(), &[], &[capture("basic.pcap")]));
    g.check("basic-exec-again", &events_of(rules.path(), &[], &[capture("basic.pcap")]));

    // The MAC conflicts, and a move announced by a gratuitous ARP.
    use vmsentry::synth::{frames, mac, scenario, write_pcap, Frame};
    let d = tempfile::tempdir().unwrap();
    let u = |hv: (&str, [u8; 4])| frames::Underlay {
        src: mac(hv.0),
        dst: mac("52:54:00:aa:00:fe"),
        sip: hv.1.into(),
        dip: [10, 0, 0, 254].into(),
        vni: 1,
    };
    let hv1 = u(scenario::HV1);
    let to = |src: &str, ip: [u8; 4]| {
        frames::udp4(mac(src), mac("52:54:00:ff:00:01"), ip.into(), [10, 0, 0, 1].into(), 1, 2, 10)
    };
    let spoofed_ip = frames::Underlay { sip: [10, 0, 0, 77].into(), ..hv1 };
    let t0 = scenario::T0_US;
    let conflicts = d.path().join("conflicts.pcap");
    write_pcap(
        &conflicts,
        &mut [
            Frame::whole(t0, frames::vxlan(&hv1, &to("fa:16:3e:00:00:03", [10, 0, 1, 3]))),
            Frame::whole(t0 + 100, frames::vxlan(&spoofed_ip, &to("fa:16:3e:00:00:03", [10, 0, 1, 3]))),
            Frame::whole(t0 + 200, frames::vxlan(&hv1, &to(scenario::HV2.0, [10, 0, 1, 9]))),
        ],
    )
    .unwrap();
    let vm = mac(scenario::MIG[0]);
    let ip: std::net::Ipv4Addr = [10, 0, 1, 100].into();
    let data = frames::udp4(vm, mac("52:54:00:ff:00:01"), ip, [10, 0, 0, 1].into(), 1, 2, 10);
    let garp =
        frames::arp(vm, vmsentry::decode::Mac::BROADCAST, false, 1, vm, ip, vmsentry::decode::Mac::default(), ip);
    let mut fr: Vec<Frame> = (0..10).map(|k| Frame::whole(t0 + k * 100_000, frames::vxlan(&hv1, &data))).collect();
    fr.push(Frame::whole(t0 + 4_000_000, frames::vxlan(&u(scenario::HV2), &garp)));
    fr.push(Frame::whole(t0 + 8_000_000, frames::vxlan(&u(scenario::HV2), &data)));
    let garp_pcap = d.path().join("garp.pcap");
    write_pcap(&garp_pcap, &mut fr).unwrap();
    let rules = with_rules("");
    let mut got = events_of(rules.path(), &[], &[conflicts]);
    got += &events_of(rules.path(), &[], &[garp_pcap]);
    g.check("conflicts-garp", &got);

    // Inventory VMs without a hypervisor or RAM in the rules: null
    // hypervisors (until the wire shows one) and RAM.
    let rules = rules_dir();
    let toml = rules.path().join("vmsentry.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    let at = text.find("\n[[vm]]").unwrap();
    let vms: Vec<&str> =
        text[at..].lines().filter(|l| !l.starts_with("hypervisor = ") && !l.starts_with("ram_mb = ")).collect();
    std::fs::write(&toml, format!("{}{}\n", &text[..at], vms.join("\n"))).unwrap();
    let mut got = events_of(rules.path(), &["--vm-windows"], &[capture("basic.pcap")]);
    got += &events_of(rules.path(), &[], &[capture("rtt.pcap")]);
    got += &events_of(rules.path(), &[], &[capture("migration-vxlan.pcap")]);
    g.check("vms-unplaced", &got);

    // The cluster's migrations limit alone.
    let rules = with_rules("\n[storm]\nmax_migrations = 1\n");
    g.check("mtd-cluster-limit", &events_of(rules.path(), &[], &[capture("mtd.pcap")]));

    // An alert on mtd-1, whose address is in the rules, in `vm` mode.
    let rules = rules_dir();
    let eve = rules.path().join("alerts/eve.json");
    let line = std::fs::read_to_string(&eve).unwrap().lines().nth(2).unwrap().replace("10.1.0.12", "10.1.0.11");
    std::fs::write(&eve, line + "\n").unwrap();
    edit_rules(rules.path(), &[("mode = \"host\" ", "mode = \"vm\"   ")]);
    g.check("mtd-rules-victim", &events_of(rules.path(), &[], &[capture("mtd.pcap")]));
}

/// Every golden line reads as a typed event and writes back as the same bytes.
#[test]
fn every_golden_line_reads_as_an_event_and_writes_back_the_same() {
    let mut types = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(root().join("tests/golden")).unwrap() {
        let p = entry.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        for (i, line) in text.lines().enumerate() {
            let e = vmsentry::event::Event::from_json(line)
                .unwrap_or_else(|err| panic!("{}:{}: {err}", p.display(), i + 1));
            types.insert(e.type_name());
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(e.type_name(), v["type"], "{}:{}", p.display(), i + 1);
            let again = normalized(&(serde_json::to_string(&e).unwrap() + "\n"));
            assert_eq!(again.trim_end(), line, "{}:{}", p.display(), i + 1);
        }
    }
    // The golden files cover every event type.
    assert_eq!(types, vmsentry::event::Event::TYPES.into_iter().collect());
}

/// The fields the writer leaves out when empty: the only ones a line may miss.
const LEFT_OUT_WHEN_EMPTY: [&str; 11] = [
    "summary.migrations_written_open",
    "migration.gated",
    "evacuation.sid",
    "evacuation.victim",
    "evacuation.high_vms",
    "conflict.hypervisors",
    "conflict.mac",
    "conflict.ips",
    "level.horizon_bytes",
    "level.limit_bytes",
    "action.note",
];

/// A golden line without any other of its fields (null or not, and a plan
/// line's) does not read: nullable is not optional.
#[test]
fn a_golden_line_without_a_field_it_always_has_does_not_read() {
    let mut tried = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(root().join("tests/golden")).unwrap() {
        let p = entry.unwrap().path();
        for (i, line) in std::fs::read_to_string(&p).unwrap().lines().enumerate() {
            let v: Value = serde_json::from_str(line).unwrap();
            let ty = v["type"].as_str().unwrap().to_string();
            // (field, whether it was null, the line without it)
            let mut cases: Vec<(String, bool, Value)> = Vec::new();
            for (k, x) in v.as_object().unwrap() {
                let mut w = v.clone();
                w.as_object_mut().unwrap().remove(k);
                cases.push((format!("{ty}.{k}"), x.is_null(), w));
            }
            if let Some(line0) = v.get("plan").and_then(|p| p.get(0)) {
                for (k, x) in line0.as_object().unwrap() {
                    let mut w = v.clone();
                    w["plan"][0].as_object_mut().unwrap().remove(k);
                    cases.push((format!("{ty}.plan.{k}"), x.is_null(), w));
                }
            }
            for (field, null, w) in cases {
                let read = vmsentry::event::Event::from_json(&w.to_string());
                if LEFT_OUT_WHEN_EMPTY.contains(&field.as_str()) {
                    assert!(read.is_ok(), "{}:{}: without {field}: {read:?}", p.display(), i + 1);
                } else {
                    let e = read.expect_err(&format!("{}:{}: reads without {field}", p.display(), i + 1));
                    assert!(e.to_string().contains("missing field"), "{}:{}: {field}: {e}", p.display(), i + 1);
                    if null {
                        tried.insert(field);
                    }
                }
            }
        }
    }
    // Null ones among them (what serde alone would have read as None when missing).
    for f in ["level.direction", "migration.bytes", "evacuation.plan.because", "vm_window.rtt_baseline_ms"] {
        assert!(tried.contains(f), "no null {f} in the golden files: {tried:?}");
    }
}

/// The `...` names in a piece of README text.
fn ticked(s: &str) -> std::collections::BTreeSet<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// README's events reference: one row per event type, the same types as
/// `Event`; every field the golden events write is named in its type's row;
/// the decode error kinds are `DecodeErrorKind`'s.
#[test]
fn readme_events_reference_names_every_type_and_field() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = &readme[readme.find("## Events reference").unwrap()..];
    let section = &section[..section[3..].find("\n## ").unwrap() + 3];
    let rows: BTreeMap<&str, &str> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let ty = l[3..].split('`').next().unwrap();
            (ty, l)
        })
        .collect();
    let types: std::collections::BTreeSet<&str> = rows.keys().copied().collect();
    assert_eq!(types, vmsentry::event::Event::TYPES.into_iter().collect(), "README's event types");
    let mut unnamed = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(root().join("tests/golden")).unwrap() {
        let p = entry.unwrap().path();
        for line in std::fs::read_to_string(&p).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let ty = v["type"].as_str().unwrap();
            let names = ticked(rows[ty]);
            for k in v.as_object().unwrap().keys() {
                if !["type", "ts", "vm", "vm_name"].contains(&k.as_str()) && !names.contains(k.as_str()) {
                    unnamed.insert(format!("{ty}.{k}"));
                }
            }
        }
    }
    assert!(unnamed.is_empty(), "README's events reference does not name these fields: {unnamed:?}");
    // The events' own values.
    use vmsentry::event::*;
    let all = ticked(section);
    let values: Vec<&str> = (KnownBy::ALL.iter().map(|x| x.as_str()))
        .chain(AlertOutcome::ALL.iter().map(|x| x.as_str()))
        .chain(Trigger::ALL.iter().map(|x| x.as_str()))
        .chain(PlanOutcome::ALL.iter().map(|x| x.as_str()))
        .chain(HoldReason::ALL.iter().map(|x| x.as_str()))
        .chain(SkipReason::ALL.iter().map(|x| x.as_str()))
        .chain(ConflictKind::ALL.iter().map(|x| x.as_str()))
        .chain(ActionSignature::ALL.iter().map(|x| x.as_str()))
        .collect();
    let missing: Vec<&&str> = values.iter().filter(|v| !all.contains(**v)).collect();
    assert!(missing.is_empty(), "README's events reference does not name these values: {missing:?}");
    let kinds_text =
        &section[section.find("Decode error kinds:").unwrap()..section.find("Link types decoded").unwrap()];
    let kinds: Vec<&str> = vmsentry::decode::DecodeErrorKind::ALL.iter().map(|k| k.as_str()).collect();
    let mut named = ticked(kinds_text);
    named.remove("orig_len"); // a capture record's field, in `frame_length`'s explanation
    assert_eq!(named, kinds.into_iter().collect(), "README's decode error kinds");
}
