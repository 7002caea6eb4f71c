//! Used tokens: the nonces of the migration tokens a cluster's controllers used, one JetStream KV key each, claimed atomically, so no controller accepts a token another one used.
//!
//! Bucket `vmsentry_<cluster>_tokens`: key the nonce ([`super::nats::kv_key`]),
//! value the claim, the use's identity (`move <vm> <to> <µs>` for a move's
//! token, `gate <host> <µs>` for a token an allowed gate decision used).
//! A claim creates the key, which JetStream does only if it has no value
//! yet: of two controllers that race for one nonce, one creates it. The
//! other reads the value: the same claim, or a gate decision and the move
//! it pairs with ([`crate::trust::token::Pairing`]), means it decided the
//! same use (a hot standby, or a restarted controller, rebuilding from the
//! stream), so the token is still granted to that use; another claim is a
//! replay. Keys never expire (a token may be valid for years): a bucket
//! with a time to live is refused at start ([`super::nats::tokens_bucket`]).
//!
//! A claim waits at most [`CLAIM_WAIT`] for KV (retrying errors
//! meanwhile); then it counts as unavailable and the move is refused (fail
//! closed). The merge waits for it, so after a claim that got no answer KV
//! counts as down for another [`CLAIM_WAIT`]: claims meanwhile are refused
//! at once, and the first one after it asks KV again (a probe, with the
//! whole wait). With KV down the merge so waits at most half the time, and
//! only when a move with a token is decided; the wait is counted in
//! `vmsentry_cluster_token_claim_wait_seconds_total`.

use super::nats::{kv_key, BlockingKv, Created, KvError};
use crate::trust::token::{Claim, UsedNonces};
use prometheus::{Counter, IntCounterVec};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the merge waits for KV to answer one claim.
pub const CLAIM_WAIT: Duration = Duration::from_secs(10);

/// An atomic create in a KV bucket (what a claim asks of KV).
pub trait CreateOnce: Send + Sync {
    /// Stores `value` under `key` unless it has one, trying until `deadline`.
    fn create(&self, key: &str, value: &[u8], deadline: Instant) -> Result<Created, KvError>;
}

impl CreateOnce for BlockingKv {
    fn create(&self, key: &str, value: &[u8], deadline: Instant) -> Result<Created, KvError> {
        BlockingKv::create(self, key, value, deadline)
    }
}

/// The controllers' used nonces in JetStream KV.
pub struct KvNonces {
    kv: Box<dyn CreateOnce>,
    /// `vmsentry_cluster_token_claims_total{outcome}`.
    claims: IntCounterVec,
    /// `vmsentry_cluster_token_claim_wait_seconds_total`.
    waited: Counter,
    wait: Duration,
    /// After a claim KV did not answer: until when it counts as down.
    down_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for KvNonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KvNonces")
    }
}

impl KvNonces {
    /// `wait`: how long one claim waits for KV ([`CLAIM_WAIT`]), and how
    /// long KV then counts as down when it did not answer.
    pub fn new(kv: impl CreateOnce + 'static, claims: IntCounterVec, waited: Counter, wait: Duration) -> KvNonces {
        KvNonces { kv: Box::new(kv), claims, waited, wait, down_until: Mutex::new(None) }
    }

    fn down_until(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.down_until.lock().unwrap_or_else(|p| p.into_inner())
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
    fn claim_as(&self, nonce: &str, claim: &str, same: &dyn Fn(&str) -> bool) -> Claim {
        // Copied out: the lock is not held while KV is asked.
        let down_until = *self.down_until();
        let c = match down_until {
            Some(until) if Instant::now() < until => {
                eprintln!(
                    "vmsentry: control: the used tokens in NATS did not answer a moment ago (asked again in {:.1} s): {claim} (nonce {nonce}) is not authorized",
                    until.saturating_duration_since(Instant::now()).as_secs_f64()
                );
                Claim::Unavailable
            }
            _ => self.ask(nonce, claim, same),
        };
        self.claims.with_label_values(&[outcome(c)]).inc();
        c
    }
}

impl KvNonces {
    fn ask(&self, nonce: &str, claim: &str, same: &dyn Fn(&str) -> bool) -> Claim {
        let start = Instant::now();
        let r = self.kv.create(&kv_key(nonce), claim.as_bytes(), start + self.wait);
        let now = Instant::now();
        self.waited.inc_by(now.saturating_duration_since(start).as_secs_f64());
        *self.down_until() = r.is_err().then_some(now + self.wait);
        match r {
            Ok(Created::New) => Claim::Fresh,
            Ok(Created::Exists(v)) if v == claim.as_bytes() => Claim::Again,
            Ok(Created::Exists(v)) if std::str::from_utf8(&v).is_ok_and(same) => Claim::Again,
            Ok(Created::Exists(v)) => {
                eprintln!(
                    "vmsentry: control: token nonce {nonce} was used already ({}): not for {claim}",
                    String::from_utf8_lossy(&v)
                );
                Claim::Used
            }
            Err(e) => {
                eprintln!(
                    "vmsentry: control: the used tokens in NATS did not answer for nonce {nonce} ({e}): {claim} is not authorized; NATS counts as down for {} s",
                    self.wait.as_secs_f64()
                );
                Claim::Unavailable
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A KV that, while `down`, answers nothing until the deadline; else creates in a map.
    #[derive(Default)]
    struct Fake {
        down: AtomicBool,
        asked: AtomicUsize,
        map: Mutex<std::collections::HashMap<String, Vec<u8>>>,
    }

    impl CreateOnce for Arc<Fake> {
        fn create(&self, key: &str, value: &[u8], deadline: Instant) -> Result<Created, KvError> {
            self.asked.fetch_add(1, Ordering::Relaxed);
            if self.down.load(Ordering::Relaxed) {
                std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                return Err(KvError::Timeout(Duration::ZERO));
            }
            let mut m = self.map.lock().unwrap();
            match m.get(key) {
                Some(v) => Ok(Created::Exists(v.clone())),
                None => {
                    m.insert(key.to_string(), value.to_vec());
                    Ok(Created::New)
                }
            }
        }
    }

    #[test]
    fn after_a_claim_kv_did_not_answer_claims_are_refused_at_once_until_one_asks_again() {
        let fake = Arc::new(Fake::default());
        let claims = IntCounterVec::new(prometheus::Opts::new("c", "c"), &["outcome"]).unwrap();
        let waited = Counter::new("w", "w").unwrap();
        let wait = Duration::from_millis(300);
        let st = KvNonces::new(fake.clone(), claims.clone(), waited.clone(), wait);
        assert_eq!(st.claim("00000000000000aa", "move m h 1"), Claim::Fresh);
        assert_eq!(st.claim("00000000000000aa", "move m h 1"), Claim::Again);
        assert_eq!(st.claim_as("00000000000000aa", "gate h 0", &|v| v == "move m h 1"), Claim::Again);
        assert_eq!(st.claim_as("00000000000000aa", "gate h 0", &|v| v == "move m h 2"), Claim::Used);
        assert!(waited.get() < 0.1, "{}", waited.get());
        fake.down.store(true, Ordering::Relaxed);
        // The first claim waits the whole wait ...
        let t = Instant::now();
        assert_eq!(st.claim("00000000000000bb", "move m h 2"), Claim::Unavailable);
        assert!(t.elapsed() >= wait, "{:?}", t.elapsed());
        assert!(waited.get() >= 0.3 && waited.get() < 0.5, "{}", waited.get());
        // ... the next ones, within a wait after it, not at all (KV is not asked).
        let t = Instant::now();
        for _ in 0..5 {
            assert_eq!(st.claim("00000000000000cc", "move m h 3"), Claim::Unavailable);
        }
        assert!(t.elapsed() < Duration::from_millis(100), "{:?}", t.elapsed());
        assert_eq!(fake.asked.load(Ordering::Relaxed), 5);
        // Then one probe asks again: still down, so it waits, and KV counts as down again.
        std::thread::sleep(wait);
        assert_eq!(st.claim("00000000000000cc", "move m h 3"), Claim::Unavailable);
        assert_eq!(fake.asked.load(Ordering::Relaxed), 6);
        assert_eq!(st.claim("00000000000000cc", "move m h 3"), Claim::Unavailable);
        assert_eq!(fake.asked.load(Ordering::Relaxed), 6);
        // Back: the probe after the wait is answered, and the claims after it too.
        fake.down.store(false, Ordering::Relaxed);
        std::thread::sleep(wait);
        assert_eq!(st.claim("00000000000000cc", "move m h 3"), Claim::Fresh);
        assert_eq!(st.claim("00000000000000dd", "move m h 4"), Claim::Fresh);
        assert_eq!(fake.asked.load(Ordering::Relaxed), 8);
        let count = |o: &str| claims.with_label_values(&[o]).get();
        assert_eq!((count("fresh"), count("again"), count("used"), count("unavailable")), (3, 2, 1, 8));
        assert!(waited.get() >= 0.6 && waited.get() < 0.9, "{}", waited.get());
    }
}
