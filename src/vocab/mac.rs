//! Ethernet MAC addresses: parse, print lowercase colon form, classify.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

/// A MAC hashes as one integer: the derived hash of six bytes fed a length
/// and then the bytes in pieces, and the shards look a MAC up twice per frame.
/// The last three bytes (what differs between a cluster's NICs; the first
/// three are a vendor's) are folded onto the first: a multiplicative hash
/// such as FxHash spreads only what is in the low bits, and hashbrown takes
/// its tag from bits that one vendor's MACs would otherwise share. The bytes
/// are read as four and two, the widths the decoder writes them in, so the
/// loads are served from the store buffer (a load spanning two stores waits
/// for both to reach the cache).
impl std::hash::Hash for Mac {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let [a, b, c, d, e, f] = self.0;
        let w = u64::from(u32::from_le_bytes([a, b, c, d])) | u64::from(u16::from_le_bytes([e, f])) << 32;
        state.write_u64(w ^ (w >> 24));
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid MAC address `{0}`: expected six hex pairs separated by colons, like 52:54:00:aa:00:01")]
pub struct MacParseError(pub String);

impl Mac {
    pub const BROADCAST: Mac = Mac([0xff; 6]);

    /// Unicast: the I/G bit (least significant bit of the first octet) is clear.
    pub fn is_unicast(self) -> bool {
        self.0[0] & 0x01 == 0
    }

    pub fn is_zero(self) -> bool {
        self.0 == [0; 6]
    }

    pub fn as_u64(self) -> u64 {
        let b = self.0;
        u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl FromStr for Mac {
    type Err = MacParseError;

    /// Accepts `aa:bb:cc:dd:ee:ff` and `aa-bb-cc-dd-ee-ff`, either case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.to_string());
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut n = 0;
        for part in s.split(sep) {
            if n == 6 || part.len() != 2 {
                return Err(err());
            }
            out[n] = u8::from_str_radix(part, 16).map_err(|_| err())?;
            n += 1;
        }
        if n != 6 {
            return Err(err());
        }
        Ok(Mac(out))
    }
}

impl serde::Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    /// One vendor's MACs, which differ only in their last bytes, spread over
    /// both what hashbrown takes a bucket from (the low bits) and its tag
    /// (the top seven): a little-endian word hashed as it is gave all of
    /// them one tag, and every lookup compared keys along the whole probe.
    #[test]
    fn one_vendors_macs_hash_apart() {
        let build = rustc_hash::FxBuildHasher;
        for last in [5usize, 4, 3] {
            let hashes: Vec<u64> = (0..256u32)
                .map(|i| {
                    let mut m = [0x52, 0x54, 0x00, 0xaa, 0x00, 0x01];
                    m[last] = i as u8;
                    build.hash_one(Mac(m))
                })
                .collect();
            let tags: std::collections::BTreeSet<u64> = hashes.iter().map(|h| h >> 57).collect();
            let buckets: std::collections::BTreeSet<u64> = hashes.iter().map(|h| h & 0xff).collect();
            // The folded word gives 64 or more; the unfolded one gave 1 for byte 5.
            assert!(tags.len() >= 48, "byte {last}: {} tags", tags.len());
            assert!(buckets.len() >= 128, "byte {last}: {} buckets of 256", buckets.len());
        }
        // Equal MACs hash equal (the table's contract).
        assert_eq!(build.hash_one(Mac([1, 2, 3, 4, 5, 6])), build.hash_one(Mac([1, 2, 3, 4, 5, 6])));
    }

    #[test]
    fn parses_and_prints_lowercase_colon_form() {
        let m: Mac = "52:54:00:AA:00:01".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:aa:00:01");
        assert_eq!("52-54-00-aa-00-01".parse::<Mac>().unwrap(), m);
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "52:54:00:aa:00", "52:54:00:aa:00:01:02", "5:54:00:aa:00:01", "zz:54:00:aa:00:01"] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn unicast_bit() {
        assert!(!Mac::BROADCAST.is_unicast());
        assert!(!"01:00:5e:00:00:01".parse::<Mac>().unwrap().is_unicast());
        assert!("fa:16:3e:00:00:01".parse::<Mac>().unwrap().is_unicast());
    }
}
