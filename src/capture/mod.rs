//! Capture: where frames come from. One [`PacketSource`] trait for pcap files and live interfaces.

mod file;
pub mod linktype;
mod live;
pub mod reader;

pub use file::{FileSource, STDIN};
pub use live::{LiveConfig, LiveSource};

use crate::time::PacketTime;
use std::ops::ControlFlow;
use std::path::PathBuf;

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
        let ts = PacketTime::from_timeval(pkt.header.ts.tv_sec as i64, pkt.header.ts.tv_usec as i64);
        RawPacket { ts, orig_len: pkt.header.len, data: pkt.data, linktype }
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

/// What a source hands the pipeline.
#[derive(Clone, Copy, Debug)]
pub enum SourceItem<'a> {
    Packet(RawPacket<'a>),
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
/// [`SourceItem::Tick`] when idle. A source must not panic on bad input:
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
