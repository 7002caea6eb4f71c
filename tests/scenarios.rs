//! Scenario tests in the style of suricata-verify: a capture, a rules file, and the exact events.
//!
//! Every case runs the real `vmsentry` binary. Captures are in `captures/`
//! (see captures/README.md for what each must give).

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn capture(name: &str) -> PathBuf {
    root().join("captures").join(name)
}

/// A private copy of the shipped rules, with the key's mode fixed (git does
/// not keep 0600).
fn rules_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for f in ["vmsentry.toml", "cluster.key"] {
        std::fs::copy(root().join("rules").join(f), d.path().join(f)).unwrap();
    }
    std::fs::set_permissions(d.path().join("cluster.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::create_dir_all(d.path().join("alerts")).unwrap();
    std::fs::copy(root().join("rules/alerts/eve.json"), d.path().join("alerts/eve.json")).unwrap();
    // migration.tokens_dir; empty (with_rules adds the demo's tokens).
    std::fs::create_dir_all(d.path().join("tokens")).unwrap();
    d
}

fn vmsentry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmsentry")).args(args).output().unwrap()
}

/// Replays and returns the events, checking the exit status is 0.
fn replay(rules: &Path, threads: usize, pcaps: &[PathBuf]) -> Vec<Value> {
    replay_with(rules, threads, &[], pcaps)
}

fn replay_with(rules: &Path, threads: usize, extra: &[&str], pcaps: &[PathBuf]) -> Vec<Value> {
    let mut args = vec!["replay".to_string(), "--rules".into(), rules.display().to_string()];
    args.push("--threads".into());
    args.push(threads.to_string());
    args.extend(extra.iter().map(|a| a.to_string()));
    args.extend(pcaps.iter().map(|p| p.display().to_string()));
    let out = Command::new(env!("CARGO_BIN_EXE_vmsentry")).args(&args).output().unwrap();
    assert!(out.status.success(), "replay failed: {}", String::from_utf8_lossy(&out.stderr));
    event_lines(&String::from_utf8(out.stdout).unwrap())
}

/// The events of a run's output, each checked to be an event of the schema
/// (`vmsentry::event::Event`), as JSON values for the tests to pick from.
fn event_lines(text: &str) -> Vec<Value> {
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            if let Err(e) = vmsentry::event::Event::from_json(l) {
                panic!("line {}: not a vmsentry event ({e}): {l}", i + 1);
            }
            serde_json::from_str(l).unwrap()
        })
        .collect()
}

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == t).collect()
}

fn summary(events: &[Value]) -> &Value {
    let last = events.last().expect("no events");
    assert_eq!(last["type"], "summary", "the summary is the last line");
    last
}

/// The events with the run-dependent summary fields removed.
fn stable(mut events: Vec<Value>) -> Vec<Value> {
    if let Some(s) = events.last_mut() {
        for k in ["wall_s", "read_s", "processing_pps", "peak_rss_bytes"] {
            s.as_object_mut().unwrap().remove(k);
        }
    }
    events
}

#[test]
fn basic_scenario_gives_exact_levels() {
    let rules = rules_dir();
    let ev = replay(rules.path(), 2, &[capture("basic.pcap")]);
    let levels: Vec<Value> = of_type(&ev, "level")
        .into_iter()
        .map(|e| {
            json!([
                e["ts"],
                e["vm_name"],
                e["from"],
                e["to"],
                e["reason"],
                e["direction"],
                e["bps"],
                e["pps"],
                e["hypervisor"]
            ])
        })
        .collect();
    let expected = vec![
        json!(["2023-11-14T22:13:31.000000Z", "web-1", "LOW", "HIGH", "rate", "tx", 60_000_000, 5000, "compute-1"]),
        json!(["2023-11-14T22:13:36.000000Z", "web-1", "HIGH", "MEDIUM", "rate", "tx", 0, 0, "compute-1"]),
        json!(["2023-11-14T22:13:39.000000Z", "web-1", "MEDIUM", "LOW", "rate", "tx", 0, 0, "compute-1"]),
        json!(["2023-11-14T22:13:41.000000Z", "db-1", "LOW", "MEDIUM", "rate", "tx", 10_000_000, 1000, "compute-1"]),
        json!(["2023-11-14T22:13:48.000000Z", "db-1", "MEDIUM", "LOW", "rate", "tx", 0, 0, "compute-1"]),
        json!(["2023-11-14T22:13:51.000000Z", "rogue-1", "LOW", "MEDIUM", "rate", "tx", 10_000_000, 1000, "compute-9"]),
        json!(["2023-11-14T22:13:56.000000Z", "rogue-1", "MEDIUM", "LOW", "rate", "tx", 0, 0, "compute-9"]),
        json!(["2023-11-14T22:14:01.000000Z", "cache-1", "LOW", "MEDIUM", "rate", "rx", 2_880_000, 4000, "compute-2"]),
        json!(["2023-11-14T22:14:02.000000Z", "backup-1", "LOW", "HIGH", "volume", null, 600_000, 50, "compute-2"]),
        json!(["2023-11-14T22:14:05.000000Z", "cache-1", "MEDIUM", "LOW", "rate", "tx", 0, 0, "compute-2"]),
    ];
    assert_eq!(levels, expected);
    let vol = of_type(&ev, "level").into_iter().find(|e| e["reason"] == "volume").unwrap();
    assert_eq!((vol["horizon_bytes"].as_u64(), vol["limit_bytes"].as_u64()), (Some(3_150_000), Some(3 * 1024 * 1024)));
    assert_eq!(vol["window_start"], "2023-11-14T22:14:01.000000Z");
}

#[test]
fn basic_scenario_acts_once_per_rise_by_policy_and_signature() {
    let rules = rules_dir();
    let ev = replay(rules.path(), 1, &[capture("basic.pcap")]);
    let actions: Vec<Value> = of_type(&ev, "action")
        .into_iter()
        .map(|e| {
            json!([
                e["ts"],
                e["id"],
                e["vm_name"],
                e["action"],
                e["hypervisor"],
                e["signature"],
                e["destination"],
                e["level"],
                e["reason"],
                e["backend"],
                e["outcome"]
            ])
        })
        .collect();
    let expected = vec![
        // HIGH on a signed hypervisor: migrate, to the signed host with the fewest VMs (compute-3 has none).
        json!([
            "2023-11-14T22:13:31.000000Z",
            "1700000011000000-1",
            "web-1",
            "migrate",
            "compute-1",
            "signed",
            "compute-3",
            "HIGH",
            "rate",
            "log",
            "queued"
        ]),
        json!([
            "2023-11-14T22:13:41.000000Z",
            "1700000021000000-2",
            "db-1",
            "alert",
            "compute-1",
            "signed",
            null,
            "MEDIUM",
            "rate",
            "log",
            "queued"
        ]),
        // compute-9's signature does not verify: unsigned, so MEDIUM quarantines.
        json!([
            "2023-11-14T22:13:51.000000Z",
            "1700000031000000-3",
            "rogue-1",
            "quarantine",
            "compute-9",
            "unsigned",
            null,
            "MEDIUM",
            "rate",
            "log",
            "queued"
        ]),
        json!([
            "2023-11-14T22:14:01.000000Z",
            "1700000041000000-4",
            "cache-1",
            "alert",
            "compute-2",
            "signed",
            null,
            "MEDIUM",
            "rate",
            "log",
            "queued"
        ]),
        // After web-1 left, compute-1 holds 5 VMs of the rules (db-1, mig-1, -2, -5, -6)
        // and compute-3 3 (api-1, api-2, web-1): the fewest wins.
        json!([
            "2023-11-14T22:14:02.000000Z",
            "1700000042000000-5",
            "backup-1",
            "migrate",
            "compute-2",
            "signed",
            "compute-3",
            "HIGH",
            "volume",
            "log",
            "queued"
        ]),
    ];
    assert_eq!(actions, expected);
    let s = summary(&ev);
    assert_eq!(
        s["actions"],
        json!({"queued": 5, "dropped": 0, "held": 0, "delivered": 5, "failed": 0, "retries": 0, "pending": 0, "resumed": 0})
    );
}

#[test]
fn basic_scenario_vm_stats_equal_the_generator_ground_truth() {
    // Ground truth from the frames the generator wrote, by their Ethernet
    // addresses (independent of vmsentry's decoder).
    let frames = vmsentry::synth::scenario::basic();
    let mut truth: BTreeMap<String, [u64; 4]> = BTreeMap::new();
    for f in &frames {
        if f.data.len() < 14 {
            continue;
        }
        let mac = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":");
        let (dst, src) = (&f.data[0..6], &f.data[6..12]);
        if src[0] & 1 == 0 {
            let t = truth.entry(mac(src)).or_default();
            t[0] += u64::from(f.orig_len);
            t[1] += 1;
        }
        if dst[0] & 1 == 0 {
            let t = truth.entry(mac(dst)).or_default();
            t[2] += u64::from(f.orig_len);
            t[3] += 1;
        }
    }
    let rules = rules_dir();
    let ev = replay(rules.path(), 2, &[capture("basic.pcap")]);
    let got: BTreeMap<String, [u64; 4]> = of_type(&ev, "vm_stats")
        .into_iter()
        .map(|e| {
            let n = |k: &str| e[k].as_u64().unwrap();
            (e["vm"].as_str().unwrap().to_string(), [n("tx_bytes"), n("tx_packets"), n("rx_bytes"), n("rx_packets")])
        })
        .collect();
    assert_eq!(got, truth);
    let stats = of_type(&ev, "vm_stats");
    let gw = stats.iter().find(|e| e["vm"] == "52:54:00:ff:00:01").unwrap();
    assert_eq!((gw["known"].clone(), gw["vm_name"].clone()), (json!(false), Value::Null));
    let backup = stats.iter().find(|e| e["vm_name"] == "backup-1").unwrap();
    assert_eq!(backup["level"], "HIGH");

    let s = summary(&ev);
    assert_eq!(s["packets"].as_u64(), Some(frames.len() as u64));
    assert_eq!(s["bytes"].as_u64(), Some(frames.iter().map(|f| u64::from(f.orig_len)).sum()));
    assert_eq!(s["vms"], 7);
    assert_eq!(s["known_vms"], 6);
    assert_eq!(s["windows"], 70);
    assert_eq!(s["duration_s"], 69.95);
}

#[test]
fn malformed_frames_are_counted_by_kind_and_snaplen_cuts_are_not_errors() {
    let rules = rules_dir();
    let ev = replay(rules.path(), 1, &[capture("basic.pcap")]);
    let s = summary(&ev);
    assert_eq!(
        s["decode_errors_by_kind"],
        json!({"arp": 1, "ip_length": 1, "ipv4": 1, "link_truncated": 1, "tcp": 1, "udp": 1, "vlan": 1})
    );
    assert_eq!(s["decode_errors"], 7);
    // 20 TCP frames cut inside the TCP header; the 64-byte captures of
    // 1500-byte frames keep whole headers and are not counted.
    assert_eq!(s["snaplen_cut"], 20);
}

#[test]
fn events_are_identical_for_every_thread_count() {
    let rules = rules_dir();
    // In time order: a file earlier than the open window would be late (not measured).
    let inputs = vec![
        capture("third_party/tcpdump__arp-oobr.pcap"),
        capture("third_party/zeek__wikipedia.pcap"),
        capture("basic.pcap"),
    ];
    let one = stable(replay(rules.path(), 1, &inputs));
    // Migrations: evidence from every shard, merged. (Fresh rules each run:
    // tokens are single-use.)
    let mig = |n: usize| {
        let r = with_rules("");
        stable(replay(r.path(), n, &[capture("migration-vxlan.pcap")]))
    };
    let m1 = mig(1);
    assert_eq!(of_type(&m1, "migration").len(), 8);
    for n in [2, 3, 5] {
        assert_eq!(mig(n), m1, "migrations, --threads {n}");
    }
    assert!(one.len() > 20);
    for n in [2, 3, 4, 8] {
        assert_eq!(stable(replay(rules.path(), n, &inputs)), one, "--threads {n}");
    }
    // RTT samples come from every shard; their order must not depend on it.
    let inputs = vec![
        capture("third_party/zeek__icmp_dot1q.pcap"),
        capture("third_party/zeek__wikipedia.pcap"),
        capture("rtt.pcap"),
    ];
    let one = stable(replay_with(rules.path(), 1, &["--rtt-samples"], &inputs));
    // 21 from rtt.pcap, 4 echoes from icmp_dot1q, 46 (8 handshakes, the rest timestamps) from wikipedia.
    assert_eq!(of_type(&one, "rtt_sample").len(), 71);
    for n in [2, 3, 5] {
        assert_eq!(stable(replay_with(rules.path(), n, &["--rtt-samples"], &inputs)), one, "--threads {n}");
    }
}

#[test]
fn several_files_replay_in_order_and_add_up() {
    let rules = rules_dir();
    let a = capture("third_party/zeek__icmp__icmp-ping.pcap");
    let b = capture("third_party/zeek__snap-arp.pcapng");
    let both = replay(rules.path(), 2, &[a.clone(), b.clone()]);
    let pa = summary(&replay(rules.path(), 2, &[a]))["packets"].as_u64().unwrap();
    let pb = summary(&replay(rules.path(), 2, &[b]))["packets"].as_u64().unwrap();
    assert_eq!(summary(&both)["packets"].as_u64(), Some(pa + pb));
    assert_eq!((pa, pb), (4, 4));
}

#[test]
fn shipped_scenario_captures_are_what_the_generator_writes() {
    let d = tempfile::tempdir().unwrap();
    vmsentry::synth::scenario::write_all(d.path()).unwrap();
    for (name, _) in vmsentry::synth::scenario::ALL {
        let fresh = std::fs::read(d.path().join(name)).unwrap();
        let shipped = std::fs::read(capture(name)).unwrap();
        assert!(
            fresh == shipped,
            "{name} differs from the generator's output: run `cargo run -p vmsentry-synth -- scenarios captures`"
        );
    }
}

/// Totals and decode outcomes of the real captures. Packets and bytes are
/// what `tshark -r FILE -T fields -e frame.len` reports (re-checked live by
/// `third_party_totals_equal_tshark`); decode errors agree with the
/// malformed layers tshark flags (MANIFEST.tsv's `malformed[...]`) where
/// they are layers vmsentry decodes.
const THIRD_PARTY: &[(&str, u64, u64, &str, u64)] = &[
    ("sv__arp__detect-arp-04-vxlan__vxlan-arp.pcap", 2, 184, "", 0),
    ("sv__bug-1450-04__tls_DER-incomplete-header.pcap", 6, 4915, "", 0),
    ("sv__dns__dns-single-request__input.pcap", 2, 158, "", 0),
    ("sv__geneve-decoder__input.pcap", 10, 1368, "", 0),
    ("sv__http-mime-truncated__input.pcap", 2696, 2672299, "", 0),
    ("sv__tcp-fastopen-09__tcp-opt-invalid-warning.pcap", 1, 82, "", 0),
    ("sv__udp-5379__udp-len-invalid__input.pcap", 1, 134, "udp=1", 0),
    ("sv__vxlan-decoder-02__vxlan.pcap", 10, 1368, "", 0),
    ("sv__vxlan-decoder-03__vxlan.pcap", 100, 26048, "", 0),
    ("tcpdump__802.1ad_QinQ.pcap", 2, 128, "", 0),
    ("tcpdump__arp-oobr.pcap", 2282, 136380, "arp=82", 0),
    ("tcpdump__bigtcp-ipv4-geneve-ipv4.pcap", 1, 80116, "", 0),
    ("tcpdump__bigtcp-ipv4-vxlan-ipv4.pcap", 1, 80116, "", 0),
    ("tcpdump__bigtcp-ipv6-geneve-ipv6.pcap", 1, 80156, "", 0),
    ("tcpdump__bigtcp-ipv6-vxlan-ipv6.pcap", 1, 80156, "", 0),
    ("tcpdump__empty.pcap", 0, 0, "", 0),
    ("tcpdump__geneve.pcap", 39, 9280, "", 0),
    ("tcpdump__gso-ipv4-geneve-ipv4.pcap", 1, 7106, "", 0),
    ("tcpdump__gso-ipv4-vxlan-ipv4.pcap", 1, 7106, "", 0),
    ("tcpdump__gso-ipv6-geneve-ipv6.pcap", 1, 6946, "", 0),
    ("tcpdump__gso-ipv6-vxlan-ipv6.pcap", 1, 4230, "", 0),
    ("tcpdump__ipv4_invalid_length.pcap", 1, 33, "ipv4=1", 0),
    ("tcpdump__isup.pcap", 6, 584, "", 0),
    ("tcpdump__tcp_header_heapoverflow.pcap", 1, 262144, "", 1),
    ("tcpdump__vxlan_port_8472.pcap", 10, 1368, "", 0),
    ("zeek__http__get-to-ssh-server.pcap", 9, 1230, "", 0),
    ("zeek__icmp__icmp-ping.pcap", 4, 392, "", 0),
    ("zeek__icmp__icmp6-ping.pcap", 8, 752, "", 0),
    ("zeek__icmp_dot1q.pcap", 15, 1446, "", 0),
    ("zeek__linux_dlt_sll2.pcap", 6, 552, "", 0),
    ("zeek__port4242.pcap", 8, 716, "", 0),
    ("zeek__q-in-q.pcap", 5, 856, "", 0),
    ("zeek__snap-arp.pcapng", 4, 240, "", 0),
    ("zeek__tcp__options.pcap", 4, 396, "", 0),
    ("zeek__trunc__trunc-hdr.pcap", 1, 78, "", 1),
    ("zeek__tunnels__geneve-arp.pcap", 1, 78, "", 0),
    ("zeek__tunnels__geneve-ipv6.pcap", 2, 206, "", 0),
    ("zeek__tunnels__geneve-many-options.pcap", 10, 2594, "", 0),
    ("zeek__tunnels__geneve-truncated.pcapng", 1, 156, "", 1),
    ("zeek__tunnels__geneve-vxlan-dns-truncated.pcap", 2, 384, "", 0),
    ("zeek__tunnels__vxlan-encapsulated-http.pcap", 12, 10707, "", 0),
    ("zeek__tunnels__vxlan-inner-tcp-bad-checksum.pcap", 1, 104, "", 0),
    ("zeek__tunnels__vxlan-triple-v2.pcap", 1, 221, "", 0),
    ("zeek__wikipedia.pcap", 136, 25260, "", 0),
];

fn errors_string(s: &Value) -> String {
    s["decode_errors_by_kind"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn third_party_captures_replay_without_panic_with_exact_totals() {
    let rules = rules_dir();
    let listed: std::collections::BTreeSet<String> = std::fs::read_dir(capture("third_party"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".pcap") || n.ends_with(".pcapng"))
        .collect();
    let table: std::collections::BTreeSet<String> = THIRD_PARTY.iter().map(|t| t.0.to_string()).collect();
    assert_eq!(listed, table, "every shipped third-party capture is in the table");
    for &(name, packets, bytes, errors, cut) in THIRD_PARTY {
        let ev = replay(rules.path(), 2, &[capture(&format!("third_party/{name}"))]);
        let s = summary(&ev);
        assert_eq!(
            (
                s["packets"].as_u64().unwrap(),
                s["bytes"].as_u64().unwrap(),
                errors_string(s),
                s["snaplen_cut"].as_u64().unwrap()
            ),
            (packets, bytes, errors.to_string(), cut),
            "{name}"
        );
    }
}

/// tshark is required when CI=true (`.ci/run` installs it); elsewhere the
/// test says it skipped.
fn tshark() -> Option<&'static str> {
    let ok = Command::new("tshark").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok && std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but tshark is not installed: .ci/run installs it");
    }
    ok.then_some("tshark")
}

#[test]
fn third_party_totals_equal_tshark() {
    let Some(tshark) = tshark() else {
        eprintln!("SKIPPED: tshark not installed");
        return;
    };
    for &(name, packets, bytes, _, _) in THIRD_PARTY {
        let p = capture(&format!("third_party/{name}"));
        let out = Command::new(tshark).args(["-r"]).arg(&p).args(["-T", "fields", "-e", "frame.len"]).output().unwrap();
        let lens: Vec<u64> = String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().parse().unwrap()).collect();
        assert_eq!((lens.len() as u64, lens.iter().sum::<u64>()), (packets, bytes), "tshark on {name}");
    }
    // And the scenario capture, whose frames tshark reads the same way.
    let out = Command::new(tshark)
        .arg("-r")
        .arg(capture("basic.pcap"))
        .args(["-T", "fields", "-e", "frame.len"])
        .output()
        .unwrap();
    let lens: Vec<u64> = String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().parse().unwrap()).collect();
    let rules = rules_dir();
    let s = summary(&replay(rules.path(), 2, &[capture("basic.pcap")])).clone();
    assert_eq!((Some(lens.len() as u64), Some(lens.iter().sum::<u64>())), (s["packets"].as_u64(), s["bytes"].as_u64()));
}

#[test]
fn missing_or_non_pcap_input_exits_2_with_a_message() {
    let rules = rules_dir();
    let r = rules.path().to_str().unwrap();
    let out = vmsentry(&["replay", "--rules", r, "/nonexistent/x.pcap"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "vmsentry: /nonexistent/x.pcap: no such file\n");
    assert!(out.stdout.is_empty(), "nothing runs before inputs are checked");
    let toml = rules.path().join("vmsentry.toml");
    let out = vmsentry(&["replay", "--rules", r, toml.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vmsentry.toml: not a pcap or pcapng file"), "{err}");
}

#[test]
fn bad_rules_exit_2_with_file_line_col() {
    let rules = rules_dir();
    let p = rules.path().join("vmsentry.toml");
    let text = std::fs::read_to_string(&p).unwrap().replace("high_bps   = 40_000_000", "high_bps   = 4_000_000");
    std::fs::write(&p, text).unwrap();
    for cmd in ["check", "replay"] {
        let mut args = vec![cmd, "--rules", rules.path().to_str().unwrap()];
        let pcap = capture("basic.pcap");
        if cmd == "replay" {
            args.push(pcap.to_str().unwrap());
        }
        let out = vmsentry(&args);
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("vmsentry: {}:15:14: medium_bps must be below high_bps (got 8000000 >= 4000000)\n", p.display()),
        );
    }
}

#[test]
fn group_readable_key_is_refused() {
    let rules = rules_dir();
    std::fs::set_permissions(rules.path().join("cluster.key"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = vmsentry(&["check", "--rules", rules.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":9:12: key file") && err.contains("is readable by group or others (mode 640)"), "{err}");
}

#[test]
fn check_warns_about_unsigned_hypervisors_and_exits_0() {
    let rules = rules_dir();
    let out = vmsentry(&["check", "--rules", rules.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert_eq!(
        lines[0],
        "warning: hypervisor `compute-9`: signature does not verify for MAC 52:54:00:aa:00:09: it is unsigned for that MAC"
    );
    // The verdict goes to stdout.
    let ok = String::from_utf8_lossy(&out.stdout);
    assert!(ok.trim_end().ends_with("OK: cluster `lab`, 5 hypervisors (4 signed), 19 VMs"), "{ok}");
}

/// `check` reads the rules, not migration.tokens_dir: only a command that
/// builds a detector (replay, live) opens the tokens' used-nonces file.
#[test]
fn check_does_not_open_the_tokens_directory() {
    let rules = rules_dir();
    // An unreadable used-tokens file (a directory): opening the store says so.
    std::fs::create_dir_all(rules.path().join("tokens").join("used-tokens")).unwrap();
    let out = vmsentry(&["check", "--rules", rules.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("used-tokens") && !err.contains("not remembered"), "{err}");
    let pcap = capture("basic.pcap");
    let out = vmsentry(&["replay", "--rules", rules.path().to_str().unwrap(), pcap.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("used-tokens") && err.contains("used tokens are not remembered"), "{err}");
}

#[test]
fn sign_prints_the_signature_the_shipped_rules_carry() {
    let rules = rules_dir();
    let key = rules.path().join("cluster.key");
    let out = vmsentry(&[
        "sign",
        "--key-file",
        key.to_str().unwrap(),
        "--cluster",
        "lab",
        "--id",
        "compute-1",
        "--mac",
        "52:54:00:AA:00:01",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "04673ea8c340c8549614fd3a0d9b9b610f9099e59af65123383cb5d39e60a0c0\n"
    );
    let out =
        vmsentry(&["sign", "--key-file", key.to_str().unwrap(), "--cluster", "lab", "--id", "x", "--mac", "nope"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn speed_paces_the_replay_by_packet_time() {
    // Two seconds of packet time at --speed 4 take at least half a second.
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("two-seconds.pcap");
    let a = vmsentry::synth::mac("02:00:00:00:00:01");
    let b = vmsentry::synth::mac("02:00:00:00:00:02");
    let mut frames = vmsentry::synth::stream(vmsentry::synth::scenario::T0_US, 2, 50, |_, ts| {
        vmsentry::synth::Frame::whole(
            ts,
            vmsentry::synth::frames::udp4(a, b, [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 1, 2, 20),
        )
    });
    vmsentry::synth::write_pcap(&p, &mut frames).unwrap();
    let rules = rules_dir();
    let t = std::time::Instant::now();
    let out = vmsentry(&["replay", "--rules", rules.path().to_str().unwrap(), "--speed", "4", p.to_str().unwrap()]);
    assert!(out.status.success());
    let took = t.elapsed().as_secs_f64();
    assert!(took >= 0.45, "--speed 4 over 1.98 s of packet time took only {took:.3} s");
    let out = vmsentry(&["replay", "--speed", "0", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "--speed must be positive");
}

// ---- RTT -------------------------------------------------------------------

fn samples(events: &[Value]) -> Vec<Value> {
    of_type(events, "rtt_sample").into_iter().map(|e| json!([e["ts"], e["vm"], e["rtt_ms"], e["kind"]])).collect()
}

#[test]
fn rtt_scenario_gives_exact_samples_of_every_kind() {
    let rules = rules_dir();
    let ev = replay_with(rules.path(), 2, &["--rtt-samples"], &[capture("rtt.pcap")]);
    let (a1, a2, gw) = ("fa:16:3e:00:00:07", "fa:16:3e:00:00:08", "52:54:00:ff:00:01");
    let mut expected = vec![];
    for k in 0..5 {
        expected.push(json!([format!("2023-11-14T22:13:2{k}.102000Z"), a1, 2.0, "echo"]));
    }
    // From the retransmitted SYN (6 s), not the first (5 s).
    expected.push(json!(["2023-11-14T22:13:26.003000Z", a1, 3.0, "handshake"]));
    expected.push(json!(["2023-11-14T22:13:27.004000Z", a1, 4.0, "timestamp"]));
    expected.push(json!(["2023-11-14T22:13:27.005500Z", gw, 1.5, "timestamp"]));
    // The retransmitted segment gives no sample (Karn).
    expected.push(json!(["2023-11-14T22:13:28.006000Z", a2, 6.0, "ack"]));
    for k in 0..6 {
        expected.push(json!([format!("2023-11-14T22:13:30.{k}80000Z"), a1, 80.0, "echo"]));
    }
    for k in 0..5 {
        expected.push(json!([format!("2023-11-14T22:13:32.{k}90000Z"), a2, 90.0, "echo"]));
    }
    expected.push(json!(["2023-11-14T22:13:35.902000Z", a2, 2.0, "echo"]));
    assert_eq!(samples(&ev), expected);
    let s = summary(&ev);
    assert_eq!(
        s["rtt"],
        json!({"samples": 21, "dropped": 0, "flow_evictions": 0, "probe_evictions": 0, "probe_timeouts": 0})
    );

    let stats: BTreeMap<String, Value> = of_type(&ev, "vm_stats")
        .into_iter()
        .map(|e| (e["vm"].as_str().unwrap().to_string(), json!([e["rtt_samples"], e["rtt_min_ms"], e["rtt_max_ms"]])))
        .collect();
    assert_eq!(stats[a1], json!([13, 2.0, 80.0]));
    assert_eq!(stats[a2], json!([7, 2.0, 90.0]));
    assert_eq!(stats[gw], json!([1, 1.5, 1.5]));
}

#[test]
fn rtt_peaks_above_the_limit_raise_the_level_and_exactly_at_it_do_not() {
    let rules = rules_dir();
    let ev = replay(rules.path(), 1, &[capture("rtt.pcap")]);
    assert!(of_type(&ev, "rtt_sample").is_empty(), "samples only with --rtt-samples");
    let peaks = of_type(&ev, "rtt_peaks");
    assert_eq!(peaks.len(), 1, "api-2's 5 peaks are not more than max_peaks = 5");
    // Baseline: five 2 ms echoes, then 3 ms and 4 ms with weight 1/8 each:
    // 2 + (3 - 2)/8 = 2.125, then 2.125 + (4 - 2.125)/8 = 2.359375; the 80 ms peaks do not move it.
    let p = peaks[0];
    assert_eq!(
        json!([
            p["ts"],
            p["vm_name"],
            p["window_start"],
            p["peaks"],
            p["samples"],
            p["min_ms"],
            p["mean_ms"],
            p["max_ms"],
            p["p50_ms"],
            p["p99_ms"],
            p["peak_ms"],
            p["baseline_ms"],
            p["hypervisor"]
        ]),
        json!([
            "2023-11-14T22:13:31.000000Z",
            "api-1",
            "2023-11-14T22:13:30.000000Z",
            6,
            6,
            80.0,
            80.0,
            80.0,
            80.0,
            80.0,
            50.0,
            2.359375,
            "compute-3"
        ])
    );
    let levels: Vec<Value> = of_type(&ev, "level")
        .into_iter()
        .map(|e| json!([e["ts"], e["vm_name"], e["from"], e["to"], e["reason"], e["direction"]]))
        .collect();
    assert_eq!(
        levels,
        vec![
            json!(["2023-11-14T22:13:31.000000Z", "api-1", "LOW", "MEDIUM", "rtt", null]),
            json!(["2023-11-14T22:13:34.000000Z", "api-1", "MEDIUM", "LOW", "rtt", null]),
        ]
    );
    let actions: Vec<Value> = of_type(&ev, "action")
        .into_iter()
        .map(|e| json!([e["vm_name"], e["action"], e["reason"], e["level"]]))
        .collect();
    assert_eq!(actions, vec![json!(["api-1", "alert", "rtt", "MEDIUM"])]);
}

/// ICMP echo samples of the real captures: (file, [(answer time, rtt µs)]),
/// equal to tshark's `icmp.resptime` / `icmpv6.resptime` (re-checked live).
const ECHO_SAMPLES: &[(&str, &[(&str, i64)])] = &[
    ("zeek__icmp__icmp-ping.pcap", &[("2012-04-11T19:49:23.981906Z", 3951), ("2012-04-11T19:49:24.983033Z", 3915)]),
    (
        "zeek__icmp__icmp6-ping.pcap",
        &[
            ("2012-01-23T20:02:27.373793Z", 35552),
            ("2012-01-23T20:02:28.373722Z", 34828),
            ("2012-01-23T20:02:29.374970Z", 35023),
            ("2012-01-23T20:02:30.374920Z", 34920),
        ],
    ),
    (
        "zeek__icmp_dot1q.pcap",
        &[
            ("2008-06-20T10:21:12.994879Z", 950),
            ("2008-06-20T10:21:12.995686Z", 294),
            ("2008-06-20T10:21:12.996469Z", 294),
            ("2008-06-20T10:21:12.997261Z", 301),
        ],
    ),
];

/// SYN to SYN/ACK of the untunneled real captures, sorted, in µs.
const HANDSHAKE_SAMPLES: &[(&str, &[i64])] = &[
    ("sv__http-mime-truncated__input.pcap", &[98400]),
    ("zeek__http__get-to-ssh-server.pcap", &[797]),
    ("zeek__port4242.pcap", &[30]),
    ("zeek__tcp__options.pcap", &[190688]),
    ("zeek__wikipedia.pcap", &[59132, 59257, 59315, 59494, 59835, 59993, 60610, 60813]),
    // Inside VXLAN and Geneve.
    ("sv__vxlan-decoder-03__vxlan.pcap", &[44, 79, 96, 111]),
    ("zeek__tunnels__vxlan-encapsulated-http.pcap", &[217169]),
    ("tcpdump__geneve.pcap", &[48]),
    ("zeek__tunnels__geneve-many-options.pcap", &[203571]),
];

fn kind_samples_us(ev: &[Value], kind: &str) -> Vec<(String, i64)> {
    of_type(ev, "rtt_sample")
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| (e["ts"].as_str().unwrap().to_string(), (e["rtt_ms"].as_f64().unwrap() * 1000.0).round() as i64))
        .collect()
}

#[test]
fn rtt_echo_and_handshake_samples_of_real_captures_are_exact() {
    let rules = rules_dir();
    for (name, want) in ECHO_SAMPLES {
        let ev = replay_with(rules.path(), 2, &["--rtt-samples"], &[capture(&format!("third_party/{name}"))]);
        let got = kind_samples_us(&ev, "echo");
        let want: Vec<(String, i64)> = want.iter().map(|(t, us)| (t.to_string(), *us)).collect();
        assert_eq!(got, want, "{name}");
    }
    for (name, want) in HANDSHAKE_SAMPLES {
        let ev = replay_with(rules.path(), 2, &["--rtt-samples"], &[capture(&format!("third_party/{name}"))]);
        let mut got: Vec<i64> = kind_samples_us(&ev, "handshake").into_iter().map(|s| s.1).collect();
        got.sort_unstable();
        assert_eq!(got, want.to_vec(), "{name}");
    }
}

/// tshark's answer for one capture: ICMP response times keyed by answer time,
/// and SYN→SYN/ACK times (from the last SYN of each stream), in µs.
fn tshark_rtts(tshark: &str, p: &Path) -> (Vec<(String, i64)>, Vec<i64>) {
    let out = Command::new(tshark)
        .arg("-r")
        .arg(p)
        .args([
            "-Y",
            "icmp.resptime || icmpv6.resptime",
            "-T",
            "fields",
            "-e",
            "frame.time_epoch",
            "-e",
            "icmp.resptime",
            "-e",
            "icmpv6.resptime",
        ])
        .output()
        .unwrap();
    let mut echo = vec![];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let t: f64 = f[0].parse().unwrap();
        let ms: f64 = if f[1].is_empty() { f[2].parse().unwrap() } else { f[1].parse().unwrap() };
        let us = (t * 1e6).round() as i64;
        let ts = vmsentry::vocab::PacketTime::from_micros(us).rfc3339();
        echo.push((ts, (ms * 1000.0).round() as i64));
    }
    let out = Command::new(tshark)
        .arg("-r")
        .arg(p)
        .args([
            "-Y",
            "tcp.flags.syn == 1",
            "-T",
            "fields",
            "-e",
            "frame.time_epoch",
            "-e",
            "tcp.flags.ack",
            "-e",
            "tcp.stream",
        ])
        .output()
        .unwrap();
    let mut syn: BTreeMap<String, i64> = BTreeMap::new();
    let mut hs = vec![];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let t = (f[0].parse::<f64>().unwrap() * 1e6).round() as i64;
        if f[1] == "0" || f[1] == "False" {
            syn.insert(f[2].to_string(), t);
        } else if let Some(s) = syn.remove(f[2]) {
            hs.push(t - s);
        }
    }
    hs.sort_unstable();
    (echo, hs)
}

/// The ACK samples (TCP without timestamps) of the real capture that has
/// them, a Windows client's HTTP download, each equal tshark's
/// `tcp.analysis.ack_rtt` on the same ACK frame. tshark times every ACK that
/// covers new data, from the newest segment it covers; vmsentry only an ACK
/// equal to a segment's end whose sequence space was sent once (Karn), from
/// the probes a direction keeps (8): 770 of tshark's 821 ACKs. (It timed 758
/// when a full probe list pushed out its oldest.)
#[test]
fn rtt_ack_samples_equal_tshark_ack_rtt() {
    let Some(tshark) = tshark() else {
        eprintln!("SKIPPED: tshark not installed");
        return;
    };
    let p = capture("third_party/sv__http-mime-truncated__input.pcap");
    let out = Command::new(tshark)
        .arg("-r")
        .arg(&p)
        .args(["-Y", "tcp.analysis.ack_rtt", "-T", "fields"])
        .args(["-e", "frame.time_epoch", "-e", "ip.src", "-e", "tcp.srcport", "-e", "tcp.analysis.ack_rtt"])
        .output()
        .unwrap();
    let mut tshark_rtt: BTreeMap<(String, String, u64), i64> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let us = (f[0].parse::<f64>().unwrap() * 1e6).round() as i64;
        let ts = vmsentry::vocab::PacketTime::from_micros(us).rfc3339();
        let rtt = (f[3].parse::<f64>().unwrap() * 1e6).round() as i64;
        tshark_rtt.insert((ts, f[1].to_string(), f[2].parse().unwrap()), rtt);
    }
    let rules = rules_dir();
    let ev = replay_with(rules.path(), 2, &["--rtt-samples"], &[p]);
    let acks: Vec<&Value> = of_type(&ev, "rtt_sample").into_iter().filter(|e| e["kind"] == "ack").collect();
    for e in &acks {
        let key = (
            e["ts"].as_str().unwrap().to_string(),
            e["src"].as_str().unwrap().to_string(),
            e["src_port"].as_u64().unwrap(),
        );
        let ours = (e["rtt_ms"].as_f64().unwrap() * 1000.0).round() as i64;
        assert_eq!(tshark_rtt.get(&key), Some(&ours), "{e}");
    }
    assert_eq!((acks.len(), tshark_rtt.len()), (770, 821));
}

#[test]
fn rtt_samples_equal_tshark() {
    let Some(tshark) = tshark() else {
        eprintln!("SKIPPED: tshark not installed");
        return;
    };
    let mut compared = 0;
    for (name, echo) in ECHO_SAMPLES {
        let (t_echo, _) = tshark_rtts(tshark, &capture(&format!("third_party/{name}")));
        let want: Vec<(String, i64)> = echo.iter().map(|(t, us)| (t.to_string(), *us)).collect();
        assert_eq!(t_echo, want, "tshark icmp.resptime on {name}");
        compared += want.len();
    }
    for (name, hs) in HANDSHAKE_SAMPLES {
        let (_, t_hs) = tshark_rtts(tshark, &capture(&format!("third_party/{name}")));
        assert_eq!(t_hs, hs.to_vec(), "tshark SYN to SYN/ACK on {name}");
        compared += hs.len();
    }
    assert_eq!(compared, 10 + 19);
    // And the scenario: tshark agrees on every echo and handshake.
    let rules = rules_dir();
    let ev = replay_with(rules.path(), 1, &["--rtt-samples"], &[capture("rtt.pcap")]);
    let (t_echo, t_hs) = tshark_rtts(tshark, &capture("rtt.pcap"));
    assert_eq!(kind_samples_us(&ev, "echo"), t_echo);
    assert_eq!(kind_samples_us(&ev, "handshake").into_iter().map(|s| s.1).collect::<Vec<_>>(), t_hs);
}

// ---- Tunnels ---------------------------------------------------------------

/// Per unicast MAC of the innermost Ethernet header: [tx bytes, tx packets,
/// rx bytes, rx packets], bytes being the frame's length on the wire from
/// that header on. From tshark's PDML (the last `eth` of each packet, its
/// `pos`, and `frame.len`).
fn tshark_inner_counts(tshark: &str, p: &Path) -> BTreeMap<String, [u64; 4]> {
    let out = Command::new(tshark).arg("-r").arg(p).args(["-T", "pdml"]).output().unwrap();
    let pdml = String::from_utf8_lossy(&out.stdout);
    let attr = |s: &str, key: &str| -> Option<String> {
        let i = s.find(&format!("{key}=\""))? + key.len() + 2;
        Some(s[i..].split('"').next()?.to_string())
    };
    let mut truth: BTreeMap<String, [u64; 4]> = BTreeMap::new();
    for pkt in pdml.split("<packet>").skip(1) {
        let flen: u64 = pkt
            .lines()
            .find(|l| l.contains("name=\"frame.len\""))
            .and_then(|l| attr(l, "show"))
            .unwrap()
            .parse()
            .unwrap();
        let Some(at) = pkt.rfind("<proto name=\"eth\"") else { continue };
        let head = pkt[at..].lines().next().unwrap();
        let pos: u64 = attr(head, "pos").unwrap().parse().unwrap();
        let field = |name: &str| {
            pkt[at..].lines().find(|l| l.contains(&format!("name=\"{name}\""))).and_then(|l| attr(l, "show")).unwrap()
        };
        let len = flen - pos;
        let unicast = |m: &str| u8::from_str_radix(&m[..2], 16).unwrap() & 1 == 0;
        let (src, dst) = (field("eth.src"), field("eth.dst"));
        if unicast(&src) {
            let t = truth.entry(src).or_default();
            t[0] += len;
            t[1] += 1;
        }
        if unicast(&dst) {
            let t = truth.entry(dst).or_default();
            t[2] += len;
            t[3] += 1;
        }
    }
    truth
}

fn vm_counts(ev: &[Value]) -> BTreeMap<String, [u64; 4]> {
    of_type(ev, "vm_stats")
        .into_iter()
        .map(|e| {
            let n = |k: &str| e[k].as_u64().unwrap();
            (e["vm"].as_str().unwrap().to_string(), [n("tx_bytes"), n("tx_packets"), n("rx_bytes"), n("rx_packets")])
        })
        .collect()
}

/// The tunneled real captures whose inner frames tshark decodes. The four
/// BIG TCP captures are left out: their outer UDP length is 0, which tshark
/// calls malformed and does not decode further, while vmsentry accepts it
/// (BIG TCP / jumbograms, RFC 2675) and counts the inner frame.
const TUNNELED: &[&str] = &[
    "sv__arp__detect-arp-04-vxlan__vxlan-arp.pcap",
    "sv__vxlan-decoder-02__vxlan.pcap",
    "sv__vxlan-decoder-03__vxlan.pcap",
    "tcpdump__gso-ipv4-vxlan-ipv4.pcap",
    "tcpdump__gso-ipv6-vxlan-ipv6.pcap",
    "tcpdump__vxlan_port_8472.pcap",
    "zeek__tunnels__geneve-vxlan-dns-truncated.pcap",
    "zeek__tunnels__vxlan-encapsulated-http.pcap",
    "zeek__tunnels__vxlan-inner-tcp-bad-checksum.pcap",
    "zeek__tunnels__vxlan-triple-v2.pcap",
    "sv__geneve-decoder__input.pcap",
    "tcpdump__geneve.pcap",
    "tcpdump__gso-ipv4-geneve-ipv4.pcap",
    "tcpdump__gso-ipv6-geneve-ipv6.pcap",
    "zeek__tunnels__geneve-arp.pcap",
    "zeek__tunnels__geneve-ipv6.pcap",
    "zeek__tunnels__geneve-many-options.pcap",
    "zeek__tunnels__geneve-truncated.pcapng",
];

#[test]
fn tunneled_captures_count_inner_macs_as_tshark_does() {
    let Some(tshark) = tshark() else {
        eprintln!("SKIPPED: tshark not installed");
        return;
    };
    let rules = rules_dir();
    let mut frames = 0;
    for name in TUNNELED {
        let p = capture(&format!("third_party/{name}"));
        let truth = tshark_inner_counts(tshark, &p);
        let ev = replay(rules.path(), 2, &[p]);
        assert_eq!(vm_counts(&ev), truth, "{name}");
        frames += truth.values().map(|t| t[1]).sum::<u64>();
    }
    assert!(frames > 150, "{frames}");
}

#[test]
fn vxlan_inner_frame_is_the_vm_layer() {
    // suricata-verify's vxlan-decoder-03: 100 frames between two hypervisors
    // carrying one VM's TCP flows; the VM layer is the inner frame.
    let rules = rules_dir();
    let ev = replay(rules.path(), 1, &[capture("third_party/sv__vxlan-decoder-03__vxlan.pcap")]);
    let counts = vm_counts(&ev);
    let want: BTreeMap<String, [u64; 4]> = [
        ("02:29:23:74:c7:7d".to_string(), [10562, 53, 10486, 47]),
        ("02:85:69:c2:ab:02".to_string(), [10486, 47, 10562, 53]),
    ]
    .into();
    assert_eq!(counts, want, "only the two inner MACs; the outer ones are the hypervisors'");
    // Inner bytes are the wire bytes less 50 bytes of outer headers per frame
    // (Ethernet 14, IPv4 20, UDP 8, VXLAN 8).
    let s = summary(&ev);
    assert_eq!(s["bytes"].as_u64().unwrap() - 100 * 50, 10562 + 10486);
}

// ---- Migrations ------------------------------------------------------------

/// (ts, vm, from, to, via, signature, authorization, streams, bytes, total ms, downtime ms)
fn migrations(ev: &[Value]) -> Vec<Value> {
    of_type(ev, "migration")
        .into_iter()
        .map(|e| {
            json!([
                e["ts"],
                e["vm_name"],
                e["from_hypervisor"],
                e["to_hypervisor"],
                e["via"],
                e["signature"],
                e["authorization"],
                e["streams"],
                e["bytes"],
                e["total_ms"],
                e["downtime_ms"]
            ])
        })
        .collect()
}

fn rises(ev: &[Value]) -> Vec<Value> {
    of_type(ev, "level")
        .into_iter()
        .filter(|e| e["from"] == "LOW")
        .map(|e| json!([e["ts"], e["vm_name"], e["to"], e["reason"], e["hypervisor"]]))
        .collect()
}

fn actions(ev: &[Value]) -> Vec<Value> {
    of_type(ev, "action")
        .into_iter()
        .map(|e| json!([e["ts"], e["vm_name"], e["action"], e["reason"], e["destination"]]))
        .collect()
}

fn with_rules(extra: &str) -> tempfile::TempDir {
    let rules = rules_dir();
    let p = rules.path().join("vmsentry.toml");
    let mut text = std::fs::read_to_string(&p).unwrap();
    text.push_str(extra);
    std::fs::write(&p, text).unwrap();
    let tokens = rules.path().join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    std::fs::copy(root().join("rules/tokens/demo.tokens"), tokens.join("demo.tokens")).unwrap();
    rules
}

const T: &str = "2023-11-14T22:13:";

#[test]
fn migrations_over_vxlan_are_seen_measured_and_checked() {
    let rules = with_rules("");
    let ev = replay(rules.path(), 2, &[capture("migration-vxlan.pcap")]);
    let want = vec![
        // Announced, with its stream (195 x 1502 bytes from 3.0 s), 100 ms after its last frame at compute-1.
        json!([
            format!("{T}25.000000Z"),
            "mig-1",
            "compute-1",
            "compute-2",
            "rarp",
            "valid",
            "granted",
            1,
            292890,
            1940.0,
            100.0
        ]),
        json!([
            format!("{T}30.000000Z"),
            "mig-2",
            "compute-1",
            "52:54:00:66:66:66",
            "traffic",
            "unknown",
            "missing",
            0,
            null,
            null,
            100.0
        ]),
        json!([
            format!("{T}35.000000Z"),
            "mig-3",
            "compute-2",
            "compute-9",
            "rarp",
            "invalid",
            "missing",
            0,
            null,
            null,
            100.0
        ]),
        json!([
            format!("{T}40.300000Z"),
            "mig-4",
            "compute-2",
            "compute-3",
            "rarp",
            "valid",
            "granted",
            1,
            5857800,
            1949.5,
            400.0
        ]),
        json!([
            format!("{T}45.000000Z"),
            "mig-5",
            "compute-1",
            "compute-3",
            "traffic",
            "valid",
            "missing",
            0,
            null,
            null,
            0.0
        ]),
        json!([
            format!("{T}53.000000Z"),
            "mig-6",
            "compute-1",
            "compute-2",
            "rarp",
            "valid",
            "granted",
            0,
            null,
            null,
            100.0
        ]),
        json!([
            format!("{T}56.000000Z"),
            "mig-6",
            "compute-2",
            "compute-1",
            "rarp",
            "valid",
            "missing",
            0,
            null,
            null,
            100.0
        ]),
        // The same token again: not accepted twice.
        json!([
            format!("{T}59.000000Z"),
            "mig-6",
            "compute-1",
            "compute-2",
            "rarp",
            "valid",
            "replayed",
            0,
            null,
            null,
            100.0
        ]),
    ];
    assert_eq!(migrations(&ev), want);
    let mig4 = of_type(&ev, "migration").into_iter().find(|e| e["vm_name"] == "mig-4").unwrap();
    assert_eq!(mig4["bytes_per_ram"], 5857800.0 / 1048576.0);
    assert_eq!(
        (mig4["to_mac"].clone(), mig4["to_ip"].clone(), mig4["authorized"].clone()),
        (json!("52:54:00:aa:00:03"), json!("10.0.0.33"), json!(true))
    );

    assert_eq!(
        rises(&ev),
        vec![
            json!([format!("{T}31.000000Z"), "mig-2", "HIGH", "signature", "52:54:00:66:66:66"]),
            json!([format!("{T}36.000000Z"), "mig-3", "HIGH", "signature", "compute-9"]),
            json!([format!("{T}41.000000Z"), "mig-4", "HIGH", "migration", "compute-3"]),
            json!([format!("{T}48.000000Z"), "mig-5", "HIGH", "clone", "compute-3"]),
        ]
    );
    assert_eq!(
        actions(&ev),
        vec![
            json!([format!("{T}31.000000Z"), "mig-2", "quarantine", "signature", null]),
            json!([format!("{T}36.000000Z"), "mig-3", "quarantine", "signature", null]),
            // compute-1 and compute-2 hold 4 VMs each as the wire shows them (mig-2 left
            // compute-1 for an unregistered hypervisor, so it no longer counts there): by id.
            json!([format!("{T}41.000000Z"), "mig-4", "migrate", "migration", "compute-1"]),
            json!([format!("{T}48.000000Z"), "mig-5", "migrate", "clone", "compute-1"]),
        ]
    );
    // A clone is reported each window both copies run past the overlap.
    let clones: Vec<Value> = of_type(&ev, "conflict")
        .into_iter()
        .map(|e| json!([e["ts"], e["kind"], e["vm_name"], e["hypervisors"]]))
        .collect();
    assert_eq!(
        clones,
        ["47.9", "48.9", "49.9"]
            .iter()
            .map(|t| json!([format!("{T}{t}00000Z"), "clone", "mig-5", ["compute-1", "compute-3"]]))
            .collect::<Vec<_>>()
    );
}

#[test]
fn geneve_gives_the_same_migrations_as_vxlan() {
    let strip = |ev: Vec<Value>| -> Vec<Value> {
        ev.into_iter()
            .filter(|e| {
                ["migration", "conflict", "action"].contains(&e["type"].as_str().unwrap()) || e["type"] == "level"
            })
            .map(|mut e| {
                // Geneve's option words make the inner frames no longer, but the
                // outer ones are; rates are of the inner frames, so equal too.
                e.as_object_mut().unwrap().remove("bps");
                e
            })
            .collect()
    };
    let a = with_rules("");
    let b = with_rules("");
    let vx = strip(replay(a.path(), 2, &[capture("migration-vxlan.pcap")]));
    let ge = strip(replay(b.path(), 2, &[capture("migration-geneve.pcap")]));
    assert!(vx.len() > 20);
    assert_eq!(vx, ge);
}

#[test]
fn require_authorization_treats_unauthorized_moves_as_unsigned() {
    let rules = with_rules("");
    let p = rules.path().join("vmsentry.toml");
    let text =
        std::fs::read_to_string(&p).unwrap().replace("require_authorization = false", "require_authorization = true");
    std::fs::write(&p, text).unwrap();
    let ev = replay(rules.path(), 1, &[capture("migration-vxlan.pcap")]);
    assert_eq!(
        rises(&ev),
        vec![
            json!([format!("{T}31.000000Z"), "mig-2", "HIGH", "signature", "52:54:00:66:66:66"]),
            json!([format!("{T}36.000000Z"), "mig-3", "HIGH", "signature", "compute-9"]),
            json!([format!("{T}41.000000Z"), "mig-4", "HIGH", "migration", "compute-3"]),
            // Moved to a signed host, but without a token.
            json!([format!("{T}46.000000Z"), "mig-5", "HIGH", "signature", "compute-3"]),
            // The move back without a token; the replayed token then keeps it HIGH.
            json!([format!("{T}57.000000Z"), "mig-6", "HIGH", "signature", "compute-1"]),
        ]
    );
    // Treated as unsigned: the policy quarantines instead of migrating.
    let late: Vec<Value> = actions(&ev).into_iter().filter(|a| a[1] == "mig-5" || a[1] == "mig-6").collect();
    assert_eq!(
        late,
        vec![
            json!([format!("{T}46.000000Z"), "mig-5", "quarantine", "signature", null]),
            json!([format!("{T}57.000000Z"), "mig-6", "quarantine", "signature", null]),
        ]
    );
}

#[test]
fn used_tokens_are_remembered_across_runs() {
    let rules = with_rules("");
    let first = replay(rules.path(), 1, &[capture("migration-vxlan.pcap")]);
    let second = replay(rules.path(), 1, &[capture("migration-vxlan.pcap")]);
    let auth = |ev: &[Value]| -> Vec<String> {
        of_type(ev, "migration").into_iter().map(|e| e["authorization"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(auth(&first), ["granted", "missing", "missing", "granted", "missing", "granted", "missing", "replayed"]);
    assert_eq!(
        auth(&second),
        ["replayed", "missing", "missing", "replayed", "missing", "replayed", "missing", "replayed"]
    );
    let used = std::fs::read_to_string(rules.path().join("tokens/used-tokens")).unwrap();
    assert_eq!(used, "0000000000000101\n0000000000000104\n0000000000000106\n");
}

#[test]
fn plain_network_moves_are_located_by_the_sensor_or_reported_as_unknown() {
    // A sensor on compute-2's uplink: the announce says the VM is on compute-2.
    let rules = with_rules("\n[sensor]\nhypervisor = \"compute-2\"\n");
    let ev = replay(rules.path(), 2, &[capture("migration-plain.pcap")]);
    assert_eq!(
        migrations(&ev),
        vec![json!([
            format!("{T}23.000000Z"),
            "mig-1",
            "compute-1",
            "compute-2",
            "rarp",
            "valid",
            "granted",
            1,
            292890,
            1940.0,
            null
        ])]
    );
    assert!(rises(&ev).is_empty());
    // No sensor: the announce shows a move, but not where to.
    let rules = with_rules("");
    let ev = replay(rules.path(), 2, &[capture("migration-plain.pcap")]);
    assert_eq!(
        migrations(&ev),
        vec![json!([
            format!("{T}23.000000Z"),
            "mig-1",
            "compute-1",
            null,
            "rarp",
            "unknown",
            "missing",
            0,
            null,
            null,
            null
        ])]
    );
    assert!(rises(&ev).is_empty(), "an unlocated move raises nothing unless authorization is required");
}

#[test]
fn authorize_prints_a_token_the_pipeline_accepts() {
    let rules = rules_dir();
    let key = rules.path().join("cluster.key");
    let out = vmsentry(&[
        "authorize",
        "--key-file",
        key.to_str().unwrap(),
        "--vm",
        "FA:16:3E:00:01:05",
        "--to",
        "compute-3",
        "--ttl",
        "1h",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap();
    let t = vmsentry::trust::token::Token::parse(token.trim()).unwrap();
    let k = vmsentry::trust::ClusterKey::load(&key).unwrap();
    assert!(t.verify(&k));
    assert_eq!((t.vm.to_string(), t.to.as_str(), t.nonce.len()), ("fa:16:3e:00:01:05".to_string(), "compute-3", 16));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((now + 3590..=now + 3610).contains(&t.expires), "{}", t.expires);
    // A token expiring before the capture's time does not authorize: the
    // capture is from 2023, so a 1-hour token made now is valid for it.
    let tokens = rules.path().join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    std::fs::write(tokens.join("mig5"), &token).unwrap();
    let p = rules.path().join("vmsentry.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, text).unwrap();
    let ev = replay(rules.path(), 1, &[capture("migration-vxlan.pcap")]);
    let mig5 = of_type(&ev, "migration").into_iter().find(|e| e["vm_name"] == "mig-5").unwrap();
    assert_eq!(mig5["authorization"], "granted");
    let out =
        vmsentry(&["authorize", "--key-file", key.to_str().unwrap(), "--vm", "x", "--to", "compute-3", "--ttl", "1h"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn hypervisor_mac_conflicts_are_reported() {
    use vmsentry::synth::{frames, mac, scenario, write_pcap, Frame};
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("conflicts.pcap");
    let hv1 = frames::Underlay {
        src: mac(scenario::HV1.0),
        dst: mac("52:54:00:aa:00:fe"),
        sip: [10, 0, 0, 31].into(),
        dip: [10, 0, 0, 254].into(),
        vni: 1,
    };
    let inner = frames::udp4(
        mac("fa:16:3e:00:00:03"),
        mac("52:54:00:ff:00:01"),
        [10, 0, 1, 3].into(),
        [10, 0, 0, 1].into(),
        1,
        2,
        10,
    );
    // compute-1's MAC from a second IP, and a frame inside a tunnel sent with compute-2's MAC.
    let spoofed_ip = frames::Underlay { sip: [10, 0, 0, 77].into(), ..hv1 };
    let claims = frames::udp4(
        mac(scenario::HV2.0),
        mac("52:54:00:ff:00:01"),
        [10, 0, 1, 9].into(),
        [10, 0, 0, 1].into(),
        1,
        2,
        10,
    );
    let t0 = scenario::T0_US;
    let mut fr = vec![
        Frame::whole(t0, frames::vxlan(&hv1, &inner)),
        Frame::whole(t0 + 100, frames::vxlan(&spoofed_ip, &inner)),
        Frame::whole(t0 + 200, frames::vxlan(&hv1, &claims)),
    ];
    write_pcap(&p, &mut fr).unwrap();
    let rules = with_rules("");
    let ev = replay(rules.path(), 1, &[p]);
    let c: Vec<Value> = of_type(&ev, "conflict").into_iter().map(|e| json!([e["kind"], e["mac"], e["ips"]])).collect();
    assert_eq!(
        c,
        vec![
            json!(["vm_uses_hypervisor_mac", "52:54:00:aa:00:02", ["10.0.0.31"]]),
            json!(["hypervisor_ips", "52:54:00:aa:00:01", ["10.0.0.31", "10.0.0.77"]]),
        ]
    );
}

#[test]
fn a_gratuitous_arp_announces_a_move_and_a_long_downtime_raises_the_level() {
    use vmsentry::synth::{frames, mac, scenario, write_pcap, Frame};
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("garp.pcap");
    let u = |hv: (&str, [u8; 4])| frames::Underlay {
        src: mac(hv.0),
        dst: mac("52:54:00:aa:00:fe"),
        sip: hv.1.into(),
        dip: [10, 0, 0, 254].into(),
        vni: 1,
    };
    let vm = mac(scenario::MIG[0]);
    let ip: std::net::Ipv4Addr = [10, 0, 1, 100].into();
    let data = frames::udp4(vm, mac("52:54:00:ff:00:01"), ip, [10, 0, 0, 1].into(), 1, 2, 10);
    let garp =
        frames::arp(vm, vmsentry::decode::Mac::BROADCAST, false, 1, vm, ip, vmsentry::decode::Mac::default(), ip);
    let t0 = scenario::T0_US;
    let mut fr: Vec<Frame> =
        (0..10).map(|k| Frame::whole(t0 + k * 100_000, frames::vxlan(&u(scenario::HV1), &data))).collect();
    // Silent for 3.1 s, then a gratuitous ARP through compute-2.
    fr.push(Frame::whole(t0 + 4 * 1_000_000, frames::vxlan(&u(scenario::HV2), &garp)));
    fr.push(Frame::whole(t0 + 8 * 1_000_000, frames::vxlan(&u(scenario::HV2), &data)));
    write_pcap(&p, &mut fr).unwrap();
    let rules = with_rules("");
    let ev = replay(rules.path(), 1, &[p]);
    assert_eq!(
        migrations(&ev),
        vec![json!([
            format!("{T}24.000000Z"),
            "mig-1",
            "compute-1",
            "compute-2",
            "garp",
            "valid",
            "granted",
            0,
            null,
            null,
            3100.0
        ])]
    );
    // Over migration.max_downtime_ms (1000): raised to downtime_level (MEDIUM), reason migration.
    assert_eq!(rises(&ev), vec![json!([format!("{T}25.000000Z"), "mig-1", "MEDIUM", "migration", "compute-2"])]);
    assert_eq!(actions(&ev), vec![json!([format!("{T}25.000000Z"), "mig-1", "alert", "migration", null])]);
}

#[path = "scenarios/service.rs"]
mod service;

#[path = "scenarios/backends.rs"]
mod backends;

#[path = "scenarios/mtd.rs"]
mod mtd;

#[path = "scenarios/inputs.rs"]
mod inputs;

#[path = "scenarios/gate.rs"]
mod gate;

#[path = "scenarios/gate_libvirt.rs"]
mod gate_libvirt;

#[path = "scenarios/report.rs"]
mod report;

#[path = "scenarios/lab.rs"]
mod lab;

#[path = "scenarios/capture_inputs.rs"]
mod capture_inputs;

/// `captures/icmp-fragmented.pcap`: 3000-byte echoes between two network
/// namespaces over a veth (MTU 1500), so request and reply travel in three
/// IPv4 fragments each. Each reply gives one sample, timed first fragment to
/// first fragment: what tshark reports without reassembly
/// (`-o ip.defragment:FALSE`); with reassembly it times last fragment to last
/// fragment (3765, 26, 31 µs).
const FRAGMENTED_ECHO_SAMPLES: &[(&str, i64)] =
    &[("2026-12-01T20:12:30.624151Z", 3797), ("2026-12-01T20:12:31.015452Z", 42), ("2026-12-01T20:12:31.316168Z", 53)];

#[test]
fn an_echo_reply_in_ip_fragments_gives_one_sample_as_tshark_does() {
    let rules = rules_dir();
    let ev = replay_with(rules.path(), 2, &["--rtt-samples"], &[capture("icmp-fragmented.pcap")]);
    let got = kind_samples_us(&ev, "echo");
    let want: Vec<(String, i64)> = FRAGMENTED_ECHO_SAMPLES.iter().map(|(t, us)| (t.to_string(), *us)).collect();
    assert_eq!(got, want);
    let Some(tshark) = tshark() else {
        eprintln!("SKIPPED: tshark not installed (the expected values above are its answer)");
        return;
    };
    let out = Command::new(tshark)
        .args(["-o", "ip.defragment:FALSE", "-r"])
        .arg(capture("icmp-fragmented.pcap"))
        .args(["-Y", "icmp.resptime", "-T", "fields", "-e", "frame.time_epoch", "-e", "icmp.resptime"])
        .output()
        .unwrap();
    let oracle: Vec<(String, i64)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (t, ms) = l.split_once('\t').unwrap();
            let us = (t.parse::<f64>().unwrap() * 1e6).round() as i64;
            (
                vmsentry::vocab::PacketTime::from_micros(us).rfc3339(),
                (ms.parse::<f64>().unwrap() * 1000.0).round() as i64,
            )
        })
        .collect();
    assert_eq!(got, oracle, "tshark -o ip.defragment:FALSE");
}

/// Root and every one of `tools` on PATH; with `CI=true`, missing either panics
/// (those tests must run there, not skip).
fn root_with_tools(what: &str, tools: &[&str]) -> bool {
    let have = |t: &str| {
        Command::new("sh").args(["-c", &format!("command -v {t}")]).output().is_ok_and(|o| o.status.success())
    };
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout == b"0\n");
    let ok = root && tools.iter().all(|t| have(t));
    if !ok && std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true: {what} needs root and {tools:?} (scripts/test installs them)");
    }
    ok
}

#[path = "scenarios/golden.rs"]
mod golden;

#[path = "scenarios/cluster.rs"]
mod cluster;

#[path = "scenarios/mtd_libvirt.rs"]
mod mtd_libvirt;
