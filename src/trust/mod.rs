//! Trust: the cluster key, hypervisor signatures (HMAC-SHA256 bound to a MAC), and the signed registry.
//!
//! The second paper binds a hypervisor to its MAC with a plain hash. An
//! unkeyed hash of a MAC can be computed by anyone who sees the MAC, so it
//! proves nothing; vmsentry uses an HMAC keyed with a cluster secret instead:
//!
//! `signature = hex(HMAC-SHA256(key, "vmsentry-hv-v1" 0x00 cluster 0x00 id 0x00 mac))`
//!
//! and verifies it in constant time.

pub mod token;

use crate::decode::Mac;
use crate::small_file::{self, SmallFileError};
use crate::vocab::HypervisorEntry;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use std::fmt;
use std::path::{Path, PathBuf};

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// The domain-separation tag of signature format version 1.
pub const SIGNATURE_TAG: &[u8] = b"vmsentry-hv-v1";
/// A key shorter than this is refused.
pub const MIN_KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} holds {len} bytes after trimming whitespace; at least {MIN_KEY_BYTES} are needed (e.g. `head -c 32 /dev/urandom | xxd -p -c 64 > FILE`)")]
    TooShort { path: PathBuf, len: usize },
    #[error("key file {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    /// A directory, a FIFO, a device, or over the size cap.
    #[error("key file {path} {why}")]
    Unusable { path: PathBuf, why: SmallFileError },
}

/// The cluster's secret. `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey(Vec<u8>);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey({} bytes)", self.0.len())
    }
}

impl ClusterKey {
    /// Loads a key file: refuses what is not a regular file (before its
    /// mode is looked at), one readable by group or others, one over
    /// [`small_file::MAX_SECRET_BYTES`], and one shorter than
    /// [`MIN_KEY_BYTES`] after trimming surrounding whitespace. The file's
    /// bytes themselves are the key (a hex text is not decoded).
    pub fn load(path: &Path) -> Result<ClusterKey, KeyError> {
        let fail = |e: SmallFileError| match e {
            SmallFileError::Io(source) => KeyError::Read { path: path.to_path_buf(), source },
            why => KeyError::Unusable { path: path.to_path_buf(), why },
        };
        let (file, meta) = small_file::open(path).map_err(fail)?;
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o044 != 0 {
                return Err(KeyError::Permissions { path: path.to_path_buf(), mode });
            }
        }
        let bytes = small_file::read_open(file, small_file::MAX_SECRET_BYTES).map_err(fail)?;
        Self::from_bytes(&bytes).map_err(|len| KeyError::TooShort { path: path.to_path_buf(), len })
    }

    /// Trims surrounding ASCII whitespace; `Err(len)` when too short.
    pub fn from_bytes(bytes: &[u8]) -> Result<ClusterKey, usize> {
        let t = bytes.trim_ascii();
        if t.len() < MIN_KEY_BYTES {
            return Err(t.len());
        }
        Ok(ClusterKey(t.to_vec()))
    }

    /// A fresh HMAC-SHA256 keyed with the cluster key.
    pub(crate) fn hmac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        match HmacSha256::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        }
    }

    fn mac_for(&self, cluster: &str, id: &str, mac: Mac) -> HmacSha256 {
        let mut m = self.hmac();
        m.update(SIGNATURE_TAG);
        m.update(&[0]);
        m.update(cluster.as_bytes());
        m.update(&[0]);
        m.update(id.as_bytes());
        m.update(&[0]);
        m.update(mac.to_string().as_bytes());
        m
    }

    /// The signature of hypervisor `id` with `mac` in `cluster`, lowercase hex.
    pub fn sign(&self, cluster: &str, id: &str, mac: Mac) -> String {
        hex::encode(self.mac_for(cluster, id, mac).finalize().into_bytes())
    }

    /// Constant-time check of a hex signature.
    pub fn verify(&self, cluster: &str, id: &str, mac: Mac, signature_hex: &str) -> bool {
        let Ok(sig) = hex::decode(signature_hex) else {
            return false;
        };
        self.mac_for(cluster, id, mac).verify_slice(&sig).is_ok()
    }
}

/// Whether a hypervisor is signed, per the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The signature verifies for the MAC.
    Valid,
    /// Registered, but no signature or one that does not verify.
    Invalid,
    /// Not in the registry.
    Unknown,
}

impl Verdict {
    pub fn is_signed(self) -> bool {
        self == Verdict::Valid
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Invalid => "invalid",
            Verdict::Unknown => "unknown",
        }
    }
}

/// The hypervisors of the rules with their signatures checked once, at load.
#[derive(Clone, Debug)]
pub struct Registry {
    entries: Vec<RegistryEntry>,
}

#[derive(Clone, Debug)]
pub struct RegistryEntry {
    pub id: String,
    pub ips: Vec<std::net::IpAddr>,
    /// Each registered MAC with whether the signature verifies for it.
    pub macs: Vec<(Mac, bool)>,
}

impl RegistryEntry {
    /// Signed when the signature verifies for at least one registered MAC.
    /// (Until the wire names the MAC a hypervisor uses, this is the verdict.)
    pub fn verdict(&self) -> Verdict {
        if self.macs.iter().any(|&(_, ok)| ok) {
            Verdict::Valid
        } else {
            Verdict::Invalid
        }
    }

    /// The verdict for traffic that shows this hypervisor with `mac`.
    pub fn verdict_for_mac(&self, mac: Mac) -> Verdict {
        match self.macs.iter().find(|(m, _)| *m == mac) {
            Some(&(_, true)) => Verdict::Valid,
            _ => Verdict::Invalid,
        }
    }
}

impl Registry {
    pub fn build(key: &ClusterKey, cluster: &str, hypervisors: &[HypervisorEntry]) -> Registry {
        let entries = hypervisors
            .iter()
            .map(|h| RegistryEntry {
                id: h.id.clone(),
                ips: h.ips.clone(),
                macs: h
                    .macs
                    .iter()
                    .map(|&m| {
                        let ok = h.signature.as_deref().is_some_and(|s| key.verify(cluster, &h.id, m, s));
                        (m, ok)
                    })
                    .collect(),
            })
            .collect();
        Registry { entries }
    }

    /// By index into the rules' hypervisor list.
    pub fn get(&self, index: usize) -> Option<&RegistryEntry> {
        self.entries.get(index)
    }

    /// The index of the hypervisor with this id.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.entries().iter().position(|e| e.id == id)
    }

    pub fn entries(&self) -> &[RegistryEntry] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ClusterKey {
        ClusterKey::from_bytes(b"  0123456789abcdef0123456789abcdef\n").unwrap()
    }

    #[test]
    fn signature_is_hmac_over_the_documented_message() {
        let mac: Mac = "52:54:00:AA:00:01".parse().unwrap();
        // Independent computation of the documented message.
        let mut m = HmacSha256::new_from_slice(b"0123456789abcdef0123456789abcdef").unwrap();
        m.update(b"vmsentry-hv-v1\0lab\0compute-1\x0052:54:00:aa:00:01");
        let expected = hex::encode(m.finalize().into_bytes());
        let got = key().sign("lab", "compute-1", mac);
        assert_eq!(got, expected);
        assert_eq!(got.len(), 64);
        assert!(key().verify("lab", "compute-1", mac, &got));
    }

    #[test]
    fn signature_binds_cluster_id_and_mac() {
        let mac: Mac = "52:54:00:aa:00:01".parse().unwrap();
        let other: Mac = "52:54:00:aa:00:02".parse().unwrap();
        let sig = key().sign("lab", "compute-1", mac);
        assert!(!key().verify("lab", "compute-1", other, &sig));
        assert!(!key().verify("lab", "compute-2", mac, &sig));
        assert!(!key().verify("prod", "compute-1", mac, &sig));
        assert!(!key().verify("lab", "compute-1", mac, "zz"));
        let other_key = ClusterKey::from_bytes(&[7u8; 32]).unwrap();
        assert!(!other_key.verify("lab", "compute-1", mac, &sig));
    }

    #[test]
    fn short_keys_are_refused() {
        assert_eq!(ClusterKey::from_bytes(b"  short  \n"), Err(5));
        assert!(ClusterKey::from_bytes(&[b'x'; 31]).is_err());
        assert!(ClusterKey::from_bytes(&[b'x'; 32]).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn group_readable_key_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, [b'k'; 40]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = ClusterKey::load(&p).unwrap_err();
        assert!(matches!(e, KeyError::Permissions { mode: 0o640, .. }), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(ClusterKey::load(&p).is_ok());
    }
}
