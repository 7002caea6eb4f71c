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

use pcap_parser::pcapng::{parse_interfacedescriptionblock_be, parse_interfacedescriptionblock_le, OptionCode};
use std::io::{self, Read};
use std::ops::ControlFlow;

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
/// The buffer, and so the most asked of the input per read: small enough
/// that what was read is still in the L2 cache when it is parsed.
const READ_CHUNK: usize = 256 << 10;

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

#[inline]
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
#[inline]
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
            return Err(ReadError::Format(match r.avail() {
                0 => "empty".into(),
                n => format!("{n} bytes"),
            }));
        }
        let m = u32_at(&r.buf, r.start, false);
        if m == magic::PCAPNG_SHB {
            r.fill(12)?;
            if r.avail() < 12 {
                return Err(ReadError::Format("truncated pcapng section header".into()));
            }
            r.section_header()?;
            r.first_interface()?;
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

    /// As libpcap does on opening: skips blocks up to the first interface
    /// description, and refuses a file without one or with a packet before it.
    fn first_interface(&mut self) -> Result<(), ReadError> {
        loop {
            self.fill(block::HEADER)?;
            if self.avail() < block::HEADER {
                return Err(ReadError::Format("the capture file has no Interface Description Blocks".into()));
            }
            let kind = u32_at(&self.buf, self.start, self.swapped);
            let total = u32_at(&self.buf, self.start + 4, self.swapped);
            match kind {
                block::IDB => {
                    self.block(total, true, self.swapped)?;
                    return self.interface(total);
                }
                block::EPB | block::SPB | block::PB => {
                    return Err(ReadError::Format(
                        "the capture file has a packet block before any Interface Description Blocks".into(),
                    ))
                }
                _ => {
                    self.block(total, true, self.swapped)?;
                    self.consume(total as usize);
                }
            }
        }
    }

    /// An Interface Description Block of `total` bytes at `start`, checked by [`Self::block`].
    fn interface(&mut self, total: u32) -> Result<(), ReadError> {
        let whole = &self.buf[self.start..self.start + total as usize];
        let parsed = if self.swapped {
            parse_interfacedescriptionblock_be(whole)
        } else {
            parse_interfacedescriptionblock_le(whole)
        };
        let idb = match parsed {
            Ok((_, idb)) => idb,
            Err(e) => return Err(self.damaged(format!("interface description block: {e:?}"))),
        };
        // The options' values are read here: pcap-parser reads if_tsoffset
        // little-endian whatever the section's byte order.
        let (mut tsresol, mut tsoffset) = (6u8, 0u64);
        let (mut saw_resol, mut saw_offset) = (false, false);
        for o in &idb.options {
            let value = o.value();
            match (o.code, usize::from(o.len).min(value.len())) {
                (OptionCode::IfTsresol, 1) if !saw_resol => (tsresol, saw_resol) = (value[0], true),
                (OptionCode::IfTsoffset, 8) if !saw_offset => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&value[..8]);
                    tsoffset = if self.swapped { u64::from_be_bytes(b) } else { u64::from_le_bytes(b) };
                    saw_offset = true;
                }
                (OptionCode::IfTsresol | OptionCode::IfTsoffset, n) => {
                    return Err(self.damaged(format!(
                        "Interface Description Block has a bad or repeated {:?} option ({n} bytes)",
                        o.code
                    )))
                }
                _ => {}
            }
        }
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
        let iface =
            Iface { linktype, snapshot: adjust_snapshot(linktype, idb.snaplen), resol, binary, offset: tsoffset };
        // sf-pcapng.c's MAX_BLOCKSIZE_FOR_SNAPLEN.
        self.max_block = self.max_block.max(max_snaplen(linktype).saturating_add(4096));
        self.ifaces.push(iface);
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
            return Err(bad(
                self,
                format!("block in pcapng dump file has a length of {total} that is not a multiple of 4"),
            ));
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
        r.map_err(|e| io_at(e, pos))
    }

    /// Hands every frame to `each`, in order, until the input ends or `each`
    /// breaks: the same frames and errors as calling [`Self::next_frame`]
    /// until it gives `Ok(None)` or an error.
    ///
    /// The loop is one per format, so a classic pcap frame goes from the
    /// record header to `each` in registers. Through `next_frame`, both
    /// formats' frames meet in one value in memory, written field by field
    /// and read back wider by the caller's copy; the read waits for the
    /// writes to retire (a failed store-to-load forward), once a frame.
    #[inline]
    pub fn for_each_frame(&mut self, mut each: impl FnMut(Frame<'_>) -> ControlFlow<()>) -> Result<(), ReadError> {
        match self.format {
            Format::Legacy { nano, header_len, order, snapshot, linktype } => loop {
                let pos = self.pos;
                match self.next_legacy(nano, header_len, order, snapshot, linktype) {
                    Ok(Some(f)) => {
                        if each(f).is_break() {
                            return Ok(());
                        }
                    }
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(io_at(e, pos)),
                }
            },
            Format::Ng => loop {
                let pos = self.pos;
                match self.next_ng() {
                    Ok(Some(f)) => {
                        if each(f).is_break() {
                            return Ok(());
                        }
                    }
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(io_at(e, pos)),
                }
            },
        }
    }

    /// Inlined whole into the frame loops, its rare paths out of line: when
    /// it was a call, its frame came back through memory and the caller's
    /// wider reads of it waited on a failed store-to-load forward per frame
    /// (72 % of the reader loop's samples).
    #[inline(always)]
    fn next_legacy(
        &mut self,
        nano: bool,
        header_len: usize,
        order: LengthOrder,
        snapshot: u32,
        linktype: i32,
    ) -> Result<Option<Frame<'_>>, ReadError> {
        if self.avail() < header_len && !self.legacy_refill_header(header_len)? {
            return Ok(None);
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
            return Err(self.legacy_too_long(caplen, snapshot, linktype));
        }
        let record = header_len + caplen as usize;
        if self.avail() < record {
            self.legacy_refill_record(record, header_len, caplen.min(snapshot))?;
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

    /// Reads on for a record header: false at a clean end of file.
    #[cold]
    #[inline(never)]
    fn legacy_refill_header(&mut self, header_len: usize) -> Result<bool, ReadError> {
        self.fill(header_len)?;
        match self.avail() {
            0 => Ok(false),
            n if n < header_len => {
                Err(self.damaged(format!("truncated dump file; tried to read {header_len} header bytes, only got {n}")))
            }
            _ => Ok(true),
        }
    }

    /// Reads on for the whole record; `want` is the captured bytes libpcap
    /// names when they are not all there.
    #[cold]
    #[inline(never)]
    fn legacy_refill_record(&mut self, record: usize, header_len: usize, want: u32) -> Result<(), ReadError> {
        self.fill(record)?;
        if self.avail() < record {
            let got = self.avail() - header_len;
            return Err(
                self.damaged(format!("truncated dump file; tried to read {want} captured bytes, only got {got}"))
            );
        }
        Ok(())
    }

    #[cold]
    #[inline(never)]
    fn legacy_too_long(&self, caplen: u32, snapshot: u32, linktype: i32) -> ReadError {
        let msg = if caplen > snapshot {
            format!("invalid packet capture length {caplen}, bigger than snaplen of {snapshot}")
        } else {
            format!("invalid packet capture length {caplen}, bigger than maximum of {}", max_snaplen(linktype))
        };
        self.damaged(msg)
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
                    return Err(
                        self.damaged(format!("truncated pcapng dump file; tried to read 12 bytes, only got {n}"))
                    );
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
                    let iface =
                        if kind == block::EPB { u32_at(body, 0, swapped) } else { u32::from(u16_at(body, 0, swapped)) };
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
                    self.interface(total)?;
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

/// An input error part-way through the record at `pos` is damage there.
#[cold]
fn io_at(e: ReadError, pos: u64) -> ReadError {
    match e {
        ReadError::Io(io) => ReadError::Damaged { offset: pos, msg: format!("read error: {io}") },
        e => e,
    }
}

#[cfg(test)]
mod tests {
    //! The oracle is libpcap itself (the `pcap` crate's offline reader, the
    //! library `live` uses), record by record, at both precisions; where
    //! libpcap refuses a file (pcapng interfaces of different link types),
    //! tshark.
    use super::*;
    use crate::synth::formats::{Classic, Interface, PcapNg};
    use crate::synth::{frames, mac};
    use std::net::Ipv4Addr;
    use std::path::{Path, PathBuf};

    /// data, caplen, orig_len, (sec, µs), (sec, ns), link type as libpcap's DLT.
    type Rec = (Vec<u8>, u32, u32, (i64, i64), (i64, i64), i32);

    /// libpcap's DLT for a file's LINKTYPE, on Linux (sf-pcap.c's
    /// `linktype_to_dlt` for the types in these files).
    fn dlt(linktype: i32) -> i32 {
        if linktype == 101 {
            12
        } else {
            linktype
        }
    }

    /// Records and whether reading stopped at damage, per libpcap.
    fn libpcap(path: &Path) -> Result<(Vec<Rec>, bool), String> {
        let open = |prec| pcap::Capture::from_file_with_precision(path, prec).map_err(|e| e.to_string());
        let (mut us, mut ns) = (open(pcap::Precision::Micro)?, open(pcap::Precision::Nano)?);
        let link = us.get_datalink().0;
        let mut out = Vec::new();
        loop {
            match (us.next_packet(), ns.next_packet()) {
                (Ok(a), Ok(b)) => {
                    // Seconds compared unsigned: libpcap reads classic pcap's as signed.
                    let sec = |s: i64| if s < 0 { i64::from(s as u32) } else { s };
                    #[allow(clippy::unnecessary_cast)]
                    out.push((
                        a.data.to_vec(),
                        a.header.caplen,
                        a.header.len,
                        (sec(a.header.ts.tv_sec as i64), a.header.ts.tv_usec as i64),
                        (sec(b.header.ts.tv_sec as i64), b.header.ts.tv_usec as i64),
                        link,
                    ));
                }
                (Err(pcap::Error::NoMorePackets), Err(pcap::Error::NoMorePackets)) => return Ok((out, false)),
                (Err(_), Err(_)) => return Ok((out, true)),
                (a, b) => panic!("libpcap's two precisions disagree: {:?} {:?}", a.err(), b.err()),
            }
        }
    }

    fn native(bytes: &[u8]) -> Result<(Vec<Rec>, bool), String> {
        let mut r = CaptureReader::new(bytes).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        loop {
            match r.next_frame() {
                Ok(Some(f)) => out.push((
                    f.data.to_vec(),
                    f.data.len() as u32,
                    f.orig_len,
                    f.timeval(),
                    f.timespec(),
                    dlt(f.linktype),
                )),
                Ok(None) => return Ok((out, false)),
                Err(ReadError::Damaged { .. }) => return Ok((out, true)),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// A frame as the tests compare them: the record and the pcapng interface.
    fn rec(f: &Frame<'_>) -> (Rec, u32) {
        ((f.data.to_vec(), f.data.len() as u32, f.orig_len, f.timeval(), f.timespec(), dlt(f.linktype)), f.interface)
    }

    /// A source that reads `data` and fails for good at byte `fail_at`.
    struct FailsAt<'a> {
        data: &'a [u8],
        pos: usize,
        fail_at: usize,
    }

    impl Read for FailsAt<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.pos >= self.fail_at {
                return Err(std::io::Error::other("disk on fire"));
            }
            let n = buf.len().min(self.fail_at - self.pos).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    /// The error as the tests compare it: its offset when it is damage.
    fn err(e: &ReadError) -> (Option<u64>, String) {
        match e {
            ReadError::Damaged { offset, .. } => (Some(*offset), e.to_string()),
            _ => (None, e.to_string()),
        }
    }

    /// `for_each_frame` hands over exactly `next_frame`'s frames and ends
    /// with its error (offset and message), and a break stops it at once.
    fn for_each_is_next_frame(name: &str, bytes: &[u8]) {
        for_each_is_next_frame_from(name, || bytes);
    }

    /// [`for_each_is_next_frame`] on what `open` gives; returns `next_frame`'s
    /// frames and end.
    #[allow(clippy::type_complexity)]
    fn for_each_is_next_frame_from<R: Read>(
        name: &str,
        open: impl Fn() -> R,
    ) -> (Vec<(Rec, u32)>, Option<(Option<u64>, String)>) {
        let Ok(mut r) = CaptureReader::new(open()) else { return (Vec::new(), None) };
        let mut want = Vec::new();
        let end = loop {
            match r.next_frame() {
                Ok(Some(f)) => want.push(rec(&f)),
                Ok(None) => break None,
                Err(e) => break Some(err(&e)),
            }
        };
        let mut r = CaptureReader::new(open()).unwrap();
        let mut got = Vec::new();
        let res = r.for_each_frame(|f| {
            got.push(rec(&f));
            ControlFlow::Continue(())
        });
        assert_eq!(got, want, "{name}: for_each_frame's frames");
        assert_eq!(res.err().map(|e| err(&e)), end, "{name}: for_each_frame's end");
        for stop in [1, want.len() / 2, want.len()] {
            if stop == 0 || stop > want.len() {
                continue;
            }
            let mut r = CaptureReader::new(open()).unwrap();
            let mut n = 0;
            let res = r.for_each_frame(|_| {
                n += 1;
                if n == stop {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
            assert!(res.is_ok(), "{name}: a break is not an error");
            assert_eq!(n, stop, "{name}: frames after the break");
            // The reader stands at the next frame, or at the end or error.
            let next = r.next_frame().map(|f| f.map(|f| rec(&f))).map_err(|e| err(&e));
            let expect = match (want.get(stop), &end) {
                (Some(w), _) => Ok(Some(w.clone())),
                (None, None) => Ok(None),
                (None, Some(e)) => Err(e.clone()),
            };
            assert_eq!(next, expect, "{name}: after a break at {stop}");
        }
        (want, end)
    }

    fn same_as_libpcap(name: &str, bytes: &[u8]) -> usize {
        for_each_is_next_frame(name, bytes);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, bytes).unwrap();
        let want = libpcap(&p);
        let got = native(bytes);
        match (&want, &got) {
            (Ok((w, wd)), Ok((g, gd))) => {
                assert_eq!(g.len(), w.len(), "{name}: frame count");
                for (i, (a, b)) in g.iter().zip(w).enumerate() {
                    assert_eq!(a, b, "{name}: record {i}");
                }
                assert_eq!(gd, wd, "{name}: stopped at damage");
                w.len()
            }
            (Err(_), Err(_)) => 0,
            _ => panic!("{name}: libpcap {want:?}, native {got:?}"),
        }
    }

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("captures")
    }

    #[test]
    fn every_shipped_and_third_party_capture_reads_exactly_as_libpcap() {
        let mut files = Vec::new();
        for dir in [root(), root().join("third_party")] {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
                if ext == "pcap" || ext == "pcapng" {
                    files.push(p);
                }
            }
        }
        files.sort();
        assert!(files.len() >= 50, "{} captures", files.len());
        let mut frames = 0;
        for p in &files {
            frames += same_as_libpcap(&p.display().to_string(), &std::fs::read(p).unwrap());
        }
        // basic.pcap and mtd.pcap alone have 56 857.
        assert!(frames > 70_000, "{frames}");
    }

    /// Frames of every size class, raw IP when `raw` (the Ethernet header dropped).
    fn sample_frames(raw: bool) -> Vec<Vec<u8>> {
        let (a, b) = (mac("fa:16:3e:00:00:01"), mac("52:54:00:ff:00:01"));
        let (x, y) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        [0, 1, 18, 100, 555, 1458]
            .iter()
            .map(|&n| {
                let f = frames::udp4(a, b, x, y, 1000, 53, n);
                if raw {
                    f[14..].to_vec()
                } else {
                    f
                }
            })
            .collect()
    }

    fn classic(c: Classic, cut_to: Option<usize>) -> Vec<u8> {
        let mut out = c.header();
        // Seconds run past 2^31 (2038): unsigned here, signed in libpcap.
        for (i, f) in sample_frames(c.linktype != 1).iter().enumerate() {
            let i = i as u32;
            let frac = if c.nano { 999_999_000 + i * 7 } else { 999_990 + i };
            let data = &f[..cut_to.unwrap_or(f.len()).min(f.len())];
            c.record(&mut out, 1_700_000_000 + i * 300_000_000, frac, f.len() as u32 + 4, data);
        }
        out
    }

    #[test]
    fn classic_pcap_in_every_byte_order_precision_version_and_link_type_reads_as_libpcap() {
        let mut n = 0;
        for big_endian in [false, true] {
            for nano in [false, true] {
                for linktype in [1, 101, 12, 228] {
                    for version_minor in [4, 3, 2] {
                        for snaplen in [65535, 0, 100] {
                            let c = Classic { linktype, snaplen, nano, big_endian, version_minor };
                            let name = format!("{c:?}");
                            let bytes = classic(c, None);
                            assert_eq!(same_as_libpcap(&name, &bytes), 6, "{name}");
                            // Cut short anywhere: the same frames before the damage.
                            for cut in (24..bytes.len()).step_by(97) {
                                same_as_libpcap(&format!("{name} cut at {cut}"), &bytes[..cut]);
                            }
                            n += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(n, 144);
    }

    /// A source that fails part-way is damage, through `next_frame` and
    /// `for_each_frame` alike. In a classic pcap, failing at any byte (a
    /// record header, a record's data, the buffer's refill) is damage at the
    /// start of the record it failed in. In a pcapng, the offset is checked
    /// to be at or before the failure and to move with it, not to be a block's start.
    #[test]
    fn an_input_error_is_damage_at_its_record() {
        let c = Classic::default();
        let bytes = classic(c, None);
        let mut starts = vec![24usize];
        for f in sample_frames(false) {
            starts.push(starts.last().unwrap() + 16 + f.len());
        }
        assert_eq!(starts.pop(), Some(bytes.len()));
        for fail_at in 24..bytes.len() {
            let (frames, end) = for_each_is_next_frame_from(&format!("classic failing at {fail_at}"), || FailsAt {
                data: &bytes,
                pos: 0,
                fail_at,
            });
            let k = starts.iter().rposition(|&s| s <= fail_at).unwrap();
            let (offset, msg) = end.expect("an error");
            assert_eq!((frames.len(), offset), (k, Some(starts[k] as u64)), "fail at {fail_at}");
            assert!(msg.contains("read error: disk on fire"), "{msg}");
        }
        let ng = ng(false, &[Interface { linktype: 1, snaplen: 0, tsresol: None, tsoffset: None }], true);
        let mut r = CaptureReader::new(&ng[..]).unwrap();
        let mut whole = 0;
        while r.next_frame().unwrap().is_some() {
            whole += 1;
        }
        let mut seen = std::collections::BTreeSet::new();
        for fail_at in (28..ng.len()).step_by(7) {
            let (frames, end) = for_each_is_next_frame_from(&format!("pcapng failing at {fail_at}"), || FailsAt {
                data: &ng,
                pos: 0,
                fail_at,
            });
            let Some((offset, msg)) = end else {
                // Failing inside the first blocks fails the open itself.
                assert!(CaptureReader::new(FailsAt { data: &ng, pos: 0, fail_at }).is_err(), "fail at {fail_at}");
                continue;
            };
            let offset = offset.expect("damage");
            assert!(offset <= fail_at as u64 && frames.len() < whole, "fail at {fail_at}: {offset}");
            assert!(msg.contains("read error: disk on fire"), "{msg}");
            seen.insert(offset);
        }
        // The offsets are the blocks', not one number for every failure.
        assert!(seen.len() > 4, "{seen:?}");
    }

    #[test]
    fn classic_pcap_damage_is_where_libpcap_finds_it() {
        let c = Classic::default();
        // A record claiming more than libpcap's maximum (262 144 bytes).
        let mut bytes = classic(c, None);
        c.record(&mut bytes, 1, 2, 300_000, &[]);
        let at = bytes.len() - 16;
        bytes[at + 8..at + 12].copy_from_slice(&300_000u32.to_le_bytes());
        bytes.extend_from_slice(&[0; 64]);
        assert_eq!(same_as_libpcap("huge caplen", &bytes), 6);
        let mut r = CaptureReader::new(&bytes[..]).unwrap();
        for _ in 0..6 {
            r.next_frame().unwrap().unwrap();
        }
        match r.next_frame() {
            Err(ReadError::Damaged { offset, msg }) => {
                assert_eq!(offset, at as u64);
                assert_eq!(msg, "invalid packet capture length 300000, bigger than snaplen of 65535");
            }
            other => panic!("{other:?}"),
        }
        // Not a capture at all, and a header cut short.
        for bad in [&b"hello, world"[..], &[], &Classic::default().header()[..10]] {
            assert!(matches!(CaptureReader::new(bad), Err(ReadError::Format(_))));
            same_as_libpcap("not a capture", bad);
        }
    }

    fn ng(big_endian: bool, ifaces: &[Interface], extra_blocks: bool) -> Vec<u8> {
        let mut w = PcapNg::new(big_endian);
        if extra_blocks {
            w.other_block();
        }
        for i in ifaces {
            w.interface(i);
        }
        for (k, f) in sample_frames(false).iter().enumerate() {
            for (id, i) in ifaces.iter().enumerate() {
                let data = if i.linktype == 101 { &f[14..] } else { &f[..] };
                let snap = if i.snaplen == 0 { usize::MAX } else { i.snaplen as usize };
                let data = &data[..data.len().min(snap)];
                // 1.7e9 s and a fraction, in the interface's units.
                let units: u64 = match i.tsresol {
                    None => 1_000_000,
                    Some(r) if r & 0x80 != 0 => 1 << (r & 0x7f),
                    Some(r) => 10u64.pow(u32::from(r)),
                };
                // (Fine resolutions: 64 bits hold only some 18 million seconds of ps.)
                let base = if units > 1_000_000_000 { 1_000_000 } else { 1_700_000_000 };
                let t = base * units + (k as u64 * 7919 + id as u64 * 104_729) % units;
                w.packet(id as u32, t, data.len() as u32 + 2 * k as u32, data);
                if extra_blocks && k == 2 {
                    w.other_block();
                }
            }
        }
        if extra_blocks {
            let f = &sample_frames(false)[3];
            w.simple_packet(f.len() as u32, f);
        }
        w.bytes()
    }

    #[test]
    fn pcapng_with_interfaces_of_different_resolutions_and_offsets_reads_as_libpcap() {
        let iface = |tsresol, tsoffset| Interface { linktype: 1, snaplen: 262_144, tsresol, tsoffset };
        let ifaces = [
            iface(None, None),
            iface(Some(9), Some(-3600)),
            iface(Some(0x80 | 20), None),
            iface(Some(3), Some(86_400)),
            iface(Some(0x80 | 40), Some(1)),
            iface(Some(12), None),
        ];
        for be in [false, true] {
            for extra in [false, true] {
                let bytes = ng(be, &ifaces, extra);
                let name = format!("pcapng be={be} extra={extra}");
                assert_eq!(same_as_libpcap(&name, &bytes), 36 + usize::from(extra), "{name}");
                for cut in (28..bytes.len()).step_by(53) {
                    same_as_libpcap(&format!("{name} cut at {cut}"), &bytes[..cut]);
                }
            }
        }
    }

    /// One tshark line per frame: epoch time (ns), frame length, captured length, interface.
    fn tshark_fields(path: &Path) -> Option<Vec<(String, u32, u32, u32)>> {
        let ok = std::process::Command::new("tshark").arg("--version").output().is_ok_and(|o| o.status.success());
        if !ok {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI=true but tshark is not installed");
            eprintln!("SKIPPED: tshark not installed");
            return None;
        }
        let out = std::process::Command::new("tshark")
            .arg("-r")
            .arg(path)
            .args(["-T", "fields", "-e", "frame.time_epoch", "-e", "frame.len", "-e", "frame.cap_len"])
            .args(["-e", "frame.interface_id"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Some(
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(|l| {
                    let f: Vec<&str> = l.split('\t').collect();
                    (f[0].to_string(), f[1].parse().unwrap(), f[2].parse().unwrap(), f[3].parse().unwrap())
                })
                .collect(),
        )
    }

    #[test]
    fn pcapng_with_interfaces_of_different_link_types_reads_as_tshark_does() {
        let ifaces = [
            Interface { linktype: 1, snaplen: 0, tsresol: Some(9), tsoffset: None },
            Interface { linktype: 101, snaplen: 200, tsresol: None, tsoffset: Some(10) },
            Interface { linktype: 1, snaplen: 64, tsresol: Some(0x80 | 10), tsoffset: None },
            Interface { linktype: 127, snaplen: 65535, tsresol: Some(3), tsoffset: None },
        ];
        for be in [false, true] {
            let bytes = ng(be, &ifaces, false);
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("multi.pcapng");
            std::fs::write(&p, &bytes).unwrap();
            // libpcap refuses this file at its second interface.
            assert!(matches!(libpcap(&p), Ok((v, true)) if v.is_empty()));
            for_each_is_next_frame(&format!("multi-link be={be}"), &bytes);
            let mut r = CaptureReader::new(&bytes[..]).unwrap();
            let mut got = Vec::new();
            let mut links = Vec::new();
            while let Some(f) = r.next_frame().unwrap() {
                let (s, ns) = f.timespec();
                got.push((format!("{s}.{ns:09}"), f.orig_len, f.data.len() as u32, f.interface));
                links.push(f.linktype);
            }
            assert_eq!(got.len(), 24);
            assert_eq!(&links[..4], &[1, 101, 1, 127]);
            // Raw IP frames are the Ethernet frame less its header; snaplen 64 cuts.
            assert_eq!(got[1].2 + 14, got[0].2.min(200 + 14));
            assert!(got.iter().skip(2).step_by(4).all(|g| g.2 <= 64));
            if let Some(want) = tshark_fields(&p) {
                assert_eq!(got, want, "be={be}");
            }
        }
    }

    #[test]
    fn pcapng_sections_of_either_byte_order_restart_their_interfaces() {
        let mut w = PcapNg::new(false);
        w.interface(&Interface { linktype: 1, snaplen: 0, tsresol: None, tsoffset: None });
        w.packet(0, 1_000_000, 60, &[1; 60]);
        w.section(true);
        w.interface(&Interface { linktype: 113, snaplen: 0, tsresol: Some(9), tsoffset: None });
        w.packet(0, 2_500_000_000, 70, &[2; 40]);
        // Interface 1 does not exist in this section: damage, after the two frames.
        w.packet(1, 0, 10, &[3; 10]);
        let bytes = w.bytes();
        let (frames, end) = for_each_is_next_frame_from("two sections", || &bytes[..]);
        assert_eq!((frames.len(), end.map(|e| e.0.is_some())), (2, Some(true)));
        let mut r = CaptureReader::new(&bytes[..]).unwrap();
        let f = r.next_frame().unwrap().unwrap();
        assert_eq!((f.linktype, f.timeval(), f.data.len(), f.orig_len), (1, (1, 0), 60, 60));
        let f = r.next_frame().unwrap().unwrap();
        assert_eq!((f.linktype, f.timespec(), f.data, f.orig_len), (113, (2, 500_000_000), &[2u8; 40][..], 70));
        match r.next_frame() {
            Err(ReadError::Damaged { msg, .. }) => assert!(msg.contains("no Interface Description Block"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }
}
