//! Packet time: the capture's clock, the only clock windows and RTTs read.

use std::fmt;

/// `window.length_ms`: one window of packet time.
pub const DEFAULT_WINDOW_MS: u64 = 1000;

/// Microseconds since the Unix epoch, as stamped by the capture.
///
/// Windows, rates and RTTs use only this type, so a replay gives the same
/// results on every run and for every thread count. The wall clock is read in
/// the live source and the backends, nowhere else.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PacketTime(i64);

impl PacketTime {
    pub const ZERO: PacketTime = PacketTime(0);

    pub const fn from_micros(us: i64) -> Self {
        PacketTime(us)
    }

    /// From a pcap header's `timeval` (seconds, microseconds).
    /// The wall clock, for what happens outside packets (live IDS alerts).
    pub fn now() -> Self {
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        PacketTime(d.as_micros() as i64)
    }

    pub fn from_timeval(sec: i64, usec: i64) -> Self {
        PacketTime(sec.saturating_mul(1_000_000).saturating_add(usec))
    }

    pub const fn as_micros(self) -> i64 {
        self.0
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e6
    }

    /// Index of the window of `len_us` microseconds this instant falls in;
    /// windows are aligned to multiples of their length.
    pub fn window_index(self, len_us: i64) -> i64 {
        self.0.div_euclid(len_us)
    }

    /// First microsecond of window `w` of `len_us` microseconds, saturating
    /// at the ends of the range (a capture can stamp any 64-bit time).
    pub fn window_start(w: i64, len_us: i64) -> Self {
        PacketTime(w.saturating_mul(len_us))
    }

    /// First microsecond after window `w`: the start of `w + 1`, saturating.
    pub fn window_end(w: i64, len_us: i64) -> Self {
        PacketTime(w.saturating_add(1).saturating_mul(len_us))
    }

    pub fn saturating_add_micros(self, us: i64) -> Self {
        PacketTime(self.0.saturating_add(us))
    }

    /// RFC 3339 in UTC with microseconds, e.g. `2024-01-01T00:00:00.000000Z`.
    pub fn rfc3339(self) -> String {
        let secs = self.0.div_euclid(1_000_000);
        let micros = self.0.rem_euclid(1_000_000);
        match time::OffsetDateTime::from_unix_timestamp(secs) {
            Ok(t) => format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                micros
            ),
            // Out of the representable range: still a stable, sortable value.
            Err(_) => format!("@{}us", self.0),
        }
    }
}

impl fmt::Display for PacketTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

impl serde::Serialize for PacketTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.rfc3339())
    }
}

impl std::str::FromStr for PacketTime {
    type Err = String;
    /// What [`PacketTime::rfc3339`] writes: RFC 3339 (any offset), or `@Nus`.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(us) = s.strip_prefix('@').and_then(|r| r.strip_suffix("us")) {
            return us.parse().map(PacketTime).map_err(|_| format!("not a time: `{s}`"));
        }
        let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map_err(|e| format!("not an RFC 3339 time: `{s}` ({e})"))?;
        i64::try_from(t.unix_timestamp_nanos() / 1000).map(PacketTime).map_err(|_| format!("out of range: `{s}`"))
    }
}

impl<'de> serde::Deserialize<'de> for PacketTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_it_writes_reads_back() {
        for us in [0, 42, 1_700_000_000_000_042, -1, i64::MAX] {
            let t = PacketTime::from_micros(us);
            assert_eq!(t.rfc3339().parse::<PacketTime>(), Ok(t), "{t}");
            let back: PacketTime = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
            assert_eq!(back, t);
        }
        // Another offset is the same instant.
        assert_eq!("2023-11-14T23:13:20.000042+01:00".parse(), Ok(PacketTime::from_timeval(1_700_000_000, 42)));
        let e = "2023-11-14 22:13:20".parse::<PacketTime>().unwrap_err();
        assert!(e.starts_with("not an RFC 3339 time: `2023-11-14 22:13:20`"), "{e}");
    }

    #[test]
    fn rfc3339_has_microseconds_and_utc() {
        let t = PacketTime::from_timeval(1_700_000_000, 42);
        assert_eq!(t.rfc3339(), "2023-11-14T22:13:20.000042Z");
        assert_eq!(PacketTime::ZERO.rfc3339(), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn windows_align_to_multiples_of_length() {
        let len = 1_000_000;
        assert_eq!(PacketTime::from_micros(999_999).window_index(len), 0);
        assert_eq!(PacketTime::from_micros(1_000_000).window_index(len), 1);
        assert_eq!(PacketTime::from_micros(-1).window_index(len), -1);
        assert_eq!(PacketTime::window_start(3, len).as_micros(), 3_000_000);
        assert_eq!(PacketTime::window_end(3, len).as_micros(), 4_000_000);
    }

    #[test]
    fn window_bounds_saturate_at_the_ends_of_time() {
        let len = 1_000_000;
        let last = PacketTime::from_micros(i64::MAX).window_index(len);
        assert_eq!(PacketTime::window_end(last, len).as_micros(), i64::MAX);
        assert!(i64::MAX - PacketTime::window_start(last, len).as_micros() < len);
        let first = PacketTime::from_micros(i64::MIN).window_index(len);
        assert_eq!(PacketTime::window_start(first, len).as_micros(), i64::MIN);
        assert_eq!(PacketTime::window_end(i64::MAX, len).as_micros(), i64::MAX);
    }
}
