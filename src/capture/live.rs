//! A live interface through libpcap: promiscuous, immediate mode, a BPF filter, drop counters.

use super::{CaptureError, PacketSource, RawPacket, SourceItem, SourceStats};
use crate::vocab::PacketTime;
use pcap::{Active, Capture};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the capture wakes when idle, and hands the pipeline a tick.
const IDLE_TIMEOUT_MS: i32 = 100;
/// How often libpcap's counters are read and published.
const STATS_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct LiveConfig {
    pub interface: String,
    /// A filter in tcpdump's syntax.
    pub bpf: Option<String>,
    pub snaplen: i32,
    /// The kernel's capture buffer.
    pub buffer_bytes: i32,
    pub promisc: bool,
}

/// What a live capture reports. The telemetry
/// ([`serve::Telemetry`](crate::serve::Telemetry)) implements it, so the
/// capture knows no metric.
pub trait Observer: Send + Sync {
    /// The capture is running (readiness), or has stopped.
    fn set_ready(&self, ready: bool);
    /// Frames libpcap received, and dropped in the kernel and at the
    /// interface, since the last call.
    fn libpcap_counts(&self, received: u64, kernel_dropped: u64, interface_dropped: u64);
}

pub struct LiveSource {
    cap: Capture<Active>,
    linktype: i32,
    stop: Arc<AtomicBool>,
    telemetry: Option<Arc<dyn Observer>>,
    published: pcap::Stat,
    stats: SourceStats,
    interface: String,
}

impl LiveSource {
    /// Opens the interface and applies the filter. A missing interface, a
    /// missing permission or a bad filter is a [`CaptureError::Setup`].
    pub fn open(
        cfg: &LiveConfig,
        stop: Arc<AtomicBool>,
        telemetry: Option<Arc<dyn Observer>>,
    ) -> Result<LiveSource, CaptureError> {
        let setup = |what: &str, e: pcap::Error| CaptureError::Setup(format!("{}: {what}: {e}", cfg.interface));
        let inactive = Capture::from_device(cfg.interface.as_str()).map_err(|e| setup("no such interface", e))?;
        let mut cap = inactive
            .promisc(cfg.promisc)
            .immediate_mode(true)
            .snaplen(cfg.snaplen)
            .buffer_size(cfg.buffer_bytes)
            .timeout(IDLE_TIMEOUT_MS)
            .open()
            .map_err(|e| {
                let text = e.to_string();
                let hint = if text.contains("ermission") || text.contains("not permitted") {
                    " (run as root, or give the binary CAP_NET_RAW: `setcap cap_net_raw,cap_net_admin=eip vmsentry`)"
                } else {
                    ""
                };
                CaptureError::Setup(format!("{}: cannot capture: {e}{hint}", cfg.interface))
            })?;
        if let Some(f) = &cfg.bpf {
            cap.filter(f, true).map_err(|e| CaptureError::Setup(format!("bad --bpf filter `{f}`: {e}")))?;
        }
        let linktype = cap.get_datalink().0;
        Ok(LiveSource {
            cap,
            linktype,
            stop,
            telemetry,
            published: pcap::Stat { received: 0, dropped: 0, if_dropped: 0 },
            stats: SourceStats::default(),
            interface: cfg.interface.clone(),
        })
    }

    /// Publishes what libpcap counted since the last call.
    fn publish_stats(&mut self) {
        let Ok(now) = self.cap.stats() else { return };
        if let Some(t) = &self.telemetry {
            t.libpcap_counts(
                u64::from(now.received.saturating_sub(self.published.received)),
                u64::from(now.dropped.saturating_sub(self.published.dropped)),
                u64::from(now.if_dropped.saturating_sub(self.published.if_dropped)),
            );
        }
        self.published = now;
    }
}

fn wall_now() -> PacketTime {
    PacketTime::now()
}

/// Wakes the capture when it should stop, and when no frame came for a
/// while (so idle windows close): libpcap may block in poll() with no
/// timeout (TPACKET_V3 ignores it), and `pcap_breakloop` wakes it.
fn spawn_waker(brk: pcap::BreakLoop, stop: Arc<AtomicBool>, seen: Arc<AtomicU64>, done: Arc<AtomicBool>) {
    let _ = std::thread::Builder::new().name("vmsentry-capture-waker".into()).spawn(move || {
        let mut last = seen.load(Ordering::Relaxed);
        while !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(IDLE_TIMEOUT_MS as u64));
            let now = seen.load(Ordering::Relaxed);
            if stop.load(Ordering::Relaxed) || now == last {
                brk.breakloop();
            }
            last = now;
        }
    });
}

impl PacketSource for LiveSource {
    fn run(&mut self, each: &mut dyn FnMut(SourceItem<'_>) -> ControlFlow<()>) -> Result<(), CaptureError> {
        if let Some(t) = &self.telemetry {
            t.set_ready(true);
        }
        let seen = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        spawn_waker(self.cap.breakloop_handle(), self.stop.clone(), seen.clone(), done.clone());
        let result = self.capture(each, &seen);
        done.store(true, Ordering::Relaxed);
        self.publish_stats();
        // The kernel's counters once more at the end, for whoever runs it
        // without metrics (benches/live-trafgen.sh reads this line).
        let st = self.published;
        eprintln!(
            "vmsentry: capture on {}: {} frames received, {} dropped by the kernel, {} by the interface (libpcap's counters)",
            self.interface, st.received, st.dropped, st.if_dropped
        );
        if let Some(t) = &self.telemetry {
            t.set_ready(false);
        }
        result
    }

    fn stats(&self) -> SourceStats {
        self.stats
    }
}

impl LiveSource {
    fn capture(
        &mut self,
        each: &mut dyn FnMut(SourceItem<'_>) -> ControlFlow<()>,
        seen: &AtomicU64,
    ) -> Result<(), CaptureError> {
        let mut last_stats = Instant::now();
        let linktype = self.linktype;
        let mut n: u32 = 0;
        // Frames and ticks so far, published for the waker on every one: it
        // must see traffic at any rate (a plain store, no lock; the waker reads
        // it every 100 ms, so the cache line moves ten times a second).
        let mut items: u64 = 0;
        loop {
            n = n.wrapping_add(1);
            // The flag and the clock are read every 256 frames, and on every idle timeout.
            let check = n % 256 == 0;
            if check && self.stop.load(Ordering::Relaxed) {
                break;
            }
            items += 1;
            let flow = match self.cap.next_packet() {
                Ok(pkt) => {
                    let raw = RawPacket::from_pcap(&pkt, linktype);
                    seen.store(items, Ordering::Relaxed);
                    each(SourceItem::Packet(raw))
                }
                // Idle, or woken by the waker (libpcap reports a break as no more packets).
                Err(pcap::Error::TimeoutExpired) | Err(pcap::Error::NoMorePackets) => {
                    n = 255;
                    seen.store(items, Ordering::Relaxed);
                    each(SourceItem::Tick(wall_now()))
                }
                Err(e) => return Err(CaptureError::Read { path: "live".into(), msg: e.to_string() }),
            };
            if flow.is_break() {
                break;
            }
            if check && last_stats.elapsed() >= STATS_EVERY {
                last_stats = Instant::now();
                self.publish_stats();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    /// Root is needed to capture; under CI=true the test must run.
    fn can_capture() -> bool {
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        if !root && std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true but not root: the live capture test cannot run");
        }
        root
    }

    #[test]
    fn slow_steady_traffic_is_not_interrupted_by_idle_ticks() {
        if !can_capture() {
            eprintln!("SKIPPED: capturing needs root");
            return;
        }
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = rx.local_addr().unwrap().port();
        let cfg = LiveConfig {
            interface: "lo".into(),
            bpf: Some(format!("udp dst port {port}")),
            snaplen: 128,
            buffer_bytes: 1 << 20,
            promisc: false,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mut src = LiveSource::open(&cfg, stop.clone(), None).unwrap();
        // 200 frames/s for 3 s: far below the 256 frames per 100 ms the waker used to need.
        let sender = std::thread::spawn(move || {
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            std::thread::sleep(Duration::from_millis(300));
            for _ in 0..600 {
                tx.send_to(b"x", ("127.0.0.1", port)).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(300));
            stop.store(true, Ordering::Relaxed);
        });
        // Each item: a frame (its packet time) or a tick (None), and when the
        // capture handed it over.
        let mut items: Vec<(Option<i64>, Instant)> = Vec::new();
        src.run(&mut |item| {
            match item {
                SourceItem::Packet(p) => items.push((Some(p.ts.as_micros()), Instant::now())),
                SourceItem::Tick(_) => items.push((None, Instant::now())),
                SourceItem::Input(_) => {}
            }
            ControlFlow::Continue(())
        })
        .unwrap();
        sender.join().unwrap();
        let first = items.iter().position(|i| i.0.is_some()).unwrap();
        let last = items.iter().rposition(|i| i.0.is_some()).unwrap();
        assert_eq!(items.iter().filter(|i| i.0.is_some()).count(), 600);
        // A tick while frames flow is right only after a real pause of 100 ms
        // with no frame handed over: the sender stalled, or this thread was not
        // scheduled (a busy machine; then the frames the kernel held meanwhile
        // may come first, and the tick just after them). So each such tick needs
        // a pause between two handovers since the last tick: of 50 ms or more,
        // not 100, since a loaded machine can deschedule this thread between a
        // frame's handover and its `Instant::now()` (it failed twice at 90 ms).
        // The old waker broke the loop every ~200 ms while frames came every 5 ms.
        let mut before: Option<Instant> = None;
        let mut paused = false;
        let mut unexplained = 0;
        for (t, at) in &items[first..=last] {
            if let Some(b) = before {
                paused |= at.duration_since(b) >= Duration::from_millis(50);
            }
            before = Some(*at);
            if t.is_none() {
                unexplained += usize::from(!paused);
                paused = false;
            }
        }
        // The old waker broke the loop about 7 times in 1.5 s, so about 14 in
        // these 3 s. Three ticks with no visible pause are allowed: with the
        // other unit tests (or a build) running beside it, this thread can be
        // kept off the core between the waker's check and its next handover
        // (seen once, twice, and once 3 times in 1.5 s on a loaded machine).
        assert!(
            unexplained <= 3,
            "{unexplained} ticks with no pause of 50 ms before them: the loop broke while frames flowed"
        );
        assert!(items[last..].iter().any(|i| i.0.is_none()), "idle again: ticks resume");
    }
}
