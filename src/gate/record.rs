//! The gate's decision record: one JSON line per `migrate begin`, appended and synced, which the sensor follows.

use crate::decode::Mac;
use crate::time::PacketTime;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// Why the gate allowed or refused a migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateReason {
    /// Allowed: this host is signed and no token is required.
    Signed,
    /// Allowed: this host is signed and a valid token was used up.
    Authorized,
    /// Allowed although the gate failed (`fail_closed = false`).
    FailOpen,
    /// Refused: this host is not in the registry, or its signature does not verify.
    UnsignedHost,
    /// Refused: a token is required and the domain XML carries none.
    NoToken,
    /// Refused: the token is not a vmsentry token.
    TokenMalformed,
    /// Refused: the token's signature does not verify.
    TokenForged,
    /// Refused: the token is for another VM.
    TokenOtherVm,
    /// Refused: the token is for another destination.
    TokenOtherHost,
    /// Refused: the token expired.
    TokenExpired,
    /// Refused: the token's nonce was used already.
    TokenReplayed,
    /// Refused: the decision took longer than `timeout_ms`.
    Timeout,
    /// Refused: the gate failed (`fail_closed = true`); `detail` says how.
    Error,
}

impl GateReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GateReason::Signed => "signed",
            GateReason::Authorized => "authorized",
            GateReason::FailOpen => "fail_open",
            GateReason::UnsignedHost => "unsigned_host",
            GateReason::NoToken => "no_token",
            GateReason::TokenMalformed => "token_malformed",
            GateReason::TokenForged => "token_forged",
            GateReason::TokenOtherVm => "token_other_vm",
            GateReason::TokenOtherHost => "token_other_host",
            GateReason::TokenExpired => "token_expired",
            GateReason::TokenReplayed => "token_replayed",
            GateReason::Timeout => "timeout",
            GateReason::Error => "error",
        }
    }
}

/// One decision, as written to the decisions file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateRecord {
    /// When the gate decided (wall clock of the hypervisor), RFC 3339 UTC.
    #[serde(with = "ts")]
    pub ts: PacketTime,
    pub allowed: bool,
    pub reason: GateReason,
    /// A human sentence for refusals and errors.
    #[serde(default)]
    pub detail: Option<String>,
    /// The libvirt domain name (the hook's first argument).
    pub domain: String,
    #[serde(default)]
    pub uuid: Option<String>,
    /// The domain's interface MACs.
    pub vms: Vec<Mac>,
    /// This host's registry id (the destination).
    pub host: String,
    /// The nonce of the token presented, when one parsed.
    #[serde(default)]
    pub nonce: Option<String>,
    /// How long the decision took, in microseconds.
    #[serde(default)]
    pub elapsed_us: u64,
}

impl GateRecord {
    /// Appends the record as one line with one `write` (O_APPEND: concurrent
    /// gates never interleave within a line) and syncs it to disk before the
    /// gate answers libvirt.
    pub fn append(&self, path: &Path) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        f.write_all(&line)?;
        f.sync_data()
    }

    /// Parses one line of a decisions file; blank lines are `Ok(None)`.
    pub fn parse(line: &str) -> Result<Option<GateRecord>, serde_json::Error> {
        let line = line.trim();
        if line.is_empty() {
            return Ok(None);
        }
        serde_json::from_str(line).map(Some)
    }
}

mod ts {
    use crate::time::PacketTime;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(t: &PacketTime, s: S) -> Result<S::Ok, S::Error> {
        t.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PacketTime, D::Error> {
        let s = String::deserialize(d)?;
        let t = time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
            .map_err(|e| serde::de::Error::custom(format!("`{s}` is not an RFC 3339 time: {e}")))?;
        Ok(PacketTime::from_micros((t.unix_timestamp_nanos() / 1000) as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_one_json_line_that_reads_back() {
        let r = GateRecord {
            ts: PacketTime::from_micros(1_700_000_000_123_456),
            allowed: false,
            reason: GateReason::TokenReplayed,
            detail: Some("nonce used".into()),
            domain: "gate-vm".into(),
            uuid: None,
            vms: vec!["52:54:00:12:34:56".parse().unwrap()],
            host: "compute-2".into(),
            nonce: Some("00112233aabbccdd".into()),
            elapsed_us: 812,
        };
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("decisions.jsonl");
        r.append(&p).unwrap();
        r.append(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            r#"{"ts":"2023-11-14T22:13:20.123456Z","allowed":false,"reason":"token_replayed","detail":"nonce used","domain":"gate-vm","uuid":null,"vms":["52:54:00:12:34:56"],"host":"compute-2","nonce":"00112233aabbccdd","elapsed_us":812}"#
        );
        assert_eq!(GateRecord::parse(lines[1]).unwrap(), Some(r));
        assert_eq!(GateRecord::parse("  ").unwrap(), None);
        assert!(GateRecord::parse(r#"{"ts":"yesterday"}"#).is_err());
    }

    #[test]
    fn the_sensor_follows_a_decisions_file_as_the_gate_appends() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("decisions.jsonl");
        let parse: crate::ids::LineParser<GateRecord> = Box::new(|l| GateRecord::parse(l).map_err(|_| ()));
        let (stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
        let (tx, rx) = crossbeam_channel::unbounded();
        let h = crate::ids::Follower::open_with(&p, parse, None, false)
            .watch(stop, move |records, malformed| tx.send((records, malformed)).is_ok())
            .unwrap();
        let r = GateRecord {
            ts: PacketTime::from_micros(1_700_000_000_000_000),
            allowed: true,
            reason: GateReason::Authorized,
            detail: None,
            domain: "gate-vm".into(),
            uuid: None,
            vms: vec!["52:54:00:12:34:56".parse().unwrap()],
            host: "compute-2".into(),
            nonce: Some("00112233aabbccdd".into()),
            elapsed_us: 1,
        };
        r.append(&p).unwrap();
        let (got, malformed) = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        assert_eq!((got, malformed), (vec![r], 0));
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(b"{not json\n").unwrap();
        let (got, malformed) = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        assert_eq!((got.len(), malformed), (0, 1));
        drop(stop_tx);
        h.join().unwrap();
    }
}
