//! Wire: the versioned, compact encoding of what a sensor sends its controller (one window's partial, or the end of its run).
//!
//! A message is a 5-byte header and a [postcard] body (varint integers,
//! length-prefixed lists, no field names):
//!
//! ```text
//! offset 0..2  magic  b"VS"
//! offset 2     major  1      a reader refuses any other major version
//! offset 3     minor  0      a reader takes any minor version of its major
//! offset 4     kind   1 = window, 2 = end; a kind it does not know is skipped (counted)
//! offset 5..   body   postcard of `WindowMsg` or `EndMsg` below, field by field in order
//! ```
//!
//! The compatibility rule that makes "a newer minor is still read" true: a
//! minor version may only *append* fields at the end of a body (a reader
//! decodes the fields it knows and ignores the bytes after them) or add a
//! new kind; anything else (a field removed, reordered, retyped, or a field
//! added inside a list element) is a new major version. Decode error counts
//! travel as a list in [`DecodeErrorKind::ALL`] order; a newer sensor's
//! extra kinds are beyond the list this reader knows and are dropped.
//!
//! Packet times inside a window body (samples, sightings, streams) are
//! microseconds from the window's start (`window * window_len_us`), so they
//! are small varints; the end message's are microseconds since the Unix
//! epoch. MACs are 6 bytes; IP addresses postcard's enum of 4 or 16 bytes.

use crate::decode::{DecodeErrorKind, Mac};
use crate::measure::placement::{Evidence, Oddity, Origin, Sighting, StreamPart, Via, SLOTS};
use crate::measure::rtt::{RttCounts, RttSample, SampleKind};
use crate::measure::Counters;
use crate::pipeline::{DecodeCounts, Partial, ReaderStats};
use crate::vocab::PacketTime;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

pub const MAGIC: [u8; 2] = *b"VS";
pub const MAJOR: u8 = 1;
pub const MINOR: u8 = 0;
const HEADER: usize = 5;
const KIND_WINDOW: u8 = 1;
const KIND_END: u8 = 2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("message too short for its header ({0} bytes, expected at least {HEADER})")]
    Short(usize),
    #[error("not a vmsentry message (magic {0:02x?}, expected \"VS\")")]
    Magic([u8; 2]),
    #[error("wire major version {got} (this controller reads {MAJOR})")]
    Major { got: u8 },
    #[error("message kind {0} is unknown to this version")]
    UnknownKind(u8),
    #[error("malformed body: {0}")]
    Body(String),
}

/// One sensor's partial of one window, all its shards combined.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowMsg {
    pub sensor: String,
    pub window: i64,
    pub window_len_us: i64,
    /// Wall clock at the sensor when the window closed (µs since the epoch),
    /// for the controller's lag and delay measures; nothing is decided by it.
    pub closed_unix_us: i64,
    /// Messages this sensor's spool dropped so far (it was full).
    pub spool_dropped: u64,
    pub counters: Vec<(Mac6, [u64; 4])>,
    pub overflow: u64,
    pub decode_errors: Vec<u64>,
    pub snaplen_cut: u64,
    pub samples: Vec<WireSample>,
    pub rtt_counts: [u64; 3],
    pub rtt_dropped: u64,
    pub sightings: Vec<WireSighting>,
    pub streams: Vec<WireStream>,
    pub oddities: Vec<WireOddity>,
    pub addresses: Vec<(Mac6, IpAddr)>,
    pub evidence_dropped: u64,
}

/// A sensor's run is over (replay): its reader's totals.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EndMsg {
    pub sensor: String,
    /// The last window it sent, if any.
    pub last_window: Option<i64>,
    pub packets: u64,
    pub bytes: u64,
    pub first_ts: Option<i64>,
    pub last_ts: Option<i64>,
    pub late_frames: u64,
    pub bad_length: u64,
    pub bad_time: u64,
    pub queue_dropped: u64,
    pub damaged_files: u64,
    pub unsupported_link_files: u64,
    /// Frames this sensor saw but another owns (see `cluster` on ownership).
    pub not_owned: u64,
    pub spool_dropped: u64,
}

pub type Mac6 = [u8; 6];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireSample {
    pub ts: i64,
    pub mac: Mac6,
    pub rtt_us: i64,
    /// 0 echo, 1 handshake, 2 timestamp, 3 ack.
    pub kind: u8,
    pub src: (IpAddr, u16),
    pub dst: (IpAddr, u16),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WireOrigin {
    Outer { mac: Mac6, ip: IpAddr },
    Sensor,
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireSighting {
    pub vm: Mac6,
    pub origin: WireOrigin,
    pub first: i64,
    pub last: i64,
    pub frames: u64,
    /// (time, 0 traffic / 1 garp / 2 rarp)
    pub announce: Option<(i64, u8)>,
    /// Frames per slot of the window (placement's `SLOTS` of them), trailing
    /// zeros left out.
    pub slots: Vec<u16>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireStream {
    pub src: (IpAddr, u16),
    pub dst: (IpAddr, u16),
    pub first: i64,
    pub last: i64,
    pub bytes: u64,
    /// The last segment that carried payload, as an offset.
    pub last_data: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WireOddity {
    VmUsesHypervisorMac { mac: Mac6, outer_ip: Option<IpAddr> },
    OuterPair { mac: Mac6, ip: IpAddr },
}

/// A decoded message.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Window(WindowMsg),
    End(EndMsg),
}

fn encode_with<T: Serialize>(kind: u8, minor: u8, body: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[MAJOR, minor, kind]);
    // Serializing plain data into a Vec cannot fail.
    postcard::to_extend(body, out).unwrap_or_default()
}

pub fn encode(m: &Message) -> Vec<u8> {
    match m {
        Message::Window(w) => encode_with(KIND_WINDOW, MINOR, w),
        Message::End(e) => encode_with(KIND_END, MINOR, e),
    }
}

pub fn decode(b: &[u8]) -> Result<Message, WireError> {
    if b.len() < HEADER {
        return Err(WireError::Short(b.len()));
    }
    if b[0..2] != MAGIC {
        return Err(WireError::Magic([b[0], b[1]]));
    }
    if b[2] != MAJOR {
        return Err(WireError::Major { got: b[2] });
    }
    let body = &b[HEADER..];
    let bad = |e: postcard::Error| WireError::Body(e.to_string());
    // `take_from_bytes`: the fields a newer minor appended are left over, unread.
    match b[4] {
        KIND_WINDOW => Ok(Message::Window(postcard::take_from_bytes(body).map_err(bad)?.0)),
        KIND_END => Ok(Message::End(postcard::take_from_bytes(body).map_err(bad)?.0)),
        k => Err(WireError::UnknownKind(k)),
    }
}

fn kind_u8(k: SampleKind) -> u8 {
    match k {
        SampleKind::Echo => 0,
        SampleKind::Handshake => 1,
        SampleKind::Timestamp => 2,
        SampleKind::Ack => 3,
    }
}

fn kind_of(k: u8) -> Result<SampleKind, WireError> {
    Ok(match k {
        0 => SampleKind::Echo,
        1 => SampleKind::Handshake,
        2 => SampleKind::Timestamp,
        3 => SampleKind::Ack,
        k => return Err(WireError::Body(format!("RTT sample kind {k}"))),
    })
}

fn via_u8(v: Via) -> u8 {
    match v {
        Via::Traffic => 0,
        Via::Garp => 1,
        Via::Rarp => 2,
    }
}

fn via_of(v: u8) -> Result<Via, WireError> {
    Ok(match v {
        0 => Via::Traffic,
        1 => Via::Garp,
        2 => Via::Rarp,
        v => return Err(WireError::Body(format!("announce kind {v}"))),
    })
}

impl WindowMsg {
    /// The wire form of a sensor's combined partial.
    pub(crate) fn from_partial(sensor: &str, window_len_us: i64, p: &Partial) -> WindowMsg {
        let ev = &p.evidence;
        let start = PacketTime::window_start(p.window, window_len_us).as_micros();
        let t = |t: PacketTime| t.as_micros().saturating_sub(start);
        WindowMsg {
            sensor: sensor.to_string(),
            window: p.window,
            window_len_us,
            closed_unix_us: 0,
            spool_dropped: 0,
            counters: p
                .counters
                .iter()
                .map(|(m, c)| (m.0, [c.tx_bytes, c.tx_packets, c.rx_bytes, c.rx_packets]))
                .collect(),
            overflow: p.overflow,
            decode_errors: p.decode.errors.to_vec(),
            snaplen_cut: p.decode.snaplen_cut,
            samples: p
                .samples
                .iter()
                .map(|s| WireSample {
                    ts: t(s.ts),
                    mac: s.mac.0,
                    rtt_us: s.rtt_us,
                    kind: kind_u8(s.kind),
                    src: s.src,
                    dst: s.dst,
                })
                .collect(),
            rtt_counts: [p.rtt_counts.flow_evictions, p.rtt_counts.probe_evictions, p.rtt_counts.probe_timeouts],
            rtt_dropped: p.rtt_dropped,
            sightings: ev
                .sightings
                .iter()
                .map(|s| WireSighting {
                    vm: s.vm.0,
                    origin: match s.origin {
                        Origin::Outer { mac, ip } => WireOrigin::Outer { mac: mac.0, ip },
                        Origin::Sensor => WireOrigin::Sensor,
                        Origin::Unknown => WireOrigin::Unknown,
                    },
                    first: t(s.first),
                    last: t(s.last),
                    frames: s.frames,
                    announce: s.announce.map(|(a, v)| (t(a), via_u8(v))),
                    slots: {
                        let n = s.slots.iter().rposition(|&c| c != 0).map_or(0, |i| i + 1);
                        s.slots[..n].to_vec()
                    },
                })
                .collect(),
            streams: ev
                .streams
                .iter()
                .map(|s| WireStream {
                    src: s.src,
                    dst: s.dst,
                    first: t(s.first),
                    last: t(s.last),
                    bytes: s.bytes,
                    last_data: s.last_data.map(t),
                })
                .collect(),
            oddities: ev
                .oddities
                .iter()
                .map(|o| match *o {
                    Oddity::VmUsesHypervisorMac { mac, outer_ip } => {
                        WireOddity::VmUsesHypervisorMac { mac: mac.0, outer_ip }
                    }
                    Oddity::OuterPair { mac, ip } => WireOddity::OuterPair { mac: mac.0, ip },
                })
                .collect(),
            addresses: ev.addresses.iter().map(|(m, ip)| (m.0, *ip)).collect(),
            evidence_dropped: ev.dropped,
        }
    }

    /// Back to the merge's partial (`shard` is 0: one per window and sensor).
    pub(crate) fn to_partial(&self) -> Result<Partial, WireError> {
        let start = PacketTime::window_start(self.window, self.window_len_us).as_micros();
        let t = |off: i64| PacketTime::from_micros(start.saturating_add(off));
        let mut decode = DecodeCounts::default();
        for (a, b) in decode.errors.iter_mut().zip(&self.decode_errors) {
            *a = *b;
        }
        decode.snaplen_cut = self.snaplen_cut;
        debug_assert_eq!(decode.errors.len(), DecodeErrorKind::COUNT);
        let mut samples = Vec::with_capacity(self.samples.len());
        for s in &self.samples {
            samples.push(RttSample {
                ts: t(s.ts),
                mac: Mac(s.mac),
                rtt_us: s.rtt_us,
                kind: kind_of(s.kind)?,
                src: s.src,
                dst: s.dst,
            });
        }
        let mut sightings = Vec::with_capacity(self.sightings.len());
        for s in &self.sightings {
            if s.slots.len() > SLOTS {
                return Err(WireError::Body(format!("{} slots in a sighting (at most {SLOTS})", s.slots.len())));
            }
            let mut slots = [0u16; SLOTS];
            slots[..s.slots.len()].copy_from_slice(&s.slots);
            sightings.push(Sighting {
                vm: Mac(s.vm),
                origin: match s.origin {
                    WireOrigin::Outer { mac, ip } => Origin::Outer { mac: Mac(mac), ip },
                    WireOrigin::Sensor => Origin::Sensor,
                    WireOrigin::Unknown => Origin::Unknown,
                },
                first: t(s.first),
                last: t(s.last),
                frames: s.frames,
                announce: match s.announce {
                    Some((a, v)) => Some((t(a), via_of(v)?)),
                    None => None,
                },
                slots,
            });
        }
        Ok(Partial {
            shard: 0,
            window: self.window,
            counters: self
                .counters
                .iter()
                .map(|(m, c)| {
                    (Mac(*m), Counters { tx_bytes: c[0], tx_packets: c[1], rx_bytes: c[2], rx_packets: c[3] })
                })
                .collect(),
            overflow: self.overflow,
            decode,
            samples,
            rtt_counts: RttCounts {
                flow_evictions: self.rtt_counts[0],
                probe_evictions: self.rtt_counts[1],
                probe_timeouts: self.rtt_counts[2],
            },
            rtt_dropped: self.rtt_dropped,
            evidence: Evidence {
                sightings,
                streams: self
                    .streams
                    .iter()
                    .map(|s| StreamPart {
                        src: s.src,
                        dst: s.dst,
                        first: t(s.first),
                        last: t(s.last),
                        bytes: s.bytes,
                        last_data: s.last_data.map(t),
                    })
                    .collect(),
                oddities: self
                    .oddities
                    .iter()
                    .map(|o| match *o {
                        WireOddity::VmUsesHypervisorMac { mac, outer_ip } => {
                            Oddity::VmUsesHypervisorMac { mac: Mac(mac), outer_ip }
                        }
                        WireOddity::OuterPair { mac, ip } => Oddity::OuterPair { mac: Mac(mac), ip },
                    })
                    .collect(),
                addresses: self.addresses.iter().map(|(m, ip)| (Mac(*m), *ip)).collect(),
                dropped: self.evidence_dropped,
            },
        })
    }
}

impl EndMsg {
    pub(crate) fn reader_stats(&self) -> ReaderStats {
        ReaderStats {
            packets: self.packets,
            bytes: self.bytes,
            first_ts: self.first_ts.map(PacketTime::from_micros),
            last_ts: self.last_ts.map(PacketTime::from_micros),
            late_frames: self.late_frames,
            bad_length: self.bad_length,
            bad_time: self.bad_time,
        }
    }
}

/// Adds `o` into `into` (one window, several shards or sensors): the merge
/// sums and normalizes, so concatenating is enough.
pub(crate) fn combine(into: &mut Partial, mut o: Partial) {
    into.counters.append(&mut o.counters);
    into.overflow += o.overflow;
    into.decode.add(&o.decode);
    into.samples.append(&mut o.samples);
    into.rtt_counts.add(&o.rtt_counts);
    into.rtt_dropped += o.rtt_dropped;
    into.evidence.append(&mut o.evidence);
}

/// Sums counters of the same MAC (a combined partial is sent once per window).
pub(crate) fn sum_counters(p: &mut Partial) {
    let mut m = crate::measure::WindowMerge::default();
    m.add(&p.counters);
    p.counters = m.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_window() -> WindowMsg {
        WindowMsg {
            sensor: "rack-1".into(),
            window: 1_700_000_005,
            window_len_us: 1_000_000,
            closed_unix_us: 5,
            spool_dropped: 0,
            counters: vec![([0xfa, 0x16, 0x3e, 0, 0, 1], [1500, 1, 0, 0])],
            overflow: 0,
            decode_errors: vec![0; DecodeErrorKind::COUNT],
            snaplen_cut: 2,
            samples: vec![WireSample {
                ts: 100_000,
                mac: [0xfa, 0x16, 0x3e, 0, 0, 1],
                rtt_us: 2000,
                kind: 0,
                src: ([10, 1, 0, 11].into(), 0),
                dst: ([10, 1, 0, 1].into(), 0),
            }],
            rtt_counts: [0, 1, 0],
            rtt_dropped: 0,
            sightings: vec![WireSighting {
                vm: [0xfa, 0x16, 0x3e, 0, 0, 1],
                origin: WireOrigin::Outer { mac: [0x52, 0x54, 0, 0xaa, 0, 1], ip: [10, 0, 0, 31].into() },
                first: 1,
                last: 2,
                frames: 3,
                announce: Some((1, 2)),
                slots: vec![1, 0, 2],
            }],
            streams: vec![],
            oddities: vec![WireOddity::OuterPair { mac: [0x52, 0x54, 0, 0xaa, 0, 1], ip: [10, 0, 0, 31].into() }],
            addresses: vec![([0xfa, 0x16, 0x3e, 0, 0, 1], "fe80::1".parse().unwrap())],
            evidence_dropped: 0,
        }
    }

    #[test]
    fn a_window_and_an_end_round_trip() {
        let w = Message::Window(sample_window());
        assert_eq!(decode(&encode(&w)), Ok(w));
        let e = Message::End(EndMsg { sensor: "s".into(), packets: 7, first_ts: Some(-3), ..Default::default() });
        assert_eq!(decode(&encode(&e)), Ok(e));
    }

    #[test]
    fn the_header_is_magic_major_minor_kind() {
        let b = encode(&Message::Window(sample_window()));
        assert_eq!(&b[..5], &[b'V', b'S', 1, 0, 1]);
        // The partial survives the trip to the merge's type and back.
        let p = match decode(&b).unwrap() {
            Message::Window(w) => w.to_partial().unwrap(),
            _ => unreachable!(),
        };
        assert_eq!(
            WindowMsg::from_partial("rack-1", 1_000_000, &p),
            WindowMsg { closed_unix_us: 0, ..sample_window() }
        );
    }

    /// What a sensor one minor version newer sends: the same fields, then one more.
    #[derive(Serialize)]
    struct WindowV1_1 {
        base: WindowMsg,
        new_field: Vec<u64>,
    }

    #[test]
    fn a_newer_minor_version_is_still_read_and_a_newer_major_is_refused() {
        let newer = WindowV1_1 { base: sample_window(), new_field: vec![1, 2, 3] };
        let b = encode_with(KIND_WINDOW, MINOR + 1, &newer);
        assert_eq!(b[3], 1);
        assert_eq!(decode(&b), Ok(Message::Window(sample_window())));
        let mut major = b.clone();
        major[2] = 2;
        assert_eq!(decode(&major), Err(WireError::Major { got: 2 }));
        let mut kind = b.clone();
        kind[4] = 9;
        assert_eq!(decode(&kind), Err(WireError::UnknownKind(9)));
    }

    #[test]
    fn damaged_messages_are_errors_not_panics() {
        let b = encode(&Message::Window(sample_window()));
        for cut in 0..b.len() {
            let _ = decode(&b[..cut]);
        }
        assert_eq!(decode(b"VS"), Err(WireError::Short(2)));
        assert!(matches!(decode(b"XX\x01\x00\x01"), Err(WireError::Magic(_))));
        let mut flipped = b.clone();
        for i in 5..flipped.len() {
            flipped[i] ^= 0xff;
            let _ = decode(&flipped);
            flipped[i] ^= 0xff;
        }
    }

    /// What a sensor sends for one 1 s window of 1000 busy VMs behind tunnels:
    /// each with its counters, one sighting (where it sent from) and one
    /// learned address. benches/README.md quotes the size.
    pub(crate) fn window_of_1000_vms() -> WindowMsg {
        let t0 = 1_700_000_005_000_000i64;
        let vm = |i: u32| [0xfa, 0x16, 0x3e, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        WindowMsg {
            sensor: "rack-12".into(),
            window: t0 / 1_000_000,
            window_len_us: 1_000_000,
            closed_unix_us: 1_764_633_600_000_000,
            decode_errors: vec![0; DecodeErrorKind::COUNT],
            counters: (0..1000).map(|i| (vm(i), [1_500_000 + u64::from(i), 2_000, 900_000, 1_500])).collect(),
            sightings: (0..1000)
                .map(|i| WireSighting {
                    vm: vm(i),
                    origin: WireOrigin::Outer {
                        mac: [0x52, 0x54, 0, 0xaa, 1, (i % 40) as u8],
                        ip: [10, 0, 1, (i % 40) as u8].into(),
                    },
                    first: 1_000,
                    last: 999_000,
                    frames: 2_000,
                    announce: None,
                    // 2000 frames spread over the window's 64 slots.
                    slots: vec![31; 64],
                })
                .collect(),
            addresses: (0..1000).map(|i| (vm(i), [10, 1, (i >> 8) as u8, i as u8].into())).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_window_of_1000_vms_is_compact() {
        let b = encode(&Message::Window(window_of_1000_vms()));
        // 6-byte MACs and varints: about 53 bytes per VM with its sighting and
        // address, and 65 more for the sighting's 64 slot counts.
        assert!(b.len() < 128 * 1000, "{} bytes", b.len());
        assert!(b.len() > 100 * 1000, "{} bytes", b.len());
        eprintln!("a window of 1000 VMs: {} bytes", b.len());
    }
}
