//! NATS: the async-nats client on a tokio runtime thread of its own, and the JetStream stream and buckets the cluster uses.
//!
//! The pipeline's threads never run async code: they cross to this runtime
//! through bounded channels (or block on it from threads that may wait:
//! the dispatcher, and the controller's merge when it claims a move's
//! token in KV, [`BlockingKv`]), so a slow or absent NATS server can delay
//! a sensor's publishing, a controller's input, its actions and its merge
//! (a token claim waits up to [`super::tokens::CLAIM_WAIT`], and then
//! claims are refused at once for as long again), never a capture.

use super::Cluster;
use async_nats::jetstream;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot start the NATS runtime: {0}")]
    Runtime(std::io::Error),
    #[error("NATS at {url}: {msg}")]
    Connect { url: String, msg: String },
    #[error("JetStream: {0}")]
    JetStream(String),
    #[error(
        "KV bucket {bucket} forgets its keys after {max_age:?} (its stream KV_{bucket} has max_age set): used tokens \
         would be forgotten and could be replayed; recreate it without a time to live (the controller makes it so when \
         it is missing), or copy its keys to a new bucket without one"
    )]
    TokensExpire { bucket: String, max_age: Duration },
    #[error(
        "KV bucket {bucket} drops its oldest keys when full ({limit} with discard policy old on its stream \
         KV_{bucket}): used tokens would be forgotten and could be replayed; remove the limit, set discard \
         policy new (a full bucket then refuses claims: moves are not authorized), or copy its keys to a new bucket"
    )]
    TokensDropped { bucket: String, limit: String },
}

/// A connection and its runtime.
pub struct Nats {
    pub rt: tokio::runtime::Runtime,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
}

/// How long a JetStream request may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

impl Nats {
    /// Connects to `url`; with `wait`, keeps trying until a server answers
    /// (a sensor starts before NATS is up and buffers meanwhile).
    pub fn connect(url: &str, name: &str, wait: bool) -> Result<Nats, NatsError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("vmsentry-nats")
            .enable_all()
            .build()
            .map_err(NatsError::Runtime)?;
        let opts = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(3))
            .max_reconnects(None)
            // The first server given is the one used while it is up (tests rely on it).
            .retain_servers_order()
            .reconnect_delay_callback(reconnect_delay);
        let opts = if wait { opts.retry_on_initial_connect() } else { opts };
        // A cluster's servers, comma-separated: any of them will do.
        let servers: Vec<String> = url.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        let client = rt
            .block_on(opts.connect(servers))
            .map_err(|e| NatsError::Connect { url: url.to_string(), msg: e.to_string() })?;
        // The context spawns its acker task: inside the runtime.
        let _in_rt = rt.enter();
        let mut js = jetstream::new(client.clone());
        js.set_timeout(REQUEST_TIMEOUT);
        Ok(Nats { rt, client, js })
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

/// The pause before connect attempt `n` (counted from 1 since the last
/// connection): none before the first (a sensor's first windows wait for
/// it: it was 200 ms, the p99 of the bench's delay), then 100 ms doubling to 2 s.
pub fn reconnect_delay(n: usize) -> Duration {
    match n {
        0 | 1 => Duration::ZERO,
        n => Duration::from_millis(2u64.saturating_pow(n as u32 - 2).saturating_mul(100).min(2_000)),
    }
}

/// The partials stream (created if missing; an existing one is used as it is).
pub async fn partials_stream(js: &jetstream::Context, c: &Cluster) -> Result<jetstream::stream::Stream, NatsError> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: c.stream(),
        subjects: vec![c.subjects()],
        storage: jetstream::stream::StorageType::File,
        max_age: c.retention,
        duplicate_window: Duration::from_secs(120),
        num_replicas: c.replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| NatsError::JetStream(format!("stream {}: {e}", c.stream())))
}

/// A KV bucket (created if missing).
pub async fn bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<jetstream::kv::Store, NatsError> {
    bucket_made(js, name, max_age, replicas).await.map(|(s, _)| s)
}

/// The used-tokens bucket: its keys must never expire, so one that exists
/// with a time to live ([`NatsError::TokensExpire`]) or that drops its
/// oldest keys when full ([`NatsError::TokensDropped`]) is refused. `true`
/// with it: it was missing and was made now, empty.
pub async fn tokens_bucket(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> Result<(jetstream::kv::Store, bool), NatsError> {
    let (s, made) = bucket_made(js, name, Duration::ZERO, replicas).await?;
    let info = s.stream.get_info().await.map_err(|e| NatsError::JetStream(format!("bucket {name}: {e}")))?;
    let c = &info.config;
    if !c.max_age.is_zero() {
        return Err(NatsError::TokensExpire { bucket: name.to_string(), max_age: c.max_age });
    }
    if c.discard == jetstream::stream::DiscardPolicy::Old {
        let limit = [("max_msgs", c.max_messages), ("max_bytes", c.max_bytes)]
            .into_iter()
            .find(|(_, n)| *n > 0)
            .map(|(what, n)| format!("{what} = {n}"));
        if let Some(limit) = limit {
            return Err(NatsError::TokensDropped { bucket: name.to_string(), limit });
        }
    }
    // Made now only if it holds nothing: a bucket that could not be read at
    // first but was there (the create of the same stream succeeds) is not new.
    Ok((s, made && info.state.messages == 0))
}

/// A KV bucket, and whether this call made it.
async fn bucket_made(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<(jetstream::kv::Store, bool), NatsError> {
    if let Ok(s) = js.get_key_value(name).await {
        return Ok((s, false));
    }
    // The bucket's stream as async-nats's `create_key_value` would make it;
    // made here because that call first asks for the account's info, whose
    // answer from a 2.9 server this client does not parse.
    let cfg = jetstream::stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        duplicate_window: max_age.min(Duration::from_secs(120)),
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        num_replicas: replicas,
        ..Default::default()
    };
    let made = match js.create_stream(cfg).await {
        Ok(_) => true,
        Err(e) => {
            // Another controller may have made it meanwhile.
            if js.get_key_value(name).await.is_err() {
                return Err(NatsError::JetStream(format!("bucket {name}: {e}")));
            }
            false
        }
    };
    let s = js.get_key_value(name).await.map_err(|e| NatsError::JetStream(format!("bucket {name}: {e}")))?;
    Ok((s, made))
}

/// A KV bucket used from the pipeline's threads (the dispatcher, the
/// merge): each call blocks on the runtime for at most its timeout.
#[derive(Clone)]
pub struct BlockingKv {
    kv: jetstream::kv::Store,
    handle: tokio::runtime::Handle,
}

/// What an atomic create found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    /// The key is new, with the value given.
    New,
    /// The key was there already, with this value.
    Exists(Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Nats(String),
}

impl BlockingKv {
    pub fn new(kv: jetstream::kv::Store, handle: tokio::runtime::Handle) -> BlockingKv {
        BlockingKv { kv, handle }
    }

    fn within<T, E: std::fmt::Display>(
        &self,
        timeout: Duration,
        f: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, KvError> {
        match self.handle.block_on(async { tokio::time::timeout(timeout, f).await }) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(KvError::Nats(e.to_string())),
            Err(_) => Err(KvError::Timeout(timeout)),
        }
    }

    pub fn get(&self, key: &str, timeout: Duration) -> Result<Option<Vec<u8>>, KvError> {
        self.within(timeout, self.kv.get(key)).map(|v| v.map(|b| b.to_vec()))
    }

    pub fn put(&self, key: &str, value: &[u8], timeout: Duration) -> Result<(), KvError> {
        self.within(timeout, self.kv.put(key, value.to_vec().into())).map(|_| ())
    }

    /// Creates `key` with `value` unless it exists (atomically: JetStream
    /// stores it only if the key has no value yet), retried on errors until
    /// `deadline`. A create whose answer was lost and that is retried finds
    /// its own value.
    pub fn create(&self, key: &str, value: &[u8], deadline: Instant) -> Result<Created, KvError> {
        use jetstream::kv::CreateErrorKind;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(KvError::Timeout(Duration::ZERO));
            }
            let r = self.handle.block_on(async {
                tokio::time::timeout(left, async {
                    match self.kv.create(key, value.to_vec().into()).await {
                        Ok(_) => Ok(Created::New),
                        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => match self.kv.get(key).await {
                            Ok(Some(v)) => Ok(Created::Exists(v.to_vec())),
                            Ok(None) => Err(KvError::Nats(format!("{key} exists but has no value"))),
                            Err(e) => Err(KvError::Nats(e.to_string())),
                        },
                        Err(e) => Err(KvError::Nats(e.to_string())),
                    }
                })
                .await
            });
            match r {
                Ok(Ok(c)) => return Ok(c),
                Ok(Err(e)) if Instant::now() + RETRY_PAUSE >= deadline => return Err(e),
                Ok(Err(_)) => std::thread::sleep(RETRY_PAUSE),
                Err(_) => return Err(KvError::Timeout(left)),
            }
        }
    }
}

/// Between tries of a KV request that failed.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// A KV key for any text: kept when it is letters, digits, `-` and `_`
/// (nonces, action ids), else `=` and its bytes in hex (so two texts never
/// share a key).
pub fn kv_key(text: &str) -> String {
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        text.to_string()
    } else {
        format!("={}", hex::encode(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_connect_attempt_does_not_wait_and_later_ones_back_off() {
        let ms = |n| reconnect_delay(n).as_millis();
        assert_eq!([ms(0), ms(1), ms(2), ms(3), ms(4), ms(6), ms(60)], [0, 0, 100, 200, 400, 1600, 2000]);
    }

    #[test]
    fn kv_keys_keep_plain_ids_and_never_share_one() {
        assert_eq!(kv_key("0000000000000106"), "0000000000000106");
        assert_eq!(kv_key("1700000040000000-1"), "1700000040000000-1");
        assert_eq!(kv_key("a.b"), "=612e62");
        assert_eq!(kv_key(""), "=");
        assert_ne!(kv_key("a.b"), kv_key("a_b"));
    }
}
