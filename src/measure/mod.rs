//! Measure: per-MAC traffic counters of one window, kept per shard and summed at the merge.
//!
//! Each shard worker sees a share of the flows, so its counters are partial:
//! a MAC may appear in every shard. The window merge adds the partials up;
//! integer sums do not depend on the order, so the totals are the same for
//! any number of shards.

pub mod histogram;
pub mod placement;
pub mod rtt;

use crate::decode::{Mac, Observation};
use rustc_hash::FxHashMap;

/// Bytes (original frame length) and packets, each way, of one MAC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub rx_packets: u64,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.tx_bytes += o.tx_bytes;
        self.tx_packets += o.tx_packets;
        self.rx_bytes += o.rx_bytes;
        self.rx_packets += o.rx_packets;
    }
}

/// One shard's counters for the window in progress, bounded.
pub struct WindowCounters {
    map: FxHashMap<Mac, Counters>,
    cap: usize,
    /// Observations of MACs that found the table full this window.
    pub overflow: u64,
}

impl WindowCounters {
    pub fn new(cap: usize) -> Self {
        WindowCounters { map: FxHashMap::default(), cap, overflow: 0 }
    }

    /// Counts a frame for its VM-layer MACs (the innermost Ethernet header):
    /// tx for the unicast source, rx for the unicast destination, by the VM
    /// layer's length on the wire.
    #[inline]
    pub fn observe(&mut self, o: &Observation) {
        // By reference: a copy of the L2 header read the just-decoded MACs
        // back in other widths than they were written in (a stalled load).
        let Some(l2) = &o.l2 else { return };
        let len = u64::from(o.vm_len);
        if l2.src.is_unicast() {
            if let Some(c) = self.slot(l2.src) {
                c.tx_bytes += len;
                c.tx_packets += 1;
            }
        }
        if let Some(dst) = &l2.dst {
            if dst.is_unicast() {
                if let Some(c) = self.slot(*dst) {
                    c.rx_bytes += len;
                    c.rx_packets += 1;
                }
            }
        }
    }

    #[inline]
    fn slot(&mut self, mac: Mac) -> Option<&mut Counters> {
        let full = self.map.len() >= self.cap;
        if full && !self.map.contains_key(&mac) {
            self.overflow += 1;
            return None;
        }
        Some(self.map.entry(mac).or_default())
    }

    /// Hands over the window's counters and starts an empty window.
    pub fn take(&mut self) -> Vec<(Mac, Counters)> {
        self.map.drain().collect()
    }
}

/// Sums the shards' partial counters of one window.
#[derive(Default)]
pub struct WindowMerge {
    map: FxHashMap<Mac, Counters>,
}

impl WindowMerge {
    pub fn add(&mut self, part: &[(Mac, Counters)]) {
        for (mac, c) in part {
            self.map.entry(*mac).or_default().add(c);
        }
    }

    /// The window's totals, sorted by MAC.
    pub fn finish(self) -> Vec<(Mac, Counters)> {
        let mut v: Vec<_> = self.map.into_iter().collect();
        v.sort_unstable_by_key(|(m, _)| *m);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Net, L2, L4};
    use crate::vocab::PacketTime;

    fn obs(src: &str, dst: &str, len: u32) -> Observation {
        Observation {
            ts: PacketTime::ZERO,
            orig_len: len,
            cap_len: len.min(64),
            vm_len: len,
            l2: Some(L2 { src: src.parse().unwrap(), dst: Some(dst.parse().unwrap()), ether_type: 0x0800, vlan: None }),
            outer: None,
            net: Net::None,
            l4: L4::None,
            error: None,
            snaplen_cut: false,
        }
    }

    #[test]
    fn counts_tx_for_source_rx_for_destination_unicast_only() {
        let mut w = WindowCounters::new(16);
        w.observe(&obs("02:00:00:00:00:01", "02:00:00:00:00:02", 100));
        w.observe(&obs("02:00:00:00:00:01", "ff:ff:ff:ff:ff:ff", 60));
        let mut m = WindowMerge::default();
        m.add(&w.take());
        let t = m.finish();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].1, Counters { tx_bytes: 160, tx_packets: 2, rx_bytes: 0, rx_packets: 0 });
        assert_eq!(t[1].1, Counters { tx_bytes: 0, tx_packets: 0, rx_bytes: 100, rx_packets: 1 });
    }

    #[test]
    fn partials_sum_to_the_same_totals_in_any_split() {
        let frames: Vec<_> = (0..50u32)
            .map(|i| obs(&format!("02:00:00:00:00:{:02x}", i % 5), &format!("02:00:00:00:01:{:02x}", i % 3), 60 + i))
            .collect();
        let total = |shards: usize| {
            let mut ws: Vec<_> = (0..shards).map(|_| WindowCounters::new(1000)).collect();
            for (i, f) in frames.iter().enumerate() {
                ws[i % shards].observe(f);
            }
            let mut m = WindowMerge::default();
            for w in &mut ws {
                m.add(&w.take());
            }
            m.finish()
        };
        assert_eq!(total(1), total(3));
        assert_eq!(total(1), total(7));
    }

    #[test]
    fn a_full_table_counts_overflow_instead_of_growing() {
        let mut w = WindowCounters::new(2);
        w.observe(&obs("02:00:00:00:00:01", "02:00:00:00:00:02", 60));
        w.observe(&obs("02:00:00:00:00:03", "02:00:00:00:00:01", 60));
        assert_eq!(w.overflow, 1);
        assert_eq!(w.take().len(), 2);
    }
}
