//! vmsentry as a service: live capture on a veth pair, metrics checked by promtool and
//! scraped by a real Prometheus, the HTTP API, SIGTERM, and SIGHUP reloads.

use super::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A plain HTTP GET on loopback: (status, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf.split_whitespace().nth(1).unwrap_or("0").parse().unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default();
    // The server may answer chunked.
    let body = if buf.to_ascii_lowercase().contains("transfer-encoding: chunked") { unchunk(&body) } else { body };
    (status, body)
}

fn unchunk(b: &str) -> String {
    let mut out = String::new();
    let mut rest = b;
    while let Some((len, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

/// Starts vmsentry with stderr piped; returns the child (the caller waits
/// for it), the address it serves on, and its stderr lines as they come.
#[allow(clippy::zombie_processes)]
fn start_serving(args: &[&str]) -> (Child, String, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmsentry"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("vmsentry did not start serving");
        if let Some(a) = line.strip_prefix("vmsentry: serving on http://") {
            return (child, a.to_string(), rx);
        }
    }
}

pub(super) fn signal(child: &Child, sig: &str) {
    let st = Command::new("kill").args([&format!("-{sig}"), &child.id().to_string()]).status().unwrap();
    assert!(st.success());
}

pub(super) fn wait_exit(child: &mut Child, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("vmsentry did not exit within {within:?}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether this machine can run the live tests (root, iproute2, tcpreplay).
/// Under CI=true they must run: a missing piece fails the test.
pub(super) fn live_capable() -> bool {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let tools = ["ip", "tcpreplay", "promtool", "prometheus"].iter().all(|t| {
        Command::new("sh").args(["-c", &format!("command -v {t}")]).output().is_ok_and(|o| o.status.success())
    });
    if root && tools {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but live tests cannot run (root: {root}, ip/tcpreplay/promtool/prometheus: {tools}); .ci/run installs them and CI runs as root");
    }
    false
}

/// A network namespace joined to this one by a veth pair; removed on drop.
struct Veth {
    ns: String,
    here: String,
    there: String,
}

impl Veth {
    fn new() -> Veth {
        let id = std::process::id() % 100_000;
        let v = Veth { ns: format!("vmsentry-t{id}"), here: format!("vsa{id}"), there: format!("vsb{id}") };
        let sh = |c: &str| {
            let o = Command::new("sh").args(["-c", c]).output().unwrap();
            assert!(o.status.success(), "{c}: {}", String::from_utf8_lossy(&o.stderr));
        };
        let _ = Command::new("ip").args(["netns", "del", &v.ns]).output();
        sh(&format!("ip netns add {}", v.ns));
        sh(&format!("ip link add {} type veth peer name {}", v.here, v.there));
        sh(&format!("ip link set {} netns {}", v.there, v.ns));
        // No IPv6 chatter (router solicitations, DAD) on the test link.
        let _ = Command::new("sysctl").args(["-qw", &format!("net.ipv6.conf.{}.disable_ipv6=1", v.here)]).output();
        sh(&format!("ip link set {} up", v.here));
        sh(&format!("ip netns exec {} ip link set {} up", v.ns, v.there));
        v
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.here]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// A flood from web-1: `n` whole 1500-byte frames.
fn flood_pcap(dir: &Path, n: i64) -> PathBuf {
    use vmsentry::synth::{frames, mac, write_pcap, Frame};
    let p = dir.join("flood.pcap");
    let f = frames::udp4(
        mac("fa:16:3e:00:00:01"),
        mac("52:54:00:ff:00:01"),
        [10, 0, 1, 1].into(),
        [10, 0, 0, 1].into(),
        50000,
        80,
        1458,
    );
    assert_eq!(f.len(), 1500);
    let mut fr: Vec<Frame> = (0..n).map(|k| Frame::whole(k * 100, f.clone())).collect();
    write_pcap(&p, &mut fr).unwrap();
    p
}

#[test]
fn live_capture_on_a_veth_grades_acts_serves_and_stops_cleanly() {
    if !live_capable() {
        eprintln!("SKIPPED: needs root, iproute2, tcpreplay, promtool and prometheus");
        return;
    }
    let veth = Veth::new();
    let rules = rules_dir();
    let d = tempfile::tempdir().unwrap();
    let events = d.path().join("events.jsonl");
    let (mut child, addr, _err) = start_serving(&[
        "live",
        "--interface",
        &veth.here,
        "--bpf",
        "ether host fa:16:3e:00:00:01",
        "--rules",
        rules.path().to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--threads",
        "2",
    ]);
    let ready = Instant::now();
    while http_get(&addr, "/healthz").0 != 200 {
        assert!(ready.elapsed() < Duration::from_secs(10), "never healthy");
        std::thread::sleep(Duration::from_millis(100));
    }
    // 12 000 frames of 1500 bytes at 6000 a second: 72 Mbit/s for two seconds (HIGH is 40).
    const N: i64 = 12_000;
    let pcap = flood_pcap(d.path(), N);
    let out = Command::new("ip")
        .args(["netns", "exec", &veth.ns, "tcpreplay", "-q", "-i", &veth.there, "--pps", "6000"])
        .arg(&pcap)
        .output()
        .unwrap();
    assert!(out.status.success(), "tcpreplay: {}", String::from_utf8_lossy(&out.stderr));
    // Windows close on idle ticks, so the level shows without more traffic.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, body) = http_get(&addr, "/v1/vms");
        assert_eq!(st, 200);
        let vms: Vec<Value> = serde_json::from_str(&body).unwrap();
        let web = vms.iter().find(|v| v["name"] == "web-1").unwrap().clone();
        if web["level"] == "HIGH" {
            assert_eq!(web["hypervisor"], "compute-1");
            break;
        }
        assert!(Instant::now() < deadline, "web-1 never went HIGH: {web}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The dispatcher delivers asynchronously: wait for the outcomes.
    let deadline = Instant::now() + Duration::from_secs(10);
    let actions: Vec<Value> = loop {
        let (_, body) = http_get(&addr, "/v1/actions");
        let actions: Vec<Value> = serde_json::from_str(&body).unwrap();
        if actions.last().is_some_and(|a| a["level"] == "HIGH") && actions.iter().all(|a| a["outcome"] == "delivered") {
            break actions;
        }
        assert!(Instant::now() < deadline, "{actions:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Windows align to the clock, so the flood's first window may be partial:
    // web-1 then rises through MEDIUM (alert) before HIGH (migrate).
    let kinds: Vec<Value> =
        actions.iter().map(|a| json!([a["vm_name"], a["action"], a["level"], a["outcome"]])).collect();
    let migrate = json!(["web-1", "migrate", "HIGH", "delivered"]);
    assert!(
        kinds == vec![migrate.clone()] || kinds == vec![json!(["web-1", "alert", "MEDIUM", "delivered"]), migrate],
        "{kinds:?}"
    );
    let (_, hvs) = http_get(&addr, "/v1/hypervisors");
    let hvs: Vec<Value> = serde_json::from_str(&hvs).unwrap();
    let c9 = hvs.iter().find(|h| h["id"] == "compute-9").unwrap();
    assert_eq!(c9["signature"], "invalid");

    // Counters are published per window: the last one closes on an idle tick.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (st, metrics) = http_get(&addr, "/metrics");
        assert_eq!(st, 200);
        if metrics.contains(&format!("vmsentry_packets_total {N}\n")) {
            break metrics;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(metrics.contains(&format!("vmsentry_bytes_total {}\n", N * 1500)));
    assert!(metrics.contains("vmsentry_capture_dropped_packets_total{where=\"queue\"} 0\n"));
    assert!(metrics.contains("vmsentry_vm_level{name=\"web-1\",vm=\"fa:16:3e:00:00:01\"} 2\n"), "{metrics}");
    // promtool accepts the exposition.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus scrapes it.
    let prom_port = free_port();
    let cfg = d.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: vmsentry\n    static_configs:\n      - targets: ['{addr}']\n"),
    )
    .unwrap();
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.tsdb.path={}", d.path().join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let prom_addr = format!("127.0.0.1:{prom_port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let scraped = loop {
        if TcpStream::connect(&prom_addr).is_ok() {
            let (st, body) = http_get(&prom_addr, "/api/v1/query?query=vmsentry_packets_total");
            if st == 200 {
                let v: Value = serde_json::from_str(&body).unwrap();
                if let Some(val) = v["data"]["result"][0]["value"][1].as_str() {
                    break val.to_string();
                }
            }
        }
        assert!(Instant::now() < deadline, "Prometheus never scraped vmsentry");
        std::thread::sleep(Duration::from_millis(300));
    };
    let _ = prom.kill();
    let _ = prom.wait();
    assert_eq!(scraped, N.to_string());

    // SIGTERM: the window is finished, the events flushed, exit 0, nothing lost.
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), Some(0));
    let ev: Vec<Value> = event_lines(&std::fs::read_to_string(&events).unwrap());
    let high = of_type(&ev, "level").into_iter().find(|e| e["to"] == "HIGH").unwrap();
    assert_eq!(
        (high["vm_name"].clone(), high["reason"].clone(), high["direction"].clone()),
        (json!("web-1"), json!("rate"), json!("tx"))
    );
    assert_eq!(of_type(&ev, "action").len(), actions.len());
    let web = of_type(&ev, "vm_stats").into_iter().find(|e| e["vm_name"] == "web-1").unwrap();
    assert_eq!((web["tx_packets"].as_i64(), web["tx_bytes"].as_i64()), (Some(N), Some(N * 1500)));
    let s = summary(&ev);
    assert_eq!((s["packets"].as_i64(), s["queue_dropped"].as_i64()), (Some(N), Some(0)));
}

#[test]
fn a_bad_interface_or_filter_exits_2() {
    let rules = rules_dir();
    let r = rules.path().to_str().unwrap();
    let out = vmsentry(&["live", "--interface", "no-such-if0", "--rules", r, "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-if0"));
    if Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0") {
        let out = vmsentry(&[
            "live",
            "--interface",
            "lo",
            "--bpf",
            "this is not bpf",
            "--rules",
            r,
            "--listen",
            "127.0.0.1:0",
        ]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("bad --bpf filter `this is not bpf`"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = vmsentry(&["replay", "--rules", r, "--listen", "256.0.0.1:1", capture("rtt.pcap").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
}

/// A capture where db-1 sends 1000 frames of 100 bytes a second for `secs` seconds.
fn steady_pcap(dir: &Path, secs: u32) -> PathBuf {
    use vmsentry::synth::{frames, mac, stream, write_pcap, Frame};
    let p = dir.join("steady.pcap");
    let f = frames::udp4(
        mac("fa:16:3e:00:00:02"),
        mac("52:54:00:ff:00:01"),
        [10, 0, 1, 2].into(),
        [10, 0, 0, 1].into(),
        5432,
        6000,
        58,
    );
    let mut fr = stream(vmsentry::synth::scenario::T0_US, secs, 1000, |_, ts| Frame::whole(ts, f.clone()));
    write_pcap(&p, &mut fr).unwrap();
    p
}

#[test]
fn sighup_reloads_valid_rules_and_refuses_bad_ones_keeping_the_old() {
    let rules = rules_dir();
    let toml = rules.path().join("vmsentry.toml");
    let original = std::fs::read_to_string(&toml).unwrap();
    let d = tempfile::tempdir().unwrap();
    let pcap = steady_pcap(d.path(), 8);
    let events = d.path().join("events.jsonl");
    // 1000 packets/s is under medium_pps (3000) until the rules say 500.
    let (mut child, addr, err) = start_serving(&[
        "replay",
        "--rules",
        rules.path().to_str().unwrap(),
        "--speed",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--events",
        events.to_str().unwrap(),
        pcap.to_str().unwrap(),
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(&toml, original.replace("medium_pps = 3_000", "medium_pps = 3_000x")).unwrap();
    signal(&child, "HUP");
    let refused = err.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(refused.starts_with("vmsentry: rules not reloaded, the old rules stay: "), "{refused}");
    assert!(refused.contains("vmsentry.toml:17:"), "{refused}");
    // The counter follows the message (the merge thread counts after it writes).
    let t = std::time::Instant::now();
    loop {
        let (_, m) = http_get(&addr, "/metrics");
        if m.contains("vmsentry_rules_reloads_total{result=\"error\"} 1") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{m}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A [backend] change is not applied by a reload, and says so.
    let changed = original.replace("medium_pps = 3_000", "medium_pps = 500") + "\n[backend]\nmax_attempts = 2\n";
    std::fs::write(&toml, changed).unwrap();
    signal(&child, "HUP");
    let ok = err.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(ok.starts_with("vmsentry: rules reloaded from "), "{ok}");
    let later = err.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(later, "vmsentry: changed, but only a restart applies them (the running ones stay): [backend]");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), Some(0));
    let ev: Vec<Value> = event_lines(&std::fs::read_to_string(&events).unwrap());
    let levels: Vec<Value> = of_type(&ev, "level")
        .into_iter()
        .map(|e| json!([e["vm_name"], e["from"], e["to"], e["reason"], e["pps"]]))
        .collect();
    // Only after the reload does 1000 pps cross MEDIUM; before it nothing rose.
    assert_eq!(levels.first(), Some(&json!(["db-1", "LOW", "MEDIUM", "rate", 1000])), "{levels:?}");
    let rise = of_type(&ev, "level")[0]["ts"].as_str().unwrap().to_string();
    assert!(rise.as_str() > "2023-11-14T22:13:22", "rose at {rise}, before the reload could have happened");
    // Measurements carried over: db-1's counts cover the whole capture.
    let db = of_type(&ev, "vm_stats").into_iter().find(|e| e["vm_name"] == "db-1").unwrap();
    assert_eq!(db["tx_packets"], 8000);
}

#[test]
fn shipped_dashboard_and_scrape_config_fit_the_metrics() {
    // Every metric the Grafana dashboard queries is one vmsentry exports.
    let m = vmsentry::serve::Metrics::new();
    // Per-VM series exist once the rules name VMs.
    m.vm_level.with_label_values(&["fa:16:3e:00:00:01", "web-1"]).set(0);
    m.vm_rate_bytes.with_label_values(&["fa:16:3e:00:00:01", "web-1", "tx"]).set(0.0);
    m.vm_rate_packets.with_label_values(&["fa:16:3e:00:00:01", "web-1", "tx"]).set(0.0);
    let exported = m.render();
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("dist/grafana-dashboard.json")).unwrap()).unwrap();
    let mut names = std::collections::BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let e = t["expr"].as_str().unwrap();
            for (i, _) in e.match_indices("vmsentry_") {
                let name: String = e[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                names.insert(name.trim_end_matches("_bucket").to_string());
            }
        }
    }
    assert!(names.len() >= 9, "{names:?}");
    for n in &names {
        assert!(exported.contains(&format!("# TYPE {n} ")), "the dashboard queries {n}, which is not exported");
    }
    // The systemd unit reloads with SIGHUP and stops with SIGTERM, as vmsentry expects.
    let unit = std::fs::read_to_string(root().join("dist/vmsentry.service")).unwrap();
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID") && unit.contains("AmbientCapabilities=CAP_NET_RAW"));
    if live_capable() {
        let out = Command::new("promtool")
            .args(["check", "config"])
            .arg(root().join("dist/prometheus.yml"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}
