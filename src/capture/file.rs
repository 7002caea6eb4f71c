//! pcap and pcapng files (plain or gzip'd, or standard input), several in order, through the native reader.

use super::linktype;
use super::reader::{magic, CaptureReader, ReadError};
use super::{CaptureError, PacketSource, RawPacket, SourceItem, SourceStats};
use crate::vocab::linktype::{decoded, has_macs};
use crate::vocab::PacketTime;
use std::io::{Cursor, Read};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// The path that means standard input.
pub const STDIN: &str = "-";

type Input = CaptureReader<Box<dyn Read>>;

pub struct FileSource {
    paths: Vec<PathBuf>,
    /// Standard input's reader, opened (and its header checked) up front,
    /// since it cannot be opened twice.
    stdin: Option<Input>,
    stats: SourceStats,
    total: Option<u64>,
}

impl FileSource {
    /// Opens every input once up front, so a missing or non-pcap file is
    /// reported before anything runs. `-` is standard input (at most once);
    /// a gzip'd file (by its first bytes, whatever its name) is decompressed
    /// on the fly.
    pub fn open(paths: &[PathBuf]) -> Result<FileSource, CaptureError> {
        let mut total = Some(0u64);
        let mut stdin = None;
        if paths.iter().filter(|p| p.as_os_str() == STDIN).count() > 1 {
            let msg = "standard input given more than once".into();
            return Err(CaptureError::Open { path: PathBuf::from(STDIN), msg });
        }
        for p in paths {
            if p.as_os_str() == STDIN {
                let (r, _) = open_stream(p, Box::new(std::io::stdin()))?;
                stdin = Some(r);
                total = None;
                continue;
            }
            let gz = open_one(p)?.1;
            // Progress counts capture bytes; a gzip'd file's size says little of them.
            match (total, gz) {
                (Some(t), false) => total = Some(t + std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)),
                _ => total = None,
            }
        }
        Ok(FileSource { paths: paths.to_vec(), stdin, stats: SourceStats::default(), total })
    }

    fn reader(&mut self, p: &Path) -> Result<Input, CaptureError> {
        if p.as_os_str() == STDIN {
            return self.stdin.take().ok_or_else(|| CaptureError::Open {
                path: p.to_path_buf(),
                msg: "standard input already read".into(),
            });
        }
        Ok(open_one(p)?.0)
    }
}

/// Opens a file: the reader, and whether it is gzip'd.
fn open_one(p: &Path) -> Result<(Input, bool), CaptureError> {
    let open_err = |msg: String| CaptureError::Open { path: p.to_path_buf(), msg };
    if !p.is_file() {
        return Err(open_err((if p.exists() { "not a regular file" } else { "no such file" }).into()));
    }
    let f = std::fs::File::open(p).map_err(|e| open_err(format!("cannot open: {e}")))?;
    open_stream(p, Box::new(f))
}

/// Sniffs gzip by its magic bytes, then reads the capture's header.
fn open_stream(p: &Path, mut src: Box<dyn Read>) -> Result<(Input, bool), CaptureError> {
    let open_err = |msg: String| CaptureError::Open { path: p.to_path_buf(), msg };
    let mut head = [0u8; 2];
    let mut n = 0;
    while n < head.len() {
        match src.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(open_err(format!("cannot read: {e}"))),
        }
    }
    let src: Box<dyn Read> = Box::new(Cursor::new(head).take(n as u64).chain(src));
    let gz = n == 2 && head == magic::GZIP;
    let src: Box<dyn Read> = if gz { Box::new(flate2::read::MultiGzDecoder::new(src)) } else { src };
    match CaptureReader::new(src) {
        Ok(r) => Ok((r, gz)),
        Err(ReadError::Io(e)) if gz => Err(open_err(format!("not a readable gzip stream ({e})"))),
        Err(ReadError::Io(e)) => Err(open_err(format!("cannot read: {e}"))),
        Err(e @ ReadError::Format(_)) if gz => Err(open_err(format!("gzip'd, but {e}"))),
        Err(e) => Err(open_err(e.to_string())),
    }
}

/// The link types one file has shown, so that each is told of once.
#[derive(Default)]
struct LinkNotes {
    /// Not decoded: one warning each.
    warned: Vec<i32>,
    /// Decoded, but without MACs: one note each.
    noted: Vec<i32>,
}

impl LinkNotes {
    /// A frame of `linktype` follows one of another type (or is the file's
    /// first). Out of line and cold, so the frame loop stays small enough to
    /// inline and keeps its frame in registers.
    #[cold]
    #[inline(never)]
    fn saw(&mut self, linktype: i32, path: &Path, stats: &mut SourceStats) {
        if !decoded(linktype) && !self.warned.contains(&linktype) {
            if self.warned.is_empty() {
                stats.unsupported_link_files += 1;
            }
            self.warned.push(linktype);
            eprintln!(
                "vmsentry: {}: link type {} is not decoded: its frames count as packets and bytes, \
                 and as `unsupported_link` decode errors",
                path.display(),
                linktype::describe(linktype)
            );
        } else if decoded(linktype) && !has_macs(linktype) && !self.noted.contains(&linktype) {
            // Decoded, but VMs are known by MAC: say why none is seen.
            self.noted.push(linktype);
            eprintln!(
                "vmsentry: {}: link type {} carries no MAC addresses: its frames are decoded and \
                 counted in the totals, but for no VM (VMs are known by MAC)",
                path.display(),
                linktype::describe(linktype)
            );
        }
    }
}

impl FileSource {
    /// [`PacketSource::run`] for a caller that knows `each`: it is inlined
    /// here, with the frame loop, so a frame reaches it in registers
    /// ([`FileList`](super::FileList) wraps its own callback so).
    #[inline]
    pub(super) fn run_inline(
        &mut self,
        mut each: impl FnMut(SourceItem<'_>) -> ControlFlow<()>,
    ) -> Result<(), CaptureError> {
        for path in self.paths.clone() {
            let mut rd = self.reader(&path)?;
            let mut links = LinkNotes::default();
            let mut last_linktype = None;
            let stats = &mut self.stats;
            let mut stopped = false;
            // Inlined into both of the reader's loops, so the frame is not
            // passed through memory (see `CaptureReader::for_each_frame`).
            let read = rd.for_each_frame(
                #[inline(always)]
                |f| {
                    if last_linktype != Some(f.linktype) {
                        last_linktype = Some(f.linktype);
                        links.saw(f.linktype, &path, stats);
                    }
                    let (sec, usec) = f.timeval();
                    let raw = RawPacket {
                        ts: PacketTime::from_timeval(sec, usec),
                        orig_len: f.orig_len,
                        data: f.data,
                        linktype: f.linktype,
                    };
                    let flow = each(SourceItem::Packet(raw));
                    stopped = flow.is_break();
                    flow
                },
            );
            if let Err(e) = read {
                // Keep what was read before the damage (a cut-off last
                // record, a bad block, a broken gzip stream).
                eprintln!("vmsentry: {}: stopped reading at damaged data {e}", path.display());
                self.stats.damaged_files += 1;
            }
            if stopped {
                return Ok(());
            }
        }
        Ok(())
    }
}

impl PacketSource for FileSource {
    fn run(&mut self, each: &mut dyn FnMut(SourceItem<'_>) -> ControlFlow<()>) -> Result<(), CaptureError> {
        self.run_inline(each)
    }

    fn stats(&self) -> SourceStats {
        self.stats
    }

    fn total_bytes(&self) -> Option<u64> {
        self.total
    }
}
