use super::*;
use crate::action::ActionKind;
use crate::detect::Level;
use std::os::unix::fs::PermissionsExt;

/// A rules dir with a good key; returns (dir guard, dir path).
fn dir_with_key() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let k = d.path().join("cluster.key");
    std::fs::write(&k, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
    d
}

const HEAD: &str = "[cluster]\nname = \"lab\"\nkey_file = \"cluster.key\"\n";

fn load(text: &str) -> Result<Rules, String> {
    let d = dir_with_key();
    Rules::from_str_in(d.path(), Path::new("r/vmsentry.toml"), text).map_err(|e| e.to_string())
}

#[test]
fn minimal_rules_take_documented_defaults() {
    let r = load(HEAD).unwrap();
    assert_eq!(r.cluster, "lab");
    assert_eq!(r.window_len_ms, 1000);
    assert_eq!(
        r.thresholds,
        Thresholds {
            medium_bps: 100_000_000,
            high_bps: 500_000_000,
            medium_pps: 50_000,
            high_pps: 200_000,
            clear_windows: 3
        }
    );
    assert_eq!(
        r.rtt,
        RttRules {
            enabled: true,
            peak_ms: 50.0,
            peak_factor: None,
            max_peaks: 5,
            level: Level::Medium,
            probe_timeout_ms: 10_000,
            flow_timeout_s: 120
        }
    );
    assert_eq!(
        (r.limits.rtt_flows, r.limits.rtt_echo_probes, r.limits.rtt_samples_per_window),
        (65_536, 65_536, 100_000)
    );
    assert_eq!(r.volume, VolumeRules { factor: 3.0, horizon_s: 60 });
    assert_eq!(r.policy.medium, PolicyRule { signed: ActionKind::Alert, unsigned: ActionKind::Quarantine });
    assert_eq!(r.policy.high, PolicyRule { signed: ActionKind::Migrate, unsigned: ActionKind::Quarantine });
    assert_eq!(r.limits.max_macs, 65_536);
    assert_eq!(r.limits.decode_bytes, 320);
}

#[test]
fn shipped_rules_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let text = std::fs::read_to_string(dir.join(RULES_FILE)).unwrap();
    // The shipped key's mode depends on the checkout; validate against a copy.
    let d = dir_with_key();
    std::fs::copy(dir.join("cluster.key"), d.path().join("cluster.key")).unwrap();
    std::fs::set_permissions(d.path().join("cluster.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let r = Rules::from_str_in(d.path(), &dir.join(RULES_FILE), &text).unwrap();
    assert_eq!(r.hypervisors.len(), 5);
    assert_eq!(r.vms.len(), 19);
    assert_eq!(r.ids.len(), 1);
    assert_eq!((r.ids[0].format, r.ids[0].min_severity, r.ids[0].cooldown_s), (crate::ids::Format::SuricataEve, 2, 60));
    assert_eq!(r.ids[0].path, d.path().join("alerts/eve.json"));
    let mtd1 = r.vms.iter().find(|v| v.name == "mtd-1").unwrap();
    assert_eq!((mtd1.ips.clone(), mtd1.flavor.as_deref()), (vec!["10.1.0.11".parse().unwrap()], Some("lab.tiny")));
}

#[test]
fn inverted_thresholds_point_at_the_lower_value() {
    let e = load(&format!("{HEAD}[thresholds]\nmedium_bps = 500_000_000\nhigh_bps = 100_000_000\n")).unwrap_err();
    assert_eq!(e, "r/vmsentry.toml:5:14: medium_bps must be below high_bps (got 500000000 >= 100000000)");
}

#[test]
fn negative_threshold_is_refused() {
    let e = load(&format!("{HEAD}[thresholds]\nmedium_pps = -5\n")).unwrap_err();
    assert!(e.starts_with("r/vmsentry.toml:5:14: "), "{e}");
    assert!(e.contains("-5"), "{e}");
}

#[test]
fn unknown_key_is_refused_with_its_place() {
    let e = load(&format!("{HEAD}[window]\nlenght_ms = 500\n")).unwrap_err();
    assert!(e.starts_with("r/vmsentry.toml:5:1: unknown field `lenght_ms`, expected `length_ms`"), "{e}");
    let e = load(&format!("{HEAD}color = \"red\"\n")).unwrap_err();
    assert!(e.starts_with("r/vmsentry.toml:4:1: unknown field `color`"), "{e}");
}

#[test]
fn bad_mac_is_refused() {
    let e = load(&format!("{HEAD}[[vm]]\nname = \"a\"\nmac = \"fa:16:3e:00:00\"\n")).unwrap_err();
    assert!(e.starts_with("r/vmsentry.toml:6:7: invalid MAC address `fa:16:3e:00:00`"), "{e}");
    let e = load(&format!("{HEAD}[[vm]]\nname = \"a\"\nmac = \"ff:ff:ff:ff:ff:ff\"\n")).unwrap_err();
    assert_eq!(e, "r/vmsentry.toml:6:7: VM MAC ff:ff:ff:ff:ff:ff must be a unicast address");
}

#[test]
fn bad_level_name_is_refused() {
    let e = load(&format!("{HEAD}[rtt]\nlevel = \"SEVERE\"\n")).unwrap_err();
    assert!(
        e.starts_with("r/vmsentry.toml:5:9: unknown variant `SEVERE`, expected one of `LOW`, `MEDIUM`, `HIGH`"),
        "{e}"
    );
    let e = load(&format!("{HEAD}[policy]\nLOW = {{ signed = \"alert\", unsigned = \"alert\" }}\n")).unwrap_err();
    assert!(e.starts_with("r/vmsentry.toml:5:1: unknown field `LOW`, expected `MEDIUM` or `HIGH`"), "{e}");
    let e = load(&format!("{HEAD}[policy]\nHIGH = {{ signed = \"explode\", unsigned = \"alert\" }}\n")).unwrap_err();
    assert!(e.contains("unknown variant `explode`, expected one of `alert`, `quarantine`, `migrate`"), "{e}");
}

#[test]
fn unknown_hypervisor_reference_is_refused() {
    let e =
        load(&format!("{HEAD}[[vm]]\nname = \"a\"\nmac = \"fa:16:3e:00:00:01\"\nhypervisor = \"nope\"\n")).unwrap_err();
    assert_eq!(e, "r/vmsentry.toml:7:14: no [[hypervisor]] has id `nope`");
}

#[test]
fn duplicate_vm_mac_is_refused() {
    let vm = "[[vm]]\nname = \"a\"\nmac = \"fa:16:3e:00:00:01\"\n";
    let e = load(&format!("{HEAD}{vm}[[vm]]\nname = \"b\"\nmac = \"FA:16:3E:00:00:01\"\n")).unwrap_err();
    assert_eq!(e, "r/vmsentry.toml:9:7: VM MAC fa:16:3e:00:00:01 is listed twice");
}

#[test]
fn malformed_signature_is_refused() {
    let e = load(&format!("{HEAD}[[hypervisor]]\nid = \"h\"\nmacs = [\"52:54:00:aa:00:01\"]\nsignature = \"ABC\"\n"))
        .unwrap_err();
    assert_eq!(e, "r/vmsentry.toml:7:13: signature must be 64 lowercase hex digits (see `vmsentry sign`)");
}

#[test]
fn syntax_error_has_a_place() {
    let e = load(&format!("{HEAD}[window\n")).unwrap_err();
    assert!(e.starts_with("r/vmsentry.toml:4:"), "{e}");
}

#[test]
fn missing_weak_or_exposed_key_file_is_refused_at_key_file() {
    let d = tempfile::tempdir().unwrap();
    let p = Path::new("r/vmsentry.toml");
    let e = Rules::from_str_in(d.path(), p, HEAD).unwrap_err().to_string();
    assert!(e.starts_with("r/vmsentry.toml:3:12: cannot read key file"), "{e}");

    let k = d.path().join("cluster.key");
    std::fs::write(&k, "short\n").unwrap();
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
    let e = Rules::from_str_in(d.path(), p, HEAD).unwrap_err().to_string();
    assert!(e.starts_with("r/vmsentry.toml:3:12: key file"), "{e}");
    assert!(e.contains("holds 5 bytes after trimming whitespace; at least 32 are needed"), "{e}");

    std::fs::write(&k, [b'k'; 40]).unwrap();
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = Rules::from_str_in(d.path(), p, HEAD).unwrap_err().to_string();
    assert!(e.contains("is readable by group or others (mode 644); run `chmod 600"), "{e}");
}

#[test]
fn line_col_counts_characters() {
    assert_eq!(line_col("ab\ncd", 0), (1, 1));
    assert_eq!(line_col("ab\ncd", 4), (2, 2));
    assert_eq!(line_col("é\nx", 3), (2, 1));
    assert_eq!(line_col("x", 99), (1, 2));
}

#[test]
fn backend_routes_need_their_section_and_urls_are_checked() {
    let e = load(&format!("{HEAD}[backend]\nquarantine = \"exec\"\n")).unwrap_err();
    assert_eq!(e, "r/vmsentry.toml:5:14: backend `exec` is used but [backend.exec] is missing");
    let e = load(&format!("{HEAD}[backend]\nalert = \"alertmanager\"\n[backend.alertmanager]\nurl = \"ftp://x\"\n"))
        .unwrap_err();
    assert_eq!(e, "r/vmsentry.toml:7:7: alertmanager url must start with http:// or https:// (got `ftp://x`)");
    let e = load(&format!("{HEAD}[backend]\ndefault = \"pigeon\"\n")).unwrap_err();
    assert!(e.starts_with("r/vmsentry.toml:5:11: unknown variant `pigeon`"), "{e}");
    let r =
        load(&format!("{HEAD}[backend]\nquarantine = \"exec\"\n[backend.exec]\nprogram = \"/bin/true\"\n")).unwrap();
    assert_eq!(r.backend.routes.map(BackendName::as_str), ["log", "exec", "log"]);
}

#[test]
fn decode_bytes_below_the_documented_minimum_is_refused() {
    let e = load(&format!("{HEAD}[limits]\ndecode_bytes = 10\n")).unwrap_err();
    assert_eq!(
        e,
        "r/vmsentry.toml:5:16: limits.decode_bytes must be from 64 (an Ethernet, IP and TCP header) to 65536 (got 10)"
    );
    assert!(load(&format!("{HEAD}[limits]\ndecode_bytes = 70000\n")).is_err());
    assert_eq!(load(&format!("{HEAD}[limits]\ndecode_bytes = 64\n")).unwrap().limits.decode_bytes, 64);
}

#[test]
fn migration_ports_out_of_range_get_a_plain_message_at_their_place() {
    let e = load(&format!("{HEAD}[migration]\nports = [16509, 70000]\n")).unwrap_err();
    assert_eq!(
        e,
        "r/vmsentry.toml:5:17: migration.ports: 70000 is not a TCP port (1 to 65535) or a range like \"49152-49215\""
    );
    let e = load(&format!("{HEAD}[migration]\nports = [\"100-70000\"]\n")).unwrap_err();
    assert!(e.starts_with("r/vmsentry.toml:5:10: migration.ports: `100-70000` is not a TCP port"), "{e}");
    let e = load(&format!("{HEAD}[migration]\nports = [0]\n")).unwrap_err();
    assert!(e.contains("0 is not a TCP port"), "{e}");
    let e = load(&format!("{HEAD}[migration]\nports = [1.5]\n")).unwrap_err();
    assert!(e.starts_with("r/vmsentry.toml:5:10: migration.ports: `1.5` is not a TCP port"), "{e}");
    let r = load(&format!("{HEAD}[migration]\nports = [\"49152-49215\", 16509]\n")).unwrap();
    assert_eq!(r.migration.ports, vec![(49152, 49215), (16509, 16509)]);
}

#[test]
fn a_threshold_against_its_default_points_at_the_one_written() {
    let e = load(&format!("{HEAD}[thresholds]\nhigh_bps = 1000\n")).unwrap_err();
    assert_eq!(
        e,
        "r/vmsentry.toml:5:12: medium_bps must be below high_bps (got 100000000 >= 1000); \
         medium_bps is its default, set it too"
    );
    let e = load(&format!("{HEAD}[thresholds]\nmedium_pps = 900000\n")).unwrap_err();
    assert!(e.starts_with("r/vmsentry.toml:5:14: medium_pps must be below high_pps"), "{e}");
    assert!(e.ends_with("high_pps is its default, set it too"), "{e}");
}

#[test]
fn an_address_of_two_hypervisors_is_refused_where_the_second_claims_it() {
    let text = format!(
        "{HEAD}[[hypervisor]]\nid = \"a\"\nips = [\"10.0.0.31\"]\n\
         [[hypervisor]]\nid = \"b\"\nips = [\"10.0.0.32\", \"10.0.0.31\"]\n"
    );
    assert_eq!(load(&text).unwrap_err(), "r/vmsentry.toml:9:21: address 10.0.0.31 is also hypervisor `a`'s");
    // Twice in one hypervisor is the same mistake.
    let text = format!("{HEAD}[[hypervisor]]\nid = \"a\"\nips = [\"10.0.0.31\", \"10.0.0.31\"]\n");
    assert_eq!(load(&text).unwrap_err(), "r/vmsentry.toml:6:21: address 10.0.0.31 is also hypervisor `a`'s");
}

#[test]
fn restart_only_settings_that_a_reload_changes_are_named() {
    let d = dir_with_key();
    let at = |text: &str| Rules::from_str_in(d.path(), Path::new("vmsentry.toml"), text).unwrap();
    let running = RestartOnly::of(&at(HEAD));
    assert_eq!(running.restart_only_changes(&at(HEAD)), Vec::<&str>::new());
    let text = format!("{HEAD}[thresholds]\nmedium_pps = 10\n[backend]\nmax_attempts = 3\n");
    assert_eq!(running.restart_only_changes(&at(&text)), ["[backend]"]);
    let text = format!("{HEAD}[window]\nlength_ms = 500\n[limits]\nbatch_size = 64\n[tunnels]\ngeneve_port = 6082\n");
    assert_eq!(running.restart_only_changes(&at(&text)), ["window.length_ms", "[limits]", "[tunnels]"]);
    // What a reload applies: the new rules with the running ones put back.
    let mut new = at(&format!("{text}[backend]\nmax_attempts = 3\n[thresholds]\nmedium_pps = 10\n"));
    running.keep_running(&mut new);
    assert_eq!(running.restart_only_changes(&new), Vec::<&str>::new());
    assert_eq!(
        (new.window_len_ms, new.limits.batch_size, new.tunnels),
        (at(HEAD).window_len_ms, at(HEAD).limits.batch_size, at(HEAD).tunnels)
    );
    assert_eq!(new.thresholds.medium_pps, 10, "the rest is applied");
}

#[test]
fn require_authorization_without_any_token_source_warns_and_grace_is_bounded() {
    let warns = |m: &str| load(&format!("{HEAD}[migration]\n{m}")).unwrap().warnings();
    let w = warns("require_authorization = true\n");
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("neither migration.tokens_dir nor migration.gate_decisions"), "{w:?}");
    assert!(warns("require_authorization = true\ngate_decisions = [\"d.jsonl\"]\n").is_empty());
    assert!(warns("require_authorization = false\n").is_empty());
    assert_eq!(load(HEAD).unwrap().migration.gate_grace_s, 10);
    let e = load(&format!("{HEAD}[migration]\ngate_grace_s = 3601\n")).unwrap_err();
    assert!(e.contains("migration.gate_grace_s must be at most 3600"), "{e}");
}

/// Each default is written once, in the stage's `Default`: a rules file
/// that sets nothing builds exactly the stages' defaults.
#[test]
fn unset_sections_are_the_stages_defaults() {
    let r = load(HEAD).unwrap();
    let det = crate::detect::Config::default();
    assert_eq!(r.window_len_ms, det.window_len_ms);
    assert_eq!(r.thresholds, det.thresholds);
    assert_eq!(r.rtt, det.rtt);
    assert_eq!(r.volume, det.volume);
    assert_eq!(r.migration, det.migration);
    assert_eq!(r.limits.max_macs, det.max_macs);
    let pol = crate::policy::Config::default();
    assert_eq!((&r.policy, &r.storm), (&pol.table, &pol.storm));
    assert_eq!(r.mtd, crate::policy::MtdRules::default());
    assert_eq!(r.backend, crate::action::Backend::default());
    assert_eq!(r.limits, Limits::default());
    assert_eq!(r.tunnels, Tunnels::default());
}

/// A meaning error wins over a secret file that is missing: validation
/// runs first, and only the secrets of the validated choice are read.
#[test]
fn a_meaning_error_wins_over_a_missing_secret_file() {
    let cases = [
        (
            "[thresholds]\nclear_windows = 0\n[backend.webhook]\nurl = \"http://h\"\nsecret_file = \"missing\"\n",
            "r/vmsentry.toml:5:17: clear_windows must be at least 1",
        ),
        (
            "[backend.webhook]\nurl = \"ftp://h\"\nsecret_file = \"missing\"\n",
            "r/vmsentry.toml:5:7: webhook url must start with http:// or https:// (got `ftp://h`)",
        ),
        (
            "[backend.openstack]\nauth_url = \"http://h\"\napplication_credential_id = \"i\"\n\
             application_credential_secret_file = \"cluster.key\"\npassword_file = \"missing\"\n",
            "r/vmsentry.toml:5:12: openstack needs either application_credential_id and \
             application_credential_secret_file, or username, password_file and project",
        ),
        (
            "[[hypervisor]]\nid = \"a\"\n[[hypervisor]]\nid = \"a\"\n[backend.openstack]\nauth_url = \"http://h\"\n\
             username = \"u\"\npassword_file = \"missing\"\nproject = \"p\"\n",
            "r/vmsentry.toml:7:6: hypervisor id `a` is defined twice",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(load(&format!("{HEAD}{text}")).unwrap_err(), want, "{text}");
    }
    // Valid, the missing secret is the error, at its place.
    let e = load(&format!("{HEAD}[backend.webhook]\nurl = \"http://h\"\nsecret_file = \"missing\"\n")).unwrap_err();
    assert!(e.starts_with("r/vmsentry.toml:6:15: cannot read secret file "), "{e}");
    // The secret of the chosen authentication is read into its place.
    let d = dir_with_key();
    std::fs::write(d.path().join("pw"), "hunter2\n").unwrap();
    std::fs::set_permissions(d.path().join("pw"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = format!(
        "{HEAD}[backend.openstack]\nauth_url = \"http://h\"\nusername = \"u\"\npassword_file = \"pw\"\nproject = \"p\"\n"
    );
    let r = Rules::from_str_in(d.path(), Path::new("r/vmsentry.toml"), &text).unwrap();
    match &r.backend.openstack.as_ref().unwrap().auth {
        crate::action::OpenstackAuth::Password { password, .. } => assert_eq!(password, "hunter2"),
        other => panic!("{other:?}"),
    }
}
