//! The action journal: each action is appended (and fsynced) before it is dispatched, each outcome after; a restart resumes what is unfinished.
//!
//! One JSON object per line: `{"id", "state", "attempts", "action"?, "error"?}`
//! with `state` one of `pending` (with the action), `sent` (handed to the
//! backend, before its answer), `failed` (a try failed, another will come),
//! `done`, `given_up`. An action is unfinished while its last record is
//! `pending`, `sent` or `failed`. Delivery is at least once: an action
//! whose delivery succeeded but whose `done` was not yet written when the
//! process died is delivered again after the restart; backends get the id as
//! an idempotency key. When the file has more than `max_lines` records it is
//! compacted: rewritten (to a temporary file, fsynced, renamed) with the
//! unfinished actions, in the order they were decided, and the ids (only) of
//! the newest `max_lines / 2` finished ones, so an action decided again after
//! a compaction (an alert read again, a replay run again) is still known and
//! not sent twice. The journal is compacted at open as well.

use super::Action;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    /// Handed to the backend; its answer not yet known.
    Sent,
    Failed,
    Done,
    GivenUp,
}

#[derive(Serialize, Deserialize)]
struct Record {
    id: String,
    state: State,
    attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    action: Option<Action>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("action journal {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Records kept before the journal is compacted.
pub const DEFAULT_MAX_LINES: usize = 10_000;

pub struct Journal {
    path: PathBuf,
    file: File,
    lines: usize,
    max_lines: usize,
    /// Every id the journal holds, so an action decided twice is sent once.
    known: HashSet<String>,
    /// Unfinished actions: (when decided, in journal order; the action; attempts so far).
    open: HashMap<String, (u64, Action, u32)>,
    /// Finished ids with their last state, oldest first; compaction keeps the newest `keep_finished`.
    finished: VecDeque<(String, State)>,
    keep_finished: usize,
    seq: u64,
}

impl Journal {
    /// Opens (or creates) the journal; returns it and the unfinished actions
    /// with the attempts they already had, oldest first.
    pub fn open(path: &Path, max_lines: usize) -> Result<(Journal, Vec<(Action, u32)>), JournalError> {
        let io = |source| JournalError::Io { path: path.to_path_buf(), source };
        let max_lines = max_lines.max(16);
        let mut j = Journal {
            path: path.to_path_buf(),
            file: OpenOptions::new().create(true).append(true).open(path).map_err(io)?,
            lines: 0,
            max_lines,
            known: HashSet::new(),
            open: HashMap::new(),
            finished: VecDeque::new(),
            keep_finished: max_lines / 2,
            seq: 0,
        };
        for line in BufReader::new(File::open(path).map_err(io)?).lines() {
            let line = line.map_err(io)?;
            // A line cut by a crash mid-write is skipped.
            let Ok(r) = serde_json::from_str::<Record>(&line) else { continue };
            j.lines += 1;
            j.known.insert(r.id.clone());
            match (r.state, r.action) {
                (State::Pending | State::Sent | State::Failed, Some(a)) => {
                    let seq = j.next_seq();
                    let e = j.open.entry(r.id).or_insert((seq, a.clone(), r.attempts));
                    (e.1, e.2) = (a, r.attempts);
                }
                (State::Pending | State::Sent | State::Failed, None) => {
                    if let Some(e) = j.open.get_mut(&r.id) {
                        e.2 = r.attempts;
                    }
                }
                (State::Done | State::GivenUp, _) => j.finish(r.id, r.state),
            }
        }
        let mut resume: Vec<&(u64, Action, u32)> = j.open.values().collect();
        resume.sort_by_key(|e| e.0);
        let resume = resume.into_iter().map(|(_, a, n)| (a.clone(), *n)).collect();
        if j.lines > j.max_lines {
            j.compact().map_err(io)?;
        }
        Ok((j, resume))
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn finish(&mut self, id: String, state: State) {
        self.open.remove(&id);
        self.finished.push_back((id, state));
    }

    /// Records a new action before it is dispatched. `false`: the journal
    /// already has it (decided again after a restart), so it is not sent again.
    pub fn pending(&mut self, a: &Action) -> std::io::Result<bool> {
        if !self.known.insert(a.id.clone()) {
            return Ok(false);
        }
        let seq = self.next_seq();
        self.open.insert(a.id.clone(), (seq, a.clone(), 0));
        self.append(&Record {
            id: a.id.clone(),
            state: State::Pending,
            attempts: 0,
            action: Some(a.clone()),
            error: None,
        })?;
        Ok(true)
    }

    /// Records the outcome of an attempt.
    pub fn outcome(&mut self, id: &str, state: State, attempts: u32, error: Option<String>) -> std::io::Result<()> {
        match state {
            State::Done | State::GivenUp => self.finish(id.to_string(), state),
            _ => {
                if let Some(e) = self.open.get_mut(id) {
                    e.2 = attempts;
                }
            }
        }
        self.append(&Record { id: id.to_string(), state, attempts, action: None, error })?;
        if self.lines > self.max_lines {
            self.compact()?;
        }
        Ok(())
    }

    pub fn unfinished(&self) -> usize {
        self.open.len()
    }

    fn append(&mut self, r: &Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(r)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        self.lines += 1;
        Ok(())
    }

    /// Rewrites the journal: the newest finished ids (id and state only),
    /// then the unfinished actions in the order they were decided.
    fn compact(&mut self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("compact");
        while self.finished.len() > self.keep_finished {
            self.finished.pop_front();
        }
        // An id finished twice (decided again after its record was compacted
        // away) is kept once, at its newest place.
        let mut seen = HashSet::new();
        let mut keep: Vec<&(String, State)> = self.finished.iter().rev().filter(|(id, _)| seen.insert(id)).collect();
        keep.reverse();
        let mut open: Vec<(&String, &(u64, Action, u32))> = self.open.iter().collect();
        open.sort_by_key(|(_, e)| e.0);
        let mut lines = 0;
        {
            let mut f = File::create(&tmp)?;
            let records = keep
                .iter()
                .map(|(id, state)| Record { id: id.clone(), state: *state, attempts: 0, action: None, error: None })
                .chain(open.iter().map(|(id, (_, a, attempts))| Record {
                    id: (*id).clone(),
                    state: State::Pending,
                    attempts: *attempts,
                    action: Some(a.clone()),
                    error: None,
                }));
            for r in records {
                let mut line = serde_json::to_vec(&r)?;
                line.push(b'\n');
                f.write_all(&line)?;
                lines += 1;
            }
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.lines = lines;
        self.known = keep.iter().map(|(id, _)| id.clone()).chain(self.open.keys().cloned()).collect();
        self.finished = keep.into_iter().cloned().collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::ActionKind;
    use crate::detect::{Level, Reason};
    use crate::vocab::PacketTime;

    fn action(n: u32) -> Action {
        Action {
            id: format!("a-{n}"),
            ts: PacketTime::from_micros(n as i64),
            kind: ActionKind::Quarantine,
            vm: "fa:16:3e:00:00:01".parse().unwrap(),
            vm_name: Some("web-1".into()),
            hypervisor: None,
            signed: false,
            destination: None,
            level: Level::High,
            reason: Reason::Signature,
            note: None,
        }
    }

    #[test]
    fn unfinished_actions_survive_a_restart_and_finished_ones_do_not() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("journal");
        let (mut j, resume) = Journal::open(&p, 100).unwrap();
        assert!(resume.is_empty());
        for n in 0..4 {
            assert!(j.pending(&action(n)).unwrap());
        }
        assert!(!j.pending(&action(1)).unwrap(), "the same id is journaled once");
        j.outcome("a-0", State::Done, 1, None).unwrap();
        j.outcome("a-1", State::Failed, 1, Some("503".into())).unwrap();
        j.outcome("a-2", State::GivenUp, 8, Some("gone".into())).unwrap();
        drop(j);
        // A torn last line (a crash mid-write) is skipped.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"id\":\"a-9\",\"sta").unwrap();
        let (mut j, resume) = Journal::open(&p, 100).unwrap();
        let got: Vec<(String, u32)> = resume.iter().map(|(a, n)| (a.id.clone(), *n)).collect();
        assert_eq!(got, vec![("a-1".to_string(), 1), ("a-3".to_string(), 0)]);
        assert_eq!(resume[0].0, action(1));
        assert!(!j.pending(&action(0)).unwrap(), "done before the restart: not sent again");
    }

    #[test]
    fn compaction_bounds_the_file_and_keeps_every_unfinished_action() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("journal");
        let (mut j, _) = Journal::open(&p, 16).unwrap();
        for n in 0..40 {
            j.pending(&action(n)).unwrap();
            if n % 10 != 0 {
                j.outcome(&format!("a-{n}"), State::Done, 1, None).unwrap();
            }
        }
        let lines = std::fs::read_to_string(&p).unwrap().lines().count();
        assert!(lines <= 16 + 2, "{lines}");
        assert_eq!(j.unfinished(), 4);
        drop(j);
        let (_, resume) = Journal::open(&p, 16).unwrap();
        let ids: Vec<String> = resume.into_iter().map(|(a, _)| a.id).collect();
        assert_eq!(ids.len(), 4);
        for id in ["a-0", "a-10", "a-20", "a-30"] {
            assert!(ids.contains(&id.to_string()), "{ids:?}");
        }
    }

    #[test]
    fn compaction_remembers_finished_ids_so_a_decision_made_again_is_not_sent_again() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("journal");
        let (mut j, _) = Journal::open(&p, 16).unwrap();
        for n in 0..12 {
            j.pending(&action(n)).unwrap();
            j.outcome(&format!("a-{n}"), State::Done, 1, None).unwrap();
        }
        // 24 records: compacted past 16.
        assert!(std::fs::read_to_string(&p).unwrap().lines().count() < 24);
        assert!(!j.pending(&action(3)).unwrap(), "finished before the compaction: still known");
        drop(j);
        // And after a restart (the journal is compacted at open too).
        let (mut j, resume) = Journal::open(&p, 16).unwrap();
        assert!(resume.is_empty());
        for n in 4..12 {
            assert!(!j.pending(&action(n)).unwrap(), "a-{n} was done: not sent again");
        }
    }

    #[test]
    fn compaction_keeps_the_unfinished_in_the_order_they_were_decided() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("journal");
        let (mut j, _) = Journal::open(&p, 16).unwrap();
        // a-9 before a-10 (which sorts first as a string), a-2 last.
        for n in [9, 10, 2] {
            j.pending(&action(n)).unwrap();
        }
        for n in 20..30 {
            j.pending(&action(n)).unwrap();
            j.outcome(&format!("a-{n}"), State::Done, 1, None).unwrap();
        }
        drop(j);
        let (_, resume) = Journal::open(&p, 16).unwrap();
        let ids: Vec<String> = resume.into_iter().map(|(a, _)| a.id).collect();
        assert_eq!(ids, ["a-9", "a-10", "a-2"]);
    }
}
