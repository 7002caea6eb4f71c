//! Cluster: many mirror ports, one cluster: sensors (`vmsentry sense`) publish per-window partials to NATS JetStream; a controller (`vmsentry control`) merges them and acts.
//!
//! The single-process pipeline already splits at the right seam: shards
//! produce per-window partials, and the merge waits for every shard's
//! watermark before detecting. Across machines, each sensor runs capture,
//! decode and the shards, and hands its windows (all its shards combined,
//! [`wire`] encoded) to NATS JetStream; the controller is the merge: it
//! closes a window once every live sensor has sent it, then detects, decides
//! and acts exactly as one process does.
//!
//! ## Who counts a frame: ownership
//!
//! A rack's mirror port sees the frames whose outer source or outer
//! destination is a hypervisor of that rack, so a frame between two racks is
//! seen by both sensors. Counted twice it would double rates and volumes. So
//! every frame has exactly one *owner*, by a rule each sensor evaluates on
//! the frame's own bytes and the shared `cluster.toml`, so all sensors agree
//! without talking:
//!
//! 1. The frame's *ends* are its outermost Ethernet source and destination
//!    and, when it is IP (after up to two VLAN tags), its outermost IP source
//!    and destination.
//! 2. A sensor *sees* the frame when one of the ends is a MAC or IP of one of
//!    its rack's hypervisors (`[[sensor]] hypervisors`, by registry id).
//! 3. The owner is the first sensor in `cluster.toml` order that sees it; a
//!    frame no sensor's rack touches belongs to the sensor marked `default`
//!    (the rack with the gateway, say), or the first.
//!
//! The rule does not depend on the direction, so both directions of a flow
//! have one owner, whose shards then see the whole conversation (RTT needs
//! both). A sensor drops the frames it does not own before its reader,
//! counted (`not_owned`). Limits: a frame is lost if its owner's sensor is
//! down while another sensor sees it (the other does not take over, or the
//! counts of a window would depend on timing); a flow whose owner changes
//! (one end migrating to an earlier rack) keeps no RTT state across the
//! change; time-order checks (late frames, a lone frame far ahead) run per
//! sensor, on its own frames.
//!
//! ## Subjects and state in NATS
//!
//! - stream `VMSENTRY_<CLUSTER>`, subjects `vmsentry.<cluster>.partials.<sensor>`,
//!   one message per sensor and window, `Nats-Msg-Id` `<sensor>.<window>` (so a
//!   window re-sent within the stream's duplicate window is stored once);
//! - KV bucket `vmsentry_<cluster>_lease`, key `controller`: the lease;
//! - KV bucket `vmsentry_<cluster>_actions`: one key per action id, `sent` or
//!   `done`, the journal's ids that a standby continues from;
//! - KV bucket `vmsentry_<cluster>_tokens`: one key per used token nonce, the
//!   use that claimed it ([`tokens`]).
//!
//! `<cluster>` is the rules' `[cluster] name` with any character other than
//! a letter, digit, `-` or `_` replaced by `_`.

pub mod control;
pub mod nats;
pub mod sense;
pub mod spool;
pub mod tokens;
pub mod wire;

use crate::config::Rules;
use crate::decode::Mac;
use rustc_hash::FxHashMap;
use serde::Deserialize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The cluster file's name inside the rules directory.
pub const CLUSTER_FILE: &str = "cluster.toml";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{col}: {msg}")]
    Invalid { path: PathBuf, line: usize, col: usize, msg: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    /// Wall-clock seconds a sensor may be silent before it is declared down.
    #[serde(default = "d_down_after_s")]
    down_after_s: f64,
    /// The controller lease's time to live, in seconds.
    #[serde(default = "d_lease_ttl_s")]
    lease_ttl_s: f64,
    /// How long JetStream keeps partials, in seconds (also how far back a
    /// starting controller rebuilds its state from).
    #[serde(default = "d_retention_s")]
    retention_s: u64,
    /// Copies JetStream keeps of the stream and buckets (1; 3 on a 3-node cluster).
    #[serde(default = "d_replicas")]
    replicas: usize,
    #[serde(default)]
    sensor: Vec<toml::Spanned<RawSensor>>,
}

fn d_down_after_s() -> f64 {
    10.0
}
fn d_lease_ttl_s() -> f64 {
    5.0
}
fn d_retention_s() -> u64 {
    86_400
}
fn d_replicas() -> usize {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSensor {
    id: String,
    #[serde(default)]
    hypervisors: Vec<toml::Spanned<String>>,
    #[serde(default)]
    default: bool,
}

/// One sensor: its id and the addresses of its rack's hypervisors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SensorDef {
    pub id: String,
    pub hypervisors: Vec<String>,
    pub macs: Vec<Mac>,
    pub ips: Vec<IpAddr>,
}

/// `cluster.toml`, validated against the rules.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// The rules' cluster name, as used in subjects and bucket names.
    pub name: String,
    pub sensors: Vec<SensorDef>,
    /// Index of the sensor that owns frames no rack touches.
    pub default: usize,
    pub down_after: Duration,
    pub lease_ttl: Duration,
    pub retention: Duration,
    pub replicas: usize,
    owner_by_mac: FxHashMap<Mac, usize>,
    owner_by_ip: FxHashMap<IpAddr, usize>,
}

/// The cluster name as NATS subjects and bucket names allow it.
pub fn subject_token(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

impl Cluster {
    /// Reads `cluster.toml` from `path` (default: the rules directory's).
    pub fn load(rules: &Rules, path: Option<&Path>) -> Result<Cluster, ClusterError> {
        let path = path.map_or_else(|| rules.dir.join(CLUSTER_FILE), Path::to_path_buf);
        let text =
            std::fs::read_to_string(&path).map_err(|source| ClusterError::Read { path: path.clone(), source })?;
        Cluster::from_str(rules, &path, &text)
    }

    pub fn from_str(rules: &Rules, path: &Path, text: &str) -> Result<Cluster, ClusterError> {
        let at = |offset: usize, msg: String| {
            let (line, col) = crate::config::line_col(text, offset);
            ClusterError::Invalid { path: path.to_path_buf(), line, col, msg }
        };
        let raw: RawCluster = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            at(offset, e.message().to_string())
        })?;
        let positive = |v: f64, what: &str| {
            if v.is_finite() && v > 0.0 && v < 1e6 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(at(0, format!("{what} must be a positive number of seconds (got {v})")))
            }
        };
        let down_after = positive(raw.down_after_s, "down_after_s")?;
        let lease_ttl = positive(raw.lease_ttl_s, "lease_ttl_s")?;
        if raw.sensor.is_empty() {
            return Err(at(0, "no [[sensor]]: name at least one".into()));
        }
        let mut sensors: Vec<SensorDef> = Vec::new();
        let mut default = None;
        let mut owner_by_mac = FxHashMap::default();
        let mut owner_by_ip = FxHashMap::default();
        for (i, s) in raw.sensor.iter().enumerate() {
            let start = s.span().start;
            let s = s.get_ref();
            if s.id.is_empty()
                || !s.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                || s.id.len() > 64
            {
                return Err(at(start, format!("sensor id `{}` must be 1-64 letters, digits, `-` or `_`", s.id)));
            }
            if sensors.iter().any(|o| o.id == s.id) {
                return Err(at(start, format!("sensor id `{}` is given twice", s.id)));
            }
            if s.default {
                if default.is_some() {
                    return Err(at(start, "only one sensor may be `default`".into()));
                }
                default = Some(i);
            }
            let mut def = SensorDef { id: s.id.clone(), hypervisors: Vec::new(), macs: Vec::new(), ips: Vec::new() };
            for h in &s.hypervisors {
                let Some(entry) = rules.hypervisors.iter().find(|e| &e.id == h.get_ref()) else {
                    return Err(at(
                        h.span().start,
                        format!("hypervisor `{}` is not in the rules' [[hypervisor]] registry", h.get_ref()),
                    ));
                };
                if let Some(other) = sensors.iter().find(|o| o.hypervisors.contains(h.get_ref())) {
                    return Err(at(
                        h.span().start,
                        format!("hypervisor `{}` is already in sensor `{}`'s rack", h.get_ref(), other.id),
                    ));
                }
                def.hypervisors.push(entry.id.clone());
                def.macs.extend(&entry.macs);
                def.ips.extend(&entry.ips);
                for m in &entry.macs {
                    owner_by_mac.entry(*m).or_insert(i);
                }
                for ip in &entry.ips {
                    owner_by_ip.entry(*ip).or_insert(i);
                }
            }
            sensors.push(def);
        }
        Ok(Cluster {
            name: subject_token(&rules.cluster),
            sensors,
            default: default.unwrap_or(0),
            down_after,
            lease_ttl,
            retention: Duration::from_secs(raw.retention_s.max(60)),
            replicas: raw.replicas.clamp(1, 5),
            owner_by_mac,
            owner_by_ip,
        })
    }

    pub fn sensor_index(&self, id: &str) -> Option<usize> {
        self.sensors.iter().position(|s| s.id == id)
    }

    pub fn stream(&self) -> String {
        format!("VMSENTRY_{}", self.name.to_ascii_uppercase())
    }

    pub fn subject(&self, sensor: &str) -> String {
        format!("vmsentry.{}.partials.{sensor}", self.name)
    }

    pub fn subjects(&self) -> String {
        format!("vmsentry.{}.partials.>", self.name)
    }

    pub fn lease_bucket(&self) -> String {
        format!("vmsentry_{}_lease", self.name)
    }

    pub fn actions_bucket(&self) -> String {
        format!("vmsentry_{}_actions", self.name)
    }

    pub fn tokens_bucket(&self) -> String {
        format!("vmsentry_{}_tokens", self.name)
    }

    /// The sensors that see a frame (a bit set by index, see the module doc)
    /// and its owner. At most 64 sensors take part in the bit set.
    #[inline]
    pub fn seen_by(&self, data: &[u8], linktype: i32) -> (u64, usize) {
        let mut seen = 0u64;
        let mut mark = |i: Option<&usize>| {
            if let Some(&i) = i {
                if i < 64 {
                    seen |= 1 << i;
                }
            }
        };
        if let Some(ends) = Ends::parse(data, linktype) {
            for m in ends.macs.iter().flatten() {
                mark(self.owner_by_mac.get(m));
            }
            for ip in ends.ips.iter().flatten() {
                mark(self.owner_by_ip.get(ip));
            }
        }
        if seen == 0 {
            (1 << self.default.min(63), self.default)
        } else {
            (seen, seen.trailing_zeros() as usize)
        }
    }

    /// The owner of a frame: exactly one sensor.
    #[inline]
    pub fn owner(&self, data: &[u8], linktype: i32) -> usize {
        self.seen_by(data, linktype).1
    }
}

/// A frame's outermost addresses.
#[derive(Debug, Default, PartialEq, Eq)]
struct Ends {
    macs: [Option<Mac>; 2],
    ips: [Option<IpAddr>; 2],
}

mod field {
    pub const DST_MAC: std::ops::Range<usize> = 0..6;
    pub const SRC_MAC: std::ops::Range<usize> = 6..12;
    pub const ETHERTYPE: usize = 12;
    pub const VLAN_TAG: usize = 4;
    pub const IPV4_SRC: std::ops::Range<usize> = 12..16;
    pub const IPV4_DST: std::ops::Range<usize> = 16..20;
    pub const IPV6_SRC: std::ops::Range<usize> = 8..24;
    pub const IPV6_DST: std::ops::Range<usize> = 24..40;
}

/// pcap link types this rule reads: Ethernet, and raw IP (no MACs).
const LINKTYPE_ETHERNET: i32 = 1;
const LINKTYPE_RAW: [i32; 3] = [101, 12, 14];

impl Ends {
    fn parse(d: &[u8], linktype: i32) -> Option<Ends> {
        let mut ends = Ends::default();
        let ip = if linktype == LINKTYPE_ETHERNET {
            let mac = |r: std::ops::Range<usize>| d.get(r).and_then(|b| <[u8; 6]>::try_from(b).ok()).map(Mac);
            ends.macs = [mac(field::SRC_MAC), mac(field::DST_MAC)];
            let mut off = field::ETHERTYPE;
            let mut et = u16::from_be_bytes(d.get(off..off + 2)?.try_into().ok()?);
            for _ in 0..2 {
                if et == 0x8100 || et == 0x88a8 || et == 0x9100 {
                    off += field::VLAN_TAG;
                    et = u16::from_be_bytes(d.get(off..off + 2)?.try_into().ok()?);
                }
            }
            match et {
                0x0800 | 0x86dd => d.get(off + 2..),
                _ => None,
            }
        } else if LINKTYPE_RAW.contains(&linktype) {
            Some(d)
        } else {
            None
        };
        if let Some(ip) = ip {
            match ip.first().map(|b| b >> 4) {
                Some(4) => {
                    let a = |r: std::ops::Range<usize>| {
                        ip.get(r).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(IpAddr::from)
                    };
                    ends.ips = [a(field::IPV4_SRC), a(field::IPV4_DST)];
                }
                Some(6) => {
                    let a = |r: std::ops::Range<usize>| {
                        ip.get(r).and_then(|b| <[u8; 16]>::try_from(b).ok()).map(IpAddr::from)
                    };
                    ends.ips = [a(field::IPV6_SRC), a(field::IPV6_DST)];
                }
                _ => {}
            }
        }
        Some(ends)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::frames;
    use std::os::unix::fs::PermissionsExt;

    fn rules() -> (tempfile::TempDir, Rules) {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("k");
        std::fs::write(&k, [b'k'; 32]).unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = "[cluster]\nname = \"lab one\"\nkey_file = \"k\"\n\
            [[hypervisor]]\nid = \"h1\"\nmacs = [\"52:54:00:00:00:01\"]\nips = [\"10.0.0.1\"]\n\
            [[hypervisor]]\nid = \"h2\"\nmacs = [\"52:54:00:00:00:02\"]\nips = [\"10.0.0.2\"]\n\
            [[hypervisor]]\nid = \"h3\"\nmacs = [\"52:54:00:00:00:03\"]\nips = [\"10.0.0.3\"]\n";
        let r = Rules::from_str_in(d.path(), Path::new("t.toml"), text).unwrap();
        (d, r)
    }

    const TWO: &str = "[[sensor]]\nid = \"r1\"\nhypervisors = [\"h1\"]\n\
                       [[sensor]]\nid = \"r2\"\nhypervisors = [\"h2\", \"h3\"]\ndefault = true\n";

    fn mac(n: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, n])
    }

    #[test]
    fn each_frame_has_one_owner_whatever_its_direction() {
        let (_d, r) = rules();
        let c = Cluster::from_str(&r, Path::new("cluster.toml"), TWO).unwrap();
        assert_eq!((c.name.as_str(), c.stream().as_str()), ("lab_one", "VMSENTRY_LAB_ONE"));
        let ip = |n: u8| std::net::Ipv4Addr::new(10, 0, 0, n);
        let f = |a: u8, b: u8| frames::udp4(mac(a), mac(b), ip(a), ip(b), 1000, 2000, 18);
        // h1 <-> h2: both racks see it, r1 (first) owns both directions.
        assert_eq!(c.seen_by(&f(1, 2), 1), (0b11, 0));
        assert_eq!(c.seen_by(&f(2, 1), 1), (0b11, 0));
        // h2 <-> h3: only r2.
        assert_eq!(c.seen_by(&f(3, 2), 1), (0b10, 1));
        // Nobody's rack: the default sensor.
        assert_eq!(c.seen_by(&f(7, 8), 1), (0b10, 1));
        // By IP alone (a routed fabric: the MACs are a router's), behind a VLAN tag.
        let mut tagged = frames::udp4(mac(9), mac(8), ip(1), ip(9), 1, 2, 18);
        tagged.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
        assert_eq!(c.seen_by(&tagged, 1), (0b01, 0));
        // Damaged frames still get an owner, and never panic.
        for n in 0..tagged.len() {
            let _ = c.seen_by(&tagged[..n], 1);
        }
        assert_eq!(c.seen_by(&[], 1), (0b10, 1));
    }

    #[test]
    fn bad_cluster_files_are_refused_at_their_place() {
        let (_d, r) = rules();
        let err = |t: &str| Cluster::from_str(&r, Path::new("cluster.toml"), t).unwrap_err().to_string();
        assert_eq!(
            err("[[sensor]]\nid = \"r1\"\nhypervisors = [\"h9\"]\n"),
            "cluster.toml:3:16: hypervisor `h9` is not in the rules' [[hypervisor]] registry"
        );
        assert!(err("[[sensor]]\nid = \"r1\"\nrack = 1\n").starts_with("cluster.toml:3:1: unknown field `rack`"));
        assert_eq!(
            err("[[sensor]]\nid = \"r1\"\nhypervisors = [\"h1\"]\n[[sensor]]\nid = \"r2\"\nhypervisors = [\"h1\"]\n"),
            "cluster.toml:6:16: hypervisor `h1` is already in sensor `r1`'s rack"
        );
        assert_eq!(err(""), "cluster.toml:1:1: no [[sensor]]: name at least one");
    }
}
