//! Action backends with real parts: a program run by `exec`, an HTTP server for `webhook`, and the journal across kill -9.

use super::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn exec_runs_the_program_with_the_action_as_arguments_and_json() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let prog = script(
        d.path(),
        "act",
        &format!("printf '%s\n' \"$@\" >> {0}/args; cat >> {0}/stdin; echo >> {0}/stdin", d.path().display()),
    );
    let rules = with_rules(&format!(
        "\n[backend]\nquarantine = \"exec\"\n[backend.exec]\nprogram = \"{}\"\nargs = [\"--dry-run\"]\n",
        prog.display()
    ));
    let ev = replay(rules.path(), 1, &[capture("basic.pcap")]);
    let _ = out;
    // rogue-1's quarantine went to exec; the rest to log.
    let a: Vec<Value> =
        of_type(&ev, "action").into_iter().map(|e| json!([e["vm_name"], e["action"], e["backend"]])).collect();
    assert!(a.contains(&json!(["rogue-1", "quarantine", "exec"])), "{a:?}");
    assert!(a.contains(&json!(["db-1", "alert", "log"])), "{a:?}");
    let args = std::fs::read_to_string(d.path().join("args")).unwrap();
    assert_eq!(
        args.lines().collect::<Vec<_>>(),
        [
            "--dry-run",
            "--id",
            "1700000031000000-3",
            "--action",
            "quarantine",
            "--vm",
            "fa:16:3e:00:00:04",
            "--level",
            "MEDIUM",
            "--reason",
            "rate",
            "--vm-name",
            "rogue-1",
            "--hypervisor",
            "compute-9"
        ]
    );
    let stdin: Value = serde_json::from_str(std::fs::read_to_string(d.path().join("stdin")).unwrap().trim()).unwrap();
    assert_eq!(
        (
            stdin["id"].clone(),
            stdin["action"].clone(),
            stdin["vm"].clone(),
            stdin["ts_us"].clone(),
            stdin["signed"].clone()
        ),
        (
            json!("1700000031000000-3"),
            json!("quarantine"),
            json!("fa:16:3e:00:00:04"),
            json!(1_700_000_031_000_000i64),
            json!(false)
        )
    );
    assert_eq!(summary(&ev)["actions"]["delivered"], 5);
}

#[test]
fn exec_exit_75_is_retried_other_failures_and_timeouts_are_counted() {
    let d = tempfile::tempdir().unwrap();
    let count = d.path().join("count");
    // Fails with 75 twice, then succeeds.
    let flaky = script(
        d.path(),
        "flaky",
        &format!(
            "n=$(cat {0} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {0}; [ $n -ge 3 ] && exit 0; exit 75",
            count.display()
        ),
    );
    let rules = with_rules(&format!(
        "\n[backend]\nquarantine = \"exec\"\nbackoff_ms = 20\n[backend.exec]\nprogram = \"{}\"\n",
        flaky.display()
    ));
    let s = summary(&replay(rules.path(), 1, &[capture("basic.pcap")])).clone();
    assert_eq!(
        (s["actions"]["delivered"].clone(), s["actions"]["retries"].clone(), s["actions"]["failed"].clone()),
        (json!(5), json!(2), json!(0))
    );
    assert_eq!(std::fs::read_to_string(&count).unwrap().trim(), "3");

    // Exit 1: not retried.
    let broken = script(d.path(), "broken", "exit 1");
    let rules = with_rules(&format!(
        "\n[backend]\nquarantine = \"exec\"\n[backend.exec]\nprogram = \"{}\"\n",
        broken.display()
    ));
    let s = summary(&replay(rules.path(), 1, &[capture("basic.pcap")])).clone();
    assert_eq!((s["actions"]["failed"].clone(), s["actions"]["retries"].clone()), (json!(1), json!(0)));

    // Too slow: killed after 100 ms, retried once, then given up (max_attempts 2).
    let slow = script(d.path(), "slow", "exec sleep 5");
    let rules = with_rules(&format!(
        "\n[backend]\nquarantine = \"exec\"\nmax_attempts = 2\nbackoff_ms = 10\n[backend.exec]\nprogram = \"{}\"\ntimeout_ms = 100\n",
        slow.display()
    ));
    let t = Instant::now();
    let s = summary(&replay(rules.path(), 1, &[capture("basic.pcap")])).clone();
    assert_eq!((s["actions"]["failed"].clone(), s["actions"]["retries"].clone()), (json!(1), json!(1)));
    assert!(t.elapsed() < Duration::from_secs(5), "the timeout killed the program");
}

/// A webhook receiver on loopback: answers 503 to the first `fail` requests,
/// sleeps `delay` before answering, records (id, signature ok, body).
struct Receiver {
    addr: String,
    got: Arc<Mutex<Vec<(String, bool, Value)>>>,
}

fn receiver(secret: &'static [u8], fail: u32, delay: Duration) -> Receiver {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::new(AtomicU32::new(0));
    let g = got.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let (g, seen) = (g.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut r = BufReader::new(c.try_clone().unwrap());
                let (mut len, mut id, mut sig) = (0usize, String::new(), String::new());
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                    let l = line.to_ascii_lowercase();
                    if let Some(v) = l.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    } else if l.starts_with("idempotency-key:") {
                        id = line[16..].trim().to_string();
                    } else if l.starts_with("x-vmsentry-signature:") {
                        sig = line[21..].trim().to_string();
                    }
                    line.clear();
                }
                let mut body = vec![0u8; len];
                // A sender killed mid-request (kill -9) leaves a cut request: ignore it.
                if r.read_exact(&mut body).is_err() {
                    return;
                }
                let Ok(json) = serde_json::from_slice::<Value>(&body) else { return };
                std::thread::sleep(delay);
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let status = if n < fail { "503 Service Unavailable" } else { "200 OK" };
                if n >= fail {
                    let ok = sig == vmsentry::action::webhook_signature(secret, &body);
                    g.lock().unwrap_or_else(|e| e.into_inner()).push((id, ok, json));
                }
                let _ = write!(c, "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            });
        }
    });
    Receiver { addr, got }
}

fn webhook_rules(addr: &str, extra: &str) -> tempfile::TempDir {
    let rules = with_rules(&format!(
        "\n[backend]\ndefault = \"webhook\"\nbackoff_ms = 50\n{extra}\n[backend.webhook]\nurl = \"http://{addr}/hook\"\nsecret_file = \"webhook.secret\"\ntimeout_ms = 2000\n"
    ));
    let s = rules.path().join("webhook.secret");
    std::fs::write(&s, "s3cret-for-tests\n").unwrap();
    std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o600)).unwrap();
    rules
}

#[test]
fn webhook_posts_signed_json_and_retries_until_the_receiver_is_up() {
    // Down for the first 6 requests (every action's first try, one retry more).
    let r = receiver(b"s3cret-for-tests", 6, Duration::from_millis(0));
    let rules = webhook_rules(&r.addr, "");
    let ev = replay(rules.path(), 1, &[capture("basic.pcap")]);
    let s = summary(&ev);
    assert_eq!((s["actions"]["delivered"].clone(), s["actions"]["failed"].clone()), (json!(5), json!(0)));
    assert!(s["actions"]["retries"].as_u64().unwrap() >= 5, "{}", s["actions"]);
    let got = r.got.lock().unwrap().clone();
    let mut ids: Vec<String> = got.iter().map(|g| g.0.clone()).collect();
    ids.sort();
    let mut want: Vec<String> = of_type(&ev, "action").iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    want.sort();
    assert_eq!(ids, want, "each action arrived exactly once after the retries");
    assert!(got.iter().all(|g| g.1), "every body carries a valid signature");
    let web = got.iter().find(|g| g.2["vm_name"] == "web-1").unwrap();
    assert_eq!((web.2["action"].clone(), web.2["destination"].clone()), (json!("migrate"), json!("compute-3")));
}

#[test]
fn a_webhook_slower_than_its_timeout_is_retried_then_given_up() {
    // The receiver answers after 300 ms; the timeout is 100 ms; two attempts each.
    let r = receiver(b"s3cret-for-tests", 0, Duration::from_millis(300));
    let rules = webhook_rules(&r.addr, "max_attempts = 2");
    let p = rules.path().join("vmsentry.toml");
    std::fs::write(&p, std::fs::read_to_string(&p).unwrap().replace("timeout_ms = 2000", "timeout_ms = 100")).unwrap();
    let s = summary(&replay(rules.path(), 1, &[capture("basic.pcap")])).clone();
    assert_eq!((s["actions"]["failed"].clone(), s["actions"]["retries"].clone()), (json!(5), json!(5)));
}

/// Rules with `n` extra VMs (no hypervisor: unsigned, so MEDIUM quarantines),
/// and a capture where each sends 20 frames in one second (MEDIUM at 10 pps).
fn many_vms(n: u32) -> (tempfile::TempDir, tempfile::TempDir, PathBuf) {
    use vmsentry::synth::{frames, mac, write_pcap, Frame};
    let d = tempfile::tempdir().unwrap();
    let mut extra = String::new();
    let mut fr = Vec::new();
    for i in 0..n {
        let m = format!("fa:16:3e:20:{:02x}:{:02x}", i / 256, i % 256);
        extra.push_str(&format!("\n[[vm]]\nname = \"bulk-{i}\"\nmac = \"{m}\"\n"));
        let f = frames::udp4(
            mac(&m),
            mac("52:54:00:ff:00:01"),
            [10, 1, (i / 256) as u8, (i % 256) as u8].into(),
            [10, 0, 0, 1].into(),
            1,
            2,
            10,
        );
        for k in 0..20 {
            fr.push(Frame::whole(vmsentry::synth::scenario::T0_US + k * 40_000, f.clone()));
        }
    }
    let p = d.path().join("many.pcap");
    write_pcap(&p, &mut fr).unwrap();
    (d, with_rules(&extra), p)
}

#[test]
fn kill_9_during_dispatch_loses_no_action() {
    const N: u32 = 1000;
    let r = receiver(b"s3cret-for-tests", 0, Duration::from_millis(2));
    let (_d, rules, pcap) = many_vms(N);
    let p = rules.path().join("vmsentry.toml");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("medium_pps = 3_000", "medium_pps = 10")
        .replace("high_pps   = 20_000", "high_pps   = 100000");
    std::fs::write(&p, text).unwrap();
    let rules = {
        let extra = "journal = \"journal.jsonl\"";
        let r2 = webhook_rules(&r.addr, extra);
        std::fs::copy(&p, r2.path().join("vmsentry.toml")).unwrap();
        let mut t = std::fs::read_to_string(r2.path().join("vmsentry.toml")).unwrap();
        t.push_str(&format!(
            "\n[backend]\ndefault = \"webhook\"\nbackoff_ms = 50\n{extra}\n[backend.webhook]\nurl = \"http://{}/hook\"\nsecret_file = \"webhook.secret\"\ntimeout_ms = 2000\n",
            r.addr
        ));
        std::fs::write(r2.path().join("vmsentry.toml"), t).unwrap();
        r2
    };
    let run = |pcap: &Path| {
        Command::new(env!("CARGO_BIN_EXE_vmsentry"))
            .args(["replay", "--rules", rules.path().to_str().unwrap(), "--events", "/dev/null"])
            .arg(pcap)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // Decide the actions, then kill -9 twice while they are being delivered. The first kill
    // comes once the journal holds every action (not after a fixed time, which a busy machine
    // can make too short), while the webhook's 2 ms per request still has most to deliver.
    let journal = rules.path().join("journal.jsonl");
    let pending =
        || std::fs::read_to_string(&journal).map_or(0, |t| t.lines().filter(|l| l.contains("\"pending\"")).count());
    let mut child = run(&pcap);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while pending() < N as usize && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(pending(), N as usize, "every action journaled before the first kill");
    child.kill().unwrap();
    child.wait().unwrap();
    let after_first = r.got.lock().unwrap().len();
    assert!(after_first < N as usize, "killed before the end ({after_first} delivered)");
    let empty = capture("third_party/tcpdump__empty.pcap");
    let mut child = run(&empty);
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    // The last start resumes and finishes what the journal holds.
    let st = run(&empty).wait().unwrap();
    assert!(st.success());
    let got = r.got.lock().unwrap().clone();
    let ids: std::collections::BTreeSet<String> = got.iter().map(|g| g.0.clone()).collect();
    let bulk = got
        .iter()
        .filter(|g| g.2["vm_name"].as_str().is_some_and(|n| n.starts_with("bulk-")))
        .map(|g| g.0.clone())
        .collect::<std::collections::BTreeSet<_>>();
    assert_eq!(bulk.len(), N as usize, "every action arrived at least once");
    // At least once, not wildly more: only an action in flight at a kill can come twice.
    assert!(got.len() <= ids.len() + 2, "{} deliveries of {} actions", got.len(), ids.len());
}

fn held(ev: &[Value]) -> Vec<Value> {
    of_type(ev, "action_held")
        .into_iter()
        .map(|e| json!([e["ts"], e["vm_name"], e["action"], e["held_because"]]))
        .collect()
}

#[test]
fn storm_limits_hold_actions_back_and_say_why() {
    // Two actions a minute: web-1 (11 s) and db-1 (21 s) act; rogue-1, cache-1, backup-1 are held.
    let rules = with_rules("\n[storm]\nmax_actions_per_minute = 2\n");
    let ev = replay(rules.path(), 1, &[capture("basic.pcap")]);
    let acted: Vec<Value> = of_type(&ev, "action").into_iter().map(|e| e["vm_name"].clone()).collect();
    assert_eq!(acted, vec![json!("web-1"), json!("db-1")]);
    assert_eq!(
        held(&ev),
        vec![
            json!(["2023-11-14T22:13:51.000000Z", "rogue-1", "quarantine", "rate_limit"]),
            json!(["2023-11-14T22:14:01.000000Z", "cache-1", "alert", "rate_limit"]),
            json!(["2023-11-14T22:14:02.000000Z", "backup-1", "migrate", "rate_limit"]),
        ]
    );
    assert_eq!(summary(&ev)["actions"]["held"], 3);

    // One migration in flight: web-1's never shows on the wire, so backup-1's is held.
    let rules = with_rules("\n[storm]\nmax_migrations = 1\n");
    let ev = replay(rules.path(), 1, &[capture("basic.pcap")]);
    assert_eq!(held(&ev), vec![json!(["2023-11-14T22:14:02.000000Z", "backup-1", "migrate", "cluster_migrations"])]);
    // ... unless it times out first.
    let rules = with_rules("\n[storm]\nmax_migrations = 1\nmigration_timeout_s = 20\n");
    assert!(held(&replay(rules.path(), 1, &[capture("basic.pcap")])).is_empty());
}

#[test]
fn a_cooldown_holds_a_second_action_for_the_same_vm() {
    use vmsentry::synth::{frames, mac, stream, write_pcap, Frame};
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("twice.pcap");
    // db-1 sends 10 Mbit/s for a second at 0 s and again at 10 s: MEDIUM twice.
    let f = frames::udp4(
        mac("fa:16:3e:00:00:02"),
        mac("52:54:00:ff:00:01"),
        [10, 0, 1, 2].into(),
        [10, 0, 0, 1].into(),
        1,
        2,
        0,
    );
    let t0 = vmsentry::synth::scenario::T0_US;
    let mut fr = stream(t0, 1, 1000, |_, ts| Frame::cut(ts, f.clone(), 1250, 64));
    fr.extend(stream(t0 + 10_000_000, 1, 1000, |_, ts| Frame::cut(ts, f.clone(), 1250, 64)));
    fr.extend(stream(t0, 16, 1, |_, ts| Frame::whole(ts, f.clone())));
    write_pcap(&p, &mut fr).unwrap();
    let no_limit = with_rules("");
    assert_eq!(of_type(&replay(no_limit.path(), 1, std::slice::from_ref(&p)), "action").len(), 2);
    let rules = with_rules("\n[storm]\nvm_cooldown_s = 60\n");
    let ev = replay(rules.path(), 1, &[p]);
    assert_eq!(of_type(&ev, "action").len(), 1);
    assert_eq!(held(&ev), vec![json!(["2023-11-14T22:13:31.000000Z", "db-1", "alert", "vm_cooldown"])]);
}

#[test]
fn migration_destinations_respect_capacity() {
    // compute-3 holds api-1 and api-2 (2 x 2048 MiB) of 4096, and compute-4
    // the mtd VMs (10 MiB) of 16: web-1 (2048 MiB) fits on neither.
    let rules = with_rules("");
    let p = rules.path().join("vmsentry.toml");
    let t = std::fs::read_to_string(&p)
        .unwrap()
        .replace("id = \"compute-3\"\nram_mb = 16384", "id = \"compute-3\"\nram_mb = 4096")
        .replace("id = \"compute-4\"\nram_mb = 16384", "id = \"compute-4\"\nram_mb = 16");
    std::fs::write(&p, t).unwrap();
    let ev = replay(rules.path(), 1, &[capture("basic.pcap")]);
    let web = of_type(&ev, "action").into_iter().find(|e| e["vm_name"] == "web-1").unwrap().clone();
    assert_eq!((web["action"].clone(), web["destination"].clone()), (json!("migrate"), json!("compute-2")));
    // With no room anywhere, migrate becomes an alert saying why.
    let t = std::fs::read_to_string(&p)
        .unwrap()
        .replace("id = \"compute-2\"\nram_mb = 16384", "id = \"compute-2\"\nram_mb = 1");
    std::fs::write(&p, t).unwrap();
    let ev = replay(rules.path(), 1, &[capture("basic.pcap")]);
    let web = of_type(&ev, "action").into_iter().find(|e| e["vm_name"] == "web-1").unwrap().clone();
    assert_eq!(
        (web["action"].clone(), web["note"].clone()),
        (json!("alert"), json!("migrate wanted, but no other signed hypervisor has room for its RAM"))
    );
}

/// Alertmanager is required under CI=true (`scripts/test` installs it).
fn alertmanager_bin() -> Option<&'static str> {
    let ok = Command::new("prometheus-alertmanager").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok && std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but prometheus-alertmanager is not installed: scripts/test installs it");
    }
    ok.then_some("prometheus-alertmanager")
}

#[test]
fn alertmanager_receives_the_alert_and_its_resolution() {
    use vmsentry::synth::{frames, mac, stream, write_pcap, Frame};
    let Some(am) = alertmanager_bin() else {
        eprintln!("SKIPPED: prometheus-alertmanager not installed");
        return;
    };
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("am.yml"), "route:\n  receiver: \"null\"\nreceivers:\n  - name: \"null\"\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(am)
        .arg(format!("--config.file={}", d.path().join("am.yml").display()))
        .arg(format!("--storage.path={}", d.path().join("data").display()))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--cluster.listen-address=")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let get = |path: &str| -> Option<(u16, String)> {
        let mut s = std::net::TcpStream::connect(&addr).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        let code = buf.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, buf.split_once("\r\n\r\n")?.1.to_string()))
    };
    let t = Instant::now();
    while get("/-/ready").map(|r| r.0) != Some(200) {
        assert!(t.elapsed() < Duration::from_secs(20), "Alertmanager did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Packet time 30 s ahead of now, so the alert is current when read back:
    // db-1 sends 10 Mbit/s for one second (MEDIUM, an alert), then a frame a second.
    let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let t0 = (now_s + 30) * 1_000_000;
    let f = frames::udp4(
        mac("fa:16:3e:00:00:02"),
        mac("52:54:00:ff:00:01"),
        [10, 0, 1, 2].into(),
        [10, 0, 0, 1].into(),
        1,
        2,
        0,
    );
    let mut fr = stream(t0, 1, 1000, |_, ts| Frame::cut(ts, f.clone(), 1250, 64));
    fr.extend(stream(t0, 8, 1, |_, ts| Frame::whole(ts, f.clone())));
    let p = d.path().join("db1.pcap");
    write_pcap(&p, &mut fr).unwrap();
    let rules = with_rules(&format!(
        "\n[backend]\ndefault = \"alertmanager\"\n[backend.alertmanager]\nurl = \"http://{addr}\"\n"
    ));
    let ev = replay(rules.path(), 1, &[p]);
    let alerts = loop {
        let (_, body) = get("/api/v2/alerts").unwrap();
        let v: Vec<Value> = serde_json::from_str(&body).unwrap();
        if !v.is_empty() || t.elapsed() > Duration::from_secs(20) {
            break v;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    let id = of_type(&ev, "action")[0]["id"].clone();
    assert_eq!(
        json!([
            a["labels"]["vm_name"],
            a["labels"]["level"],
            a["labels"]["reason"],
            a["labels"]["action"],
            a["labels"]["hypervisor"],
            a["annotations"]["action_id"]
        ]),
        json!(["db-1", "MEDIUM", "rate", "alert", "compute-1", id])
    );
    let secs = |v: &Value| v.as_str().unwrap()[..19].to_string();
    let at = |us: i64| vmsentry::vocab::PacketTime::from_micros(us).rfc3339()[..19].to_string();
    // Raised at the end of the first window; resolved when db-1 fell back to LOW, three quiet windows later.
    assert_eq!((secs(&a["startsAt"]), secs(&a["endsAt"])), (at(t0 + 1_000_000), at(t0 + 4_000_000)));
}

fn virsh_available() -> bool {
    let ok = Command::new("virsh").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok && std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but virsh is not installed: scripts/test installs libvirt-clients");
    }
    ok
}

/// libvirt's test driver with three domains whose MACs are VMs of the rules.
fn node_xml(dir: &Path) -> PathBuf {
    let dom = |name: &str, mac: &str| {
        format!(
            "<domain type=\"test\"><name>{name}</name><memory>1048576</memory><vcpu>1</vcpu><os><type>hvm</type></os>\
             <devices><interface type=\"network\"><mac address=\"{mac}\"/><source network=\"default\"/></interface></devices></domain>"
        )
    };
    let p = dir.join("node.xml");
    let xml = format!(
        "<node>{}{}{}</node>",
        dom("web-1", "fa:16:3e:00:00:01"),
        dom("rogue-1", "fa:16:3e:00:00:04"),
        dom("db-1", "fa:16:3e:00:00:02")
    );
    std::fs::write(&p, xml).unwrap();
    p
}

#[test]
fn libvirt_suspends_or_destroys_the_right_domain_and_retries_a_failed_migration() {
    if !virsh_available() {
        eprintln!("SKIPPED: virsh not installed");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let node = node_xml(d.path());
    for (mode, state) in [("suspend", "paused"), ("destroy", "shut off")] {
        let rules = with_rules(&format!(
            "\n[backend]\nquarantine = \"libvirt\"\nmigrate = \"libvirt\"\nmax_attempts = 3\nbackoff_ms = 20\njournal = \"journal.jsonl\"\n\
             [backend.libvirt]\nuri = \"test://{}\"\nmigrate_uri = \"test:///nonexistent/node.xml\"\nquarantine = \"{mode}\"\ntimeout_ms = 10000\n",
            node.display()
        ));
        let out = Command::new(env!("CARGO_BIN_EXE_vmsentry"))
            .args(["replay", "--rules", rules.path().to_str().unwrap()])
            .arg(capture("basic.pcap"))
            .output()
            .unwrap();
        assert!(out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        // rogue-1's quarantine reached its domain, checked in the same session.
        let line =
            format!("vmsentry: libvirt: {mode} rogue-1 (fa:16:3e:00:00:04) on test://{}: now {state}", node.display());
        assert!(err.lines().any(|l| l == line), "{err}");
        let ev: Vec<Value> = event_lines(&String::from_utf8_lossy(&out.stdout));
        let s = &summary(&ev)["actions"];
        // Delivered: two alerts (log) and the quarantine. Failed: web-1's migration (the
        // destination cannot be reached: retried twice, then given up) and backup-1's (no
        // such domain: not retried).
        assert_eq!(
            (s["delivered"].clone(), s["failed"].clone(), s["retries"].clone()),
            (json!(3), json!(2), json!(2)),
            "{err}"
        );
        assert!(err.contains("no domain on test://"), "{err}");
        // The journal shows the migration's tries.
        let journal = std::fs::read_to_string(rules.path().join("journal.jsonl")).unwrap();
        let web: Vec<String> = journal
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["id"] == "1700000011000000-1")
            .map(|r| r["state"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(web, ["pending", "sent", "failed", "sent", "failed", "sent", "given_up"]);
    }
}

/// One request the mock cloud saw: method, path, token, compute microversion, body.
type Seen = (String, String, String, String, Value);

/// A local server answering as Keystone (v3 tokens), Neutron (ports by MAC)
/// and Nova (server actions). The first server action answers 401.
fn mock_cloud() -> (String, Arc<Mutex<Vec<Seen>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::new(Mutex::new(Vec::new()));
    let (s2, a2) = (seen.clone(), addr.clone());
    let tokens = Arc::new(AtomicU32::new(0));
    let actions = Arc::new(AtomicU32::new(0));
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let (seen, addr, tokens, actions) = (s2.clone(), a2.clone(), tokens.clone(), actions.clone());
            std::thread::spawn(move || {
                let mut c = c;
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut first = String::new();
                if r.read_line(&mut first).is_err() {
                    return;
                }
                let mut parts = first.split_whitespace();
                let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
                let (mut len, mut token, mut micro) = (0usize, String::new(), String::new());
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                    let (k, v) = line.split_once(':').unwrap_or(("", ""));
                    match k.to_ascii_lowercase().as_str() {
                        "content-length" => len = v.trim().parse().unwrap_or(0),
                        "x-auth-token" => token = v.trim().to_string(),
                        "openstack-api-version" => micro = v.trim().to_string(),
                        _ => {}
                    }
                    line.clear();
                }
                let mut body = vec![0u8; len];
                if r.read_exact(&mut body).is_err() {
                    return;
                }
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                seen.lock().unwrap_or_else(|e| e.into_inner()).push((method.clone(), path.clone(), token, micro, body));
                let (status, headers, out) = if path == "/v3/auth/tokens" {
                    let n = tokens.fetch_add(1, Ordering::SeqCst) + 1;
                    let cat = json!({"token": {"expires_at": "2099-01-01T00:00:00.000000Z", "catalog": [
                        {"type": "compute", "endpoints": [
                            {"interface": "internal", "region": "RegionOne", "url": format!("http://{addr}/wrong")},
                            {"interface": "public", "region": "RegionOne", "url": format!("http://{addr}/compute/v2.1")}]},
                        {"type": "network", "endpoints": [
                            {"interface": "public", "region": "RegionOne", "url": format!("http://{addr}/network")}]}]}});
                    ("201 Created", format!("X-Subject-Token: tok-{n}\r\n"), cat)
                } else if let Some(q) = path.strip_prefix("/network/v2.0/ports?mac_address=") {
                    let dev = match q {
                        "fa:16:3e:00:00:04" => "srv-rogue",
                        "fa:16:3e:00:00:01" => "srv-web",
                        "fa:16:3e:00:00:05" => "srv-backup",
                        _ => "",
                    };
                    let ports = if dev.is_empty() { json!([]) } else { json!([{"device_id": dev, "mac_address": q}]) };
                    ("200 OK", String::new(), json!({ "ports": ports }))
                } else if path.starts_with("/compute/v2.1/servers/") && path.ends_with("/action") {
                    if actions.fetch_add(1, Ordering::SeqCst) == 0 {
                        ("401 Unauthorized", String::new(), json!({"error": "token expired"}))
                    } else {
                        ("202 Accepted", String::new(), Value::Null)
                    }
                } else {
                    ("404 Not Found", String::new(), Value::Null)
                };
                let out = serde_json::to_vec(&out).unwrap();
                let _ = write!(c, "HTTP/1.1 {status}\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", out.len());
                let _ = c.write_all(&out);
            });
        }
    });
    (addr, seen)
}

#[test]
fn openstack_pauses_and_live_migrates_through_keystone_neutron_and_nova() {
    let (addr, seen) = mock_cloud();
    let rules = with_rules(&format!(
        "\n[backend]\nquarantine = \"openstack\"\nmigrate = \"openstack\"\nbackoff_ms = 20\n\
         [backend.openstack]\nauth_url = \"http://{addr}/v3\"\napplication_credential_id = \"app-1\"\n\
         application_credential_secret_file = \"os.secret\"\nregion = \"RegionOne\"\nlock = true\n"
    ));
    let secret = rules.path().join("os.secret");
    std::fs::write(&secret, "app-secret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ev = replay(rules.path(), 1, &[capture("basic.pcap")]);
    let s = &summary(&ev)["actions"];
    assert_eq!((s["delivered"].clone(), s["failed"].clone(), s["retries"].clone()), (json!(5), json!(0), json!(1)));
    let seen = seen.lock().unwrap().clone();
    let auth = json!({"auth": {"identity": {"methods": ["application_credential"],
        "application_credential": {"id": "app-1", "secret": "app-secret"}}}});
    // Two authentications: at the start, and after the 401.
    let auths: Vec<usize> = seen.iter().enumerate().filter(|(_, r)| r.1 == "/v3/auth/tokens").map(|(i, _)| i).collect();
    assert_eq!(auths.len(), 2, "{seen:?}");
    assert_eq!(auths[0], 0);
    assert!(seen.iter().filter(|r| r.1 == "/v3/auth/tokens").all(|r| r.4 == auth && r.2.is_empty()));
    // Every other request carries the token current at the time.
    for (i, r) in seen.iter().enumerate().filter(|(_, r)| r.1 != "/v3/auth/tokens") {
        let want = if i < auths[1] { "tok-1" } else { "tok-2" };
        assert_eq!(r.2, want, "request {i}: {r:?}");
    }
    // Per server: the port lookup by MAC, then its actions, at microversion 2.30.
    let by_server = |srv: &str| -> Vec<Value> {
        seen.iter()
            .filter(|r| r.1 == format!("/compute/v2.1/servers/{srv}/action"))
            .map(|r| json!([r.3, r.4]))
            .collect()
    };
    let live = |host: &str| json!(["compute 2.30", {"os-migrateLive": {"host": host, "block_migration": "auto"}}]);
    // web-1 (HIGH, signed): migrate to compute-3; the first try met the 401 and was retried.
    assert_eq!(by_server("srv-web"), vec![live("compute-3"), live("compute-3")]);
    // rogue-1 (MEDIUM, unsigned): lock, then pause.
    assert_eq!(
        by_server("srv-rogue"),
        vec![json!(["compute 2.30", {"lock": null}]), json!(["compute 2.30", {"pause": null}])]
    );
    // backup-1 (HIGH by volume, signed): migrate.
    assert_eq!(by_server("srv-backup"), vec![live("compute-3")]);
    let lookups: Vec<&str> = seen.iter().filter_map(|r| r.1.strip_prefix("/network/v2.0/ports?mac_address=")).collect();
    assert_eq!(lookups.iter().filter(|m| **m == "fa:16:3e:00:00:04").count(), 1);
    assert_eq!(lookups.len(), 4, "web-1 twice (it was retried), rogue-1 and backup-1 once");
    assert!(seen.iter().all(|r| !r.1.starts_with("/wrong")), "the public endpoint of the region was used");
}
