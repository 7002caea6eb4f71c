//! Used tokens: the nonces of the migration tokens a cluster's controllers used, one JetStream KV key each, claimed atomically, so no controller accepts a token another one used.
//!
//! Bucket `vmsentry_<cluster>_tokens`: key the nonce ([`super::nats::kv_key`]),
//! value the claim, the use's identity (`move <vm> <to> <µs>` for a move's
//! token, `gate <host> <µs>` for a token an allowed gate decision used).
//! A claim creates the key, which JetStream does only if it has no value
//! yet: of two controllers that race for one nonce, one creates it. The
//! other reads the value: the same claim means it decided the same use (a
//! hot standby, or a restarted controller, rebuilding from the stream), so
//! the token is still granted to that use; another claim is a replay. Keys
//! never expire (a token may be valid for years). A claim waits at most
//! [`CLAIM_WAIT`] for KV (retrying errors meanwhile); then it counts as
//! unavailable and the move is refused (fail closed).

use super::nats::{kv_key, BlockingKv, Created};
use crate::trust::token::{Claim, UsedNonces};
use prometheus::IntCounterVec;
use std::time::{Duration, Instant};

/// How long the merge waits for KV to answer one claim.
pub const CLAIM_WAIT: Duration = Duration::from_secs(10);

/// The controllers' used nonces in JetStream KV.
pub struct KvNonces {
    kv: BlockingKv,
    /// `vmsentry_cluster_token_claims_total{outcome}`.
    claims: IntCounterVec,
    wait: Duration,
}

impl std::fmt::Debug for KvNonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KvNonces")
    }
}

impl KvNonces {
    pub fn new(kv: BlockingKv, claims: IntCounterVec, wait: Duration) -> KvNonces {
        KvNonces { kv, claims, wait }
    }
}

pub fn outcome(c: Claim) -> &'static str {
    match c {
        Claim::Fresh => "fresh",
        Claim::Again => "again",
        Claim::Used => "used",
        Claim::Unavailable => "unavailable",
    }
}

impl UsedNonces for KvNonces {
    fn claim(&self, nonce: &str, claim: &str) -> Claim {
        let c = match self.kv.create(&kv_key(nonce), claim.as_bytes(), Instant::now() + self.wait) {
            Ok(Created::New) => Claim::Fresh,
            Ok(Created::Exists(v)) if v == claim.as_bytes() => Claim::Again,
            Ok(Created::Exists(v)) => {
                eprintln!(
                    "vmsentry: control: token nonce {nonce} was used already ({}): not for {claim}",
                    String::from_utf8_lossy(&v)
                );
                Claim::Used
            }
            Err(e) => {
                eprintln!(
                    "vmsentry: control: the used tokens in NATS did not answer for nonce {nonce} ({e}): {claim} is not authorized"
                );
                Claim::Unavailable
            }
        };
        self.claims.with_label_values(&[outcome(c)]).inc();
        c
    }
}
