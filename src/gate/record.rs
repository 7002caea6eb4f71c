//! The gate's decision record: one JSON line per `migrate begin`, appended and synced, which the sensor follows.

use crate::decode::Mac;
use crate::vocab::PacketTime;
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
    /// Refused: the domain XML from the source is unusable (does not parse,
    /// not UTF-8, over `max_xml_bytes`, two tokens, a bad MAC). Never opened
    /// by `fail_closed = false`: the XML is the source's word.
    BadXml,
    /// Refused: the gate failed on a local problem (rules, stores, the
    /// decisions file) with `fail_closed = true`; `detail` says how.
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
            GateReason::BadXml => "bad_xml",
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
    /// How long the decision took, in microseconds (before the record is written).
    #[serde(default)]
    pub elapsed_us: u64,
    /// `hex(HMAC-SHA256(cluster key, "vmsentry-gate-v1" 0x00 canonical))`, where
    /// `canonical` is this record as serialized without `mac`; the sensor refuses
    /// a record without a valid one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// The domain-separation tag of a decision record's MAC.
pub const RECORD_TAG: &[u8] = b"vmsentry-gate-v1";

/// Why the sensor refuses a line of a decisions file.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("not a decision record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the record's MAC is missing or does not verify with the cluster key")]
    Mac,
    #[error("the record's host `{0}` is not a hypervisor of the registry")]
    Host(String),
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

    fn mac_over(&self, key: &crate::trust::ClusterKey) -> crate::trust::HmacSha256 {
        use hmac::Mac as _;
        let canonical = GateRecord { mac: None, ..self.clone() };
        // Serializing plain data to a Vec cannot fail.
        let bytes = serde_json::to_vec(&canonical).unwrap_or_default();
        let mut m = key.hmac();
        m.update(RECORD_TAG);
        m.update(&[0]);
        m.update(&bytes);
        m
    }

    /// Sets `mac` for the record as it is now.
    pub fn sign(&mut self, key: &crate::trust::ClusterKey) {
        use hmac::Mac as _;
        self.mac = None;
        self.mac = Some(hex::encode(self.mac_over(key).finalize().into_bytes()));
    }

    /// Whether `mac` verifies (constant time).
    pub fn verify(&self, key: &crate::trust::ClusterKey) -> bool {
        use hmac::Mac as _;
        let Some(sig) = self.mac.as_deref().and_then(|m| hex::decode(m).ok()) else { return false };
        self.mac_over(key).verify_slice(&sig).is_ok()
    }

    /// Parses one line and checks it as the sensor does: its MAC verifies
    /// with `key` and its `host` is one of `hosts` (the registry's ids).
    pub fn parse_verified(
        line: &str,
        key: &crate::trust::ClusterKey,
        hosts: &[String],
    ) -> Result<Option<GateRecord>, RecordError> {
        let Some(r) = GateRecord::parse(line)? else { return Ok(None) };
        if !r.verify(key) {
            return Err(RecordError::Mac);
        }
        if !hosts.contains(&r.host) {
            return Err(RecordError::Host(r.host));
        }
        Ok(Some(r))
    }

    /// Parses one line of a decisions file (no MAC check); blank lines are `Ok(None)`.
    pub fn parse(line: &str) -> Result<Option<GateRecord>, serde_json::Error> {
        let line = line.trim();
        if line.is_empty() {
            return Ok(None);
        }
        serde_json::from_str(line).map(Some)
    }
}

mod ts {
    use crate::vocab::PacketTime;
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
            mac: None,
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
    fn a_signed_record_verifies_and_any_change_or_other_host_is_refused() {
        let key = crate::trust::ClusterKey::from_bytes(b"0123456789abcdef0123456789abcdef").unwrap();
        let other = crate::trust::ClusterKey::from_bytes(b"ffffffffffffffffffffffffffffffff").unwrap();
        let hosts = vec!["compute-2".to_string()];
        let mut r = GateRecord {
            ts: PacketTime::from_micros(1_700_000_000_123_456),
            allowed: true,
            reason: GateReason::Authorized,
            detail: None,
            domain: "gate-vm".into(),
            uuid: None,
            vms: vec!["52:54:00:12:34:56".parse().unwrap()],
            host: "compute-2".into(),
            nonce: Some("00112233aabbccdd".into()),
            elapsed_us: 5,
            mac: None,
        };
        let unsigned = serde_json::to_string(&r).unwrap();
        assert!(matches!(GateRecord::parse_verified(&unsigned, &key, &hosts), Err(RecordError::Mac)));
        r.sign(&key);
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.ends_with(&format!(",\"mac\":\"{}\"}}", r.mac.as_deref().unwrap())), "{line}");
        assert_eq!(GateRecord::parse_verified(&line, &key, &hosts).unwrap(), Some(r.clone()));
        assert!(matches!(GateRecord::parse_verified(&line, &other, &hosts), Err(RecordError::Mac)));
        // Changing any field (here: the VM) breaks the MAC.
        let forged = line.replace("52:54:00:12:34:56", "52:54:00:12:34:57");
        assert!(matches!(GateRecord::parse_verified(&forged, &key, &hosts), Err(RecordError::Mac)));
        // A valid MAC for a host that is not in the registry.
        let mut rogue = GateRecord { host: "rogue-9".into(), ..r };
        rogue.sign(&key);
        let line = serde_json::to_string(&rogue).unwrap();
        assert!(matches!(GateRecord::parse_verified(&line, &key, &hosts), Err(RecordError::Host(h)) if h == "rogue-9"));
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
            mac: None,
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
