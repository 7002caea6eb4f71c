//! The command line: `replay`, `live`, `report`, `check`, `sign`, `authorize`, `gate`, `sense`, `control` (README "Commands").

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "vmsentry", version, about = "Packet-level traffic anomaly monitor for virtualized clouds")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Replay pcap/pcapng files through the pipeline, in order.
    Replay {
        /// Rules directory (holds vmsentry.toml).
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
        /// Where events go, as JSON lines; `-` is stdout.
        #[arg(long, default_value = "-")]
        events: String,
        /// Shard workers, 1 to 1024; default: the number of cores.
        #[arg(long, value_parser = parse_threads)]
        threads: Option<usize>,
        /// Pace the replay at X times packet time (1 = real time); default: as fast as possible.
        #[arg(long, value_parser = parse_speed)]
        speed: Option<f64>,
        /// Serve metrics and the API on ADDR (e.g. 127.0.0.1:9807) while replaying.
        #[arg(long)]
        listen: Option<String>,
        /// Never draw a progress bar.
        #[arg(long)]
        no_progress: bool,
        /// Also write every RTT sample as an `rtt_sample` event.
        #[arg(long)]
        rtt_samples: bool,
        /// Also write each VM's rates and RTT of each window as a `vm_window` event (what `report` draws).
        #[arg(long)]
        vm_windows: bool,
        #[arg(required = true, value_name = "PCAP")]
        pcaps: Vec<PathBuf>,
    },
    /// Capture on an interface (a mirror port) and run until SIGINT or SIGTERM.
    Live {
        /// The interface to capture on.
        #[arg(long)]
        interface: String,
        /// A capture filter in tcpdump's syntax.
        #[arg(long)]
        bpf: Option<String>,
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
        #[arg(long, default_value = "-")]
        events: String,
        /// Serve metrics and the API here; a non-loopback address only when given.
        #[arg(long, default_value = "127.0.0.1:9807")]
        listen: String,
        /// Shard workers, 1 to 1024; default: the number of cores.
        #[arg(long, value_parser = parse_threads)]
        threads: Option<usize>,
        /// Bytes captured per frame, 64 to 262144 (headers are what vmsentry reads).
        #[arg(long, default_value_t = 512, value_parser = parse_snaplen, allow_negative_numbers = true)]
        snaplen: i32,
        /// The kernel's capture buffer, in MiB, 1 to 2047.
        #[arg(long, default_value_t = 64, value_parser = parse_buffer_mb, allow_negative_numbers = true)]
        buffer_mb: i32,
        /// Do not put the interface in promiscuous mode.
        #[arg(long)]
        no_promisc: bool,
        /// Also write every RTT sample as an `rtt_sample` event.
        #[arg(long)]
        rtt_samples: bool,
        /// Also write each VM's rates and RTT of each window as a `vm_window` event.
        #[arg(long)]
        vm_windows: bool,
    },
    /// Write an HTML page with SVG charts of an events file: levels, rates, RTT, migrations, actions.
    Report {
        /// The events (JSON lines) of a replay or live run.
        #[arg(value_name = "EVENTS")]
        events: PathBuf,
        /// The directory to write index.html and the charts to.
        #[arg(long)]
        out: PathBuf,
        /// Rules directory, for the thresholds drawn on the charts (none drawn without it).
        #[arg(long)]
        rules: Option<PathBuf>,
        /// QEMU's own figures per migration (JSON lines of type `qemu_migration`), drawn beside the wire's.
        #[arg(long)]
        qemu_stats: Option<PathBuf>,
    },
    /// Validate the rules and check every hypervisor's signature.
    Check {
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
    },
    /// Print a token that authorizes one move of a VM to a hypervisor, once, until it expires.
    Authorize {
        #[arg(long)]
        key_file: PathBuf,
        /// The VM's MAC.
        #[arg(long)]
        vm: String,
        /// The destination: its registry id (or its MAC if it is not registered).
        #[arg(long)]
        to: String,
        /// How long it is valid, e.g. `10m`, `2h`, `7days`.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// A fixed nonce (16+ hex digits) instead of a random one; for tests.
        #[arg(long, hide = true)]
        nonce: Option<String>,
    },
    /// libvirt's `qemu` hook: refuse a live migration to this host unless it is signed (and the move authorized).
    ///
    /// No help flag: a domain may be named `--help` or `-h` (`vmsentry help gate` prints this).
    #[command(disable_help_flag = true)]
    Gate {
        /// The gate's configuration.
        #[arg(long, default_value = vmsentry::gate::DEFAULT_CONFIG)]
        config: PathBuf,
        /// DOMAIN OPERATION SUB_OPERATION EXTRA, as libvirt passes them. Anything
        /// but `migrate begin` exits 0 untouched, however many arguments come.
        #[arg(value_name = "ARGS", allow_hyphen_values = true, trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Many mirror ports: a sensor. Captures (or replays) its rack's frames and
    /// publishes per-window partials to NATS JetStream for `vmsentry control`.
    Sense {
        /// The NATS server(s), e.g. nats://127.0.0.1:4222 (comma-separated for a cluster).
        #[arg(long)]
        nats: String,
        /// This sensor's id, as in cluster.toml's [[sensor]] list.
        #[arg(long)]
        sensor: String,
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
        /// The cluster file; default: cluster.toml in the rules directory.
        #[arg(long)]
        cluster: Option<PathBuf>,
        /// Where partials wait for NATS (created if missing); default /var/lib/vmsentry/spool/SENSOR.
        #[arg(long)]
        spool: Option<PathBuf>,
        /// The most the spool may hold, in MiB; past it, partials are dropped and counted.
        #[arg(long, default_value_t = 256)]
        spool_mb: u64,
        /// Capture on this interface (a mirror port) instead of replaying files.
        #[arg(long, conflicts_with = "pcaps")]
        interface: Option<String>,
        /// A capture filter in tcpdump's syntax (live only).
        #[arg(long)]
        bpf: Option<String>,
        #[arg(long, value_parser = parse_threads)]
        threads: Option<usize>,
        /// Pace a replay at X times packet time.
        #[arg(long, value_parser = parse_speed)]
        speed: Option<f64>,
        /// Serve metrics on ADDR.
        #[arg(long)]
        listen: Option<String>,
        #[arg(value_name = "PCAP", required_unless_present = "interface")]
        pcaps: Vec<PathBuf>,
    },
    /// Many mirror ports: the cluster's controller. Merges every sensor's
    /// partials from NATS JetStream, then detects, decides and acts (while it holds the lease).
    Control {
        #[arg(long)]
        nats: String,
        /// This controller's id (unique among the cluster's controllers).
        #[arg(long)]
        id: String,
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
        #[arg(long)]
        cluster: Option<PathBuf>,
        #[arg(long, default_value = "-")]
        events: String,
        /// Serve metrics and the API on ADDR.
        #[arg(long)]
        listen: Option<String>,
        /// The sensors replay captures: IDS alert and gate decision files are
        /// read whole and replayed in packet time (as `replay` does), and the
        /// controller exits once every sensor has ended or is down.
        #[arg(long)]
        until_end: bool,
        #[arg(long)]
        rtt_samples: bool,
        #[arg(long)]
        vm_windows: bool,
    },
    /// Print the signature of a hypervisor (HMAC-SHA256 with the cluster key).
    Sign {
        #[arg(long)]
        key_file: PathBuf,
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        id: String,
        #[arg(long)]
        mac: String,
    },
}

fn parse_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a positive number")),
    }
}

/// Shard workers: at least one, and no more than threads are worth starting.
pub const MAX_THREADS: usize = 1024;
/// The smallest snaplen that holds the headers vmsentry reads; the largest is libpcap's.
pub const SNAPLEN_RANGE: std::ops::RangeInclusive<i32> = 64..=262_144;
/// The kernel's capture buffer in MiB (its size in bytes must fit an i32).
pub const BUFFER_MB_RANGE: std::ops::RangeInclusive<i32> = 1..=2047;

fn in_range<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
    s: &str,
    range: std::ops::RangeInclusive<T>,
    what: &str,
) -> Result<T, String> {
    match s.trim().parse::<T>() {
        Ok(v) if range.contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not {what} from {} to {}", range.start(), range.end())),
    }
}

fn parse_threads(s: &str) -> Result<usize, String> {
    in_range(s, 1..=MAX_THREADS, "a number of threads")
}

fn parse_snaplen(s: &str) -> Result<i32, String> {
    in_range(s, SNAPLEN_RANGE, "a snaplen in bytes")
}

fn parse_buffer_mb(s: &str) -> Result<i32, String> {
    in_range(s, BUFFER_MB_RANGE, "a buffer size in MiB")
}
