//! Capture inputs: standard input, gzip, raw IP in each of its link-type numbers, pcapng interfaces of different link types, unsupported link types, damage.

use super::*;
use std::io::Write;
use std::process::Stdio;
use vmsentry::capture::reader::CaptureReader;
use vmsentry::synth::formats::{Classic, Interface, PcapNg};

/// Runs `vmsentry replay` with `stdin` fed to it; returns the events and stderr.
fn replay_stdin(rules: &Path, args: &[&str], stdin: &[u8]) -> (Vec<Value>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmsentry"))
        .args(["replay", "--rules", rules.to_str().unwrap(), "--threads", "2"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "replay failed: {err}");
    (event_lines(&String::from_utf8(out.stdout).unwrap()), err)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Every frame of a capture: (sec, µs, orig_len, bytes).
fn frames_of(path: &Path) -> Vec<(u32, u32, u32, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let mut r = CaptureReader::new(&bytes[..]).unwrap();
    let mut out = Vec::new();
    while let Some(f) = r.next_frame().unwrap() {
        let (s, us) = f.timeval();
        out.push((s as u32, us as u32, f.orig_len, f.data.to_vec()));
    }
    out
}

#[test]
fn replay_reads_a_capture_from_standard_input_plain_or_gzipd() {
    let rules = rules_dir();
    let want = stable(replay(rules.path(), 2, &[capture("basic.pcap")]));
    let pcap = std::fs::read(capture("basic.pcap")).unwrap();
    let (got, _) = replay_stdin(rules.path(), &["-"], &pcap);
    assert_eq!(stable(got), want, "`cat basic.pcap | vmsentry replay -`");
    let (got, _) = replay_stdin(rules.path(), &["-"], &gzip(&pcap));
    assert_eq!(stable(got), want, "`vmsentry replay - < basic.pcap.gz`");
    // Standard input between files, in order.
    let rtt = capture("rtt.pcap");
    let files = stable(replay(rules.path(), 2, &[rtt.clone(), capture("basic.pcap"), rtt.clone()]));
    let (mixed, _) = replay_stdin(rules.path(), &[rtt.to_str().unwrap(), "-", rtt.to_str().unwrap()], &pcap);
    assert_eq!(stable(mixed), files);
    // Twice is refused before anything runs.
    let out = vmsentry(&["replay", "--rules", rules.path().to_str().unwrap(), "-", "-"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "vmsentry: -: standard input given more than once\n");
}

#[test]
fn gzipd_captures_are_known_by_their_first_bytes_not_their_name() {
    let rules = rules_dir();
    let want = stable(replay(rules.path(), 2, &[capture("mtd.pcap")]));
    let d = tempfile::tempdir().unwrap();
    let gz = gzip(&std::fs::read(capture("mtd.pcap")).unwrap());
    for name in ["mtd.pcap.gz", "mtd.pcap"] {
        let p = d.path().join(name);
        std::fs::write(&p, &gz).unwrap();
        assert_eq!(stable(replay(rules.path(), 2, &[p])), want, "{name}");
    }
    // A gzip stream cut short: the frames before the cut, the damage reported.
    let p = d.path().join("cut.pcap.gz");
    std::fs::write(&p, &gz[..gz.len() / 2]).unwrap();
    let out = vmsentry(&["replay", "--rules", rules.path().to_str().unwrap(), p.to_str().unwrap()]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = format!("vmsentry: {}: stopped reading at damaged data at byte ", p.display());
    assert!(err.contains(&line) && err.contains("read error"), "{err}");
    let ev: Vec<Value> = event_lines(&String::from_utf8_lossy(&out.stdout));
    let s = summary(&ev);
    assert_eq!(s["damaged_files"], 1);
    let packets = s["packets"].as_u64().unwrap();
    assert!(packets > 1000 && packets < 21_428, "{packets}");
    // Not gzip inside, nor a capture.
    let p = d.path().join("notes.gz");
    std::fs::write(&p, gzip(b"not a capture")).unwrap();
    let out = vmsentry(&["replay", "--rules", rules.path().to_str().unwrap(), p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("notes.gz: gzip'd, but not a pcap or pcapng file"));
}

/// VM-layer statistics by MAC.
fn vm_stats(ev: &[Value]) -> BTreeMap<String, Value> {
    of_type(ev, "vm_stats").iter().map(|v| (v["vm"].as_str().unwrap().to_string(), (*v).clone())).collect()
}

#[test]
fn raw_ip_captures_decode_under_linktype_101_and_dlt_12_and_14() {
    // basic.pcap without its Ethernet headers (its IP frames), as a capture
    // on an IP interface (a tunnel, `tcpdump -y RAW`) gives it. Raw IP has no
    // MACs, so no VM is seen; every layer above is decoded.
    let rules = rules_dir();
    let frames: Vec<_> = frames_of(&capture("basic.pcap"))
        .into_iter()
        .filter(|f| f.3.len() >= 34 && f.3[12..14] == [0x08, 0x00])
        .collect();
    let d = tempfile::tempdir().unwrap();
    for linktype in [101, 12, 14] {
        let c = Classic { linktype, ..Classic::default() };
        let mut out = c.header();
        for (s, us, len, data) in &frames {
            c.record(&mut out, *s, *us, len - 14, &data[14..]);
        }
        let p = d.path().join(format!("raw-{linktype}.pcap"));
        std::fs::write(&p, out).unwrap();
        let out = vmsentry(&["replay", "--rules", rules.path().to_str().unwrap(), p.to_str().unwrap()]);
        assert!(out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("not decoded"), "{err}");
        assert_eq!(err.matches("carries no MAC addresses").count(), 1, "one note per file: {err}");
        let ev: Vec<Value> = event_lines(&String::from_utf8_lossy(&out.stdout));
        let s = summary(&ev);
        let bytes: u64 = frames.iter().map(|f| u64::from(f.2 - 14)).sum();
        assert_eq!(
            (s["packets"].as_u64(), s["bytes"].as_u64(), errors_string(s), s["unsupported_link_files"].as_u64()),
            // basic.pcap's malformed IPv4 frames (IHL 3, TCP data offset 2,
            // UDP length 5, IP length 1000 in 60 B) stay malformed.
            (Some(frames.len() as u64), Some(bytes), "ip_length=1,ipv4=1,tcp=1,udp=1".into(), Some(0)),
            "linktype {linktype}"
        );
        assert_eq!(s["vms"], 0);
    }
}

#[test]
fn pcapng_with_interfaces_of_different_link_types_replays_and_unsupported_ones_warn_once() {
    let rules = rules_dir();
    let basic = frames_of(&capture("basic.pcap"));
    let mut w = PcapNg::new(false);
    w.interface(&Interface { linktype: 1, snaplen: 0, tsresol: Some(9), tsoffset: None });
    w.interface(&Interface { linktype: 101, snaplen: 0, tsresol: None, tsoffset: None });
    w.interface(&Interface { linktype: 127, snaplen: 0, tsresol: None, tsoffset: None });
    let mut radiotap = 0;
    for (i, (s, us, len, data)) in basic.iter().enumerate() {
        let us_total = u64::from(*s) * 1_000_000 + u64::from(*us);
        match i % 10 {
            // Raw IP copies of IPv4 frames (the decoder sees the same layers
            // less the MACs) and a few radio frames, between Ethernet ones.
            3 if data.len() > 34 && data[12..14] == [0x08, 0x00] => w.packet(1, us_total, len - 14, &data[14..]),
            7 => {
                w.packet(2, us_total, 40, &[0u8; 40]);
                radiotap += 1;
            }
            _ => {}
        }
        w.packet(0, us_total * 1000, *len, data);
    }
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("three-interfaces.pcapng");
    std::fs::write(&p, w.bytes()).unwrap();
    let args = ["replay", "--rules", rules.path().to_str().unwrap(), p.to_str().unwrap(), p.to_str().unwrap()];
    let out = vmsentry(&args);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let warning = format!(
        "vmsentry: {}: link type IEEE802_11_RADIOTAP (127) is not decoded: its frames count as packets and bytes, \
         and as `unsupported_link` decode errors\n",
        p.display()
    );
    assert_eq!(err.matches(&warning).count(), 2, "once per file: {err}");
    let ev: Vec<Value> = event_lines(&String::from_utf8_lossy(&out.stdout));
    let s = summary(&ev);
    assert_eq!(s["unsupported_link_files"], 2);
    assert_eq!(s["damaged_files"], 0);
    // The file given twice: the copy's frames are late (time went back), so
    // they are read (and warned about) but not measured again.
    assert_eq!(s["late_frames"].as_u64().unwrap() * 2, s["packets"].as_u64().unwrap());
    assert_eq!(s["decode_errors_by_kind"]["unsupported_link"], radiotap);
    // The Ethernet frames give exactly basic.pcap's VM statistics (raw IP
    // frames have no MACs to count).
    let want = vm_stats(&replay(rules.path(), 2, &[capture("basic.pcap")]));
    assert_eq!(vm_stats(&ev), want);
}

#[test]
fn damaged_captures_are_read_up_to_the_damage_with_the_file_and_position() {
    let rules = rules_dir();
    let d = tempfile::tempdir().unwrap();
    let pcap = std::fs::read(capture("rtt.pcap")).unwrap();
    let p = d.path().join("cut.pcap");
    std::fs::write(&p, &pcap[..pcap.len() - 5]).unwrap();
    let out = vmsentry(&["replay", "--rules", rules.path().to_str().unwrap(), p.to_str().unwrap()]);
    assert!(out.status.success());
    let frames = frames_of(&capture("rtt.pcap"));
    let last = 16 + frames.last().unwrap().3.len();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or(""),
        format!(
            "vmsentry: {}: stopped reading at damaged data at byte {}: truncated dump file; tried to read {} captured bytes, only got {}\n",
            p.display(),
            pcap.len() - last,
            last - 16,
            last - 16 - 5
        )
        .trim_end()
    );
    let ev: Vec<Value> = event_lines(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        (summary(&ev)["packets"].as_u64(), summary(&ev)["damaged_files"].as_u64()),
        (Some(frames.len() as u64 - 1), Some(1))
    );
}

#[test]
fn tcpdump_writing_to_a_pipe_feeds_replay_from_standard_input() {
    if Command::new("tcpdump").arg("--version").output().is_err() {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI=true but tcpdump is not installed");
        eprintln!("SKIPPED: tcpdump not installed");
        return;
    }
    let rules = rules_dir();
    let want = stable(replay(rules.path(), 2, &[capture("rtt.pcap")]));
    // `tcpdump -w - | vmsentry replay -`, the pipe made by the shell.
    let cmd = format!(
        "tcpdump -n -r {} -w - 2>/dev/null | {} replay --rules {} --threads 2 -",
        capture("rtt.pcap").display(),
        env!("CARGO_BIN_EXE_vmsentry"),
        rules.path().display()
    );
    let out = Command::new("sh").args(["-c", &cmd]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: Vec<Value> = event_lines(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(stable(got), want);
}
