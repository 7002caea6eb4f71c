//! Following an alert file as it grows: inotify wakes the reader, rotation and truncation are handled, a checkpoint survives restarts.
//!
//! The follower keeps the file open and reads complete lines from its
//! offset; a line without its newline yet is left for the next read. When
//! the path names another file (rotated by logrotate or the IDS), the old
//! file is read to its end first, then the new one from its start. A file
//! shorter than the offset, or whose bytes before the offset changed, was
//! truncated: reading restarts at 0. The checkpoint (the file's inode, the
//! offset after the last whole line, and a fingerprint of the bytes before
//! it) is written atomically once the alerts read are handed over and
//! handled, so a restart resumes exactly there: nothing lost, and only alerts
//! handled just before a crash, whose checkpoint was not yet written, can
//! come twice.
use super::{parse, Alert, Format};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub inode: u64,
    pub offset: u64,
    /// The bytes just before `offset` (up to [`FINGERPRINT`]), hex: if they
    /// change, the file was truncated and rewritten, even to the same length.
    #[serde(default)]
    pub before: String,
}

/// Bytes kept before the offset to recognize a rewritten file: enough for
/// the whole last line (where timestamps and ids differ) of any usual format.
const FINGERPRINT: u64 = 4096;

/// Turns one line into a record: `Ok(None)` skips it, `Err` counts it malformed.
pub type LineParser<T> = Box<dyn Fn(&str) -> Result<Option<T>, ()> + Send>;

/// Follows one file of JSON or text lines; `T` is what a line becomes
/// (IDS alerts by default; the migration gate's decisions too).
pub struct Follower<T = Alert> {
    path: PathBuf,
    parse: LineParser<T>,
    checkpoint: Option<PathBuf>,
    file: Option<File>,
    at: Checkpoint,
    /// Lines that did not parse.
    pub malformed: u64,
}

impl Follower<Alert> {
    /// Starts following the IDS alert file `path` (which need not exist yet).
    /// With a checkpoint for the same file, reading resumes there; otherwise
    /// at the start, or with `from_start` false after the last whole line
    /// already there.
    pub fn open(path: &Path, format: Format, checkpoint: Option<&Path>, from_start: bool) -> Follower {
        Follower::open_with(path, Box::new(move |l| parse(format, l).map_err(|_| ())), checkpoint, from_start)
    }
}

impl<T: Send + 'static> Follower<T> {
    /// As [`Follower::open`], with lines parsed by `parse`.
    pub fn open_with(path: &Path, parse: LineParser<T>, checkpoint: Option<&Path>, from_start: bool) -> Follower<T> {
        let saved: Option<Checkpoint> = checkpoint
            .and_then(|c| crate::small_file::read(c, 1 << 20).ok())
            .and_then(|t| serde_json::from_slice(&t).ok());
        let mut f = Follower {
            path: path.to_path_buf(),
            parse,
            checkpoint: checkpoint.map(Path::to_path_buf),
            file: None,
            at: Checkpoint::default(),
            malformed: 0,
        };
        if let Ok(file) = File::open(path) {
            let inode = file.metadata().map(|m| m.ino()).unwrap_or(0);
            f.at = match saved.filter(|s| s.inode == inode) {
                Some(s) => s,
                None if from_start => Checkpoint { inode, ..Default::default() },
                None => Self::at_end(&file, inode).unwrap_or(Checkpoint { inode, ..Default::default() }),
            };
            f.file = Some(file);
        }
        f
    }

    /// The position after the file's last whole line, with its fingerprint.
    fn at_end(mut file: &File, inode: u64) -> std::io::Result<Checkpoint> {
        let len = file.metadata()?.len();
        let from = len.saturating_sub(1 << 20);
        file.seek(SeekFrom::Start(from))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail)?;
        let Some(nl) = tail.iter().rposition(|&b| b == b'\n') else {
            return Ok(Checkpoint { inode, ..Default::default() });
        };
        let end = nl + 1;
        let keep = end.min(FINGERPRINT as usize);
        Ok(Checkpoint { inode, offset: from + end as u64, before: hex::encode(&tail[end - keep..end]) })
    }

    /// Reads what was appended since the last call; [`Follower::commit`]
    /// once they are handled.
    pub fn poll(&mut self, out: &mut Vec<T>) -> std::io::Result<()> {
        let on_disk = std::fs::metadata(&self.path).ok().map(|m| m.ino());
        if self.file.is_some() && on_disk.is_some_and(|ino| ino != self.at.inode) {
            // Rotated: finish the old file, then take the new one from its start.
            self.read_new(out)?;
            self.file = None;
        }
        if self.file.is_none() {
            match File::open(&self.path) {
                Ok(f) => {
                    self.at = Checkpoint { inode: f.metadata()?.ino(), ..Default::default() };
                    self.file = Some(f);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        self.read_new(out)
    }

    fn read_new(&mut self, out: &mut Vec<T>) -> std::io::Result<()> {
        let Some(file) = self.file.as_mut() else { return Ok(()) };
        let len = file.metadata()?.len();
        let rewritten = self.at.offset > 0 && {
            let from = self.at.offset.saturating_sub(FINGERPRINT);
            let mut seen = vec![0u8; (self.at.offset - from) as usize];
            file.seek(SeekFrom::Start(from))?;
            len < self.at.offset || file.read_exact(&mut seen).is_err() || hex::encode(&seen) != self.at.before
        };
        if rewritten {
            // Truncated in place (and maybe written again).
            self.at.offset = 0;
            self.at.before.clear();
        }
        file.seek(SeekFrom::Start(self.at.offset))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        let Some(last_newline) = buf.iter().rposition(|&b| b == b'\n') else { return Ok(()) };
        for line in buf[..last_newline].split(|&b| b == b'\n') {
            match (self.parse)(&String::from_utf8_lossy(line)) {
                Ok(Some(a)) => out.push(a),
                Ok(None) => {}
                Err(_) => self.malformed += 1,
            }
        }
        let consumed = &buf[..=last_newline];
        let keep = consumed.len().min(FINGERPRINT as usize);
        let mut before = hex::decode(&self.at.before).unwrap_or_default();
        before.extend_from_slice(&consumed[consumed.len() - keep..]);
        let cut = before.len().saturating_sub(FINGERPRINT as usize);
        self.at.before = hex::encode(&before[cut..]);
        self.at.offset += last_newline as u64 + 1;
        Ok(())
    }

    /// Writes the checkpoint: everything read so far was handled.
    pub fn commit(&self) -> std::io::Result<()> {
        let Some(c) = &self.checkpoint else { return Ok(()) };
        let tmp = c.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&self.at)?)?;
        std::fs::rename(&tmp, c)
    }

    /// Follows the file on a thread of its own: woken by inotify on the
    /// file's directory (so rotation and creation are seen too), with a
    /// 1-second fallback; each batch of alerts goes to `each`, which returns
    /// once they are handled (then the checkpoint is written), until it
    /// returns false or `stop` is set. `each` also gets the malformed lines
    /// counted since its last call.
    pub fn watch(
        mut self,
        stop: crossbeam_channel::Receiver<()>,
        mut each: impl FnMut(Vec<T>, u64) -> bool + Send + 'static,
    ) -> std::io::Result<std::thread::JoinHandle<Follower<T>>> {
        use notify::Watcher;
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut watcher = notify::recommended_watcher(move |_e: notify::Result<notify::Event>| {
            let _ = tx.send(());
        })
        .map_err(std::io::Error::other)?;
        let dir = self.path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        watcher.watch(&dir, notify::RecursiveMode::NonRecursive).map_err(std::io::Error::other)?;
        std::thread::Builder::new().name("vmsentry-ids".into()).spawn(move || {
            let _keep = watcher;
            // `stop` ends the loop when its sender is dropped (or sends).
            loop {
                let mut out = Vec::new();
                let malformed = self.malformed;
                if let Err(e) = self.poll(&mut out) {
                    eprintln!("vmsentry: reading {}: {e}", self.path.display());
                }
                let bad = self.malformed - malformed;
                if !out.is_empty() || bad > 0 {
                    if !each(out, bad) {
                        break;
                    }
                    if let Err(e) = self.commit() {
                        eprintln!("vmsentry: writing the checkpoint of {}: {e}", self.path.display());
                    }
                }
                crossbeam_channel::select! {
                    recv(rx) -> _ => {}
                    recv(stop) -> _ => break,
                    default(std::time::Duration::from_secs(1)) => {}
                }
                while rx.try_recv().is_ok() {}
            }
            self
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn fast(sid: u32) -> String {
        format!(
            "11/22-03:45:01.000001  [**] [1:{sid}:1] test [**] [Priority: 1] {{TCP}} 203.0.113.9:1 -> 10.0.0.31:22\n"
        )
    }

    fn append(p: &Path, s: &str) {
        std::fs::OpenOptions::new().create(true).append(true).open(p).unwrap().write_all(s.as_bytes()).unwrap();
    }

    fn sids(a: &[Alert]) -> Vec<u64> {
        a.iter().map(|a| a.sid).collect()
    }

    #[test]
    fn reads_what_is_appended_whole_lines_only_and_counts_malformed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("alert_fast.txt");
        let mut f = Follower::open(&p, Format::SnortFast, None, true);
        let mut out = Vec::new();
        f.poll(&mut out).unwrap();
        assert!(out.is_empty(), "no file yet");
        append(&p, &(fast(1) + &fast(2) + "garbage\n" + "11/22-03:45:01.000001  [**] [1:3:1] half"));
        f.poll(&mut out).unwrap();
        assert_eq!((sids(&out), f.malformed), (vec![1, 2], 1));
        append(&p, " a line [**] [Priority: 1] {TCP} 203.0.113.9 -> 10.0.0.31\n");
        out.clear();
        f.poll(&mut out).unwrap();
        assert_eq!(sids(&out), vec![3], "the half line, once whole");
    }

    #[test]
    fn survives_rotation_truncation_and_restart() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("eve.txt");
        let ck = d.path().join("checkpoint");
        let mut f = Follower::open(&p, Format::SnortFast, Some(&ck), true);
        let mut out = Vec::new();
        append(&p, &(fast(1) + &fast(2)));
        f.poll(&mut out).unwrap();
        // Rotated: one more line lands in the old file, then a new file starts.
        append(&p, &fast(3));
        std::fs::rename(&p, d.path().join("eve.txt.1")).unwrap();
        append(&d.path().join("eve.txt.1"), &fast(4));
        append(&p, &fast(5));
        f.poll(&mut out).unwrap();
        assert_eq!(sids(&out), vec![1, 2, 3, 4, 5]);
        // Truncated in place (copytruncate), then written again.
        std::fs::write(&p, fast(6)).unwrap();
        out.clear();
        f.poll(&mut out).unwrap();
        assert_eq!(sids(&out), vec![6]);
        f.commit().unwrap();
        // A restart resumes at the checkpoint: nothing repeated, nothing lost.
        drop(f);
        append(&p, &fast(7));
        let mut g = Follower::open(&p, Format::SnortFast, Some(&ck), true);
        out.clear();
        g.poll(&mut out).unwrap();
        assert_eq!(sids(&out), vec![7]);
    }

    #[test]
    fn inotify_wakes_the_follower() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("alerts");
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let (tx, rx) = crossbeam_channel::unbounded();
        let h =
            Follower::open(&p, Format::SnortFast, None, true).watch(stopped, move |a, _| tx.send(a).is_ok()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let t = std::time::Instant::now();
        append(&p, &fast(42));
        let got = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(sids(&got), vec![42]);
        // Woken by the file's change, not the 1-second fallback.
        assert!(t.elapsed() < std::time::Duration::from_millis(900), "{:?}", t.elapsed());
        drop(stop);
        let t = std::time::Instant::now();
        let f = h.join().unwrap();
        assert!(t.elapsed() < std::time::Duration::from_millis(500), "stops at once: {:?}", t.elapsed());
        assert_eq!(f.malformed, 0);
    }
}

#[cfg(test)]
mod more_tests {
    use super::*;
    use std::io::Write;

    fn fast(sid: u32) -> String {
        format!("11/22-03:45:01.000001  [**] [1:{sid}:1] t [**] [Priority: 1] {{TCP}} 203.0.113.9:1 -> 10.0.0.31:22\n")
    }

    fn append(p: &Path, s: &str) {
        std::fs::OpenOptions::new().create(true).append(true).open(p).unwrap().write_all(s.as_bytes()).unwrap();
    }

    #[test]
    fn without_a_checkpoint_live_starts_at_the_end_unless_told_otherwise() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("fast.log");
        append(&p, &(fast(1) + &fast(2) + "11/22-03:45:01.000001  [**] [1:3:1] half"));
        let mut out = Vec::new();
        let mut f = Follower::open(&p, Format::SnortFast, None, false);
        f.poll(&mut out).unwrap();
        assert!(out.is_empty(), "old alerts are not acted on");
        append(&p, " [**] [Priority: 1] {TCP} 203.0.113.9 -> 10.0.0.31\n");
        append(&p, &fast(4));
        f.poll(&mut out).unwrap();
        assert_eq!(out.iter().map(|a| a.sid).collect::<Vec<_>>(), vec![3, 4], "the line begun before, once whole");
        let mut g = Follower::open(&p, Format::SnortFast, None, true);
        out.clear();
        g.poll(&mut out).unwrap();
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn the_checkpoint_is_written_only_on_commit() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("fast.log");
        let ck = d.path().join("ck");
        append(&p, &fast(1));
        let mut out = Vec::new();
        let mut f = Follower::open(&p, Format::SnortFast, Some(&ck), true);
        f.poll(&mut out).unwrap();
        drop(f);
        // Crashed before handling: read again.
        let mut g = Follower::open(&p, Format::SnortFast, Some(&ck), true);
        out.clear();
        g.poll(&mut out).unwrap();
        assert_eq!(out.len(), 1);
        g.commit().unwrap();
        let mut h = Follower::open(&p, Format::SnortFast, Some(&ck), true);
        out.clear();
        h.poll(&mut out).unwrap();
        assert!(out.is_empty());
    }
}
