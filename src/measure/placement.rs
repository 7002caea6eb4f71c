//! Placement evidence: where inventory VMs were seen sending, their announces, and hypervisor-to-hypervisor migration streams, per shard and window.
//!
//! A VM is located by the frames it *sends*: the hypervisor that
//! encapsulated them (outer source MAC and IP) or, on a plain network, the
//! hypervisor whose uplink this sensor watches (`[sensor]`). Frames *to* a
//! VM say only where a sender believes it is, which is stale during a
//! migration, so they are not evidence. A RARP announce (QEMU's
//! self-announce: opcode 3, sender and target hardware address the VM's
//! MAC) or a gratuitous ARP from the VM is evidence even when nothing says
//! where it came from.
//!
//! Everything here is bounded per window: entries past the cap are counted
//! and dropped.

use crate::decode::{tcp_flags, Mac, Net, Observation, L4};
use crate::vocab::PacketTime;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::Serialize;
use std::net::IpAddr;
use std::sync::Arc;

/// How a VM showed where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// Ordinary frames it sent.
    Traffic,
    /// A gratuitous ARP from it.
    Garp,
    /// A RARP self-announce.
    Rarp,
}

/// Where frames came from: the tunnel's outer source, or nothing known
/// (plain network, no sensor), in which case only announces are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    Outer {
        mac: Mac,
        ip: IpAddr,
    },
    /// The sensor's own hypervisor (`[sensor] hypervisor`).
    Sensor,
    Unknown,
}

/// Slots a window is cut into for a sighting's frame counts (so the VM's
/// frame gaps before a move are known to a 64th of a window, for any
/// number of shards: counts add up).
pub const SLOTS: usize = 64;

/// One VM seen at one origin in one window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sighting {
    pub vm: Mac,
    pub origin: Origin,
    pub first: PacketTime,
    pub last: PacketTime,
    pub frames: u64,
    /// The first announce among them, and its kind.
    pub announce: Option<(PacketTime, Via)>,
    /// Frames per slot of the window (saturating).
    pub slots: [u16; SLOTS],
}

/// The slot of a window of `len_us` that `ts` falls in.
#[inline]
pub fn slot_of(ts: PacketTime, len_us: i64) -> usize {
    let len = len_us.max(1);
    (ts.as_micros().rem_euclid(len) as i128 * SLOTS as i128 / len as i128) as usize
}

/// A TCP endpoint.
pub type Endpoint = (IpAddr, u16);
/// A stream's direction: from, to.
pub type StreamKey = (Endpoint, Endpoint);

/// A TCP stream on a migration port, as seen in one window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamPart {
    pub src: (IpAddr, u16),
    pub dst: (IpAddr, u16),
    pub first: PacketTime,
    pub last: PacketTime,
    pub bytes: u64,
    /// The last segment that carried payload (the source finished sending
    /// when its direction's data ends; acknowledgements and FIN come later).
    pub last_data: Option<PacketTime>,
}

/// Something on the wire that contradicts the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Oddity {
    /// A frame inside a tunnel whose VM-layer source is a registered hypervisor's MAC.
    VmUsesHypervisorMac { mac: Mac, outer_ip: Option<IpAddr> },
    /// A tunnel's outer source MAC with this IP.
    OuterPair { mac: Mac, ip: IpAddr },
}

/// What the shards need to know to collect evidence (shared, read-only).
#[derive(Debug, Default)]
pub struct PlacementConfig {
    pub vms: FxHashSet<Mac>,
    pub hypervisor_macs: FxHashSet<Mac>,
    pub sensor: bool,
    /// Inclusive port ranges of migration streams.
    pub ports: Vec<(u16, u16)>,
    /// The window length, for the sightings' slots.
    pub window_len_us: i64,
}

impl PlacementConfig {
    fn migration_port(&self, p: u16) -> bool {
        self.ports.iter().any(|&(a, b)| (a..=b).contains(&p))
    }
}

/// The config shards collect by, replaceable when rules are reloaded: a
/// shard looks at the generation once per window, not per frame.
#[derive(Debug)]
pub struct SharedPlacement {
    generation: std::sync::atomic::AtomicU64,
    cfg: std::sync::RwLock<Arc<PlacementConfig>>,
}

impl SharedPlacement {
    pub fn new(cfg: PlacementConfig) -> Self {
        SharedPlacement { generation: 0.into(), cfg: std::sync::RwLock::new(Arc::new(cfg)) }
    }

    pub fn replace(&self, cfg: PlacementConfig) {
        if let Ok(mut c) = self.cfg.write() {
            *c = Arc::new(cfg);
            self.generation.fetch_add(1, std::sync::atomic::Ordering::Release);
        }
    }

    fn current(&self) -> (u64, Arc<PlacementConfig>) {
        let g = self.generation.load(std::sync::atomic::Ordering::Acquire);
        let c = self.cfg.read().map(|c| c.clone()).unwrap_or_default();
        (g, c)
    }
}

/// Caps per shard and window.
const MAX_SIGHTINGS: usize = 65_536;
const MAX_STREAMS: usize = 4_096;
const MAX_ODDITIES: usize = 1_024;
const MAX_ADDRESSES: usize = 4_096;

/// One window's evidence, handed to the merge.
#[derive(Debug, Default)]
pub struct Evidence {
    pub sightings: Vec<Sighting>,
    pub streams: Vec<StreamPart>,
    pub oddities: Vec<Oddity>,
    /// Addresses inventory VMs sent from (IP source, ARP sender), for IDS victims.
    pub addresses: Vec<(Mac, IpAddr)>,
    pub dropped: u64,
}

pub struct PlacementCollector {
    shared: Arc<SharedPlacement>,
    generation: u64,
    cfg: Arc<PlacementConfig>,
    sightings: FxHashMap<(Mac, Origin), Sighting>,
    streams: FxHashMap<StreamKey, StreamPart>,
    oddities: FxHashSet<Oddity>,
    /// The window's first few outer pairs, all in `oddities` already: every
    /// tunneled frame names one, nearly always one of a few hypervisors',
    /// and a scan of these is cheaper than hashing into the set (which cost
    /// 9 % of a shard on the VXLAN mix).
    outer_seen: Vec<(Mac, IpAddr)>,
    addresses: FxHashSet<(Mac, IpAddr)>,
    dropped: u64,
}

/// How many outer pairs [`PlacementCollector`] keeps at hand per window.
const OUTER_SEEN: usize = 8;

impl PlacementCollector {
    pub fn new(shared: Arc<SharedPlacement>) -> Self {
        let (generation, cfg) = shared.current();
        PlacementCollector {
            shared,
            generation,
            cfg,
            sightings: FxHashMap::default(),
            streams: FxHashMap::default(),
            oddities: FxHashSet::default(),
            outer_seen: Vec::with_capacity(OUTER_SEEN),
            addresses: FxHashSet::default(),
            dropped: 0,
        }
    }

    #[inline]
    pub fn observe(&mut self, o: &Observation) {
        let Some(l2) = &o.l2 else { return };
        if let Some(outer) = &o.outer {
            if self.cfg.hypervisor_macs.contains(&l2.src) {
                self.oddity(Oddity::VmUsesHypervisorMac { mac: l2.src, outer_ip: Some(outer.src_ip) });
            }
            self.outer_pair(outer.src_mac, outer.src_ip);
        } else if self.cfg.migration_port_frame(o) {
            self.stream(o);
        }
        if !self.cfg.vms.contains(&l2.src) {
            return;
        }
        let used = match o.net {
            Net::Ip { src, .. } => Some(src),
            Net::Arp { rarp: false, sender_mac, sender_ip, .. } if sender_mac == l2.src => Some(IpAddr::V4(sender_ip)),
            _ => None,
        };
        if let Some(ip) = used.filter(|ip| !ip.is_unspecified() && !ip.is_multicast() && !ip.is_loopback()) {
            if self.addresses.len() < MAX_ADDRESSES || self.addresses.contains(&(l2.src, ip)) {
                self.addresses.insert((l2.src, ip));
            } else {
                self.dropped += 1;
            }
        }
        let announce = match o.net {
            Net::Arp { rarp: true, op: 3, sender_mac, target_mac, .. }
                if sender_mac == l2.src && target_mac == l2.src =>
            {
                Some(Via::Rarp)
            }
            Net::Arp { rarp: false, sender_mac, sender_ip, target_ip, .. }
                if sender_mac == l2.src && sender_ip == target_ip && !sender_ip.is_unspecified() =>
            {
                Some(Via::Garp)
            }
            _ => None,
        };
        let origin = match o.outer {
            Some(outer) => Origin::Outer { mac: outer.src_mac, ip: outer.src_ip },
            None if self.cfg.sensor => Origin::Sensor,
            None if announce.is_some() => Origin::Unknown,
            None => return,
        };
        let key = (l2.src, origin);
        if !self.sightings.contains_key(&key) && self.sightings.len() >= MAX_SIGHTINGS {
            self.dropped += 1;
            return;
        }
        let s = self.sightings.entry(key).or_insert(Sighting {
            vm: l2.src,
            origin,
            first: o.ts,
            last: o.ts,
            frames: 0,
            announce: None,
            slots: [0; SLOTS],
        });
        s.first = s.first.min(o.ts);
        s.last = s.last.max(o.ts);
        s.frames += 1;
        let k = slot_of(o.ts, self.cfg.window_len_us);
        s.slots[k] = s.slots[k].saturating_add(1);
        if let Some(via) = announce {
            if s.announce.is_none_or(|(t, _)| o.ts < t) {
                s.announce = Some((o.ts, via));
            }
        }
    }

    fn oddity(&mut self, x: Oddity) -> bool {
        self.oddities.len() < MAX_ODDITIES && {
            self.oddities.insert(x);
            true
        }
    }

    /// [`Oddity::OuterPair`], through the pairs at hand.
    #[inline]
    fn outer_pair(&mut self, mac: Mac, ip: IpAddr) {
        if self.outer_seen.contains(&(mac, ip)) {
            return;
        }
        if self.oddity(Oddity::OuterPair { mac, ip }) && self.outer_seen.len() < OUTER_SEEN {
            self.outer_seen.push((mac, ip));
        }
    }

    fn stream(&mut self, o: &Observation) {
        let (Net::Ip { src, dst, .. }, L4::Tcp(t)) = (o.net, o.l4) else { return };
        if t.flags & tcp_flags::RST != 0 {
            return;
        }
        let key = ((src, t.src_port), (dst, t.dst_port));
        if !self.streams.contains_key(&key) && self.streams.len() >= MAX_STREAMS {
            self.dropped += 1;
            return;
        }
        let s = self.streams.entry(key).or_insert(StreamPart {
            src: key.0,
            dst: key.1,
            first: o.ts,
            last: o.ts,
            bytes: 0,
            last_data: None,
        });
        s.first = s.first.min(o.ts);
        s.last = s.last.max(o.ts);
        s.bytes += u64::from(o.orig_len);
        if t.payload_len > 0 {
            s.last_data = Some(s.last_data.map_or(o.ts, |d| d.max(o.ts)));
        }
    }

    /// Hands over the window's evidence, and picks up reloaded rules.
    pub fn take(&mut self) -> Evidence {
        if self.shared.generation.load(std::sync::atomic::Ordering::Acquire) != self.generation {
            (self.generation, self.cfg) = self.shared.current();
        }
        self.outer_seen.clear();
        Evidence {
            sightings: self.sightings.drain().map(|(_, v)| v).collect(),
            streams: self.streams.drain().map(|(_, v)| v).collect(),
            oddities: self.oddities.drain().collect(),
            addresses: self.addresses.drain().collect(),
            dropped: std::mem::take(&mut self.dropped),
        }
    }
}

impl PlacementConfig {
    /// An untunneled TCP frame to or from a migration port.
    #[inline]
    fn migration_port_frame(&self, o: &Observation) -> bool {
        match o.l4 {
            L4::Tcp(t) => self.migration_port(t.src_port) || self.migration_port(t.dst_port),
            _ => false,
        }
    }
}

impl Evidence {
    /// Adds another shard's evidence of the same window.
    pub fn append(&mut self, o: &mut Evidence) {
        self.sightings.append(&mut o.sightings);
        self.streams.append(&mut o.streams);
        self.oddities.append(&mut o.oddities);
        self.addresses.append(&mut o.addresses);
        self.dropped += o.dropped;
    }

    /// Merges entries of the same key from different shards and sorts, so the
    /// result does not depend on how frames were spread.
    pub fn normalize(&mut self) {
        self.sightings.sort_unstable_by_key(|s| (s.vm, s.origin));
        let mut merged: Vec<Sighting> = Vec::with_capacity(self.sightings.len());
        for s in self.sightings.drain(..) {
            match merged.last_mut() {
                Some(m) if m.vm == s.vm && m.origin == s.origin => {
                    m.first = m.first.min(s.first);
                    m.last = m.last.max(s.last);
                    m.frames += s.frames;
                    for (a, b) in m.slots.iter_mut().zip(s.slots) {
                        *a = a.saturating_add(b);
                    }
                    m.announce = match (m.announce, s.announce) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                _ => merged.push(s),
            }
        }
        // In time order, so moves are taken in the order they happened.
        merged.sort_unstable_by_key(|s| (s.announce.map_or(s.first, |a| a.0.min(s.first)), s.vm, s.origin));
        self.sightings = merged;
        self.streams.sort_unstable();
        self.oddities.sort_unstable();
        self.oddities.dedup();
        self.addresses.sort_unstable();
        self.addresses.dedup();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode, linktype, Tunnels};
    use crate::synth::frames::{udp4, vxlan, Underlay};
    use std::net::Ipv4Addr;

    /// A VM's frame tunneled from hypervisor `h` (its outer MAC and IP).
    fn from_hypervisor(h: u8) -> Observation {
        let vm = Mac([0x52, 0x54, 0, 0, 0, 1]);
        let inner = udp4(vm, Mac([2; 6]), Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 5000, 53, 20);
        let u = Underlay {
            src: Mac([0x52, 0x54, 0, 0xaa, 0, h]),
            dst: Mac([0x52, 0x54, 0, 0xaa, 0, 0]),
            sip: Ipv4Addr::new(192, 0, 2, h),
            dip: Ipv4Addr::new(192, 0, 2, 250),
            vni: 7,
        };
        let f = vxlan(&u, &inner);
        let o = decode(
            &Tunnels::default(),
            linktype::ETHERNET,
            PacketTime::from_micros(1),
            f.len() as u32,
            f.len() as u32,
            &f,
        );
        assert!(o.outer.is_some(), "{o:?}");
        o
    }

    fn outer_pairs(e: &Evidence) -> Vec<(Mac, IpAddr)> {
        let mut v: Vec<(Mac, IpAddr)> = e
            .oddities
            .iter()
            .filter_map(|o| match *o {
                Oddity::OuterPair { mac, ip } => Some((mac, ip)),
                _ => None,
            })
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn every_outer_pair_is_reported_once_a_window_past_the_pairs_at_hand() {
        let mut c = PlacementCollector::new(Arc::new(SharedPlacement::new(PlacementConfig::default())));
        // Twice as many hypervisors as the pairs at hand, interleaved.
        let n = 2 * OUTER_SEEN as u8;
        let want: Vec<(Mac, IpAddr)> = {
            let mut v: Vec<_> =
                (1..=n).map(|h| (Mac([0x52, 0x54, 0, 0xaa, 0, h]), IpAddr::V4(Ipv4Addr::new(192, 0, 2, h)))).collect();
            v.sort_unstable();
            v
        };
        for _ in 0..3 {
            for h in 1..=n {
                c.observe(&from_hypervisor(h));
            }
        }
        assert_eq!(outer_pairs(&c.take()), want);
        // The next window reports them again, those at hand before included.
        c.observe(&from_hypervisor(1));
        c.observe(&from_hypervisor(n));
        assert_eq!(outer_pairs(&c.take()), vec![want[0], want[want.len() - 1]]);
        assert_eq!(outer_pairs(&c.take()), vec![]);
    }
}
