//! The report: live files, bad and empty events files, and a 1,000-VM cloud that stays small and renders in headless Chromium.

use super::mtd::table;
use super::*;
use std::fmt::Write as _;

fn report(events: &Path, out: &Path) -> Output {
    vmsentry(&["report", events.to_str().unwrap(), "--out", out.to_str().unwrap()])
}

const LEVEL: &str = r#"{"type":"level","ts":"2023-11-15T22:13:29.000000Z","vm":"fa:16:3e:00:00:01","vm_name":"web-1","from":"LOW","to":"MEDIUM","reason":"rate","direction":"tx","bps":150000000,"pps":1000,"window_start":"2023-11-15T22:13:28.000000Z","hypervisor":"compute-1"}"#;

#[test]
fn a_live_file_s_half_written_last_line_is_left_out_with_a_note() {
    let d = tempfile::tempdir().unwrap();
    let events = d.path().join("live.jsonl");
    std::fs::write(&events, format!("{LEVEL}\n{}", &LEVEL[..60])).unwrap();
    let out = d.path().join("out");
    let o = report(&events, &out);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    let note = format!(
        "{}:2: the last line has no newline and is not a whole event (a file still being written?); it was left out",
        events.display()
    );
    assert!(stderr.contains(&format!("vmsentry: note: {note}")), "{stderr}");
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(html.contains(&format!("<p class=\"note\">Note: {note}</p>")), "the note is on the page too");
    assert_eq!(
        table(&html, "raised")[0][..5],
        ["web-1", "fa:16:3e:00:00:01", "MEDIUM", "22:13:29", "rate, tx: 150 Mbit/s, 1.00 kpps"]
    );
    // No summary yet: said, not guessed.
    assert!(html.contains("no <code>summary</code> event: the run had not ended"));
}

#[test]
fn a_non_utf8_or_non_object_line_is_refused_with_its_line() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    for (name, third, msg) in [
        (
            "latin1.jsonl",
            &b"{\"type\":\"level\",\"vm_name\":\"caf\xe9\"}"[..],
            "3: not UTF-8 (a bad byte at column 31)",
        ),
        ("array.jsonl", b"[\"level\"]", "3: not a JSON object event (an array)"),
        ("untyped.jsonl", b"{\"ts\":\"2023-11-15T22:13:29Z\"}", "3: an event without a string `type`"),
    ] {
        let events = d.path().join(name);
        let mut bytes = format!("{LEVEL}\n{LEVEL}\n").into_bytes();
        bytes.extend_from_slice(third);
        bytes.extend_from_slice(b"\n");
        std::fs::write(&events, bytes).unwrap();
        let o = report(&events, &out);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.trim_end(), format!("vmsentry: {}:{msg}", events.display()));
    }
    assert!(!out.join("index.html").exists(), "nothing written for a bad file");
}

#[test]
fn an_empty_events_file_is_refused_not_drawn_blank() {
    let d = tempfile::tempdir().unwrap();
    let events = d.path().join("empty.jsonl");
    std::fs::write(&events, "").unwrap();
    let out = d.path().join("out");
    let o = report(&events, &out);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim_end(),
        format!("vmsentry: {}: no events to report: the file is empty", events.display())
    );
    assert!(!out.exists(), "no blank page");
}

/// A cloud of 1,000 VMs over two minutes: 20 go MEDIUM on rate, 6 go HIGH
/// (4 on rate and are migrated, 2 on volume and are quarantined), one host
/// gets an IDS alert and its 30 VMs are evacuated (one of them held back),
/// everything else is quiet. Written by hand as a live run would.
fn cloud(path: &Path) -> usize {
    const VMS: usize = 1000;
    const WINDOWS: i64 = 120;
    let t0 = 1_700_086_400i64; // 2023-11-15T22:13:20Z
    let ts = |us: i64| vmsentry::vocab::PacketTime::from_micros(t0 * 1_000_000 + us).to_string();
    let mac = |i: usize| format!("fa:16:3e:00:{:02x}:{:02x}", i / 256, i % 256);
    let host = |i: usize| format!("compute-{}", i % 25 + 1);
    let medium = |i: usize| (110..130).contains(&i);
    let high_rate = |i: usize| (200..204).contains(&i);
    let high_volume = |i: usize| (300..302).contains(&i);
    let mut lines: Vec<(i64, String)> = Vec::new();
    let mut ev = |us: i64, v: Value| lines.push((us, v.to_string()));
    for w in 1..=WINDOWS {
        let us = w * 1_000_000;
        for i in 0..VMS {
            let busy = (medium(i) || high_rate(i)) && (40..50).contains(&w);
            let level = match (busy, high_rate(i), high_volume(i) && w >= 60) {
                (true, true, _) | (_, _, true) => "HIGH",
                (true, false, _) => "MEDIUM",
                _ => "LOW",
            };
            let tx_bps = if busy {
                if high_rate(i) {
                    600_000_000
                } else {
                    150_000_000
                }
            } else {
                100_000 + 1_000 * i as u64
            };
            ev(
                us,
                json!({"type":"vm_window","ts":ts(us),"vm":mac(i),"vm_name":format!("vm-{i}"),"level":level,
                       "tx_bps":tx_bps,"tx_pps":tx_bps / 8000,"rx_bps":50_000,"rx_pps":60,"rtt_samples":4,
                       "rtt_p50_ms":1.5,"rtt_max_ms":2.0,"rtt_peaks":0,"rtt_baseline_ms":1.5}),
            );
        }
    }
    let level = |i: usize, us: i64, from: &str, to: &str, reason: &str, bps: u64| {
        json!({"type":"level","ts":ts(us),"vm":mac(i),"vm_name":format!("vm-{i}"),"from":from,"to":to,
               "reason":reason,"direction":"tx","bps":bps,"pps":bps / 8000,"window_start":ts(us - 1_000_000),
               "hypervisor":host(i)})
    };
    let action = |i: usize, us: i64, kind: &str, dest: Option<String>, lv: &str, reason: &str, id: String| {
        json!({"type":"action","ts":ts(us),"id":id,"vm":mac(i),"vm_name":format!("vm-{i}"),"action":kind,
               "hypervisor":host(i),"signature":"signed","destination":dest,"level":lv,"reason":reason,
               "backend":"log","outcome":"queued"})
    };
    for i in 0..VMS {
        if medium(i) || high_rate(i) {
            let (to, bps) = if high_rate(i) { ("HIGH", 600_000_000) } else { ("MEDIUM", 150_000_000) };
            ev(40_000_000, level(i, 40_000_000, "LOW", to, "rate", bps));
            ev(52_000_000, level(i, 52_000_000, to, "LOW", "rate", 100_000));
            let kind = if high_rate(i) { "migrate" } else { "alert" };
            let dest = high_rate(i).then(|| "compute-25".to_string());
            ev(40_000_000, action(i, 40_000_000, kind, dest, to, "rate", format!("rate-{i}")));
        }
        if high_volume(i) {
            let mut e = level(i, 60_000_000, "LOW", "HIGH", "volume", 100_000);
            e["horizon_bytes"] = json!(3_300_000_000u64);
            e["limit_bytes"] = json!(3_221_225_472u64);
            ev(60_000_000, e);
            ev(60_000_000, action(i, 60_000_000, "quarantine", None, "HIGH", "volume", format!("vol-{i}")));
        }
    }
    // An IDS alert on a VM of compute-7, and its host evacuated.
    let victim = 506; // 506 % 25 == 6: compute-7
    let on_7: Vec<usize> = (0..VMS).filter(|i| i % 25 == 6).take(30).collect();
    let us = 80_500_000;
    ev(
        us,
        json!({"type":"ids_alert","ts":ts(us),"input":"eve.json","format":"suricata_eve","alert_ts":ts(us),
               "sid":9000001,"severity":1,"msg":"LOCAL DOS UDP flood to a tenant VM","src":"203.0.113.9",
               "dst":"10.1.1.250","victim":"10.1.1.250","victim_vm":mac(victim),"victim_vm_name":"vm-506",
               "victim_known_by":"learned","victim_hypervisor":"compute-7","outcome":"evacuated"}),
    );
    let plan: Vec<Value> = on_7
        .iter()
        .map(|&i| json!({"vm":mac(i),"vm_name":format!("vm-{i}"),"ram_mb":2048,"outcome":if i == on_7[29] {"held"} else {"migrate"},
                         "destination":null,"action_id":null,"because":null}))
        .collect();
    ev(
        us,
        json!({"type":"evacuation","ts":ts(us),"hypervisor":"compute-7","trigger":"ids","mode":"host","sid":9000001,
               "victim":"10.1.1.250","plan":plan,"migrate":29,"held":1,"skipped":0,"no_destination":0}),
    );
    for (k, &i) in on_7.iter().enumerate() {
        if k == 29 {
            ev(
                us,
                json!({"type":"action_held","ts":ts(us),"vm":mac(i),"vm_name":format!("vm-{i}"),"action":"migrate",
                       "level":"LOW","reason":"ids","held_because":"cluster_migrations"}),
            );
            continue;
        }
        let dest = format!("compute-{}", k % 5 + 10);
        ev(us, action(i, us, "migrate", Some(dest.clone()), "LOW", "ids", format!("ids-{i}")));
        let mus = us + 2_000_000 + k as i64 * 300_000;
        ev(
            mus,
            json!({"type":"migration","ts":ts(mus),"vm":mac(i),"vm_name":format!("vm-{i}"),"from_hypervisor":"compute-7",
                   "to_hypervisor":dest,"to_mac":null,"to_ip":null,"via":"rarp","signature":"valid","authorized":false,
                   "authorization":"missing","streams":1,"bytes":2_362_232_012u64 + k as u64,"bytes_per_ram":1.1,
                   "total_ms":20_000.0 + k as f64,"downtime_ms":80.0 + k as f64,
                   "downtime_resolution_ms":2.0,"responsive_ms":null,"source_downtime_ms":70.0 + k as f64,"ram_mb":2048,
                   "flavor":if k % 2 == 0 {"m1.small"} else {"m1.medium"}}),
        );
    }
    let end = (WINDOWS + 1) * 1_000_000;
    for i in 0..VMS {
        ev(
            end,
            json!({"type":"vm_stats","ts":ts(end),"vm":mac(i),"vm_name":format!("vm-{i}"),"known":true,"level":"LOW",
                   "tx_bytes":1_500_000 + i as u64,"tx_packets":1000,"rx_bytes":750_000,"rx_packets":900,
                   "rtt_samples":480,"rtt_min_ms":1.0,"rtt_max_ms":2.0,"rtt_mean_ms":1.5,"rtt_p50_ms":1.5,"rtt_p99_ms":2.0}),
        );
    }
    ev(
        end,
        json!({"type":"summary","ts":ts(end),"packets":123_456_789u64,"bytes":98_765_432_100u64,"decode_errors":17,
               "decode_errors_by_kind":{"ipv4":12,"tcp":5},"snaplen_cut":0,"vms":VMS,
               "known_vms":VMS,"mac_evictions":0,"duration_s":121.0,"windows":WINDOWS,"late_frames":0,"queue_dropped":3,
               "damaged_files":0,"unsupported_link_files":0,"placement_dropped":0,"gate_approvals_dropped":0,
               "rtt":{"samples":480_000,"dropped":0,"flow_evictions":0,"probe_evictions":0,"probe_timeouts":0},
               "ids":{"evacuated":1,"unmapped":0,"filtered":0,"malformed":0,"outside_replay":0,"evacuations":1},
               "actions":{"queued":57,"dropped":0,"held":1,"delivered":57,"failed":0,"retries":0,"pending":0,"resumed":0},
               "wall_s":1.0,"read_s":1.0,"processing_pps":1.0,"peak_rss_bytes":null}),
    );
    lines.sort_by_key(|l| l.0);
    let mut text = String::new();
    for (_, l) in &lines {
        let _ = writeln!(text, "{l}");
    }
    std::fs::write(path, text).unwrap();
    lines.len()
}

/// The page and its charts, in bytes, for 1,000 VMs: bounded by the charts'
/// cap (40 VMs) and one table line per quiet VM.
const PAGE_LIMIT: u64 = 1_500_000;

#[test]
fn a_report_of_1000_vms_stays_small_and_renders_in_chromium() {
    let chromium = chromium();
    let d = tempfile::tempdir().unwrap();
    let events = d.path().join("cloud.jsonl");
    let n = cloud(&events);
    assert_eq!(n, 120 * 1000 + 24 * 3 + 2 * 2 + 2 + 29 * 2 + 1 + 1000 + 1);
    let out = d.path().join("out");
    let o = report(&events, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();

    let mut total = 0;
    let mut svgs = 0;
    for f in std::fs::read_dir(&out).unwrap() {
        let f = f.unwrap();
        total += f.metadata().unwrap().len();
        svgs += usize::from(f.file_name().to_string_lossy().starts_with("vm-"));
    }
    eprintln!("1,000 VMs: {total} bytes in {} files", std::fs::read_dir(&out).unwrap().count());
    assert!(total < PAGE_LIMIT, "{total} bytes");
    // 24 raised + 2 more quarantined + 30 evacuated (one of them named by
    // the alert) did something: 56, charted up to the cap, the HIGH ones first.
    assert_eq!(svgs, vmsentry::report::MAX_VM_CHARTS);
    assert!(html.contains("<p class=\"note\">56 VMs did something; charts for the 40 most severe"), "{html:.2000}");
    let first = html.find("<img src=\"vm-").unwrap();
    assert_eq!(&html[first + 10..first + 29], "vm-fa163e0000c8.svg", "vm-200, HIGH, first");
    // Every quiet VM in one table, with its numbers.
    let quiet = table(&html, "quiet");
    assert_eq!(quiet.len(), 1000 - 56);
    let q = quiet.iter().find(|r| r[0] == "vm-999").unwrap();
    assert_eq!(
        q,
        &[
            "vm-999",
            "fa:16:3e:00:03:e7",
            "yes",
            "120",
            "1.10 Mbit/s",
            "50 kbit/s",
            "137 pps",
            "1.43 MiB",
            "732 KiB",
            "480",
            "2 ms"
        ]
    );
    // The overview: totals, decode errors by kind, drops, what was raised.
    let ov = table(&html, "overview");
    let ov: Vec<&str> = ov.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(ov[0], "2023-11-15 22:13:20 – 22:15:21 (121 s of packets; events 22:13:21 – 22:15:21)");
    assert_eq!(ov[1], "123456789 (98765432100 bytes, 92.0 GiB) over 121 s of packet time, 120 windows");
    assert_eq!(ov[3], "17 (ipv4 12, tcp 5)");
    assert_eq!(ov[4], "frames dropped (queue full) 3");
    assert!(
        ov.contains(
            &"26 to MEDIUM or HIGH, 6 of them HIGH: vm-200 HIGH at 22:14:00 (rate, tx: 600 Mbit/s, 75 kpps); vm-201 \
              HIGH at 22:14:00 (rate, tx: 600 Mbit/s, 75 kpps); vm-202 HIGH at 22:14:00 (rate, tx: 600 Mbit/s, 75 \
              kpps); and 23 more below"
        ),
        "{ov:?}"
    );
    let raised = table(&html, "raised");
    assert_eq!(raised.len(), 26);
    assert_eq!(
        raised.iter().find(|r| r[0] == "vm-300").unwrap()[4],
        "volume: 3.07 GiB sent within the horizon, over 3.00 GiB"
    );
    assert_eq!(
        table(&html, "alerts")[0][1..7],
        ["9000001", "1", "LOCAL DOS UDP flood to a tenant VM", "203.0.113.9", "10.1.1.250", "vm-506"]
    );
    let acts = table(&html, "actions");
    assert_eq!(acts.len(), 24 + 2 + 30);
    let held = acts.iter().find(|r| r[4].starts_with("held")).unwrap();
    assert_eq!(held[2..5], ["migrate", "–", "held: cluster_migrations"]);
    // Too many migrations for bars of each: by flavor only.
    assert!(!out.join("migration-downtime.svg").exists() && out.join("flavor-downtime.svg").exists());

    let Some(chromium) = chromium else {
        eprintln!("SKIPPED: the Chromium rendering (chromium not installed)");
        return;
    };
    let png = d.path().join("page.png");
    let profile = tempfile::tempdir().unwrap();
    let o = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.path().display()),
            &format!("--screenshot={}", png.display()),
            "--window-size=1400,3000",
            &format!("file://{}", out.join("index.html").display()),
        ])
        .output()
        .unwrap();
    assert!(png.exists(), "no screenshot: {}", String::from_utf8_lossy(&o.stderr));
    let (w, h, pixels) = decode_png(&std::fs::read(&png).unwrap());
    assert_eq!((w, h), (1400, 3000));
    let mut colours = std::collections::HashSet::new();
    let mut white = 0usize;
    for p in &pixels {
        colours.insert(*p);
        white += usize::from(p[..3] == [255, 255, 255]);
    }
    let inked = 1.0 - white as f64 / pixels.len() as f64;
    eprintln!("screenshot: {} colours, {:.1}% not white", colours.len(), inked * 100.0);
    assert!(colours.len() > 50, "{} colours: a blank or single-colour page", colours.len());
    assert!((0.02..0.9).contains(&inked), "{inked}");
}

/// Chromium, required when CI=true (scripts/test installs it).
fn chromium() -> Option<&'static str> {
    let ok = Command::new("chromium").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok && std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but chromium is not installed: scripts/test installs it");
    }
    ok.then_some("chromium")
}

/// A PNG's width, height and RGBA pixels (8-bit RGB or RGBA, not interlaced:
/// what Chromium writes).
fn decode_png(b: &[u8]) -> (u32, u32, Vec<[u8; 4]>) {
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let be = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
    let (mut w, mut h, mut channels) = (0, 0, 0);
    let mut idat = Vec::new();
    let mut at = 8;
    while at + 8 <= b.len() {
        let len = be(&b[at..]) as usize;
        let kind = &b[at + 4..at + 8];
        let data = &b[at + 8..at + 8 + len];
        match kind {
            b"IHDR" => {
                (w, h) = (be(data), be(&data[4..]));
                assert_eq!((data[8], data[12]), (8, 0), "8-bit, not interlaced");
                channels = match data[9] {
                    2 => 3,
                    6 => 4,
                    t => panic!("colour type {t}"),
                };
            }
            b"IDAT" => idat.extend_from_slice(data),
            _ => {}
        }
        at += 12 + len;
    }
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::ZlibDecoder::new(&idat[..]), &mut raw).unwrap();
    let stride = w as usize * channels;
    assert_eq!(raw.len(), (stride + 1) * h as usize);
    let mut prev = vec![0u8; stride];
    let mut pixels = Vec::with_capacity((w * h) as usize);
    for row in raw.chunks(stride + 1) {
        let (filter, src) = (row[0], &row[1..]);
        let mut cur = vec![0u8; stride];
        for i in 0..stride {
            let a = if i >= channels { cur[i - channels] } else { 0 };
            let (up, c) = (prev[i], if i >= channels { prev[i - channels] } else { 0 });
            let pred = match filter {
                0 => 0,
                1 => a,
                2 => up,
                3 => ((u16::from(a) + u16::from(up)) / 2) as u8,
                4 => {
                    let p = i16::from(a) + i16::from(up) - i16::from(c);
                    let (pa, pb, pc) = ((p - i16::from(a)).abs(), (p - i16::from(up)).abs(), (p - i16::from(c)).abs());
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        up
                    } else {
                        c
                    }
                }
                f => panic!("filter {f}"),
            };
            cur[i] = src[i].wrapping_add(pred);
        }
        for p in cur.chunks(channels) {
            pixels.push([p[0], p[1], p[2], if channels == 4 { p[3] } else { 255 }]);
        }
        prev = cur;
    }
    (w, h, pixels)
}

/// `report --qemu-stats`: QEMU's own figures per migration, matched to the
/// wire's by VM and time, shown beside them in the tables and the charts.
#[test]
fn qemu_s_figures_are_drawn_beside_the_wire_s_by_vm_and_time() {
    let d = tempfile::tempdir().unwrap();
    let events = d.path().join("events.jsonl");
    let mig = |t: &str, vm: &str, flavor: &str, down: f64, total: f64, bytes: u64| {
        format!(
            "{{\"type\":\"migration\",\"ts\":\"2026-12-01T23:30:{t}Z\",\"vm\":\"{vm}\",\"vm_name\":\"g-{flavor}\",\
             \"from_hypervisor\":\"a\",\"to_hypervisor\":\"b\",\"to_mac\":\"52:54:00:78:00:02\",\"to_ip\":\"10.78.0.2\",\
             \"via\":\"rarp\",\"signature\":\"valid\",\"authorized\":false,\"authorization\":\"missing\",\"streams\":1,\
             \"bytes\":{bytes},\"bytes_per_ram\":1.0,\"downtime_ms\":{down},\"downtime_resolution_ms\":null,\
             \"responsive_ms\":null,\"source_downtime_ms\":null,\"total_ms\":{total},\"ram_mb\":128,\
             \"flavor\":\"{flavor}\"}}\n"
        )
    };
    let text = [
        mig("10.000000", "52:54:00:00:00:01", "small", 40.0, 1000.0, 1_000_000),
        mig("20.000000", "52:54:00:00:00:01", "small", 60.0, 1200.0, 3_000_000),
        mig("30.000000", "52:54:00:00:00:02", "large", 90.0, 3000.0, 9_000_000),
    ]
    .concat();
    std::fs::write(&events, text).unwrap();
    let q = |t: &str, vm: &str, down: f64, total: f64, bytes: u64| {
        format!(
            "{{\"type\":\"qemu_migration\",\"ts\":\"2026-12-01T23:30:{t}Z\",\"vm\":\"{vm}\",\"downtime_ms\":{down},\
             \"total_ms\":{total},\"bytes\":{bytes}}}\n"
        )
    };
    // Each about half a second after the wire's (libvirt answers after the
    // announce); the last names a VM the wire never saw move.
    let qemu = d.path().join("qemu.jsonl");
    std::fs::write(
        &qemu,
        [
            q("20.400000", "52:54:00:00:00:01", 50.0, 1190.0, 2_900_000),
            q("10.500000", "52:54:00:00:00:01", 30.0, 990.0, 900_000),
            q("30.600000", "52:54:00:00:00:02", 80.0, 2950.0, 8_800_000),
            q("40.000000", "52:54:00:00:00:09", 1.0, 1.0, 1),
        ]
        .concat(),
    )
    .unwrap();
    let out = d.path().join("out");
    let o = vmsentry(&[
        "report",
        events.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--qemu-stats",
        qemu.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "vmsentry: note: {}: QEMU's migration of 52:54:00:00:00:09 at 2026-12-01T23:30:40.000000Z matches no \
             migration on the wire within 10 s; left out",
            qemu.display()
        )),
        "{stderr}"
    );
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    let rows = table(&html, "migrations");
    let tail: Vec<Vec<String>> = rows
        .iter()
        .map(|r| vec![r[0].clone(), r[6].clone()].into_iter().chain(r[10..].iter().cloned()).collect())
        .collect();
    assert_eq!(
        tail,
        [
            ["g-small", "40", "30", "990", "900000"],
            ["g-small", "60", "50", "1190", "2900000"],
            ["g-large", "90", "80", "2950", "8800000"],
        ]
        .map(|r| r.map(String::from).to_vec())
    );
    assert_eq!(
        table(&html, "flavors"),
        [
            ["large", "1", "90", "3000", "9000000", "80", "2950", "8800000"],
            ["small", "2", "50", "1100", "2000000", "40", "1090", "1900000"],
        ]
        .map(|r| r.map(String::from).to_vec())
    );
    for f in ["flavor-downtime.svg", "flavor-total.svg", "flavor-bytes.svg", "migration-bytes.svg"] {
        let svg = std::fs::read_to_string(out.join(f)).unwrap();
        // The legend, and QEMU's bars in their own colour beside the wire's.
        assert!(svg.contains(">\nQEMU\n</text>") && svg.contains(">\nwire\n</text>"), "{f} names both series");
        assert!(svg.contains("fill=\"#EB9600\"") && svg.contains("fill=\"#466EB4\""), "{f} draws both series");
    }
    // Without the file: the wire's columns only, one bar each.
    let plain = d.path().join("plain");
    let o = vmsentry(&["report", events.to_str().unwrap(), "--out", plain.to_str().unwrap()]);
    assert!(o.status.success());
    let html = std::fs::read_to_string(plain.join("index.html")).unwrap();
    assert!(table(&html, "migrations").iter().all(|r| r.len() == 10));
    assert!(!std::fs::read_to_string(plain.join("flavor-bytes.svg")).unwrap().contains("QEMU"));
    // A line that is not QEMU's: refused with its place.
    std::fs::write(&qemu, q("10.5", "52:54:00:00:00:01", 1.0, 1.0, 1).replace("qemu_migration", "migration")).unwrap();
    let o = vmsentry(&[
        "report",
        events.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--qemu-stats",
        qemu.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim_end(),
        format!("vmsentry: {}:1: a reference line must be of type `qemu_migration`, not `migration`", qemu.display())
    );
}

/// docs/flavors/: the committed run of scripts/flavors-lab.sh still reads,
/// and the report pairs each of QEMU's figures with the migration
/// numbers.tsv joined it to by MAC (the report matches by VM and time).
#[test]
fn the_flavors_lab_s_committed_run_reports_qemu_beside_the_wire() {
    let docs = root().join("docs/flavors");
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let o = vmsentry(&[
        "report",
        docs.join("events.jsonl").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--qemu-stats",
        docs.join("qemu.jsonl").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(!stderr.contains("note:"), "every QEMU line matched: {stderr}");
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    let rows = table(&html, "migrations");
    let tsv = std::fs::read_to_string(docs.join("numbers.tsv")).unwrap();
    let want: Vec<Vec<String>> = tsv
        .lines()
        .skip(1)
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            // vm, flavor, from, to, wire downtime, QEMU, wire total, QEMU, wire bytes, QEMU.
            [c[0], c[1], c[2], c[3], c[4], c[6], c[8], c[5], c[7], c[9]].map(String::from).to_vec()
        })
        .collect();
    let got: Vec<Vec<String>> = rows
        .iter()
        .map(|r| [&r[0], &r[2], &r[3], &r[4], &r[6], &r[7], &r[8], &r[10], &r[11], &r[12]].map(|s| s.clone()).to_vec())
        .collect();
    assert_eq!(got, want);
    assert_eq!(rows.len(), 9);
    let flavors: Vec<String> = table(&html, "flavors").iter().map(|r| format!("{} {}", r[0], r[1])).collect();
    assert_eq!(flavors, ["m1.large 3", "m1.medium 3", "m1.small 3"]);
}
