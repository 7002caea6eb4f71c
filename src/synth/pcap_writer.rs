//! A minimal classic-pcap writer (microsecond, little-endian, Ethernet) that can write `caplen < len`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// pcap global header fields.
mod field {
    pub const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
    pub const VERSION_MAJOR: u16 = 2;
    pub const VERSION_MINOR: u16 = 4;
    pub const LINKTYPE_ETHERNET: u32 = 1;
}

pub struct PcapWriter {
    out: BufWriter<File>,
    snaplen: u32,
}

impl PcapWriter {
    pub fn create(path: &Path, snaplen: u32) -> std::io::Result<PcapWriter> {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
        out.write_all(&field::MAGIC_MICROS.to_le_bytes())?;
        out.write_all(&field::VERSION_MAJOR.to_le_bytes())?;
        out.write_all(&field::VERSION_MINOR.to_le_bytes())?;
        out.write_all(&0i32.to_le_bytes())?; // thiszone
        out.write_all(&0u32.to_le_bytes())?; // sigfigs
        out.write_all(&snaplen.to_le_bytes())?;
        out.write_all(&field::LINKTYPE_ETHERNET.to_le_bytes())?;
        Ok(PcapWriter { out, snaplen })
    }

    /// One record; `data` longer than the snaplen is cut to it.
    pub fn write(&mut self, ts_us: i64, orig_len: u32, data: &[u8]) -> std::io::Result<()> {
        let data = &data[..data.len().min(self.snaplen as usize)];
        let sec = ts_us.div_euclid(1_000_000) as u32;
        let usec = ts_us.rem_euclid(1_000_000) as u32;
        self.out.write_all(&sec.to_le_bytes())?;
        self.out.write_all(&usec.to_le_bytes())?;
        self.out.write_all(&(data.len() as u32).to_le_bytes())?;
        self.out.write_all(&orig_len.max(data.len() as u32).to_le_bytes())?;
        self.out.write_all(data)
    }

    pub fn finish(mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
