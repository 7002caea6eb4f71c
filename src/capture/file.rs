//! pcap and pcapng files through libpcap, several in order.

use super::{CaptureError, PacketSource, RawPacket, SourceItem, SourceStats};
use pcap::{Capture, Offline};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

pub struct FileSource {
    paths: Vec<PathBuf>,
    stats: SourceStats,
    total: u64,
}

impl FileSource {
    /// Opens every file once up front, so a missing or non-pcap file is
    /// reported before anything runs.
    pub fn open(paths: &[PathBuf]) -> Result<FileSource, CaptureError> {
        let mut total = 0;
        for p in paths {
            open_one(p)?;
            total += std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        }
        Ok(FileSource { paths: paths.to_vec(), stats: SourceStats::default(), total })
    }
}

fn open_one(p: &Path) -> Result<Capture<Offline>, CaptureError> {
    if !p.is_file() {
        let msg = if p.exists() { "not a regular file" } else { "no such file" };
        return Err(CaptureError::Open { path: p.to_path_buf(), msg: msg.into() });
    }
    Capture::from_file_with_precision(p, pcap::Precision::Micro)
        .map_err(|e| CaptureError::Open { path: p.to_path_buf(), msg: format!("not a pcap or pcapng file ({e})") })
}

impl PacketSource for FileSource {
    fn run(&mut self, each: &mut dyn FnMut(SourceItem<'_>) -> ControlFlow<()>) -> Result<(), CaptureError> {
        for path in &self.paths {
            let mut cap = open_one(path)?;
            let linktype = cap.get_datalink().0;
            loop {
                match cap.next_packet() {
                    Ok(pkt) => {
                        let raw = RawPacket::from_pcap(&pkt, linktype);
                        if each(SourceItem::Packet(raw)).is_break() {
                            return Ok(());
                        }
                    }
                    Err(pcap::Error::NoMorePackets) => break,
                    Err(e) => {
                        // libpcap stops at a cut-off record; keep what was read.
                        eprintln!("vmsentry: {}: stopped reading at damaged data: {e}", path.display());
                        self.stats.damaged_files += 1;
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    fn stats(&self) -> SourceStats {
        self.stats
    }

    fn total_bytes(&self) -> Option<u64> {
        Some(self.total)
    }
}
