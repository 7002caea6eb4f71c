//! Moving-target defense for real: an alert appended to a followed EVE file makes `vmsentry live` evacuate a real guest with real libvirt, and the wire shows it arriving where the plan said.
//!
//! Needs root, libvirtd, virsh, qemu-system-x86_64, tcpdump and iproute2;
//! skipped without them unless `CI=true`, where it must run. The lab
//! (scripts/mtd-lab.sh) is two libvirt daemons, each in its own network,
//! mount and UTS namespace with its own host_uuid, joined by a veth pair
//! that carries a VXLAN overlay between their bridges. `vmsentry live`
//! runs in node a's namespaces on its end of the link, so it sees the
//! libvirt RPC, the migration stream and the guest's frames inside VXLAN,
//! and its `libvirt` backend's virsh reaches both daemons by their host
//! names. The guest is a TCG domain with no OS and no NIC option ROM: its
//! only frames are QEMU's RARP announces after the move. The daemons, their
//! QEMUs, vmsentry, tcpdump and the namespaces go away when the test ends,
//! passing or not.

use super::*;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const VM_MAC: &str = "52:54:00:78:01:10";
const VM_IP: &str = "10.78.1.10";
const A: &str = "qemu+tcp://mtdl-a/system";
const B: &str = "qemu+tcp://mtdl-b/system";

fn usable() -> bool {
    root_with_tools(
        "the libvirt MTD test",
        &["libvirtd", "virsh", "qemu-system-x86_64", "tcpdump", "ip", "nsenter", "unshare", "flock"],
    )
}

/// The two daemons; `Drop` stops them (and their QEMUs) and removes the namespaces.
struct Lab {
    dir: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/mtd-lab.sh")).arg("down").arg(self.dir.path()).status();
    }
}

/// A process this test started; killed (by its pid) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Lab {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A command run in node `n`'s namespaces.
    fn on(&self, n: &str) -> Command {
        let mut c = Command::new(root().join("scripts/mtd-lab.sh"));
        c.arg("exec").arg(self.dir.path()).arg(n);
        c
    }

    fn virsh(&self, uri: &str, args: &[&str]) -> Output {
        self.on("a").args(["virsh", "-c", uri]).args(args).output().unwrap()
    }

    fn ok(&self, uri: &str, args: &[&str]) -> String {
        let o = self.virsh(uri, args);
        assert!(o.status.success(), "virsh {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    fn state(&self, uri: &str) -> String {
        let o = self.virsh(uri, &["domstate", "mtdl-vm"]);
        if o.status.success() {
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        } else {
            "absent".into()
        }
    }
}

/// Waits until `what` holds, for at most `within`, then says why not.
fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < within, "waited {within:?} for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_events(p: &Path) -> Vec<Value> {
    // A line being written is not yet whole: only whole lines are read.
    let text = std::fs::read_to_string(p).unwrap_or_default();
    let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    // Each a typed vmsentry event.
    event_lines(whole)
}

/// The rules: the two daemons' hosts, signed by their veth MACs; a third,
/// unsigned host with the most free RAM (the plan must never pick it); the
/// guest, whose address only the rules know (it has no OS to use it).
fn write_rules(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(root().join("rules/cluster.key"), dir.join("cluster.key")).unwrap();
    std::fs::set_permissions(dir.join("cluster.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let key = dir.join("cluster.key");
    let sign = |id: &str, mac: &str| {
        let o = vmsentry(&["sign", "--key-file", key.to_str().unwrap(), "--cluster", "lab", "--id", id, "--mac", mac]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    let toml = format!(
        r#"[cluster]
name = "lab"
key_file = "cluster.key"

[window]
length_ms = 1000

[thresholds]
medium_bps = 800_000_000
high_bps = 900_000_000
medium_pps = 300_000
high_pps = 900_000
clear_windows = 3

[mtd]
mode = "vm"

[[ids]]
path = "eve.json"
format = "suricata_eve"
from_start = true

[policy]
MEDIUM = {{ signed = "alert", unsigned = "quarantine" }}
HIGH = {{ signed = "migrate", unsigned = "quarantine" }}

[backend]
migrate = "libvirt"
journal = "journal.jsonl"

[backend.libvirt]
uri = "qemu+tcp://{{hypervisor}}/system"
migrate_uri = "qemu+tcp://{{destination}}/system"
timeout_ms = 90000

[[hypervisor]]
id = "mtdl-a"
ram_mb = 1024
macs = ["52:54:00:78:00:01"]
ips = ["10.78.0.1"]
signature = "{sa}"

[[hypervisor]]
id = "mtdl-b"
ram_mb = 1024
macs = ["52:54:00:78:00:02"]
ips = ["10.78.0.2"]
signature = "{sb}"

[[hypervisor]]
id = "mtdl-rogue"
ram_mb = 65536
macs = ["52:54:00:78:00:09"]
ips = ["10.78.0.9"]
signature = "{zero}"

[[vm]]
name = "mtdl-vm"
mac = "{VM_MAC}"
ram_mb = 64
flavor = "lab.tiny"
ips = ["{VM_IP}"]
hypervisor = "mtdl-a"
"#,
        sa = sign("mtdl-a", "52:54:00:78:00:01"),
        sb = sign("mtdl-b", "52:54:00:78:00:02"),
        zero = "0".repeat(64),
    );
    std::fs::write(dir.join("vmsentry.toml"), toml).unwrap();
    // Followed from its start, so the alert counts however soon it comes.
    std::fs::write(dir.join("eve.json"), "").unwrap();
}

/// The raw statistics of the source's last completed job, by name.
fn jobstats(lab: &Lab) -> BTreeMap<String, String> {
    lab.ok(A, &["domjobinfo", "mtdl-vm", "--completed", "--keep-completed", "--rawstats"])
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn an_ids_alert_live_migrates_the_real_guest_through_libvirt_to_the_plans_destination() {
    if !usable() {
        eprintln!("skipped: needs root and libvirt (set CI=true to require it)");
        return;
    }
    let lab = Lab { dir: tempfile::tempdir().unwrap() };
    let rules = lab.path("rules");
    write_rules(&rules);
    let up = Command::new(root().join("scripts/mtd-lab.sh")).arg("up").arg(lab.dir.path()).output().unwrap();
    assert!(up.status.success(), "lab: {}", String::from_utf8_lossy(&up.stderr));

    // The guest on node a: its NIC on a's bridge, no option ROM (no PXE).
    let dom = format!(
        "<domain type='qemu'><name>mtdl-vm</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><devices><emulator>/usr/bin/qemu-system-x86_64</emulator>\
         <interface type='bridge'><source bridge='mtdlbr0'/><mac address='{VM_MAC}'/><model type='virtio'/>\
         <rom bar='off'/></interface><video><model type='none'/></video><memballoon model='none'/></devices></domain>"
    );
    std::fs::write(lab.path("dom.xml"), dom).unwrap();
    lab.ok(A, &["define", lab.path("dom.xml").to_str().unwrap()]);
    lab.ok(A, &["start", "mtdl-vm"]);
    assert_eq!(lab.state(A), "running");
    assert_eq!(lab.state(B), "absent");

    // An independent capture of the same link, for the oracle below.
    let pcap = lab.path("link.pcap");
    let mut dump = Proc(
        Command::new("ip")
            .args(["netns", "exec", "mtdl-a", "tcpdump", "--immediate-mode", "-i", "mtdl-a0", "-U", "-n", "-w"])
            .arg(&pcap)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut err = dump.0.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("listening on") {
        let n = std::io::Read::read(&mut err, &mut buf).unwrap();
        assert!(n > 0, "tcpdump did not start: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }

    // vmsentry on node a's end of the link, following the EVE file.
    let events = lab.path("events.jsonl");
    let log = lab.path("vmsentry.err");
    let mut sentry = Proc(
        lab.on("a")
            .arg(env!("CARGO_BIN_EXE_vmsentry"))
            .args(["live", "--interface", "mtdl-a0", "--listen", "127.0.0.1:0", "--rules"])
            .arg(&rules)
            .arg("--events")
            .arg(&events)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
    // A vmsentry that stopped says why at once, not after the wait.
    let running = |sentry: &mut Proc| {
        if let Ok(Some(st)) = sentry.0.try_wait() {
            panic!("vmsentry exited ({st}): {}", stderr());
        }
    };
    wait_until(Duration::from_secs(30), "vmsentry to capture", || {
        running(&mut sentry);
        stderr().contains("capturing on mtdl-a0")
    });

    // Suricata's alert about the guest's address, appended.
    let alert = format!(
        "{{\"timestamp\":\"2026-12-01T23:00:00.000000+0000\",\"flow_id\":1,\"event_type\":\"alert\",\
         \"src_ip\":\"203.0.113.9\",\"src_port\":4444,\"dest_ip\":\"{VM_IP}\",\"dest_port\":22,\"proto\":\"TCP\",\
         \"alert\":{{\"action\":\"allowed\",\"signature_id\":9000001,\"rev\":1,\"severity\":1,\
         \"signature\":\"LOCAL attack on a tenant VM\",\"category\":\"Attempted Administrator Privilege Gain\"}}}}\n"
    );
    {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(rules.join("eve.json"))
            .unwrap()
            .write_all(alert.as_bytes())
            .unwrap();
    }
    let journal = rules.join("journal.jsonl");
    // The move on the wire, and the backend's own word that it is done.
    wait_until(Duration::from_secs(120), "the migration on the wire and the journal's `done`", || {
        running(&mut sentry);
        read_events(&events).iter().any(|e| e["type"] == "migration")
            && std::fs::read_to_string(&journal).unwrap_or_default().contains("\"state\":\"done\"")
    });
    // QEMU announces the guest 5 times (its default `announce-rounds`)
    // over about 0.8 s after the move (50, 150, 250, 350 ms apart): stop vmsentry only once tcpdump
    // has them all, or the last may reach tcpdump alone.
    wait_until(Duration::from_secs(20), "QEMU's five announces on the wire", || {
        let rd = Command::new("tcpdump").args(["-n", "-r"]).arg(&pcap).arg("udp port 4789").output().unwrap();
        // One line per packet starts with its time; the inner frame's does not.
        let packets = String::from_utf8_lossy(&rd.stdout)
            .lines()
            .filter(|l| l.len() > 9 && l.as_bytes()[2] == b':' && l.as_bytes()[5] == b':' && l.as_bytes()[8] == b'.')
            .count();
        packets >= 5
    });
    std::thread::sleep(Duration::from_millis(200));
    super::service::signal(&sentry.0, "TERM");
    assert_eq!(super::service::wait_exit(&mut sentry.0, Duration::from_secs(30)), Some(0), "{}", stderr());
    super::service::signal(&dump.0, "INT");
    let _ = dump.0.wait();
    let ev = read_events(&events);

    // The alert named the guest, through the rules, on node a.
    let alerts = of_type(&ev, "ids_alert");
    assert_eq!(alerts.len(), 1);
    let a = alerts[0];
    assert_eq!(
        (&a["sid"], &a["victim"], &a["victim_vm"], &a["victim_vm_name"], &a["victim_known_by"]),
        (&json!(9000001), &json!(VM_IP), &json!(VM_MAC), &json!("mtdl-vm"), &json!("rules"))
    );
    assert_eq!((&a["victim_hypervisor"], &a["outcome"]), (&json!("mtdl-a"), &json!("evacuated")));
    // The plan: the guest to node b; never the unsigned host, though it has
    // the most free RAM.
    let evac = of_type(&ev, "evacuation");
    assert_eq!(evac.len(), 1);
    let e = evac[0];
    assert_eq!((&e["hypervisor"], &e["trigger"], &e["mode"]), (&json!("mtdl-a"), &json!("ids"), &json!("vm")));
    let plan = e["plan"].as_array().unwrap();
    assert_eq!(plan.len(), 1);
    let line = &plan[0];
    assert_eq!(
        (&line["vm"], &line["outcome"], &line["destination"]),
        (&json!(VM_MAC), &json!("migrate"), &json!("mtdl-b"))
    );
    let dest = line["destination"].as_str().unwrap();
    let id = line["action_id"].as_str().unwrap();
    let acts = of_type(&ev, "action");
    assert_eq!(acts.len(), 1);
    assert_eq!(
        (&acts[0]["id"], &acts[0]["action"], &acts[0]["destination"], &acts[0]["hypervisor"], &acts[0]["backend"]),
        (&json!(id), &json!("migrate"), &json!(dest), &json!("mtdl-a"), &json!("libvirt"))
    );
    assert_eq!(summary(&ev)["actions"]["delivered"], 1);
    assert_eq!(summary(&ev)["actions"]["failed"], 0);

    // The journal: that action, to the plan's destination, sent once and done.
    let jl: Vec<Value> =
        std::fs::read_to_string(&journal).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let states: Vec<(&str, &str)> =
        jl.iter().map(|j| (j["id"].as_str().unwrap(), j["state"].as_str().unwrap())).collect();
    assert_eq!(states, [(id, "pending"), (id, "sent"), (id, "done")]);
    let ja = &jl[0]["action"];
    assert_eq!(
        (&ja["action"], &ja["vm"], &ja["hypervisor"], &ja["destination"]),
        (&json!("migrate"), &json!(VM_MAC), &json!("mtdl-a"), &json!(dest))
    );

    // libvirt: running at the destination, not at the source (which keeps
    // the persistent definition, shut off).
    assert_eq!(lab.state(B), "running");
    assert_eq!(lab.state(A), "shut off");
    assert!(!lab.ok(A, &["list", "--name"]).lines().any(|l| l == "mtdl-vm"));
    assert!(
        stderr().contains(&format!("vmsentry: libvirt: migrated mtdl-vm ({VM_MAC}) from {A} to {B}")),
        "{}",
        stderr()
    );

    // The wire: the move to the plan's destination, by b's announce inside
    // VXLAN, b's signature valid, the stream measured.
    let migs = of_type(&ev, "migration");
    assert_eq!(migs.len(), 1);
    let m = migs[0];
    assert_eq!(
        (&m["vm"], &m["from_hypervisor"], &m["to_hypervisor"], &m["to_mac"], &m["to_ip"], &m["via"]),
        (
            &json!(VM_MAC),
            &json!("mtdl-a"),
            &json!(dest),
            &json!("52:54:00:78:00:02"),
            &json!("10.78.0.2"),
            &json!("rarp")
        )
    );
    assert_eq!((&m["signature"], &m["ram_mb"], &m["flavor"]), (&json!("valid"), &json!(64), &json!("lab.tiny")));
    // Nothing from the guest before the move: no downtime to measure.
    assert_eq!(m["downtime_ms"], Value::Null);
    // QEMU's own figures for the same migration, beside the wire's.
    let job = jobstats(&lab);
    let qemu_bytes: u64 = job["memory_processed"].parse().unwrap();
    let bytes = m["bytes"].as_u64().unwrap();
    eprintln!(
        "mtdl: wire {bytes} bytes, {} ms total; QEMU {qemu_bytes} bytes processed, {} ms elapsed, {} ms downtime",
        m["total_ms"], job["time_elapsed"], job["downtime"]
    );
    // The memory stream, not libvirt's RPC connection between the daemons
    // (8 kB, ending after it): at least QEMU's memory, at most 10 % plus
    // 256 KiB above (device state travels outside QEMU's count), as the lab's.
    assert!(m["streams"].as_u64().unwrap() >= 1);
    assert!(
        bytes >= qemu_bytes && bytes <= qemu_bytes + qemu_bytes / 10 + 256 * 1024,
        "wire {bytes}, QEMU {qemu_bytes}"
    );
    assert!(m["total_ms"].as_f64().unwrap() > 0.0);

    // The oracle: tcpdump's reading of the same link. The guest's frames
    // are QEMU's RARP announces, all inside VXLAN from node b to node a.
    let rd = Command::new("tcpdump").args(["-n", "-e", "-r"]).arg(&pcap).arg("udp port 4789").output().unwrap();
    let text = String::from_utf8_lossy(&rd.stdout);
    // Each VXLAN packet is two lines: the outer headers, then the inner frame.
    let lines: Vec<&str> = text.lines().collect();
    let pairs: Vec<(&str, &str)> = lines.chunks(2).map(|c| (c[0], c.get(1).copied().unwrap_or(""))).collect();
    assert!(!pairs.is_empty(), "no VXLAN on the link");
    for (outer, inner) in &pairs {
        let outer = outer.split_once(' ').map_or("", |(_, rest)| rest);
        assert!(
            outer.starts_with("52:54:00:78:00:02 > 52:54:00:78:00:01,") && outer.contains(": 10.78.0.2."),
            "from node b: {outer}"
        );
        assert!(
            inner.starts_with(&format!("{VM_MAC} > ff:ff:ff:ff:ff:ff, ethertype Reverse ARP (0x8035)"))
                && inner.contains(&format!("Reverse Request who-is {VM_MAC} tell {VM_MAC}")),
            "a RARP announce: {inner}"
        );
    }
    let st = of_type(&ev, "vm_stats").into_iter().find(|s| s["vm"] == VM_MAC).unwrap();
    assert_eq!(st["tx_packets"], json!(pairs.len()), "vmsentry saw every announce");

    // The report shows the alert's evacuation, the action and the migration.
    let out = lab.path("report");
    let o = vmsentry(
        &["report", events.to_str().unwrap(), "--out", out.to_str().unwrap(), "--rules"]
            .into_iter()
            .chain([rules.to_str().unwrap()])
            .collect::<Vec<_>>(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    use super::mtd::{clock_of, table};
    let num = |v: &Value| v.as_f64().map_or_else(|| "–".to_string(), |f| f.to_string());
    let row = &table(&html, "migrations")[..];
    assert_eq!(row.len(), 1);
    assert_eq!(
        row[0][..9],
        [
            "mtdl-vm".to_string(),
            clock_of(&m["ts"]),
            "lab.tiny".into(),
            "mtdl-a".into(),
            dest.into(),
            "valid".into(),
            "–".into(),
            num(&m["total_ms"]),
            bytes.to_string(),
        ]
    );
    let acts_row = table(&html, "actions");
    assert_eq!(acts_row.len(), 1);
    assert_eq!(acts_row[0][..4], ["mtdl-vm".to_string(), clock_of(&acts[0]["ts"]), "migrate".into(), dest.into()]);
    let evac_row = table(&html, "evacuations");
    assert_eq!(evac_row.len(), 1);
    assert_eq!(evac_row[0][..4], ["mtdl-a".to_string(), clock_of(&e["ts"]), "ids".into(), "9000001".into()]);
}
