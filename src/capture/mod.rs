//! Capture: where frames come from. One [`PacketSource`] trait for pcap files and live interfaces.

mod file;
pub mod linktype;
pub mod live;
pub mod reader;

pub use file::{FileSource, STDIN};
pub use live::{LiveConfig, LiveSource};

use crate::vocab::PacketTime;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// One captured frame, borrowed from the source until the next call.
#[derive(Clone, Copy, Debug)]
pub struct RawPacket<'a> {
    pub ts: PacketTime,
    /// Length on the wire (pcap `orig_len`).
    pub orig_len: u32,
    /// The captured bytes (`caplen` of them).
    pub data: &'a [u8],
    /// Link type: the file's (or pcapng interface's) `LINKTYPE_*` value for
    /// files, libpcap's `DLT_*` for live interfaces. They differ only for a
    /// few types; of those vmsentry decodes, raw IP (`LINKTYPE_RAW` 101 is
    /// `DLT_RAW` 12, or 14 on OpenBSD), and the decoder takes every form.
    pub linktype: i32,
}

impl<'a> RawPacket<'a> {
    /// A frame as libpcap hands it over.
    pub fn from_pcap(pkt: &pcap::Packet<'a>, linktype: i32) -> RawPacket<'a> {
        // timeval fields are i32 on some targets.
        #[allow(clippy::unnecessary_cast)]
        let ts = PacketTime::from_timeval(unwrap_secs(pkt.header.ts.tv_sec as i64), pkt.header.ts.tv_usec as i64);
        RawPacket { ts, orig_len: pkt.header.len, data: pkt.data, linktype }
    }
}

/// Seconds as libpcap hands them over, unwrapped: a pcap file stores them as
/// an unsigned 32-bit number, which libpcap reads into a signed 32-bit field,
/// so times from 2038-01-19 to 2106 come out negative (2100 as 1963). No
/// capture format stamps a time before 1970, so a negative value is always
/// such a wrapped one.
pub fn unwrap_secs(sec: i64) -> i64 {
    if (-(1i64 << 31)..0).contains(&sec) {
        sec + (1i64 << 32)
    } else {
        sec
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The input cannot be used at all (missing, unreadable, not pcap): exit 2.
    #[error("{path}: {msg}")]
    Open { path: PathBuf, msg: String },
    /// A bad interface or BPF filter: exit 2.
    #[error("{0}")]
    Setup(String),
    /// Reading failed part-way.
    #[error("{path}: read error: {msg}")]
    Read { path: PathBuf, msg: String },
}

/// Counters a source keeps about itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Files whose end was damaged (a cut-off last record): read up to the damage.
    pub damaged_files: u64,
    /// Files with frames of a link type the decoder does not know (warned
    /// about once per file and link type).
    pub unsupported_link_files: u64,
}

/// Several capture files in order, each announced with
/// [`SourceItem::Input`] before its frames.
pub struct FileList {
    files: Vec<(PathBuf, FileSource)>,
}

impl FileList {
    /// Opens every file up front (see [`FileSource::open`]).
    pub fn open(paths: &[PathBuf]) -> Result<FileList, CaptureError> {
        if paths.iter().filter(|p| p.as_os_str() == STDIN).count() > 1 {
            let msg = "standard input given more than once".into();
            return Err(CaptureError::Open { path: PathBuf::from(STDIN), msg });
        }
        let mut files = Vec::with_capacity(paths.len());
        for p in paths {
            files.push((p.clone(), FileSource::open(std::slice::from_ref(p))?));
        }
        Ok(FileList { files })
    }
}

impl PacketSource for FileList {
    fn run(&mut self, each: &mut dyn FnMut(SourceItem<'_>) -> ControlFlow<()>) -> Result<(), CaptureError> {
        let mut stopped = false;
        for (path, src) in &mut self.files {
            if each(SourceItem::Input(path)).is_break() {
                return Ok(());
            }
            src.run_inline(|item| {
                let flow = each(item);
                stopped |= flow.is_break();
                flow
            })?;
            if stopped {
                break;
            }
        }
        Ok(())
    }

    fn stats(&self) -> SourceStats {
        let mut s = SourceStats::default();
        for (_, f) in &self.files {
            let st = f.stats();
            s.damaged_files += st.damaged_files;
            s.unsupported_link_files += st.unsupported_link_files;
        }
        s
    }

    fn total_bytes(&self) -> Option<u64> {
        self.files.iter().map(|(_, f)| f.total_bytes()).sum()
    }
}

/// What a source hands the pipeline.
#[derive(Clone, Copy, Debug)]
pub enum SourceItem<'a> {
    Packet(RawPacket<'a>),
    /// The frames that follow come from this input (a file's path, or a
    /// live interface's name); messages about an input name it.
    Input(&'a Path),
    /// No frame came for a while; packet time has reached this instant (live
    /// sources only, from the capture clock), so windows can close.
    Tick(PacketTime),
}

/// A source of frames: pcap files in order, or a live interface.
///
/// Required: [`run`](PacketSource::run), which hands every frame, in capture
/// order, to `each` until the input ends or the source is stopped (`Ok`),
/// `each` returns `ControlFlow::Break` (`Ok`, the source stops early), or
/// reading fails in a way that ends the run (`Err`). The frame borrows the
/// source's buffer only for the call. A live source also hands over
/// [`SourceItem::Tick`] when idle; a source of several inputs may announce
/// each with [`SourceItem::Input`] before its frames (messages about time
/// going backwards then name it). A source must not panic on bad input:
/// damage it can step over (a cut-off last record of a file) is counted in
/// [`SourceStats`] and reported on stderr.
pub trait PacketSource {
    fn run(&mut self, each: &mut dyn FnMut(SourceItem<'_>) -> ControlFlow<()>) -> Result<(), CaptureError>;
    fn stats(&self) -> SourceStats;
    /// Total input size in bytes, when known (files), for progress.
    fn total_bytes(&self) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_pcap_seconds_are_unsigned() {
        // 2100-01-01T00:00:00Z is 4102444800 s: as libpcap's signed field, negative.
        let wrapped = (4_102_444_800u32 as i32) as i64;
        assert!(wrapped < 0);
        assert_eq!(unwrap_secs(wrapped), 4_102_444_800);
        assert_eq!(unwrap_secs(1_700_000_000), 1_700_000_000);
        assert_eq!(unwrap_secs(0), 0);
        // A 64-bit time_t of a live capture beyond 2106 is kept as it is.
        assert_eq!(unwrap_secs(5_000_000_000), 5_000_000_000);
    }
}
