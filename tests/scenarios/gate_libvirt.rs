//! The migration gate with real libvirt: two libvirtd in their own namespaces migrate a TCG domain, and node b's `qemu` hook is `vmsentry gate`.
//!
//! Needs root, libvirtd, virsh, qemu-system-x86_64, tcpdump and iproute2;
//! skipped without them unless `CI=true`, where it must run. The lab
//! (scripts/gate-lab.sh) gives each daemon its own /etc/libvirt, so the
//! machine's /etc/libvirt/hooks is never touched; the daemons, their QEMUs
//! and the namespaces go away when the test ends, passing or not.

use super::*;
use std::process::Stdio;
use vmsentry::gate::record::{GateReason, GateRecord};

const VM_MAC: &str = "52:54:00:12:34:56";
const A: &str = "qemu+tcp://10.77.0.1/system";
const B: &str = "qemu+tcp://10.77.0.2/system";

fn usable() -> bool {
    root_with_tools(
        "the libvirt gate test",
        &["libvirtd", "virsh", "qemu-system-x86_64", "tcpdump", "ip", "nsenter", "unshare"],
    )
}

/// The two daemons; `Drop` stops them and removes the namespaces.
struct Lab {
    dir: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/gate-lab.sh")).arg("down").arg(self.dir.path()).status();
    }
}

impl Lab {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// `virsh -c URI ARGS` from node a's network namespace.
    fn virsh(&self, uri: &str, args: &[&str]) -> Output {
        Command::new("ip").args(["netns", "exec", "gate-a", "virsh", "-c", uri]).args(args).output().unwrap()
    }

    fn ok(&self, uri: &str, args: &[&str]) -> String {
        let o = self.virsh(uri, args);
        assert!(o.status.success(), "virsh {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    fn state(&self, uri: &str) -> String {
        let o = self.virsh(uri, &["domstate", "gate-vm"]);
        if o.status.success() {
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        } else {
            "absent".into()
        }
    }

    /// This host's identity for node b's gate, and whether tokens are needed.
    fn gate_as(&self, host: &str) {
        std::fs::write(
            self.path("gate.toml"),
            format!("rules = \"rules\"\nhypervisor = \"{host}\"\ndecisions = \"decisions.jsonl\"\nused_tokens = \"used-tokens\"\n"),
        )
        .unwrap();
    }

    fn token(&self, vm: &str, to: &str, ttl: &str) -> String {
        let key = self.path("rules/cluster.key");
        let out = vmsentry(&["authorize", "--key-file", key.to_str().unwrap(), "--vm", vm, "--to", to, "--ttl", ttl]);
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Puts a token in the domain's metadata on node a, the documented way.
    fn set_token(&self, token: &str) {
        let xml = format!("<authorization>{token}</authorization>");
        self.ok(A, &["metadata", "gate-vm", "urn:vmsentry:1", "--key", "vms", "--set", &xml]);
    }

    fn decisions(&self) -> Vec<GateRecord> {
        let text = std::fs::read_to_string(self.path("decisions.jsonl")).unwrap_or_default();
        text.lines().map(|l| GateRecord::parse(l).unwrap().unwrap()).collect()
    }

    /// Migrates a→b (live) with a capture on b's end of the link running;
    /// returns virsh's output and the packets seen to the migration ports
    /// (49152-49215, libvirtd's own connections aside) and to libvirtd (16509).
    fn migrate(&self, tag: &str) -> (Output, usize, usize) {
        let pcap = self.path(&format!("{tag}.pcap"));
        let mut dump = Command::new("ip")
            .args(["netns", "exec", "gate-b", "tcpdump", "--immediate-mode", "-i", "gate-b0", "-U", "-n", "-w"])
            .arg(&pcap)
            .arg("tcp")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // tcpdump says "listening on" once it captures.
        let mut err = dump.stderr.take().unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("listening on") {
            let n = std::io::Read::read(&mut err, &mut buf).unwrap();
            assert!(n > 0, "tcpdump did not start: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
        let out = self.virsh(A, &["migrate", "--live", "gate-vm", B, "tcp://10.77.0.2"]);
        std::thread::sleep(std::time::Duration::from_millis(1200));
        let _ = Command::new("kill").args(["-INT", &dump.id().to_string()]).status();
        let _ = dump.wait();
        let count = |filter: &str| {
            let o = Command::new("tcpdump").args(["-n", "-r"]).arg(&pcap).arg(filter).output().unwrap();
            String::from_utf8_lossy(&o.stdout).lines().count()
        };
        // A libvirt RPC connection whose ephemeral port falls in the range
        // is not a stream (it made this test fail once: 26 "stream" packets).
        (out, count("tcp portrange 49152-49215 and not tcp port 16509"), count("tcp port 16509"))
    }

    /// Moves the domain back to a (node a has no gate).
    fn back(&self) {
        self.ok(B, &["migrate", "--live", "gate-vm", A, "tcp://10.77.0.1"]);
        assert_eq!(self.state(A), "running");
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn libvirt_runs_the_gate_and_refuses_unsigned_or_unauthorized_migrations_before_any_stream() {
    if !usable() {
        eprintln!("skipped: needs root and libvirt (set CI=true to require it)");
        return;
    }
    let lab = Lab { dir: tempfile::tempdir().unwrap() };
    // Rules for node b's gate: the shipped demo cluster (compute-2 signed),
    // with tokens required.
    let rules = rules_dir();
    std::fs::create_dir_all(lab.path("rules")).unwrap();
    for f in ["vmsentry.toml", "cluster.key"] {
        std::fs::copy(rules.path().join(f), lab.path("rules").join(f)).unwrap();
    }
    std::fs::set_permissions(lab.path("rules/cluster.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let toml = std::fs::read_to_string(lab.path("rules/vmsentry.toml")).unwrap();
    let toml = toml.replace("tokens_dir = \"tokens\"\nrequire_authorization = false", "require_authorization = true");
    assert!(toml.contains("require_authorization = true"));
    std::fs::write(lab.path("rules/vmsentry.toml"), toml).unwrap();
    lab.gate_as("rogue-9");
    // Node b's hook, as the README installs it.
    // (It also notes each call, to show which ones libvirt makes.)
    let hook = format!(
        "#!/bin/sh\necho \"$*\" >> {}\nexec {} gate --config {} -- \"$@\"\n",
        lab.path("hook-calls.log").display(),
        env!("CARGO_BIN_EXE_vmsentry"),
        lab.path("gate.toml").display()
    );
    std::fs::write(lab.path("b.hook"), hook).unwrap();
    let up = Command::new(root().join("scripts/gate-lab.sh")).arg("up").arg(lab.dir.path()).output().unwrap();
    assert!(up.status.success(), "lab: {}", String::from_utf8_lossy(&up.stderr));

    let dom = "<domain type='qemu'><name>gate-vm</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
        <os><type arch='x86_64' machine='pc'>hvm</type></os><devices><emulator>/usr/bin/qemu-system-x86_64</emulator>\
        <interface type='user'><mac address='52:54:00:12:34:56'/><model type='e1000'/></interface>\
        <video><model type='none'/></video><memballoon model='none'/></devices></domain>";
    std::fs::write(lab.path("dom.xml"), dom).unwrap();
    lab.ok(A, &["define", lab.path("dom.xml").to_str().unwrap()]);
    lab.ok(A, &["start", "gate-vm"]);
    // libvirt calls b's hook for a domain started there: it passes untouched.
    let other = dom.replace("gate-vm", "gate-other").replace("12:34:56", "12:34:57");
    std::fs::write(lab.path("other.xml"), other).unwrap();
    lab.ok(B, &["define", lab.path("other.xml").to_str().unwrap()]);
    lab.ok(B, &["start", "gate-other"]);
    assert_eq!(lab.ok(B, &["domstate", "gate-other"]), "running");
    lab.ok(B, &["destroy", "gate-other"]);
    assert!(lab.decisions().is_empty(), "start/stop hooks are not decided or recorded");
    let calls = std::fs::read_to_string(lab.path("hook-calls.log")).unwrap();
    for c in ["gate-other prepare begin -", "gate-other start begin -", "gate-other started begin -"] {
        assert!(calls.lines().any(|l| l == c), "libvirt called the hook with `{c}`: {calls}");
    }

    // 1. To a host that is not a signed hypervisor: refused before any stream.
    let (out, stream, rpc) = lab.migrate("unsigned");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unsigned_host"), "{}", stderr(&out));
    assert_eq!(stream, 0, "no migration stream may reach the refusing host");
    assert!(rpc > 0, "the capture saw libvirt's own connection ({stream}, {rpc}; {})", {
        let o = Command::new("tcpdump").args(["-n", "-r"]).arg(lab.path("unsigned.pcap")).output().unwrap();
        format!("{} {}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    });
    assert_eq!(lab.state(A), "running");
    assert_eq!(lab.state(B), "absent");
    // Registered, but its signature was not made with the cluster key.
    lab.gate_as("compute-9");
    let (out, stream, _) = lab.migrate("invalid");
    assert!(stderr(&out).contains("unsigned_host"), "{}", stderr(&out));
    assert_eq!(stream, 0);
    assert_eq!(lab.state(A), "running");

    // 2. Signed host, but tokens required: none, expired, other VM, other host.
    lab.gate_as("compute-2");
    let cases = [
        (None, "no_token"),
        (Some(lab.token(VM_MAC, "compute-2", "1s")), "token_expired"),
        (Some(lab.token("52:54:00:99:99:99", "compute-2", "10m")), "token_other_vm"),
        (Some(lab.token(VM_MAC, "compute-3", "10m")), "token_other_host"),
    ];
    std::thread::sleep(std::time::Duration::from_millis(2100)); // the 1 s token expires
    for (i, (token, reason)) in cases.iter().enumerate() {
        if let Some(t) = token {
            lab.set_token(t);
        }
        let (out, stream, _) = lab.migrate(&format!("refused-{i}"));
        assert!(!out.status.success(), "{reason}");
        assert!(stderr(&out).contains(reason), "{reason}: {}", stderr(&out));
        assert_eq!(stream, 0, "{reason}: no migration stream");
        assert_eq!(lab.state(A), "running", "{reason}");
    }

    // 3. A valid token: the migration goes through (and the capture sees its stream).
    let good = lab.token(VM_MAC, "compute-2", "10m");
    lab.set_token(&good);
    let (out, stream, _) = lab.migrate("authorized");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stream > 10, "the migration stream is on the wire ({stream} packets)");
    assert_eq!(lab.state(B), "running");
    // The token went along in the metadata; back to a, then the same token again.
    lab.back();
    let (out, stream, _) = lab.migrate("replayed");
    assert!(stderr(&out).contains("token_replayed"), "{}", stderr(&out));
    assert_eq!(stream, 0);
    assert_eq!(lab.state(A), "running");

    // libvirt asked b's gate once per migration attempt.
    let calls = std::fs::read_to_string(lab.path("hook-calls.log")).unwrap();
    assert_eq!(calls.lines().filter(|l| *l == "gate-vm migrate begin -").count(), 8, "{calls}");
    let got: Vec<(bool, GateReason, String)> =
        lab.decisions().into_iter().map(|d| (d.allowed, d.reason, d.host)).collect();
    let want = [
        (false, GateReason::UnsignedHost, "rogue-9"),
        (false, GateReason::UnsignedHost, "compute-9"),
        (false, GateReason::NoToken, "compute-2"),
        (false, GateReason::TokenExpired, "compute-2"),
        (false, GateReason::TokenOtherVm, "compute-2"),
        (false, GateReason::TokenOtherHost, "compute-2"),
        (true, GateReason::Authorized, "compute-2"),
        (false, GateReason::TokenReplayed, "compute-2"),
    ];
    assert_eq!(got, want.map(|(a, r, h)| (a, r, h.to_string())));
    let d = lab.decisions();
    assert!(d.iter().all(|r| r.domain == "gate-vm" && r.vms == vec![VM_MAC.parse().unwrap()]));
    let nonce = good.split("nonce=").nth(1).unwrap().split(' ').next().unwrap();
    assert_eq!(d[6].nonce.as_deref(), Some(nonce));
    assert_eq!(std::fs::read_to_string(lab.path("used-tokens")).unwrap(), format!("{nonce}\n"));
    for r in &d {
        eprintln!("gate decision: {} {} in {} us", r.allowed, r.reason.as_str(), r.elapsed_us);
    }
}
