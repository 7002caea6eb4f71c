//! Spool: a sensor's bounded on-disk buffer of messages not yet acknowledged by JetStream, oldest first.
//!
//! Every message a sensor sends is first written here (one file per message,
//! `<seq>.vsm`, written to a temporary name and renamed, so a crash leaves
//! whole messages only) and deleted when JetStream has acknowledged it. So
//! the capture never waits on NATS: when NATS is unreachable the files pile
//! up, up to `max_bytes`; a message that would pass the cap is dropped and
//! counted, and the publisher catches up, oldest first, when NATS is back.
//! Files left by an earlier run are sent first after a restart (JetStream's
//! duplicate window and the controller's per-sensor watermark make a message
//! sent twice count once).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

struct State {
    /// (sequence, size in bytes), oldest first.
    queue: VecDeque<(u64, u64)>,
    bytes: u64,
    next: u64,
    dropped: u64,
    closed: bool,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    ready: Condvar,
}

impl Spool {
    /// Opens the spool directory (created if missing), taking over the
    /// messages an earlier run left.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        let io = |source| SpoolError::Io { path: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut queue = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io)? {
            let e = e.map_err(io)?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name.strip_suffix(".vsm").and_then(|s| s.parse::<u64>().ok()) {
                queue.push((seq, e.metadata().map_err(io)?.len()));
            } else if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        queue.sort_unstable();
        let bytes = queue.iter().map(|q| q.1).sum();
        let next = queue.last().map_or(0, |q| q.0 + 1);
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            state: Mutex::new(State { queue: queue.into(), bytes, next, dropped: 0, closed: false }),
            ready: Condvar::new(),
        })
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.vsm"))
    }

    /// Adds a message; `false` when it was dropped (the spool is full).
    pub fn push(&self, msg: &[u8]) -> Result<bool, SpoolError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.bytes + msg.len() as u64 > self.max_bytes {
            st.dropped += 1;
            return Ok(false);
        }
        let seq = st.next;
        st.next += 1;
        let path = self.path(seq);
        let tmp = path.with_extension("tmp");
        let io = |source| SpoolError::Io { path: path.clone(), source };
        std::fs::write(&tmp, msg).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        st.queue.push_back((seq, msg.len() as u64));
        st.bytes += msg.len() as u64;
        self.ready.notify_all();
        Ok(true)
    }

    /// The oldest message, waiting up to `wait` for one.
    pub fn peek(&self, wait: Duration) -> Result<Option<(u64, Vec<u8>)>, SpoolError> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (st, _) = self
            .ready
            .wait_timeout_while(st, wait, |s| s.queue.is_empty() && !s.closed)
            .unwrap_or_else(|p| p.into_inner());
        let Some(&(seq, _)) = st.queue.front() else { return Ok(None) };
        drop(st);
        let path = self.path(seq);
        let b = std::fs::read(&path).map_err(|source| SpoolError::Io { path, source })?;
        Ok(Some((seq, b)))
    }

    /// The oldest message was acknowledged: forget it.
    pub fn remove(&self, seq: u64) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.queue.front().is_some_and(|q| q.0 == seq) {
            if let Some((_, n)) = st.queue.pop_front() {
                st.bytes -= n;
            }
            let _ = std::fs::remove_file(self.path(seq));
        }
        self.ready.notify_all();
    }

    /// No more pushes will come (the publisher drains, then stops).
    pub fn close(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        self.ready.notify_all();
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).closed
    }

    /// Waits until every message was acknowledged, or `timeout` passed; true when empty.
    pub fn wait_empty(&self, timeout: Duration) -> bool {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (st, _) =
            self.ready.wait_timeout_while(st, timeout, |s| !s.queue.is_empty()).unwrap_or_else(|p| p.into_inner());
        st.queue.is_empty()
    }

    /// (messages waiting, their bytes, messages dropped so far).
    pub fn depth(&self) -> (usize, u64, u64) {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (st.queue.len(), st.bytes, st.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_come_out_in_order_survive_a_restart_and_the_cap_drops_counted() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path(), 10).unwrap();
        assert!(s.push(b"aaaa").unwrap());
        assert!(s.push(b"bbbb").unwrap());
        assert!(!s.push(b"cccc").unwrap(), "past the 10-byte cap");
        assert_eq!(s.depth(), (2, 8, 1));
        let (seq, m) = s.peek(Duration::ZERO).unwrap().unwrap();
        assert_eq!(m, b"aaaa");
        s.remove(seq);
        drop(s);
        // A restart finds what was not acknowledged, and carries on numbering after it.
        let s = Spool::open(d.path(), 10).unwrap();
        assert_eq!(s.depth(), (1, 4, 0));
        assert!(s.push(b"dd").unwrap());
        let (seq, m) = s.peek(Duration::ZERO).unwrap().unwrap();
        assert_eq!(m, b"bbbb");
        s.remove(seq);
        assert_eq!(s.peek(Duration::ZERO).unwrap().unwrap().1, b"dd");
        assert!(!s.wait_empty(Duration::from_millis(1)));
    }
}
