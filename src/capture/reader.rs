//! A native pcap and pcapng reader: libpcap's records, lengths and timestamps, from large buffered reads.
//!
//! It reads any `Read` (a file, standard input, a gzip stream) through one
//! reused buffer and hands each frame by reference, so nothing is allocated
//! per packet. What it returns follows libpcap 1.10's savefile readers
//! (`sf-pcap.c`, `sf-pcapng.c`) rule for rule: the same frames, `caplen` (a
//! record longer than the file's snapshot length is cut to it), `orig_len`,
//! and timestamps as libpcap gives them at microsecond and at nanosecond
//! precision. Where libpcap refuses and the format allows, it reads on:
//! pcapng files whose interfaces have different link types, snapshot lengths
//! or timestamp resolutions (each interface keeps its own `if_tsresol` and
//! `if_tsoffset`), and sections of either byte order. Two deliberate
//! differences: record seconds of classic pcap are unsigned 32-bit (libpcap
//! reads them signed, so years past 2038 come out before 1970), and the link
//! type is the file's `LINKTYPE_*` value (libpcap maps it to the platform's
//! `DLT_*`; they differ for raw IP: `LINKTYPE_RAW` 101 is `DLT_RAW` 12).
//!
//! File headers, section headers and interface descriptions (with their
//! options) are parsed by `pcap-parser`; packet records are read by the loop
//! here, since `pcap-parser`'s packet blocks collect their options into a
//! `Vec` (an allocation per packet) and do not apply libpcap's length rules.

use pcap_parser::pcapng::{parse_interfacedescriptionblock_be, parse_interfacedescriptionblock_le};
use std::io::{self, Read};

/// What the first bytes of a capture look like.
pub mod magic {
    /// Classic pcap, microseconds, in the writer's byte order.
    pub const PCAP_US: u32 = 0xa1b2_c3d4;
    /// Classic pcap, nanoseconds.
    pub const PCAP_NS: u32 = 0xa1b2_3c4d;
    /// Alexey Kuznetzov's patched format: 24-byte record headers.
    pub const PCAP_KUZNETZOV: u32 = 0xa1b2_cd34;
    /// pcapng Section Header Block type (a palindrome: either byte order).
    pub const PCAPNG_SHB: u32 = 0x0a0d_0d0a;
    /// pcapng byte-order magic.
    pub const PCAPNG_BOM: u32 = 0x1a2b_3c4d;
    /// gzip's first two bytes.
    pub const GZIP: [u8; 2] = [0x1f, 0x8b];
}

/// pcapng block types read here.
mod block {
    pub const PB: u32 = 2;
    pub const IDB: u32 = 1;
    pub const SPB: u32 = 3;
    pub const EPB: u32 = 6;
    /// Block type, total length.
    pub const HEADER: usize = 8;
    /// Trailing total length.
    pub const TRAILER: usize = 4;
    /// EPB after the block header: interface, ts high, ts low, caplen, orig_len.
    pub const EPB_FIXED: usize = 20;
    /// Obsolete PB: interface (u16), drops (u16), ts high, ts low, caplen, orig_len.
    pub const PB_FIXED: usize = 20;
    /// SPB: orig_len.
    pub const SPB_FIXED: usize = 4;
}

/// libpcap's `MAXIMUM_SNAPLEN`: a larger record is damage.
pub const MAXIMUM_SNAPLEN: u32 = 262_144;
/// libpcap's `INITIAL_MAX_BLOCKSIZE` for pcapng (raised for link types with larger records).
const MAX_BLOCK: u32 = 16 << 20;
/// Bytes asked of the input per read.
const READ_CHUNK: usize = 1 << 20;

/// libpcap's `max_snaplen_for_dlt`, by `LINKTYPE_*` (these three are equal to their DLT).
fn max_snaplen(linktype: i32) -> u32 {
    match linktype {
        231 => 128 << 20, // DBUS
        279 => 8 << 20,   // EBHSCR
        249 => 1 << 20,   // USBPCAP
        _ => MAXIMUM_SNAPLEN,
    }
}

/// libpcap's `pcap_adjust_snapshot`.
fn adjust_snapshot(linktype: i32, snaplen: u32) -> u32 {
    if snaplen == 0 || snaplen > i32::MAX as u32 {
        max_snaplen(linktype)
    } else {
        snaplen
    }
}

/// Why a capture cannot be read (at the start) or reading stopped (later).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The input is not a capture this reader knows.
    #[error("not a pcap or pcapng file ({0})")]
    Format(String),
    /// Damaged data: `offset` is where the bad record or block starts.
    #[error("at byte {offset}: {msg}")]
    Damaged { offset: u64, msg: String },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A record's timestamp as stored, turned into libpcap's values on demand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stamp {
    /// Classic pcap: seconds and a fraction in µs or ns.
    Legacy { sec: u32, frac: u32, nano: bool },
    /// pcapng: a count of `resol` units per second, plus the interface's offset in seconds.
    Ng { t: u64, resol: u64, binary: bool, offset: u64 },
}

/// One frame, borrowed from the reader's buffer until the next call.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    /// The captured bytes (`caplen` of them).
    pub data: &'a [u8],
    /// Length on the wire.
    pub orig_len: u32,
    /// `LINKTYPE_*` of the file or of the packet's pcapng interface.
    pub linktype: i32,
    /// pcapng interface id (0 for classic pcap).
    pub interface: u32,
    stamp: Stamp,
}

impl Frame<'_> {
    /// Seconds and microseconds, as libpcap gives them at microsecond precision.
    pub fn timeval(&self) -> (i64, i64) {
        self.scaled(1_000_000)
    }

    /// Seconds and nanoseconds, as libpcap gives them at nanosecond precision.
    pub fn timespec(&self) -> (i64, i64) {
        self.scaled(1_000_000_000)
    }

    fn scaled(&self, user: u64) -> (i64, i64) {
        match self.stamp {
            Stamp::Legacy { sec, frac, nano } => {
                let frac = match (nano, user) {
                    (true, 1_000_000) => u64::from(frac) / 1000,
                    (false, 1_000_000_000) => u64::from(frac) * 1000,
                    _ => u64::from(frac),
                };
                (i64::from(sec), frac as i64)
            }
            Stamp::Ng { t, resol, binary, offset } => {
                // sf-pcapng.c: integer arithmetic, wrapping as C's does.
                let sec = (t / resol).wrapping_add(offset);
                let frac = t % resol;
                let frac = if resol == user {
                    frac
                } else if binary {
                    frac.wrapping_mul(user) / resol
                } else if resol > user {
                    frac / (resol / user)
                } else {
                    frac * (user / resol)
                };
                // `tv_sec` is a time_t, `tv_usec` an int.
                (sec as i64, i64::from(frac as i32))
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Iface {
    linktype: i32,
    snapshot: u32,
    resol: u64,
    binary: bool,
    offset: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LengthOrder {
    Normal,
    Swapped,
    /// Version 2.3 files: swapped only where caplen > len.
    Maybe,
}

#[derive(Clone, Copy)]
enum Format {
    Legacy { nano: bool, header_len: usize, order: LengthOrder, snapshot: u32, linktype: i32 },
    Ng,
}

/// Reads frames from a pcap or pcapng stream.
pub struct CaptureReader<R> {
    src: R,
    buf: Vec<u8>,
    /// `buf[start..end]` holds unread input; `pos` is its offset in the stream.
    start: usize,
    end: usize,
    pos: u64,
    eof: bool,
    format: Format,
    /// The file (classic) or the current section (pcapng) is big-endian.
    swapped: bool,
    /// pcapng: the current section's interfaces, by id.
    ifaces: Vec<Iface>,
    max_block: u32,
}

fn u16_at(b: &[u8], at: usize, swapped: bool) -> u16 {
    let v = u16::from_le_bytes([b[at], b[at + 1]]);
    if swapped {
        v.swap_bytes()
    } else {
        v
    }
}

/// Reads a u32 in the file's byte order: `swapped` means big-endian here
/// (the reader works in little-endian, as x86 and ARM are).
fn u32_at(b: &[u8], at: usize, swapped: bool) -> u32 {
    let v = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    if swapped {
        v.swap_bytes()
    } else {
        v
    }
}

impl<R: Read> CaptureReader<R> {
    /// Reads the file header (classic pcap) or the first section header
    /// (pcapng); anything else is [`ReadError::Format`].
    pub fn new(src: R) -> Result<CaptureReader<R>, ReadError> {
        let mut r = CaptureReader {
            src,
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            pos: 0,
            eof: false,
            format: Format::Ng,
            swapped: false,
            ifaces: Vec::new(),
            max_block: MAX_BLOCK,
        };
        r.fill(4)?;
        if r.avail() < 4 {
            return Err(ReadError::Format(format!("{} bytes", r.avail())));
        }
        let m = u32_at(&r.buf, r.start, false);
        if m == magic::PCAPNG_SHB {
            r.fill(12)?;
            if r.avail() < 12 {
                return Err(ReadError::Format("truncated pcapng section header".into()));
            }
            r.section_header()?;
        } else {
            r.legacy_header()?;
        }
        Ok(r)
    }

    fn avail(&self) -> usize {
        self.end - self.start
    }

    /// Makes at least `need` bytes available unless the input ends first;
    /// reads as much as the buffer holds.
    fn fill(&mut self, need: usize) -> io::Result<()> {
        if self.avail() >= need {
            return Ok(());
        }
        if need > self.buf.len() {
            self.buf.resize(need.next_power_of_two(), 0);
        }
        if self.start + need > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while self.avail() < need && !self.eof {
            match self.src.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        self.pos += n as u64;
    }

    fn damaged(&self, msg: String) -> ReadError {
        ReadError::Damaged { offset: self.pos, msg }
    }

    fn legacy_header(&mut self) -> Result<(), ReadError> {
        const LEN: usize = 24;
        self.fill(LEN)?;
        let got = self.avail();
        let head = &self.buf[self.start..self.end];
        let m = u32_at(head, 0, false);
        let known = [magic::PCAP_US, magic::PCAP_NS, magic::PCAP_KUZNETZOV];
        if !known.contains(&m) && !known.contains(&m.swap_bytes()) {
            return Err(ReadError::Format(format!("magic number {m:#010x}")));
        }
        if got < LEN {
            return Err(ReadError::Format(format!(
                "truncated dump file; tried to read {LEN} file header bytes, only got {got}"
            )));
        }
        let h = pcap_parser::parse_pcap_header(&head[..LEN])
            .map_err(|e| ReadError::Format(format!("file header: {e:?}")))?
            .1;
        let swapped = h.is_bigendian();
        let (major, minor) = (h.version_major, h.version_minor);
        if !((major == 2 && minor <= 4) || (major == 543 && minor == 0)) {
            return Err(ReadError::Format(format!("unsupported pcap savefile version {major}.{minor}")));
        }
        let network = h.network.0 as u32;
        if network & 0x03ff_0000 != 0 {
            return Err(ReadError::Format(format!(
                "savefile linktype reserved field not zero ({:#010x})",
                network & 0x03ff_0000
            )));
        }
        let linktype = (network & 0xffff) as i32;
        let mut snapshot = adjust_snapshot(linktype, h.snaplen);
        let kuznetzov = h.is_modified_format();
        if kuznetzov && linktype == 1 {
            // A cooked capture with a faked Ethernet header (sf-pcap.c).
            snapshot = snapshot.saturating_add(14).min(i32::MAX as u32);
        }
        let order = match (major, minor) {
            (2, m) if m < 3 => LengthOrder::Swapped,
            (2, 3) => LengthOrder::Maybe,
            (543, _) => LengthOrder::Swapped,
            _ => LengthOrder::Normal,
        };
        self.swapped = swapped;
        self.format = Format::Legacy {
            nano: h.is_nanosecond_precision(),
            header_len: if kuznetzov { 24 } else { 16 },
            order,
            snapshot,
            linktype,
        };
        self.consume(LEN);
        Ok(())
    }

    /// A Section Header Block at `start`: byte order, version, a fresh set of
    /// interfaces. The first 12 bytes are available.
    fn section_header(&mut self) -> Result<(), ReadError> {
        let first = self.pos == 0;
        let bom = u32_at(&self.buf, self.start + 8, false);
        let swapped = match bom {
            magic::PCAPNG_BOM => false,
            b if b.swap_bytes() == magic::PCAPNG_BOM => true,
            b if first => return Err(ReadError::Format(format!("pcapng byte-order magic {b:#010x}"))),
            _ => return Err(self.damaged("a section with a bad byte order magic field".into())),
        };
        let total = u32_at(&self.buf, self.start + 4, swapped);
        let body = self.block(total, first, swapped)?;
        // BOM, major, minor, section length, then the trailer.
        if (total as usize) < block::HEADER + 16 + block::TRAILER {
            let msg = format!("section header block of {total} bytes is too short");
            return Err(if first { ReadError::Format(msg) } else { self.damaged(msg) });
        }
        let (major, minor) = (u16_at(&self.buf, body + 4, swapped), u16_at(&self.buf, body + 6, swapped));
        if !(major == 1 && (minor == 0 || minor == 2)) {
            let msg = format!("unsupported pcapng savefile version {major}.{minor}");
            return Err(if first { ReadError::Format(msg) } else { self.damaged(msg) });
        }
        self.format = Format::Ng;
        self.swapped = swapped;
        self.ifaces.clear();
        self.max_block = MAX_BLOCK;
        self.consume(total as usize);
        Ok(())
    }

    /// Checks a block of `total` bytes at `start` and makes it available;
    /// returns where its body starts in `buf` (after the 8-byte header; the
    /// body ends 4 bytes before the block).
    fn block(&mut self, total: u32, first: bool, swapped: bool) -> Result<usize, ReadError> {
        let max = self.max_block;
        let bad = |r: &Self, msg: String| if first { ReadError::Format(msg) } else { r.damaged(msg) };
        if (total as usize) < block::HEADER + block::TRAILER {
            return Err(bad(self, format!("block in pcapng dump file has a length of {total} < 12")));
        }
        if total % 4 != 0 {
            return Err(bad(self, format!("block in pcapng dump file has a length of {total} that is not a multiple of 4")));
        }
        if total > max {
            return Err(bad(self, format!("pcapng block size {total} > maximum {max}")));
        }
        let n = total as usize;
        self.fill(n)?;
        if self.avail() < n {
            let got = self.avail();
            return Err(bad(self, format!("truncated pcapng dump file; tried to read {n} bytes, only got {got}")));
        }
        if u32_at(&self.buf, self.start + n - block::TRAILER, swapped) != total {
            return Err(bad(self, "block total length in header and trailer don't match".into()));
        }
        Ok(self.start + block::HEADER)
    }

    /// The next frame; `Ok(None)` at a clean end of input.
    #[inline]
    /// An input error part-way (a broken gzip stream, EIO) is reported as
    /// [`ReadError::Damaged`] at the record it hit.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, ReadError> {
        let pos = self.pos;
        let r = match self.format {
            Format::Legacy { nano, header_len, order, snapshot, linktype } => {
                self.next_legacy(nano, header_len, order, snapshot, linktype)
            }
            Format::Ng => self.next_ng(),
        };
        r.map_err(|e| match e {
            ReadError::Io(io) => ReadError::Damaged { offset: pos, msg: format!("read error: {io}") },
            e => e,
        })
    }

    #[inline]
    fn next_legacy(
        &mut self,
        nano: bool,
        header_len: usize,
        order: LengthOrder,
        snapshot: u32,
        linktype: i32,
    ) -> Result<Option<Frame<'_>>, ReadError> {
        if self.avail() < header_len {
            self.fill(header_len)?;
            match self.avail() {
                0 => return Ok(None),
                n if n < header_len => {
                    return Err(self.damaged(format!(
                        "truncated dump file; tried to read {header_len} header bytes, only got {n}"
                    )))
                }
                _ => {}
            }
        }
        let swapped = self.swapped;
        let h = &self.buf[self.start..self.start + 16];
        let sec = u32_at(h, 0, swapped);
        let frac = u32_at(h, 4, swapped);
        let mut caplen = u32_at(h, 8, swapped);
        let mut len = u32_at(h, 12, swapped);
        if order == LengthOrder::Swapped || (order == LengthOrder::Maybe && caplen > len) {
            std::mem::swap(&mut caplen, &mut len);
        }
        if caplen > max_snaplen(linktype) {
            let msg = if caplen > snapshot {
                format!("invalid packet capture length {caplen}, bigger than snaplen of {snapshot}")
            } else {
                format!("invalid packet capture length {caplen}, bigger than maximum of {}", max_snaplen(linktype))
            };
            return Err(self.damaged(msg));
        }
        let record = header_len + caplen as usize;
        if self.avail() < record {
            self.fill(record)?;
            if self.avail() < record {
                let got = self.avail() - header_len;
                let want = caplen.min(snapshot);
                return Err(self.damaged(format!(
                    "truncated dump file; tried to read {want} captured bytes, only got {got}"
                )));
            }
        }
        // libpcap cuts a record longer than the snapshot length to it.
        let kept = caplen.min(snapshot) as usize;
        let at = self.start + header_len;
        self.start += record;
        self.pos += record as u64;
        Ok(Some(Frame {
            data: &self.buf[at..at + kept],
            orig_len: len,
            linktype,
            interface: 0,
            stamp: Stamp::Legacy { sec, frac, nano },
        }))
    }

    fn next_ng(&mut self) -> Result<Option<Frame<'_>>, ReadError> {
        loop {
            if self.avail() < block::HEADER {
                self.fill(block::HEADER)?;
                match self.avail() {
                    0 => return Ok(None),
                    n if n < block::HEADER => {
                        return Err(self.damaged(format!(
                            "truncated pcapng dump file; tried to read {} bytes, only got {n}",
                            block::HEADER
                        )))
                    }
                    _ => {}
                }
            }
            let swapped = self.swapped;
            let kind = u32_at(&self.buf, self.start, swapped);
            if kind == magic::PCAPNG_SHB {
                self.fill(12)?;
                if self.avail() < 12 {
                    let n = self.avail();
                    return Err(self.damaged(format!("truncated pcapng dump file; tried to read 12 bytes, only got {n}")));
                }
                self.section_header()?;
                continue;
            }
            let total = u32_at(&self.buf, self.start + 4, swapped);
            let at = self.block(total, false, swapped)?;
            let body = &self.buf[at..self.start + total as usize - block::TRAILER];
            let (iface, caplen, len, t, fixed) = match kind {
                block::EPB | block::PB => {
                    if body.len() < block::EPB_FIXED {
                        return Err(self.damaged(format!("block of type {kind} in pcapng dump file is too short")));
                    }
                    let iface = if kind == block::EPB {
                        u32_at(body, 0, swapped)
                    } else {
                        u32::from(u16_at(body, 0, swapped))
                    };
                    let t = u64::from(u32_at(body, 4, swapped)) << 32 | u64::from(u32_at(body, 8, swapped));
                    let fixed = if kind == block::EPB { block::EPB_FIXED } else { block::PB_FIXED };
                    (iface, u32_at(body, 12, swapped), u32_at(body, 16, swapped), t, fixed)
                }
                block::SPB => {
                    if body.len() < block::SPB_FIXED {
                        return Err(self.damaged(format!("block of type {kind} in pcapng dump file is too short")));
                    }
                    let len = u32_at(body, 0, swapped);
                    let snap = self.ifaces.first().map_or(u32::MAX, |i| i.snapshot);
                    (0, len.min(snap), len, 0, block::SPB_FIXED)
                }
                block::IDB => {
                    let whole = &self.buf[self.start..self.start + total as usize];
                    let parsed = if swapped {
                        parse_interfacedescriptionblock_be(whole)
                    } else {
                        parse_interfacedescriptionblock_le(whole)
                    };
                    let idb = match parsed {
                        Ok((_, idb)) => idb,
                        Err(e) => return Err(self.damaged(format!("interface description block: {e:?}"))),
                    };
                    let tsresol = idb.if_tsresol;
                    let (resol, binary) = if tsresol & 0x80 != 0 {
                        let shift = tsresol & 0x7f;
                        if shift > 63 {
                            return Err(self.damaged(format!(
                                "Interface Description Block if_tsresol option resolution 2^-{shift} is too high"
                            )));
                        }
                        (1u64 << shift, true)
                    } else {
                        if tsresol > 19 {
                            return Err(self.damaged(format!(
                                "Interface Description Block if_tsresol option resolution 10^-{tsresol} is too high"
                            )));
                        }
                        (10u64.pow(u32::from(tsresol)), false)
                    };
                    let linktype = i32::from(idb.linktype.0 as u16);
                    let iface = Iface {
                        linktype,
                        snapshot: adjust_snapshot(linktype, idb.snaplen),
                        resol,
                        binary,
                        offset: idb.if_tsoffset as u64,
                    };
                    // sf-pcapng.c's MAX_BLOCKSIZE_FOR_SNAPLEN.
                    self.max_block = self.max_block.max(max_snaplen(linktype).saturating_add(4096));
                    self.ifaces.push(iface);
                    self.consume(total as usize);
                    continue;
                }
                _ => {
                    self.consume(total as usize);
                    continue;
                }
            };
            let Some(&ifc) = self.ifaces.get(iface as usize) else {
                return Err(self.damaged(format!(
                    "a packet arrived on interface {iface}, but there's no Interface Description Block for that interface"
                )));
            };
            if caplen > ifc.snapshot {
                return Err(self.damaged(format!(
                    "invalid packet capture length {caplen}, bigger than snaplen of {}",
                    ifc.snapshot
                )));
            }
            if (caplen as usize) > body.len() - fixed {
                return Err(self.damaged(format!("block of type {kind} in pcapng dump file is too short")));
            }
            let at = self.start + block::HEADER + fixed;
            self.start += total as usize;
            self.pos += u64::from(total);
            return Ok(Some(Frame {
                data: &self.buf[at..at + caplen as usize],
                orig_len: len,
                linktype: ifc.linktype,
                interface: iface,
                stamp: Stamp::Ng { t, resol: ifc.resol, binary: ifc.binary, offset: ifc.offset },
            }));
        }
    }
}
