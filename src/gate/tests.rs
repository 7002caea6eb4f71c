use super::*;
use crate::decode::Mac;

/// The rules loader the binary passes.
const RULES: LoadRules = crate::config::Rules::load_for_gate;
use crate::trust::ClusterKey;
use std::os::unix::fs::PermissionsExt;

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
const VM: &str = "52:54:00:12:34:56";

struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    /// A rules directory with compute-1 and compute-2 signed and compute-3
    /// registered with a bad signature, and a gate.toml for `host`.
    fn new(host: &str, require_authorization: bool, extra: &str) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules");
        std::fs::create_dir(&rules).unwrap();
        let key_path = rules.join("cluster.key");
        std::fs::write(&key_path, KEY).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let key = ClusterKey::from_bytes(KEY).unwrap();
        let mut toml = format!(
            "[cluster]\nname = \"lab\"\nkey_file = \"cluster.key\"\n\n[migration]\nrequire_authorization = {require_authorization}\n\n"
        );
        for (id, mac, good) in [
            ("compute-1", "52:54:00:aa:00:01", true),
            ("compute-2", "52:54:00:aa:00:02", true),
            ("compute-3", "52:54:00:aa:00:03", false),
        ] {
            let m: Mac = mac.parse().unwrap();
            let sig = if good { key.sign("lab", id, m) } else { key.sign("lab", "someone-else", m) };
            toml += &format!("[[hypervisor]]\nid = \"{id}\"\nmacs = [\"{mac}\"]\nsignature = \"{sig}\"\n\n");
        }
        std::fs::write(rules.join("vmsentry.toml"), toml).unwrap();
        std::fs::write(
            dir.path().join("gate.toml"),
            format!("rules = \"rules\"\nhypervisor = \"{host}\"\ndecisions = \"decisions.jsonl\"\nused_tokens = \"used-tokens\"\n{extra}"),
        )
        .unwrap();
        Lab { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("gate.toml")
    }

    fn token(&self, vm: &str, to: &str, expires: i64, nonce: &str) -> String {
        Token::sign(&ClusterKey::from_bytes(KEY).unwrap(), vm.parse().unwrap(), to, expires, nonce).to_string()
    }

    fn begin(&self, xml: String) -> Answer {
        run(&self.config(), &call("migrate", "begin"), std::io::Cursor::new(xml.into_bytes()), RULES)
    }

    fn decisions(&self) -> Vec<GateRecord> {
        let text = std::fs::read_to_string(self.dir.path().join("decisions.jsonl")).unwrap_or_default();
        text.lines().map(|l| GateRecord::parse(l).unwrap().unwrap()).collect()
    }
}

fn call(op: &str, sub: &str) -> Call {
    Call { domain: "gate-vm".into(), operation: op.into(), sub_operation: sub.into(), extra: "-".into() }
}

fn xml(token: Option<&str>) -> String {
    let meta = token
        .map(|t| {
            format!("<metadata><vms:authorization xmlns:vms=\"urn:vmsentry:1\">{t}</vms:authorization></metadata>")
        })
        .unwrap_or_default();
    format!(
        "<domain type='qemu'><name>gate-vm</name><uuid>6f1e7a52-3c1d-4a4e-9a43-5b0c4f6d2a11</uuid>{meta}\
         <devices><interface type='user'><mac address='{VM}'/></interface></devices></domain>"
    )
}

fn now_s() -> i64 {
    PacketTime::now().as_micros() / 1_000_000
}

fn reason(a: &Answer) -> GateReason {
    a.record.as_ref().unwrap().reason
}

#[test]
fn a_signed_host_with_a_valid_token_allows_once_and_records_it() {
    let lab = Lab::new("compute-2", true, "");
    let t = lab.token(VM, "compute-2", now_s() + 600, "00112233aabbccdd");
    let a = lab.begin(xml(Some(&t)));
    assert_eq!((a.exit, reason(&a)), (0, GateReason::Authorized));
    let again = lab.begin(xml(Some(&t)));
    assert_eq!((again.exit, reason(&again)), (EXIT_REFUSED, GateReason::TokenReplayed));
    let d = lab.decisions();
    assert_eq!(d.len(), 2);
    assert!(d[0].allowed && !d[1].allowed);
    assert_eq!(d[0].vms, vec![VM.parse::<Mac>().unwrap()]);
    assert_eq!(d[0].host, "compute-2");
    assert_eq!(d[0].domain, "gate-vm");
    assert_eq!(d[0].uuid.as_deref(), Some("6f1e7a52-3c1d-4a4e-9a43-5b0c4f6d2a11"));
    assert_eq!(d[0].nonce.as_deref(), Some("00112233aabbccdd"));
    assert_eq!(std::fs::read_to_string(lab.dir.path().join("used-tokens")).unwrap(), "00112233aabbccdd\n");
}

#[test]
fn every_bad_token_and_unsigned_host_is_refused_with_its_reason() {
    let lab = Lab::new("compute-2", true, "");
    let now = now_s();
    let cases = [
        (None, GateReason::NoToken),
        (Some("hello".to_string()), GateReason::TokenMalformed),
        (Some(lab.token(VM, "compute-2", now - 1, "1111111111111111")), GateReason::TokenExpired),
        (Some(lab.token("52:54:00:99:99:99", "compute-2", now + 600, "2222222222222222")), GateReason::TokenOtherVm),
        (Some(lab.token(VM, "compute-1", now + 600, "3333333333333333")), GateReason::TokenOtherHost),
        (
            Some(lab.token(VM, "compute-1", now + 600, "4444444444444444").replace("to=compute-1", "to=compute-2")),
            GateReason::TokenForged,
        ),
    ];
    for (tok, want) in cases {
        let a = lab.begin(xml(tok.as_deref()));
        assert_eq!((a.exit, reason(&a)), (EXIT_REFUSED, want), "{tok:?}");
    }
    // None of the refused tokens was used up.
    assert!(!lab.dir.path().join("used-tokens").exists());
    // A host whose signature does not verify, and one not in the registry.
    for host in ["compute-3", "rogue-9"] {
        let lab = Lab::new(host, true, "");
        let t = lab.token(VM, host, now + 600, "5555555555555555");
        let a = lab.begin(xml(Some(&t)));
        assert_eq!((a.exit, reason(&a)), (EXIT_REFUSED, GateReason::UnsignedHost), "{host}");
    }
    // Without require_authorization a signed host needs no token.
    let open = Lab::new("compute-1", false, "");
    let a = open.begin(xml(None));
    assert_eq!((a.exit, reason(&a)), (0, GateReason::Signed));
}

#[test]
fn other_calls_pass_untouched_without_any_config() {
    let missing = Path::new("/nonexistent/gate.toml");
    for (op, sub) in
        [("prepare", "begin"), ("start", "begin"), ("started", "begin"), ("release", "end"), ("migrate", "end")]
    {
        let a = run(missing, &call(op, sub), std::io::Cursor::new(xml(None).into_bytes()), RULES);
        assert_eq!(a, Answer { exit: 0, record: None }, "{op} {sub}");
    }
    // But a migration with no usable config is refused.
    let a = run(missing, &call("migrate", "begin"), std::io::Cursor::new(xml(None).into_bytes()), RULES);
    assert_eq!(a, Answer { exit: EXIT_BAD_CONFIG, record: None });
}

/// Input that never ends, as a stuck pipe would.
struct Stuck;
impl Read for Stuck {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        std::thread::sleep(Duration::from_secs(3600));
        Ok(0)
    }
}

#[test]
fn a_stuck_input_times_out_and_refuses_even_when_failing_open() {
    let lab = Lab::new("compute-1", false, "timeout_ms = 200\nfail_closed = false\n");
    let t0 = Instant::now();
    let a = run(&lab.config(), &call("migrate", "begin"), Stuck, RULES);
    let took = t0.elapsed();
    assert_eq!((a.exit, reason(&a)), (EXIT_REFUSED, GateReason::Timeout));
    assert!(took < Duration::from_millis(1000), "{took:?}");
    assert_eq!(lab.decisions()[0].reason, GateReason::Timeout);
}

#[test]
fn bad_xml_is_refused_and_only_local_errors_fail_open() {
    let closed = Lab::new("compute-1", false, "");
    let a = closed.begin("<domain><name>x</domain>".into());
    assert_eq!((a.exit, reason(&a)), (EXIT_REFUSED, GateReason::BadXml));
    assert!(a.record.unwrap().detail.unwrap().contains("does not parse"));
    // What the source sends is judged on its merits even when failing open.
    let open = Lab::new(
        "compute-1",
        true,
        "fail_closed = false
max_xml_bytes = 1024
",
    );
    let t = open.token(VM, "compute-1", now_s() + 600, "6666666666666666");
    let two = xml(Some(&t))
        .replace("</metadata>", "<v:authorization xmlns:v=\"urn:vmsentry:1\">x</v:authorization></metadata>");
    let huge = xml(Some(&t)).replace("</domain>", &format!("<description>{}</description></domain>", "x".repeat(2000)));
    let mut not_utf8 = xml(Some(&t)).into_bytes();
    not_utf8.insert(10, 0xff);
    for (what, input) in [
        ("not XML", b"<domain><name>x</domain>".to_vec()),
        ("two tokens", two.clone().into_bytes()),
        ("too large", huge.into_bytes()),
        ("not UTF-8", not_utf8),
        ("bad MAC", xml(Some(&t)).replace(VM, "52:54:00:12:34").into_bytes()),
    ] {
        let a = run(&open.config(), &call("migrate", "begin"), std::io::Cursor::new(input), RULES);
        assert_eq!((a.exit, reason(&a)), (EXIT_REFUSED, GateReason::BadXml), "{what}");
    }
    assert!(!open.dir.path().join("used-tokens").exists());
    // On an unsigned host nothing in the XML matters: the host is judged first.
    for host in ["compute-3", "rogue-9"] {
        let lab = Lab::new(
            host,
            false,
            "fail_closed = false
max_xml_bytes = 1024
",
        );
        for input in [two.clone(), "<domain>".to_string(), "x".repeat(5000)] {
            let a = lab.begin(input);
            assert_eq!((a.exit, reason(&a)), (EXIT_REFUSED, GateReason::UnsignedHost), "{host}");
        }
    }
    // A max_xml_bytes too small to hold any domain is a config error, not a gate that always fails.
    for n in ["0", "100", "1023"] {
        let lab = Lab::new(
            "compute-1",
            false,
            &format!(
                "fail_closed = false
max_xml_bytes = {n}
"
            ),
        );
        assert_eq!(lab.begin(xml(None)), Answer { exit: EXIT_BAD_CONFIG, record: None }, "{n}");
        let e = GateConfig::load(&lab.config()).unwrap_err().to_string();
        assert!(e.contains("max_xml_bytes must be at least 1024"), "{e}");
    }
    // Local failures: an unusable used-token store ...
    for (extra, want, exit) in
        [("", GateReason::Error, EXIT_REFUSED), ("fail_closed = false\n", GateReason::FailOpen, 0)]
    {
        let lab = Lab::new("compute-2", true, extra);
        std::fs::create_dir(lab.dir.path().join("used-tokens")).unwrap();
        let t = lab.token(VM, "compute-2", now_s() + 600, "7777777777777777");
        let a = lab.begin(xml(Some(&t)));
        assert_eq!((a.exit, reason(&a)), (exit, want), "{extra:?}");
    }
    // ... and unreadable rules.
    let lab = Lab::new("compute-1", false, "fail_closed = false\n");
    std::fs::write(lab.dir.path().join("rules/vmsentry.toml"), "[cluster\n").unwrap();
    let a = lab.begin(xml(None));
    assert_eq!((a.exit, reason(&a)), (0, GateReason::FailOpen));
    // A decision that cannot be recorded is refused (fail closed).
    let unrecorded = Lab::new("compute-1", false, "");
    std::fs::create_dir(unrecorded.dir.path().join("decisions.jsonl")).unwrap();
    let a = unrecorded.begin(xml(None));
    assert_eq!((a.exit, reason(&a)), (EXIT_REFUSED, GateReason::Error));
    // A config with an unknown key names the place.
    let bad = Lab::new("compute-1", false, "colour = \"blue\"\n");
    let e = GateConfig::load(&bad.config()).unwrap_err().to_string();
    assert!(e.contains("gate.toml: 5:1: unknown field `colour`"), "{e}");
}

#[test]
fn every_record_is_signed_with_the_cluster_key() {
    let lab = Lab::new("compute-2", true, "");
    let key = ClusterKey::from_bytes(KEY).unwrap();
    let t = lab.token(VM, "compute-2", now_s() + 600, "8888888888888888");
    lab.begin(xml(Some(&t)));
    lab.begin(xml(None));
    let hosts = vec!["compute-2".to_string()];
    let text = std::fs::read_to_string(lab.dir.path().join("decisions.jsonl")).unwrap();
    let got: Vec<GateReason> =
        text.lines().map(|l| GateRecord::parse_verified(l, &key, &hosts).unwrap().unwrap().reason).collect();
    assert_eq!(got, vec![GateReason::Authorized, GateReason::NoToken]);
}

#[test]
fn concurrent_gates_with_one_token_let_exactly_one_through() {
    let lab = std::sync::Arc::new(Lab::new("compute-2", true, ""));
    let t = lab.token(VM, "compute-2", now_s() + 600, "9999999999999999");
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (lab, t, barrier) = (lab.clone(), t.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                reason(&lab.begin(xml(Some(&t))))
            })
        })
        .collect();
    let mut got: Vec<GateReason> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    got.sort_by_key(|r| r.as_str());
    let mut want = vec![GateReason::Authorized];
    want.extend([GateReason::TokenReplayed; 7]);
    assert_eq!(got, want);
    assert_eq!(std::fs::read_to_string(lab.dir.path().join("used-tokens")).unwrap(), "9999999999999999\n");
    // The store itself, raced by threads on one nonce: one `true`.
    let path = lab.dir.path().join("raced");
    let wins: usize = (0..8)
        .map(|_| {
            let p = path.clone();
            std::thread::spawn(move || {
                consume_nonce(&p, "abcdefabcdefabcd", Instant::now() + Duration::from_secs(5)).unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| usize::from(h.join().unwrap()))
        .sum();
    assert_eq!(wins, 1);
}
