use super::*;
use crate::decode::{decode, linktype, Tunnels};
use crate::synth::frames::{icmp4_echo, icmp6_echo, Tcp};
use crate::synth::mac;
use std::net::Ipv4Addr;

const MS: i64 = 1000;

fn vm() -> Mac {
    mac("fa:16:3e:00:00:01")
}
fn client() -> Mac {
    mac("52:54:00:ff:00:01")
}

fn tracker() -> RttTracker {
    RttTracker::new(1024, 1024, 10_000, 120)
}

/// Feeds (time in µs, frame) pairs and returns the samples as (ms, kind, who).
fn run(t: &mut RttTracker, frames: &[(i64, Vec<u8>)]) -> Vec<(f64, SampleKind, Mac)> {
    for (ts, f) in frames {
        let o = decode(
            &Tunnels::default(),
            linktype::ETHERNET,
            PacketTime::from_micros(*ts),
            f.len() as u32,
            f.len() as u32,
            f,
        );
        t.observe(&o);
    }
    t.close_window(PacketTime::from_micros(frames.last().map_or(0, |f| f.0)))
        .into_iter()
        .map(|s| (s.rtt_us as f64 / 1000.0, s.kind, s.mac))
        .collect()
}

fn conn() -> Tcp {
    Tcp {
        src: client(),
        dst: vm(),
        sip: Ipv4Addr::new(10, 0, 0, 1),
        dip: Ipv4Addr::new(10, 0, 1, 1),
        sport: 40000,
        dport: 443,
        seq: 1000,
        ack: None,
        syn: false,
        ts: None,
        payload_len: 0,
    }
}

#[test]
fn icmp_echo_reply_closes_a_sample_for_the_replier() {
    let (c, v) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 1, 1));
    let mut t = tracker();
    let s = run(
        &mut t,
        &[
            (0, icmp4_echo(client(), vm(), c, v, true, 7, 1)),
            (MS, icmp4_echo(client(), vm(), c, v, true, 7, 2)),
            (3_500, icmp4_echo(vm(), client(), v, c, false, 7, 2)),
            (4_000, icmp4_echo(vm(), client(), v, c, false, 7, 1)),
            (5_000, icmp4_echo(vm(), client(), v, c, false, 7, 1)), // duplicate: no second sample
            (6_000, icmp4_echo(vm(), client(), v, c, false, 8, 3)), // never asked
        ],
    );
    assert_eq!(s, vec![(2.5, SampleKind::Echo, vm()), (4.0, SampleKind::Echo, vm())]);
}

#[test]
fn icmpv6_echo_too() {
    let (c, v) = (
        [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
    );
    let mut t = tracker();
    let s = run(
        &mut t,
        &[(0, icmp6_echo(client(), vm(), c, v, true, 1, 1)), (1_234, icmp6_echo(vm(), client(), v, c, false, 1, 1))],
    );
    assert_eq!(s, vec![(1.234, SampleKind::Echo, vm())]);
}

#[test]
fn syn_ack_is_timed_from_the_last_syn() {
    let syn = Tcp { syn: true, ..conn() };
    let synack = Tcp { syn: true, seq: 5000, ack: Some(1001), ..conn().reverse() };
    let mut t = tracker();
    let s = run(
        &mut t,
        &[
            (0, syn.build()),
            (1_000 * MS, syn.build()),
            (1_000 * MS + 750, synack.build()),
            (1_001 * MS, synack.build()),
        ],
    );
    assert_eq!(s, vec![(0.75, SampleKind::Handshake, vm())]);
}

#[test]
fn timestamps_match_first_echo_of_a_new_tsval_only() {
    let c = conn();
    let r = c.reverse();
    let mut t = tracker();
    let s = run(
        &mut t,
        &[
            (0, Tcp { ts: Some((100, 0)), payload_len: 10, ack: Some(1), ..c }.build()),
            // Same TSval again: not new, not recorded.
            (MS, Tcp { ts: Some((100, 0)), payload_len: 10, seq: 1010, ack: Some(1), ..c }.build()),
            (3 * MS, Tcp { ts: Some((900, 100)), ack: Some(1020), ..r }.build()),
            // A second echo of TSval 100 gives nothing (first match only).
            (4 * MS, Tcp { ts: Some((901, 100)), ack: Some(1020), ..r }.build()),
            // The client echoes the VM's TSval 900: a sample for the client.
            (4 * MS + 200, Tcp { ts: Some((101, 900)), ack: Some(1), ..c }.build()),
        ],
    );
    assert_eq!(s, vec![(3.0, SampleKind::Timestamp, vm()), (1.2, SampleKind::Timestamp, client())]);
}

#[test]
fn handshake_with_timestamps_gives_one_sample_per_answer() {
    let c = conn();
    let r = c.reverse();
    let mut t = tracker();
    let s = run(
        &mut t,
        &[
            (0, Tcp { syn: true, ts: Some((10, 0)), ..c }.build()),
            (2 * MS, Tcp { syn: true, seq: 50, ack: Some(1001), ts: Some((20, 10)), ..r }.build()),
        ],
    );
    assert_eq!(s, vec![(2.0, SampleKind::Handshake, vm())]);
}

#[test]
fn data_without_timestamps_is_matched_to_the_exact_ack_and_karn_voids_retransmissions() {
    let c = conn();
    let r = c.reverse();
    let seg = |seq: u32| Tcp { seq, payload_len: 100, ack: Some(1), ..c }.build();
    let ack = |a: u32| Tcp { seq: 1, ack: Some(a), ..r }.build();
    let mut t = tracker();
    let s = run(
        &mut t,
        &[
            (0, seg(1000)),       // ends 1100
            (MS, seg(1100)),      // ends 1200
            (5 * MS, ack(1100)),  // exact: 5 ms
            (6 * MS, ack(1150)),  // covers nothing exactly
            (7 * MS, seg(1200)),  // ends 1300
            (8 * MS, seg(1200)),  // retransmitted: voids 1300
            (9 * MS, ack(1300)),  // ambiguous: no sample
            (10 * MS, seg(1300)), // ends 1400
            (10 * MS + 500, ack(1400)),
        ],
    );
    assert_eq!(s, vec![(5.0, SampleKind::Ack, vm()), (0.5, SampleKind::Ack, vm())]);
    // The segment ending 1200 was covered by the ACK of 1300 and is gone.
    let (key, d) = FlowKey::of((c.sip.into(), c.sport), (c.dip.into(), c.dport));
    assert_eq!(t.flows[&key].dir[d].segments.len, 0);
}

#[test]
fn probes_time_out_in_packet_time_and_tables_are_bounded() {
    let (c, v) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 1, 1));
    let mut t = RttTracker::new(2, 2, 1_000, 1);
    // Three echo requests, room for two.
    let s = run(
        &mut t,
        &[
            (0, icmp4_echo(client(), vm(), c, v, true, 1, 1)),
            (1, icmp4_echo(client(), vm(), c, v, true, 1, 2)),
            (2, icmp4_echo(client(), vm(), c, v, true, 1, 3)),
        ],
    );
    assert!(s.is_empty());
    assert_eq!(t.counts.probe_evictions, 1);
    // Two seconds later both outstanding requests have timed out: the reply
    // matches nothing, and the sweep expires the other.
    let s = run(&mut t, &[(2_000_000, icmp4_echo(vm(), client(), v, c, false, 1, 1))]);
    assert!(s.is_empty());
    assert_eq!(t.counts.probe_timeouts, 2);
    assert!(t.echoes.is_empty());
    // Three flows into a table of two: the least recently seen is evicted.
    for (i, port) in [1u16, 2, 3].into_iter().enumerate() {
        let f = Tcp { sport: port, syn: true, ..conn() }.build();
        run(&mut t, &[(3_000_000 + i as i64, f)]);
    }
    assert_eq!(t.counts.flow_evictions, 1);
    assert_eq!(t.flows.len(), 2);
}

#[test]
fn sequence_comparison_wraps() {
    assert!(seq_after(5, u32::MAX - 5));
    assert!(seq_before(u32::MAX - 5, 5));
    assert!(!seq_after(7, 7));
}

#[test]
fn the_flow_table_finds_every_flow_through_inserts_and_removals() {
    // Random inserts and removals against a model: the index (linear
    // probing, backward-shift deletion) must always find exactly the live flows.
    let mut table = FlowTable::with_capacity(64);
    let mut model: Vec<(FlowKey, u32)> = Vec::new();
    let mut x = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for step in 0..20_000u32 {
        let r = next();
        if model.len() < 64 && (r % 3 != 0 || model.is_empty()) {
            let ip = IpAddr::from(Ipv4Addr::from((r >> 8) as u32 % 500));
            let (key, _) = FlowKey::of((ip, (r % 7) as u16), (IpAddr::from(Ipv4Addr::new(10, 0, 0, 1)), 443));
            if model.iter().any(|(k, _)| *k == key) {
                continue;
            }
            let (at, found) = table.probe(&key, key.hash());
            assert_eq!(found, None);
            let e = table.insert(at, TcpFlow::new(key, key.hash(), i64::MIN));
            model.push((key, e));
        } else {
            let (key, e) = model.swap_remove((r as usize) % model.len());
            assert_eq!(table.find(&key), Some(e));
            table.remove(e);
        }
        assert_eq!(table.len(), model.len(), "step {step}");
        for (k, e) in &model {
            assert_eq!(table.find(k), Some(*e), "step {step}");
        }
    }
}

#[test]
fn a_flood_of_new_flows_stays_within_the_cap_and_every_eviction_is_counted() {
    let mut t = RttTracker::new(100, 16, 10_000, 120);
    for i in 0..10_000u32 {
        let f = Tcp { sport: i as u16, syn: true, ..conn() };
        run(&mut t, &[(i64::from(i), f.build())]);
    }
    assert_eq!(t.flows.len(), 100);
    assert_eq!(t.flows.entries.capacity(), 100, "allocated once, to the cap");
    assert_eq!(t.counts.flow_evictions, 9_900);
    // The most recent flow is tracked, and answers.
    let last = Tcp { sport: 9_999, syn: true, ..conn() };
    let s = run(&mut t, &[(20_000, Tcp { seq: 9, ack: Some(1001), ..last.reverse() }.build())]);
    assert!(s.is_empty(), "a SYN/ACK without the SYN flag set is no handshake");
    let s = run(&mut t, &[(20_001, Tcp { syn: true, seq: 9, ack: Some(1001), ..last.reverse() }.build())]);
    assert_eq!(s.len(), 1);
}

#[test]
fn frames_stamped_before_the_last_close_keep_their_flow() {
    // A second file can be older than the first: its flows are new since the
    // last close, and that close must not expire them.
    let mut t = tracker();
    assert!(t.close_window(PacketTime::from_micros(1_000_000_000)).is_empty());
    let syn = Tcp { syn: true, ..conn() };
    let synack = Tcp { syn: true, seq: 5000, ack: Some(1001), ..conn().reverse() };
    let s = run(&mut t, &[(0, syn.build()), (750, synack.build())]);
    assert_eq!(s, vec![(0.75, SampleKind::Handshake, vm())]);
}

/// `observe_batch` (what the shards call: the flow table prefetched `AHEAD`
/// and `2 * AHEAD` frames ahead) gives exactly what `observe` frame by frame
/// gives: samples, counts and table contents, on the datacenter mix (TCP
/// with and without timestamps, SYNs, ICMP), with a cap small enough to
/// evict and windows closing in between, in batches of sizes around `AHEAD`
/// and `2 * AHEAD`.
#[test]
fn observe_batch_gives_exactly_what_observe_gives() {
    use crate::capture::{FileSource, PacketSource, SourceItem};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mix.pcap");
    crate::synth::dcmix::DcMix { frames: 30_000, flows: 2_000, ..Default::default() }.write(&path).unwrap();
    let mut obs = Vec::new();
    let mut src = FileSource::open(&[path]).unwrap();
    src.run(&mut |item| {
        if let SourceItem::Packet(p) = item {
            let len = p.data.len() as u32;
            obs.push(decode(&Tunnels::default(), p.linktype, p.ts, p.orig_len, len, p.data));
        }
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(obs.len(), 30_000);
    let window = 100 * MS;
    // One tracker frame by frame, one in batches; both close the same windows.
    let run = |batch: Option<usize>| {
        let mut t = RttTracker::new(500, 200, 10, 2);
        let (mut samples, mut start, mut w) = (Vec::new(), 0, None);
        let flush = |t: &mut RttTracker, part: &[Observation]| match batch {
            None => part.iter().for_each(|o| t.observe(o)),
            Some(n) => {
                let inputs: Vec<RttInput> = part.iter().filter_map(RttInput::of).collect();
                inputs.chunks(n).for_each(|c| t.observe_batch(c))
            }
        };
        for (i, o) in obs.iter().enumerate() {
            let wi = o.ts.as_micros().div_euclid(window);
            if w.is_some_and(|w| wi > w) {
                flush(&mut t, &obs[start..i]);
                start = i;
                samples.extend(t.close_window(PacketTime::from_micros(wi * window)));
            }
            w = Some(wi);
        }
        flush(&mut t, &obs[start..]);
        samples.extend(t.close_window(PacketTime::from_micros((w.unwrap() + 1) * window)));
        let flows: Vec<(FlowKey, i64)> =
            t.flows.entries.iter().filter(|f| f.live).map(|f| (f.key, f.last_seen)).collect();
        (samples, t.counts, flows)
    };
    let one_by_one = run(None);
    assert!(one_by_one.0.len() > 2_000, "{} samples", one_by_one.0.len());
    assert!(one_by_one.1.flow_evictions > 0 && one_by_one.1.probe_timeouts > 0, "{:?}", one_by_one.1);
    for n in [1, 2, 7, AHEAD, AHEAD + 1, 2 * AHEAD, 2 * AHEAD + 1, 3 * AHEAD - 1, 512, 1024] {
        let b = run(Some(n));
        assert_eq!(b.0, one_by_one.0, "samples, batches of {n}");
        assert_eq!(b.1, one_by_one.1, "counts, batches of {n}");
        assert_eq!(b.2, one_by_one.2, "flows, batches of {n}");
    }
}

/// A bulk transfer with more in flight than a direction's probe list holds:
/// the VM sends two segments a millisecond (one TSval each millisecond, its
/// 1 kHz clock) for 100 ms, to a client 20.25 ms away that acknowledges every
/// second segment and echoes the pair's TSval, as RFC 7323 says. A full list
/// keeps its 7 oldest TSvals, which the next echoes name, and its newest
/// place takes each new one; a list that pushed out its oldest would hold
/// only the newest 8 ms of TSvals, matched only once the transfer stops (it
/// gave the last 8 TSvals' samples and no others).
#[test]
fn more_timestamps_in_flight_than_the_list_holds_still_give_samples() {
    let c = conn();
    let r = c.reverse();
    let mut t = tracker();
    let mut frames = Vec::new();
    for i in 0..200i64 {
        let (at, tsval) = (i * MS / 2, 5_000 + (i / 2) as u32);
        let seq = 1 + 100 * i as u32;
        frames.push((at, Tcp { ts: Some((tsval, 77)), payload_len: 100, seq, ack: Some(1000), ..r }.build()));
        if i % 2 == 1 {
            let ack = seq + 100;
            // The client's own clock stands still: one TSval of its own in all.
            let echo = Tcp { ts: Some((90_000, 5_000 + (i / 2) as u32)), ack: Some(ack), ..c };
            frames.push((at - MS / 2 + 20 * MS + MS / 4, echo.build()));
        }
    }
    frames.sort_by_key(|f| f.0);
    let s = run(&mut t, &frames);
    // Each round, the 7 oldest TSvals are echoed 20.25 ms after they were
    // first seen, and the echoes make room for the next 7 (the TSval in the
    // newest place when the round's first echo comes, and 6 more): one round
    // every 20 ms, five in 100 ms, and the newest place's last TSval (99)
    // echoed at the end: 36 samples. The other 64 TSvals gave their place to
    // a newer one (counted), and none is timed late.
    assert_eq!(s.len(), 36, "{s:?}");
    assert!(s.iter().all(|x| *x == (20.25, SampleKind::Timestamp, client())), "{s:?}");
    assert_eq!(t.counts.probe_evictions, 64);
}

/// The same without timestamps: ends of data segments matched to the ACKs
/// of every second segment. The list keeps the oldest ends, each ACK clears
/// what it covers, and the ACK of each odd segment it holds gives a sample
/// (a list that pushed out its oldest gave only the last 4).
#[test]
fn more_segments_in_flight_than_the_list_holds_still_give_samples() {
    let c = conn();
    let r = c.reverse();
    let mut t = tracker();
    let mut frames = Vec::new();
    for i in 0..200i64 {
        let seq = 1 + 100 * i as u32;
        frames.push((i * MS / 2, Tcp { payload_len: 100, seq, ack: Some(1000), ..r }.build()));
        if i % 2 == 1 {
            frames.push((i * MS / 2 + 20 * MS + MS / 4, Tcp { ack: Some(seq + 100), ..c }.build()));
        }
    }
    frames.sort_by_key(|f| f.0);
    let s = run(&mut t, &frames);
    // The ends the list keeps are acknowledged exactly when odd: 22 of the
    // 100 ACKs (the rest acknowledge ends that gave their place to newer ones).
    assert_eq!(s.len(), 22, "{s:?}");
    assert!(s.iter().all(|x| *x == (20.25, SampleKind::Ack, client())), "{s:?}");
}

/// An echo of a TSval the other side never sent (past its newest, e.g. a
/// capture that starts mid-flow with a stale echo) clears nothing: the
/// TSval recorded before it is still matched by the echo that names it.
#[test]
fn an_echo_past_the_newest_tsval_clears_nothing() {
    let c = conn();
    let r = c.reverse();
    let mut t = tracker();
    let s = run(
        &mut t,
        &[
            (0, Tcp { ts: Some((1_000, 5)), payload_len: 10, seq: 1, ack: Some(1000), ..r }.build()),
            // Echoes 2,000,000,000: not a TSval the VM has sent.
            (MS, Tcp { ts: Some((6, 2_000_000_000)), payload_len: 10, ack: Some(11), ..c }.build()),
            (3 * MS, Tcp { ts: Some((7, 1_000)), ack: Some(11), ..c }.build()),
        ],
    );
    assert_eq!(s, vec![(3.0, SampleKind::Timestamp, client())]);
}

/// A burst longer than the list, acknowledged once at its end (as in
/// Suricata's http-mime-truncated capture, frames 10-20: ten segments, one
/// ACK 67.645 ms after the last, which tshark's `tcp.analysis.ack_rtt`
/// times too): the burst's last segment holds the newest place, and is matched.
#[test]
fn the_ack_of_a_burst_longer_than_the_list_is_matched_to_its_last_segment() {
    let c = conn();
    let r = c.reverse();
    let mut t = tracker();
    let mut frames: Vec<(i64, Vec<u8>)> = (0..10i64)
        .map(|i| (i * 10, Tcp { payload_len: 1000, seq: 1 + 1000 * i as u32, ack: Some(1000), ..r }.build()))
        .collect();
    frames.push((90 + 67_645, Tcp { ack: Some(10_001), ..c }.build()));
    let s = run(&mut t, &frames);
    assert_eq!(s, vec![(67.645, SampleKind::Ack, client())]);
    assert_eq!(t.counts.probe_evictions, 2);
}

/// The VM's data segment (10 bytes at `seq`) stamped `tsval`, echoing the client's TSval 5.
fn vm_ts_segment(tsval: u32, seq: u32) -> Vec<u8> {
    Tcp { ts: Some((tsval, 5)), payload_len: 10, seq, ack: Some(1000), ..conn().reverse() }.build()
}

/// The client's ACK of `ack` echoing the VM's `tsecr` (its own clock stands at 9).
fn client_ts_echo(tsecr: u32, ack: u32) -> Vec<u8> {
    Tcp { ts: Some((9, tsecr)), ack: Some(ack), ..conn() }.build()
}

/// A TSval sent again after its echo came back (Linux with two transmit
/// queues interleaves segments stamped a millisecond apart, as in the QEMU
/// lab's captures) is not new: a second echo of it gives no second sample.
#[test]
fn a_tsval_sent_again_after_its_echo_is_not_timed_again() {
    let (vm_seg, echo) = (vm_ts_segment, client_ts_echo);
    let mut t = tracker();
    let s = run(
        &mut t,
        &[
            (0, vm_seg(100, 1)),
            (100, vm_seg(101, 11)),
            (MS, echo(100, 11)),
            // The other queue's segment, stamped 100 again.
            (MS + 100, vm_seg(100, 21)),
            (2 * MS, echo(100, 31)),
            (2 * MS + 500, echo(101, 31)),
        ],
    );
    assert_eq!(s, vec![(1.0, SampleKind::Timestamp, client()), (2.4, SampleKind::Timestamp, client())]);
}

/// A new connection on the addresses and ports of an earlier one (a client
/// reusing its port) starts afresh: the earlier one's echoes do not bar the
/// new one's lower TSvals, and its sequence space does not make the new
/// one's data look retransmitted.
#[test]
fn a_connection_reusing_a_flows_ports_starts_afresh() {
    let c = conn();
    let r = c.reverse();
    for ts in [true, false] {
        let o = |v: (u32, u32)| ts.then_some(v);
        let mut t = tracker();
        let s = run(
            &mut t,
            &[
                (0, Tcp { syn: true, seq: 1000, ts: o((1000, 0)), ..c }.build()),
                (2 * MS, Tcp { syn: true, seq: 50_000, ack: Some(1001), ts: o((5000, 1000)), ..r }.build()),
                (3 * MS, Tcp { seq: 1001, ack: Some(50_001), payload_len: 100, ts: o((1001, 5000)), ..c }.build()),
                (4 * MS, Tcp { seq: 50_001, ack: Some(1101), ts: o((5001, 1001)), ..r }.build()),
                // The port again, with a lower ISN and TSval clock.
                (10 * MS, Tcp { syn: true, seq: 500, ts: o((10, 0)), ..c }.build()),
                (14 * MS, Tcp { syn: true, seq: 90_000, ack: Some(501), ts: o((20, 10)), ..r }.build()),
                (17 * MS, Tcp { seq: 501, ack: Some(90_001), payload_len: 100, ts: o((11, 20)), ..c }.build()),
                (19 * MS, Tcp { seq: 90_001, ack: Some(601), ts: o((21, 11)), ..r }.build()),
            ],
        );
        let (hs, k) = (SampleKind::Handshake, if ts { SampleKind::Timestamp } else { SampleKind::Ack });
        let want = if ts {
            // The client echoes each SYN/ACK's TSval, the VM the client's data's.
            vec![
                (2.0, hs, vm()),
                (1.0, k, client()),
                (1.0, k, vm()),
                (4.0, hs, vm()),
                (3.0, k, client()),
                (2.0, k, vm()),
            ]
        } else {
            // The VM's ACK answers the client's data.
            vec![(2.0, hs, vm()), (1.0, k, vm()), (4.0, hs, vm()), (2.0, k, vm())]
        };
        assert_eq!(s, want, "timestamps: {ts}");
    }
}

/// A SYN/ACK sent again (the server did not see the ACK yet) voids its own
/// direction only: what the client sent after the first, its data, stays
/// outstanding, and the server's answer to it is timed.
#[test]
fn a_syn_ack_sent_again_keeps_the_other_directions_probes() {
    let c = conn();
    let r = c.reverse();
    for ts in [true, false] {
        let o = |v: (u32, u32)| ts.then_some(v);
        let mut t = tracker();
        let s = run(
            &mut t,
            &[
                (0, Tcp { syn: true, seq: 1000, ts: o((1000, 0)), ..c }.build()),
                (2 * MS, Tcp { syn: true, seq: 50_000, ack: Some(1001), ts: o((5000, 1000)), ..r }.build()),
                (3 * MS, Tcp { seq: 1001, ack: Some(50_001), payload_len: 100, ts: o((1001, 5000)), ..c }.build()),
                // The SYN/ACK again, before the server has the data.
                (3 * MS + 500, Tcp { syn: true, seq: 50_000, ack: Some(1001), ts: o((5005, 1000)), ..r }.build()),
                (4 * MS, Tcp { seq: 50_001, ack: Some(1101), ts: o((5006, 1001)), ..r }.build()),
            ],
        );
        let hs = (2.0, SampleKind::Handshake, vm());
        let want = if ts {
            // The client echoes the first SYN/ACK's TSval; the server the data's.
            vec![hs, (1.0, SampleKind::Timestamp, client()), (1.0, SampleKind::Timestamp, vm())]
        } else {
            vec![hs, (1.0, SampleKind::Ack, vm())]
        };
        assert_eq!(s, want, "timestamps: {ts}");
    }
}

/// A SYN/ACK without timestamps turns them off for the connection (RFC 7323
/// needs both ends), so its data is timed by sequence and ACK.
#[test]
fn timestamps_offered_by_the_syn_alone_are_not_used() {
    let c = conn();
    let r = c.reverse();
    let mut t = tracker();
    let s = run(
        &mut t,
        &[
            (0, Tcp { syn: true, seq: 1000, ts: Some((10, 0)), ..c }.build()),
            (2 * MS, Tcp { syn: true, seq: 50_000, ack: Some(1001), ..r }.build()),
            (3 * MS, Tcp { seq: 1001, ack: Some(50_001), payload_len: 100, ..c }.build()),
            (4 * MS, Tcp { seq: 50_001, ack: Some(1101), ..r }.build()),
        ],
    );
    assert_eq!(s, vec![(2.0, SampleKind::Handshake, vm()), (1.0, SampleKind::Ack, vm())]);
}

/// A TSval far before the newest one of its direction is a new clock (a
/// connection on these ports whose SYN the capture missed), not a late
/// segment: it is recorded and timed. One just before the newest is not.
#[test]
fn a_tsval_far_before_the_newest_is_a_new_clock() {
    let (vm_seg, echo) = (vm_ts_segment, client_ts_echo);
    let mut t = tracker();
    let s = run(
        &mut t,
        &[
            (0, vm_seg(3_000_000_000, 1)),
            (MS, echo(3_000_000_000, 11)),
            // Late by a tick: not new, not timed.
            (2 * MS, vm_seg(2_999_999_999, 11)),
            (3 * MS, echo(2_999_999_999, 21)),
            // A new clock.
            (4 * MS, vm_seg(7, 21)),
            (6 * MS, echo(7, 31)),
        ],
    );
    assert_eq!(s, vec![(1.0, SampleKind::Timestamp, client()), (2.0, SampleKind::Timestamp, client())]);
}

/// A key's endpoints order as `(IpAddr, u16)` orders (so each flow keeps
/// the direction it always had: the lower endpoint's is 0), give back the
/// address and port they were made of, and hash as those did.
#[test]
fn flow_key_endpoints_order_round_trip_and_hash_as_ip_and_port() {
    use std::net::Ipv6Addr;
    let ips: Vec<IpAddr> = vec![
        Ipv4Addr::new(0, 0, 0, 0).into(),
        Ipv4Addr::new(10, 0, 0, 1).into(),
        Ipv4Addr::new(10, 0, 0, 2).into(),
        Ipv4Addr::new(10, 0, 1, 1).into(),
        Ipv4Addr::new(192, 168, 0, 1).into(),
        Ipv4Addr::new(255, 255, 255, 255).into(),
        Ipv6Addr::UNSPECIFIED.into(),
        "::a00:1".parse::<Ipv6Addr>().unwrap().into(),
        "::ffff:10.0.0.1".parse::<Ipv6Addr>().unwrap().into(),
        "2001:db8::1".parse::<Ipv6Addr>().unwrap().into(),
        "2001:db8::1:0:0:1".parse::<Ipv6Addr>().unwrap().into(),
        "fe80::1".parse::<Ipv6Addr>().unwrap().into(),
        Ipv6Addr::from(u128::MAX).into(),
    ];
    let eps: Vec<(IpAddr, u16)> = ips.iter().flat_map(|&ip| [0, 1, 443, 40000, 65535].map(|p| (ip, p))).collect();
    for &x in &eps {
        assert_eq!(Ep::new(x).addr(), x);
        for &y in &eps {
            assert_eq!(Ep::new(x).cmp(&Ep::new(y)), x.cmp(&y), "{x:?} {y:?}");
            let (k, d) = FlowKey::of(x, y);
            assert_eq!(d, usize::from(x > y), "{x:?} {y:?}");
            assert_eq!((k.a.addr(), k.b.addr()), if d == 0 { (x, y) } else { (y, x) });
            assert_eq!(k.hash(), ip_port_hash(if d == 0 { (x, y) } else { (y, x) }), "{x:?} {y:?}");
        }
    }
}

/// The flow hash as it was taken from `(IpAddr, u16)` endpoints before keys
/// became words: the index places every flow where it did.
fn ip_port_hash((a, b): ((IpAddr, u16), (IpAddr, u16))) -> u32 {
    fn ep(e: &(IpAddr, u16)) -> u64 {
        let port = u64::from(e.1);
        match e.0 {
            IpAddr::V4(a) => (u64::from(u32::from(a)) << 16) | port,
            IpAddr::V6(a) => {
                let x = u128::from(a);
                ((x as u64) ^ ((x >> 64) as u64).rotate_left(29) ^ (1 << 63)) ^ port
            }
        }
    }
    (crate::decode::mix(crate::decode::mix(ep(&a)) ^ ep(&b)) >> 32) as u32
}
