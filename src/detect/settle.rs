//! Settling a move after it: which listener's streams were its memory, with the wire's lookahead, and its time-to-responsiveness across windows.
//!
//! A move is found in the window its first frame or announce at the
//! destination falls in, but two of its measurements need what comes after:
//! whether a migration stream still carried data after the destination
//! resumed the VM (then it is not this VM's memory), and when the VM's rate
//! was back. Both are measured up to [`bound_us`] of packet time after the
//! move; the locator keeps the few counts they need meanwhile and settles
//! the move once both are known or the bound passed.

use crate::measure::placement::{Endpoint, SLOTS};
use crate::vocab::PacketTime;
use std::collections::VecDeque;

/// A VM is responsive again once it sends at this fraction of its rate
/// before the move ...
pub const RESPONSIVE_FRACTION: f64 = 0.8;
/// ... over this many consecutive slots.
pub const RESPONSIVE_SLOTS: usize = 8;
/// Frames before the move (in the 250 ms looked at) below which its pace is not measured.
pub const RESPONSIVE_MIN_FRAMES: u64 = 16;
/// How long after a move it is settled at most: 1 s of packet time ...
pub const SETTLE_US: i64 = 1_000_000;
/// ... or this many slots, if longer (long windows: room for two runs).
const SETTLE_MIN_SLOTS: i64 = 2 * RESPONSIVE_SLOTS as i64;
/// Data from the source this long after the move still counts as before it
/// (the last segments and the announce race each other to the capture).
pub const STREAM_TAIL_US: i64 = 20_000;

/// How long after a move (packet time) it is settled at most, for windows of `len_us`.
pub fn bound_us(len_us: i64) -> i64 {
    SETTLE_US.max(SETTLE_MIN_SLOTS.saturating_mul(len_us) / SLOTS as i64)
}

/// The global slot (window × [`SLOTS`] + slot) `t` falls in.
pub fn global_slot(t: PacketTime, len_us: i64) -> i64 {
    let len = len_us.max(1);
    t.as_micros().div_euclid(len).saturating_mul(SLOTS as i64) + crate::measure::placement::slot_of(t, len) as i64
}

/// When global slot `g` starts.
fn slot_start_us(g: i64, len_us: i64) -> i64 {
    let width = len_us as f64 / SLOTS as f64;
    g.div_euclid(SLOTS as i64) * len_us + (g.rem_euclid(SLOTS as i64) as f64 * width) as i64
}

/// One destination listener's migration streams between the move's two
/// hypervisors, as the wire showed them by the end of the move's window.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub listener: Endpoint,
    /// The source's last payload to it (none: no data from the source seen).
    pub last_data: Option<PacketTime>,
    /// Its latest frame, either way.
    pub last: PacketTime,
    /// Its first stream's start.
    pub first: PacketTime,
    pub bytes: u64,
    pub streams: u32,
    /// The source sent it data more than [`STREAM_TAIL_US`] after the move
    /// (seen by the move's window or in the lookahead after it).
    pub continued: bool,
}

impl Group {
    /// libvirt's daemons talk on 16509 (TCP) and 16514 (TLS).
    fn daemon(&self) -> bool {
        matches!(self.listener.1, 16509 | 16514)
    }

    /// The source's data to it ended by the move (and its tail).
    fn ended(&self, at: PacketTime) -> bool {
        self.last_data.is_some_and(|d| d.as_micros() <= at.as_micros().saturating_add(STREAM_TAIL_US))
    }
}

/// The move's memory among `groups` (of a move at `at`): a listener whose
/// source data went on after the move is another migration's (unless
/// every one did); of the rest, the one whose source data ended last; a
/// connection to libvirt's daemon ports only when no QEMU stream ended (it
/// carries the memory only in a tunnelled move, and is otherwise libvirt's
/// RPC, ending after QEMU's stream); with none ended, the earliest to end.
/// Ties by endpoint, so the choice is stable.
pub fn choose(groups: &[Group], at: PacketTime) -> Option<usize> {
    let quiet = groups.iter().any(|g| !g.continued);
    let live = || groups.iter().enumerate().filter(move |(_, g)| !quiet || !g.continued);
    let qemu_ended = live().any(|(_, g)| g.ended(at) && !g.daemon());
    live()
        .filter(|(_, g)| g.ended(at) && !(qemu_ended && g.daemon()))
        .max_by_key(|(_, g)| (g.last_data, g.listener))
        .or_else(|| live().min_by_key(|(_, g)| (g.last_data.unwrap_or(g.last), g.listener)))
        .map(|(k, _)| k)
}

/// Whether the lookahead is no longer needed for [`choose`]'s answer: at
/// most one QEMU listener is still quiet since the move (beside it,
/// libvirt's daemon ports do not count), or, with none, at most one daemon's.
pub fn decided(groups: &[Group]) -> bool {
    let quiet = |daemon: bool| groups.iter().filter(|g| !g.continued && g.daemon() == daemon).count();
    match quiet(false) {
        0 => quiet(true) <= 1,
        n => n == 1,
    }
}

/// Time-to-responsiveness (the first paper's fourth metric), measured as
/// windows close: from the move (`at`) to the first frame (its slot's
/// start) of the first run of [`RESPONSIVE_SLOTS`] slots, starting at the
/// move's slot, in which the VM sent at the destination at least
/// [`RESPONSIVE_FRACTION`] of what its rate before the move gives for that
/// time; the run must end within [`bound_us`] of the move.
#[derive(Clone, Debug)]
pub struct Comeback {
    at: PacketTime,
    len_us: i64,
    /// Frames needed in a run.
    need: u32,
    /// The move's global slot: runs start there at the earliest.
    from: i64,
    /// The last global slot a run may end in.
    until: i64,
    /// Slots with frames among the last [`RESPONSIVE_SLOTS`] looked at (carried to the next window).
    run: VecDeque<(i64, u16)>,
    sum: u32,
    /// The open window's frames at the destination.
    frames: [u16; SLOTS],
}

impl Comeback {
    /// For a move at `at` of a VM that sent `frames` frames in `slots` slots
    /// before it: `None` when fewer than [`RESPONSIVE_MIN_FRAMES`] (its pace is unknown).
    pub fn new(at: PacketTime, frames: u64, slots: i64, len_us: i64) -> Option<Comeback> {
        if frames < RESPONSIVE_MIN_FRAMES || slots < 1 {
            return None;
        }
        let per_slot = frames as f64 / slots as f64;
        let need = (RESPONSIVE_FRACTION * per_slot * RESPONSIVE_SLOTS as f64).ceil().max(1.0) as u32;
        let until = PacketTime::from_micros(at.as_micros().saturating_add(bound_us(len_us)));
        Some(Comeback {
            at,
            len_us,
            need,
            from: global_slot(at, len_us),
            until: global_slot(until, len_us),
            run: VecDeque::with_capacity(RESPONSIVE_SLOTS),
            sum: 0,
            frames: [0; SLOTS],
        })
    }

    /// Frames per slot at the destination in the open window.
    pub fn add(&mut self, slots: &[u16; SLOTS]) {
        for (f, &n) in self.frames.iter_mut().zip(slots) {
            *f = f.saturating_add(n);
        }
    }

    /// Closes the window that starts at `start` (windows come in order;
    /// those never closed had no frames): `Some` once decided, the time in
    /// µs or `None` when the VM was not back within the bound.
    pub fn close(&mut self, start: PacketTime) -> Option<Option<i64>> {
        let base = global_slot(start, self.len_us);
        let frames = std::mem::replace(&mut self.frames, [0; SLOTS]);
        for (k, &n) in frames.iter().enumerate() {
            let g = base + k as i64;
            if g < self.from {
                continue;
            }
            if g > self.until {
                break;
            }
            while self.run.front().is_some_and(|e| e.0 <= g - RESPONSIVE_SLOTS as i64) {
                self.sum -= u32::from(self.run.pop_front().map_or(0, |e| e.1));
            }
            if n > 0 {
                self.run.push_back((g, n));
                self.sum += u32::from(n);
            }
            if self.sum >= self.need {
                // From the run's first slot with frames.
                let first = self.run.front().map_or(g, |e| e.0);
                return Some(Some((slot_start_us(first, self.len_us) - self.at.as_micros()).max(0)));
            }
        }
        (base + SLOTS as i64 > self.until).then_some(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    const MS: i64 = 1000;
    const W: i64 = 100 * MS;

    fn t(us: i64) -> PacketTime {
        PacketTime::from_micros(us)
    }

    fn group(port: u16, last_data: Option<i64>, bytes: u64, continued: bool) -> Group {
        let ip: IpAddr = [10, 0, 0, 2].into();
        Group {
            listener: (ip, port),
            last_data: last_data.map(t),
            last: t(last_data.unwrap_or(0) + MS),
            first: t(0),
            bytes,
            streams: 1,
            continued,
        }
    }

    #[test]
    fn a_listener_whose_data_went_on_after_the_move_is_not_its_memory() {
        let at = t(1_000 * MS);
        // The big stream paused just before the small VM's announce (its data
        // so far ended later than the small one's): taken, until the
        // lookahead shows it carry on.
        let mut g =
            vec![group(49153, Some(990 * MS), 70_000_000, false), group(49152, Some(960 * MS), 1_000_000, false)];
        assert_eq!((choose(&g, at), decided(&g)), (Some(0), false));
        g[0].continued = true;
        assert_eq!((choose(&g, at), decided(&g)), (Some(1), true));
        // Within the tail it still counts as ended before the move.
        let g = vec![group(49153, Some(1_015 * MS), 9, false), group(49152, Some(960 * MS), 9, false)];
        assert_eq!(choose(&g, at), Some(0));
        // Every one went on: the earliest to end.
        let g = vec![group(49153, Some(1_300 * MS), 9, true), group(49152, Some(1_200 * MS), 9, true)];
        assert_eq!((choose(&g, at), decided(&g)), (Some(1), true));
    }

    #[test]
    fn libvirts_daemon_ports_are_the_memory_only_without_a_qemu_stream_that_ended() {
        let at = t(1_000 * MS);
        for port in [16509, 16514] {
            // RPC ending after QEMU's stream: QEMU's.
            let g = vec![group(port, Some(999 * MS), 8_000, false), group(49152, Some(900 * MS), 700_000, false)];
            assert_eq!((choose(&g, at), decided(&g)), (Some(1), true), "{port}");
            // A tunnelled move: the daemon's connection is all there is.
            let g = vec![group(port, Some(999 * MS), 700_000, false)];
            assert_eq!((choose(&g, at), decided(&g)), (Some(0), true), "{port}");
            // QEMU's stream still going (another migration's): the daemon's.
            let g = vec![group(port, Some(999 * MS), 700_000, false), group(49152, Some(1_500 * MS), 9, true)];
            assert_eq!(choose(&g, at), Some(0), "{port}");
        }
    }

    #[test]
    fn two_daemon_connections_and_no_qemu_stream_wait_for_the_lookahead() {
        let g = vec![group(16509, Some(999 * MS), 8_000, false), group(16514, Some(900 * MS), 9, false)];
        assert_eq!((choose(&g, t(1_000 * MS)), decided(&g)), (Some(0), false));
    }

    #[test]
    fn one_listener_or_none() {
        let at = t(1_000 * MS);
        assert_eq!(choose(&[], at), None);
        assert!(decided(&[]));
        // One listener is the move's, ended or not, data or not.
        for g in [
            group(49152, Some(900 * MS), 9, false),
            group(49152, Some(1_500 * MS), 9, true),
            group(49152, None, 9, false),
        ] {
            assert_eq!((choose(std::slice::from_ref(&g), at), decided(std::slice::from_ref(&g))), (Some(0), true));
        }
    }

    #[test]
    fn responsiveness_is_found_across_window_boundaries_and_given_up_at_the_bound() {
        // 6.25 frames a slot before (400 in 64 slots): 40 in a run of 8.
        let at = t(10_090 * MS);
        let mut c = Comeback::new(at, 400, 64, W).unwrap();
        assert_eq!(c.need, 40);
        // Back 25 ms after the move, in the next window: 6 frames a slot.
        let mut slots = [0u16; SLOTS];
        slots[60..].fill(1);
        c.add(&slots);
        assert_eq!(c.close(t(10_000 * MS)), None);
        let mut slots = [0u16; SLOTS];
        slots[5..20].fill(6);
        c.add(&slots);
        // Slot 5 of the window at 10.1 s starts at 10.107812 s (5 × 1.5625 ms).
        assert_eq!(c.close(t(10_100 * MS)), Some(Some(17_812)));
        // Never at the pace again: nothing by the bound (1 s), then not back.
        let mut c = Comeback::new(at, 400, 64, W).unwrap();
        for w in 0..=10 {
            c.add(&[1; SLOTS]);
            let want = (w == 10).then_some(None);
            assert_eq!(c.close(t(10_000 * MS + w * W)), want, "{w}");
        }
        // Quiet windows never closed count as empty; a run spanning a window's end counts.
        let mut c = Comeback::new(at, 400, 64, W).unwrap();
        assert_eq!(c.close(t(10_000 * MS)), None);
        let mut slots = [0u16; SLOTS];
        slots[60..].fill(7);
        c.add(&slots);
        assert_eq!(c.close(t(10_500 * MS)), None);
        let mut slots = [0u16; SLOTS];
        slots[..4].fill(7);
        c.add(&slots);
        assert_eq!(c.close(t(10_600 * MS)), Some(Some(10_593_750 - 10_090_000)));
        // Too few frames before: not measured.
        assert!(Comeback::new(at, 15, 64, W).is_none());
        // Long windows: the bound is 16 slots.
        assert_eq!((bound_us(100 * MS), bound_us(10_000 * MS)), (1_000_000, 2_500_000));
    }
}
