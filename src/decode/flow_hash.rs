//! A symmetric flow hash over raw frame bytes, for picking a shard before decoding (as NIC RSS does).
//!
//! The reader calls this on every frame, so it reads a few fixed offsets and
//! nothing else. Both directions of a conversation hash alike: the IP
//! addresses and ports when the frame carries IPv4/IPv6 (behind up to three
//! VLAN tags), else the MAC pair. Damaged or short frames hash by what they
//! have; the hash only spreads load, so it never fails.

use super::{ethertype, linktype, Tunnels};

/// Byte offsets the hash reads.
mod field {
    pub const ETH_DST: std::ops::Range<usize> = 0..6;
    pub const ETH_SRC: std::ops::Range<usize> = 6..12;
    pub const ETH_TYPE: usize = 12;
    pub const ETH_LEN: usize = 14;
    pub const VLAN_LEN: usize = 4;
    pub const IPV4_PROTO: usize = 9;
    pub const IPV4_FRAG: usize = 6;
    pub const IPV4_SRC: usize = 12;
    pub const IPV4_DST: usize = 16;
    pub const IPV6_NEXT: usize = 6;
    pub const IPV6_SRC: usize = 8;
    pub const IPV6_DST: usize = 24;
    pub const IPV6_LEN: usize = 40;
    pub const SLL_PROTO: usize = 14;
    pub const SLL_LEN: usize = 16;
    pub const SLL2_PROTO: usize = 0;
    pub const SLL2_LEN: usize = 20;
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;

/// The shard-picking hash of one frame. Inside a VXLAN or Geneve tunnel it
/// hashes the inner frame, so a VM's flow meets in one shard whichever
/// hypervisors carry it.
#[inline]
pub fn flow_hash(tun: &Tunnels, link: i32, data: &[u8]) -> u64 {
    let h = Hasher { tun, depth: 0 };
    match link {
        linktype::ETHERNET => h.ethernet(data),
        linktype::RAW | linktype::DLT_RAW | linktype::DLT_RAW_OPENBSD | linktype::IPV4 | linktype::IPV6 => {
            h.ip(data).unwrap_or(0)
        }
        linktype::NULL | linktype::LOOP => data.get(4..).and_then(|d| h.ip(d)).unwrap_or(0),
        linktype::LINUX_SLL => h.after_ethertype(data, field::SLL_PROTO, field::SLL_LEN),
        linktype::LINUX_SLL2 => h.after_ethertype(data, field::SLL2_PROTO, field::SLL2_LEN),
        _ => 0,
    }
}

struct Hasher<'t> {
    tun: &'t Tunnels,
    depth: u8,
}

fn be16(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*d.get(at)?, *d.get(at + 1)?]))
}

impl Hasher<'_> {
    fn after_ethertype(&self, d: &[u8], proto_at: usize, hdr_len: usize) -> u64 {
        match (be16(d, proto_at), d.get(hdr_len..)) {
            (Some(ethertype::IPV4 | ethertype::IPV6), Some(rest)) => self.ip(rest).unwrap_or(0),
            _ => 0,
        }
    }

    #[inline]
    fn ethernet(&self, d: &[u8]) -> u64 {
        if d.len() < field::ETH_LEN {
            return 0;
        }
        let mut et = be16(d, field::ETH_TYPE).unwrap_or(0);
        let mut off = field::ETH_LEN;
        for _ in 0..3 {
            if !matches!(et, 0x8100 | 0x88a8 | 0x9100) {
                break;
            }
            et = be16(d, off + 2).unwrap_or(0);
            off += field::VLAN_LEN;
        }
        if matches!(et, ethertype::IPV4 | ethertype::IPV6) {
            if let Some(h) = d.get(off..).and_then(|d| self.ip(d)) {
                return h;
            }
        }
        let a = mac_bits(d.get(field::ETH_SRC));
        let b = mac_bits(d.get(field::ETH_DST));
        symmetric(a, b, 0)
    }

    /// The inner frame's hash when `l4` starts a UDP tunnel on a configured port.
    fn tunnel(&self, d: &[u8], l4: usize) -> Option<u64> {
        if self.depth >= 3 {
            return None;
        }
        let dport = be16(d, l4 + 2)?;
        let hdr = if self.tun.is_vxlan(dport) {
            8
        } else if dport == self.tun.geneve_port {
            let b0 = *d.get(l4 + 8)?;
            if be16(d, l4 + 8 + 2)? != 0x6558 {
                return None;
            }
            8 + usize::from(b0 & 0x3f) * 4
        } else {
            return None;
        };
        let inner = d.get(l4 + 8 + hdr..)?;
        if inner.len() < field::ETH_LEN {
            return None;
        }
        Some(Hasher { tun: self.tun, depth: self.depth + 1 }.ethernet(inner))
    }

    /// IPv4 or IPv6 addresses and, for unfragmented TCP/UDP/SCTP, ports.
    #[inline]
    fn ip(&self, d: &[u8]) -> Option<u64> {
        match d.first()? >> 4 {
            4 => {
                let ihl = usize::from(d[0] & 0x0f) * 4;
                let src = u64::from(u32::from_be_bytes(d.get(field::IPV4_SRC..field::IPV4_SRC + 4)?.try_into().ok()?));
                let dst = u64::from(u32::from_be_bytes(d.get(field::IPV4_DST..field::IPV4_DST + 4)?.try_into().ok()?));
                let proto = *d.get(field::IPV4_PROTO)?;
                let first_fragment = be16(d, field::IPV4_FRAG)? & 0x1fff == 0;
                if first_fragment && ihl >= 20 && proto == UDP {
                    if let Some(h) = self.tunnel(d, ihl) {
                        return Some(h);
                    }
                }
                let (sp, dp) = if first_fragment && ihl >= 20 { ports(d, ihl, proto) } else { (0, 0) };
                Some(symmetric(src ^ (sp << 32), dst ^ (dp << 32), proto))
            }
            6 => {
                let src = fold128(d.get(field::IPV6_SRC..field::IPV6_SRC + 16)?);
                let dst = fold128(d.get(field::IPV6_DST..field::IPV6_DST + 16)?);
                let next = *d.get(field::IPV6_NEXT)?;
                if next == UDP {
                    if let Some(h) = self.tunnel(d, field::IPV6_LEN) {
                        return Some(h);
                    }
                }
                let (sp, dp) = ports(d, field::IPV6_LEN, next);
                Some(symmetric(src ^ sp, dst ^ dp, next))
            }
            _ => None,
        }
    }
}

fn mac_bits(m: Option<&[u8]>) -> u64 {
    m.map_or(0, |m| m.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
}

fn ports(d: &[u8], l4: usize, proto: u8) -> (u64, u64) {
    if !matches!(proto, TCP | UDP | SCTP) {
        return (0, 0);
    }
    match (be16(d, l4), be16(d, l4 + 2)) {
        (Some(s), Some(t)) => (u64::from(s), u64::from(t)),
        _ => (0, 0),
    }
}

fn fold128(b: &[u8]) -> u64 {
    let mut x = 0u64;
    for chunk in b.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        x = x.rotate_left(29) ^ u64::from_be_bytes(w);
    }
    x
}

/// Order-independent combination of the two endpoints.
#[inline]
fn symmetric(a: u64, b: u64, proto: u8) -> u64 {
    mix(mix(a).wrapping_add(mix(b)) ^ u64::from(proto))
}

/// The splitmix64 finalizer: cheap and well spread (the RTT table's hash uses it too).
#[inline]
pub(crate) fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{frames, mac};
    use std::net::Ipv4Addr;

    #[test]
    fn both_directions_hash_alike() {
        let (a, b) = (mac("02:00:00:00:00:01"), mac("02:00:00:00:00:02"));
        let (x, y) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        let fwd = frames::tcp4(a, b, x, y, 40000, 443, 1, None, true, 0);
        let rev = frames::tcp4(b, a, y, x, 443, 40000, 9, Some(2), true, 0);
        assert_eq!(
            flow_hash(&Tunnels::default(), linktype::ETHERNET, &fwd),
            flow_hash(&Tunnels::default(), linktype::ETHERNET, &rev)
        );
        let tagged = frames::udp4_qinq(a, b, 5, 6, x, y, 1, 2, 0);
        let tagged_rev = frames::udp4_qinq(b, a, 5, 6, y, x, 2, 1, 0);
        assert_eq!(
            flow_hash(&Tunnels::default(), linktype::ETHERNET, &tagged),
            flow_hash(&Tunnels::default(), linktype::ETHERNET, &tagged_rev)
        );
        let arp = frames::arp(a, b, false, 1, a, x, b, y);
        let arp_rev = frames::arp(b, a, false, 2, b, y, a, x);
        assert_eq!(
            flow_hash(&Tunnels::default(), linktype::ETHERNET, &arp),
            flow_hash(&Tunnels::default(), linktype::ETHERNET, &arp_rev)
        );
    }

    #[test]
    fn different_flows_spread() {
        let (a, b) = (mac("02:00:00:00:00:01"), mac("02:00:00:00:00:02"));
        let (x, y) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        let h: std::collections::HashSet<u64> = (0..100u16)
            .map(|p| flow_hash(&Tunnels::default(), linktype::ETHERNET, &frames::udp4(a, b, x, y, 1000 + p, 53, 0)))
            .collect();
        assert_eq!(h.len(), 100);
    }

    #[test]
    fn short_and_odd_frames_do_not_panic() {
        for n in 0..80 {
            let d = vec![0x45u8; n];
            for lt in
                [linktype::ETHERNET, linktype::RAW, linktype::NULL, linktype::LINUX_SLL, linktype::LINUX_SLL2, 9999]
            {
                let _ = flow_hash(&Tunnels::default(), lt, &d);
            }
        }
    }
}
