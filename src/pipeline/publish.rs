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
    /// Open moves' events written before they were settled (`limits.held_events`).
    pub(super) written_open: u64,
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
/// done when they were made. At most `max_held` events wait: past it, the
/// oldest open move's event is written as it stands, with what is not
/// known yet null ([`crate::event::MigrationEvent::unsettled`], counted), and what
/// waited behind it follows.
pub(super) struct Publish {
    pub events: Box<dyn EventSink>,
    pub telemetry: Option<Arc<Telemetry>>,
    /// Write each RTT sample as an event.
    pub rtt_samples: bool,
    /// Write each VM's rates of each window as an event.
    pub vm_windows: bool,
    pub counts: Counts,
    /// Events held back behind open moves, in order; an open move's event
    /// has its id and whether its streams were still being chosen.
    pub held: VecDeque<(Event, Option<(u64, bool)>)>,
    /// `limits.held_events`.
    pub max_held: usize,
}

impl Publish {
    /// Writes an event (or holds it behind an open move's); after the
    /// first write error, stops writing and keeps the error.
    pub(super) fn emit(&mut self, ev: &Event) {
        if self.held.is_empty() {
            self.write(ev);
        } else {
            self.held.push_back((ev.clone(), None));
            self.make_room();
        }
    }

    /// Holds the `migration` event of move `id`, open, until it is settled
    /// (`streams_open`: its streams are still being chosen).
    pub(super) fn emit_open(&mut self, ev: &Event, id: u64, streams_open: bool) {
        self.held.push_back((ev.clone(), Some((id, streams_open))));
        self.make_room();
    }

    /// Writes the oldest open move's event unsettled while more than
    /// `max_held` wait, and what no open move holds back any more.
    fn make_room(&mut self) {
        while self.held.len() > self.max_held {
            let Some((mut ev, open)) = self.held.pop_front() else { break };
            if let (Event::Migration(m), Some((_, streams_open))) = (&mut ev, open) {
                m.unsettled(streams_open);
                self.counts.written_open += 1;
            }
            self.write(&ev);
            self.write_unheld();
        }
    }

    /// Completes the held event of a settled move, then writes what no open move holds back any more.
    pub(super) fn settle(&mut self, s: &Settled) {
        // Not there when it was written unsettled already.
        if let Some((Event::Migration(m), open)) =
            self.held.iter_mut().find(|(_, open)| open.is_some_and(|(id, _)| id == s.id))
        {
            m.settle(s);
            *open = None;
        }
        self.write_unheld();
    }

    /// Writes the events at the front that no open move holds back.
    fn write_unheld(&mut self) {
        while self.held.front().is_some_and(|(_, open)| open.is_none()) {
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
    pub(super) fn window<'a>(
        &self,
        d: &Detector,
        decode: &DecodeCounts,
        rtt: &RttCounts,
        samples: impl Iterator<Item = &'a RttSample>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Measured;
    use std::sync::Mutex;

    /// A migration event with its streams' (provisional) figures and a time of responsiveness.
    fn migration(ts: &str) -> Event {
        serde_json::from_str(&format!(
            r#"{{"type":"migration","ts":"{ts}","vm":"fa:16:3e:00:00:03","vm_name":"a","from_hypervisor":"h1",
            "to_hypervisor":"h2","to_mac":null,"to_ip":null,"via":"rarp","signature":"valid","authorized":false,
            "authorization":"missing","streams":1,"bytes":1000,"bytes_per_ram":0.5,"total_ms":10.0,"downtime_ms":5.0,
            "downtime_resolution_ms":1.0,"responsive_ms":2.0,"source_downtime_ms":3.0,"ram_mb":null,"flavor":null}}"#
        ))
        .unwrap()
    }

    fn publish(max_held: usize) -> (Publish, Arc<Mutex<Vec<Event>>>) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let p = Publish {
            events: Box::new(super::super::merge::tests::Shared(got.clone())),
            telemetry: None,
            rtt_samples: false,
            vm_windows: false,
            counts: Counts::default(),
            held: VecDeque::new(),
            max_held,
        };
        (p, got)
    }

    /// streams, bytes, total_ms, source_downtime_ms, responsive_ms, downtime_ms.
    type Figures = (u32, Option<u64>, Option<f64>, Option<f64>, Option<f64>, Option<f64>);

    fn figures(e: &Event) -> Figures {
        let Event::Migration(m) = e else { panic!("{e:?}") };
        (m.streams, m.bytes, m.total_ms, m.source_downtime_ms, m.responsive_ms, m.downtime_ms)
    }

    #[test]
    fn past_the_cap_the_oldest_open_move_is_written_with_nulls_and_counted_and_order_kept() {
        let (mut p, got) = publish(2);
        let later = migration("2023-11-14T22:13:21.000000Z");
        // Move 1 choosing its streams, move 2 only waiting for its return.
        p.emit_open(&migration("2023-11-14T22:13:20.000000Z"), 1, true);
        p.emit_open(&later, 2, false);
        assert!(got.lock().unwrap().is_empty());
        // A third event: one too many; move 1 goes out as it stands, nothing guessed.
        p.emit(&later);
        assert_eq!(p.counts.written_open, 1);
        let out = got.lock().unwrap().clone();
        assert_eq!(out.len(), 1);
        assert_eq!(figures(&out[0]), (0, None, None, None, None, Some(5.0)));
        // Its downtime's resolution rested on the guessed stream: the whole silence instead.
        let resolution = |e: &Event| if let Event::Migration(m) = e { m.downtime_resolution_ms } else { None };
        assert_eq!(resolution(&out[0]), Some(5.0));
        // Its settling later changes nothing; move 2's completes it.
        let settled = Measured { streams: 2, bytes: Some(7), responsive_us: Some(4_000), ..Default::default() };
        p.settle(&Settled { id: 1, measured: settled });
        assert_eq!(got.lock().unwrap().len(), 1);
        p.settle(&Settled { id: 2, measured: settled });
        let out = got.lock().unwrap().clone();
        assert_eq!(out.len(), 3);
        assert_eq!(figures(&out[1]), (2, Some(7), None, None, Some(4.0), Some(5.0)));
        assert_eq!(out[2], later, "in order, behind move 2");
        // An open move whose streams were chosen keeps them when written early: only its return is unknown.
        let (mut p, got) = publish(1);
        p.emit_open(&later, 3, false);
        p.emit(&later);
        assert_eq!(figures(&got.lock().unwrap()[0]), (1, Some(1000), Some(10.0), Some(3.0), None, Some(5.0)));
        assert_eq!(resolution(&got.lock().unwrap()[0]), Some(1.0));
        assert_eq!((p.counts.written_open, got.lock().unwrap().len()), (1, 2));
    }
}
