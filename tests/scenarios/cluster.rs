//! Many mirror ports: sensors and controllers over a real `nats-server -js` give, field for field, the events of one `vmsentry replay`.
//!
//! Each test starts its own NATS server on a free loopback port with its own
//! store directory, and stops it (also on failure). With CI=true a missing
//! `nats-server` or tshark fails the test instead of skipping it.

use super::*;
use std::io::Read;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A `nats-server -js` of this test's own.
struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

fn nats_installed() -> bool {
    let ok = Command::new("nats-server").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok && std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but nats-server is not installed: scripts/test installs it");
    }
    ok
}

/// Both tools the per-rack tests need, or a skip (said why).
fn nats_and_tshark_installed() -> bool {
    if !nats_installed() {
        eprintln!("SKIPPED: nats-server not installed");
        return false;
    }
    if tshark().is_none() {
        eprintln!("SKIPPED: tshark not installed");
        return false;
    }
    true
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl NatsServer {
    fn start() -> NatsServer {
        let dir = tempfile::tempdir().unwrap();
        let mut s = NatsServer { child: None, port: free_port(), dir };
        s.run();
        s
    }

    /// (Re)starts the server on its port and store.
    fn run(&mut self) {
        let store = self.dir.path().join("store");
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd", store.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("nats.log")).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port = self.port;
        wait_for("nats-server to listen", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A child process that is killed if the test fails before it ends.
struct Proc {
    child: Option<Child>,
    what: String,
    stderr: PathBuf,
}

impl Proc {
    fn spawn(what: &str, args: &[String], stderr: PathBuf) -> Proc {
        let child = Command::new(env!("CARGO_BIN_EXE_vmsentry"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Proc { child: Some(child), what: what.to_string(), stderr }
    }

    fn stderr(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.stderr) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits for a clean exit (generous: a loaded 2-core machine).
    fn wait(&mut self) -> String {
        let mut c = self.child.take().unwrap();
        let until = Instant::now() + Duration::from_secs(180);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                let err = self.stderr();
                assert!(status.success(), "{} failed ({status}): {err}", self.what);
                return err;
            }
            if Instant::now() > until {
                let _ = c.kill();
                let _ = c.wait();
                panic!("{} did not finish: {}", self.what, self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `cluster.toml` for racks of hypervisor ids; `default` owns frames no rack touches.
fn cluster_toml(racks: &[&[&str]], default: usize) -> String {
    let mut t = String::from("down_after_s = 120\nlease_ttl_s = 3\n");
    for (i, r) in racks.iter().enumerate() {
        let hv: Vec<String> = r.iter().map(|h| format!("\"{h}\"")).collect();
        t.push_str(&format!("[[sensor]]\nid = \"rack-{}\"\nhypervisors = [{}]\n", i + 1, hv.join(", ")));
        if i == default {
            t.push_str("default = true\n");
        }
    }
    t
}

/// What each rack's mirror port sees, cut by tshark (not by vmsentry):
/// every frame whose outermost Ethernet or IP source or destination is one
/// of the rack's hypervisors; frames no rack touches go to the default rack.
/// So a frame between racks is in two files. Returns the files per rack.
fn split(rules: &Path, input: &Path, racks: &[&[&str]], default: usize, out: &Path) -> Vec<PathBuf> {
    let tshark = tshark().expect("tshark");
    let r = vmsentry::config::Rules::load(rules).unwrap();
    let ends = |ids: &[&str]| -> Vec<String> {
        let mut f = Vec::new();
        for h in r.hypervisors.iter().filter(|h| ids.contains(&h.id.as_str())) {
            for m in &h.macs {
                f.push(format!("eth.src#1 == {m} or eth.dst#1 == {m}"));
            }
            for ip in &h.ips {
                f.push(format!("ip.src#1 == {ip} or ip.dst#1 == {ip}"));
            }
        }
        f
    };
    let all: Vec<&str> = racks.iter().flat_map(|r| r.iter().copied()).collect();
    let stem = input.file_stem().unwrap().to_str().unwrap();
    let mut files = Vec::new();
    for (i, rack) in racks.iter().enumerate() {
        let mut filter = ends(rack).join(" or ");
        if i == default {
            filter = format!("({filter}) or not ({})", ends(&all).join(" or "));
        }
        let path = out.join(format!("{stem}-rack-{}.pcap", i + 1));
        let o = Command::new(tshark)
            .args(["-r", input.to_str().unwrap(), "-Y", &filter, "-F", "pcap", "-w", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "tshark: {}", String::from_utf8_lossy(&o.stderr));
        files.push(path);
    }
    files
}

fn frames_in(p: &Path) -> u64 {
    let mut f = vmsentry::capture::FileList::open(&[p.to_path_buf()]).unwrap();
    let mut n = 0u64;
    vmsentry::capture::PacketSource::run(&mut f, &mut |item| {
        if matches!(item, vmsentry::capture::SourceItem::Packet(_)) {
            n += 1;
        }
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    n
}

fn read_events(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// "N frames owned by other sensors" from a sensor's closing line.
fn not_owned(stderr: &str) -> u64 {
    let line = stderr.lines().find(|l| l.contains("frames owned by other sensors")).expect("no closing line");
    let before = line.split(" frames owned by other sensors").next().unwrap();
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Tokens are single-use: each run starts with none used.
fn unspend_tokens(rules: &Path) {
    let used = rules.join("tokens").join(vmsentry::trust::token::USED_FILE);
    if used.exists() {
        std::fs::remove_file(used).unwrap();
    }
}

const INPUTS: [&str; 2] = ["migration-vxlan.pcap", "mtd.pcap"];

fn sense_args(nats: &str, rack: usize, rules: &Path, cluster: &Path, spool: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "sense".into(),
        "--nats".into(),
        nats.into(),
        "--sensor".into(),
        format!("rack-{}", rack + 1),
        "--rules".into(),
        rules.display().to_string(),
        "--cluster".into(),
        cluster.display().to_string(),
        "--spool".into(),
        spool.display().to_string(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn control_args(nats: &str, id: &str, rules: &Path, cluster: &Path, events: &Path) -> Vec<String> {
    [
        "control",
        "--nats",
        nats,
        "--id",
        id,
        "--rules",
        rules.to_str().unwrap(),
        "--cluster",
        cluster.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
        "--until-end",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn sensors_on_per_rack_mirrors_and_one_controller_give_the_events_of_one_replay() {
    if !nats_and_tshark_installed() {
        return;
    }
    let inputs: Vec<PathBuf> = INPUTS.iter().map(|f| capture(f)).collect();
    let total: u64 = inputs.iter().map(|p| frames_in(p)).sum();
    // The reference: one process that saw every port. One rules directory
    // for all (events name its files), its used tokens forgotten before each run.
    let rules = with_rules("");
    let reference = stable(replay(rules.path(), 2, &inputs));
    assert_eq!(of_type(&reference, "migration").len(), 13, "8 moves between hosts, 5 of an evacuation");
    assert_eq!(of_type(&reference, "evacuation").len(), 1);
    assert_eq!(summary(&reference)["packets"], total);

    // Racks of the demo's hypervisors: compute-4 (evacuated) and the moves'
    // ends compute-1/2/3 are in different racks from N = 2 on.
    let layouts: [(&[&[&str]], usize); 3] = [
        (&[&["compute-1", "compute-2", "compute-3", "compute-4", "compute-9"]], 0),
        (&[&["compute-1", "compute-4"], &["compute-2", "compute-3", "compute-9"]], 0),
        (&[&["compute-1"], &["compute-2", "compute-4"], &["compute-3", "compute-9"]], 2),
    ];
    for (racks, default) in layouts {
        let n = racks.len();
        let work = tempfile::tempdir().unwrap();
        unspend_tokens(rules.path());
        let (sensor_rules, control_rules) = (&rules, &rules);
        let cluster = work.path().join("cluster.toml");
        std::fs::write(&cluster, cluster_toml(racks, default)).unwrap();
        let per_input: Vec<Vec<PathBuf>> =
            inputs.iter().map(|i| split(sensor_rules.path(), i, racks, default, work.path())).collect();
        let seen: u64 = per_input.iter().flatten().map(|p| frames_in(p)).sum();
        if n > 1 {
            assert!(seen > total + 1000, "N = {n}: frames between racks are seen twice ({seen} of {total})");
        }
        let nats = NatsServer::start();
        let events = work.path().join("control.jsonl");
        let mut control = Proc::spawn(
            "control",
            &control_args(&nats.url(), "c1", control_rules.path(), &cluster, &events),
            work.path().join("control.err"),
        );
        let mut sensors: Vec<Proc> = (0..n)
            .map(|i| {
                let threads = (1 + i % 3).to_string();
                let mut a = sense_args(
                    &nats.url(),
                    i,
                    sensor_rules.path(),
                    &cluster,
                    &work.path().join(format!("spool-{i}")),
                    &["--threads", &threads],
                );
                a.extend(per_input.iter().map(|f| f[i].display().to_string()));
                Proc::spawn(&format!("sensor {i}"), &a, work.path().join(format!("sense-{i}.err")))
            })
            .collect();
        let dropped: u64 = sensors.iter_mut().map(|s| not_owned(&s.wait())).sum();
        // Every duplicate is dropped by exactly one of the two sensors that saw it.
        assert_eq!(dropped, seen - total, "N = {n}");
        control.wait();
        let got = stable(read_events(&events));
        assert_eq!(got.len(), reference.len(), "N = {n}");
        for (i, (a, b)) in got.iter().zip(&reference).enumerate() {
            assert_eq!(a, b, "N = {n}: event {i} differs");
        }
    }
}

/// A program for the exec backend that logs who delivered which action id,
/// slowly (so a controller can be killed in the middle of an evacuation).
fn slow_logger(dir: &Path, log: &Path) -> PathBuf {
    let p = dir.join("deliver");
    // $1 = the controller (the rules' args); then --id ID ...
    std::fs::write(&p, format!("#!/bin/sh\necho \"$1 $3\" >> {}\nsleep 1\n", log.display())).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn without_inputs(mut ev: Vec<Value>) -> Vec<Value> {
    for e in &mut ev {
        e.as_object_mut().unwrap().remove("input");
    }
    ev
}

#[test]
fn the_standby_controller_finishes_an_evacuation_when_the_active_one_is_killed() {
    if !nats_installed() {
        eprintln!("SKIPPED: nats-server not installed");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("deliveries");
    let prog = slow_logger(work.path(), &log);
    let backend = |who: &str| {
        format!(
            "\n[backend]\ndefault = \"exec\"\nshutdown_grace_ms = 120000\n[backend.exec]\nprogram = \"{}\"\nargs = [\"{who}\"]\ntimeout_ms = 30000\n",
            prog.display()
        )
    };
    let inputs = vec![capture("mtd.pcap")];
    let reference = {
        let d = tempfile::tempdir().unwrap();
        let prog = slow_logger(d.path(), &d.path().join("deliveries"));
        let r = with_rules(
            &backend("ref").replace(&work.path().join("deliver").display().to_string(), prog.to_str().unwrap()),
        );
        without_inputs(stable(replay(r.path(), 1, &inputs)))
    };
    let ids: std::collections::BTreeSet<String> =
        of_type(&reference, "action").iter().map(|a| a["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 6, "an alert and the five moves of the evacuation");

    let racks: &[&[&str]] = &[&["compute-1", "compute-4"], &["compute-2", "compute-3", "compute-9"]];
    let cluster = work.path().join("cluster.toml");
    std::fs::write(&cluster, cluster_toml(racks, 0)).unwrap();
    let (r1, r2, rs) = (with_rules(&backend("c1")), with_rules(&backend("c2")), with_rules(""));
    let nats = NatsServer::start();
    let (e1, e2) = (work.path().join("c1.jsonl"), work.path().join("c2.jsonl"));
    let mut c1 =
        Proc::spawn("c1", &control_args(&nats.url(), "c1", r1.path(), &cluster, &e1), work.path().join("c1.err"));
    wait_for("c1 to take the lease", Duration::from_secs(60), || c1.stderr().contains("c1 holds the lease"));
    let mut c2 =
        Proc::spawn("c2", &control_args(&nats.url(), "c2", r2.path(), &cluster, &e2), work.path().join("c2.err"));
    let mut sensors: Vec<Proc> = (0..2)
        .map(|i| {
            let mut a = sense_args(&nats.url(), i, rs.path(), &cluster, &work.path().join(format!("spool-{i}")), &[]);
            a.push(inputs[0].display().to_string());
            Proc::spawn(&format!("sensor {i}"), &a, work.path().join(format!("sense-{i}.err")))
        })
        .collect();
    let delivered = || -> Vec<(String, String)> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let (who, id) = l.split_once(' ').unwrap();
                (who.to_string(), id.to_string())
            })
            .collect()
    };
    // Kill the active controller once it has delivered two of the six: in the evacuation.
    wait_for("c1 to deliver two actions", Duration::from_secs(120), || delivered().len() >= 2);
    c1.kill9();
    let killed_at = Instant::now();
    let before_kill = delivered();
    assert!(before_kill.iter().all(|(who, _)| who == "c1"), "only the lease holder acts: {before_kill:?}");
    for s in &mut sensors {
        s.wait();
    }
    wait_for("c2 to take over", Duration::from_secs(60), || c2.stderr().contains("c2 holds the lease"));
    let took_over = killed_at.elapsed();
    c2.wait();
    let all = delivered();
    let got: std::collections::BTreeSet<String> = all.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(got, ids, "no action lost: {all:?}");
    // At least once, with the same id: only an action in flight at the kill may come twice.
    assert!(all.len() <= ids.len() + 1, "{all:?}");
    assert!(all.iter().any(|(who, _)| who == "c2"), "the standby delivered the rest: {all:?}");
    // The lease's time to live is 3 s, renewed every second; generous for a loaded machine.
    assert!(took_over < Duration::from_secs(30), "took over after {took_over:?}");
    // The standby rebuilt the same state: its events are the replay's, but
    // for how many actions this process delivered itself.
    let delivered_count = |mut ev: Vec<Value>| {
        let n = ev.last_mut().unwrap()["actions"].as_object_mut().unwrap().remove("delivered").unwrap();
        (ev, n.as_u64().unwrap())
    };
    let (got, by_c2) = delivered_count(without_inputs(stable(read_events(&e2))));
    let (want, all_of_them) = delivered_count(reference);
    assert_eq!(got, want);
    assert_eq!(all_of_them, 6);
    assert_eq!(by_c2, all.iter().filter(|(who, _)| who == "c2").count() as u64);
}

/// The address a process serves on, from its stderr.
fn serving(p: &Proc) -> Option<String> {
    let e = p.stderr();
    let l = e.lines().find(|l| l.contains("serving on http://"))?;
    Some(l.split("http://").nth(1)?.trim().to_string())
}

fn metrics_text(addr: &str) -> String {
    let Ok(mut r) = ureq::get(&format!("http://{addr}/metrics")).call() else { return String::new() };
    r.body_mut().read_to_string().unwrap_or_default()
}

/// promtool (installed with prometheus by scripts/test) accepts the exposition.
fn promtool_accepts(metrics: &str) {
    let ok = Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but promtool is not installed");
        eprintln!("promtool not installed: metrics not checked");
        return;
    }
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut p.stdin.take().unwrap(), metrics.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A counter from a process's /metrics (0 when it cannot be read yet).
fn metric(addr: &str, name: &str) -> u64 {
    let body = metrics_text(addr);
    body.lines()
        .find(|l| l.split(' ').next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Two racks over mtd.pcap: the reference replay and what the cluster runs need.
struct Faults {
    work: tempfile::TempDir,
    rules: tempfile::TempDir,
    cluster: PathBuf,
    input: PathBuf,
    reference: Vec<Value>,
}

impl Faults {
    fn new(extra: &str) -> Faults {
        let work = tempfile::tempdir().unwrap();
        let rules = with_rules("");
        let input = capture("mtd.pcap");
        let reference = stable(replay(rules.path(), 2, std::slice::from_ref(&input)));
        let cluster = work.path().join("cluster.toml");
        let racks: &[&[&str]] = &[&["compute-1", "compute-4"], &["compute-2", "compute-3", "compute-9"]];
        std::fs::write(&cluster, format!("{extra}{}", cluster_toml(racks, 0))).unwrap();
        Faults { work, rules, cluster, input, reference }
    }

    fn control(&self, nats: &str, extra: &[&str]) -> Proc {
        let events = self.work.path().join("control.jsonl");
        let mut args = control_args(nats, "c1", self.rules.path(), &self.cluster, &events);
        args.extend(extra.iter().map(|s| s.to_string()));
        Proc::spawn("control", &args, self.work.path().join("control.err"))
    }

    fn sensor(&self, nats: &str, i: usize, extra: &[&str], run: usize) -> Proc {
        let spool = self.work.path().join(format!("spool-{i}"));
        let mut a = sense_args(nats, i, self.rules.path(), &self.cluster, &spool, extra);
        a.push(self.input.display().to_string());
        Proc::spawn(&format!("sensor {i}"), &a, self.work.path().join(format!("sense-{i}-{run}.err")))
    }

    fn check(&self) {
        let got = stable(read_events(&self.work.path().join("control.jsonl")));
        assert_eq!(got, self.reference);
    }
}

#[test]
fn a_sensor_killed_and_restarted_does_not_count_its_windows_twice() {
    if !nats_installed() {
        eprintln!("SKIPPED: nats-server not installed");
        return;
    }
    let f = Faults::new("");
    unspend_tokens(f.rules.path());
    let nats = NatsServer::start();
    let mut control = f.control(&nats.url(), &[]);
    let mut other = f.sensor(&nats.url(), 1, &[], 0);
    // Paced, so it is killed in the middle (mtd.pcap is 30 s: 7.5 s at 4x).
    let mut s0 = f.sensor(&nats.url(), 0, &["--speed", "4", "--listen", "127.0.0.1:0"], 0);
    wait_for("sensor 0 to serve", Duration::from_secs(60), || serving(&s0).is_some());
    let addr = serving(&s0).unwrap();
    wait_for("sensor 0 to publish windows", Duration::from_secs(120), || {
        metric(&addr, "vmsentry_cluster_partials_published_total") >= 8
    });
    s0.kill9();
    // Restarted, it replays from the start: the windows it already sent come again.
    let mut again = f.sensor(&nats.url(), 0, &[], 1);
    again.wait();
    other.wait();
    control.wait();
    f.check();
}

#[test]
fn sensors_buffer_while_nats_is_down_for_30_s_then_catch_up_exactly() {
    if !nats_installed() {
        eprintln!("SKIPPED: nats-server not installed");
        return;
    }
    let f = Faults::new("");
    unspend_tokens(f.rules.path());
    let mut nats = NatsServer::start();
    let url = nats.url();
    let mut control = f.control(&url, &["--listen", "127.0.0.1:0"]);
    let mut sensors: Vec<Proc> =
        (0..2).map(|i| f.sensor(&url, i, &["--speed", "2", "--listen", "127.0.0.1:0"], 0)).collect();
    wait_for("the sensors to serve", Duration::from_secs(60), || sensors.iter().all(|s| serving(s).is_some()));
    wait_for("the controller to serve", Duration::from_secs(60), || serving(&control).is_some());
    let addrs: Vec<String> = sensors.iter().map(|s| serving(s).unwrap()).collect();
    let ctl = serving(&control).unwrap();
    wait_for("sensor 0 to publish", Duration::from_secs(120), || {
        metric(&addrs[0], "vmsentry_cluster_partials_published_total") >= 3
    });
    wait_for("the controller to merge and hold the lease", Duration::from_secs(60), || {
        let m = metrics_text(&ctl);
        m.contains("vmsentry_cluster_lease_held{controller=\"c1\"} 1\n")
            && m.contains("vmsentry_cluster_partials_total{outcome=\"merged\"}")
    });
    let m = metrics_text(&ctl);
    assert!(m.contains("vmsentry_cluster_sensors_up 2\n"), "{m}");
    assert!(m.contains("vmsentry_cluster_sensor_up{sensor=\"rack-1\"} 1\n"), "{m}");
    promtool_accepts(&m);
    promtool_accepts(&metrics_text(&addrs[0]));
    nats.stop();
    let down = Instant::now();
    // The capture goes on: the spool fills.
    wait_for("sensor 0 to buffer", Duration::from_secs(60), || {
        metric(&addrs[0], "vmsentry_cluster_spool_messages") >= 3
    });
    std::thread::sleep(Duration::from_secs(30).saturating_sub(down.elapsed()));
    let buffered = metric(&addrs[0], "vmsentry_cluster_spool_messages");
    nats.run();
    for s in &mut sensors {
        s.wait();
    }
    control.wait();
    assert!(buffered >= 3, "{buffered}");
    f.check();
}

/// A 3-node JetStream cluster on loopback.
struct NatsCluster {
    nodes: Vec<Option<Child>>,
    ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    fn start() -> NatsCluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let all_routes: Vec<String> = routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let store = dir.path().join(format!("store-{i}"));
            let child = Command::new("nats-server")
                .args(["-js", "-a", "127.0.0.1", "-p", &ports[i].to_string(), "-sd", store.to_str().unwrap()])
                .args(["-n", &format!("cluster-node-{i}"), "--cluster_name", "cluster-test"])
                .args(["--cluster", &format!("nats://127.0.0.1:{}", routes[i]), "--routes", &all_routes.join(",")])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join(format!("node-{i}.log"))).unwrap())
                .spawn()
                .unwrap();
            nodes.push(Some(child));
        }
        for &p in &ports {
            wait_for("a node to listen", Duration::from_secs(30), || {
                std::net::TcpStream::connect(("127.0.0.1", p)).is_ok()
            });
        }
        NatsCluster { nodes, ports, _dir: dir }
    }

    fn url(&self) -> String {
        self.ports.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

#[test]
fn a_three_node_nats_cluster_losing_a_node_mid_run_loses_nothing() {
    if !nats_installed() {
        eprintln!("SKIPPED: nats-server not installed");
        return;
    }
    let f = Faults::new("replicas = 3\n");
    unspend_tokens(f.rules.path());
    let mut nats = NatsCluster::start();
    let url = nats.url();
    let mut control = f.control(&url, &[]);
    // The cluster has elected its JetStream leader once the controller made
    // the (3-replica) stream and buckets and took the lease.
    wait_for("the controller to take the lease", Duration::from_secs(120), || {
        control.stderr().contains("c1 holds the lease")
    });
    let mut sensors: Vec<Proc> =
        (0..2).map(|i| f.sensor(&url, i, &["--speed", "3", "--listen", "127.0.0.1:0"], 0)).collect();
    wait_for("the sensors to serve", Duration::from_secs(60), || sensors.iter().all(|s| serving(s).is_some()));
    let addr = serving(&sensors[0]).unwrap();
    wait_for("sensor 0 to publish", Duration::from_secs(120), || {
        metric(&addr, "vmsentry_cluster_partials_published_total") >= 4
    });
    // The first node: the one every client is connected to (servers are tried in order).
    nats.kill(0);
    for s in &mut sensors {
        s.wait();
    }
    control.wait();
    f.check();
}

#[test]
fn the_shipped_cluster_file_is_valid_for_the_shipped_rules() {
    let rules = rules_dir();
    let r = vmsentry::config::Rules::load(rules.path()).unwrap();
    let c = vmsentry::cluster::Cluster::load(&r, Some(&root().join("dist/cluster/cluster.toml"))).unwrap();
    let ids: Vec<&str> = c.sensors.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["rack-1", "rack-2"]);
    assert_eq!((c.default, c.replicas, c.lease_ttl.as_secs()), (0, 1, 5));
    // A bad one is refused at its place, exit 2.
    let bad = rules.path().join("cluster.toml");
    std::fs::write(&bad, "[[sensor]]\nid = \"r 1\"\n").unwrap();
    let out =
        vmsentry(&["control", "--nats", "nats://127.0.0.1:1", "--id", "c", "--rules", rules.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cluster.toml:1:1: sensor id `r 1` must be 1-64 letters"), "{err}");
}

#[test]
fn a_sensor_that_never_reports_is_declared_down_and_holds_nothing_back() {
    if !nats_installed() {
        eprintln!("SKIPPED: nats-server not installed");
        return;
    }
    let f = Faults::new("");
    // Quicker to give up on a sensor (the extra line goes before the [[sensor]] tables).
    let text = std::fs::read_to_string(&f.cluster).unwrap().replace("down_after_s = 120", "down_after_s = 2");
    std::fs::write(&f.cluster, text).unwrap();
    unspend_tokens(f.rules.path());
    let nats = NatsServer::start();
    let mut control = f.control(&nats.url(), &[]);
    // Only rack-1's sensor runs; rack-2's never comes.
    f.sensor(&nats.url(), 0, &[], 0).wait();
    let err = control.wait();
    assert!(err.contains("sensor rack-2 silent for"), "{err}");
    let ev = read_events(&f.work.path().join("control.jsonl"));
    let down = of_type(&ev, "sensor");
    assert_eq!(down.len(), 1, "{down:?}");
    assert_eq!(
        (&down[0]["sensor"], &down[0]["state"], &down[0]["last_window_start"]),
        (&json!("rack-2"), &json!("down"), &json!(null))
    );
    assert!(down[0]["silent_s"].as_f64().unwrap() >= 2.0);
    // tests/golden/cluster-sensor.jsonl has the same fields (it is written by hand: silent_s is wall clock).
    let golden: Value = serde_json::from_str(
        std::fs::read_to_string(root().join("tests/golden/cluster-sensor.jsonl")).unwrap().lines().next().unwrap(),
    )
    .unwrap();
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(down[0]), keys(&golden));
    // Every line reads as a typed event; rack-1's frames are merged without rack-2.
    for e in &ev {
        vmsentry::event::Event::from_json(&e.to_string()).unwrap();
    }
    let s = summary(&ev);
    assert!(s["packets"].as_u64().unwrap() > 20_000 && s["packets"].as_u64().unwrap() < 21_428, "{s}");
    assert_eq!(of_type(&ev, "evacuation").len(), 1, "rack-1 holds compute-4: the evacuation is still seen");
}

/// The frames of `input` from Unix second `from` (inclusive) to `to` (exclusive), cut by tshark.
fn cut(input: &Path, from: u64, to: u64, out: &Path) {
    let filter = format!("frame.time_epoch >= {from} and frame.time_epoch < {to}");
    let o = Command::new(tshark().expect("tshark"))
        .args(["-r", input.to_str().unwrap(), "-Y", &filter, "-F", "pcap", "-w", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "tshark: {}", String::from_utf8_lossy(&o.stderr));
}

/// mig-6's events of a run: its migrations, level changes and actions.
fn of_mig6(ev: &[Value]) -> Vec<Value> {
    ev.iter()
        .filter(|e| e["vm_name"] == "mig-6" || e["vm"] == "fa:16:3e:00:01:06")
        .filter(|e| ["migration", "level", "action"].contains(&e["type"].as_str().unwrap_or("")))
        .cloned()
        .collect()
}

#[test]
fn a_token_the_killed_controller_used_is_refused_by_the_standby_as_replayed() {
    if !nats_and_tshark_installed() {
        return;
    }
    // Tokens required: a move whose token is refused is a move to an unsigned
    // host. Each controller has its own rules directory (its own host), so
    // its own tokens directory; the sensor a third.
    let tokens_required = || {
        let rules = with_rules("");
        let toml = rules.path().join("vmsentry.toml");
        let text = std::fs::read_to_string(&toml).unwrap();
        std::fs::write(&toml, text.replace("require_authorization = false", "require_authorization = true")).unwrap();
        rules
    };
    let (rules, rules_a, rules_b) = (tokens_required(), tokens_required(), tokens_required());
    let input = capture("migration-vxlan.pcap");
    let reference = stable(replay(rules.path(), 1, std::slice::from_ref(&input)));
    let moves: Vec<(String, String)> = of_type(&reference, "migration")
        .iter()
        .filter(|m| m["vm_name"] == "mig-6")
        .map(|m| (m["ts"].as_str().unwrap().to_string(), m["authorization"].as_str().unwrap().to_string()))
        .collect();
    // mig-6 moves to compute-2 with its token at :53, back without one at
    // :56, and to compute-2 again with the same token at :59.
    let at = |s: &str| format!("2023-11-14T22:13:{s}.000000Z");
    assert_eq!(moves, [(at("53"), "granted".into()), (at("56"), "missing".into()), (at("59"), "replayed".into())]);

    let work = tempfile::tempdir().unwrap();
    let cluster = work.path().join("cluster.toml");
    std::fs::write(&cluster, cluster_toml(&[&["compute-1", "compute-2", "compute-3", "compute-4", "compute-9"]], 0))
        .unwrap();
    // Up to :55 (the token used at :53), and from :57 (mig-6 back on compute-1, where the rules place it).
    let (first, second) = (work.path().join("first.pcap"), work.path().join("second.pcap"));
    cut(&input, 0, 1_700_000_035, &first);
    cut(&input, 1_700_000_037, 2_000_000_000, &second);
    let nats = NatsServer::start();

    // Controller A, alone, uses the token; killed once it has.
    let ea = work.path().join("a.jsonl");
    let mut args = control_args(&nats.url(), "ctl-a", rules_a.path(), &cluster, &ea);
    args.retain(|a| a != "--until-end");
    let mut a = Proc::spawn("controller a", &args, work.path().join("a.err"));
    let mut s = sense_args(&nats.url(), 0, rules.path(), &cluster, &work.path().join("spool-1"), &[]);
    s.push(first.display().to_string());
    Proc::spawn("sensor, first part", &s, work.path().join("sense-1.err")).wait();
    let granted = |p: &Path| {
        std::fs::read_to_string(p).unwrap_or_default().lines().any(|l| {
            l.contains("\"type\":\"migration\"") && l.contains("\"vm_name\":\"mig-6\"") && l.contains("\"granted\"")
        })
    };
    wait_for("controller a to grant mig-6's move", Duration::from_secs(120), || granted(&ea));
    a.kill9();
    // A made the tokens bucket (there was none) and warned that it starts empty; B finds it.
    let made = "was missing and is made now, empty";
    assert!(a.stderr().contains(made), "{}", a.stderr());
    // In KV, not in A's tokens directory.
    assert!(!rules_a.path().join("tokens/used-tokens").exists());

    // B never sees that move: the stream no longer holds it (as after its
    // `retention_s`, or a controller started on a new stream).
    {
        let r = vmsentry::config::Rules::load(rules.path()).unwrap();
        let stream = vmsentry::cluster::Cluster::load(&r, Some(&cluster)).unwrap().stream();
        let n = vmsentry::cluster::nats::Nats::connect(&nats.url(), "test", false).unwrap();
        let purged = n.block_on(async { n.js.get_stream(&stream).await.unwrap().purge().await });
        assert!(purged.unwrap().purged > 0);
    }
    let eb = work.path().join("b.jsonl");
    let mut b = Proc::spawn(
        "controller b",
        &control_args(&nats.url(), "ctl-b", rules_b.path(), &cluster, &eb),
        work.path().join("b.err"),
    );
    let mut s = sense_args(&nats.url(), 0, rules.path(), &cluster, &work.path().join("spool-2"), &[]);
    s.push(second.display().to_string());
    Proc::spawn("sensor, second part", &s, work.path().join("sense-2.err")).wait();
    let b_err = b.wait();
    assert!(!b_err.contains(made), "{b_err}");
    let got = without_inputs(stable(read_events(&eb)));
    // The same as one process that had used the token before: one replay
    // of the second part with the nonce in its used-tokens file.
    assert!(!rules_b.path().join("tokens/used-tokens").exists());
    std::fs::write(rules_b.path().join("tokens/used-tokens"), "0000000000000106\n").unwrap();
    let want = without_inputs(stable(replay(rules_b.path(), 1, std::slice::from_ref(&second))));
    assert_eq!(got, want, "{b_err}");
    // The replayed token: the move not authorized, so HIGH (an unsigned host) and quarantined.
    let mig6: Vec<Value> = of_mig6(&got)
        .iter()
        .map(|e| json!([e["ts"], e["type"], e["authorization"], e["to"], e["reason"], e["action"]]))
        .collect();
    let t = |s: &str| format!("2023-11-14T22:{s}.000000Z");
    assert_eq!(
        mig6,
        [
            json!([t("13:59"), "migration", "replayed", null, null, null]),
            json!([t("14:00"), "level", null, "HIGH", "signature", null]),
            json!([t("14:00"), "action", null, null, "signature", "quarantine"]),
        ]
    );
    assert_eq!(of_mig6(&got)[0]["authorized"], false);
    // Because A claimed the nonce in KV for its move at :53.
    assert!(
        b_err.contains(
            "token nonce 0000000000000106 was used already (move fa:16:3e:00:01:06 compute-2 1700000033000000)"
        ),
        "{b_err}"
    );
}

#[test]
fn controllers_racing_for_one_token_claim_it_once_and_a_kv_outage_refuses_it() {
    use vmsentry::cluster::nats::{bucket, tokens_bucket, BlockingKv, Nats, NatsError};
    use vmsentry::cluster::tokens::KvNonces;
    use vmsentry::trust::token::{Claim, UsedNonces};
    if !nats_installed() {
        eprintln!("SKIPPED: nats-server not installed");
        return;
    }
    let mut nats = NatsServer::start();
    let claims = prometheus::IntCounterVec::new(prometheus::Opts::new("claims", "claims"), &["outcome"]).unwrap();
    let waited = prometheus::Counter::new("waited", "waited").unwrap();
    // The first connection makes the bucket, empty; the others find it.
    let made = std::sync::Mutex::new(Vec::new());
    let store = |wait: Duration| {
        let n = Nats::connect(&nats.url(), "test", false).unwrap();
        let (kv, m) = n.block_on(tokens_bucket(&n.js, "vmsentry_race_tokens", 1)).unwrap();
        made.lock().unwrap().push(m);
        let s = KvNonces::new(BlockingKv::new(kv, n.rt.handle().clone()), claims.clone(), waited.clone(), wait);
        (n, s)
    };
    // Eight controllers, each its own connection, claim one nonce for eight different moves at once.
    let stores: Vec<_> = (0..8).map(|_| store(Duration::from_secs(30))).collect();
    let start = std::sync::Barrier::new(8);
    let got: Vec<Claim> = std::thread::scope(|s| {
        let hs: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(i, (_, st))| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    st.claim("00000000000000aa", &format!("move m compute-2 {i}"))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winner = got.iter().position(|c| *c == Claim::Fresh).expect("one claim is fresh");
    assert_eq!(got.iter().filter(|c| **c == Claim::Fresh).count(), 1, "{got:?}");
    assert_eq!(got.iter().filter(|c| **c == Claim::Used).count(), 7, "{got:?}");
    // The winner's move decided again (a standby, a restart): still its own; another: used.
    let (_, st) = &stores[(winner + 1) % 8];
    assert_eq!(st.claim("00000000000000aa", &format!("move m compute-2 {winner}")), Claim::Again);
    assert_eq!(st.claim("00000000000000aa", "move m compute-2 99"), Claim::Used);
    // Not letters and digits: still one key per nonce.
    assert_eq!(st.claim("a.b", "x"), Claim::Fresh);
    assert_eq!(st.claim("a_b", "x"), Claim::Fresh);
    // A gate decision's claim and the move it pairs with: the same use.
    assert_eq!(
        st.claim_as("00000000000000aa", "gate compute-2 0", &|v| v == format!("move m compute-2 {winner}")),
        Claim::Again
    );
    assert_eq!(*made.lock().unwrap(), [vec![true], vec![false; 7]].concat());
    // A tokens bucket whose keys expire is refused: its used tokens would be replayable.
    let n = &stores[0].0;
    n.block_on(bucket(&n.js, "vmsentry_ttl_tokens", Duration::from_secs(3600), 1)).unwrap();
    match n.block_on(tokens_bucket(&n.js, "vmsentry_ttl_tokens", 1)) {
        Err(e @ NatsError::TokensExpire { .. }) => assert!(e.to_string().contains("could be replayed"), "{e}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a tokens bucket with a time to live was taken"),
    }
    // So is one that drops its oldest keys when full; a full one that refuses new keys is taken (claims fail closed).
    for (discard, refused) in [
        (async_nats::jetstream::stream::DiscardPolicy::Old, true),
        (async_nats::jetstream::stream::DiscardPolicy::New, false),
    ] {
        let name = format!("vmsentry_full_tokens_{refused}");
        let cfg = async_nats::jetstream::stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_messages: 100,
            allow_rollup: true,
            allow_direct: true,
            discard,
            ..Default::default()
        };
        n.block_on(n.js.create_stream(cfg)).unwrap();
        match n.block_on(tokens_bucket(&n.js, &name, 1)) {
            Err(e @ NatsError::TokensDropped { .. }) if refused => {
                assert!(e.to_string().contains("max_msgs = 100 with discard policy old"), "{e}")
            }
            Err(e) => panic!("{e}"),
            Ok((_, made)) => assert!(!refused && !made, "made: {made}"),
        }
    }
    // KV unreachable: refused within the wait, and counted ...
    let wait = Duration::from_secs(2);
    let (_n, short) = store(wait);
    nats.stop();
    let waited_before = waited.get();
    let t = Instant::now();
    assert_eq!(short.claim("00000000000000bb", "move m compute-3 1"), Claim::Unavailable);
    assert!(t.elapsed() < Duration::from_secs(60));
    assert!(waited.get() - waited_before >= 1.5, "{}", waited.get());
    // ... and the next claim within the wait is refused at once, KV counting as down.
    let t = Instant::now();
    assert_eq!(short.claim("00000000000000cc", "move m compute-3 2"), Claim::Unavailable);
    assert!(t.elapsed() < wait / 10, "{:?}", t.elapsed());
    // Once the wait is over one claim asks KV again (a probe): back up, it is answered.
    nats.run();
    std::thread::sleep(wait);
    wait_for("the probe to reach KV again", Duration::from_secs(60), || {
        short.claim("00000000000000cc", "move m compute-3 2") == Claim::Fresh
    });
    let count = |o: &str| claims.with_label_values(&[o]).get();
    assert_eq!((count("fresh"), count("again"), count("used")), (4, 2, 8));
    assert!(count("unavailable") >= 2, "{}", count("unavailable"));
}
