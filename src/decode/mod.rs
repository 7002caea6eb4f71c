//! Decode: one captured frame into one small `Copy` [`Observation`], tolerant of damage.
//!
//! Parsing is etherparse's lax slicer: it keeps every layer that parsed and
//! records where and why it stopped. What that means for vmsentry is decided
//! here:
//! - a frame with a complete Ethernet header always yields its MACs (the
//!   vSwitch carried it), whatever is malformed above;
//! - a frame cut by the capture's snaplen (`cap_len < orig_len`) is normal:
//!   layers that ran out of bytes are simply absent, and it is not an error;
//! - anything else malformed is one [`DecodeErrorKind`], and nothing above the
//!   malformed layer is used.
//!
//! Only the [`Observation`] crosses threads; the frame bytes never do.

mod flow_hash;

pub use flow_hash::flow_hash;
pub(crate) use flow_hash::mix;

pub use crate::vocab::{Mac, MacParseError};

use crate::vocab::PacketTime;
use etherparse::err::packet::SliceError;
use etherparse::err::Layer;
use etherparse::{ArpPacketSlice, LaxNetSlice, LaxSlicedPacket, TransportSlice};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use crate::vocab::linktype;

/// Ethertypes with a meaning of their own here.
pub mod ethertype {
    pub const ARP: u16 = 0x0806;
    pub const RARP: u16 = 0x8035;
    pub const IPV4: u16 = 0x0800;
    pub const IPV6: u16 = 0x86dd;
}

/// Byte offsets in the Linux "cooked" capture headers.
mod sll {
    use std::ops::Range;
    /// SLL (v1): packet type, ARPHRD, address length, address[8], protocol.
    pub const V1_LEN: usize = 16;
    /// Low byte of the big-endian 16-bit address length at bytes 4..6.
    pub const V1_ADDR_LEN: usize = 5;
    pub const V1_ADDR: Range<usize> = 6..14;
    pub const V1_PROTOCOL: Range<usize> = 14..16;
    /// SLL2: protocol, reserved, ifindex, ARPHRD, packet type, address length, address[8].
    pub const V2_LEN: usize = 20;
    pub const V2_PROTOCOL: Range<usize> = 0..2;
    pub const V2_ADDR_LEN: usize = 11;
    pub const V2_ADDR: Range<usize> = 12..20;
}

/// What was wrong with a frame, by the layer that was malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum DecodeErrorKind {
    /// Shorter than an Ethernet header (14 bytes) with nothing cut by snaplen.
    LinkTruncated = 0,
    /// A link type vmsentry does not decode; the frame still counts in totals.
    UnsupportedLink,
    /// A VLAN tag cut short.
    Vlan,
    /// An IPv4 header that is cut short or inconsistent (IHL, total length).
    Ipv4,
    /// An IPv6 header cut short.
    Ipv6,
    /// An IP header whose version is neither 4 nor 6.
    IpVersion,
    /// An IPv4 option/auth header or IPv6 extension header that is malformed.
    IpExtension,
    /// An IP total/payload length larger than the frame, the frame not cut by snaplen.
    IpLength,
    /// A TCP header cut short or with a data offset below 5.
    Tcp,
    /// A UDP header cut short, or a UDP length below 8 or past the IP payload.
    Udp,
    /// An ICMP or ICMPv6 header cut short.
    Icmp,
    /// An ARP or RARP body cut short.
    Arp,
    /// A Linux cooked-capture header cut short.
    LinuxSll,
    /// A VXLAN or Geneve header that is cut short or bogus, or an inner Ethernet header cut short.
    Tunnel,
    /// Anything else etherparse refused (MACsec and the like).
    Other,
    /// An impossible frame length: `orig_len` below the captured length, or
    /// above [`MAX_FRAME_LEN`]. The header is damaged, so the frame is not
    /// traffic: it counts for no MAC and adds no bytes.
    FrameLength,
    /// A frame stamped more than [`TIME_JUMP_WINDOWS`] windows after the
    /// frame before it, alone: the frame after
    /// it is back near the earlier time. Its timestamp is damaged, so it is
    /// not traffic and does not move the windows (counted by the pipeline's
    /// reader, which looks one frame ahead).
    Timestamp,
}

/// A forward jump of packet time of more than this many windows is held back by one frame, to see whether time
/// carries on from there or the frame was a lone damaged timestamp. Time
/// never goes back in a sound capture, so a sound frame is never refused.
pub const TIME_JUMP_WINDOWS: i64 = 16;

/// The longest frame believed (libpcap's own snaplen cap, 256 KiB); GSO
/// super-frames on a live capture stay well below it.
pub const MAX_FRAME_LEN: u32 = 256 * 1024;

/// Whether a capture header's lengths can be real: `cap_len <= orig_len <= MAX_FRAME_LEN`.
#[inline]
pub fn frame_len_ok(orig_len: u32, cap_len: usize) -> bool {
    orig_len <= MAX_FRAME_LEN && cap_len <= orig_len as usize
}

impl DecodeErrorKind {
    pub const COUNT: usize = 17;
    pub const ALL: [DecodeErrorKind; Self::COUNT] = [
        Self::LinkTruncated,
        Self::UnsupportedLink,
        Self::Vlan,
        Self::Ipv4,
        Self::Ipv6,
        Self::IpVersion,
        Self::IpExtension,
        Self::IpLength,
        Self::Tcp,
        Self::Udp,
        Self::Icmp,
        Self::Arp,
        Self::LinuxSll,
        Self::Tunnel,
        Self::Other,
        Self::FrameLength,
        Self::Timestamp,
    ];

    /// The label used in events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LinkTruncated => "link_truncated",
            Self::UnsupportedLink => "unsupported_link",
            Self::Vlan => "vlan",
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
            Self::IpVersion => "ip_version",
            Self::IpExtension => "ip_extension",
            Self::IpLength => "ip_length",
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Icmp => "icmp",
            Self::Arp => "arp",
            Self::LinuxSll => "linux_sll",
            Self::Tunnel => "tunnel",
            Self::Other => "other",
            Self::FrameLength => "frame_length",
            Self::Timestamp => "timestamp",
        }
    }
}

/// The VM layer's Ethernet addresses (the innermost Ethernet header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L2 {
    pub src: Mac,
    /// `None` where the link shows only a sender (Linux cooked captures).
    pub dst: Option<Mac>,
    /// The ethertype after any VLAN tags.
    pub ether_type: u16,
    /// The innermost VLAN id, if tagged.
    pub vlan: Option<u16>,
}

/// The tunnel's outer layer, which belongs to the hypervisor: the outermost
/// VXLAN or Geneve encapsulation of the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outer {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub vni: u32,
}

/// The network layer, as far as it parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Net {
    None,
    Ip {
        src: IpAddr,
        dst: IpAddr,
        /// IP protocol number of the payload (after extension headers).
        proto: u8,
        /// True for an IP fragment other than the first: its transport header
        /// travelled in the first. (The first fragment of an ICMP/ICMPv6
        /// message still gives its type, code, id and seq; other first
        /// fragments give no transport layer.)
        fragment: bool,
    },
    /// ARP (`rarp == false`) or RARP, Ethernet/IPv4 form only.
    Arp {
        rarp: bool,
        op: u16,
        sender_mac: Mac,
        sender_ip: Ipv4Addr,
        target_mac: Mac,
        target_ip: Ipv4Addr,
    },
}

/// TCP fields RTT matching needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpInfo {
    pub src_port: u16,
    pub dst_port: u16,
    /// Flags byte: FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10.
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    /// Payload bytes the header says follow (from the IP length, so a
    /// snaplen cut does not shrink it).
    pub payload_len: u32,
    /// Timestamps option (TSval, TSecr), if present.
    pub timestamps: Option<(u32, u32)>,
}

pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// ICMP / ICMPv6 fields: echo request and reply carry id and seq.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpInfo {
    pub v6: bool,
    pub icmp_type: u8,
    pub code: u8,
    pub id: u16,
    pub seq: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    None,
    Tcp(TcpInfo),
    Udp { src_port: u16, dst_port: u16 },
    Icmp(IcmpInfo),
}

/// Everything the pipeline needs to know of one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    pub ts: PacketTime,
    /// The frame's length on the wire (pcap `orig_len`): what bytes count.
    pub orig_len: u32,
    pub cap_len: u32,
    /// Length on the wire from the VM layer's Ethernet header on: `orig_len`
    /// for a plain frame, the inner frame's length for a tunneled one.
    pub vm_len: u32,
    pub l2: Option<L2>,
    /// The outermost tunnel, when the frame is VXLAN or Geneve.
    pub outer: Option<Outer>,
    pub net: Net,
    pub l4: L4,
    pub error: Option<DecodeErrorKind>,
    /// The snaplen cut the frame inside a header: the layers above are absent.
    pub snaplen_cut: bool,
}

impl Observation {
    /// A frame of these lengths with nothing decoded yet.
    pub fn empty(ts: PacketTime, orig_len: u32, cap_len: u32) -> Self {
        Observation {
            ts,
            orig_len,
            cap_len,
            vm_len: orig_len,
            l2: None,
            outer: None,
            net: Net::None,
            l4: L4::None,
            error: None,
            snaplen_cut: false,
        }
    }
}

/// Decodes one frame of the given link type. Never panics, never reads past
/// `data`; damage is reported in [`Observation::error`].
///
/// `data` is the captured frame or a prefix of it (the pipeline copies at
/// most `limits.decode_bytes` of each frame); `cap_len` is what the capture
/// holds and `orig_len` what was on the wire. Running out of `data` before
/// `orig_len` is a cut, not an error.
pub fn decode(tun: &Tunnels, linktype: i32, ts: PacketTime, orig_len: u32, cap_len: u32, data: &[u8]) -> Observation {
    let mut obs = Observation::empty(ts, orig_len, cap_len);
    decode_into(&mut obs, tun, linktype, ts, orig_len, cap_len, data);
    obs
}

/// [`decode`] into the caller's observation, which it overwrites whole. The
/// shard decodes every frame into one it keeps: an observation returned by
/// value was built on `decode`'s stack and copied out (168 bytes, a
/// `memcpy` per frame and 4-5 % of a replay's samples), as the compiler
/// does not build a local in the return slot that a callee borrows.
#[inline]
pub fn decode_into(
    obs: &mut Observation,
    tun: &Tunnels,
    linktype: i32,
    ts: PacketTime,
    orig_len: u32,
    cap_len: u32,
    data: &[u8],
) {
    *obs = Observation::empty(ts, orig_len, cap_len);
    if !frame_len_ok(orig_len, cap_len as usize) {
        obs.orig_len = 0;
        obs.vm_len = 0;
        obs.error = Some(DecodeErrorKind::FrameLength);
        return;
    }
    // Both fast paths leave `obs` as it was when they decline.
    if linktype == linktype::ETHERNET && (fill_ipv4_fast(obs, tun, data, 0) || decode_vxlan_fast(obs, tun, data)) {
        return;
    }
    decode_general(obs, tun, linktype, data);
}

/// How many leading bytes of a frame decoding needs: for the common frame
/// the fast paths take ([`fill_ipv4_fast`], plain or inside the VXLAN of
/// [`decode_vxlan_fast`]) just its headers, which end at its transport
/// header; for any other frame its first `max` bytes (`limits.decode_bytes`).
/// [`decode`] on that prefix gives exactly what it gives on the first `max`
/// bytes (same `orig_len` and `cap_len`): the fast path reads nothing past
/// those headers, and the same checks, on bytes the prefix keeps, choose it.
/// The reader copies only this much into a shard's batch, so a 1,500-byte
/// TCP segment moves 66 bytes across cores instead of `max`. A test checks
/// the equality on every real and generated frame, prefix and mutation the
/// fast paths are checked on.
#[inline]
pub fn needed_prefix(tun: &Tunnels, linktype: i32, data: &[u8], orig_len: u32, max: usize) -> usize {
    let all = data.len().min(max);
    if linktype != linktype::ETHERNET {
        return all;
    }
    let data = &data[..all];
    if let Some((_, end)) = ipv4_fast_shape(tun, data, 0, orig_len) {
        return end;
    }
    if let Some(end) = vxlan_fast_shape(tun, data, orig_len) {
        if let Some((_, inner)) = ipv4_fast_shape(tun, &data[VXLAN_INNER..end], VXLAN_INNER, orig_len) {
            return VXLAN_INNER + inner;
        }
    }
    all
}

/// The common frame's shape, the checks [`fill_ipv4_fast`] takes it on:
/// Ethernet without a VLAN tag, IPv4 without options or fragments whose
/// total length fits the wire, and a TCP, UDP (not to a tunnel port) or
/// ICMP header (not a timestamp message) whole inside both the IP packet
/// and `eth`. Gives the IP protocol and where the transport header ends.
#[inline]
fn ipv4_fast_shape(tun: &Tunnels, eth: &[u8], at: usize, orig_len: u32) -> Option<(u8, usize)> {
    const IP: usize = 14;
    const L4: usize = IP + 20;
    const TCP: u8 = 6;
    const UDP: u8 = 17;
    const ICMP: u8 = 1;
    const ICMP_TIMESTAMP: u8 = 13;
    const ICMP_TIMESTAMP_REPLY: u8 = 14;
    if eth.len() < L4 + 8 || eth[12..14] != [0x08, 0x00] || eth[IP] != 0x45 {
        return None;
    }
    let be16 = |s: &[u8], i: usize| u16::from_be_bytes([s[i], s[i + 1]]);
    let total = usize::from(be16(eth, IP + 2));
    // Past the wire is an error, and MF or an offset a fragment: both the general path's.
    if total < 20 || be16(eth, IP + 6) & 0x3fff != 0 || (at + IP + total) as u64 > u64::from(orig_len) {
        return None;
    }
    // The transport layer: what the IP header says it holds, as far as captured.
    let ip_len = total - 20;
    let seg = eth.get(L4..eth.len().min(IP + total))?;
    let proto = eth[IP + 9];
    let hl = match proto {
        TCP => {
            let hl = seg.get(12).map_or(0, |b| usize::from(b >> 4) * 4);
            if hl < 20 || seg.len() < hl {
                return None;
            }
            hl
        }
        UDP => {
            if seg.len() < 8 || !(8..=ip_len).contains(&usize::from(be16(seg, 4))) || tun.is_tunnel(be16(seg, 2)) {
                return None;
            }
            8
        }
        ICMP if seg.len() >= 8 && seg[0] != ICMP_TIMESTAMP && seg[0] != ICMP_TIMESTAMP_REPLY => 8,
        _ => return None,
    };
    Some((proto, L4 + hl))
}

/// The common frame without etherparse: the shape [`ipv4_fast_shape`]
/// checks. `eth` is the Ethernet frame, `at` bytes into the captured frame
/// (an overlay's inner frame is `at` = 50 bytes in, ending where the outer
/// IP packet ends). Fills the L2, network and transport layers of `obs` as
/// the general path would and returns true; anything else returns false
/// with `obs` untouched, for the general path. A test compares the two on
/// every prefix and on mutations of real and generated frames.
#[inline]
fn fill_ipv4_fast(obs: &mut Observation, tun: &Tunnels, eth: &[u8], at: usize) -> bool {
    const IP: usize = 14;
    const L4: usize = IP + 20;
    let Some((proto, end)) = ipv4_fast_shape(tun, eth, at, obs.orig_len) else { return false };
    let be16 = |s: &[u8], i: usize| u16::from_be_bytes([s[i], s[i + 1]]);
    let be32 = |s: &[u8], i: usize| u32::from_be_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    let ip_len = usize::from(be16(eth, IP + 2)) - 20;
    // The transport header, whole (the shape checked it).
    let seg = &eth[L4..end];
    let l4 = match proto {
        6 => {
            let hl = seg.len();
            let opts = &seg[20..hl];
            // Linux's two layouts (NOP NOP TS; SYN: MSS, SACK permitted,
            // TS) by offset, the rest by etherparse's walk.
            let at = |i: usize| Some((be32(opts, i), be32(opts, i + 4)));
            let timestamps = match opts {
                [1, 1, 8, 10, ..] if opts.len() >= 12 => at(4),
                [2, 4, _, _, 4, 2, 8, 10, ..] if opts.len() >= 16 => at(8),
                _ => tcp_timestamps(opts),
            };
            L4::Tcp(TcpInfo {
                src_port: be16(seg, 0),
                dst_port: be16(seg, 2),
                flags: seg[13],
                seq: be32(seg, 4),
                ack: be32(seg, 8),
                payload_len: (ip_len - hl) as u32,
                timestamps,
            })
        }
        17 => L4::Udp { src_port: be16(seg, 0), dst_port: be16(seg, 2) },
        _ => L4::Icmp(IcmpInfo { v6: false, icmp_type: seg[0], code: seg[1], id: be16(seg, 4), seq: be16(seg, 6) }),
    };
    let mac = |i: usize| Mac([eth[i], eth[i + 1], eth[i + 2], eth[i + 3], eth[i + 4], eth[i + 5]]);
    let ip4 = |i: usize| IpAddr::V4(Ipv4Addr::new(eth[i], eth[i + 1], eth[i + 2], eth[i + 3]));
    obs.l2 = Some(L2 { src: mac(6), dst: Some(mac(0)), ether_type: ethertype::IPV4, vlan: None });
    obs.net = Net::Ip { src: ip4(IP + 12), dst: ip4(IP + 16), proto, fragment: false };
    obs.l4 = l4;
    true
}

/// Where an overlay frame's inner Ethernet frame starts: past the outer
/// Ethernet, IPv4, UDP and VXLAN headers of [`decode_vxlan_fast`].
const VXLAN_INNER: usize = 50;

/// The common overlay frame's outer layers, the checks [`decode_vxlan_fast`]
/// takes it on: Ethernet, IPv4 without options or fragments, a non-zero
/// total length that fits the wire, UDP whose length is the rest of the IP
/// packet, to a VXLAN port, a VXLAN header with its I flag, and a whole
/// inner Ethernet header. Gives where the outer IP packet ends in `data`.
#[inline]
fn vxlan_fast_shape(tun: &Tunnels, data: &[u8], orig_len: u32) -> Option<usize> {
    const IP: usize = 14;
    const UDP: usize = IP + 20;
    const VXLAN: usize = UDP + 8;
    const INNER: usize = VXLAN_INNER;
    if data.len() < INNER + 14 || data[12..14] != [0x08, 0x00] || data[IP] != 0x45 || data[IP + 9] != 17 {
        return None;
    }
    let be16 = |i: usize| u16::from_be_bytes([data[i], data[i + 1]]);
    let total = usize::from(be16(IP + 2));
    if be16(IP + 6) & 0x3fff != 0 || total < INNER + 14 - IP || IP + total > orig_len as usize {
        return None;
    }
    let dport = be16(UDP + 2);
    if usize::from(be16(UDP + 4)) != total - 20 || !tun.is_vxlan(dport) || data[VXLAN] & tunnel_field::VXLAN_FLAG_I == 0
    {
        return None;
    }
    Some(data.len().min(IP + total))
}

/// The common overlay frame (the shape [`vxlan_fast_shape`] checks) without
/// etherparse's walk of the outer layers. Anything else takes the general
/// path. It fills `obs` (empty, as [`decode`] made it) and gives true, or
/// gives false and leaves `obs` as it was. What it fills equals the general
/// path's result (the outer layers are all replaced by the inner frame's,
/// keeping their addresses in `outer`); a test compares the two on every
/// prefix of real and mutated frames.
#[inline]
fn decode_vxlan_fast(obs: &mut Observation, tun: &Tunnels, data: &[u8]) -> bool {
    const IP: usize = 14;
    const UDP: usize = IP + 20;
    const VXLAN: usize = UDP + 8;
    const INNER: usize = VXLAN_INNER;
    let (ts, orig_len, cap_len) = (obs.ts, obs.orig_len, obs.cap_len);
    let Some(end) = vxlan_fast_shape(tun, data, orig_len) else { return false };
    let be16 = |i: usize| u16::from_be_bytes([data[i], data[i + 1]]);
    let mac = |i: usize| Mac([data[i], data[i + 1], data[i + 2], data[i + 3], data[i + 4], data[i + 5]]);
    let ip4 = |i: usize| IpAddr::V4(Ipv4Addr::new(data[i], data[i + 1], data[i + 2], data[i + 3]));
    // The common inner frame by fixed offsets too (as `decapsulate` would
    // fill it), into the caller's empty observation: the frame is built in
    // place, once (a second `Observation` here cost 8 % of a shard on the
    // VXLAN mix, in copies).
    obs.outer = Some(Outer {
        src_mac: mac(6),
        dst_mac: mac(0),
        src_ip: ip4(IP + 12),
        dst_ip: ip4(IP + 16),
        vni: u32::from_be_bytes([0, data[VXLAN + 4], data[VXLAN + 5], data[VXLAN + 6]]),
    });
    obs.vm_len = orig_len - INNER as u32;
    if fill_ipv4_fast(obs, tun, &data[INNER..end], INNER) {
        return true;
    }
    // Another inner frame: the outer layers, then `decapsulate`, as the
    // general path does.
    *obs = Observation::empty(ts, orig_len, cap_len);
    obs.l2 = Some(L2 { src: mac(6), dst: Some(mac(0)), ether_type: ethertype::IPV4, vlan: None });
    obs.net = Net::Ip { src: ip4(IP + 12), dst: ip4(IP + 16), proto: 17, fragment: false };
    obs.l4 = L4::Udp { src_port: be16(UDP), dst_port: be16(UDP + 2) };
    let cut = (data.len() as u64) < u64::from(orig_len);
    decapsulate(obs, tun, &data[VXLAN..end], data, cut, 0);
    true
}

fn decode_general(obs: &mut Observation, tun: &Tunnels, linktype: i32, data: &[u8]) {
    let cut = (data.len() as u64) < u64::from(obs.orig_len);
    match linktype {
        linktype::ETHERNET => match LaxSlicedPacket::from_ethernet(data) {
            Ok(p) => {
                if let Some(udp_payload) = fill(obs, &p, data, cut) {
                    decapsulate(obs, tun, udp_payload, data, cut, 0);
                }
            }
            Err(_) => set_len_error(obs, DecodeErrorKind::LinkTruncated, cut),
        },
        linktype::LINUX_SLL | linktype::LINUX_SLL2 => decode_sll(obs, linktype, data, cut),
        linktype::RAW | linktype::DLT_RAW | linktype::DLT_RAW_OPENBSD | linktype::IPV4 | linktype::IPV6 => {
            match LaxSlicedPacket::from_ip(data) {
                Ok(p) => {
                    fill(obs, &p, data, cut);
                }
                Err(e) => ip_header_error(obs, &e, cut),
            }
        }
        linktype::NULL | linktype::LOOP => {
            // 4-byte address family in host (NULL) or network (LOOP) order.
            match data.get(4..) {
                Some(rest) => match LaxSlicedPacket::from_ip(rest) {
                    Ok(p) => {
                        fill(obs, &p, data, cut);
                    }
                    Err(e) => ip_header_error(obs, &e, cut),
                },
                None => set_len_error(obs, DecodeErrorKind::LinkTruncated, cut),
            }
        }
        _ => obs.error = Some(DecodeErrorKind::UnsupportedLink),
    }
}

fn ip_header_error(obs: &mut Observation, e: &etherparse::err::ip::LaxHeaderSliceError, cut: bool) {
    use etherparse::err::ip::LaxHeaderSliceError as E;
    match e {
        E::Len(_) => set_len_error(obs, DecodeErrorKind::Ipv4, cut),
        E::Content(c) => obs.error = Some(ip_content_kind(c)),
    }
}

fn set_len_error(obs: &mut Observation, kind: DecodeErrorKind, cut: bool) {
    if cut {
        obs.snaplen_cut = true;
    } else {
        obs.error = Some(kind);
    }
}

fn decode_sll(obs: &mut Observation, linktype: i32, data: &[u8], cut: bool) {
    let (hdr_len, proto_range, addr_len_at, addr_range) = if linktype == linktype::LINUX_SLL {
        (sll::V1_LEN, sll::V1_PROTOCOL, sll::V1_ADDR_LEN, sll::V1_ADDR)
    } else {
        (sll::V2_LEN, sll::V2_PROTOCOL, sll::V2_ADDR_LEN, sll::V2_ADDR)
    };
    let (Some(proto), Some(&addr_len), Some(addr), Some(payload)) =
        (data.get(proto_range), data.get(addr_len_at), data.get(addr_range), data.get(hdr_len..))
    else {
        set_len_error(obs, DecodeErrorKind::LinuxSll, cut);
        return;
    };
    let ether_type = u16::from_be_bytes([proto[0], proto[1]]);
    if addr_len == 6 {
        let mut m = [0u8; 6];
        m.copy_from_slice(&addr[..6]);
        obs.l2 = Some(L2 { src: Mac(m), dst: None, ether_type, vlan: None });
    }
    let p = LaxSlicedPacket::from_ether_type(etherparse::EtherType(ether_type), payload);
    fill(obs, &p, data, cut);
}

/// Nested tunnels decoded at most (VXLAN in Geneve in VXLAN).
const MAX_TUNNEL_DEPTH: usize = 3;

/// If the UDP payload is a tunnel on a configured port, decodes its inner
/// Ethernet frame as the VM layer; the outermost tunnel is kept in
/// [`Observation::outer`].
fn decapsulate(obs: &mut Observation, tun: &Tunnels, udp_payload: &[u8], frame: &[u8], cut: bool, depth: usize) {
    let L4::Udp { dst_port, .. } = obs.l4 else { return };
    let kind = if tun.is_vxlan(dst_port) {
        TunnelKind::Vxlan
    } else if dst_port == tun.geneve_port {
        TunnelKind::Geneve
    } else {
        return;
    };
    if depth >= MAX_TUNNEL_DEPTH {
        return;
    }
    let (vni, inner) = match tunnel_header(kind, udp_payload) {
        Ok(x) => x,
        Err(TunnelHeader::Short) => {
            set_len_error(obs, DecodeErrorKind::Tunnel, cut);
            obs.l4 = L4::None;
            return;
        }
        Err(TunnelHeader::Bogus) => {
            obs.error = Some(DecodeErrorKind::Tunnel);
            obs.l4 = L4::None;
            return;
        }
    };
    let outer = match (obs.outer, obs.l2, obs.net) {
        (Some(o), _, _) => o,
        (None, Some(l2), Net::Ip { src, dst, .. }) => {
            Outer { src_mac: l2.src, dst_mac: l2.dst.unwrap_or_default(), src_ip: src, dst_ip: dst, vni }
        }
        _ => return,
    };
    let fresh = Observation { outer: Some(outer), ..Observation::empty(obs.ts, obs.orig_len, obs.cap_len) };
    match inner {
        Inner::Ethernet(inner) => match LaxSlicedPacket::from_ethernet(inner) {
            Ok(p) => {
                let offset = (inner.as_ptr() as usize).saturating_sub(frame.as_ptr() as usize) as u32;
                *obs = Observation { vm_len: obs.orig_len.saturating_sub(offset), ..fresh };
                if let Some(udp) = fill(obs, &p, frame, cut) {
                    decapsulate(obs, tun, udp, frame, cut, depth + 1);
                }
            }
            Err(_) => {
                // The inner Ethernet header is cut: the outer layers stand.
                set_len_error(obs, DecodeErrorKind::Tunnel, cut);
                obs.l4 = L4::None;
            }
        },
        // Geneve carrying IP: only a further tunnel inside it can bring an
        // inner Ethernet header; without one the outer frame stays the VM layer.
        Inner::Ip(ip) => {
            let Ok(p) = LaxSlicedPacket::from_ip(ip) else { return };
            let mut tmp = fresh;
            if let Some(udp) = fill(&mut tmp, &p, frame, cut) {
                decapsulate(&mut tmp, tun, udp, frame, cut, depth + 1);
                if tmp.l2.is_some() {
                    *obs = tmp;
                }
            }
        }
        Inner::Other => {}
    }
}

/// What a tunnel carries.
enum Inner<'a> {
    Ethernet(&'a [u8]),
    Ip(&'a [u8]),
    Other,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TunnelKind {
    Vxlan,
    Geneve,
}

enum TunnelHeader {
    Short,
    Bogus,
}

/// Tunnel header fields (RFC 7348, RFC 8926).
mod tunnel_field {
    pub const VXLAN_LEN: usize = 8;
    pub const VXLAN_FLAG_I: u8 = 0x08;
    pub const GENEVE_LEN: usize = 8;
    pub const GENEVE_ETHERNET: u16 = 0x6558;
}

/// The VNI and what the tunnel carries.
fn tunnel_header(kind: TunnelKind, p: &[u8]) -> Result<(u32, Inner<'_>), TunnelHeader> {
    use tunnel_field::*;
    let vni = |p: &[u8]| u32::from_be_bytes([0, p[4], p[5], p[6]]);
    match kind {
        TunnelKind::Vxlan => {
            if p.len() < VXLAN_LEN {
                return Err(TunnelHeader::Short);
            }
            if p[0] & VXLAN_FLAG_I == 0 {
                return Err(TunnelHeader::Bogus);
            }
            Ok((vni(p), Inner::Ethernet(&p[VXLAN_LEN..])))
        }
        TunnelKind::Geneve => {
            if p.len() < GENEVE_LEN {
                return Err(TunnelHeader::Short);
            }
            if p[0] >> 6 != 0 {
                return Err(TunnelHeader::Bogus);
            }
            let hdr = GENEVE_LEN + usize::from(p[0] & 0x3f) * 4;
            let Some(inner) = p.get(hdr..) else { return Err(TunnelHeader::Short) };
            let inner = match u16::from_be_bytes([p[2], p[3]]) {
                GENEVE_ETHERNET => Inner::Ethernet(inner),
                ethertype::IPV4 | ethertype::IPV6 => Inner::Ip(inner),
                _ => Inner::Other,
            };
            Ok((vni(p), inner))
        }
    }
}

/// Which UDP ports carry tunnels (`[tunnels]` in the rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tunnels {
    vxlan: [u16; Tunnels::MAX_VXLAN_PORTS],
    n_vxlan: usize,
    pub geneve_port: u16,
}

impl Default for Tunnels {
    /// VXLAN on 4789 (IANA), Geneve on 6081.
    fn default() -> Self {
        Tunnels { vxlan: [4789, 0, 0, 0], n_vxlan: 1, geneve_port: 6081 }
    }
}

impl Tunnels {
    pub const MAX_VXLAN_PORTS: usize = 4;

    /// The VXLAN ports, as given.
    pub fn vxlan_ports(&self) -> &[u16] {
        &self.vxlan[..self.n_vxlan]
    }

    /// `None` when more than [`Tunnels::MAX_VXLAN_PORTS`] VXLAN ports are given.
    pub fn new(vxlan_ports: &[u16], geneve_port: u16) -> Option<Tunnels> {
        if vxlan_ports.len() > Self::MAX_VXLAN_PORTS {
            return None;
        }
        let mut vxlan = [0u16; Self::MAX_VXLAN_PORTS];
        vxlan[..vxlan_ports.len()].copy_from_slice(vxlan_ports);
        Some(Tunnels { vxlan, n_vxlan: vxlan_ports.len(), geneve_port })
    }

    #[inline]
    pub fn is_vxlan(&self, port: u16) -> bool {
        self.vxlan[..self.n_vxlan].contains(&port)
    }

    #[inline]
    pub fn is_tunnel(&self, port: u16) -> bool {
        self.is_vxlan(port) || port == self.geneve_port
    }
}

/// Copies what parsed into the observation and classifies where it stopped.
/// `frame` is the whole frame `p` was parsed from (or contains). Returns the
/// UDP payload of a well-formed UDP datagram, for tunnel decoding.
fn fill<'a>(obs: &mut Observation, p: &LaxSlicedPacket<'a>, frame: &[u8], cut: bool) -> Option<&'a [u8]> {
    if let Some(etherparse::LinkSlice::Ethernet2(eth)) = &p.link {
        let vlan = p.link_exts.iter().rev().find_map(|e| match e {
            etherparse::LaxLinkExtSlice::Vlan(v) => Some(v.vlan_identifier().value()),
            _ => None,
        });
        let ether_type = p.ether_payload().map_or(eth.ether_type().0, |e| e.ether_type.0);
        obs.l2 = Some(L2 { src: Mac(eth.source()), dst: Some(Mac(eth.destination())), ether_type, vlan });
    }

    // The protocol and payload of a first fragment (etherparse parses no transport in fragments).
    let mut first_fragment: Option<(u8, &[u8])> = None;
    match &p.net {
        Some(LaxNetSlice::Ipv4(ip)) => {
            let h = ip.header();
            let pl = ip.payload();
            let later = pl.fragmented && h.fragments_offset().value() != 0;
            obs.net = Net::Ip {
                src: IpAddr::V4(h.source_addr()),
                dst: IpAddr::V4(h.destination_addr()),
                proto: pl.ip_number.0,
                fragment: later,
            };
            if pl.fragmented && !later {
                first_fragment = Some((pl.ip_number.0, pl.payload));
            }
            if ip_overruns_wire(frame, h.slice(), u32::from(h.total_len()), obs.orig_len) {
                obs.error = Some(DecodeErrorKind::IpLength);
                return None;
            }
        }
        Some(LaxNetSlice::Ipv6(ip)) => {
            let h = ip.header();
            let pl = ip.payload();
            let later = pl.fragmented && ipv6_fragment_offset(ip.extensions()).is_none_or(|off| off != 0);
            obs.net = Net::Ip {
                src: IpAddr::V6(Ipv6Addr::from(h.source())),
                dst: IpAddr::V6(Ipv6Addr::from(h.destination())),
                proto: pl.ip_number.0,
                fragment: later,
            };
            if pl.fragmented && !later {
                first_fragment = Some((pl.ip_number.0, pl.payload));
            }
            let total = 40 + u32::from(h.payload_length());
            if h.payload_length() > 0 && ip_overruns_wire(frame, h.slice(), total, obs.orig_len) {
                obs.error = Some(DecodeErrorKind::IpLength);
                return None;
            }
        }
        Some(LaxNetSlice::Arp(arp)) => {
            obs.net = arp_net(arp, false);
        }
        None => {
            // etherparse does not know RARP; its body is ARP's.
            if let Some(ep) = p.ether_payload() {
                if ep.ether_type.0 == ethertype::RARP {
                    match ArpPacketSlice::from_slice(ep.payload) {
                        Ok(arp) => obs.net = arp_net(&arp, true),
                        Err(_) => set_len_error(obs, DecodeErrorKind::Arp, cut),
                    }
                }
            }
        }
    }

    if let Some((err, layer)) = &p.stop_err {
        classify_stop(obs, err, *layer, cut);
        return None;
    }
    let mut udp_payload = None;

    obs.l4 = match &p.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            let payload_len = tcp_payload_len(p, tcp);
            let timestamps = tcp_timestamps(tcp.options());
            L4::Tcp(TcpInfo {
                src_port: tcp.source_port(),
                dst_port: tcp.destination_port(),
                flags: tcp.slice().get(13).copied().unwrap_or(0),
                seq: tcp.sequence_number(),
                ack: tcp.acknowledgment_number(),
                payload_len,
                timestamps,
            })
        }
        Some(TransportSlice::Udp(udp)) => {
            if !udp_length_ok(p, udp) {
                obs.error = Some(DecodeErrorKind::Udp);
                return None;
            }
            udp_payload = Some(udp.payload());
            L4::Udp { src_port: udp.source_port(), dst_port: udp.destination_port() }
        }
        Some(TransportSlice::Icmpv4(icmp)) => {
            let b = icmp.bytes5to8();
            L4::Icmp(IcmpInfo {
                v6: false,
                icmp_type: icmp.type_u8(),
                code: icmp.code_u8(),
                id: u16::from_be_bytes([b[0], b[1]]),
                seq: u16::from_be_bytes([b[2], b[3]]),
            })
        }
        Some(TransportSlice::Icmpv6(icmp)) => {
            let b = icmp.bytes5to8();
            L4::Icmp(IcmpInfo {
                v6: true,
                icmp_type: icmp.type_u8(),
                code: icmp.code_u8(),
                id: u16::from_be_bytes([b[0], b[1]]),
                seq: u16::from_be_bytes([b[2], b[3]]),
            })
        }
        Some(TransportSlice::Igmp(_)) => L4::None,
        None => first_fragment.map_or(L4::None, |(proto, payload)| icmp_in_first_fragment(proto, payload)),
    };
    udp_payload
}

/// The timestamps option (TSval, TSecr) among TCP options, if any before
/// the end of the list. A malformed option ends the walk; the header is
/// still usable.
fn tcp_timestamps(options: &[u8]) -> Option<(u32, u32)> {
    for opt in etherparse::TcpOptionsIterator::from_slice(options) {
        match opt {
            Ok(etherparse::TcpOptionElement::Timestamp(v, e)) => return Some((v, e)),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

/// The offset of the IPv6 fragment header among `exts`, walked with bounds
/// checks (etherparse's own iterator over a lax parse can read past a
/// header cut short: found by fuzzing). `None` without one, or when cut.
fn ipv6_fragment_offset(exts: &etherparse::Ipv6ExtensionsSlice<'_>) -> Option<u16> {
    const HOP_BY_HOP: u8 = 0;
    const ROUTING: u8 = 43;
    const FRAGMENT: u8 = 44;
    const AUTH: u8 = 51;
    const DEST_OPTS: u8 = 60;
    let mut rest = exts.slice();
    let mut next = exts.first_header()?.0;
    loop {
        let len = match next {
            FRAGMENT => {
                let field = u16::from_be_bytes([*rest.get(2)?, *rest.get(3)?]);
                return Some(field >> 3);
            }
            HOP_BY_HOP | ROUTING | DEST_OPTS => (usize::from(*rest.get(1)?) + 1) * 8,
            AUTH => (usize::from(*rest.get(1)?) + 2) * 4,
            _ => return None,
        };
        next = *rest.first()?;
        rest = rest.get(len..)?;
    }
}

/// The ICMP (1) or ICMPv6 (58) header at the start of a first fragment:
/// type, code, checksum, then id and seq (echo). A fragment shorter than the
/// 8-byte header, or another protocol, gives no transport layer.
fn icmp_in_first_fragment(proto: u8, payload: &[u8]) -> L4 {
    const ICMP: u8 = 1;
    const ICMPV6: u8 = 58;
    match (proto, payload) {
        (ICMP | ICMPV6, &[icmp_type, code, _, _, id0, id1, seq0, seq1, ..]) => L4::Icmp(IcmpInfo {
            v6: proto == ICMPV6,
            icmp_type,
            code,
            id: u16::from_be_bytes([id0, id1]),
            seq: u16::from_be_bytes([seq0, seq1]),
        }),
        _ => L4::None,
    }
}

/// True when an IP packet of `total` bytes starting at `ip_hdr` would end
/// past the frame's length on the wire. A total of 0 (TSO, jumbograms) is
/// taken as "the rest of the frame".
fn ip_overruns_wire(frame: &[u8], ip_hdr: &[u8], total: u32, orig_len: u32) -> bool {
    let start = (ip_hdr.as_ptr() as usize).saturating_sub(frame.as_ptr() as usize) as u64;
    total > 0 && start + u64::from(total) > u64::from(orig_len)
}

/// Bytes from the start of the transport header `l4` to the end of the IP
/// packet, by the IP header's length fields (so a snaplen cut does not
/// shrink it). `None` when the IP header gives no length (TSO, jumbograms).
fn l4_len_from_ip(p: &LaxSlicedPacket<'_>, l4: &[u8]) -> Option<u32> {
    let (ip_start, ip_total) = match &p.net {
        Some(LaxNetSlice::Ipv4(ip)) => (ip.header().slice().as_ptr() as usize, u32::from(ip.header().total_len())),
        Some(LaxNetSlice::Ipv6(ip)) if ip.header().payload_length() > 0 => {
            (ip.header().slice().as_ptr() as usize, 40 + u32::from(ip.header().payload_length()))
        }
        _ => return None,
    };
    let before = (l4.as_ptr() as usize).saturating_sub(ip_start) as u32;
    if ip_total == 0 {
        return None;
    }
    Some(ip_total.saturating_sub(before))
}

/// TCP payload length by the IP header, else what was captured.
fn tcp_payload_len(p: &LaxSlicedPacket<'_>, tcp: &etherparse::TcpSlice<'_>) -> u32 {
    match l4_len_from_ip(p, tcp.slice()) {
        Some(n) => n.saturating_sub(tcp.header_len() as u32),
        None => tcp.payload().len() as u32,
    }
}

/// A UDP length field below the header's 8 bytes, or past the IP payload, is
/// malformed. 0 is allowed where the IP header gives no length either (BIG
/// TCP / jumbograms, RFC 2675).
fn udp_length_ok(p: &LaxSlicedPacket<'_>, udp: &etherparse::UdpSlice<'_>) -> bool {
    let len = u32::from(udp.length());
    match l4_len_from_ip(p, udp.slice()) {
        None => len == 0 || len >= 8,
        Some(ip_len) => (8..=ip_len).contains(&len),
    }
}

fn arp_net(arp: &ArpPacketSlice<'_>, rarp: bool) -> Net {
    let mac = |s: &[u8]| -> Mac {
        let mut m = [0u8; 6];
        if s.len() == 6 {
            m.copy_from_slice(s);
        }
        Mac(m)
    };
    let ip = |s: &[u8]| -> Ipv4Addr {
        match <[u8; 4]>::try_from(s) {
            Ok(b) => Ipv4Addr::from(b),
            Err(_) => Ipv4Addr::UNSPECIFIED,
        }
    };
    Net::Arp {
        rarp,
        op: arp.operation().0,
        sender_mac: mac(arp.sender_hw_addr()),
        sender_ip: ip(arp.sender_protocol_addr()),
        target_mac: mac(arp.target_hw_addr()),
        target_ip: ip(arp.target_protocol_addr()),
    }
}

fn ip_content_kind(e: &etherparse::err::ip::HeaderError) -> DecodeErrorKind {
    use etherparse::err::ip::HeaderError as H;
    match e {
        H::UnsupportedIpVersion { .. } => DecodeErrorKind::IpVersion,
        H::Ipv4HeaderLengthSmallerThanHeader { .. } => DecodeErrorKind::Ipv4,
        #[allow(unreachable_patterns)]
        _ => DecodeErrorKind::Ipv4,
    }
}

fn classify_stop(obs: &mut Observation, err: &SliceError, layer: Layer, cut: bool) {
    let kind = match err {
        SliceError::Len(_) => {
            let kind = match layer {
                Layer::VlanHeader => DecodeErrorKind::Vlan,
                Layer::IpHeader | Layer::Ipv4Header | Layer::Ipv4Packet => DecodeErrorKind::Ipv4,
                Layer::Ipv6Header | Layer::Ipv6Packet => DecodeErrorKind::Ipv6,
                Layer::IpAuthHeader
                | Layer::Ipv6ExtHeader
                | Layer::Ipv6HopByHopHeader
                | Layer::Ipv6DestOptionsHeader
                | Layer::Ipv6RouteHeader
                | Layer::Ipv6FragHeader => DecodeErrorKind::IpExtension,
                Layer::TcpHeader => DecodeErrorKind::Tcp,
                Layer::UdpHeader | Layer::UdpPayload => DecodeErrorKind::Udp,
                Layer::Icmpv4 | Layer::Icmpv6 => DecodeErrorKind::Icmp,
                Layer::Arp => DecodeErrorKind::Arp,
                Layer::LinuxSllHeader => DecodeErrorKind::LinuxSll,
                Layer::Ethernet2Header => DecodeErrorKind::LinkTruncated,
                _ => DecodeErrorKind::Other,
            };
            set_len_error(obs, kind, cut);
            return;
        }
        SliceError::Ip(c) => ip_content_kind(c),
        SliceError::Ipv4(_) => DecodeErrorKind::Ipv4,
        SliceError::Ipv6(_) => DecodeErrorKind::Ipv6,
        SliceError::Ipv4Exts(_) | SliceError::Ipv6Exts(_) => DecodeErrorKind::IpExtension,
        SliceError::Tcp(_) => DecodeErrorKind::Tcp,
        SliceError::LinuxSll(_) => DecodeErrorKind::LinuxSll,
        #[allow(unreachable_patterns)]
        _ => DecodeErrorKind::Other,
    };
    obs.error = Some(kind);
}

#[cfg(test)]
mod tests;
