//! Ethernet MAC addresses: parse, print lowercase colon form, classify.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

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
