use super::*;
use crate::config::Rules;
use crate::measure::rtt::RttSample;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn det(r: &Rules) -> Detector {
    Detector::new(r.detect_config(), Registry::build(&r.key, &r.cluster, &r.hypervisors))
}

/// Rules from text after a `[cluster]` with a valid key.
fn rules_text(body: &str) -> Rules {
    let d = tempfile::tempdir().unwrap();
    let k = d.path().join("k");
    std::fs::write(&k, [b'k'; 32]).unwrap();
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = format!("[cluster]\nname = \"t\"\nkey_file = \"k\"\n{body}");
    Rules::from_str_in(d.path(), Path::new("t.toml"), &text).unwrap()
}

const VM_A: &str = "[[vm]]\nname = \"a\"\nmac = \"02:00:00:00:00:0a\"\nram_mb = 1\n";

/// Small thresholds: 8000/80000 bit/s, 100/1000 packets/s, clear after 2.
fn rules(extra: &str) -> Rules {
    rules_text(&format!(
        "[thresholds]\nmedium_bps = 8000\nhigh_bps = 80000\nmedium_pps = 100\nhigh_pps = 1000\nclear_windows = 2\n\
         [volume]\nfactor = 1.0\nhorizon_s = 3\n{VM_A}{extra}"
    ))
}

fn vm() -> Mac {
    "02:00:00:00:00:0a".parse().unwrap()
}

fn tx(bytes: u64, packets: u64) -> Vec<(Mac, Counters)> {
    vec![(vm(), Counters { tx_bytes: bytes, tx_packets: packets, rx_bytes: 0, rx_packets: 0 })]
}

/// Closes a window without RTT samples; returns its level changes.
fn close(d: &mut Detector, w: i64, totals: &[(Mac, Counters)]) -> Vec<Change> {
    d.close_window(w, totals, &[], &Evidence::default())
        .into_iter()
        .filter_map(|o| match o {
            Outcome::Level(c) => Some(c),
            _ => None,
        })
        .collect()
}

fn levels(ch: &[Change]) -> Vec<(Level, Level, Reason)> {
    ch.iter().map(|c| (c.from, c.to, c.reason)).collect()
}

#[test]
fn thresholds_are_inclusive_and_the_highest_crossed_wins() {
    let mut d = det(&rules(""));
    // 1000 bytes = 8000 bit/s: exactly medium_bps.
    assert_eq!(levels(&close(&mut d, 0, &tx(1000, 1))), vec![(Level::Low, Level::Medium, Reason::Rate)]);
    // 1000 packets/s: exactly high_pps.
    let ch = close(&mut d, 1, &tx(1000, 1000));
    assert_eq!(levels(&ch), vec![(Level::Medium, Level::High, Reason::Rate)]);
    assert_eq!((ch[0].bps, ch[0].pps, ch[0].direction), (8000, 1000, Some(Direction::Tx)));
}

#[test]
fn rx_direction_is_graded_too() {
    let mut d = det(&rules(""));
    let rx = vec![(vm(), Counters { tx_bytes: 0, tx_packets: 0, rx_bytes: 40 * 200, rx_packets: 200 })];
    let ch = close(&mut d, 5, &rx);
    assert_eq!(levels(&ch), vec![(Level::Low, Level::Medium, Reason::Rate)]);
    assert_eq!((ch[0].direction, ch[0].pps, ch[0].bps), (Some(Direction::Rx), 200, 64_000));
}

#[test]
fn quiet_gaps_count_as_windows_below() {
    let mut d = det(&rules(""));
    close(&mut d, 0, &tx(100_000, 10));
    assert_eq!(d.vm(0).level, Level::High);
    // Windows 1..=9 had no frames at all; window 10 is closed by other traffic.
    let other: Mac = "02:00:00:00:00:0b".parse().unwrap();
    let ch = close(&mut d, 10, &[(other, Counters { tx_bytes: 1, tx_packets: 1, ..Default::default() })]);
    assert_eq!(
        levels(&ch),
        vec![(Level::High, Level::Medium, Reason::Rate), (Level::Medium, Level::Low, Reason::Rate)]
    );
    // Falls after clear_windows = 2 quiet windows each: at the end of windows 2 and 4.
    assert_eq!(ch[0].window_end.as_micros(), 3_000_000);
    assert_eq!(ch[1].window_end.as_micros(), 5_000_000);
    // Only the two windows that held frames count; the quiet ones were graded.
    assert_eq!(d.windows, 2);
}

#[test]
fn volume_over_the_horizon_is_high_and_clears() {
    // Default (high) rate thresholds, so only volume can trip: ram_mb = 1 and
    // factor 1.0 mean more than 1 MiB within 3 windows.
    let calm = rules_text(&format!("[thresholds]\nclear_windows = 2\n[volume]\nfactor = 1.0\nhorizon_s = 3\n{VM_A}"));
    let mut d = det(&calm);
    let limit = 1_048_576u64;
    assert!(close(&mut d, 0, &tx(400_000, 1)).is_empty());
    assert!(close(&mut d, 1, &tx(400_000, 1)).is_empty());
    let ch = close(&mut d, 2, &tx(400_000, 1));
    assert_eq!(levels(&ch), vec![(Level::Low, Level::High, Reason::Volume)]);
    assert_eq!((ch[0].horizon_bytes, ch[0].limit_bytes), (Some(1_200_000), Some(limit)));
    // The oldest window leaves the horizon: 800 000 <= limit, below for 2 windows.
    assert!(close(&mut d, 3, &tx(0, 0)).is_empty());
    let ch = close(&mut d, 4, &tx(0, 0));
    assert_eq!(levels(&ch), vec![(Level::High, Level::Medium, Reason::Volume)]);
    assert!(close(&mut d, 5, &tx(0, 0)).is_empty());
    let ch = close(&mut d, 6, &tx(0, 0));
    assert_eq!(levels(&ch), vec![(Level::Medium, Level::Low, Reason::Volume)]);
}

#[test]
fn unknown_macs_are_measured_not_graded_and_evicted_oldest_first() {
    let r = rules_text(&format!("[limits]\nmax_macs = 8\n{VM_A}"));
    let mut d = det(&r);
    let big = Counters { tx_bytes: 1 << 40, tx_packets: 1 << 30, ..Default::default() };
    for w in 0..10i64 {
        let m = Mac([0x02, 0, 0, 0, 1, w as u8]);
        assert!(close(&mut d, w, &[(m, big)]).is_empty(), "unknown MACs are never graded");
    }
    // The table (1 known + unknown) outgrows 8 after windows 7 and 9; each
    // time it is cut to 7/8 of the cap, dropping the two oldest unknown MACs.
    assert_eq!(d.evictions, 4);
    let seen: Vec<Mac> = d.seen_macs().into_iter().map(|(m, _)| m).collect();
    assert_eq!(seen, (4..10u8).map(|i| Mac([0x02, 0, 0, 0, 1, i])).collect::<Vec<_>>());
    assert!(d.vm_index(vm()).is_some(), "known VMs are never evicted");
}

fn sample(t_us: i64, rtt_us: i64) -> RttSample {
    use crate::measure::rtt::SampleKind;
    let ip = std::net::IpAddr::from([10, 0, 0, 1]);
    RttSample {
        ts: PacketTime::from_micros(t_us),
        mac: vm(),
        rtt_us,
        kind: SampleKind::Echo,
        src: (ip, 0),
        dst: (ip, 0),
    }
}

#[test]
fn peak_factor_uses_a_baseline_learned_from_non_peak_samples_only() {
    // peak_ms 50, factor 2, max_peaks 2: peaks are above 50 ms or above twice the baseline.
    let r = rules_text(&format!("[rtt]\npeak_ms = 50.0\npeak_factor = 2.0\nmax_peaks = 2\n{VM_A}"));
    let mut d = det(&r);
    // Baseline settles at 10 ms.
    let base: Vec<_> = (0..8).map(|k| sample(k * 1000, 10_000)).collect();
    assert!(d.close_window(0, &[], &base, &Evidence::default()).is_empty());
    assert_eq!(d.vm(0).rtt_baseline_ms, Some(10.0));
    // 25 ms is over 2 x 10 ms: three such peaks (> max_peaks 2), and they do
    // not raise the baseline.
    let w1: Vec<_> = (0..3).map(|k| sample(1_000_000 + k * 1000, 25_000)).collect();
    let out = d.close_window(1, &[], &w1, &Evidence::default());
    assert_eq!(out.len(), 2, "{out:?}");
    match &out[0] {
        Outcome::RttPeaks(p) => {
            assert_eq!((p.peaks, p.window.count, p.baseline_ms), (3, 3, Some(10.0)));
        }
        o => panic!("{o:?}"),
    }
    match &out[1] {
        Outcome::Level(c) => assert_eq!((c.from, c.to, c.reason), (Level::Low, Level::Medium, Reason::Rtt)),
        o => panic!("{o:?}"),
    }
    // 19 ms is not a peak: it moves the baseline by 1/8 of the difference.
    d.close_window(2, &[], &[sample(2_000_000, 19_000)], &Evidence::default());
    assert_eq!(d.vm(0).rtt_baseline_ms, Some(10.0 + 9.0 / 8.0));
}

#[test]
fn a_move_restarts_the_rtt_baseline() {
    use crate::measure::placement::{Evidence, Origin, Sighting};
    let r = rules_text(&format!(
        "[[hypervisor]]\nid = \"h1\"\nmacs = [\"52:54:00:aa:00:01\"]\n[[hypervisor]]\nid = \"h2\"\nmacs = [\"52:54:00:aa:00:02\"]\n{VM_A}hypervisor = \"h1\"\n"
    ));
    let mut d = det(&r);
    let seen = |hv: &str, t: i64| Evidence {
        sightings: vec![Sighting {
            vm: vm(),
            origin: Origin::Outer { mac: hv.parse().unwrap(), ip: [10, 0, 0, 1].into() },
            first: PacketTime::from_micros(t),
            last: PacketTime::from_micros(t),
            frames: 1,
            announce: None,
            slots: [0; crate::measure::placement::SLOTS],
        }],
        ..Default::default()
    };
    d.close_window(0, &[], &[sample(0, 10_000)], &seen("52:54:00:aa:00:01", 0));
    assert_eq!(d.vm(0).rtt_baseline_ms, Some(10.0));
    assert_eq!(d.hypervisor_name(0).as_deref(), Some("h1"));
    let out = d.close_window(1, &[], &[], &seen("52:54:00:aa:00:02", 1_000_000));
    assert!(matches!(out.first(), Some(Outcome::Migration(m)) if m.vm == 0));
    assert_eq!(d.vm(0).rtt_baseline_ms, None, "the baseline is learned anew where the VM went");
    assert_eq!(d.hypervisor_name(0).as_deref(), Some("h2"));
}

#[test]
fn windows_at_the_end_of_time_do_not_overflow() {
    // A capture can stamp any 64-bit time; the last windows' ends saturate.
    let mut d = det(&rules(""));
    let len = 1_000_000;
    let last = PacketTime::from_micros(i64::MAX).window_index(len);
    close(&mut d, last - 1, &tx(1, 1));
    let ch = close(&mut d, last, &tx(100_000, 10));
    assert_eq!(ch[0].window_end.as_micros(), i64::MAX);
    assert_eq!(d.last_window_end().map(PacketTime::as_micros), Some(i64::MAX));
    assert_eq!(d.last_seen(vm()).map(PacketTime::as_micros), Some(i64::MAX));
    assert_eq!(d.windows, 2);
}

/// Two hypervisors, h1 signed and h2 not, in the order given.
fn two_hypervisors(h2_first: bool) -> Rules {
    two_hypervisors_and(h2_first, &format!("{VM_A}hypervisor = \"h2\"\n"))
}

/// Two hypervisors, h1 signed and h2 not, in the order given, and `vms`.
fn two_hypervisors_and(h2_first: bool, vms: &str) -> Rules {
    let key = crate::trust::ClusterKey::from_bytes(&[b'k'; 32]).unwrap();
    let h1_mac: Mac = "52:54:00:aa:00:01".parse().unwrap();
    let h1 = format!(
        "[[hypervisor]]\nid = \"h1\"\nmacs = [\"{h1_mac}\"]\nips = [\"10.0.0.1\"]\nsignature = \"{}\"\n",
        key.sign("t", "h1", h1_mac)
    );
    let h2 = "[[hypervisor]]\nid = \"h2\"\nmacs = [\"52:54:00:aa:00:02\"]\nips = [\"10.0.0.2\"]\n";
    let (a, b) = if h2_first { (h2.to_string(), h1) } else { (h1, h2.to_string()) };
    rules_text(&format!("{a}{b}{vms}"))
}

#[test]
fn a_reload_that_reorders_the_hypervisors_keeps_each_vm_on_its_hypervisor() {
    use crate::measure::placement::{Evidence, Origin, Sighting};
    let r = two_hypervisors(false);
    let mut d = det(&r);
    // The rules say h2 (unsigned); the wire shows the VM behind h1 (signed).
    let at_h1 = Evidence {
        sightings: vec![Sighting {
            vm: vm(),
            origin: Origin::Outer { mac: "52:54:00:aa:00:01".parse().unwrap(), ip: [10, 0, 0, 1].into() },
            first: PacketTime::from_micros(0),
            last: PacketTime::from_micros(0),
            frames: 1,
            announce: None,
            slots: [0; crate::measure::placement::SLOTS],
        }],
        ..Default::default()
    };
    d.close_window(0, &[], &[], &at_h1);
    assert_eq!((d.hypervisor_name(0).as_deref(), d.verdict(0), d.signed(0)), (Some("h1"), Verdict::Valid, true));
    // The same hypervisors, listed the other way round.
    let r2 = two_hypervisors(true);
    d.reload(r2.detect_config(), Registry::build(&r2.key, &r2.cluster, &r2.hypervisors));
    assert_eq!((d.hypervisor_name(0).as_deref(), d.verdict(0), d.signed(0)), (Some("h1"), Verdict::Valid, true));
    assert_eq!(d.place(0).and_then(|p| p.hv), Some(1), "h1 is the second entry now");
    assert_eq!(d.vms_on(1), [0]);
}

/// A detector from plain values: no rules text and no key file (the
/// registry's key is bytes here, as the loader would have read them).
#[test]
fn a_detector_builds_from_plain_values_without_rules_or_key_files() {
    let cfg = Config {
        thresholds: Thresholds {
            medium_bps: 8000,
            high_bps: 80_000,
            medium_pps: 100,
            high_pps: 1000,
            clear_windows: 2,
        },
        vms: vec![VmEntry {
            name: "a".into(),
            mac: vm(),
            ram_mb: Some(1),
            hypervisor: None,
            ips: vec![],
            flavor: None,
        }],
        ..Config::default()
    };
    let key = crate::trust::ClusterKey::from_bytes(&[b'k'; 32]).unwrap();
    let mut d = Detector::new(cfg, Registry::build(&key, "t", &[]));
    assert_eq!(d.vms().len(), 1);
    assert_eq!(levels(&close(&mut d, 0, &tx(1000, 1))), vec![(Level::Low, Level::Medium, Reason::Rate)]);
    assert_eq!(levels(&close(&mut d, 1, &tx(0, 0))), vec![]);
    assert_eq!(levels(&close(&mut d, 2, &tx(0, 0))), vec![(Level::Medium, Level::Low, Reason::Rate)]);
    // A MAC outside the inventory is measured, never graded.
    let other: Mac = "02:00:00:00:00:0b".parse().unwrap();
    let totals = vec![(other, Counters { tx_bytes: 1 << 30, tx_packets: 1 << 20, rx_bytes: 0, rx_packets: 0 })];
    assert_eq!(levels(&close(&mut d, 3, &totals)), vec![]);
}

#[test]
fn a_move_being_settled_goes_on_over_a_reload_and_one_of_a_vm_no_longer_there_is_settled_at_once() {
    use crate::measure::placement::{slot_of, Evidence, Origin, Sighting, SLOTS};
    // a's frames every 2 ms from `from` to `to` (µs, one window of 1 s) behind h`n`; the rules put it on h2.
    let busy = |n: u8, from: i64, to: i64| {
        let mut slots = [0u16; SLOTS];
        for t in (from..=to).step_by(2_000) {
            slots[slot_of(PacketTime::from_micros(t), 1_000_000)] += 1;
        }
        Evidence {
            sightings: vec![Sighting {
                vm: vm(),
                origin: Origin::Outer {
                    mac: format!("52:54:00:aa:00:0{n}").parse().unwrap(),
                    ip: [10, 0, 0, n].into(),
                },
                first: PacketTime::from_micros(from),
                last: PacketTime::from_micros(to),
                frames: slots.iter().map(|&n| u64::from(n)).sum(),
                announce: None,
                slots,
            }],
            ..Default::default()
        }
    };
    let r = two_hypervisors(false);
    let registry = |r: &Rules| Registry::build(&r.key, &r.cluster, &r.hypervisors);
    for keep in [true, false] {
        let mut d = det(&r);
        d.close_window(0, &[], &[], &busy(2, 500_000, 990_000));
        // At h1 with one frame at 1.9 s: not back at its pace, open.
        let out = d.close_window(1, &[], &[], &busy(1, 1_900_000, 1_900_000));
        let open = match out.first() {
            Some(Outcome::Migration(m)) => m.open,
            other => panic!("{other:?}"),
        };
        assert!(open.is_some());
        let r2 = if keep { two_hypervisors(true) } else { two_hypervisors_and(true, "") };
        d.reload(r2.detect_config(), registry(&r2));
        if keep {
            // Still open; back at its pace from 2.0 s: 100 ms after the move.
            assert_eq!(d.take_settled(), vec![]);
            d.close_window(2, &[], &[], &busy(1, 2_000_000, 2_500_000));
        }
        let s = d.take_settled();
        assert_eq!(s.len(), 1, "{keep}");
        assert_eq!((s[0].id, s[0].measured.responsive_us), (open.unwrap(), keep.then_some(100_000)), "{keep}");
        assert_eq!(d.settle_all(), vec![]);
    }
}

#[test]
fn bytes_that_only_the_final_settling_shows_over_the_factor_raise_the_vm_at_the_inputs_end() {
    let r = rules("");
    let mut d = det(&r);
    assert!(d.grade_settled().is_empty(), "no window closed yet");
    d.close_window(4, &[], &[], &Default::default());
    assert!(d.grade_settled().is_empty(), "nothing flagged");
    // What `settle_all` does for a move whose open choice of streams
    // carried more than ram_mb × factor: the flag, with no window after it.
    d.locator.flags[0].too_many_bytes = true;
    let out = d.grade_settled();
    let [Outcome::Level(c)] = &out[..] else { panic!("{out:?}") };
    assert_eq!((c.vm, c.from, c.to, c.reason), (0, Level::Low, Level::High, Reason::Migration));
    assert_eq!((c.window_start, c.window_end), (d.window_start(4), d.window_start(5)));
    assert_eq!(d.vms()[0].level, Level::High);
    // Once: the flag is used up, and a VM at HIGH already changes nothing.
    assert!(d.grade_settled().is_empty());
    d.locator.flags[0].too_many_bytes = true;
    assert!(d.grade_settled().is_empty());
}
