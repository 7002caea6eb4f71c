//! Shard worker: measures its share of the flows, shared-nothing, and hands each closed window to the merge.

use super::{DecodeCounts, Partial, RawBatch, ShardMsg};
use crate::decode::decode;
use crate::measure::WindowCounters;
use crossbeam_channel::{Receiver, Sender};

pub(super) fn run(
    shard: usize,
    rx: Receiver<ShardMsg>,
    pool: Sender<RawBatch>,
    merge: Sender<Partial>,
    max_macs: usize,
) {
    let mut counters = WindowCounters::new(max_macs);
    let mut dc = DecodeCounts::default();
    for msg in rx {
        match msg {
            ShardMsg::Batch(mut batch) => {
                let mut start = 0usize;
                for m in &batch.meta {
                    let end = m.end as usize;
                    let data = batch.bytes.get(start..end).unwrap_or(&[]);
                    start = end;
                    let o = decode(m.linktype, m.ts, m.orig_len, m.cap_len, data);
                    if let Some(k) = o.error {
                        dc.errors[k as usize] += 1;
                    }
                    dc.snaplen_cut += u64::from(o.snaplen_cut);
                    counters.observe(&o);
                }
                batch.clear();
                // The reader may have gone; then the batch is simply freed.
                let _ = pool.try_send(batch);
            }
            ShardMsg::Close { window } => {
                let overflow = std::mem::take(&mut counters.overflow);
                let decode = std::mem::take(&mut dc);
                let part = Partial { shard, window, counters: counters.take(), overflow, decode };
                if merge.send(part).is_err() {
                    return;
                }
            }
        }
    }
}
