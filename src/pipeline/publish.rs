//! Publishing at the merge: events to the sink, and each window's metrics and API views to the telemetry.

use super::DecodeCounts;
use crate::decode::DecodeErrorKind;
use crate::detect::{Detector, Level, Settled};
use crate::event::{Event, EventSink, VmWindowEvent};
use crate::measure::rtt::{RttCounts, RttSample};
use crate::serve::{HypervisorMac, HypervisorView, Telemetry, VmView};
use crate::vocab::PacketTime;
use std::collections::VecDeque;
use std::sync::Arc;

/// What the merge has counted for the run's summary.
#[derive(Default)]
pub(super) struct Counts {
    pub(super) queued: u64,
    pub(super) dropped: u64,
    pub(super) held: u64,
    pub(super) shard_overflow: u64,
    pub(super) decode: DecodeCounts,
    pub(super) rtt_counts: RttCounts,
    pub(super) rtt_samples: u64,
    pub(super) rtt_dropped: u64,
    pub(super) io_error: Option<std::io::Error>,
}

/// Where the merge's results go: the events sink (after the first write
/// error, nothing more is written and the error is kept), the telemetry,
/// and what the run counts.
///
/// A `migration` event whose move is still open (see [`Settled`]) is held
/// back, and every event after it with it, until the move is settled:
/// the events stay in packet-time order and each is written once, whole.
/// Only the writing waits; what the events report (actions, levels) was
/// done when they were made.
pub(super) struct Publish {
    pub events: Box<dyn EventSink>,
    pub telemetry: Option<Arc<Telemetry>>,
    /// Write each RTT sample as an event.
    pub rtt_samples: bool,
    /// Write each VM's rates of each window as an event.
    pub vm_windows: bool,
    pub counts: Counts,
    /// Events held back behind open moves, in order; an open move's event has its id.
    pub held: VecDeque<(Event, Option<u64>)>,
}

impl Publish {
    /// Writes an event (or holds it behind an open move's); after the
    /// first write error, stops writing and keeps the error.
    pub(super) fn emit(&mut self, ev: &Event) {
        if self.held.is_empty() {
            self.write(ev);
        } else {
            self.held.push_back((ev.clone(), None));
        }
    }

    /// Holds the `migration` event of move `id`, open, until it is settled.
    pub(super) fn emit_open(&mut self, ev: &Event, id: u64) {
        self.held.push_back((ev.clone(), Some(id)));
    }

    /// Completes the held event of a settled move, then writes what no open move holds back any more.
    pub(super) fn settle(&mut self, s: &Settled) {
        if let Some((Event::Migration(m), open)) = self.held.iter_mut().find(|(_, id)| *id == Some(s.id)) {
            m.settle(s);
            *open = None;
        }
        while self.held.front().is_some_and(|(_, id)| id.is_none()) {
            if let Some((ev, _)) = self.held.pop_front() {
                self.write(&ev);
            }
        }
    }

    /// Writes everything held (the input ended and every move was settled).
    pub(super) fn release(&mut self) {
        while let Some((ev, _)) = self.held.pop_front() {
            self.write(&ev);
        }
    }

    fn write(&mut self, ev: &Event) {
        if self.counts.io_error.is_none() {
            if let Err(e) = self.events.emit(ev) {
                self.counts.io_error = Some(e);
            }
        }
    }

    /// Makes what was written readable (tail -f on a live run).
    pub(super) fn flush(&mut self) {
        if self.counts.io_error.is_none() {
            if let Err(e) = self.events.flush() {
                self.counts.io_error = Some(e);
            }
        }
    }

    /// The window's metrics and the API's views.
    pub(super) fn window(
        &self,
        d: &Detector,
        decode: &DecodeCounts,
        rtt: &RttCounts,
        samples: &[RttSample],
        evicted: u64,
    ) {
        let Some(t) = &self.telemetry else { return };
        let m = &t.metrics;
        m.windows.inc();
        for k in DecodeErrorKind::ALL {
            let n = decode.errors[k as usize];
            if n > 0 {
                m.decode_errors.with_label_values(&[k.as_str()]).inc_by(n);
            }
        }
        m.snaplen_cut.inc_by(decode.snaplen_cut);
        m.mac_evictions.inc_by(evicted);
        for s in samples {
            m.rtt.observe(s.rtt_us as f64 / 1e6);
        }
        for (event, n) in [
            ("flow_evicted", rtt.flow_evictions),
            ("probe_evicted", rtt.probe_evictions),
            ("probe_timed_out", rtt.probe_timeouts),
        ] {
            if n > 0 {
                m.rtt_events.with_label_values(&[event]).inc_by(n);
            }
        }
        let registry = d.registry();
        let vms = d.vms();
        let capped = vms.len().saturating_sub(t.metrics_vms);
        m.vm_series_capped.set(capped as i64);
        let mut views = Vec::with_capacity(vms.len());
        for (i, v) in vms.iter().enumerate() {
            let mac = v.mac.to_string();
            if i < t.metrics_vms {
                m.vm_level.with_label_values(&[&mac, &v.name]).set(i64::from(v.level.as_u8()));
                for (dir, (bps, pps)) in [("tx", v.last_rates[0]), ("rx", v.last_rates[1])] {
                    m.vm_rate_bytes.with_label_values(&[&mac, &v.name, dir]).set(bps as f64 / 8.0);
                    m.vm_rate_packets.with_label_values(&[&mac, &v.name, dir]).set(pps as f64);
                }
            }
            views.push(VmView {
                vm: v.mac,
                name: v.name.clone(),
                level: v.level,
                hypervisor: d.hypervisor_name(i),
                signature: d.verdict(i).as_str(),
                tx_bps: v.last_rates[0].0,
                tx_pps: v.last_rates[0].1,
                rx_bps: v.last_rates[1].0,
                rx_pps: v.last_rates[1].1,
                rtt_samples: v.last_rtt.count,
                rtt_mean_ms: v.last_rtt.mean_ms(),
                rtt_p50_ms: v.last_rtt.quantile_ms(0.5),
                rtt_p99_ms: v.last_rtt.quantile_ms(0.99),
                rtt_baseline_ms: v.rtt_baseline_ms,
                last_seen: d.last_seen(v.mac),
            });
        }
        let hypervisors = registry
            .entries()
            .iter()
            .enumerate()
            .map(|(h, e)| HypervisorView {
                id: e.id.clone(),
                macs: e
                    .macs
                    .iter()
                    .map(|&(mac, ok)| HypervisorMac { mac, signature: if ok { "valid" } else { "invalid" } })
                    .collect(),
                ips: e.ips.clone(),
                signature: e.verdict().as_str(),
                vms: d.vms_on(h).len(),
            })
            .collect();
        t.publish(views, hypervisors);
    }

    /// One `vm_window` event per inventory VM that had traffic, RTT samples
    /// or a raised level in the window ending at `end`, by MAC.
    pub(super) fn vm_windows(&mut self, detector: &Detector, end: PacketTime) {
        let mut order: Vec<usize> = (0..detector.vms().len()).collect();
        order.sort_by_key(|&i| detector.vm(i).mac);
        for i in order {
            let v = detector.vm(i);
            let [(tx_bps, tx_pps), (rx_bps, rx_pps)] = v.last_rates;
            if tx_pps == 0 && rx_pps == 0 && v.last_rtt.count == 0 && v.level == Level::Low {
                continue;
            }
            let ev = Event::VmWindow(VmWindowEvent {
                ts: end,
                vm: v.mac,
                vm_name: Some(v.name.clone()),
                level: v.level,
                tx_bps,
                tx_pps,
                rx_bps,
                rx_pps,
                rtt_samples: v.last_rtt.count,
                rtt_p50_ms: v.last_rtt.quantile_ms(0.5),
                rtt_max_ms: v.last_rtt.max_ms(),
                rtt_peaks: v.last_peaks,
                rtt_baseline_ms: v.rtt_baseline_ms,
            });
            self.emit(&ev);
        }
    }
}
