//! The `vmsentry` binary: command glue; exit 0 done, 2 bad usage or input, 1 other failure.

mod cli;

use anyhow::Context;
use clap::Parser;
use cli::{Cli, Command};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use vmsentry::action::LogSink;
use vmsentry::capture::{CaptureError, FileList, LiveConfig, LiveSource, PacketSource};
use vmsentry::config::{self, Rules};
use vmsentry::decode::Mac;
use vmsentry::event::{EventSink, JsonLines};
use vmsentry::pipeline::{self, PipelineError};
use vmsentry::serve::{self, Telemetry};
use vmsentry::trust::token::Token;
use vmsentry::trust::{ClusterKey, Registry, Verdict};

/// The longest a move token may be valid.
const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(3650 * 86_400);

/// An error that is the user's to fix: exit status 2.
#[derive(Debug)]
struct BadInput(String);
impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for BadInput {}

fn bad(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(BadInput(msg.into()))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.downcast_ref::<BadInput>().is_some() {
                eprintln!("vmsentry: {e}");
                ExitCode::from(2)
            } else {
                eprintln!("vmsentry: {e:#}");
                ExitCode::from(1)
            }
        }
    }
}

fn load_rules(dir: &Path) -> anyhow::Result<Rules> {
    Rules::load(dir).map_err(|e| bad(e.to_string()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { rules } => check(&rules),
        Command::Report { events, out, rules, qemu_stats } => {
            report(&events, &out, rules.as_deref(), qemu_stats.as_deref())
        }
        Command::Gate { config, args } => {
            let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
            let call = vmsentry::gate::Call { domain: arg(0), operation: arg(1), sub_operation: arg(2), extra: arg(3) };
            let answer = vmsentry::gate::run(&config, &call, std::io::stdin(), Rules::load_for_gate);
            // Exit now: a worker stuck on a pipe must not keep libvirt waiting.
            std::process::exit(i32::from(answer.exit));
        }
        Command::Sign { key_file, cluster, id, mac } => {
            // The rules' own checks: a signature for a hypervisor the rules would refuse is no use.
            let mac: Mac = mac.parse().map_err(|e: vmsentry::decode::MacParseError| bad(e.to_string()))?;
            config::check_unicast(mac, "hypervisor").map_err(|m| bad(format!("--mac: {m}")))?;
            config::check_cluster_name(&cluster).map_err(|m| bad(format!("--cluster: {m}")))?;
            config::check_hypervisor_id(&id).map_err(|m| bad(format!("--id: {m}")))?;
            let key = ClusterKey::load(&key_file).map_err(|e| bad(e.to_string()))?;
            println!("{}", key.sign(&cluster, &id, mac));
            Ok(())
        }
        Command::Authorize { key_file, vm, to, ttl, nonce } => {
            let vm: Mac = vm.parse().map_err(|e: vmsentry::decode::MacParseError| bad(e.to_string()))?;
            config::check_unicast(vm, "VM").map_err(|m| bad(format!("--vm: {m}")))?;
            config::check_hypervisor_id(&to).map_err(|m| bad(format!("--to: {m}")))?;
            if ttl.is_zero() || ttl > MAX_TTL {
                return Err(bad(format!(
                    "--ttl must be from 1s to {}days (got {})",
                    MAX_TTL.as_secs() / 86_400,
                    humantime::format_duration(ttl)
                )));
            }
            let key = ClusterKey::load(&key_file).map_err(|e| bad(e.to_string()))?;
            let nonce = match nonce {
                Some(n) if n.len() >= 16 && n.bytes().all(|b| b.is_ascii_hexdigit()) => n,
                Some(_) => return Err(bad("--nonce must be at least 16 hex digits")),
                None => {
                    let mut b = [0u8; 8];
                    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness for the nonce: {e}"))?;
                    hex::encode(b)
                }
            };
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).context("clock before 1970")?;
            let expires = (now + ttl).as_secs() as i64;
            println!("{}", Token::sign(&key, vm, &to, expires, &nonce));
            Ok(())
        }
        Command::Live {
            interface,
            bpf,
            rules,
            events,
            listen,
            threads,
            snaplen,
            buffer_mb,
            no_promisc,
            rtt_samples,
            vm_windows,
        } => {
            let rules = load_rules(&rules)?;
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [SIGINT, SIGTERM] {
                signal_hook::flag::register(sig, stop.clone()).context("cannot handle signals")?;
            }
            let reload = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(SIGHUP, reload.clone()).context("cannot handle SIGHUP")?;
            let telemetry = Telemetry::new(rules.limits.metrics_vms);
            // The ranges are clap's to check (cli.rs).
            let cfg =
                LiveConfig { interface, bpf, snaplen, buffer_bytes: buffer_mb * 1024 * 1024, promisc: !no_promisc };
            // The interface first: nothing is served for a capture that cannot start.
            let mut source = LiveSource::open(&cfg, stop, Some(telemetry.clone())).map_err(|e| bad(e.to_string()))?;
            let addr = serve::start(&listen, telemetry.clone()).map_err(|e| bad(e.to_string()))?;
            eprintln!("vmsentry: serving on http://{addr}");
            eprintln!("vmsentry: capturing on {}", cfg.interface);
            let sink = events_sink(&events)?;
            let opts = pipeline::Options {
                threads: threads_or_cores(threads),
                speed: None,
                progress: false,
                rtt_samples,
                vm_windows,
                live: true,
                telemetry: Some(telemetry),
                reload: Some(reload),
            };
            match pipeline::run(&mut source, &rules, Box::new(LogSink::stderr()), sink, &opts) {
                Ok(_) => {}
                // An [[ids]] file whose directory is missing: the rules' fault.
                Err(e @ PipelineError::Ids { .. }) => return Err(bad(e.to_string())),
                Err(e) => return Err(e.into()),
            }
            eprintln!("vmsentry: stopped");
            Ok(())
        }
        Command::Sense {
            nats,
            sensor,
            rules,
            cluster,
            spool,
            spool_mb,
            interface,
            bpf,
            threads,
            speed,
            listen,
            pcaps,
        } => {
            let rules = load_rules(&rules)?;
            let cluster =
                vmsentry::cluster::Cluster::load(&rules, cluster.as_deref()).map_err(|e| bad(e.to_string()))?;
            if cluster.sensor_index(&sensor).is_none() {
                return Err(bad(format!("--sensor {sensor}: not in the cluster file's [[sensor]] list")));
            }
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [SIGINT, SIGTERM] {
                signal_hook::flag::register(sig, stop.clone()).context("cannot handle signals")?;
            }
            let telemetry = match &listen {
                Some(_) => Some(Telemetry::new(rules.limits.metrics_vms)),
                None => None,
            };
            let mut source: Box<dyn PacketSource> = match &interface {
                Some(iface) => {
                    let cfg = LiveConfig {
                        interface: iface.clone(),
                        bpf,
                        snaplen: 512,
                        buffer_bytes: 64 * 1024 * 1024,
                        promisc: true,
                    };
                    Box::new(
                        LiveSource::open(
                            &cfg,
                            stop.clone(),
                            telemetry.clone().map(|t| t as Arc<dyn vmsentry::capture::live::Observer>),
                        )
                        .map_err(|e| bad(e.to_string()))?,
                    )
                }
                None => Box::new(FileList::open(&pcaps).map_err(|e| match e {
                    CaptureError::Open { .. } | CaptureError::Setup(_) => bad(e.to_string()),
                    other => anyhow::Error::new(other),
                })?),
            };
            if let (Some(l), Some(t)) = (&listen, &telemetry) {
                let addr = serve::start(l, t.clone()).map_err(|e| bad(e.to_string()))?;
                eprintln!("vmsentry: serving on http://{addr}");
            }
            let popts = pipeline::Options {
                threads: threads_or_cores(threads),
                speed,
                progress: false,
                rtt_samples: false,
                vm_windows: false,
                live: interface.is_some(),
                telemetry,
                reload: None,
            };
            let sopts = vmsentry::cluster::sense::SenseOptions {
                spool_dir: spool.unwrap_or_else(|| Path::new("/var/lib/vmsentry/spool").join(&sensor)),
                sensor,
                nats,
                spool_bytes: spool_mb.saturating_mul(1 << 20),
                stop,
            };
            let s = vmsentry::cluster::sense::run(source.as_mut(), &rules, &cluster, &popts, &sopts)?;
            eprintln!(
                "vmsentry: sense: {} windows, {} published ({} bytes), {} frames owned by other sensors, {} dropped, {} left in the spool",
                s.windows, s.published, s.published_bytes, s.not_owned, s.spool_dropped, s.left
            );
            Ok(())
        }
        Command::Control { nats, id, rules, cluster, events, listen, until_end, rtt_samples, vm_windows } => {
            let rules = load_rules(&rules)?;
            let cluster =
                vmsentry::cluster::Cluster::load(&rules, cluster.as_deref()).map_err(|e| bad(e.to_string()))?;
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [SIGINT, SIGTERM] {
                signal_hook::flag::register(sig, stop.clone()).context("cannot handle signals")?;
            }
            let reload = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(SIGHUP, reload.clone()).context("cannot handle SIGHUP")?;
            let telemetry = match &listen {
                Some(l) => {
                    let t = Telemetry::new(rules.limits.metrics_vms);
                    let addr = serve::start(l, t.clone()).map_err(|e| bad(e.to_string()))?;
                    eprintln!("vmsentry: serving on http://{addr}");
                    Some(t)
                }
                None => None,
            };
            let sink = events_sink(&events)?;
            let popts = pipeline::Options {
                threads: 1,
                speed: None,
                progress: false,
                rtt_samples,
                vm_windows,
                live: !until_end,
                telemetry,
                reload: Some(reload),
            };
            let copts = vmsentry::cluster::control::ControlOptions { controller: id, nats, stop, until_end };
            match vmsentry::cluster::control::run(&rules, &cluster, sink, &popts, &copts) {
                Ok(_) => Ok(()),
                Err(vmsentry::cluster::control::ControlError::Pipeline(e @ PipelineError::Ids { .. })) => {
                    Err(bad(e.to_string()))
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Replay { rules, events, threads, speed, listen, no_progress, rtt_samples, vm_windows, pcaps } => {
            let rules = load_rules(&rules)?;
            let reload = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(SIGHUP, reload.clone()).context("cannot handle SIGHUP")?;
            let telemetry = match listen {
                Some(l) => {
                    let t = Telemetry::new(rules.limits.metrics_vms);
                    let addr = serve::start(&l, t.clone()).map_err(|e| bad(e.to_string()))?;
                    eprintln!("vmsentry: serving on http://{addr}");
                    Some(t)
                }
                None => None,
            };
            let mut source = FileList::open(&pcaps).map_err(|e| match e {
                CaptureError::Open { .. } | CaptureError::Setup(_) => bad(e.to_string()),
                other => anyhow::Error::new(other),
            })?;
            let sink: Box<dyn EventSink> = if events == "-" {
                Box::new(JsonLines(std::io::BufWriter::with_capacity(1 << 16, std::io::stdout())))
            } else {
                let f =
                    std::fs::File::create(&events).with_context(|| format!("cannot create events file {events}"))?;
                Box::new(JsonLines(std::io::BufWriter::with_capacity(1 << 16, f)))
            };
            let threads = threads_or_cores(threads);
            // A progress bar only where a person watches and the replay is long.
            let long = source.total_bytes().unwrap_or(0) > 64 << 20;
            let opts = pipeline::Options {
                threads,
                speed,
                progress: !no_progress && long && std::io::stderr().is_terminal(),
                rtt_samples,
                vm_windows,
                live: false,
                telemetry,
                reload: Some(reload),
            };
            match pipeline::run(&mut source, &rules, Box::new(LogSink::stderr()), sink, &opts) {
                Ok(_) => Ok(()),
                Err(PipelineError::Capture(e @ CaptureError::Open { .. })) => Err(bad(e.to_string())),
                Err(e) => Err(e.into()),
            }
        }
    }
}

fn events_sink(events: &str) -> anyhow::Result<Box<dyn EventSink>> {
    Ok(if events == "-" {
        Box::new(JsonLines(std::io::BufWriter::with_capacity(1 << 16, std::io::stdout())))
    } else {
        let f = std::fs::File::create(events).with_context(|| format!("cannot create events file {events}"))?;
        Box::new(JsonLines(std::io::BufWriter::with_capacity(1 << 16, f)))
    })
}

fn threads_or_cores(threads: Option<usize>) -> usize {
    // The default stays within the range `--threads` accepts.
    threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).clamp(1, cli::MAX_THREADS)
}

fn report(events: &Path, out: &Path, rules: Option<&Path>, qemu: Option<&Path>) -> anyhow::Result<()> {
    // Thresholds come from the rules when given; a report of someone else's
    // events needs none.
    let lines = match rules {
        Some(dir) => vmsentry::report::Lines::from_rules(&load_rules(dir)?),
        None => vmsentry::report::Lines::default(),
    };
    let written = vmsentry::report::write(events, out, &lines, qemu).map_err(|e| match e {
        vmsentry::report::ReportError::Write { .. } => anyhow::Error::new(e),
        other => bad(other.to_string()),
    })?;
    for n in &written.notes {
        eprintln!("vmsentry: note: {n}");
    }
    eprintln!("vmsentry: report written to {}", written.page.display());
    Ok(())
}

fn check(dir: &Path) -> anyhow::Result<()> {
    let rules = load_rules(dir)?;
    let registry = Registry::build(&rules.key, &rules.cluster, &rules.hypervisors);
    let mut signed = 0;
    for (h, e) in rules.hypervisors.iter().zip(registry.entries()) {
        if h.signature.is_none() {
            eprintln!("warning: hypervisor `{}` has no signature: it is unsigned", h.id);
            continue;
        }
        if h.macs.is_empty() {
            eprintln!("warning: hypervisor `{}` lists no MACs, so its signature cannot verify: it is unsigned", h.id);
            continue;
        }
        for (mac, ok) in &e.macs {
            if !ok {
                eprintln!(
                    "warning: hypervisor `{}`: signature does not verify for MAC {mac}: it is unsigned for that MAC",
                    h.id
                );
            }
        }
        if e.verdict() == Verdict::Valid {
            signed += 1;
        }
    }
    for w in rules.warnings() {
        eprintln!("warning: {w}");
    }
    // The verdict on stdout (for scripts); warnings stay on stderr.
    println!(
        "{}: OK: cluster `{}`, {} hypervisors ({} signed), {} VMs",
        dir.join(vmsentry::config::RULES_FILE).display(),
        rules.cluster,
        rules.hypervisors.len(),
        signed,
        rules.vms.len()
    );
    Ok(())
}
