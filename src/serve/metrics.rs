//! The Prometheus metrics, registered once; stages update them per batch or per window, never per packet.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Every metric vmsentry exports (see README's metrics table).
pub struct Metrics {
    pub registry: Registry,
    pub packets: IntCounter,
    pub bytes: IntCounter,
    pub decode_errors: IntCounterVec,
    pub snaplen_cut: IntCounter,
    pub capture_received: IntCounter,
    pub capture_dropped: IntCounterVec,
    pub queue_depth: IntGaugeVec,
    pub windows: IntCounter,
    pub late_frames: IntCounter,
    pub vm_level: IntGaugeVec,
    pub vm_rate_bytes: prometheus::GaugeVec,
    pub vm_rate_packets: prometheus::GaugeVec,
    pub vm_series_capped: IntGauge,
    pub mac_evictions: IntCounter,
    pub rtt: Histogram,
    pub rtt_events: IntCounterVec,
    pub actions: IntCounterVec,
    pub migrations: IntCounterVec,
    pub conflicts: IntCounterVec,
    pub gate_decisions: IntCounterVec,
    pub reloads: IntCounterVec,
    pub ids_alerts: IntCounterVec,
    pub evacuations: IntCounterVec,
    pub build_info: IntGaugeVec,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Only a programming error (a bad name, a duplicate) can make this fail,
    // and every metric is created once at start-up.
    match r {
        Ok(t) => t,
        Err(e) => panic!("metric definition: {e}"),
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = must($m);
                must(registry.register(Box::new(m.clone())));
                m
            }};
        }
        let rtt_buckets: Vec<f64> = crate::measure::histogram::BOUNDS_US.iter().map(|&us| us as f64 / 1e6).collect();
        let m = Metrics {
            packets: reg!(IntCounter::new("vmsentry_packets_total", "Frames read from the capture.")),
            bytes: reg!(IntCounter::new("vmsentry_bytes_total", "Bytes on the wire (original frame length) read.")),
            decode_errors: reg!(IntCounterVec::new(
                Opts::new("vmsentry_decode_errors_total", "Malformed frames, by the layer that was malformed."),
                &["kind"]
            )),
            snaplen_cut: reg!(IntCounter::new(
                "vmsentry_snaplen_cut_total",
                "Frames cut by the snaplen inside a header (normal, not errors)."
            )),
            capture_received: reg!(IntCounter::new(
                "vmsentry_capture_received_packets_total",
                "Frames libpcap says the kernel passed to the capture (live only)."
            )),
            capture_dropped: reg!(IntCounterVec::new(
                Opts::new(
                    "vmsentry_capture_dropped_packets_total",
                    "Frames lost: by the kernel's buffer, by the interface, or by vmsentry's own full queues."
                ),
                &["where"]
            )),
            queue_depth: reg!(IntGaugeVec::new(
                Opts::new("vmsentry_queue_depth", "Items waiting in a bounded queue."),
                &["queue"]
            )),
            windows: reg!(IntCounter::new("vmsentry_windows_total", "Windows closed.")),
            late_frames: reg!(IntCounter::new(
                "vmsentry_late_frames_total",
                "Frames that came after packet time went backwards past the open window: not measured."
            )),
            vm_level: reg!(IntGaugeVec::new(
                Opts::new("vmsentry_vm_level", "Each inventory VM's level: 0 LOW, 1 MEDIUM, 2 HIGH."),
                &["vm", "name"]
            )),
            vm_rate_bytes: reg!(prometheus::GaugeVec::new(
                Opts::new("vmsentry_vm_rate_bytes_per_second", "Each inventory VM's rate in the last window."),
                &["vm", "name", "direction"]
            )),
            vm_rate_packets: reg!(prometheus::GaugeVec::new(
                Opts::new("vmsentry_vm_rate_packets_per_second", "Each inventory VM's packet rate in the last window."),
                &["vm", "name", "direction"]
            )),
            vm_series_capped: reg!(IntGauge::new(
                "vmsentry_vm_series_capped",
                "Inventory VMs left out of the per-VM series (limits.metrics_vms)."
            )),
            mac_evictions: reg!(IntCounter::new(
                "vmsentry_mac_evictions_total",
                "MACs evicted from the bounded MAC table."
            )),
            rtt: reg!(Histogram::with_opts(
                HistogramOpts::new("vmsentry_rtt_seconds", "RTT samples, all VMs.").buckets(rtt_buckets)
            )),
            rtt_events: reg!(IntCounterVec::new(
                Opts::new(
                    "vmsentry_rtt_state_events_total",
                    "Bounded RTT state: flows evicted, probes evicted or timed out, samples dropped."
                ),
                &["event"]
            )),
            actions: reg!(IntCounterVec::new(
                Opts::new(
                    "vmsentry_actions_total",
                    "Actions by kind and outcome (queued, dropped, delivered, failed)."
                ),
                &["action", "outcome"]
            )),
            migrations: reg!(IntCounterVec::new(
                Opts::new("vmsentry_migrations_total", "Moves seen on the wire, by the destination's signature."),
                &["signature"]
            )),
            conflicts: reg!(IntCounterVec::new(
                Opts::new("vmsentry_conflicts_total", "Registry conflicts seen on the wire, by kind."),
                &["kind"]
            )),
            gate_decisions: reg!(IntCounterVec::new(
                Opts::new(
                    "vmsentry_gate_decisions_total",
                    "Migration-gate decisions read from migration.gate_decisions, by outcome (allowed, denied; rejected: malformed, or a MAC that does not verify, or an unregistered host)."
                ),
                &["outcome"]
            )),
            reloads: reg!(IntCounterVec::new(
                Opts::new("vmsentry_rules_reloads_total", "Rules reloads, by result (ok, error)."),
                &["result"]
            )),
            ids_alerts: reg!(IntCounterVec::new(
                Opts::new(
                    "vmsentry_ids_alerts_total",
                    "IDS alert lines, by outcome (evacuated, unmapped, filtered, malformed, outside_replay)."
                ),
                &["outcome"]
            )),
            evacuations: reg!(IntCounterVec::new(
                Opts::new("vmsentry_evacuations_total", "Evacuation plans made, by trigger (ids, host_high)."),
                &["trigger"]
            )),
            build_info: reg!(IntGaugeVec::new(
                Opts::new("vmsentry_build_info", "Always 1; the labels say which build runs."),
                &["version"]
            )),
            registry,
        };
        m.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for k in crate::decode::DecodeErrorKind::ALL {
            m.decode_errors.with_label_values(&[k.as_str()]);
        }
        for w in ["kernel", "interface", "queue"] {
            m.capture_dropped.with_label_values(&[w]);
        }
        for r in ["ok", "error"] {
            m.reloads.with_label_values(&[r]);
        }
        // Fixed label sets exist from the start, so zero reads as zero, not absent.
        for a in ["alert", "quarantine", "migrate"] {
            for o in ["queued", "dropped", "duplicate", "not_journaled", "held", "delivered", "failed"] {
                m.actions.with_label_values(&[a, o]);
            }
        }
        for v in ["valid", "invalid", "unknown"] {
            m.migrations.with_label_values(&[v]);
        }
        for k in ["clone", "hypervisor_ips", "vm_uses_hypervisor_mac"] {
            m.conflicts.with_label_values(&[k]);
        }
        for o in ["allowed", "denied", "rejected"] {
            m.gate_decisions.with_label_values(&[o]);
        }
        for o in ["evacuated", "unmapped", "filtered", "malformed", "outside_replay"] {
            m.ids_alerts.with_label_values(&[o]);
        }
        for t in ["ids", "host_high"] {
            m.evacuations.with_label_values(&[t]);
        }
        for e in ["flow_evicted", "probe_evicted", "probe_timed_out"] {
            m.rtt_events.with_label_values(&[e]);
        }
        m.queue_depth.with_label_values(&["actions"]);
        m
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let enc = prometheus::TextEncoder::new();
        if let Err(e) = enc.encode_utf8(&self.registry.gather(), &mut out) {
            out = format!("# encoding failed: {e}\n");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
