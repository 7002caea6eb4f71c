//! Authorization tokens: an orchestrator's signed, expiring, single-use permission for one VM to move to one hypervisor.
//!
//! A token is one line of text:
//!
//! ```text
//! vmsentry-token-v1 vm=fa:16:3e:00:00:01 to=compute-2 expires=1700000100 nonce=5f0c2a9e41d7b3c8 sig=<64 hex>
//! ```
//!
//! `sig = hex(HMAC-SHA256(key, "vmsentry-auth-v1" 0x00 vm 0x00 to 0x00 expires 0x00 nonce))`
//! with the cluster key; `expires` is Unix seconds, compared with the packet
//! time of the move; `to` is the destination's registry id (or its MAC when
//! it is not registered). Tokens are read from the files of
//! `migration.tokens_dir` (one or more per file, `#` starts a comment) when a
//! move is checked. A token is used once: its nonce is remembered, and
//! appended to `used-tokens` in the same directory so a restart remembers it
//! too. A cluster's controllers share their used nonces instead
//! ([`UsedNonces`], kept in JetStream KV by `cluster::control`).

use super::ClusterKey;
use crate::decode::Mac;
use crate::vocab::PacketTime;
use hmac::Mac as _;
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const TOKEN_TAG: &str = "vmsentry-token-v1";
const SIGNED_TAG: &[u8] = b"vmsentry-auth-v1";
/// The file of used nonces, inside the tokens directory.
pub const USED_FILE: &str = "used-tokens";
/// Token files larger than this are skipped.
const MAX_FILE_BYTES: u64 = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub vm: Mac,
    pub to: String,
    pub expires: i64,
    pub nonce: String,
    pub sig: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("not a vmsentry token (it must start with `{TOKEN_TAG}`)")]
    Tag,
    #[error("token field `{0}` is missing or malformed")]
    Field(&'static str),
}

fn message(vm: Mac, to: &str, expires: i64, nonce: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(SIGNED_TAG);
    for part in [vm.to_string().as_str(), to, &expires.to_string(), nonce] {
        m.push(0);
        m.extend_from_slice(part.as_bytes());
    }
    m
}

impl Token {
    /// Makes a signed token.
    pub fn sign(key: &ClusterKey, vm: Mac, to: &str, expires: i64, nonce: &str) -> Token {
        let mut h = key.hmac();
        h.update(&message(vm, to, expires, nonce));
        let sig = hex::encode(h.finalize().into_bytes());
        Token { vm, to: to.to_string(), expires, nonce: nonce.to_string(), sig }
    }

    /// Constant-time check of the signature.
    pub fn verify(&self, key: &ClusterKey) -> bool {
        let Ok(sig) = hex::decode(&self.sig) else { return false };
        let mut h = key.hmac();
        h.update(&message(self.vm, &self.to, self.expires, &self.nonce));
        h.verify_slice(&sig).is_ok()
    }

    pub fn parse(line: &str) -> Result<Token, TokenError> {
        let mut parts = line.split_whitespace();
        if parts.next() != Some(TOKEN_TAG) {
            return Err(TokenError::Tag);
        }
        let (mut vm, mut to, mut expires, mut nonce, mut sig) = (None, None, None, None, None);
        for p in parts {
            let Some((k, v)) = p.split_once('=') else { continue };
            match k {
                "vm" => vm = v.parse::<Mac>().ok(),
                "to" => to = Some(v.to_string()),
                "expires" => expires = v.parse::<i64>().ok(),
                "nonce" => nonce = Some(v.to_string()),
                "sig" => sig = Some(v.to_string()),
                _ => {}
            }
        }
        Ok(Token {
            vm: vm.ok_or(TokenError::Field("vm"))?,
            to: to.filter(|t| !t.is_empty()).ok_or(TokenError::Field("to"))?,
            expires: expires.ok_or(TokenError::Field("expires"))?,
            nonce: nonce.filter(|n| n.len() >= 8).ok_or(TokenError::Field("nonce"))?,
            sig: sig.ok_or(TokenError::Field("sig"))?,
        })
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{TOKEN_TAG} vm={} to={} expires={} nonce={} sig={}",
            self.vm, self.to, self.expires, self.nonce, self.sig
        )
    }
}

/// Why a token presented for a move (the migration gate's case) is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The signature does not verify with the cluster key.
    Forged,
    /// Signed for a VM that is not this one.
    OtherVm,
    /// Signed for another destination.
    OtherHost,
    /// Past its `expires`.
    Expired,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Forged => "token_forged",
            Refusal::OtherVm => "token_other_vm",
            Refusal::OtherHost => "token_other_host",
            Refusal::Expired => "token_expired",
        }
    }
}

impl Token {
    /// Checks a token presented for moving a VM with MACs `vms` to `to` at
    /// Unix second `now_s`: signature first (nothing else of a forged token
    /// is believed), then VM, destination and expiry. Whether its nonce was
    /// used is the store's question ([`consume_nonce`]).
    pub fn check(&self, key: &ClusterKey, vms: &[Mac], to: &str, now_s: i64) -> Result<(), Refusal> {
        if !self.verify(key) {
            return Err(Refusal::Forged);
        }
        if !vms.contains(&self.vm) {
            return Err(Refusal::OtherVm);
        }
        if self.to != to {
            return Err(Refusal::OtherHost);
        }
        if self.expires < now_s {
            return Err(Refusal::Expired);
        }
        Ok(())
    }
}

/// Uses up `nonce` in the used-nonce file `path` (the `used-tokens` format:
/// one nonce per line), safely against other processes doing the same: the
/// file is locked (`flock`, retried until `deadline`), read, and the nonce
/// appended and synced to disk before the lock is released. `Ok(false)`: it
/// was already used.
pub fn consume_nonce(path: &Path, nonce: &str, deadline: std::time::Instant) -> std::io::Result<bool> {
    use rustix::fs::{flock, FlockOperation};
    use std::io::Read;
    if nonce.is_empty() || nonce.contains(char::is_whitespace) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "a nonce is one word"));
    }
    let mut f = std::fs::OpenOptions::new().read(true).append(true).create(true).open(path)?;
    loop {
        match flock(&f, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => break,
            Err(e) if e == rustix::io::Errno::WOULDBLOCK || e == rustix::io::Errno::INTR => {
                if std::time::Instant::now() >= deadline {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("{} stayed locked by another process", path.display()),
                    ));
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
    // The lock goes with the file when it is dropped.
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    if text.lines().any(|l| l.trim() == nonce) {
        return Ok(false);
    }
    // A line cut short by a crash must not swallow this one.
    let sep = if text.is_empty() || text.ends_with('\n') { "" } else { "\n" };
    f.write_all(format!("{sep}{nonce}\n").as_bytes())?;
    f.sync_data()?;
    Ok(true)
}

/// Why a move was or was not authorized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Authorization {
    /// A valid token was found and used up.
    Granted,
    /// No token for this VM and destination.
    Missing,
    /// A token for it was found, but expired.
    Expired,
    /// The only matching tokens were already used.
    Replayed,
    /// A matching token was found, but the shared store of used tokens
    /// could not be asked whether it was used: refused (fail closed).
    Unavailable,
}

impl Authorization {
    pub fn as_str(self) -> &'static str {
        match self {
            Authorization::Granted => "granted",
            Authorization::Missing => "missing",
            Authorization::Expired => "expired",
            Authorization::Replayed => "replayed",
            Authorization::Unavailable => "unavailable",
        }
    }
}

/// What a shared store of used nonces answers when a use of one is claimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Unused until now: used up by this claim.
    Fresh,
    /// Used by this same claim before: the same use decided again (a
    /// standby, or a restarted controller, rebuilding from the stream).
    Again,
    /// Used by another claim: a replay.
    Used,
    /// The store did not answer in time.
    Unavailable,
}

/// Used nonces kept outside this process, where every controller of a
/// cluster sees the same ones (`cluster::control` keeps them in JetStream KV).
pub trait UsedNonces: Send + Sync + std::fmt::Debug {
    /// Uses `nonce` up for `claim` (the identity of the use: the same
    /// wherever the same use is decided), atomically: of two claims raced
    /// on one unused nonce, exactly one is [`Claim::Fresh`].
    fn claim(&self, nonce: &str, claim: &str) -> Claim;
}

/// The tokens directory and the nonces already used.
#[derive(Clone, Debug, Default)]
pub struct TokenStore {
    /// The key tokens are checked with and the directory they are read
    /// from; none: no move is authorized.
    source: Option<(ClusterKey, PathBuf)>,
    used: HashSet<String>,
    /// Set: the used nonces are this shared store's (`used` and the
    /// directory's used-tokens file are not read or written).
    shared: Option<Arc<dyn UsedNonces>>,
}

impl TokenStore {
    /// No tokens directory: every move is `missing` its token.
    pub fn none() -> TokenStore {
        TokenStore::default()
    }

    /// Reads the used nonces of `dir` (the loading step does this once per
    /// load; the store reads the directory's tokens again when a move needs one).
    pub fn open(key: ClusterKey, dir: Option<&Path>) -> TokenStore {
        let mut used = HashSet::new();
        if let Some(d) = dir {
            // The used nonces only grow: allow many more than one token file holds.
            match crate::small_file::read(&d.join(USED_FILE), 64 * MAX_FILE_BYTES) {
                Ok(bytes) => used.extend(
                    String::from_utf8_lossy(&bytes).lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()),
                ),
                Err(crate::small_file::SmallFileError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => eprintln!("vmsentry: {}: {e}; used tokens are not remembered", d.join(USED_FILE).display()),
            }
        }
        TokenStore { source: dir.map(|d| (key, d.to_path_buf())), used, shared: None }
    }

    /// Keeps the used nonces in `shared` instead of here and in the
    /// directory's used-tokens file (a cluster's controllers).
    pub fn with_shared(mut self, shared: Arc<dyn UsedNonces>) -> TokenStore {
        self.used.clear();
        self.shared = Some(shared);
        self
    }

    /// Remembers the nonces another store has used (after a rules reload),
    /// or keeps using its shared store.
    pub fn absorb(&mut self, other: &mut TokenStore) {
        if let Some(s) = other.shared.take() {
            self.used.clear();
            self.shared = Some(s);
        } else if self.shared.is_none() {
            self.used.extend(other.used.drain());
        }
    }

    /// Marks `nonce` used by `claim` (a token the migration gate used up),
    /// here and in the tokens directory's used-tokens file (or the shared
    /// store), so the same token in the directory cannot authorize another
    /// move. `false`: it was used already (or the shared store did not answer).
    pub fn mark_used(&mut self, nonce: &str, claim: &str) -> bool {
        if nonce.is_empty() || nonce.contains(char::is_whitespace) {
            return false;
        }
        if let Some(s) = &self.shared {
            return s.claim(nonce, claim) == Claim::Fresh;
        }
        if !self.used.insert(nonce.to_string()) {
            return false;
        }
        if let Some((_, dir)) = &self.source {
            let appended = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(USED_FILE))
                .and_then(|mut f| writeln!(f, "{nonce}"));
            if let Err(e) = appended {
                eprintln!("vmsentry: cannot record used token in {}: {e} (it stays used until restart)", dir.display());
            }
        }
        true
    }

    /// Looks for a valid, unexpired, unused token for `vm` moving to `to` at
    /// packet time `at`, and uses it up. With a shared store, the use is
    /// claimed as this move (`move <vm> <to> <µs>`), so a controller that
    /// decides the same move again gets its token again, and any other move
    /// finds it used; a store that does not answer refuses the move.
    pub fn authorize(&mut self, vm: Mac, to: &str, at: PacketTime) -> Authorization {
        let Some((key, dir)) = self.source.clone() else { return Authorization::Missing };
        let mut best = Authorization::Missing;
        for t in read_tokens(&dir) {
            if t.vm != vm || t.to != to || !t.verify(&key) {
                continue;
            }
            if t.expires.saturating_mul(1_000_000) < at.as_micros() {
                best = Authorization::Expired;
                continue;
            }
            if let Some(s) = &self.shared {
                match s.claim(&t.nonce, &format!("move {vm} {to} {}", at.as_micros())) {
                    Claim::Fresh | Claim::Again => return Authorization::Granted,
                    Claim::Used => {
                        if best == Authorization::Missing {
                            best = Authorization::Replayed;
                        }
                        continue;
                    }
                    Claim::Unavailable => return Authorization::Unavailable,
                }
            }
            if self.used.contains(&t.nonce) {
                if best == Authorization::Missing {
                    best = Authorization::Replayed;
                }
                continue;
            }
            self.used.insert(t.nonce.clone());
            let appended = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(USED_FILE))
                .and_then(|mut f| writeln!(f, "{}", t.nonce));
            if let Err(e) = appended {
                eprintln!("vmsentry: cannot record used token in {}: {e} (it stays used until restart)", dir.display());
            }
            return Authorization::Granted;
        }
        best
    }
}

/// Every well-formed token line in the directory's files (sorted by name).
fn read_tokens(dir: &Path) -> Vec<Token> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> =
        rd.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.file_name().is_some_and(|n| n != USED_FILE)).collect();
    files.sort();
    // Regular files only, each capped (a FIFO or /dev/zero dropped in is skipped).
    files
        .iter()
        .filter_map(|p| crate::small_file::read(p, MAX_FILE_BYTES).ok())
        .filter_map(|b| String::from_utf8(b).ok())
        .flat_map(|text| text.lines().filter_map(|l| Token::parse(l.trim()).ok()).collect::<Vec<_>>())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ClusterKey {
        ClusterKey::from_bytes(&[b'k'; 32]).unwrap()
    }
    fn vm() -> Mac {
        "fa:16:3e:00:00:01".parse().unwrap()
    }

    #[test]
    fn sign_print_parse_verify_round_trip() {
        let t = Token::sign(&key(), vm(), "compute-2", 1_700_000_100, "0011223344556677");
        let line = t.to_string();
        assert!(line.starts_with(
            "vmsentry-token-v1 vm=fa:16:3e:00:00:01 to=compute-2 expires=1700000100 nonce=0011223344556677 sig="
        ));
        let p = Token::parse(&line).unwrap();
        assert_eq!(p, t);
        assert!(p.verify(&key()));
        // Any change breaks it.
        for bad in [
            Token { to: "compute-3".into(), ..t.clone() },
            Token { expires: t.expires + 1, ..t.clone() },
            Token { nonce: "0011223344556678".into(), ..t.clone() },
            Token { vm: "fa:16:3e:00:00:02".parse().unwrap(), ..t.clone() },
        ] {
            assert!(!bad.verify(&key()));
        }
        assert!(!t.verify(&ClusterKey::from_bytes(&[b'j'; 32]).unwrap()));
        assert_eq!(Token::parse("hello"), Err(TokenError::Tag));
        assert_eq!(Token::parse("vmsentry-token-v1 vm=x"), Err(TokenError::Field("vm")));
    }

    #[test]
    fn a_token_is_used_once_and_only_before_it_expires() {
        let d = tempfile::tempdir().unwrap();
        let t = Token::sign(&key(), vm(), "compute-2", 1_700_000_100, "aaaaaaaaaaaaaaaa");
        std::fs::write(d.path().join("move.token"), format!("# for the test\n{t}\n")).unwrap();
        let at = PacketTime::from_micros(1_700_000_000_000_000);
        let mut s = TokenStore::open(key(), Some(d.path()));
        assert_eq!(s.authorize(vm(), "compute-3", at), Authorization::Missing);
        assert_eq!(s.authorize(vm(), "compute-2", at), Authorization::Granted);
        assert_eq!(s.authorize(vm(), "compute-2", at), Authorization::Replayed);
        // A restart remembers it.
        let mut s = TokenStore::open(key(), Some(d.path()));
        assert_eq!(s.authorize(vm(), "compute-2", at), Authorization::Replayed);
        // A fresh token past its expiry.
        let late = Token::sign(&key(), vm(), "compute-2", 1_600_000_000, "bbbbbbbbbbbbbbbb");
        std::fs::write(d.path().join("late.token"), late.to_string()).unwrap();
        assert_eq!(s.authorize(vm(), "compute-2", at), Authorization::Expired);
        // A forged one is ignored.
        let forged =
            Token { sig: "00".repeat(32), ..Token::sign(&key(), vm(), "compute-2", 1_800_000_000, "cccccccccccccccc") };
        std::fs::write(d.path().join("forged.token"), forged.to_string()).unwrap();
        assert_eq!(s.authorize(vm(), "compute-2", at), Authorization::Expired);
    }

    #[test]
    fn a_presented_token_is_checked_for_vm_host_and_expiry_and_its_nonce_used_once() {
        let t = Token::sign(&key(), vm(), "compute-2", 1_700_000_100, "dddddddddddddddd");
        let other: Mac = "fa:16:3e:00:00:09".parse().unwrap();
        assert_eq!(t.check(&key(), &[other, vm()], "compute-2", 1_700_000_100), Ok(()));
        assert_eq!(t.check(&key(), &[other], "compute-2", 1_700_000_000), Err(Refusal::OtherVm));
        assert_eq!(t.check(&key(), &[vm()], "compute-3", 1_700_000_000), Err(Refusal::OtherHost));
        assert_eq!(t.check(&key(), &[vm()], "compute-2", 1_700_000_101), Err(Refusal::Expired));
        let forged = Token { to: "compute-3".into(), ..t.clone() };
        assert_eq!(forged.check(&key(), &[vm()], "compute-3", 0), Err(Refusal::Forged));

        let d = tempfile::tempdir().unwrap();
        let used = d.path().join(USED_FILE);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        // A file left with a torn last line by a crash.
        std::fs::write(&used, "aaaaaaaaaaaaaaaa\nbbbb").unwrap();
        assert!(consume_nonce(&used, &t.nonce, deadline).unwrap());
        assert!(!consume_nonce(&used, &t.nonce, deadline).unwrap());
        assert!(!consume_nonce(&used, "aaaaaaaaaaaaaaaa", deadline).unwrap());
        assert_eq!(std::fs::read_to_string(&used).unwrap(), "aaaaaaaaaaaaaaaa\nbbbb\ndddddddddddddddd\n");
        // The sensor's store reads the same file the same way.
        std::fs::write(d.path().join("t.token"), t.to_string()).unwrap();
        let mut s = TokenStore::open(key(), Some(d.path()));
        assert_eq!(s.authorize(vm(), "compute-2", PacketTime::from_micros(0)), Authorization::Replayed);
        // Held by someone else past the deadline: an error, not a wait forever.
        let holder = std::fs::File::open(&used).unwrap();
        rustix::fs::flock(&holder, rustix::fs::FlockOperation::LockExclusive).unwrap();
        let e = consume_nonce(&used, "eeeeeeeeeeeeeeee", std::time::Instant::now()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    }

    /// A shared store as a cluster's KV keeps it: a map from nonce to claim.
    #[derive(Debug, Default)]
    struct Shared {
        map: std::sync::Mutex<std::collections::HashMap<String, String>>,
        down: std::sync::atomic::AtomicBool,
    }

    impl UsedNonces for Shared {
        fn claim(&self, nonce: &str, claim: &str) -> Claim {
            if self.down.load(std::sync::atomic::Ordering::Relaxed) {
                return Claim::Unavailable;
            }
            let mut m = self.map.lock().unwrap();
            match m.get(nonce) {
                None => {
                    m.insert(nonce.into(), claim.into());
                    Claim::Fresh
                }
                Some(c) if c == claim => Claim::Again,
                Some(_) => Claim::Used,
            }
        }
    }

    #[test]
    fn a_shared_store_gives_a_token_to_one_move_again_and_again_and_refuses_when_it_does_not_answer() {
        let d = tempfile::tempdir().unwrap();
        let t = Token::sign(&key(), vm(), "compute-2", 1_700_000_100, "ffffffffffffffff");
        std::fs::write(d.path().join("t.token"), t.to_string()).unwrap();
        // A used-tokens file (a single process's) is not what a controller reads.
        std::fs::write(d.path().join(USED_FILE), "ffffffffffffffff\n").unwrap();
        let shared = Arc::new(Shared::default());
        let open = || TokenStore::open(key(), Some(d.path())).with_shared(shared.clone());
        let (at, later) =
            (PacketTime::from_micros(1_700_000_000_000_000), PacketTime::from_micros(1_700_000_050_000_000));
        let (mut a, mut b) = (open(), open());
        assert_eq!(a.authorize(vm(), "compute-2", at), Authorization::Granted);
        assert_eq!(shared.map.lock().unwrap()["ffffffffffffffff"], "move fa:16:3e:00:00:01 compute-2 1700000000000000");
        // Another controller deciding the same move: its token still.
        assert_eq!(b.authorize(vm(), "compute-2", at), Authorization::Granted);
        // Another move with it, on either: a replay.
        assert_eq!(b.authorize(vm(), "compute-2", later), Authorization::Replayed);
        assert_eq!(a.authorize(vm(), "compute-2", later), Authorization::Replayed);
        // Nothing was written to the directory.
        assert_eq!(std::fs::read_to_string(d.path().join(USED_FILE)).unwrap(), "ffffffffffffffff\n");
        // A reload keeps the shared store.
        let mut reloaded = TokenStore::open(key(), Some(d.path()));
        reloaded.absorb(&mut a);
        assert_eq!(reloaded.authorize(vm(), "compute-2", later), Authorization::Replayed);
        // A gate decision's use is a claim too.
        assert!(reloaded.mark_used("1111111111111111", "gate compute-2 5"));
        assert!(!b.mark_used("1111111111111111", "gate compute-2 6"));
        // Unreachable: a matching token is not granted (fail closed); no token: still missing.
        let fresh = Token::sign(&key(), vm(), "compute-3", 1_700_000_100, "2222222222222222");
        std::fs::write(d.path().join("u.token"), fresh.to_string()).unwrap();
        shared.down.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(b.authorize(vm(), "compute-3", at), Authorization::Unavailable);
        assert_eq!(b.authorize(vm(), "compute-4", at), Authorization::Missing);
        shared.down.store(false, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(b.authorize(vm(), "compute-3", at), Authorization::Granted);
    }
}
