//! Moving-target defense: IDS alerts in Suricata's and Snort's formats, victims, evacuation plans, the host_high trigger, and live following with a checkpoint.

use super::*;
use vmsentry::synth::scenario::MTD_VMS;

const T1: &str = "2023-11-15T22:13:";

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

fn plan(e: &Value) -> Vec<(String, String, Value)> {
    e["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let what = if p["outcome"] == "migrate" { p["destination"].clone() } else { p["because"].clone() };
            (p["vm_name"].as_str().unwrap().to_string(), p["outcome"].as_str().unwrap().to_string(), what)
        })
        .collect()
}

fn p(vm: &str, outcome: &str, what: &str) -> (String, String, Value) {
    (vm.into(), outcome.into(), json!(what))
}

/// The hypervisor name of a synth host constant.
fn hv_name(mac: &str) -> &'static str {
    match mac {
        "52:54:00:aa:00:01" => "compute-1",
        "52:54:00:aa:00:02" => "compute-2",
        "52:54:00:aa:00:03" => "compute-3",
        _ => panic!("not a demo hypervisor: {mac}"),
    }
}

#[test]
fn an_ids_alert_evacuates_the_victims_host_and_the_wire_confirms_the_plan() {
    let rules = rules_dir();
    let ev = stable(replay(rules.path(), 1, &[capture("mtd.pcap")]));
    assert_eq!(ev, stable(replay(rules.path(), 3, &[capture("mtd.pcap")])), "the same for any --threads");

    // rules/alerts/eve.json: a flow record (not an alert), a severity-3 alert
    // (below min_severity 2), the flood alert, its repeat 0.3 s later (the
    // per-victim cooldown), a cut line (malformed), and a scan of an address
    // vmsentry does not know.
    let alerts = of_type(&ev, "ids_alert");
    assert_eq!(alerts.len(), 2);
    let a = alerts[0];
    assert_eq!(
        (&a["ts"], &a["sid"], &a["severity"], &a["victim"], &a["victim_vm_name"], &a["victim_known_by"]),
        (
            &json!(format!("{T1}29.500000Z")),
            &json!(9000001),
            &json!(1),
            &json!("10.1.0.12"),
            &json!("mtd-2"),
            &json!("learned")
        )
    );
    assert_eq!(
        (&a["victim_hypervisor"], &a["outcome"], &a["format"]),
        (&json!("compute-4"), &json!("evacuated"), &json!("suricata_eve"))
    );
    assert_eq!(a["alert_ts"], "2023-11-15T22:13:29.500000+0000");
    let b = alerts[1];
    assert_eq!(
        (&b["ts"], &b["victim"], &b["victim_vm"], &b["victim_hypervisor"], &b["outcome"]),
        (&json!(format!("{T1}32.000000Z")), &json!("198.51.100.7"), &Value::Null, &Value::Null, &json!("unmapped"))
    );

    // One evacuation of compute-4: largest first, spread by free RAM; never
    // compute-4 itself or the unsigned compute-9.
    let evac = of_type(&ev, "evacuation");
    assert_eq!(evac.len(), 1);
    let e = evac[0];
    assert_eq!(
        (&e["ts"], &e["hypervisor"], &e["trigger"], &e["mode"], &e["sid"], &e["victim"]),
        (
            &json!(format!("{T1}29.500000Z")),
            &json!("compute-4"),
            &json!("ids"),
            &json!("host"),
            &json!(9000001),
            &json!("10.1.0.12")
        )
    );
    assert_eq!(
        plan(e),
        vec![
            p("mtd-5", "migrate", "compute-2"),
            p("mtd-3", "migrate", "compute-3"),
            p("mtd-4", "migrate", "compute-1"),
            p("mtd-1", "migrate", "compute-3"),
            p("mtd-2", "migrate", "compute-3"),
        ]
    );
    assert_eq!(
        (&e["migrate"], &e["held"], &e["skipped"], &e["no_destination"]),
        (&json!(5), &json!(0), &json!(0), &json!(0))
    );
    // One migrate action per VM, each the plan's.
    let acts: Vec<&Value> = of_type(&ev, "action").into_iter().filter(|a| a["reason"] == "ids").collect();
    assert_eq!(acts.len(), 5);
    for (a, line) in acts.iter().zip(e["plan"].as_array().unwrap()) {
        assert_eq!((&a["id"], &a["vm_name"], &a["action"]), (&line["action_id"], &line["vm_name"], &json!("migrate")));
        assert_eq!(
            (&a["destination"], &a["hypervisor"], &a["ts"]),
            (&line["destination"], &json!("compute-4"), &e["ts"])
        );
    }
    // The wire shows each VM arriving where the plan sent it, measured:
    // the synth's ground truth (a stream of 1.1 x RAM in 1502-byte frames
    // over 0.5 s per MiB, total time to its last frame; downtime 50 ms + 20 + 10 k ms).
    let migs = of_type(&ev, "migration");
    assert_eq!(migs.len(), 5);
    for (k, (mac, _, ram, dest)) in MTD_VMS.iter().enumerate() {
        let m = migs.iter().find(|m| m["vm"] == *mac).unwrap();
        let line = e["plan"].as_array().unwrap().iter().find(|l| l["vm"] == *mac).unwrap();
        assert_eq!(m["to_hypervisor"], line["destination"]);
        assert_eq!(m["to_hypervisor"], hv_name(dest.0));
        let frames = (ram * 1024 * 1024 * 11 / 10).div_ceil(1502);
        assert_eq!(
            (&m["from_hypervisor"], &m["bytes"], &m["total_ms"], &m["downtime_ms"], &m["ram_mb"]),
            (
                &json!("compute-4"),
                &json!(frames * 1502),
                // Until the source's last stream frame (k of n at (until - at) k / n).
                &json!((ram * 500_000 * (frames - 1) / frames) as f64 / 1000.0),
                &json!((70 + 10 * k as u64) as f64),
                &json!(ram)
            )
        );
    }
    assert_eq!(
        migs.iter().map(|m| m["flavor"].as_str().unwrap()).collect::<Vec<_>>(),
        ["lab.medium", "lab.small", "lab.small", "lab.tiny", "lab.tiny"]
    );
    assert_eq!(
        summary(&ev)["ids"],
        json!({"evacuated": 1, "unmapped": 1, "filtered": 2, "malformed": 1, "outside_replay": 0, "evacuations": 1})
    );

    // The same alerts replayed with another capture fall outside it.
    let other = replay(rules.path(), 1, &[capture("rtt.pcap")]);
    assert!(of_type(&other, "ids_alert").is_empty());
    assert_eq!(
        summary(&other)["ids"],
        json!({"evacuated": 0, "unmapped": 0, "filtered": 0, "malformed": 1, "outside_replay": 4, "evacuations": 0})
    );
}

#[test]
fn snort_formats_the_source_as_victim_vm_mode_and_a_hypervisors_own_address() {
    let rules = rules_dir();
    let dir = rules.path();
    // Snort 3 alert_json: mtd-4 (learned address) sends the attack; its
    // input takes the source as the victim. Snort alert_fast (no year: the
    // capture's): an alert about compute-4's own address.
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
    let ev = replay(dir, 2, &[capture("mtd.pcap")]);
    let evac = of_type(&ev, "evacuation");
    let summary_of =
        |e: &Value| (e["ts"].as_str().unwrap().to_string(), e["mode"].as_str().unwrap().to_string(), plan(e));
    assert_eq!(
        evac.iter().map(|e| summary_of(e)).collect::<Vec<_>>(),
        vec![
            // EVE: mtd-2 alone.
            (format!("{T1}29.500000Z"), "vm".into(), vec![p("mtd-2", "migrate", "compute-2")]),
            // Snort 3, victim = source: mtd-4 alone, to the most free RAM.
            (format!("{T1}31.000000Z"), "vm".into(), vec![p("mtd-4", "migrate", "compute-2")]),
            // alert_fast on 10.0.0.34: the whole host, by then without mtd-5
            // (moved at 32.02 s) and mtd-3 (34.03 s); mtd-4 and mtd-2 are
            // already moving.
            (
                format!("{T1}35.000000Z"),
                "host".into(),
                vec![
                    p("mtd-4", "skipped", "already_moving"),
                    p("mtd-1", "migrate", "compute-2"),
                    p("mtd-2", "skipped", "already_moving"),
                ]
            ),
        ]
    );
    let alerts = of_type(&ev, "ids_alert");
    assert_eq!(
        alerts.iter().map(|a| (a["format"].as_str().unwrap(), a["victim"].as_str().unwrap())).collect::<Vec<_>>(),
        [
            ("suricata_eve", "10.1.0.12"),
            ("snort3_json", "10.1.0.14"),
            ("suricata_eve", "198.51.100.7"),
            ("snort_fast", "10.0.0.34")
        ]
    );
    assert_eq!(alerts[3]["victim_vm"], Value::Null);
    assert_eq!(alerts[3]["victim_hypervisor"], "compute-4");
}

#[test]
fn evacuation_never_picks_the_victim_an_unsigned_or_a_full_hypervisor() {
    let rules = rules_dir();
    // compute-1 holds 10240 MiB: 3 MiB left. compute-2 is full. compute-3's
    // signature is made invalid. compute-9 is unsigned. compute-4 is the victim.
    edit_rules(
        rules.path(),
        &[
            ("id = \"compute-1\"\nram_mb = 16384", "id = \"compute-1\"\nram_mb = 10243"),
            ("id = \"compute-2\"\nram_mb = 16384", "id = \"compute-2\"\nram_mb = 2562"),
            ("b1f7ae5e79f585a558be359cae56cffe97ff39e44e0b6568129bbd58dd299f91", &"0".repeat(64)),
        ],
    );
    let ev = replay(rules.path(), 1, &[capture("mtd.pcap")]);
    let e = of_type(&ev, "evacuation")[0];
    assert_eq!(
        plan(e),
        vec![
            p("mtd-5", "alert", "compute-1"),
            p("mtd-3", "migrate", "compute-1"),
            p("mtd-4", "alert", "compute-1"),
            p("mtd-1", "migrate", "compute-1"),
            p("mtd-2", "alert", "compute-1"),
        ]
        .into_iter()
        .map(|(v, o, w)| if o == "alert" { (v, o, Value::Null) } else { (v, o, w) })
        .collect::<Vec<_>>()
    );
    assert_eq!((&e["migrate"], &e["no_destination"]), (&json!(2), &json!(3)));
    let alerts: Vec<&Value> =
        of_type(&ev, "action").into_iter().filter(|a| a["reason"] == "ids" && a["action"] == "alert").collect();
    assert_eq!(alerts.len(), 3);
    assert_eq!(
        alerts[0]["note"],
        "evacuating after IDS alert sid 9000001 on 10.1.0.12; no other signed hypervisor has room for its RAM"
    );
}

#[test]
fn host_high_evacuates_a_hypervisor_once_when_enough_of_its_vms_are_high() {
    let rules = rules_dir();
    edit_rules(rules.path(), &[("host_high_vms = 0 ", "host_high_vms = 1 ")]);
    let ev = replay(rules.path(), 2, &[capture("basic.pcap")]);
    let evac = of_type(&ev, "evacuation");
    let got: Vec<(String, String, Value, usize)> = evac
        .iter()
        .map(|e| {
            (
                e["ts"].as_str().unwrap().to_string(),
                e["hypervisor"].as_str().unwrap().to_string(),
                e["high_vms"].clone(),
                e["plan"].as_array().unwrap().len(),
            )
        })
        .collect();
    // web-1 HIGH at 31 s on compute-1 (6 VMs), backup-1 HIGH at 62 s on compute-2 (5 VMs).
    assert_eq!(
        got,
        vec![
            ("2023-11-14T22:13:31.000000Z".into(), "compute-1".into(), json!(1), 6),
            ("2023-11-14T22:14:02.000000Z".into(), "compute-2".into(), json!(1), 5),
        ]
    );
    // The HIGH VM's own policy action (migrate) came first: the plan skips it.
    let web = evac[0]["plan"].as_array().unwrap().iter().find(|l| l["vm_name"] == "web-1").unwrap();
    assert_eq!((&web["outcome"], &web["because"]), (&json!("skipped"), &json!("already_moving")));
    for e in &evac {
        for l in e["plan"].as_array().unwrap() {
            assert_ne!(l["destination"], e["hypervisor"]);
            assert_ne!(l["destination"], "compute-9");
        }
    }
    let acts = of_type(&ev, "action").into_iter().filter(|a| a["reason"] == "host_high").count();
    assert_eq!(acts, 5 + 4);
    // Two HIGH VMs at once on one hypervisor never happen in basic.pcap.
    edit_rules(rules.path(), &[("host_high_vms = 1 ", "host_high_vms = 2 ")]);
    let ev = replay(rules.path(), 2, &[capture("basic.pcap")]);
    assert!(of_type(&ev, "evacuation").is_empty());
}

#[test]
fn bad_ids_rules_are_refused_at_their_place() {
    let rules = with_rules("\n[[ids]]\npath = \"alerts/eve.json\"\nformat = \"suricata_eve\"\n");
    let out = vmsentry(&["check", "--rules", rules.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vmsentry.toml:") && err.contains("ids.path `alerts/eve.json` is followed twice"), "{err}");
    let rules = with_rules("\n[[ids]]\npath = \"x.log\"\nformat = \"zeek\"\n");
    let err =
        String::from_utf8_lossy(&vmsentry(&["check", "--rules", rules.path().to_str().unwrap()]).stderr).to_string();
    assert!(err.contains("unknown variant `zeek`"), "{err}");
    let rules = rules_dir();
    edit_rules(rules.path(), &[("ips = [\"10.1.0.11\"]", "ips = [\"10.0.0.34\"]")]);
    let err =
        String::from_utf8_lossy(&vmsentry(&["check", "--rules", rules.path().to_str().unwrap()]).stderr).to_string();
    assert!(err.contains("address 10.0.0.34 is also hypervisor `compute-4`'s"), "{err}");
}

#[test]
fn evacuation_stays_within_the_storm_limits() {
    let rules = with_rules("\n[storm]\nmax_migrations_per_hypervisor = 2\n");
    let ev = replay(rules.path(), 1, &[capture("mtd.pcap")]);
    let e = of_type(&ev, "evacuation")[0];
    assert_eq!(
        plan(e),
        vec![
            p("mtd-5", "migrate", "compute-2"),
            p("mtd-3", "migrate", "compute-3"),
            p("mtd-4", "held", "hypervisor_migrations"),
            p("mtd-1", "held", "hypervisor_migrations"),
            p("mtd-2", "held", "hypervisor_migrations"),
        ]
    );
    let held = of_type(&ev, "action_held");
    assert_eq!(
        held.iter().map(|h| (h["vm_name"].as_str().unwrap(), h["reason"].as_str().unwrap())).collect::<Vec<_>>(),
        [("mtd-4", "ids"), ("mtd-1", "ids"), ("mtd-2", "ids")]
    );
    // Each held one is sent at the end of the first window after a migration
    // leaving compute-4 is seen on the wire (32.02, 34.03, 37.04 s), once each.
    let sent: Vec<(&str, &str, &str)> = of_type(&ev, "action")
        .into_iter()
        .filter(|a| a["reason"] == "ids")
        .map(|a| (a["ts"].as_str().unwrap(), a["vm_name"].as_str().unwrap(), a["action"].as_str().unwrap()))
        .collect();
    let t = |s: &str| format!("{T1}{s}Z");
    assert_eq!(
        sent.iter().map(|(ts, vm, k)| (ts.to_string(), *vm, *k)).collect::<Vec<_>>(),
        vec![
            (t("29.500000"), "mtd-5", "migrate"),
            (t("29.500000"), "mtd-3", "migrate"),
            (t("33.000000"), "mtd-4", "migrate"),
            (t("35.000000"), "mtd-1", "migrate"),
            (t("38.000000"), "mtd-2", "migrate"),
        ]
    );
    let late = of_type(&ev, "action").into_iter().find(|a| a["vm_name"] == "mtd-4" && a["reason"] == "ids").unwrap();
    assert!(late["note"]
        .as_str()
        .unwrap()
        .ends_with("(held back at 2023-11-15T22:13:29.500000Z, sent when the storm limits allowed)"));
    assert_eq!(summary(&ev)["actions"]["held"], 3, "held once each, not every window");
}

/// `vmsentry live` on loopback following an EVE file: an alert appended is
/// acted on at once; after a restart the checkpoint resumes after it.
#[test]
fn live_follows_an_alert_file_and_resumes_from_its_checkpoint() {
    if !super::service::live_capable() {
        eprintln!("SKIPPED: needs root and the live test tools");
        return;
    }
    let rules = with_rules(
        "\n[[ids]]\npath = \"live/eve.json\"\nformat = \"suricata_eve\"\ncheckpoint = \"live/eve.checkpoint\"\n\
         \n[backend]\njournal = \"journal.jsonl\"\n",
    );
    let dir = rules.path();
    // Before the directory exists: a clear error, exit 2.
    let o = Command::new(env!("CARGO_BIN_EXE_vmsentry"))
        .args(["live", "--interface", "lo", "--bpf", "ether host 02:00:00:00:00:99", "--listen", "127.0.0.1:0"])
        .args(["--rules", dir.to_str().unwrap(), "--events", "/dev/null"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot follow the IDS alert file"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::create_dir_all(dir.join("live")).unwrap();
    let eve = dir.join("live/eve.json");
    let old = r#"{"timestamp":"2026-01-01T00:00:00.000000+0000","event_type":"alert","src_ip":"203.0.113.9","dest_ip":"10.0.0.31","alert":{"signature_id":1,"severity":1,"signature":"old"}}"#;
    std::fs::write(&eve, format!("{old}\n")).unwrap();
    let line = |sid: u32, dst: &str| {
        format!(
            "{{\"timestamp\":\"2026-11-22T04:00:00.000000+0000\",\"event_type\":\"alert\",\"src_ip\":\"203.0.113.9\",\"dest_ip\":\"{dst}\",\"alert\":{{\"signature_id\":{sid},\"severity\":1,\"signature\":\"live\"}}}}\n"
        )
    };
    let append = |s: &str| {
        use std::io::Write;
        std::fs::OpenOptions::new().append(true).open(&eve).unwrap().write_all(s.as_bytes()).unwrap();
    };
    let run = |events: &Path, work: &dyn Fn()| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vmsentry"))
            .args(["live", "--interface", "lo", "--bpf", "ether host 02:00:00:00:00:99", "--listen", "127.0.0.1:0"])
            .args(["--rules", dir.to_str().unwrap(), "--events", events.to_str().unwrap()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(700));
        work();
        super::service::signal(&child, "TERM");
        assert_eq!(super::service::wait_exit(&mut child, std::time::Duration::from_secs(15)), Some(0));
        let text = std::fs::read_to_string(events).unwrap();
        event_lines(&text)
    };
    let wait_for = |events: &Path, what: &str| {
        let t = std::time::Instant::now();
        while !std::fs::read_to_string(events).unwrap_or_default().contains(what) {
            assert!(t.elapsed() < std::time::Duration::from_secs(10), "no {what}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let ev1 = dir.join("events1.jsonl");
    let ev = run(&ev1, &|| {
        append(&line(11, "10.0.0.34"));
        wait_for(&ev1, "\"evacuation\"");
    });
    // The alert already in the file when vmsentry first started is old: not acted on.
    let alerts = of_type(&ev, "ids_alert");
    assert_eq!(alerts.iter().map(|a| a["sid"].clone()).collect::<Vec<_>>(), [json!(11)]);
    let e = of_type(&ev, "evacuation")[0];
    assert_eq!((&e["hypervisor"], &e["migrate"]), (&json!("compute-4"), &json!(5)));
    // Every planned migration was journaled.
    let journal = std::fs::read_to_string(dir.join("journal.jsonl")).unwrap();
    for l in e["plan"].as_array().unwrap() {
        let id = l["action_id"].as_str().unwrap();
        assert!(journal.contains(&format!("\"id\":\"{id}\"")), "{id} not journaled");
    }
    // Stopped: two more alerts, one malformed line; the restart reads just those.
    let checkpoint = dir.join("live/eve.checkpoint");
    let after_first = std::fs::read(&checkpoint).unwrap();
    append(&line(12, "10.1.0.11"));
    append("{\"event_type\":\"alert\",\n");
    let ev2 = dir.join("events2.jsonl");
    let ev = run(&ev2, &|| wait_for(&ev2, "\"ids_alert\""));
    let alerts = of_type(&ev, "ids_alert");
    assert_eq!(alerts.iter().map(|a| a["sid"].clone()).collect::<Vec<_>>(), [json!(12)]);
    assert_eq!((&alerts[0]["victim_vm_name"], &alerts[0]["victim_known_by"]), (&json!("mtd-1"), &json!("rules")));
    assert_eq!(summary(&ev)["ids"]["malformed"], 1);
    let ids2: Vec<Value> = of_type(&ev, "action").iter().map(|a| a["id"].clone()).collect();
    assert_eq!(ids2.len(), 5);
    assert!(of_type(&ev, "action").iter().all(|a| a["outcome"] == "queued"));
    // A crash after the actions were journaled but before the checkpoint was
    // written: the alert is read again, and its actions, with the same ids,
    // are not sent again.
    std::fs::write(&checkpoint, after_first).unwrap();
    let ev3 = dir.join("events3.jsonl");
    let ev = run(&ev3, &|| wait_for(&ev3, "\"evacuation\""));
    let acts = of_type(&ev, "action");
    assert_eq!(acts.iter().map(|a| a["id"].clone()).collect::<Vec<_>>(), ids2);
    assert!(acts.iter().all(|a| a["outcome"] == "duplicate"), "{acts:?}");
}

/// The rows of the table `id` in the report's page, as cell texts (tags
/// such as a VM's link dropped).
pub(crate) fn table(html: &str, id: &str) -> Vec<Vec<String>> {
    let start = html.find(&format!("<table id=\"{id}\">")).unwrap_or_else(|| panic!("no table {id}"));
    let body = &html[start..start + html[start..].find("</table>").unwrap()];
    let text = |c: &str| {
        let mut out = String::new();
        let mut in_tag = false;
        for ch in c.chars() {
            match ch {
                '<' => in_tag = true,
                '>' if in_tag => in_tag = false,
                _ if !in_tag => out.push(ch),
                _ => {}
            }
        }
        out.replace("&gt;", ">").replace("&lt;", "<").replace("&quot;", "\"").replace("&amp;", "&")
    };
    // Rows of header cells only are headers.
    body.split("<tr>")
        .skip(1)
        .map(|row| {
            row.split("<td").skip(1).map(|c| text(&format!("<td{}", c.split("</td>").next().unwrap()))).collect()
        })
        .filter(|cells: &Vec<String>| !cells.is_empty())
        .collect()
}

/// An event's time as the report writes it: UTC wall clock, as precise as
/// the event (`22:13:29`, `22:13:29.500`, `22:13:29.500123`).
pub(crate) fn clock_of(ts: &Value) -> String {
    let s = ts.as_str().unwrap();
    let (hms, frac) = (&s[11..19], &s[20..26]);
    match frac {
        "000000" => hms.to_string(),
        f if f.ends_with("000") => format!("{hms}.{}", &f[..3]),
        f => format!("{hms}.{f}"),
    }
}

#[test]
fn the_report_draws_the_events_and_its_numbers_are_theirs() {
    let rules = rules_dir();
    let d = tempfile::tempdir().unwrap();
    let events = d.path().join("events.jsonl");
    let ev =
        replay_with(rules.path(), 2, &["--vm-windows", "--events", events.to_str().unwrap()], &[capture("mtd.pcap")]);
    assert!(ev.is_empty(), "events went to the file");
    let ev: Vec<Value> = event_lines(&std::fs::read_to_string(&events).unwrap());
    // vm_window: one per window for each of the five VMs (all send every window).
    let windows = of_type(&ev, "vm_window");
    assert_eq!(windows.len(), 5 * 30);
    let w = windows.iter().find(|w| w["vm_name"] == "mtd-2" && w["ts"] == format!("{T1}29.000000Z")).unwrap();
    assert_eq!((&w["rx_pps"], &w["level"], &w["rtt_samples"]), (&json!(4000 + 10), &json!("MEDIUM"), &json!(9)));

    let report = |out: &Path| {
        let args = ["report", events.to_str().unwrap(), "--out", out.to_str().unwrap(), "--rules"];
        let o = vmsentry(&[&args[..], &[rules.path().to_str().unwrap()]].concat());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let out = d.path().join("report");
    report(&out);
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    // The same events give the same files, byte for byte.
    let again = d.path().join("again");
    report(&again);
    let mut files = 0;
    for f in std::fs::read_dir(&out).unwrap() {
        let f = f.unwrap().file_name();
        assert_eq!(std::fs::read(out.join(&f)).unwrap(), std::fs::read(again.join(&f)).unwrap(), "{f:?}");
        files += 1;
    }
    assert_eq!(files, 1 + 1 + 6 + 5, "the page, the timeline, six migration charts, five VMs");
    let n = |v: &Value| if v.is_null() { "–".to_string() } else { v.as_f64().unwrap().to_string() };
    let s = |v: &Value| v.as_str().map_or_else(|| "–".to_string(), str::to_string);

    // The overview: the summary's totals, the span in UTC.
    let sum = of_type(&ev, "summary")[0];
    let ov = table(&html, "overview");
    assert_eq!(
        ov[0],
        vec!["2023-11-15 22:13:20.010 – 22:13:50 (29.99 s of packets; events 22:13:21 – 22:13:50)".to_string()]
    );
    assert_eq!(
        ov[1],
        vec![format!("{} ({} bytes, 23.3 MiB) over 29.99 s of packet time, 30 windows", sum["packets"], sum["bytes"])]
    );
    assert_eq!(ov[3], vec!["0".to_string()], "decode errors");
    assert!(
        ov.contains(&vec![
            "1 to MEDIUM or HIGH, 0 of them HIGH: mtd-2 MEDIUM at 22:13:29 (rate, rx: 32.0 Mbit/s, 4.01 kpps)"
                .to_string()
        ]),
        "{ov:?}"
    );
    assert!(
        ov.contains(&vec![
            "2 (1 evacuated, 1 unmapped): sid 9000001 “LOCAL DOS UDP flood to a tenant VM” on 10.1.0.12, mtd-2 at \
             22:13:29.500; sid 2001219 “ET SCAN Potential SSH Scan” on 198.51.100.7 at 22:13:32"
                .to_string()
        ]),
        "{ov:?}"
    );
    assert!(ov.contains(&vec!["1: compute-4 (ids)".to_string()]), "{ov:?}");
    // The VM raised, and why.
    assert_eq!(
        table(&html, "raised"),
        vec![vec![
            "mtd-2",
            "fa:16:3e:00:02:02",
            "MEDIUM",
            "22:13:29",
            "rate, rx: 32.0 Mbit/s, 4.01 kpps",
            "compute-4",
            "2",
            "LOW"
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()]
    );
    let lv = of_type(&ev, "level")[0];
    assert_eq!((&lv["bps"], &lv["pps"], &lv["direction"]), (&json!(32007840), &json!(4010), &json!("rx")));
    // The IDS alerts: sid, message, victim.
    let alerts = of_type(&ev, "ids_alert");
    let rows = table(&html, "alerts");
    assert_eq!(rows.len(), alerts.len());
    for (r, a) in rows.iter().zip(&alerts) {
        assert_eq!(
            r,
            &vec![
                clock_of(&a["ts"]),
                a["sid"].to_string(),
                a["severity"].to_string(),
                s(&a["msg"]),
                s(&a["src"]),
                s(&a["victim"]),
                s(&a["victim_vm_name"]),
                s(&a["victim_hypervisor"]),
                s(&a["outcome"]),
            ]
        );
    }

    // Every migration, with the event's numbers.
    let migs = of_type(&ev, "migration");
    let rows = table(&html, "migrations");
    assert_eq!(rows.len(), migs.len());
    for (r, m) in rows.iter().zip(&migs) {
        assert_eq!(
            r[..9],
            [
                s(&m["vm_name"]),
                clock_of(&m["ts"]),
                s(&m["flavor"]),
                s(&m["from_hypervisor"]),
                s(&m["to_hypervisor"]),
                s(&m["signature"]),
                n(&m["downtime_ms"]),
                n(&m["total_ms"]),
                n(&m["bytes"]),
            ]
        );
    }
    assert_eq!((rows[0][8].as_str(), rows[0][9].as_str()), ("4614144", "4.40 MiB"));
    // By flavor (the paper's Figures 4-6): means over the events.
    let mean = |fl: &str, k: &str| {
        let xs: Vec<f64> = migs.iter().filter(|m| m["flavor"] == fl).map(|m| m[k].as_f64().unwrap()).collect();
        (xs.iter().sum::<f64>() / xs.len() as f64).to_string()
    };
    let flavors = table(&html, "flavors");
    let want: Vec<Vec<String>> = [("lab.medium", "1"), ("lab.small", "2"), ("lab.tiny", "2")]
        .iter()
        .map(|(f, c)| vec![f.to_string(), c.to_string(), mean(f, "downtime_ms"), mean(f, "total_ms"), mean(f, "bytes")])
        .collect();
    assert_eq!(flavors, want);
    assert_eq!(flavors[2][2], "105", "mtd-1 and mtd-2: 100 and 110 ms");
    // The charts carry the same numbers.
    let svg = std::fs::read_to_string(out.join("flavor-downtime.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && ["70", "85", "105"].iter().all(|v| svg.contains(&format!("\n{v}\n</text>"))),
        "{svg}"
    );
    let svg = std::fs::read_to_string(out.join("migration-bytes.svg")).unwrap();
    assert!(
        svg.contains("\n4.4\n</text>") && svg.contains("\n1.1\n</text>") && svg.contains("MiB"),
        "MiB per migration"
    );
    // Actions (outcome and destination apart) and the evacuation.
    let acts = of_type(&ev, "action");
    let rows = table(&html, "actions");
    assert_eq!(rows.len(), acts.len());
    for (r, a) in rows.iter().zip(&acts) {
        assert_eq!(
            r,
            &vec![
                s(&a["vm_name"]),
                clock_of(&a["ts"]),
                s(&a["action"]),
                s(&a["destination"]),
                s(&a["outcome"]),
                s(&a["level"]),
                s(&a["reason"]),
                a["note"].as_str().unwrap_or_default().to_string(),
            ]
        );
    }
    assert_eq!((rows[1][3].as_str(), rows[1][4].as_str()), ("compute-2", "queued"));
    let e = of_type(&ev, "evacuation")[0];
    assert_eq!(
        table(&html, "evacuations"),
        vec![vec!["compute-4", &clock_of(&e["ts"]), "ids", "9000001", "5", "0", "0", "0"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()]
    );
    // A chart for each of the five VMs (each was acted on and moved), the
    // most severe first, the thresholds from the rules on it; none quiet
    // but the hypervisors' and the router's MACs.
    let charts: Vec<&str> = html.match_indices("<img src=\"vm-").map(|(i, _)| &html[i + 10..i + 29]).collect();
    assert_eq!(charts[0], "vm-fa163e000202.svg", "mtd-2, the MEDIUM one, first: {charts:?}");
    assert_eq!(charts.len(), 5);
    for i in 1..=5 {
        let r = std::fs::read_to_string(out.join(format!("vm-fa163e00020{i}.svg"))).unwrap();
        assert!(r.contains("MEDIUM threshold") && r.contains("HIGH threshold") && r.contains("action: migrate"));
        assert!(r.contains("migration seen") && r.contains("22:13:30") && !r.contains("e7"), "wall clock, no 4.000e7");
    }
    let rtt = std::fs::read_to_string(out.join("vm-fa163e000202.svg")).unwrap();
    assert!(rtt.contains("RTT median") && rtt.contains("window with too many RTT peaks") && rtt.contains("IDS alert"));
    assert!(rtt.contains(">Mbit/s<") || rtt.contains("\nMbit/s\n"), "bit/s in human units");
    let peaks = of_type(&ev, "rtt_peaks").iter().filter(|p| p["vm_name"] == "mtd-2").count();
    assert!(
        html.contains(&format!(
            "<td>RTT peaks</td><td class=\"w\">{peaks} windows with too many peaks (9–10 each), max 80 ms</td>"
        )),
        "{html}"
    );
    let quiet = table(&html, "quiet");
    assert_eq!(quiet.len(), 5, "{quiet:?}");
    let router = quiet.iter().find(|r| r[1] == "52:54:00:ff:00:01").unwrap();
    let st = of_type(&ev, "vm_stats").into_iter().find(|v| v["vm"] == "52:54:00:ff:00:01").unwrap();
    assert_eq!((st["tx_bytes"].as_u64(), router[2].as_str(), router[7].as_str()), (Some(12010780), "no", "11.5 MiB"));

    // A bad events file is refused with its line.
    std::fs::write(d.path().join("bad.jsonl"), format!("{}\nnot json\n", ev[0])).unwrap();
    let o = vmsentry(&["report", d.path().join("bad.jsonl").to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("bad.jsonl:2: not a JSON event"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
