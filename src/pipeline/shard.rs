//! Shard worker: measures its share of the flows, shared-nothing, and hands each closed window to the merge.

use super::{Partial, ShardMsg};
use crate::decode::Observation;
use crate::measure::WindowCounters;
use crossbeam_channel::{Receiver, Sender};

pub(super) fn run(
    shard: usize,
    rx: Receiver<ShardMsg>,
    pool: Sender<Vec<Observation>>,
    merge: Sender<Partial>,
    max_macs: usize,
) {
    let mut counters = WindowCounters::new(max_macs);
    for msg in rx {
        match msg {
            ShardMsg::Batch(mut batch) => {
                for o in &batch {
                    counters.observe(o);
                }
                batch.clear();
                // The reader may have gone; then the batch is simply freed.
                let _ = pool.try_send(batch);
            }
            ShardMsg::Close { window } => {
                let overflow = std::mem::take(&mut counters.overflow);
                let part = Partial { shard, window, counters: counters.take(), overflow };
                if merge.send(part).is_err() {
                    return;
                }
            }
        }
    }
}
