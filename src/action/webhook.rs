//! The `webhook` backend: an HTTP(S) POST of the action as JSON, signed with an HMAC of the body.
//!
//! Headers: `Content-Type: application/json`, `Idempotency-Key: ID`, and
//! `X-Vmsentry-Signature: sha256=HEX` where HEX is HMAC-SHA256 of the body
//! with the configured secret. A 2xx answer is success; 408, 429 and 5xx,
//! connection errors and timeouts are retried; any other status is a failure
//! that is not retried.

use super::{Action, ActionSink, SinkError};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookConfig {
    pub url: String,
    /// The HMAC secret (the file's bytes, surrounding whitespace trimmed).
    pub secret: Vec<u8>,
    pub timeout: Duration,
}

impl WebhookConfig {
    /// `backend.webhook.timeout_ms`.
    pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
}

pub struct WebhookSink {
    cfg: WebhookConfig,
    agent: ureq::Agent,
}

const NAME: &str = "webhook";

/// `sha256=` and the hex HMAC-SHA256 of `body` with `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut m = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    m.update(body);
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}

impl WebhookSink {
    pub fn new(cfg: WebhookConfig) -> Self {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(cfg.timeout)).http_status_as_error(false).build().into();
        WebhookSink { cfg, agent }
    }
}

impl ActionSink for WebhookSink {
    fn name(&self) -> &'static str {
        NAME
    }

    fn deliver(&mut self, a: &Action) -> Result<(), SinkError> {
        let body = serde_json::to_vec(a).map_err(|e| SinkError::Permanent { backend: NAME, msg: e.to_string() })?;
        let sig = signature(&self.cfg.secret, &body);
        let res = self
            .agent
            .post(&self.cfg.url)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", &a.id)
            .header("X-Vmsentry-Signature", &sig)
            .send(&body[..]);
        match res {
            Ok(r) => {
                let code = r.status().as_u16();
                match code {
                    200..=299 => Ok(()),
                    408 | 429 | 500..=599 => {
                        Err(SinkError::Temporary { backend: NAME, msg: format!("{} answered {code}", self.cfg.url) })
                    }
                    _ => Err(SinkError::Permanent { backend: NAME, msg: format!("{} answered {code}", self.cfg.url) }),
                }
            }
            Err(e) => Err(SinkError::Temporary { backend: NAME, msg: format!("{}: {e}", self.cfg.url) }),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            super::signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
