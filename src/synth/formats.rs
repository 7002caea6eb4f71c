//! Capture files in every form the reader takes: classic pcap of any link type, byte order and precision, and pcapng with several interfaces.
//!
//! For tests: raw-IP captures (`LINKTYPE_RAW` 101, or 12 as some systems
//! wrote it), big-endian and nanosecond files, and pcapng files whose
//! interfaces differ in link type, `if_tsresol` and `if_tsoffset`, written at
//! test time instead of shipped as binaries.

/// Classic pcap header options.
#[derive(Clone, Copy, Debug)]
pub struct Classic {
    pub linktype: u32,
    pub snaplen: u32,
    /// Nanosecond magic: record fractions are nanoseconds.
    pub nano: bool,
    pub big_endian: bool,
    /// Version minor (4 today; below 3 means caplen and len were swapped in the record).
    pub version_minor: u16,
}

impl Default for Classic {
    fn default() -> Self {
        Classic { linktype: 1, snaplen: 65535, nano: false, big_endian: false, version_minor: 4 }
    }
}

fn put16(out: &mut Vec<u8>, v: u16, be: bool) {
    out.extend_from_slice(&if be { v.to_be_bytes() } else { v.to_le_bytes() });
}

fn put32(out: &mut Vec<u8>, v: u32, be: bool) {
    out.extend_from_slice(&if be { v.to_be_bytes() } else { v.to_le_bytes() });
}

fn put64(out: &mut Vec<u8>, v: u64, be: bool) {
    out.extend_from_slice(&if be { v.to_be_bytes() } else { v.to_le_bytes() });
}

impl Classic {
    /// The file header.
    pub fn header(&self) -> Vec<u8> {
        let be = self.big_endian;
        let mut out = Vec::with_capacity(24);
        put32(&mut out, if self.nano { 0xa1b2_3c4d } else { 0xa1b2_c3d4 }, be);
        put16(&mut out, 2, be);
        put16(&mut out, self.version_minor, be);
        put32(&mut out, 0, be); // thiszone
        put32(&mut out, 0, be); // sigfigs
        put32(&mut out, self.snaplen, be);
        put32(&mut out, self.linktype, be);
        out
    }

    /// One record as given: `caplen` is `data.len()` (not cut to the snaplen,
    /// so a test can write one longer than it).
    pub fn record(&self, out: &mut Vec<u8>, sec: u32, frac: u32, orig_len: u32, data: &[u8]) {
        let be = self.big_endian;
        put32(out, sec, be);
        put32(out, frac, be);
        let (a, b) = if self.version_minor < 3 { (orig_len, data.len() as u32) } else { (data.len() as u32, orig_len) };
        put32(out, a, be);
        put32(out, b, be);
        out.extend_from_slice(data);
    }
}

/// A pcapng interface description.
#[derive(Clone, Copy, Debug)]
pub struct Interface {
    pub linktype: u16,
    pub snaplen: u32,
    /// `if_tsresol` (absent: microseconds).
    pub tsresol: Option<u8>,
    /// `if_tsoffset` in seconds (absent: 0).
    pub tsoffset: Option<i64>,
}

/// A pcapng file being written, in memory.
pub struct PcapNg {
    out: Vec<u8>,
    be: bool,
}

impl PcapNg {
    /// A file with its first section header.
    pub fn new(big_endian: bool) -> PcapNg {
        let mut w = PcapNg { out: Vec::new(), be: big_endian };
        w.section(big_endian);
        w
    }

    fn block(&mut self, kind: u32, body: &[u8]) {
        let pad = (4 - body.len() % 4) % 4;
        let total = (12 + body.len() + pad) as u32;
        let be = self.be;
        put32(&mut self.out, kind, be);
        put32(&mut self.out, total, be);
        self.out.extend_from_slice(body);
        self.out.extend(std::iter::repeat_n(0, pad));
        put32(&mut self.out, total, be);
    }

    /// A new section (its interfaces start again from 0), in either byte order.
    pub fn section(&mut self, big_endian: bool) {
        self.be = big_endian;
        let mut body = Vec::new();
        put32(&mut body, 0x1a2b_3c4d, big_endian);
        put16(&mut body, 1, big_endian);
        put16(&mut body, 0, big_endian);
        put64(&mut body, u64::MAX, big_endian); // section length unknown
        self.block(0x0a0d_0d0a, &body);
    }

    pub fn interface(&mut self, i: &Interface) {
        let be = self.be;
        let mut body = Vec::new();
        put16(&mut body, i.linktype, be);
        put16(&mut body, 0, be);
        put32(&mut body, i.snaplen, be);
        if let Some(r) = i.tsresol {
            put16(&mut body, 9, be);
            put16(&mut body, 1, be);
            body.extend_from_slice(&[r, 0, 0, 0]);
        }
        if let Some(o) = i.tsoffset {
            put16(&mut body, 14, be);
            put16(&mut body, 8, be);
            put64(&mut body, o as u64, be);
        }
        if i.tsresol.is_some() || i.tsoffset.is_some() {
            put32(&mut body, 0, be); // opt_endofopt
        }
        self.block(1, &body);
    }

    /// An Enhanced Packet Block: `t` in the interface's units.
    pub fn packet(&mut self, iface: u32, t: u64, orig_len: u32, data: &[u8]) {
        let be = self.be;
        let mut body = Vec::with_capacity(20 + data.len() + 8);
        put32(&mut body, iface, be);
        put32(&mut body, (t >> 32) as u32, be);
        put32(&mut body, t as u32, be);
        put32(&mut body, data.len() as u32, be);
        put32(&mut body, orig_len, be);
        body.extend_from_slice(data);
        body.extend(std::iter::repeat_n(0, (4 - data.len() % 4) % 4));
        // An epb_flags option (inbound), as dumpcap writes.
        put16(&mut body, 2, be);
        put16(&mut body, 4, be);
        put32(&mut body, 1, be);
        put32(&mut body, 0, be);
        self.block(6, &body);
    }

    /// A Simple Packet Block (interface 0, no timestamp).
    pub fn simple_packet(&mut self, orig_len: u32, data: &[u8]) {
        let mut body = Vec::new();
        put32(&mut body, orig_len, self.be);
        body.extend_from_slice(data);
        self.block(3, &body);
    }

    /// A block of a type readers skip (here a Name Resolution Block with only its end).
    pub fn other_block(&mut self) {
        let mut body = Vec::new();
        put32(&mut body, 0, self.be);
        self.block(4, &body);
    }

    pub fn bytes(self) -> Vec<u8> {
        self.out
    }
}
