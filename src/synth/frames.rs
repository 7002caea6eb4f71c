//! Frame builders: well-formed frames through etherparse's builder, malformed ones by editing bytes.

use crate::decode::Mac;
use etherparse::{ArpHardwareId, ArpOperation, ArpPacket, EtherType, PacketBuilder, VlanId};
use std::net::Ipv4Addr;

fn vlan(id: u16) -> VlanId {
    VlanId::try_new(id).unwrap_or(VlanId::ZERO)
}

/// Writes a UDP frame with `payload_len` zero bytes.
fn udp_frame(b: etherparse::PacketBuilderStep<etherparse::UdpHeader>, payload_len: usize) -> Vec<u8> {
    let payload = vec![0u8; payload_len];
    let mut out = Vec::with_capacity(b.size(payload_len));
    // Writing to a Vec cannot fail; a failure would only shorten the frame.
    let _ = b.write(&mut out, &payload);
    out
}

/// Ethernet / IPv4 / UDP with `payload_len` zero bytes.
pub fn udp4(src: Mac, dst: Mac, sip: Ipv4Addr, dip: Ipv4Addr, sport: u16, dport: u16, payload_len: usize) -> Vec<u8> {
    udp_frame(
        PacketBuilder::ethernet2(src.0, dst.0).ipv4(sip.octets(), dip.octets(), 64).udp(sport, dport),
        payload_len,
    )
}

/// Like [`udp4`], with an 802.1Q tag.
#[allow(clippy::too_many_arguments)]
pub fn udp4_vlan(
    src: Mac,
    dst: Mac,
    vid: u16,
    sip: Ipv4Addr,
    dip: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload_len: usize,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src.0, dst.0)
        .single_vlan(vlan(vid))
        .ipv4(sip.octets(), dip.octets(), 64)
        .udp(sport, dport);
    udp_frame(b, payload_len)
}

/// Like [`udp4`], with 802.1ad (0x88a8) outer and 802.1Q inner tags.
#[allow(clippy::too_many_arguments)]
pub fn udp4_qinq(
    src: Mac,
    dst: Mac,
    outer: u16,
    inner: u16,
    sip: Ipv4Addr,
    dip: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload_len: usize,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src.0, dst.0)
        .double_vlan(vlan(outer), vlan(inner))
        .ipv4(sip.octets(), dip.octets(), 64)
        .udp(sport, dport);
    udp_frame(b, payload_len)
}

/// Ethernet / IPv4 / TCP with the given flags and `payload_len` zero bytes.
#[allow(clippy::too_many_arguments)]
pub fn tcp4(
    src: Mac,
    dst: Mac,
    sip: Ipv4Addr,
    dip: Ipv4Addr,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: Option<u32>,
    syn: bool,
    payload_len: usize,
) -> Vec<u8> {
    let mut b =
        PacketBuilder::ethernet2(src.0, dst.0).ipv4(sip.octets(), dip.octets(), 64).tcp(sport, dport, seq, 65535);
    if syn {
        b = b.syn();
    }
    if let Some(a) = ack {
        b = b.ack(a);
    }
    let payload = vec![0u8; payload_len];
    let mut out = Vec::with_capacity(b.size(payload_len));
    let _ = b.write(&mut out, &payload);
    out
}

/// ARP (`rarp == false`) or RARP frame with an Ethernet/IPv4 body.
#[allow(clippy::too_many_arguments)]
pub fn arp(src: Mac, dst: Mac, rarp: bool, op: u16, sha: Mac, spa: Ipv4Addr, tha: Mac, tpa: Ipv4Addr) -> Vec<u8> {
    let body = ArpPacket::new(
        ArpHardwareId::ETHERNET,
        EtherType::IPV4,
        ArpOperation(op),
        &sha.0,
        &spa.octets(),
        &tha.0,
        &tpa.octets(),
    );
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&dst.0);
    out.extend_from_slice(&src.0);
    out.extend_from_slice(&(if rarp { 0x8035u16 } else { 0x0806u16 }).to_be_bytes());
    if let Ok(body) = body {
        out.extend_from_slice(&body.to_bytes());
    }
    out
}

/// Byte offsets into an untagged Ethernet/IPv4 frame, for breaking it on purpose.
pub mod offset {
    pub const ETHERTYPE: usize = 12;
    pub const IPV4_VERSION_IHL: usize = 14;
    pub const IPV4_TOTAL_LEN: usize = 16;
    pub const TCP_DATA_OFFSET: usize = 14 + 20 + 12;
    pub const UDP_LENGTH: usize = 14 + 20 + 4;
}

/// The malformed frames of the basic scenario, each with the decode error kind it must give.
pub fn malformed(src: Mac, dst: Mac, sip: Ipv4Addr, dip: Ipv4Addr) -> Vec<(Vec<u8>, &'static str)> {
    let mut out = Vec::new();
    // A runt: shorter than an Ethernet header.
    out.push((vec![0xde; 10], "link_truncated"));
    // IPv4 with IHL 3 (12 bytes), below the minimum of 5.
    let mut f = udp4(src, dst, sip, dip, 1000, 2000, 18);
    f[offset::IPV4_VERSION_IHL] = 0x43;
    out.push((f, "ipv4"));
    // TCP with data offset 2 (8 bytes), below the minimum of 5.
    let mut f = tcp4(src, dst, sip, dip, 1000, 80, 1, Some(1), false, 6);
    f[offset::TCP_DATA_OFFSET] = 0x20;
    out.push((f, "tcp"));
    // IPv4 total length 1000 in a 60-byte frame that was captured whole.
    let mut f = udp4(src, dst, sip, dip, 1000, 2000, 18);
    f[offset::IPV4_TOTAL_LEN..offset::IPV4_TOTAL_LEN + 2].copy_from_slice(&1000u16.to_be_bytes());
    out.push((f, "ip_length"));
    // UDP length 5, below the header's 8 bytes.
    let mut f = udp4(src, dst, sip, dip, 1000, 2000, 18);
    f[offset::UDP_LENGTH..offset::UDP_LENGTH + 2].copy_from_slice(&5u16.to_be_bytes());
    out.push((f, "udp"));
    // ARP body cut to 10 bytes, captured whole.
    let mut f = arp(src, Mac::BROADCAST, false, 1, src, sip, Mac::default(), dip);
    f.truncate(14 + 10);
    out.push((f, "arp"));
    // An 802.1Q tag cut after two bytes.
    let mut f = Vec::new();
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x81, 0x00, 0x00]);
    out.push((f, "vlan"));
    out
}

/// A TCP segment to build: everything RTT matching looks at.
#[derive(Clone, Copy, Debug)]
pub struct Tcp {
    pub src: Mac,
    pub dst: Mac,
    pub sip: Ipv4Addr,
    pub dip: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    /// Sets the ACK flag and number.
    pub ack: Option<u32>,
    pub syn: bool,
    /// The timestamps option (TSval, TSecr).
    pub ts: Option<(u32, u32)>,
    pub payload_len: usize,
}

impl Tcp {
    /// The same connection in the other direction, with no flags or data.
    pub fn reverse(&self) -> Tcp {
        Tcp {
            src: self.dst,
            dst: self.src,
            sip: self.dip,
            dip: self.sip,
            sport: self.dport,
            dport: self.sport,
            seq: 0,
            ack: None,
            syn: false,
            ts: None,
            payload_len: 0,
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut h = etherparse::TcpHeader::new(self.sport, self.dport, self.seq, 65535);
        h.syn = self.syn;
        if let Some(a) = self.ack {
            h.ack = true;
            h.acknowledgment_number = a;
        }
        if let Some((v, e)) = self.ts {
            let _ = h.set_options(&[
                etherparse::TcpOptionElement::Noop,
                etherparse::TcpOptionElement::Noop,
                etherparse::TcpOptionElement::Timestamp(v, e),
            ]);
        }
        let b = PacketBuilder::ethernet2(self.src.0, self.dst.0)
            .ipv4(self.sip.octets(), self.dip.octets(), 64)
            .tcp_header(h);
        let payload = vec![0u8; self.payload_len];
        let mut out = Vec::with_capacity(b.size(self.payload_len));
        let _ = b.write(&mut out, &payload);
        out
    }
}

/// ICMP echo request (`request == true`) or reply over IPv4.
pub fn icmp4_echo(src: Mac, dst: Mac, sip: Ipv4Addr, dip: Ipv4Addr, request: bool, id: u16, seq: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src.0, dst.0).ipv4(sip.octets(), dip.octets(), 64);
    let b = if request { b.icmpv4_echo_request(id, seq) } else { b.icmpv4_echo_reply(id, seq) };
    let payload = [0u8; 56];
    let mut out = Vec::with_capacity(b.size(payload.len()));
    let _ = b.write(&mut out, &payload);
    out
}

/// ICMPv6 echo request or reply.
pub fn icmp6_echo(src: Mac, dst: Mac, sip: [u8; 16], dip: [u8; 16], request: bool, id: u16, seq: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src.0, dst.0).ipv6(sip, dip, 64);
    let b = if request { b.icmpv6_echo_request(id, seq) } else { b.icmpv6_echo_reply(id, seq) };
    let payload = [0u8; 56];
    let mut out = Vec::with_capacity(b.size(payload.len()));
    let _ = b.write(&mut out, &payload);
    out
}

/// The outer (hypervisor) side of a tunnel.
#[derive(Clone, Copy, Debug)]
pub struct Underlay {
    pub src: Mac,
    pub dst: Mac,
    pub sip: Ipv4Addr,
    pub dip: Ipv4Addr,
    pub vni: u32,
}

impl Underlay {
    pub fn reverse(&self) -> Underlay {
        Underlay { src: self.dst, dst: self.src, sip: self.dip, dip: self.sip, vni: self.vni }
    }
}

/// `inner` (an Ethernet frame) in VXLAN over UDP 4789.
pub fn vxlan(u: &Underlay, inner: &[u8]) -> Vec<u8> {
    let mut payload = vec![0x08, 0, 0, 0];
    payload.extend_from_slice(&(u.vni << 8).to_be_bytes());
    payload.extend_from_slice(inner);
    let b = PacketBuilder::ethernet2(u.src.0, u.dst.0).ipv4(u.sip.octets(), u.dip.octets(), 64).udp(49152, 4789);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    let _ = b.write(&mut out, &payload);
    out
}

/// `inner` (an Ethernet frame) in Geneve over UDP 6081, with `option_words`
/// 4-byte words of options.
pub fn geneve(u: &Underlay, option_words: u8, inner: &[u8]) -> Vec<u8> {
    let mut payload = vec![option_words & 0x3f, 0, 0x65, 0x58];
    payload.extend_from_slice(&(u.vni << 8).to_be_bytes());
    for w in 0..option_words {
        // class 0x0102, type w, length 0 words: a 4-byte option header.
        payload.extend_from_slice(&[0x01, 0x02, w, 0]);
    }
    payload.extend_from_slice(inner);
    let b = PacketBuilder::ethernet2(u.src.0, u.dst.0).ipv4(u.sip.octets(), u.dip.octets(), 64).udp(49152, 6081);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    let _ = b.write(&mut out, &payload);
    out
}
