//! The migration lab (tests/lab/lab.sh): real QEMU guests live-migrated over a kernel VXLAN overlay, `vmsentry live` on the underlay, every move checked against QEMU's own `query-migrate`.
//!
//! One lab run serves every test here (it boots five QEMUs and migrates
//! five times in about a minute); its output stays in `target/lab-run/` for
//! a look afterwards. Needs root, QEMU, iproute2, tcpdump and tshark (the
//! script installs the Debian packages it lacks); skipped without root
//! unless `CI=true`, where it must run.

use super::*;
use std::sync::OnceLock;

const VIRTIO: &str = "52:54:00:4c:00:0a";
const E1000: &str = "52:54:00:4c:00:0b";
const NOOS: &str = "52:54:00:4c:00:0c";

struct LabRun {
    dir: PathBuf,
    /// `vmsentry live`'s events.
    events: Vec<Value>,
    /// One line per migration: tag, vm, from, to, QEMU's `query-migrate`, and
    /// the instants (s) of QEMU's STOP at the source and RESUME at the destination.
    qemu: Vec<Value>,
}

impl LabRun {
    fn qemu(&self, tag: &str) -> &Value {
        self.qemu.iter().find(|m| m["tag"] == tag).unwrap_or_else(|| panic!("no migration {tag}"))
    }

    /// vmsentry's `migration` event for QEMU's migration `tag` (same VM, from, to).
    fn event(&self, tag: &str) -> &Value {
        let q = self.qemu(tag);
        let found: Vec<&Value> = of_type(&self.events, "migration")
            .into_iter()
            .filter(|e| e["vm"] == q["vm"] && e["from_hypervisor"] == q["from"] && e["to_hypervisor"] == q["to"])
            .collect();
        assert_eq!(found.len(), 1, "{tag}: {found:?}");
        found[0]
    }

    /// QEMU's STOP event at the source to its RESUME at the destination, in ms.
    fn pause_ms(&self, tag: &str) -> f64 {
        let q = self.qemu(tag);
        let at = |k: &str| q[k].as_f64().unwrap_or_else(|| panic!("{tag}: no QEMU {k} event: {q}"));
        (at("resume") - at("stop")) * 1000.0
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }
}

fn usable() -> bool {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout == b"0\n");
    if !root && std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true: the migration lab needs root (it makes network namespaces and runs QEMU)");
    }
    root
}

static LAB: OnceLock<Result<LabRun, String>> = OnceLock::new();

/// The lab's results, running it the first time; `None` when skipped.
fn lab() -> Option<&'static LabRun> {
    if !usable() {
        eprintln!("SKIPPED: the migration lab needs root (set CI=true to require it)");
        return None;
    }
    let run = LAB.get_or_init(|| {
        let dir = root().join("target/lab-run");
        // A QEMU that ends on its own is the emulated guest's fault, not
        // what is tested: under TCG (QEMU 7.2) a guest kernel sometimes
        // panics after a move, on corrupt memory in virtio-net's transmit
        // path (a list or slab BUG; seen in CI twice in one run, here about
        // 1 run in 12 with both cores loaded), and `-no-reboot` then ends
        // that QEMU. The lab runs again then, and only then, up to five
        // times in all; each failed run is kept in target/lab-run.failed-N.
        let mut failures = Vec::new();
        loop {
            let _ = std::fs::remove_dir_all(&dir);
            let out = Command::new(root().join("tests/lab/lab.sh"))
                .arg(&dir)
                .env("VMSENTRY", env!("CARGO_BIN_EXE_vmsentry"))
                .output()
                .map_err(|e| format!("tests/lab/lab.sh: {e}"))?;
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            std::fs::write(dir.join("lab.log"), &err).ok();
            if out.status.success() {
                break;
            }
            let exited = std::fs::read_to_string(dir.join("qemu-exited")).unwrap_or_default();
            let panicked = std::fs::read_dir(&dir).into_iter().flatten().flatten().any(|e| {
                e.path().extension().is_some_and(|x| x == "serial")
                    && std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains("Kernel panic"))
            });
            failures.push(format!("attempt {} ({}):\n{err}{exited}", failures.len() + 1, out.status));
            let qemu_ended = panicked || !exited.is_empty();
            if !qemu_ended || failures.len() == 5 {
                return Err(format!("tests/lab/lab.sh failed:\n{}", failures.join("\n")));
            }
            let kept = root().join(format!("target/lab-run.failed-{}", failures.len()));
            let _ = std::fs::remove_dir_all(&kept);
            let _ = std::fs::rename(&dir, &kept);
            eprintln!("lab: a QEMU ended on its own (kept in {}); running the lab again", kept.display());
        }
        let lines = |p: &str| -> Vec<Value> {
            std::fs::read_to_string(dir.join(p))
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        Ok(LabRun { events: lines("events.jsonl"), qemu: lines("migrations.jsonl"), dir })
    });
    match run {
        Ok(l) => Some(l),
        Err(e) => panic!("{e}"),
    }
}

/// How late QEMU 7.2's source may end `query-migrate`'s downtime after its
/// last write: its migration thread reads that clock in
/// `migration_calculate_complete`, after taking the big QEMU lock in
/// `migration_iteration_finish`, and the lock's holder (the main loop,
/// answering the lab's `query-migrate` polls) or a busy CPU can keep it
/// waiting (measured once in a full local CI run: 50 ms against a STOP to RESUME of
/// 45.52 ms). The wire's and QEMU's events' bounds do not depend on it.
const QEMU_DOWNTIME_LAG_MS: f64 = 10.0;

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Checks one move against QEMU: hypervisors, signature, bytes, total time,
/// and QEMU's pause (STOP to RESUME) and `query-migrate` downtime against
/// the event's downtime and its bounds.
fn check_against_qemu(lab: &LabRun, tag: &str, signature: &str) {
    let (q, e) = (lab.qemu(tag), lab.event(tag));
    let qm = &q["qemu"];
    assert_eq!(qm["status"], "completed");
    assert_eq!((&e["signature"], &e["via"]), (&json!(signature), &json!("rarp")), "{tag}: {e}");
    // The wire carries RAM (QEMU's `transferred`) plus the device state and
    // the vmstate description (about 165 kB for these guests), plus
    // Ethernet/IP/TCP headers and the acknowledgements.
    let transferred = f(&qm["ram"]["transferred"]);
    let bytes = f(&e["bytes"]);
    assert!(
        bytes >= transferred && bytes <= transferred * 1.10 + 256.0 * 1024.0,
        "{tag}: {bytes} bytes on the wire, QEMU transferred {transferred}"
    );
    // 5 %, and at least 5 ms for the short ones (the first segment on the
    // wire comes a little after QEMU starts its clock).
    // A migration that fits in the source's TCP send buffer (4 MiB here) is
    // written in full before the kernel has sent it: QEMU's clock stops at
    // the last write, the wire's at the last segment (measured: the no-OS
    // guest's 0.97 MB took 47 ms by QEMU, 87 ms on the wire, and once 52
    // against 150 ms, while the e1000's stream shared the link). Those get
    // 250 ms more above.
    let total = f(&qm["total-time"]);
    let (wire, small) = (f(&e["total_ms"]), transferred < 4.0 * 1024.0 * 1024.0);
    let slack = (total * 0.05).max(5.0);
    assert!(
        wire >= total - slack && wire <= total + slack + if small { 250.0 } else { 0.0 },
        "{tag}: total {wire} ms, QEMU {total} ms"
    );
    // QEMU's pause as QEMU itself timed it: its STOP event at the source to
    // its RESUME at the destination, on the clock that stamps the capture.
    let pause = lab.pause_ms(tag);
    let qd = f(&qm["downtime"]);
    // `query-migrate`'s downtime is part of that pause: from the stop to the
    // source's last write, in whole ms of a ms clock, its clock started just
    // before the vCPUs stop and the STOP event stamped just after (measured:
    // the e1000's 13 ms against 12.83 ms), hence 2 ms, plus its lag.
    assert!(qd <= pause + 2.0 + QEMU_DOWNTIME_LAG_MS, "{tag}: QEMU's downtime {qd} ms, its STOP to RESUME {pause} ms");
    if e["downtime_ms"].is_null() {
        assert!(e["downtime_resolution_ms"].is_null(), "{tag}: {e}");
    } else {
        let (d, res) = (f(&e["downtime_ms"]), f(&e["downtime_resolution_ms"]));
        assert!(res >= 0.0 && res <= d, "{tag}: {e}");
        // The pause lies in [d - res, d], give or take the event
        // timestamps' own lag (QEMU stamps STOP after pausing the vCPUs,
        // its RARP comes 0.04-0.21 ms after RESUME here). The lower
        // bound assumes the guest kept its pace until QEMU stopped it; a
        // guest starved of CPU (two migrations at once on two cores: the
        // e1000 once fell quiet 100 ms before QEMU's stop) breaks it, so it
        // is held to it only when the lab keeps it busy and alone.
        assert!(pause <= d + 1.0, "{tag}: QEMU's STOP to RESUME {pause} ms above {d} ms");
        assert!(qd - 1.0 - QEMU_DOWNTIME_LAG_MS <= d, "{tag}: QEMU's downtime {qd} ms above {d} ms");
        if tag == "busy" {
            assert!(pause + 1.0 >= d - res, "{tag}: QEMU's STOP to RESUME {pause} ms below {} ms", d - res);
        }
    }
}

#[test]
fn lab_virtio_moves_busy_and_back_match_qemus_query_migrate() {
    let Some(lab) = lab() else { return };
    check_against_qemu(lab, "busy", "valid");
    check_against_qemu(lab, "back", "valid");
    assert_eq!(lab.event("back")["from_hypervisor"], "lab-2");
}

#[test]
fn lab_busy_guest_downtime_is_within_15_ms_of_qemus() {
    let Some(lab) = lab() else { return };
    let (q, e) = (lab.qemu("busy"), lab.event("busy"));
    // The pause by QEMU's own events, STOP at the source to RESUME at the
    // destination (measured: `downtime_ms` 0.3-2.1 ms above it).
    let (d, pause) = (f(&e["downtime_ms"]), lab.pause_ms("busy"));
    assert!((d - pause).abs() <= 15.0, "downtime {d} ms, QEMU's STOP to RESUME {pause} ms: {e}");
    // `query-migrate`'s downtime stops at the source's last write, which
    // may be before its last segment leaves (measured once: 8 ms by QEMU,
    // the stream's last segment 17.9 ms after STOP) and always before the
    // destination has loaded: the wire's `source_downtime_ms` (the VM's
    // last frame to the stream's last data) is at least it, give or take
    // QEMU's whole ms and its clock starting just before the stop (2 ms),
    // and its lag.
    let (sd, qd) = (f(&e["source_downtime_ms"]), f(&q["qemu"]["downtime"]));
    assert!(qd - 2.0 - QEMU_DOWNTIME_LAG_MS <= sd && sd < d, "source downtime {sd} ms, QEMU {qd} ms: {e}");
    // Answering a ping every 2 ms, its pace before the move is known: the
    // bounds say more than "somewhere in the silence" (measured: the
    // resolution 0.48-0.70 of the silence), unless the TCG guest itself fell
    // quiet that long in the 250 ms before its last frame (once in CI: 30 ms
    // during pre-copy, a 20 ms downtime), when the bound is the silence. A
    // gap between half the silence and all of it may or may not set the
    // bound: then only `res <= d` is asserted.
    let res = f(&e["downtime_resolution_ms"]);
    let gap = largest_frame_gap_ms(lab, VIRTIO, f(&q["stop"]));
    if gap < d / 2.0 {
        assert!(res < d, "largest frame gap {gap} ms: {e}");
    } else if gap >= d {
        assert_eq!(res, d, "largest frame gap {gap} ms: {e}");
    }
    assert!(res <= d, "{e}");
}

/// The largest gap, in ms, between `mac`'s frames on the underlay (inside
/// VXLAN) in the 250 ms before its last frame before `stop` (epoch seconds).
fn largest_frame_gap_ms(lab: &LabRun, mac: &str, stop: f64) -> f64 {
    let tshark = tshark().expect("the lab needs tshark");
    let out = Command::new(tshark)
        .arg("-r")
        .arg(lab.path("underlay.pcap"))
        .args(["-Y", &format!("eth.src == {mac} && frame.time_epoch < {stop:.6}"), "-T", "fields"])
        .args(["-e", "frame.time_epoch"])
        .output()
        .unwrap();
    let times: Vec<f64> = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
    let last = *times.last().expect("the VM's frames before its stop");
    let recent: Vec<f64> = times.into_iter().filter(|&t| t >= last - 0.25).collect();
    recent.windows(2).map(|w| (w[1] - w[0]) * 1000.0).fold(0.0, f64::max)
}

#[test]
fn lab_two_guests_moving_at_once_each_get_their_own_stream() {
    let Some(lab) = lab() else { return };
    check_against_qemu(lab, "pair-e1000", "valid");
    check_against_qemu(lab, "pair-noos", "valid");
    let (a, b) = (lab.event("pair-e1000"), lab.event("pair-noos"));
    assert!(a["streams"].as_u64() >= Some(1) && b["streams"].as_u64() >= Some(1), "{a} {b}");
    // The guest with no OS sent nothing before it moved.
    assert_eq!((&b["downtime_ms"], &b["downtime_resolution_ms"]), (&Value::Null, &Value::Null));
    assert_eq!(b["vm"], NOOS);
}

#[test]
fn lab_token_authorizes_the_e1000_move_and_only_it() {
    let Some(lab) = lab() else { return };
    let auth: Vec<(String, Value)> = ["busy", "back", "pair-e1000", "pair-noos", "unsigned"]
        .iter()
        .map(|t| (t.to_string(), lab.event(t)["authorization"].clone()))
        .collect();
    let want: Vec<(String, Value)> = [
        ("busy", "missing"),
        ("back", "missing"),
        ("pair-e1000", "granted"),
        ("pair-noos", "missing"),
        ("unsigned", "missing"),
    ]
    .iter()
    .map(|(t, a)| (t.to_string(), json!(a)))
    .collect();
    assert_eq!(auth, want);
    assert_eq!(lab.event("pair-e1000")["vm"], E1000);
    // Replayed with tokens required (and the token unused again): every
    // other move to a signed host is HIGH (signature); the e1000's is not.
    let rules = tempfile::tempdir().unwrap();
    for f in ["vmsentry.toml", "cluster.key"] {
        std::fs::copy(lab.path("rules").join(f), rules.path().join(f)).unwrap();
    }
    std::fs::set_permissions(rules.path().join("cluster.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::create_dir(rules.path().join("tokens")).unwrap();
    std::fs::copy(lab.path("rules/tokens/lab-e1000"), rules.path().join("tokens/lab-e1000")).unwrap();
    let p = rules.path().join("vmsentry.toml");
    let text =
        std::fs::read_to_string(&p).unwrap().replace("[migration]\n", "[migration]\nrequire_authorization = true\n");
    std::fs::write(&p, text).unwrap();
    let ev = replay(rules.path(), 2, &[lab.path("underlay.pcap")]);
    let raised: Vec<Value> = of_type(&ev, "level")
        .into_iter()
        .filter(|e| e["from"] == "LOW" && e["reason"] == "signature")
        .map(|e| e["vm"].clone())
        .collect();
    assert_eq!(
        raised,
        vec![json!(VIRTIO), json!(NOOS)],
        "the busy move raises lab-virtio; it then holds through its later moves"
    );
}

#[test]
fn lab_move_to_the_unsigned_host_quarantines_once_and_holds() {
    let Some(lab) = lab() else { return };
    check_against_qemu(lab, "unsigned", "invalid");
    let e = lab.event("unsigned");
    let ts = e["ts"].as_str().unwrap();
    let after = |t: &'static str| -> Vec<&Value> {
        lab.events.iter().filter(|x| x["type"] == t && x["vm"] == VIRTIO && x["ts"].as_str() >= Some(ts)).collect()
    };
    let q = after("action");
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!((&q[0]["action"], &q[0]["reason"]), (&json!("quarantine"), &json!("signature")));
    // Pinged every 500 ms for 4 s behind lab-3 (100 ms windows, clear_windows 3):
    // HIGH once, never lowered.
    let levels: Vec<Value> = after("level").into_iter().map(|l| json!([l["from"], l["to"], l["reason"]])).collect();
    assert_eq!(levels, vec![json!(["LOW", "HIGH", "signature"])]);
}

#[test]
fn lab_virtio_guest_announces_itself_and_the_others_only_by_rarp() {
    let Some(lab) = lab() else { return };
    let Some(tshark) = tshark() else { return };
    // Frames of a VM from the destination VTEP in the second after its move.
    let kinds = |tag: &str, mac: &str| -> Vec<String> {
        let e = lab.event(tag);
        let q = lab.qemu(tag);
        let to_ip = format!("10.78.0.{}", q["to"].as_str().unwrap().trim_start_matches("lab-"));
        let t0 = humantime::parse_rfc3339(e["ts"].as_str().unwrap())
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let filter = format!(
            "eth.src == {mac} && ip.src == {to_ip} && frame.time_epoch >= {t0:.6} && frame.time_epoch < {:.6}",
            t0 + 1.0
        );
        let out = Command::new(tshark)
            .arg("-r")
            .arg(lab.path("underlay.pcap"))
            .args(["-Y", &filter, "-T", "fields", "-e", "arp.opcode", "-e", "arp.isannouncement", "-e", "icmpv6.type"])
            .output()
            .unwrap();
        let mut k: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let c: Vec<&str> = l.split('\t').collect();
                let (op, ann, v6) = (c.first().copied(), c.get(1).copied(), c.get(2).copied());
                match (op, ann, v6) {
                    (Some("3"), _, _) => Some("rarp"),
                    (Some("1"), Some("1" | "True"), _) => Some("garp"),
                    (_, _, Some("136")) => Some("na"),
                    (_, _, Some("143")) => Some("mld"),
                    _ => None,
                }
                .map(str::to_string)
            })
            .collect();
        k.sort();
        k.dedup();
        k
    };
    // QEMU's RARP for all; the virtio guest's own gratuitous ARP, unsolicited
    // neighbour advertisement and MLD report too (VIRTIO_NET_F_GUEST_ANNOUNCE).
    assert_eq!(kinds("busy", VIRTIO), vec!["garp", "mld", "na", "rarp"]);
    assert_eq!(kinds("back", VIRTIO), vec!["garp", "mld", "na", "rarp"]);
    // The e1000 has no guest announce: no gratuitous ARP (a Linux guest a
    // few seconds after boot may still send IPv6 neighbour discovery).
    let e = kinds("pair-e1000", E1000);
    assert!(e.contains(&"rarp".to_string()) && !e.contains(&"garp".to_string()), "{e:?}");
    assert_eq!(kinds("pair-noos", NOOS), vec!["rarp"]);
}

#[test]
fn lab_replay_of_the_underlay_capture_finds_the_live_moves_for_any_threads() {
    let Some(lab) = lab() else { return };
    let rules = tempfile::tempdir().unwrap();
    for f in ["vmsentry.toml", "cluster.key"] {
        std::fs::copy(lab.path("rules").join(f), rules.path().join(f)).unwrap();
    }
    std::fs::set_permissions(rules.path().join("cluster.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::create_dir(rules.path().join("tokens")).unwrap();
    let moves = |ev: &[Value]| -> Vec<Value> {
        of_type(ev, "migration")
            .into_iter()
            .map(|e| json!([e["vm"], e["from_hypervisor"], e["to_hypervisor"], e["via"], e["streams"]]))
            .collect()
    };
    let one = replay(rules.path(), 1, &[lab.path("underlay.pcap")]);
    let three = replay(rules.path(), 3, &[lab.path("underlay.pcap")]);
    assert_eq!(stable(one.clone()), stable(three));
    assert_eq!(moves(&one), moves(&lab.events));
    assert_eq!(moves(&one).len(), 5);
}

#[test]
fn lab_busy_guest_time_to_responsiveness_agrees_with_its_frames() {
    let Some(lab) = lab() else { return };
    let Some(tshark) = tshark() else { return };
    let e = lab.event("busy");
    let at = humantime::parse_rfc3339(e["ts"].as_str().unwrap())
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // The guest's frames from its live capture, by VTEP.
    let out = Command::new(tshark)
        .arg("-r")
        .arg(lab.path("underlay.pcap"))
        .args(["-Y", &format!("eth.src == {VIRTIO}"), "-T", "fields", "-e", "frame.time_epoch", "-e", "ip.src"])
        .output()
        .unwrap();
    let frames: Vec<(f64, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (t, ip) = l.split_once('\t')?;
            Some((t.parse().ok()?, ip.split(',').next()?.to_string()))
        })
        .collect();
    let src: Vec<f64> = frames.iter().filter(|f| f.1 == "10.78.0.1" && f.0 < at).map(|f| f.0).collect();
    let dst: Vec<f64> = frames.iter().filter(|f| f.1 == "10.78.0.2" && f.0 >= at).map(|f| f.0).collect();
    let last = *src.last().unwrap();
    let pre = src.iter().filter(|&&t| t > last - 0.25).count() as f64 / 0.25;
    // The event's definition, on exact times: 80 % of the rate of the 250 ms
    // before, over 12.5 ms (8 slots of a 100 ms window).
    let span = 0.0125;
    let need = (0.8 * pre * span).ceil() as usize;
    let back = dst
        .iter()
        .map(|&t0| (t0, dst.iter().filter(|&&t| t >= t0 && t < t0 + span).count()))
        .find(|&(_, n)| n >= need)
        .map(|(t0, _)| (t0 - at) * 1000.0);
    // The guest answering its ping flood is back well within the event's
    // bound (1 s after the move), however late in its window it moved.
    let b = back.unwrap_or_else(|| panic!("the busy guest's frames never got back to its pace: {e}"));
    assert!(b + span * 1000.0 < 1000.0, "back {b} ms after the move");
    let ms = e["responsive_ms"].as_f64().unwrap_or_else(|| panic!("no responsive_ms for the busy guest: {e}"));
    // The event counts whole slots of 1.5625 ms: it agrees to within its
    // run of 8 (12.5 ms).
    assert!((ms - b).abs() <= 12.5, "event {ms} ms, frames {b} ms");
    assert!(pre > 200.0, "the busy guest sent {pre} frames a second before its move");
}

/// Rules for the shipped lab captures (`captures/lab-*.pcap.gz`): the lab's
/// three hypervisors and guests, signed with the demo cluster key (lab-3 for
/// another MAC: unsigned), 100 ms windows, a token for lab-e1000's move.
fn lab_capture_rules() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let key = d.path().join("cluster.key");
    std::fs::copy(root().join("rules/cluster.key"), &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let k = key.to_str().unwrap();
    let sign = |id: &str, mac: &str| {
        let o = vmsentry(&["sign", "--key-file", k, "--cluster", "lab", "--id", id, "--mac", mac]);
        assert!(o.status.success());
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    let mut text = "[cluster]\nname = \"lab\"\nkey_file = \"cluster.key\"\n[window]\nlength_ms = 100\n[thresholds]\n\
                    medium_bps = 400_000_000\nhigh_bps = 800_000_000\nmedium_pps = 100_000\nhigh_pps = 200_000\n\
                    clear_windows = 3\n[migration]\ntokens_dir = \"tokens\"\n"
        .to_string();
    for h in 1..=3 {
        let mac = format!("52:54:00:4c:ff:0{h}");
        let signed = if h == 3 { "52:54:00:4c:ff:99".to_string() } else { mac.clone() };
        text += &format!(
            "[[hypervisor]]\nid = \"lab-{h}\"\nmacs = [\"{mac}\"]\nips = [\"10.78.0.{h}\"]\nsignature = \"{}\"\n",
            sign(&format!("lab-{h}"), &signed)
        );
    }
    for (name, mac) in [("virtio", VIRTIO), ("e1000", E1000), ("noos", NOOS)] {
        text += &format!("[[vm]]\nname = \"lab-{name}\"\nmac = \"{mac}\"\nram_mb = 128\nhypervisor = \"lab-1\"\n");
    }
    std::fs::write(d.path().join("vmsentry.toml"), text).unwrap();
    std::fs::create_dir(d.path().join("tokens")).unwrap();
    let o = vmsentry(&["authorize", "--key-file", k, "--vm", E1000, "--to", "lab-2", "--ttl", "1h"]);
    assert!(o.status.success());
    std::fs::write(d.path().join("tokens/lab-e1000"), o.stdout).unwrap();
    d
}

fn lab_moves(ev: &[Value]) -> Vec<Value> {
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
                e["downtime_ms"],
                e["downtime_resolution_ms"],
                e["responsive_ms"],
                e["source_downtime_ms"]
            ])
        })
        .collect()
}

fn lab_levels(ev: &[Value]) -> Vec<Value> {
    of_type(ev, "level").into_iter().map(|e| json!([e["ts"], e["vm_name"], e["from"], e["to"], e["reason"]])).collect()
}

#[test]
fn lab_captures_replay_to_their_pinned_moves() {
    let runs: Vec<_> = LAB_CAPTURES
        .iter()
        .map(|(file, m, l)| {
            let rules = lab_capture_rules();
            let ev = replay(rules.path(), 2, &[capture(file)]);
            (file, m, l, ev)
        })
        .collect();
    for (file, want_moves, want_levels, ev) in runs {
        let got = (lab_moves(&ev), lab_levels(&ev));
        let want: (Vec<Value>, Vec<Value>) =
            (serde_json::from_str(want_moves).unwrap(), serde_json::from_str(want_levels).unwrap());
        assert_eq!(got, want, "{file}");
        let s = summary(&ev);
        assert_eq!((s["decode_errors"].as_u64(), s["snaplen_cut"].as_u64()), (Some(0), Some(0)), "{file}");
        // Any number of shards gives the same events.
        let rules = lab_capture_rules();
        let three = replay(rules.path(), 3, &[capture(file)]);
        assert_eq!(lab_moves(&three), got.0, "{file}, 3 threads");
    }
}

/// What each shipped lab capture must give (captures/README.md): its moves
/// (ts, VM, from, to, via, signature, authorization, streams, bytes, total,
/// downtime, its resolution, time-to-responsiveness, source downtime) and level changes.
const LAB_CAPTURES: &[(&str, &str, &str)] = &[
    (
        "lab-busy.pcap.gz",
        r#"[["2026-12-01T23:37:15.093845Z","lab-virtio","lab-1","lab-2","rarp","valid","missing",2,97194624,1890.765,15.867,12.887,28.03,15.48]]"#,
        "[]",
    ),
    (
        "lab-pair.pcap.gz",
        r#"[["2026-12-01T23:37:47.420182Z","lab-noos","lab-1","lab-2","rarp","valid","missing",2,1003002,21.507,null,null,null,null],
            ["2026-12-01T23:37:48.369800Z","lab-e1000","lab-1","lab-2","rarp","valid","granted",2,76646866,1422.899,24.396,24.396,null,22.093]]"#,
        "[]",
    ),
    (
        "lab-unsigned.pcap.gz",
        r#"[["2026-12-01T23:37:53.978039Z","lab-virtio","lab-1","lab-3","rarp","invalid","missing",2,96691249,1892.129,188.614,188.614,null,187.885],
            ["2026-12-01T23:37:56.686919Z","lab-e1000","lab-1","lab-2","traffic","valid","granted",0,null,null,null,null,null,null]]"#,
        r#"[["2026-12-01T23:37:54.000000Z","lab-virtio","LOW","HIGH","signature"]]"#,
    ),
];

#[test]
fn a_busy_capture_with_one_event_held_at_most_writes_its_open_move_early_with_nulls() {
    let rules = lab_capture_rules();
    let path = rules.path().join("vmsentry.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let whole = replay_with(rules.path(), 2, &["--rtt-samples"], &[capture("lab-busy.pcap.gz")]);
    assert_eq!(summary(&whole).get("migrations_written_open"), None, "left out when 0");
    // RTT samples come after the move while it waits for the guest's return: past one, it is written.
    std::fs::write(&path, format!("{text}[limits]\nheld_events = 1\n")).unwrap();
    let ev = replay_with(rules.path(), 2, &["--rtt-samples"], &[capture("lab-busy.pcap.gz")]);
    let s = summary(&ev);
    assert_eq!(s["migrations_written_open"], 1, "{s}");
    // The move as pinned, but what it waited for unknown: its return (the
    // streams were chosen in its window, so they stay).
    let want: Vec<Value> = serde_json::from_str(
        r#"[["2026-12-01T23:37:15.093845Z","lab-virtio","lab-1","lab-2","rarp","valid","missing",2,97194624,1890.765,15.867,12.887,null,15.48]]"#,
    )
    .unwrap();
    assert_eq!(lab_moves(&ev), want);
    // The same events otherwise, in the same packet-time order.
    let rest = |ev: &[Value]| -> Vec<Value> {
        ev.iter().filter(|e| e["type"] != "migration" && e["type"] != "summary").cloned().collect()
    };
    assert_eq!(rest(&ev), rest(&whole));
    let at = |ev: &[Value]| ev.iter().position(|e| e["type"] == "migration").unwrap();
    assert_eq!(at(&ev), at(&whole));
}
