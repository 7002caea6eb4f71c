//! Inputs an operator hits first: time going backwards, impossible frame
//! lengths, far-future timestamps, bad command-line values, odd rules files.

use super::*;
use std::io::Write;
use vmsentry::decode::Mac;
use vmsentry::synth::frames;

/// A classic pcap (microseconds, little-endian, Ethernet) written byte by
/// byte, so any record header can be written: (seconds, microseconds,
/// orig_len, captured bytes).
fn raw_pcap(path: &Path, records: &[(u32, u32, u32, Vec<u8>)]) {
    let mut f = std::fs::File::create(path).unwrap();
    let mut h = Vec::new();
    h.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes()); // magic, microseconds
    h.extend_from_slice(&2u16.to_le_bytes()); // version 2.4
    h.extend_from_slice(&4u16.to_le_bytes());
    h.extend_from_slice(&0i32.to_le_bytes()); // thiszone
    h.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
    h.extend_from_slice(&65535u32.to_le_bytes()); // snaplen
    h.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
    for (sec, usec, orig_len, data) in records {
        h.extend_from_slice(&sec.to_le_bytes());
        h.extend_from_slice(&usec.to_le_bytes());
        h.extend_from_slice(&(data.len() as u32).to_le_bytes());
        h.extend_from_slice(&orig_len.to_le_bytes());
        h.extend_from_slice(data);
    }
    f.write_all(&h).unwrap();
}

fn web1() -> Mac {
    "fa:16:3e:00:00:01".parse().unwrap()
}

/// A 74-byte UDP frame from web-1 (a VM of the shipped rules).
fn web1_frame() -> Vec<u8> {
    let gw: Mac = "52:54:00:ff:00:01".parse().unwrap();
    frames::udp4(web1(), gw, [10, 0, 0, 11].into(), [10, 0, 0, 1].into(), 4000, 53, 32)
}

fn replay_err(rules: &Path, pcaps: &[PathBuf]) -> (Vec<Value>, String) {
    let mut args = vec!["replay".to_string(), "--rules".into(), rules.display().to_string()];
    args.extend(pcaps.iter().map(|p| p.display().to_string()));
    let out = Command::new(env!("CARGO_BIN_EXE_vmsentry")).args(&args).output().unwrap();
    assert!(out.status.success(), "replay failed: {}", String::from_utf8_lossy(&out.stderr));
    let ev = event_lines(&String::from_utf8(out.stdout).unwrap());
    (ev, String::from_utf8(out.stderr).unwrap())
}

#[test]
fn replaying_a_file_twice_counts_the_copy_as_late_and_acts_once() {
    let rules = rules_dir();
    let once = replay(rules.path(), 2, &[capture("basic.pcap")]);
    let (twice, stderr) = replay_err(rules.path(), &[capture("basic.pcap"), capture("basic.pcap")]);
    for t in ["level", "action", "migration", "rtt_peaks", "vm_stats"] {
        assert_eq!(of_type(&once, t), of_type(&twice, t), "{t} events differ");
    }
    let (s1, s2) = (summary(&once), summary(&twice));
    let n = s1["packets"].as_u64().unwrap();
    assert_eq!(s1["late_frames"], 0);
    // Every frame of the copy is at or before the newest frame of the first.
    assert_eq!((s2["packets"].as_u64(), s2["late_frames"].as_u64()), (Some(2 * n), Some(n)));
    assert_eq!((s2["duration_s"].clone(), s2["windows"].clone()), (s1["duration_s"].clone(), s1["windows"].clone()));
    // One warning for the second file, naming it and the jump.
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("time goes backwards")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("basic.pcap: time goes backwards by 69.95"), "{}", warnings[0]);
}

#[test]
fn a_frame_with_an_impossible_length_is_damage_not_traffic() {
    let rules = rules_dir();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("len.pcap");
    let f = web1_frame();
    let n = f.len() as u32;
    raw_pcap(
        &p,
        &[
            (1_700_000_000, 0, n, f.clone()),
            (1_700_000_000, 10, u32::MAX, f.clone()), // 34 Gbit/s if believed
            (1_700_000_000, 20, n - 1, f.clone()),    // shorter on the wire than captured
            (1_700_000_000, 30, 256 * 1024 + 1, f.clone()),
            (1_700_000_000, 40, 256 * 1024, f.clone()), // the longest believed
            (1_700_000_001, 0, n, f.clone()),
        ],
    );
    let ev = replay(rules.path(), 1, &[p]);
    assert!(of_type(&ev, "level").is_empty() && of_type(&ev, "action").is_empty(), "{ev:?}");
    let s = summary(&ev);
    assert_eq!((s["packets"].as_u64(), s["bytes"].as_u64()), (Some(6), Some(u64::from(2 * n) + 256 * 1024)));
    assert_eq!(s["decode_errors_by_kind"], json!({"frame_length": 3}));
    let web = of_type(&ev, "vm_stats").into_iter().find(|e| e["vm_name"] == "web-1").unwrap().clone();
    assert_eq!((web["tx_packets"].as_u64(), web["tx_bytes"].as_u64()), (Some(3), Some(u64::from(2 * n) + 256 * 1024)));
}

#[test]
fn timestamps_after_2038_keep_their_date_and_a_jump_of_decades_costs_no_windows() {
    let rules = rules_dir();
    let d = tempfile::tempdir().unwrap();
    let f = web1_frame();
    let n = f.len() as u32;
    // 2100-01-01T00:00:00Z: 4102444800 s, above i32::MAX.
    let p2100 = d.path().join("2100.pcap");
    raw_pcap(&p2100, &[(4_102_444_800, 0, n, f.clone()), (4_102_444_800, 500_000, n, f.clone())]);
    let ev = replay(rules.path(), 1, &[p2100]);
    let s = summary(&ev);
    assert_eq!(s["ts"], "2100-01-01T00:00:01.000000Z");
    assert_eq!((s["duration_s"].clone(), s["windows"].clone()), (json!(0.5), json!(1)));
    // 1970, then 2023: two windows that held frames, not 1.7 billion.
    let jump = d.path().join("jump.pcap");
    raw_pcap(&jump, &[(1, 0, n, f.clone()), (1_700_000_000, 0, n, f.clone())]);
    let ev = replay(rules.path(), 1, &[jump]);
    let s = summary(&ev);
    assert_eq!((s["windows"].clone(), s["late_frames"].clone()), (json!(2), json!(0)));
    assert_eq!(s["ts"], "2023-11-14T22:13:21.000000Z");
    let web = of_type(&ev, "vm_stats").into_iter().find(|e| e["vm_name"] == "web-1").unwrap().clone();
    assert_eq!(web["tx_packets"], 2);
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn out_of_range_command_line_values_exit_2_with_the_range() {
    let rules = rules_dir();
    let r = rules.path().to_str().unwrap();
    let basic = capture("basic.pcap");
    let b = basic.to_str().unwrap();
    for (args, says) in [
        (vec!["replay", "--rules", r, "--threads", "100000", b], "`100000` is not a number of threads from 1 to 1024"),
        (vec!["replay", "--rules", r, "--threads", "0", b], "`0` is not a number of threads from 1 to 1024"),
        (vec!["live", "--rules", r, "--interface", "lo", "--threads", "0"], "from 1 to 1024"),
        (
            vec!["live", "--rules", r, "--interface", "lo", "--snaplen", "-5"],
            "`-5` is not a snaplen in bytes from 64 to 262144",
        ),
        (
            vec!["live", "--rules", r, "--interface", "lo", "--snaplen", "10"],
            "`10` is not a snaplen in bytes from 64 to 262144",
        ),
        (
            vec!["live", "--rules", r, "--interface", "lo", "--buffer-mb", "0"],
            "`0` is not a buffer size in MiB from 1 to 2047",
        ),
        (vec!["live", "--rules", r, "--interface", "lo", "--buffer-mb", "4096"], "from 1 to 2047"),
    ] {
        let out = vmsentry(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr_of(&out));
        assert!(stderr_of(&out).contains(says), "{args:?}: {}", stderr_of(&out));
    }
    // The largest values still run.
    let ev = replay_with(rules.path(), 1024, &[], &[capture("third_party/zeek__icmp__icmp-ping.pcap")]);
    assert_eq!(summary(&ev)["packets"], 4);
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

#[test]
fn live_checks_the_interface_before_serving_and_hints_at_cap_net_raw() {
    let rules = rules_dir();
    let r = rules.path().to_str().unwrap();
    let out = vmsentry(&["live", "--rules", r, "--interface", "vms-nosuch0", "--listen", "127.0.0.1:0"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("vms-nosuch0: cannot capture"), "{err}");
    assert!(!err.contains("serving on"), "served before the capture failed: {err}");

    // Without CAP_NET_RAW (as nobody): EPERM, and the hint.
    if !is_root() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI must run this test as root");
        eprintln!("skipped the unprivileged half: needs root to switch to nobody");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let bin = d.path().join("vmsentry");
    std::fs::copy(env!("CARGO_BIN_EXE_vmsentry"), &bin).unwrap();
    let nobody_rules = d.path().join("rules");
    std::fs::create_dir(&nobody_rules).unwrap();
    for f in ["vmsentry.toml", "cluster.key"] {
        std::fs::copy(rules.path().join(f), nobody_rules.join(f)).unwrap();
        std::os::unix::fs::chown(nobody_rules.join(f), Some(65534), Some(65534)).unwrap();
    }
    std::fs::set_permissions(nobody_rules.join("cluster.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(&bin)
        .args(["live", "--rules", nobody_rules.to_str().unwrap(), "--interface", "lo", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("Operation not permitted"), "{err}");
    assert!(err.contains("CAP_NET_RAW") && err.contains("setcap cap_net_raw,cap_net_admin=eip"), "{err}");
    assert!(!err.contains("serving on"), "{err}");
}

/// Runs vmsentry and fails the test (killing it) if it takes over 10 s.
fn vmsentry_bounded(args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_vmsentry"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(10)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("vmsentry {args:?} hung");
        }
    }
}

fn mkfifo(p: &Path) {
    assert!(Command::new("mkfifo").arg(p).status().unwrap().success());
}

#[test]
fn rules_key_and_secret_files_that_are_not_small_regular_files_are_refused() {
    let check = |dir: &Path| {
        let out = vmsentry_bounded(&["check", "--rules", dir.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
        stderr_of(&out)
    };
    // The key: a FIFO (hung `check` before), /dev/zero (read until out of memory), a directory.
    let r = rules_dir();
    let key = r.path().join("cluster.key");
    std::fs::remove_file(&key).unwrap();
    mkfifo(&key);
    let err = check(r.path());
    assert!(err.contains(":9:12: key file") && err.contains("cluster.key is a FIFO, not a regular file"), "{err}");
    std::fs::remove_file(&key).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &key).unwrap();
    let err = check(r.path());
    assert!(err.contains("cluster.key is a character device, not a regular file"), "{err}");
    std::fs::remove_file(&key).unwrap();
    std::fs::create_dir(&key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = check(r.path());
    assert!(err.contains("cluster.key is a directory, not a file") && !err.contains("mode"), "{err}");
    std::fs::remove_dir(&key).unwrap();
    std::fs::write(&key, vec![b'k'; 70_000]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = check(r.path());
    assert!(err.contains("cluster.key is larger than 65536 bytes"), "{err}");

    // The rules file itself.
    let r = rules_dir();
    let toml = r.path().join("vmsentry.toml");
    std::fs::remove_file(&toml).unwrap();
    mkfifo(&toml);
    assert!(check(r.path()).contains("vmsentry.toml: cannot read the rules file: is a FIFO, not a regular file"));
    std::fs::remove_file(&toml).unwrap();
    std::fs::File::create(&toml).unwrap().set_len(17 << 20).unwrap();
    assert!(check(r.path()).contains("cannot read the rules file: is larger than 16777216 bytes"));

    // A webhook's secret.
    let r = rules_dir();
    let text = std::fs::read_to_string(r.path().join("vmsentry.toml")).unwrap();
    std::fs::write(
        r.path().join("vmsentry.toml"),
        format!("{text}\n[backend.webhook]\nurl = \"http://127.0.0.1:9/\"\nsecret_file = \"/dev/zero\"\n"),
    )
    .unwrap();
    let err = check(r.path());
    assert!(err.contains("secret file /dev/zero is a character device, not a regular file"), "{err}");
}

#[test]
fn sign_and_authorize_apply_the_rules_own_checks() {
    let r = rules_dir();
    let key = r.path().join("cluster.key");
    let k = key.to_str().unwrap();
    let sign = |cluster: &str, id: &str, mac: &str| {
        vmsentry(&["sign", "--key-file", k, "--cluster", cluster, "--id", id, "--mac", mac])
    };
    let auth = |vm: &str, to: &str, ttl: &str| {
        vmsentry(&[
            "authorize",
            "--key-file",
            k,
            "--vm",
            vm,
            "--to",
            to,
            "--ttl",
            ttl,
            "--nonce",
            "00112233445566778899",
        ])
    };
    for (out, says) in [
        (
            sign("lab", "hv 1", "52:54:00:aa:00:01"),
            "--id: hypervisor id must be non-empty, without spaces or NUL bytes",
        ),
        (
            sign("", "compute-1", "52:54:00:aa:00:01"),
            "--cluster: cluster.name must be a non-empty name without NUL bytes",
        ),
        (
            sign("lab", "compute-1", "01:00:5e:00:00:01"),
            "--mac: hypervisor MAC 01:00:5e:00:00:01 must be a unicast address",
        ),
        (sign("lab", "compute-1", "00:00:00:00:00:00"), "must be a unicast address"),
        (auth("ff:ff:ff:ff:ff:ff", "compute-3", "10m"), "--vm: VM MAC ff:ff:ff:ff:ff:ff must be a unicast address"),
        (auth("fa:16:3e:00:00:01", "compute 3", "10m"), "--to: hypervisor id must be non-empty"),
        (auth("fa:16:3e:00:00:01", "compute-3", "0s"), "--ttl must be from 1s to 3650days"),
        (auth("fa:16:3e:00:00:01", "compute-3", "100years"), "--ttl must be from 1s to 3650days"),
    ] {
        assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
        assert!(out.stdout.is_empty(), "printed a signature or token anyway");
        assert!(stderr_of(&out).contains(says), "{}", stderr_of(&out));
    }
    // What the rules accept, both accept.
    assert!(sign("lab", "compute-1", "52:54:00:aa:00:01").status.success());
    assert!(auth("fa:16:3e:00:00:01", "compute-3", "10m").status.success());
}

#[test]
fn check_warns_about_what_the_rules_name_but_is_missing_and_still_exits_0() {
    let r = rules_dir();
    let text = std::fs::read_to_string(r.path().join("vmsentry.toml")).unwrap();
    std::fs::remove_dir(r.path().join("tokens")).unwrap();
    std::fs::write(
        r.path().join("vmsentry.toml"),
        format!(
            "{text}\n[[ids]]\npath = \"nowhere/eve.json\"\nformat = \"suricata_eve\"\n\
             [[ids]]\npath = \"alerts/fast.log\"\nformat = \"snort_fast\"\n\
             [backend.exec]\nprogram = \"/nonexistent/quarantine-vm\"\n"
        ),
    )
    .unwrap();
    let out = vmsentry(&["check", "--rules", r.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    let d = r.path().display();
    for w in [
        "warning: backend.exec.program `/nonexistent/quarantine-vm` does not exist: every exec action will fail".to_string(),
        format!("warning: IDS alert file {d}/nowhere/eve.json: its directory does not exist: replay runs without it, live refuses to start"),
        format!("warning: IDS alert file {d}/alerts/fast.log not found: replay runs without it, live waits for it to appear"),
        format!("warning: migration.tokens_dir {d}/tokens is not a directory: no move can be authorized"),
    ] {
        assert!(err.lines().any(|l| l == w), "missing `{w}` in:\n{err}");
    }
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK: cluster `lab`"));
    // A bare program name is looked up on PATH, as exec runs it.
    let text = std::fs::read_to_string(r.path().join("vmsentry.toml")).unwrap();
    std::fs::write(r.path().join("vmsentry.toml"), text.replace("/nonexistent/quarantine-vm", "true")).unwrap();
    assert!(!stderr_of(&vmsentry(&["check", "--rules", r.path().to_str().unwrap()])).contains("backend.exec"));
}

#[test]
fn check_says_how_to_fix_the_key_mode() {
    let r = rules_dir();
    let key = r.path().join("cluster.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = vmsentry(&["check", "--rules", r.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains(&format!("(mode 644); run `chmod 600 {}`", key.display())), "{}", stderr_of(&out));
}
