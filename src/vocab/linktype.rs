//! Link types vmsentry decodes (libpcap `DLT_*` / `LINKTYPE_*` numbers): what the capture reports and decode reads.

pub const NULL: i32 = 0;
pub const ETHERNET: i32 = 1;
pub const RAW: i32 = 101;
pub const LOOP: i32 = 108;
pub const LINUX_SLL: i32 = 113;
pub const IPV4: i32 = 228;
pub const IPV6: i32 = 229;
pub const LINUX_SLL2: i32 = 276;
/// libpcap's `DLT_RAW` (raw IP): what it reports for a `LINKTYPE_RAW`
/// file or interface on Linux and most systems ...
pub const DLT_RAW: i32 = 12;
/// ... and on OpenBSD (elsewhere 14 is `DLT_PPP_BSDOS`, which no capture
/// file carries: files say `LINKTYPE_PPP_BSDOS` 103).
pub const DLT_RAW_OPENBSD: i32 = 14;

/// Whether frames of this (decoded) link type carry Ethernet addresses:
/// raw IP and BSD loopback do not, so they count for no VM.
pub fn has_macs(linktype: i32) -> bool {
    matches!(linktype, ETHERNET | LINUX_SLL | LINUX_SLL2)
}

/// Whether the decoder reads frames of this link type (others are
/// counted as `unsupported_link`).
pub fn decoded(linktype: i32) -> bool {
    matches!(linktype, NULL | ETHERNET | RAW | DLT_RAW | DLT_RAW_OPENBSD | LOOP | LINUX_SLL | IPV4 | IPV6 | LINUX_SLL2)
}
