//! End-to-end replay benchmark against `tcpdump -n -r FILE -w /dev/null` on the same file, in the same run.
//!
//! `cargo bench --bench replay [-- PACKETS [RUNS]]` writes (once) a capture of
//! PACKETS frames of mixed sizes (default 1 000 000) under target/bench-data,
//! then alternates tcpdump and vmsentry (1 and 2 shard workers) RUNS times
//! (default 7) and prints the median wall time, packets per second, the ratio
//! to tcpdump and this process's peak RSS. Then the same for the datacenter
//! mix ([`vmsentry::synth::dcmix`], 5 000 000 frames by default or
//! `VMSENTRY_BENCH_DCMIX_FRAMES`, plain and VXLAN, written once under
//! target/bench-data): tcpdump and the release binary with RTT on/off,
//! threads 1/2 (wall, CPU time and the binary's own peak RSS per run), the
//! native reader and a libpcap loop, then in-process a run ten times as
//! long, a million concurrent flows, and per-stage ns/frame. Numbers go to benches/README.md by hand, with the machine they ran on.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use vmsentry::action::LogSink;
use vmsentry::capture::{FileSource, PacketSource};
use vmsentry::config::Rules;
use vmsentry::event::{Event, EventSink};
use vmsentry::pipeline::{self, Options};

/// Drops events; the benchmark measures the pipeline, not the writer.
struct Discard;
impl EventSink for Discard {
    fn emit(&mut self, _: &Event) -> std::io::Result<()> {
        Ok(())
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A rules directory for the binary: the shipped rules and key, RTT on or off.
fn rules_dir(rtt: bool) -> (tempfile::TempDir, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let d = tempfile::tempdir().unwrap();
    let toml = std::fs::read_to_string(root.join("rules/vmsentry.toml")).unwrap();
    let toml = if rtt { toml } else { toml.replacen("[rtt]\n", "[rtt]\nenabled = false\n", 1) };
    std::fs::write(d.path().join("vmsentry.toml"), toml).unwrap();
    std::fs::copy(root.join("rules/cluster.key"), d.path().join("cluster.key")).unwrap();
    std::fs::set_permissions(d.path().join("cluster.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let p = d.path().to_path_buf();
    (d, p)
}

fn rules() -> (tempfile::TempDir, Rules) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let d = tempfile::tempdir().unwrap();
    for f in ["vmsentry.toml", "cluster.key"] {
        std::fs::copy(root.join("rules").join(f), d.path().join(f)).unwrap();
    }
    std::fs::set_permissions(d.path().join("cluster.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut r = Rules::load(d.path()).unwrap();
    // The demo's IDS alerts belong to captures/mtd.pcap, not to this capture.
    r.ids.clear();
    (d, r)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not, and
    // then this is a smoke test of the harness on a small capture.
    let benching = std::env::args().any(|a| a == "--bench");
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let (default_packets, default_runs) = if benching { (1_000_000, 7) } else { (20_000, 1) };
    let packets: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(default_packets);
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(default_runs);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    // `BENCH_ONLY=stages`: only the per-stage lines, `runs` times, on the
    // datacenter mix's first million frames (the full bench writes it; the
    // first argument, the frame count of the old capture, is not used).
    if std::env::var("BENCH_ONLY").as_deref() == Ok("stages") {
        let (_guard, rules) = rules();
        let frames = std::env::var("VMSENTRY_BENCH_DCMIX_FRAMES").unwrap_or_else(|_| "5000000".into());
        let mix = dir.join(format!("dcmix-{frames}.pcap"));
        assert!(mix.exists(), "{} is written by a full `cargo bench --bench replay` first", mix.display());
        for _ in 0..runs {
            stage_costs(&mix, &rules, 1_000_000);
        }
        return;
    }
    let file: PathBuf = dir.join(format!("bench-{packets}.pcap"));
    if !file.exists() {
        eprintln!("writing {} ...", file.display());
        vmsentry::synth::scenario::write_bench(&file, packets).unwrap();
    }
    let vxlan_file: PathBuf = dir.join(format!("bench-{packets}-vxlan.pcap"));
    if !vxlan_file.exists() {
        eprintln!("writing {} ...", vxlan_file.display());
        vmsentry::synth::scenario::write_bench_vxlan(&vxlan_file, packets).unwrap();
    }
    // `BENCH_ONLY=reader`: only the reader rows (on this file and any given in BENCH_FILES).
    if std::env::var("BENCH_ONLY").as_deref() == Ok("reader") {
        reader_rows(&file, runs);
        for f in std::env::var("BENCH_FILES").unwrap_or_default().split(':').filter(|f| !f.is_empty()) {
            reader_rows(Path::new(f), runs);
        }
        return;
    }
    let size = std::fs::metadata(&file).unwrap().len();
    let (_guard, rules) = rules();
    let mut no_rtt = rules.clone();
    no_rtt.rtt.enabled = false;
    let has_tcpdump = Command::new("tcpdump").arg("--version").output().is_ok();

    let mut tcpdump = Vec::new();
    // (threads, rules, file, label)
    let configs = [
        (1usize, &rules, &file, "--threads 1"),
        (2, &rules, &file, "--threads 2"),
        (1, &no_rtt, &file, "--threads 1, rtt off"),
        (1, &rules, &vxlan_file, "--threads 1, VXLAN"),
    ];
    let mut ours: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    for _ in 0..runs {
        if has_tcpdump {
            let t = Instant::now();
            let st = Command::new("tcpdump").args(["-n", "-r"]).arg(&file).args(["-w", "/dev/null"]).output().unwrap();
            assert!(st.status.success());
            tcpdump.push(t.elapsed().as_secs_f64());
        }
        for (i, (threads, rules, f, _)) in configs.iter().enumerate() {
            let mut src = FileSource::open(std::slice::from_ref(*f)).unwrap();
            let opts = Options { threads: *threads, ..Options::default() };
            let t = Instant::now();
            let s = pipeline::run(&mut src, rules, Box::new(LogSink::stderr()), Box::new(Discard), &opts).unwrap();
            ours[i].push(t.elapsed().as_secs_f64());
            assert_eq!(s.packets, packets);
        }
    }
    // A backend that hangs must not slow the capture: the bench's 64 VMs in
    // the inventory, graded MEDIUM at 50 packets/s (64 quarantines), sent to
    // `log` or to a webhook that accepts connections and never answers.
    // Throughput is taken over the reading (`read_s`), not the shutdown.
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_addr = hang.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in hang.incoming().flatten() {
            held.push(c);
        }
    });
    let with_actions = |route_to_webhook: bool| {
        let mut r = rules.clone();
        r.thresholds.medium_pps = 50;
        r.thresholds.high_pps = 1_000_000;
        for vm in 0..64u8 {
            r.vms.push(vmsentry::config::VmEntry {
                name: format!("bench-{vm}"),
                mac: vmsentry::decode::Mac([0xfa, 0x16, 0x3e, 0x10, 0x00, vm]),
                ram_mb: None,
                hypervisor: None,
                ips: vec![],
                flavor: None,
            });
        }
        r.backend.max_attempts = 1;
        r.backend.shutdown_grace_ms = 100;
        if route_to_webhook {
            r.backend.routes = [vmsentry::config::BackendName::Webhook; 3];
            r.backend.webhook = Some(vmsentry::action::WebhookConfig {
                url: format!("http://{hang_addr}/hook"),
                secret: b"bench".to_vec(),
                timeout: std::time::Duration::from_secs(2),
            });
        }
        r
    };
    let (to_log, to_hang) = (with_actions(false), with_actions(true));
    let mut read: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut actions = [0u64; 2];
    for run in 0..runs {
        // Alternate which goes first: the first of a pair reads slower here.
        let pair = if run % 2 == 0 { [(0, &to_log), (1, &to_hang)] } else { [(1, &to_hang), (0, &to_log)] };
        for (i, r) in pair {
            let mut src = FileSource::open(std::slice::from_ref(&file)).unwrap();
            let opts = Options { threads: 1, ..Options::default() };
            let s = pipeline::run(
                &mut src,
                r,
                Box::new(vmsentry::action::LogSink::to_writer(Box::new(std::io::sink()))),
                Box::new(Discard),
                &opts,
            )
            .unwrap();
            read[i].push(s.read_s);
            actions[i] = s.actions.queued;
        }
    }
    let (rl, rh) = (median(read[0].clone()), median(read[1].clone()));
    println!(
        "  actions to log vs to a webhook that never answers ({} actions each): {:.2} vs {:.2} Mpps while reading, the hanging one at {:.1} %",
        actions[1],
        packets as f64 / rl / 1e6,
        packets as f64 / rh / 1e6,
        100.0 * rl / rh
    );
    reader_rows(&file, runs);
    let rss = vmsentry::event::peak_rss_bytes().unwrap_or(0);
    println!("replay benchmark: {packets} packets, {:.1} MB, median of {runs} runs", size as f64 / 1e6);
    let td = if has_tcpdump { Some(median(tcpdump)) } else { None };
    if let Some(td) = td {
        println!("  tcpdump -n -r FILE -w /dev/null : {:>7.1} ms  {:>6.2} Mpps", td * 1e3, packets as f64 / td / 1e6);
    }
    for (i, (_, _, _, label)) in configs.iter().enumerate() {
        let m = median(ours[i].clone());
        let ratio = td.map(|td| format!("{:.2}x tcpdump", td / m)).unwrap_or_default();
        println!("  vmsentry replay {label:<20}: {:>7.1} ms  {:>6.2} Mpps  {ratio}", m * 1e3, packets as f64 / m / 1e6);
    }
    // A flow: its slab entry and two index words; an echo: a hashbrown
    // entry with its control byte, at 7/8 load.
    let per_flow = vmsentry::measure::rtt::FLOW_ENTRY_BYTES as f64;
    let per_echo = vmsentry::measure::rtt::ECHO_ENTRY_BYTES as f64 * 8.0 / 7.0;
    println!(
        "  RTT state: {per_flow:.0} bytes per tracked TCP flow, {per_echo:.0} per outstanding echo (at full load)"
    );
    println!("  peak RSS of the benchmark process: {:.1} MiB", rss as f64 / 1048576.0);
    datacenter_mix(benching, runs.min(5), has_tcpdump, &rules);
}

// ---- The datacenter mix (issue 11) -------------------------------------

/// Resets this process's peak RSS (`VmHWM`), so the next replay's peak is its own.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

/// One replay: wall seconds, its summary, and the process's peak RSS over it.
fn replay_once(src: &mut dyn PacketSource, rules: &Rules, threads: usize) -> (f64, vmsentry::event::SummaryEvent, u64) {
    reset_peak_rss();
    let opts = Options { threads, ..Options::default() };
    let t = Instant::now();
    let s =
        pipeline::run(src, rules, Box::new(LogSink::to_writer(Box::new(std::io::sink()))), Box::new(Discard), &opts)
            .unwrap();
    (t.elapsed().as_secs_f64(), s, vmsentry::event::peak_rss_bytes().unwrap_or(0))
}

/// This process's waited-for children's CPU time (user + system, seconds),
/// from /proc/self/stat (`cutime`, `cstime`, in clock ticks of 1/100 s).
fn children_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): state is 3rd.
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<f64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    // cutime and cstime are fields 16 and 17 of the whole line: 14 and 15 of `rest`.
    (f.get(13).copied().unwrap_or(0.0) + f.get(14).copied().unwrap_or(0.0)) / 100.0
}

/// One run of the release binary as a user runs it (`vmsentry replay
/// --rules R --threads N --events - FILE`, events read and dropped): wall
/// and CPU seconds, and its own peak RSS (the summary's `peak_rss_bytes`).
fn binary_once(rules_dir: &Path, threads: usize, file: &Path, frames: u64) -> (f64, f64, u64) {
    let cpu0 = children_cpu_s();
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_vmsentry"))
        .arg("replay")
        .arg("--rules")
        .arg(rules_dir)
        .args(["--threads", &threads.to_string(), "--no-progress", "--events", "-"])
        .arg(file)
        .stderr(std::process::Stdio::null())
        .output()
        .unwrap();
    let wall = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "vmsentry replay failed");
    let cpu = children_cpu_s() - cpu0;
    let text = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or("{}")).unwrap();
    assert_eq!(summary["packets"].as_u64(), Some(frames));
    (wall, cpu, summary["peak_rss_bytes"].as_u64().unwrap_or(0))
}

/// The release binary on `file` (classic pcap, microseconds) replayed
/// `times` times through its standard input, each pass shifted by
/// `span_us` of packet time: a run `times` times as long, of the same
/// traffic, with the binary's own peak RSS. Returns (wall s, its summary).
fn binary_shifted(rules_dir: &Path, threads: usize, file: &Path, times: i64, span_us: i64) -> (f64, serde_json::Value) {
    use std::io::{BufReader, BufWriter, Read, Write};
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmsentry"))
        .arg("replay")
        .arg("--rules")
        .arg(rules_dir)
        .args(["--threads", &threads.to_string(), "--no-progress", "--events", "-", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let events = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let t = Instant::now();
    let mut out = BufWriter::with_capacity(1 << 20, child.stdin.take().unwrap());
    let mut frame = vec![0u8; 1 << 18];
    for k in 0..times {
        let mut f = BufReader::with_capacity(1 << 20, std::fs::File::open(file).unwrap());
        let mut head = [0u8; 24];
        f.read_exact(&mut head).unwrap();
        assert_eq!(head[..4], [0xd4, 0xc3, 0xb2, 0xa1], "a little-endian microsecond pcap");
        if k == 0 {
            out.write_all(&head).unwrap();
        }
        let mut rec = [0u8; 16];
        while f.read_exact(&mut rec).is_ok() {
            let word = |r: &[u8; 16], i: usize| u32::from_le_bytes([r[i], r[i + 1], r[i + 2], r[i + 3]]);
            let us = i64::from(word(&rec, 0)) * 1_000_000 + i64::from(word(&rec, 4)) + k * span_us;
            let n = word(&rec, 8) as usize;
            rec[0..4].copy_from_slice(&((us / 1_000_000) as u32).to_le_bytes());
            rec[4..8].copy_from_slice(&((us % 1_000_000) as u32).to_le_bytes());
            f.read_exact(&mut frame[..n]).unwrap();
            out.write_all(&rec).unwrap();
            out.write_all(&frame[..n]).unwrap();
        }
    }
    drop(out);
    assert!(child.wait().unwrap().success(), "vmsentry replay failed");
    let wall = t.elapsed().as_secs_f64();
    let text = events.join().unwrap();
    (wall, serde_json::from_str(text.lines().last().unwrap_or("{}")).unwrap())
}

/// Per-stage cost of the first frames of `file`, one stage at a time on one
/// thread, frames already in memory: what more cores could be given.
fn stage_costs(file: &Path, rules: &Rules, limit: usize) {
    use vmsentry::decode::{decode, flow_hash, linktype};
    let mut cap = pcap::Capture::from_file(file).unwrap();
    let mut frames: Vec<(i64, u32, Vec<u8>)> = Vec::new();
    while let Ok(p) = cap.next_packet() {
        let ts = p.header.ts.tv_sec * 1_000_000 + p.header.ts.tv_usec;
        let keep = p.data.len().min(rules.limits.decode_bytes);
        frames.push((ts, p.header.len, p.data[..keep].to_vec()));
        if frames.len() >= limit {
            break;
        }
    }
    let n = frames.len() as f64;
    let tun = rules.tunnels;
    let t = Instant::now();
    let mut x = 0u64;
    for (_, _, d) in &frames {
        x ^= flow_hash(&tun, linktype::ETHERNET, d);
    }
    let hash_ns = t.elapsed().as_secs_f64() * 1e9 / n;
    let t = Instant::now();
    let obs: Vec<_> = frames
        .iter()
        .map(|(ts, len, d)| {
            let ts = vmsentry::vocab::PacketTime::from_micros(*ts);
            decode(&tun, linktype::ETHERNET, ts, *len, d.len() as u32, d)
        })
        .collect();
    let decode_ns = t.elapsed().as_secs_f64() * 1e9 / n;
    let window = rules.window_len_us();
    let mut counters = vmsentry::measure::WindowCounters::new(rules.limits.max_macs);
    let t = Instant::now();
    for o in &obs {
        counters.observe(o);
    }
    let count_ns = t.elapsed().as_secs_f64() * 1e9 / n;
    std::hint::black_box((x, counters.take().len()));
    let mut rtt = vmsentry::measure::rtt::RttTracker::new(
        rules.limits.rtt_flows,
        rules.limits.rtt_echo_probes,
        rules.rtt.probe_timeout_ms,
        rules.rtt.flow_timeout_s,
    );
    let mut samples = 0usize;
    let mut w = None;
    let t = Instant::now();
    // In batches, as the shard gets them: at most `batch_size` frames, cut
    // where a window ends (the reader flushes every batch then).
    // (Taking what RTT reads of each frame is RTT's cost: timed too.)
    let mut start = 0;
    let mut inputs = Vec::new();
    let mut batch = |rtt: &mut vmsentry::measure::rtt::RttTracker, part: &[vmsentry::decode::Observation]| {
        inputs.clear();
        inputs.extend(part.iter().filter_map(vmsentry::measure::rtt::RttInput::of));
        rtt.observe_batch(&inputs);
    };
    for (i, o) in obs.iter().enumerate() {
        let wi = o.ts.as_micros().div_euclid(window);
        if w.is_some_and(|w| wi > w) || i - start == rules.limits.batch_size {
            batch(&mut rtt, &obs[start..i]);
            start = i;
        }
        if w.is_some_and(|w| wi > w) {
            samples += rtt.close_window(vmsentry::vocab::PacketTime::from_micros(wi * window)).len();
        }
        w = Some(wi);
    }
    batch(&mut rtt, &obs[start..]);
    if let Some(w) = w {
        samples += rtt.close_window(vmsentry::vocab::PacketTime::from_micros((w + 1) * window)).len();
    }
    let rtt_ns = t.elapsed().as_secs_f64() * 1e9 / n;
    println!(
        "  per stage, ns/frame over the first {} frames (one thread, frames in memory): shard hash {hash_ns:.1}, decode {decode_ns:.1}, counters {count_ns:.1}, RTT {rtt_ns:.1} ({samples} samples)",
        frames.len()
    );
}

/// The realistic capture: tcpdump, RTT on/off, plain/VXLAN, threads 1/2,
/// peak RSS; then a 10x longer run and a million concurrent flows.
fn datacenter_mix(benching: bool, runs: usize, has_tcpdump: bool, rules: &Rules) {
    use vmsentry::synth::dcmix::DcMix;
    let frames: u64 = std::env::var("VMSENTRY_BENCH_DCMIX_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benching { 5_000_000 } else { 20_000 });
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    let make = |name: &str, mix: DcMix| {
        let f = dir.join(name);
        if !f.exists() {
            eprintln!("writing {} ...", f.display());
            let stats = mix.write(&f).unwrap();
            eprint!("{stats}");
        }
        f
    };
    let base = DcMix { frames, ..DcMix::default() };
    let plain = make(&format!("dcmix-{frames}.pcap"), base);
    let vxlan = make(&format!("dcmix-{frames}-vxlan.pcap"), DcMix { vxlan: true, ..base });
    let mut off = rules.clone();
    off.rtt.enabled = false;
    // (label, threads, rtt on, VXLAN)
    let configs: [(&str, usize, bool, bool); 7] = [
        ("--threads 1", 1, true, false),
        ("--threads 2", 2, true, false),
        ("--threads 1, rtt off", 1, false, false),
        ("--threads 2, rtt off", 2, false, false),
        ("--threads 1, VXLAN", 1, true, true),
        ("--threads 2, VXLAN", 2, true, true),
        ("--threads 2, VXLAN, rtt off", 2, false, true),
    ];
    let mut wall: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut rss = vec![0u64; configs.len()];
    let (mut tcpdump, mut tcpdump_cpu) = (Vec::new(), Vec::new());
    // The release binary, as a user runs it: its own peak RSS and CPU time
    // per run. Rules: the shipped ones (the IDS file is not copied, so
    // `[[ids]]` reads nothing), and the same with `rtt.enabled = false`.
    let (_guard, on_dir) = rules_dir(true);
    let (_guard_off, off_dir) = rules_dir(false);
    for round in 0..runs {
        if has_tcpdump {
            let cpu0 = children_cpu_s();
            let t = Instant::now();
            let st = Command::new("tcpdump").args(["-n", "-r"]).arg(&plain).args(["-w", "/dev/null"]).output().unwrap();
            assert!(st.status.success());
            tcpdump.push(t.elapsed().as_secs_f64());
            tcpdump_cpu.push(children_cpu_s() - cpu0);
        }
        // Rotate the order each round, so no configuration always meets
        // the same moment of a busy machine.
        for k in 0..configs.len() {
            let i = (k + round) % configs.len();
            let (_, threads, on, tunneled) = configs[i];
            let f = if tunneled { &vxlan } else { &plain };
            let (secs, c, peak) = binary_once(if on { &on_dir } else { &off_dir }, threads, f, frames);
            wall[i].push(secs);
            cpu[i].push(c);
            rss[i] = rss[i].max(peak);
        }
    }
    let size = std::fs::metadata(&plain).map(|m| m.len()).unwrap_or(0);
    println!(
        "datacenter mix: {frames} frames, {:.1} MB (see benches/README.md), median of {runs} rounds, the release binary",
        size as f64 / 1e6
    );
    let td = (!tcpdump.is_empty()).then(|| median(tcpdump));
    if let Some(td) = td {
        println!(
            "  tcpdump -n -r FILE -w /dev/null     : {:>7.1} ms  {:>6.2} Mpps  CPU {:>6.2} s",
            td * 1e3,
            frames as f64 / td / 1e6,
            median(tcpdump_cpu)
        );
    }
    let med: Vec<f64> = wall.iter().map(|w| median(w.clone())).collect();
    let med_cpu: Vec<f64> = cpu.iter().map(|w| median(w.clone())).collect();
    for (i, (label, ..)) in configs.iter().enumerate() {
        let ratio = td.map(|td| format!("{:.2}x tcpdump", td / med[i])).unwrap_or_default();
        println!(
            "  vmsentry replay {label:<20}: {:>7.1} ms  {:>6.2} Mpps  {ratio:<14} CPU {:>6.2} s  peak RSS {:>5.1} MiB",
            med[i] * 1e3,
            frames as f64 / med[i] / 1e6,
            med_cpu[i],
            mib(rss[i])
        );
    }
    println!(
        "  RTT on / off, wall: {:.2}x (1 thread), {:.2}x (2); CPU: {:.2}x (1), {:.2}x (2); VXLAN / plain throughput: {:.0} % (1 thread), {:.0} % (2)",
        med[0] / med[2],
        med[1] / med[3],
        med_cpu[0] / med_cpu[2],
        med_cpu[1] / med_cpu[3],
        100.0 * med[0] / med[4],
        100.0 * med[1] / med[5]
    );
    reader_rows(&plain, runs);
    // One in-process replay for the RTT counters and the packet-time span.
    let mut src = FileSource::open(std::slice::from_ref(&plain)).unwrap();
    let (_, s1, rss1) = replay_once(&mut src, rules, 2);
    rss[1] = rss1;
    let last = [None, Some(s1)];
    if let Some(s) = &last[1] {
        println!(
            "  RTT: {} samples, {} flow evictions, {} probe evictions, {} probe timeouts",
            s.rtt.samples, s.rtt.flow_evictions, s.rtt.probe_evictions, s.rtt.probe_timeouts
        );
    }

    // Ten times as long: memory must stay flat. The release binary, the
    // capture through its standard input 10 times, shifted in time; against
    // the same binary's 1x run (`--threads 1`, RTT on, above).
    let span_us = last[1].as_ref().map_or(0, |s| (s.duration_s * 1e6) as i64 + 1_000_000);
    let (secs, s) = binary_shifted(&on_dir, 1, &plain, 10, span_us);
    let (packets, peak) = (s["packets"].as_u64().unwrap_or(0), s["peak_rss_bytes"].as_u64().unwrap_or(0));
    assert_eq!(packets, 10 * frames);
    println!(
        "  10x as long (the binary, the capture through stdin 10 times, shifted in time), --threads 1: {:.2} Mpps, peak RSS {:.1} MiB ({:+.1} % of 1x), {} flow evictions",
        packets as f64 / secs / 1e6,
        mib(peak),
        100.0 * (peak as f64 / rss[0].max(1) as f64 - 1.0),
        s["rtt"]["flow_evictions"]
    );

    // A million concurrent TCP flows against the caps (the binary, RTT on).
    let million = make(&format!("dcmix-{frames}-1m-flows.pcap"), DcMix { flows: 1_000_000, ..base });
    // Three runs (a single one was 1.1 s or 5 s on an idle machine): the median, and all three.
    let mut walls: Vec<(f64, u64)> =
        (0..3).map(|_| binary_once(&on_dir, 1, &million, frames)).map(|(w, _, p)| (w, p)).collect();
    walls.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (secs, peak) = walls[1];
    let all: Vec<String> = walls.iter().map(|(w, _)| format!("{:.2}", frames as f64 / w / 1e6)).collect();
    let mut src = FileSource::open(std::slice::from_ref(&million)).unwrap();
    let (_, s, _) = replay_once(&mut src, rules, 1);
    let per_flow = vmsentry::measure::rtt::FLOW_ENTRY_BYTES;
    // hashbrown, reserved to the cap, holds a power of two of buckets at 7/8.
    let echo_cap = (rules.limits.rtt_echo_probes / 2).max(1);
    let buckets = (echo_cap * 8 / 7).next_power_of_two();
    let per_echo = vmsentry::measure::rtt::ECHO_ENTRY_BYTES * buckets / echo_cap;
    let bound = rules.limits.rtt_flows * per_flow + 2 * buckets * vmsentry::measure::rtt::ECHO_ENTRY_BYTES;
    println!(
        "  1,000,000 concurrent flows, --threads 1 (the binary, median of 3: {} Mpps): {:.2} Mpps ({:.0} % of the plain mix), peak RSS {:.1} MiB, {} flow evictions (in-process); RTT state bound at the caps {:.1} MiB ({per_flow} B per flow, {per_echo} B per echo)",
        all.join(" / "),
        frames as f64 / secs / 1e6,
        100.0 * med[0] / secs,
        mib(peak),
        s.rtt.flow_evictions,
        mib(bound as u64)
    );
    stage_costs(&plain, rules, if benching { 1_000_000 } else { 20_000 });
    stage_costs(&vxlan, rules, if benching { 1_000_000 } else { 20_000 });
}

/// The capture reader alone, as `replay` uses it (`FileSource`: the native
/// reader, timestamps to packet time, link-type check), each frame's length
/// and first byte summed so the frames are really handed over. Seconds.
fn native_reader_pass(file: &Path) -> (u64, u64, f64) {
    use std::ops::ControlFlow;
    use vmsentry::capture::{PacketSource, SourceItem};
    let mut src = FileSource::open(std::slice::from_ref(&file.to_path_buf())).unwrap();
    let (mut n, mut sum) = (0u64, 0u64);
    let t = Instant::now();
    src.run(&mut |item| {
        if let SourceItem::Packet(p) = item {
            n += 1;
            // Wrapping: a checksum of what was handed over, not a total (debug builds check overflow).
            sum = sum.wrapping_add(
                u64::from(p.orig_len) + u64::from(p.data.first().copied().unwrap_or(0)) + p.ts.as_micros() as u64,
            );
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    (n, sum, t.elapsed().as_secs_f64())
}

/// libpcap's `pcap_next_ex` loop (the `pcap` crate's `next_packet`, what
/// `replay` used before) over the same file, the same work per frame.
fn libpcap_read_pass(file: &Path) -> (u64, u64, f64) {
    let mut cap = pcap::Capture::from_file_with_precision(file, pcap::Precision::Micro).unwrap();
    let (mut n, mut sum) = (0u64, 0u64);
    let t = Instant::now();
    while let Ok(p) = cap.next_packet() {
        n += 1;
        #[allow(clippy::unnecessary_cast)]
        let us = p.header.ts.tv_sec as i64 * 1_000_000 + p.header.ts.tv_usec as i64;
        sum = sum.wrapping_add(u64::from(p.header.len) + u64::from(p.data.first().copied().unwrap_or(0)) + us as u64);
    }
    (n, sum, t.elapsed().as_secs_f64())
}

/// The "reader alone" and "libpcap read loop" rows: alternated `runs` times
/// (which goes first alternates too), medians, and their ratio.
fn reader_rows(file: &Path, runs: usize) {
    let (mut native, mut libpcap) = (Vec::new(), Vec::new());
    let mut frames = 0;
    for run in 0..runs.max(1) {
        let order: [bool; 2] = if run % 2 == 0 { [true, false] } else { [false, true] };
        let mut sums = [0u64; 2];
        for is_native in order {
            let (n, sum, s) = if is_native { native_reader_pass(file) } else { libpcap_read_pass(file) };
            frames = n;
            sums[usize::from(is_native)] = sum;
            if is_native { &mut native } else { &mut libpcap }.push(s);
        }
        assert_eq!(sums[0], sums[1], "both readers hand over the same frames");
    }
    let (nat, lib) = (median(native), median(libpcap));
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    println!(
        "  reader alone ({name}): {:>7.1} ms  {:>6.2} Mpps  {:.2}x the libpcap read loop",
        nat * 1e3,
        frames as f64 / nat / 1e6,
        lib / nat
    );
    println!("  libpcap read loop ({name}): {:>7.1} ms  {:>6.2} Mpps", lib * 1e3, frames as f64 / lib / 1e6);
}
