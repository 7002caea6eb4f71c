use super::*;
use crate::synth::{frames, mac};
use proptest::prelude::*;

const T: PacketTime = PacketTime::from_micros(1_000_000);

/// The general (etherparse) path alone, on an Ethernet frame.
fn general(tun: &Tunnels, orig: u32, data: &[u8]) -> Observation {
    let mut obs = Observation::empty(T, orig, data.len() as u32);
    decode_general(&mut obs, tun, linktype::ETHERNET, data);
    obs
}

fn eth(data: &[u8]) -> Observation {
    decode(&Tunnels::default(), linktype::ETHERNET, T, data.len() as u32, data.len() as u32, data)
}

/// Ethernet / IPv4 / TCP SYN with the timestamps option.
const TCP_SYN_TS: [u8; 74] = [
    0x02, 0x00, 0x00, 0x00, 0x00, 0x02, // dst MAC
    0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // src MAC
    0x08, 0x00, // ethertype IPv4
    0x45, 0x00, 0x00, 0x3c, // version 4, IHL 5, total length 60
    0x00, 0x01, 0x40, 0x00, // id 1, DF
    0x40, 0x06, 0x00, 0x00, // TTL 64, protocol TCP, checksum (unchecked)
    0x0a, 0x00, 0x00, 0x01, // src 10.0.0.1
    0x0a, 0x00, 0x00, 0x02, // dst 10.0.0.2
    0x9c, 0x40, 0x01, 0xbb, // src port 40000, dst port 443
    0x00, 0x00, 0x00, 0x64, // seq 100
    0x00, 0x00, 0x00, 0x00, // ack 0
    0xa0, 0x02, 0xff, 0xff, // data offset 10 (40 bytes), flags SYN, window
    0x00, 0x00, 0x00, 0x00, // checksum, urgent pointer
    0x02, 0x04, 0x05, 0xb4, // MSS 1460
    0x04, 0x02, // SACK permitted
    0x08, 0x0a, 0x00, 0x00, 0x03, 0xe8, 0x00, 0x00, 0x00, 0x00, // timestamps TSval 1000, TSecr 0
    0x01, // NOP
    0x03, 0x03, 0x07, // window scale 7
];

#[test]
fn tcp_syn_with_timestamps() {
    let o = eth(&TCP_SYN_TS);
    assert_eq!(o.error, None);
    assert!(!o.snaplen_cut);
    let l2 = o.l2.unwrap();
    assert_eq!(l2.src, mac("02:00:00:00:00:01"));
    assert_eq!(l2.dst, Some(mac("02:00:00:00:00:02")));
    assert_eq!(l2.ether_type, 0x0800);
    assert_eq!(
        o.net,
        Net::Ip { src: "10.0.0.1".parse().unwrap(), dst: "10.0.0.2".parse().unwrap(), proto: 6, fragment: false }
    );
    assert_eq!(
        o.l4,
        L4::Tcp(TcpInfo {
            src_port: 40000,
            dst_port: 443,
            flags: tcp_flags::SYN,
            seq: 100,
            ack: 0,
            payload_len: 0,
            timestamps: Some((1000, 0)),
        })
    );
}

#[test]
fn snaplen_cut_inside_tcp_header_is_not_an_error() {
    // Captured 40 of 74 bytes: the TCP header is cut.
    let o = decode(&Tunnels::default(), linktype::ETHERNET, T, 74, 40, &TCP_SYN_TS[..40]);
    assert_eq!(o.error, None);
    assert!(o.snaplen_cut);
    assert!(o.l2.is_some());
    assert!(matches!(o.net, Net::Ip { proto: 6, .. }));
    assert_eq!(o.l4, L4::None);
}

#[test]
fn snaplen_cut_payload_keeps_tcp_payload_length_from_ip() {
    let f = frames::tcp4(
        mac("02:00:00:00:00:01"),
        mac("02:00:00:00:00:02"),
        [10, 0, 0, 1].into(),
        [10, 0, 0, 2].into(),
        1,
        2,
        5,
        Some(6),
        false,
        1000,
    );
    let o = decode(&Tunnels::default(), linktype::ETHERNET, T, f.len() as u32, 64, &f[..64]);
    assert_eq!(o.error, None);
    assert!(!o.snaplen_cut, "headers are whole; only payload was cut");
    match o.l4 {
        L4::Tcp(t) => assert_eq!(t.payload_len, 1000),
        other => panic!("{other:?}"),
    }
}

#[test]
fn icmp_echo_id_and_seq() {
    let f = [
        0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00, // Ethernet, IPv4
        0x45, 0x00, 0x00, 0x1c, 0x00, 0x00, 0x00, 0x00, 0x40, 0x01, 0x00, 0x00, // IPv4, ICMP, total 28
        10, 0, 0, 1, 10, 0, 0, 2, // addresses
        0x08, 0x00, 0x00, 0x00, // echo request, code 0, checksum
        0x12, 0x34, 0x00, 0x07, // id 0x1234, seq 7
    ];
    let o = eth(&f);
    assert_eq!(o.error, None);
    assert_eq!(o.l4, L4::Icmp(IcmpInfo { v6: false, icmp_type: 8, code: 0, id: 0x1234, seq: 7 }));
}

#[test]
fn rarp_announce_is_decoded_like_arp() {
    let vm = mac("fa:16:3e:00:00:01");
    let f = frames::arp(vm, Mac::BROADCAST, true, 3, vm, Ipv4Addr::UNSPECIFIED, vm, Ipv4Addr::UNSPECIFIED);
    let o = eth(&f);
    assert_eq!(o.error, None);
    assert_eq!(o.l2.unwrap().ether_type, ethertype::RARP);
    assert_eq!(
        o.net,
        Net::Arp {
            rarp: true,
            op: 3,
            sender_mac: vm,
            sender_ip: Ipv4Addr::UNSPECIFIED,
            target_mac: vm,
            target_ip: Ipv4Addr::UNSPECIFIED
        }
    );
}

#[test]
fn qinq_tags_are_walked() {
    let f = frames::udp4_qinq(
        mac("02:00:00:00:00:01"),
        mac("02:00:00:00:00:02"),
        200,
        300,
        [10, 0, 0, 1].into(),
        [10, 0, 0, 2].into(),
        5,
        6,
        10,
    );
    let o = eth(&f);
    assert_eq!(o.error, None);
    let l2 = o.l2.unwrap();
    assert_eq!(l2.vlan, Some(300));
    assert_eq!(l2.ether_type, 0x0800);
    assert_eq!(o.l4, L4::Udp { src_port: 5, dst_port: 6 });
}

#[test]
fn each_malformed_frame_gives_its_kind_and_keeps_its_macs() {
    let (a, b) = (mac("02:00:00:00:00:01"), mac("02:00:00:00:00:02"));
    for (f, kind) in frames::malformed(a, b, [10, 0, 0, 1].into(), [10, 0, 0, 2].into()) {
        let o = eth(&f);
        assert_eq!(o.error.map(DecodeErrorKind::as_str), Some(kind), "frame {f:02x?}");
        assert!(!o.snaplen_cut);
        if kind != "link_truncated" {
            assert_eq!(o.l2.map(|l| l.src), Some(a), "{kind}: a complete Ethernet header counts");
        } else {
            assert_eq!(o.l2, None);
        }
        assert_eq!(o.l4, L4::None, "{kind}: nothing above the damage is used");
    }
}

#[test]
fn runt_cut_by_snaplen_is_a_cut_not_an_error() {
    let o = decode(&Tunnels::default(), linktype::ETHERNET, T, 60, 10, &TCP_SYN_TS[..10]);
    assert_eq!(o.error, None);
    assert!(o.snaplen_cut);
}

#[test]
fn linux_sll2_gives_the_sender_mac_and_ip() {
    let mut f = vec![
        0x08, 0x00, // protocol IPv4
        0x00, 0x00, // reserved
        0x00, 0x00, 0x00, 0x02, // interface index
        0x00, 0x01, // ARPHRD_ETHER
        0x04, // packet type: outgoing
        0x06, // address length
        0x02, 0, 0, 0, 0, 0x01, 0, 0, // address (padded to 8)
    ];
    f.extend_from_slice(&TCP_SYN_TS[14..]);
    let o = decode(&Tunnels::default(), linktype::LINUX_SLL2, T, f.len() as u32, f.len() as u32, &f);
    assert_eq!(o.error, None);
    assert_eq!(o.l2.map(|l| (l.src, l.dst)), Some((mac("02:00:00:00:00:01"), None)));
    assert!(matches!(o.l4, L4::Tcp(_)));
}

#[test]
fn unsupported_link_type_is_counted() {
    let o = decode(&Tunnels::default(), 147, T, 10, 10, &[0; 10]);
    assert_eq!(o.error, Some(DecodeErrorKind::UnsupportedLink));
}

#[test]
fn error_kind_labels_are_unique() {
    let labels: std::collections::HashSet<_> = DecodeErrorKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(labels.len(), DecodeErrorKind::COUNT);
    for (i, k) in DecodeErrorKind::ALL.iter().enumerate() {
        assert_eq!(*k as usize, i);
    }
}

proptest! {
    /// Decode never panics and never reads past the slice, on any bytes, any
    /// link type, any claimed lengths.
    #[test]
    fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200), extra in 0u32..3000, lt in prop_oneof![Just(1i32), Just(0), Just(101), Just(113), Just(276), Just(228), Just(229), any::<i32>()]) {
        let n = data.len() as u32;
        let o = decode(&Tunnels::default(), lt, T, n + extra, n, &data);
        prop_assert_eq!(o.cap_len, n);
        let _ = flow_hash(&Tunnels::default(), lt, &data);
    }

    /// Mutating a valid frame anywhere never panics, and a complete Ethernet
    /// header always yields the MACs.
    #[test]
    fn mutated_frames_keep_their_macs(pos in 0usize..74, byte in any::<u8>(), cut in 14usize..=74) {
        let mut f = TCP_SYN_TS;
        f[pos] = byte;
        let o = decode(&Tunnels::default(), linktype::ETHERNET, T, 74, cut as u32, &f[..cut]);
        let l2 = o.l2.expect("14 bytes or more always decode the Ethernet header");
        prop_assert_eq!(l2.src.0, <[u8; 6]>::try_from(&f[6..12]).unwrap());
    }
}

fn underlay() -> frames::Underlay {
    frames::Underlay {
        src: mac("52:54:00:aa:00:01"),
        dst: mac("52:54:00:aa:00:02"),
        sip: [10, 0, 0, 31].into(),
        dip: [10, 0, 0, 32].into(),
        vni: 0x1234,
    }
}

#[test]
fn vxlan_inner_frame_is_the_vm_layer_and_the_outer_is_kept() {
    let inner = TCP_SYN_TS;
    let f = frames::vxlan(&underlay(), &inner);
    let o = eth(&f);
    assert_eq!(o.error, None);
    assert_eq!(o.vm_len, 74, "the inner frame's length");
    assert_eq!(o.orig_len, 74 + 50);
    assert_eq!(o.l2.unwrap().src, mac("02:00:00:00:00:01"));
    assert!(matches!(o.l4, L4::Tcp(TcpInfo { src_port: 40000, timestamps: Some((1000, 0)), .. })));
    assert_eq!(
        o.outer,
        Some(Outer {
            src_mac: mac("52:54:00:aa:00:01"),
            dst_mac: mac("52:54:00:aa:00:02"),
            src_ip: "10.0.0.31".parse().unwrap(),
            dst_ip: "10.0.0.32".parse().unwrap(),
            vni: 0x1234,
        })
    );
    // The shard hash follows the inner flow.
    let t = Tunnels::default();
    assert_eq!(flow_hash(&t, linktype::ETHERNET, &f), flow_hash(&t, linktype::ETHERNET, &inner));
}

#[test]
fn geneve_options_are_skipped_and_nesting_keeps_the_outermost() {
    let f = frames::geneve(&underlay(), 3, &TCP_SYN_TS);
    let o = eth(&f);
    assert_eq!((o.error, o.vm_len), (None, 74));
    assert_eq!(o.outer.map(|x| x.vni), Some(0x1234));
    let inner_tunnel = frames::Underlay { vni: 7, ..underlay().reverse() };
    let nested = frames::vxlan(&underlay(), &frames::geneve(&inner_tunnel, 0, &TCP_SYN_TS));
    let o = eth(&nested);
    assert_eq!((o.error, o.vm_len), (None, 74));
    assert_eq!(o.outer.map(|x| (x.vni, x.src_ip)), Some((0x1234, "10.0.0.31".parse().unwrap())));
    assert_eq!(o.l2.unwrap().src, mac("02:00:00:00:00:01"));
}

#[test]
fn bogus_or_short_tunnel_headers_are_tunnel_errors_and_keep_the_outer_frame() {
    let mut f = frames::vxlan(&underlay(), &TCP_SYN_TS);
    f[14 + 20 + 8] = 0x00; // VXLAN flags without the I bit
    let o = eth(&f);
    assert_eq!(o.error, Some(DecodeErrorKind::Tunnel));
    assert_eq!((o.outer, o.vm_len), (None, o.orig_len));
    assert_eq!(o.l2.unwrap().src, mac("52:54:00:aa:00:01"), "counted for the outer MACs");

    // An inner Ethernet header of 10 bytes, captured whole: an error.
    let f = frames::vxlan(&underlay(), &TCP_SYN_TS[..10]);
    assert_eq!(eth(&f).error, Some(DecodeErrorKind::Tunnel));
    // The same cut by the snaplen: not an error.
    let f = frames::vxlan(&underlay(), &TCP_SYN_TS);
    let o = decode(&Tunnels::default(), linktype::ETHERNET, T, f.len() as u32, 60, &f[..60]);
    assert_eq!((o.error, o.snaplen_cut), (None, true));
    // Geneve version 1 is bogus.
    let mut f = frames::geneve(&underlay(), 0, &TCP_SYN_TS);
    f[14 + 20 + 8] = 0x40;
    assert_eq!(eth(&f).error, Some(DecodeErrorKind::Tunnel));
}

#[test]
fn only_configured_ports_are_tunnels() {
    let f = frames::vxlan(&underlay(), &TCP_SYN_TS);
    let none = Tunnels::new(&[], 6081).unwrap();
    let o = decode(&none, linktype::ETHERNET, T, f.len() as u32, f.len() as u32, &f);
    assert_eq!((o.outer, o.l4), (None, L4::Udp { src_port: 49152, dst_port: 4789 }));
    let linux = Tunnels::new(&[8472, 4789], 6081).unwrap();
    assert!(decode(&linux, linktype::ETHERNET, T, f.len() as u32, f.len() as u32, &f).outer.is_some());
    assert!(Tunnels::new(&[1, 2, 3, 4, 5], 6081).is_none());
}

/// The VXLAN fast path gives exactly what the general path gives: on every
/// prefix (a snaplen) of each distinct frame of the overlay scenarios (TCP,
/// UDP, ICMP, ARP and RARP inside, cut migration streams), and on frames with
/// each outer header byte set to values that break one of its conditions.
#[test]
fn the_vxlan_fast_path_equals_the_general_path() {
    use crate::synth::scenario::{migration, mtd, Encap};
    let tun = Tunnels::default();
    let mut frames: Vec<Vec<u8>> = migration(Encap::Vxlan).into_iter().chain(mtd()).map(|f| f.data).collect();
    frames.sort();
    frames.dedup();
    let mut fast = 0;
    let both = |data: &[u8], orig: u32| {
        // Compared below `decode`'s length check, which refuses the overrun case.
        let empty = Observation::empty(T, orig, data.len() as u32);
        let mut a = empty;
        let took = decode_vxlan_fast(&mut a, &tun, data);
        let b = general(&tun, orig, data);
        if took {
            assert_eq!(a, b, "{data:02x?} (orig {orig})");
        } else {
            assert_eq!(a, empty, "left as it was: {data:02x?} (orig {orig})");
        }
        took
    };
    for f in &frames {
        for cut in 0..=f.len() {
            fast += usize::from(both(&f[..cut], f.len() as u32));
        }
        // On the wire longer than the IP packet (padding), or shorter (an overrun).
        both(f, f.len() as u32 + 10);
        both(f, f.len().saturating_sub(1) as u32);
        for i in 0..64.min(f.len()) {
            for v in [0x00, 0xff, f[i] ^ 0x08, f[i] ^ 0x40, f[i].wrapping_add(1)] {
                let mut g = f.clone();
                g[i] = v;
                both(&g, g.len() as u32);
            }
        }
    }
    assert!(fast > 10_000, "the fast path was taken {fast} times");
}

/// Distinct frames to compare the fast paths on, by their first 128 bytes
/// (what decoding reads): the generated scenarios and datacenter mix (plain
/// and VXLAN), and every Ethernet frame of the real captures shipped with
/// the project and beside it (tcpdump's, Suricata's, Zeek's and the QEMU
/// lab's).
fn frames_to_compare() -> Vec<Vec<u8>> {
    use crate::capture::reader::CaptureReader;
    use crate::synth::scenario::{basic, migration, migration_plain, mtd, rtt, Encap};
    let mut out: Vec<Vec<u8>> = [basic(), rtt(), migration_plain(), migration(Encap::Vxlan), mtd()]
        .into_iter()
        .flatten()
        .map(|f| f.data)
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for vxlan in [false, true] {
        let p = dir.path().join(format!("mix-{vxlan}.pcap"));
        crate::synth::dcmix::DcMix { frames: 20_000, vxlan, ..Default::default() }.write(&p).unwrap();
        files.push(p);
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for d in [root.join("captures"), root.join("../shared/captures/third_party")] {
        let mut walk = vec![d];
        while let Some(d) = walk.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk.push(p);
                } else {
                    files.push(p);
                }
            }
        }
    }
    let mut real = 0;
    for p in &files {
        let Ok(f) = std::fs::File::open(p) else { continue };
        let src: Box<dyn std::io::Read> = if p.extension().is_some_and(|e| e == "gz") {
            Box::new(flate2::read::GzDecoder::new(f))
        } else {
            Box::new(f)
        };
        let Ok(mut r) = CaptureReader::new(std::io::BufReader::new(src)) else { continue };
        while let Ok(Some(fr)) = r.next_frame() {
            if fr.linktype == linktype::ETHERNET {
                out.push(fr.data[..fr.data.len().min(128)].to_vec());
                real += 1;
            }
        }
    }
    assert!(real > 20_000, "{real} frames of the real and generated captures");
    for f in &mut out {
        f.truncate(128);
    }
    out.sort();
    out.dedup();
    out
}

/// The plain fast path (Ethernet, IPv4, TCP/UDP/ICMP by fixed offsets)
/// fills exactly what the general path fills, on every prefix of each
/// distinct frame, with the wire length equal, longer (padding) and shorter
/// (an overrun), and with each header byte set to values that break one of
/// its conditions; and the VXLAN fast path, which now takes the same
/// inner path, equals the general path on the same frames.
#[test]
fn the_fast_paths_equal_the_general_path_on_real_and_generated_frames() {
    let tun = Tunnels::default();
    let frames = frames_to_compare();
    let (mut plain, mut vxlan, mut shortened) = (0usize, 0usize, 0usize);
    let mut both = |data: &[u8], orig: u32| {
        // What the reader copies decodes as the whole (`cap_len` is the
        // frame's either way): for each `limits.decode_bytes` the frames
        // here can tell apart.
        for max in [64, 100, 128, 320] {
            let whole = &data[..data.len().min(max)];
            let n = needed_prefix(&tun, linktype::ETHERNET, data, orig, max);
            let cap = data.len() as u32;
            assert_eq!(
                decode(&tun, linktype::ETHERNET, T, orig, cap, &data[..n]),
                decode(&tun, linktype::ETHERNET, T, orig, cap, whole),
                "prefix {n} of {data:02x?} (orig {orig}, max {max})"
            );
            shortened += usize::from(n < whole.len());
        }
        let b = general(&tun, orig, data);
        let mut a = Observation::empty(T, orig, data.len() as u32);
        if fill_ipv4_fast(&mut a, &tun, data, 0) {
            assert_eq!(a, b, "plain {data:02x?} (orig {orig})");
            plain += 1;
        }
        let mut a = Observation::empty(T, orig, data.len() as u32);
        if decode_vxlan_fast(&mut a, &tun, data) {
            assert_eq!(a, b, "vxlan {data:02x?} (orig {orig})");
            vxlan += 1;
        }
    };
    // Every frame whole and at three wire lengths; every prefix and the
    // mutations of an evenly spread 1,200 of them (all would take minutes).
    let step = (frames.len() / 1200).max(1);
    for (k, f) in frames.iter().enumerate() {
        let wire = f.len() as u32;
        both(f, wire);
        both(f, wire + 10);
        both(f, wire.saturating_sub(1));
        if k % step != 0 {
            continue;
        }
        for cut in 0..f.len() {
            both(&f[..cut], wire);
            both(&f[..cut], 1514);
        }
        for i in 0..f.len().min(80) {
            for v in [0x00, 0xff, f[i] ^ 0x08, f[i] ^ 0x40, f[i] ^ 0x01, f[i].wrapping_add(1), f[i].wrapping_sub(1)] {
                let mut g = f.clone();
                g[i] = v;
                both(&g, wire);
                both(&g, 1514);
            }
        }
    }
    eprintln!(
        "{} distinct frames; fast paths taken: plain {plain}, vxlan {vxlan}; prefixes shortened {shortened}",
        frames.len()
    );
    assert!(plain > 100_000 && vxlan > 50_000, "fast paths taken: plain {plain}, vxlan {vxlan}");
    assert!(shortened > 100_000, "prefixes shortened: {shortened}");
}

#[test]
fn impossible_frame_lengths_are_damage_not_traffic() {
    let t = Tunnels::default();
    // orig_len 0xFFFFFFFF with 74 bytes captured (a damaged record header).
    let o = decode(&t, linktype::ETHERNET, T, u32::MAX, 74, &TCP_SYN_TS);
    assert_eq!((o.error, o.l2, o.orig_len, o.vm_len), (Some(DecodeErrorKind::FrameLength), None, 0, 0));
    // Shorter on the wire than captured.
    let o = decode(&t, linktype::ETHERNET, T, 60, 74, &TCP_SYN_TS);
    assert_eq!((o.error, o.l2), (Some(DecodeErrorKind::FrameLength), None));
    // The largest frame believed, and one byte more.
    assert!(decode(&t, linktype::ETHERNET, T, MAX_FRAME_LEN, 74, &TCP_SYN_TS).l2.is_some());
    assert_eq!(
        decode(&t, linktype::ETHERNET, T, MAX_FRAME_LEN + 1, 74, &TCP_SYN_TS).error,
        Some(DecodeErrorKind::FrameLength)
    );
    assert!(frame_len_ok(74, 74) && !frame_len_ok(73, 74) && !frame_len_ok(u32::MAX, 74));
}

#[test]
fn raw_ip_decodes_under_linktype_raw_and_both_dlt_raw_values() {
    let f = frames::udp4(
        mac("fa:16:3e:00:00:01"),
        mac("52:54:00:ff:00:01"),
        [10, 0, 0, 1].into(),
        [10, 0, 0, 2].into(),
        1000,
        53,
        20,
    );
    for lt in [linktype::RAW, linktype::DLT_RAW, linktype::DLT_RAW_OPENBSD, linktype::IPV4] {
        assert!(linktype::decoded(lt));
        let ip = &f[14..];
        let o = decode(&Tunnels::default(), lt, T, ip.len() as u32, ip.len() as u32, ip);
        assert_eq!(o.error, None, "link type {lt}");
        assert!(matches!(o.l4, L4::Udp { dst_port: 53, .. }), "link type {lt}");
        assert_eq!(o.l2, None);
    }
    assert!(!linktype::decoded(127));
}

/// Ethernet / IPv4 fragment of an ICMP echo reply: `frag` is the flags and
/// offset field, the payload the fragment's first 8 bytes.
fn icmp_fragment(frag: [u8; 2], payload: [u8; 8]) -> Vec<u8> {
    let mut f = vec![
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // dst MAC
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, // src MAC
        0x08, 0x00, // ethertype IPv4
        0x45, 0x00, 0x00, 0x1c, // version 4, IHL 5, total length 28
        0x6e, 0xb5, frag[0], frag[1], // id, flags and fragment offset
        0x40, 0x01, 0x00, 0x00, // TTL 64, protocol ICMP, checksum (unchecked)
        0x0a, 0x09, 0x00, 0x02, // src 10.9.0.2
        0x0a, 0x09, 0x00, 0x01, // dst 10.9.0.1
    ];
    f.extend_from_slice(&payload);
    f
}

#[test]
fn the_first_fragment_of_an_echo_reply_carries_its_id_and_seq() {
    // MF set, offset 0: the ICMP header is here (the rest of the echo follows).
    let o = eth(&icmp_fragment(
        [0x20, 0x00],
        [
            0x00, 0x00, 0x12, 0x34, // type 0 (echo reply), code 0, checksum
            0x42, 0x42, 0x00, 0x01, // id 0x4242, seq 1
        ],
    ));
    assert_eq!(o.error, None);
    assert_eq!(
        o.net,
        Net::Ip { src: "10.9.0.2".parse().unwrap(), dst: "10.9.0.1".parse().unwrap(), proto: 1, fragment: false }
    );
    assert_eq!(o.l4, L4::Icmp(IcmpInfo { v6: false, icmp_type: 0, code: 0, id: 0x4242, seq: 1 }));
    // Offset 1480 (185 x 8), MF clear: the middle of the echo's data, no header.
    let o = eth(&icmp_fragment([0x00, 0xb9], [0x00, 0x00, 0x12, 0x34, 0x42, 0x42, 0x00, 0x01]));
    assert_eq!(o.error, None);
    assert_eq!(
        o.net,
        Net::Ip { src: "10.9.0.2".parse().unwrap(), dst: "10.9.0.1".parse().unwrap(), proto: 1, fragment: true }
    );
    assert_eq!(o.l4, L4::None);
}

#[test]
fn the_first_fragment_of_an_icmpv6_echo_carries_its_id_and_seq() {
    let mut f = vec![
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // dst MAC
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, // src MAC
        0x86, 0xdd, // ethertype IPv6
        0x60, 0x00, 0x00, 0x00, // version 6
        0x00, 0x10, 0x2c, 0x40, // payload length 16, next header fragment (44), hop limit 64
    ];
    f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02]); // src 2001:db8::2
    f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01]); // dst 2001:db8::1
    f.extend_from_slice(&[
        0x3a, 0x00, 0x00, 0x01, // next header ICMPv6, reserved, offset 0 with M set
        0x00, 0x00, 0x00, 0x07, // identification
        0x81, 0x00, 0x00, 0x00, // type 129 (echo reply), code 0, checksum
        0x00, 0x07, 0x00, 0x03, // id 7, seq 3
    ]);
    let o = eth(&f);
    assert_eq!(o.error, None);
    assert!(matches!(o.net, Net::Ip { proto: 58, fragment: false, .. }), "{:?}", o.net);
    assert_eq!(o.l4, L4::Icmp(IcmpInfo { v6: true, icmp_type: 129, code: 0, id: 7, seq: 3 }));
}

/// Found by `fuzz/run.sh` (decode target): a Linux SLL2 frame carrying IPv6
/// whose extension headers are cut. Walking them through etherparse's
/// iterator read past the slice (a UB check panicked); decode must not.
const FUZZ_IPV6_EXTS_CUT: [u8; 117] = [
    0x07, 0x86, 0xdd, 0xff, 0x24, 0x03, 0x01, 0x69, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x8e, 0x00, 0x00, 0x00,
    0x00, 0x04, 0x60, 0x05, 0xc2, 0x30, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x60, 0x30,
    0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x54, 0x17, 0xc1, 0x00, 0x09, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x00, 0xc0, 0xe4, 0x01, 0x2c, 0x01, 0x00, 0x00, 0x00, 0x17, 0x00, 0x33, 0x3f, 0xba, 0x2c, 0x2c, 0x2c, 0x2c, 0x2c,
    0x2c, 0x00, 0x00, 0x00, 0x01, 0x2c, 0x2c, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x2c, 0x2c, 0x2c, 0x2c, 0x2c, 0x01,
    0x00, 0x00, 0x02, 0x8a, 0x8a, 0x8a, 0x8a, 0x8a, 0x8a, 0x8a, 0x8a, 0x8a, 0x8a, 0x8a, 0x8a, 0x2c, 0x2c, 0x2c, 0x2c,
    0x2c, 0x2c, 0x2c,
];

#[test]
fn fuzz_finding_ipv6_extension_headers_cut_short_do_not_panic() {
    let (&lt, frame) = FUZZ_IPV6_EXTS_CUT.split_first().unwrap();
    assert_eq!(lt, 7, "link type 276, Linux SLL2");
    let n = frame.len() as u32;
    let o = decode(&Tunnels::default(), linktype::LINUX_SLL2, T, n + 7, n, frame);
    assert!(matches!(o.net, Net::Ip { proto: _, .. }), "{:?}", o.net);
    assert_eq!(o.l4, L4::None);
}

/// The shard decodes every frame into one observation it keeps: what
/// `decode_into` leaves equals a fresh `decode` whatever the frame before
/// it left (a layer, a tunnel, an error, a cut), on real and generated
/// frames, their prefixes and impossible lengths, in both orders.
#[test]
fn decoding_into_a_used_observation_equals_a_fresh_decode() {
    let tun = Tunnels::default();
    let mut cases: Vec<(Vec<u8>, u32)> = Vec::new();
    for f in frames_to_compare() {
        let whole = f.len() as u32;
        for n in [f.len(), 60.min(f.len()), 34.min(f.len()), 14.min(f.len()), 0] {
            cases.push((f[..n].to_vec(), whole));
        }
        cases.push((f.clone(), u32::MAX));
    }
    assert!(cases.len() > 100, "{} cases", cases.len());
    let mut o = decode(&tun, linktype::LINUX_SLL, T, 0, 0, &[]);
    let mut differed = 0usize;
    for pass in 0..2 {
        if pass == 1 {
            cases.reverse();
        }
        let mut before: Option<Observation> = None;
        for (data, orig) in &cases {
            let fresh = decode(&tun, linktype::ETHERNET, T, *orig, data.len() as u32, data);
            decode_into(&mut o, &tun, linktype::ETHERNET, T, *orig, data.len() as u32, data);
            assert_eq!(o, fresh, "{data:02x?} (orig {orig})");
            differed += usize::from(before.is_some_and(|b| b != fresh));
            before = Some(fresh);
        }
    }
    // The check means something only if consecutive frames decode apart.
    assert!(differed > cases.len(), "{differed} of {} followed a different frame", 2 * cases.len());
}
