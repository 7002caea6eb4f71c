//! The events of every shipped scenario, byte for byte, against the files in `tests/golden/`.
//!
//! The files were written by the code before the events were typed; a change
//! to the JSON of any event (a field's name, order, value or spelling) fails
//! here. Run-dependent summary fields (`wall_s`, `read_s`, `processing_pps`,
//! `peak_rss_bytes`) are written as 0 and the rules' temporary directory as `$RULES`. `GOLDEN_WRITE=1` rewrites the files
//! (only when the JSON is meant to change).

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
            l.replace_range(start..end, "0");
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
    let out = Command::new(env!("CARGO_BIN_EXE_vmsentry")).args(&args).output().unwrap();
    assert!(out.status.success(), "replay {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    normalized(&String::from_utf8(out.stdout).unwrap()).replace(&rules.display().to_string(), "$RULES")
}

/// Compares (or, with `GOLDEN_WRITE=1`, writes) `tests/golden/NAME.jsonl`.
fn golden(name: &str, got: &str) {
    let p = root().join("tests/golden").join(format!("{name}.jsonl"));
    if std::env::var_os("GOLDEN_WRITE").is_some() {
        std::fs::write(&p, got).unwrap();
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

/// The shipped scenario captures with the shipped rules (and the demo's
/// tokens), with the optional event types turned on where they say something.
#[test]
fn every_shipped_scenario_gives_the_golden_events_byte_for_byte() {
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
        golden(name, &events_of(rules.path(), extra, &[capture(pcap)]));
    }
    // The storm limits hold an evacuation's migrations back (`action_held`, `held` plan lines).
    let rules = with_rules("\n[storm]\nmax_migrations_per_hypervisor = 2\n");
    golden("mtd-storm", &events_of(rules.path(), &[], &[capture("mtd.pcap")]));
}

/// Every real capture of `captures/third_party`, each replayed alone, in name order.
#[test]
fn every_third_party_capture_gives_the_golden_events_byte_for_byte() {
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
    golden("third_party", &all);
}

/// The gate scenario: decisions that approve, refuse and miss (`gate_denied`, `gated`).
#[test]
fn the_gate_scenario_gives_the_golden_events_byte_for_byte() {
    let records = [
        gate::decision("24.000000", "fa:16:3e:00:01:01", "compute-2", GateReason::Signed),
        gate::decision("30.200000", "fa:16:3e:00:01:04", "compute-3", GateReason::Signed),
        gate::decision("34.500000", "fa:16:3e:00:01:03", "compute-9", GateReason::UnsignedHost),
        gate::decision("44.000000", "fa:16:3e:00:01:05", "compute-1", GateReason::Signed),
        gate::decision("50.000000", "52:54:00:de:ad:01", "compute-2", GateReason::TokenReplayed),
        gate::decision("52.900000", "fa:16:3e:00:01:06", "compute-2", GateReason::Authorized),
    ];
    let rules = gate::gated_rules(&records);
    golden("gate", &events_of(rules.path(), &[], &[capture("migration-vxlan.pcap")]));
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
            let again = normalized(&(serde_json::to_string(&e).unwrap() + "\n"));
            assert_eq!(again.trim_end(), line, "{}:{}", p.display(), i + 1);
        }
    }
    // The golden files cover every event type.
    assert_eq!(types, vmsentry::event::Event::TYPES.into_iter().collect());
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
