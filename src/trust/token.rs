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
use std::collections::HashMap;
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
    /// on one unused nonce, exactly one is [`Claim::Fresh`]. A nonce used
    /// already is [`Claim::Again`] when its claim is `claim` or one `same`
    /// says names this use too (a gate decision and the move it approved,
    /// seen in either order: [`Pairing`]), else [`Claim::Used`]. A store
    /// that cannot answer says [`Claim::Unavailable`] (never `Fresh`).
    fn claim_as(&self, nonce: &str, claim: &str, same: &dyn Fn(&str) -> bool) -> Claim;

    /// [`UsedNonces::claim_as`] with no other claim naming the same use.
    fn claim(&self, nonce: &str, claim: &str) -> Claim {
        self.claim_as(nonce, claim, &|_| false)
    }
}

/// The claim of a token a move of `vm` to `to` at `at` used.
pub fn move_claim(vm: Mac, to: &str, at: PacketTime) -> String {
    format!("move {vm} {to} {}", at.as_micros())
}

/// The claim of a token an allowed gate decision of `host` at `at` used.
pub fn gate_claim(host: &str, at: PacketTime) -> String {
    format!("gate {host} {}", at.as_micros())
}

/// When a gate decision and a move are one use of a token: the decision
/// is for the move's destination, at most `window_us` before the move or
/// `grace_us` after it (the locator's `migration.gate_window_s` and
/// `migration.gate_grace_s`, the same span in which it pairs them), and
/// the move is of the token's VM. So a controller that claims the gate
/// decision first and one that claims the move first agree the token is
/// granted to that move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pairing {
    pub window_us: i64,
    pub grace_us: i64,
}

impl Pairing {
    fn pairs(&self, gate_at: i64, move_at: i64) -> bool {
        gate_at >= move_at.saturating_sub(self.window_us) && gate_at <= move_at.saturating_add(self.grace_us)
    }

    /// Whether `existing` is the claim of a gate decision that `vm`'s move to `to` at `at` pairs with.
    pub fn gate_for_move(&self, existing: &str, to: &str, at: PacketTime) -> bool {
        let Some((host, t)) = existing.strip_prefix("gate ").and_then(|r| r.rsplit_once(' ')) else { return false };
        let Ok(t) = t.parse::<i64>() else { return false };
        host == to && self.pairs(t, at.as_micros())
    }

    /// Whether `existing` is the claim of a move that a gate decision of
    /// `host` at `at` for a domain with the MACs `vms` pairs with (the
    /// token's VM is one of them: the gate checked it).
    pub fn move_for_gate(&self, existing: &str, host: &str, at: PacketTime, vms: &[Mac]) -> bool {
        let Some((vm, rest)) = existing.strip_prefix("move ").and_then(|r| r.split_once(' ')) else { return false };
        let Some((to, t)) = rest.rsplit_once(' ') else { return false };
        let (Ok(vm), Ok(t)) = (vm.parse::<Mac>(), t.parse::<i64>()) else { return false };
        vms.contains(&vm) && to == host && self.pairs(at.as_micros(), t)
    }
}

/// The tokens directory and the nonces already used.
#[derive(Clone, Debug, Default)]
pub struct TokenStore {
    /// The key tokens are checked with and the directory they are read
    /// from; none: no move is authorized.
    source: Option<(ClusterKey, PathBuf)>,
    /// The used nonces, each with the claim of its use here (with a shared
    /// store: those this process used since it started; without one, a
    /// nonce read from the used-tokens file has an empty claim).
    used: HashMap<String, String>,
    /// Set: the used nonces are this shared store's (the directory's
    /// used-tokens file is not read or written; `used` only keeps one
    /// use here from taking a nonce another use here had, such as a
    /// second move pairing with a gate decision whose move took it).
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
        let mut used = HashMap::new();
        if let Some(d) = dir {
            // The used nonces only grow: allow many more than one token file holds.
            match crate::small_file::read(&d.join(USED_FILE), 64 * MAX_FILE_BYTES) {
                Ok(bytes) => used.extend(
                    String::from_utf8_lossy(&bytes)
                        .lines()
                        .map(|l| l.trim().to_string())
                        .filter(|l| !l.is_empty())
                        .map(|n| (n, String::new())),
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
            self.used = std::mem::take(&mut other.used);
            self.shared = Some(s);
        } else if self.shared.is_none() {
            self.used.extend(other.used.drain());
        }
    }

    /// Spends the token an allowed `authorized` gate decision used (its
    /// `nonce`; the decision of `host` at `at` for a domain with the MACs
    /// `vms`), here and in the tokens directory's used-tokens file (or the
    /// shared store), so the same token in the directory cannot authorize
    /// another move. What it gives the move the decision approves:
    /// - with a shared store, its answer to the claim
    ///   ([`gate_claim`], paired with the move's by `pairing`): `Granted`
    ///   when fresh or this same use again, `Replayed` when another use
    ///   had it, `Unavailable` when the store did not answer;
    /// - without one, `Granted`: the gate's own used-tokens file is the
    ///   one that counts, and a nonce this store knew already (the same
    ///   capture replayed again over the same directory) does not take
    ///   the decision back, so a replay gives the same events every run.
    ///
    /// A decision without a usable nonce (none, empty, more than one word)
    /// spends nothing: `Granted` as the gate said without a shared store,
    /// `Missing` with one (it cannot be claimed).
    pub fn spend_for_gate(
        &mut self,
        nonce: Option<&str>,
        host: &str,
        at: PacketTime,
        vms: &[Mac],
        pairing: Pairing,
    ) -> Authorization {
        let Some(nonce) = nonce.filter(|n| !n.is_empty() && !n.contains(char::is_whitespace)) else {
            return if self.shared.is_some() { Authorization::Missing } else { Authorization::Granted };
        };
        if let Some(s) = &self.shared {
            let same = |existing: &str| pairing.move_for_gate(existing, host, at, vms);
            let claim = gate_claim(host, at);
            // Used here already: by the move this decision approved, seen
            // first, it is the same use (granted, as a controller that saw
            // the decision first grants it: the domain's other MACs move on
            // it too), if the store agrees; the decision now holds it here,
            // so a second decision pairing with that move (or the same one
            // read twice: it would approve a second move) is a replay, as
            // is any other use.
            if self.used.get(nonce).is_some_and(|existing| !same(existing)) {
                return Authorization::Replayed;
            }
            return match s.claim_as(nonce, &claim, &same) {
                Claim::Fresh | Claim::Again => {
                    self.used.insert(nonce.to_string(), claim);
                    Authorization::Granted
                }
                Claim::Used => Authorization::Replayed,
                Claim::Unavailable => Authorization::Unavailable,
            };
        }
        if self.used.insert(nonce.to_string(), String::new()).is_none() {
            if let Some((_, dir)) = &self.source {
                let appended = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join(USED_FILE))
                    .and_then(|mut f| writeln!(f, "{nonce}"));
                if let Err(e) = appended {
                    eprintln!(
                        "vmsentry: cannot record used token in {}: {e} (it stays used until restart)",
                        dir.display()
                    );
                }
            }
        }
        Authorization::Granted
    }

    /// Looks for a valid, unexpired, unused token for `vm` moving to `to` at
    /// packet time `at`, and uses it up. With a shared store, the use is
    /// claimed as this move ([`move_claim`]), so a controller that decides
    /// the same move again, or that saw the gate decision it pairs with
    /// claim it first (`pairing`), gets its token again, and any other move
    /// finds it used; a store that does not answer refuses the move.
    pub fn authorize(&mut self, vm: Mac, to: &str, at: PacketTime, pairing: Pairing) -> Authorization {
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
            if let Some(s) = self.shared.as_ref().filter(|_| !self.used.contains_key(&t.nonce)) {
                let same = |existing: &str| pairing.gate_for_move(existing, to, at);
                let claim = move_claim(vm, to, at);
                match s.claim_as(&t.nonce, &claim, &same) {
                    Claim::Fresh | Claim::Again => {
                        self.used.insert(t.nonce.clone(), claim);
                        return Authorization::Granted;
                    }
                    Claim::Used => {
                        if best == Authorization::Missing {
                            best = Authorization::Replayed;
                        }
                        continue;
                    }
                    Claim::Unavailable => return Authorization::Unavailable,
                }
            }
            if self.used.contains_key(&t.nonce) {
                if best == Authorization::Missing {
                    best = Authorization::Replayed;
                }
                continue;
            }
            self.used.insert(t.nonce.clone(), String::new());
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
pub(crate) mod tests {
    use super::*;

    fn key() -> ClusterKey {
        ClusterKey::from_bytes(&[b'k'; 32]).unwrap()
    }
    fn vm() -> Mac {
        "fa:16:3e:00:00:01".parse().unwrap()
    }
    /// The locator's defaults: `gate_window_s = 600`, `gate_grace_s = 10`.
    const P: Pairing = Pairing { window_us: 600_000_000, grace_us: 10_000_000 };

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
        assert_eq!(s.authorize(vm(), "compute-3", at, P), Authorization::Missing);
        assert_eq!(s.authorize(vm(), "compute-2", at, P), Authorization::Granted);
        assert_eq!(s.authorize(vm(), "compute-2", at, P), Authorization::Replayed);
        // A restart remembers it.
        let mut s = TokenStore::open(key(), Some(d.path()));
        assert_eq!(s.authorize(vm(), "compute-2", at, P), Authorization::Replayed);
        // A fresh token past its expiry.
        let late = Token::sign(&key(), vm(), "compute-2", 1_600_000_000, "bbbbbbbbbbbbbbbb");
        std::fs::write(d.path().join("late.token"), late.to_string()).unwrap();
        assert_eq!(s.authorize(vm(), "compute-2", at, P), Authorization::Expired);
        // A forged one is ignored.
        let forged =
            Token { sig: "00".repeat(32), ..Token::sign(&key(), vm(), "compute-2", 1_800_000_000, "cccccccccccccccc") };
        std::fs::write(d.path().join("forged.token"), forged.to_string()).unwrap();
        assert_eq!(s.authorize(vm(), "compute-2", at, P), Authorization::Expired);
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
        assert_eq!(s.authorize(vm(), "compute-2", PacketTime::from_micros(0), P), Authorization::Replayed);
        // Held by someone else past the deadline: an error, not a wait forever.
        let holder = std::fs::File::open(&used).unwrap();
        rustix::fs::flock(&holder, rustix::fs::FlockOperation::LockExclusive).unwrap();
        let e = consume_nonce(&used, "eeeeeeeeeeeeeeee", std::time::Instant::now()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    }

    /// A shared store as a cluster's KV keeps it: a map from nonce to claim.
    #[derive(Debug, Default)]
    pub(crate) struct Shared {
        pub(crate) map: std::sync::Mutex<std::collections::HashMap<String, String>>,
        pub(crate) down: std::sync::atomic::AtomicBool,
    }

    impl UsedNonces for Shared {
        fn claim_as(&self, nonce: &str, claim: &str, same: &dyn Fn(&str) -> bool) -> Claim {
            if self.down.load(std::sync::atomic::Ordering::Relaxed) {
                return Claim::Unavailable;
            }
            let mut m = self.map.lock().unwrap();
            match m.get(nonce) {
                None => {
                    m.insert(nonce.into(), claim.into());
                    Claim::Fresh
                }
                Some(c) if c == claim || same(c) => Claim::Again,
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
        assert_eq!(a.authorize(vm(), "compute-2", at, P), Authorization::Granted);
        assert_eq!(shared.map.lock().unwrap()["ffffffffffffffff"], "move fa:16:3e:00:00:01 compute-2 1700000000000000");
        // Another controller deciding the same move: its token still.
        assert_eq!(b.authorize(vm(), "compute-2", at, P), Authorization::Granted);
        // Another move with it, on either: a replay.
        assert_eq!(b.authorize(vm(), "compute-2", later, P), Authorization::Replayed);
        assert_eq!(a.authorize(vm(), "compute-2", later, P), Authorization::Replayed);
        // Nothing was written to the directory.
        assert_eq!(std::fs::read_to_string(d.path().join(USED_FILE)).unwrap(), "ffffffffffffffff\n");
        // A reload keeps the shared store.
        let mut reloaded = TokenStore::open(key(), Some(d.path()));
        reloaded.absorb(&mut a);
        assert_eq!(reloaded.authorize(vm(), "compute-2", later, P), Authorization::Replayed);
        // A gate decision's use is a claim too.
        let (five, six) = (PacketTime::from_micros(5), PacketTime::from_micros(6));
        assert_eq!(
            reloaded.spend_for_gate(Some("1111111111111111"), "compute-2", five, &[vm()], P),
            Authorization::Granted
        );
        assert_eq!(shared.map.lock().unwrap()["1111111111111111"], "gate compute-2 5");
        assert_eq!(b.spend_for_gate(Some("1111111111111111"), "compute-2", five, &[vm()], P), Authorization::Granted);
        assert_eq!(b.spend_for_gate(Some("1111111111111111"), "compute-2", six, &[vm()], P), Authorization::Replayed);
        // Unreachable: a matching token is not granted (fail closed); no token: still missing.
        let fresh = Token::sign(&key(), vm(), "compute-3", 1_700_000_100, "2222222222222222");
        std::fs::write(d.path().join("u.token"), fresh.to_string()).unwrap();
        shared.down.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(b.authorize(vm(), "compute-3", at, P), Authorization::Unavailable);
        assert_eq!(b.authorize(vm(), "compute-4", at, P), Authorization::Missing);
        shared.down.store(false, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(b.authorize(vm(), "compute-3", at, P), Authorization::Granted);
    }

    #[test]
    fn a_gate_decision_and_the_move_it_pairs_with_are_one_use_whichever_comes_first() {
        let d = tempfile::tempdir().unwrap();
        let other: Mac = "fa:16:3e:00:00:09".parse().unwrap();
        let shared = Arc::new(Shared::default());
        // Each `open()` is another controller (or a restarted one).
        let open = || TokenStore::open(key(), Some(d.path())).with_shared(shared.clone());
        let s = |us: i64| PacketTime::from_micros(1_700_000_000_000_000 + us);
        let token = |n: &str| {
            let t = Token::sign(&key(), vm(), "compute-2", 1_700_001_000, n);
            std::fs::write(d.path().join("t.token"), t.to_string()).unwrap();
        };
        // The gate decided at +0, the move is at +5 s.
        let (gate, mv) = (s(0), s(5_000_000));

        // Active: the decision first; standby: the move first.
        let n = "4444444444444444";
        token(n);
        let (mut active, mut standby) = (open(), open());
        assert_eq!(active.spend_for_gate(Some(n), "compute-2", gate, &[other, vm()], P), Authorization::Granted);
        assert_eq!(standby.authorize(vm(), "compute-2", mv, P), Authorization::Granted);
        // The decision after its move is the same use: granted, as the
        // active granted it (the domain's other MAC moves on it too).
        assert_eq!(standby.spend_for_gate(Some(n), "compute-2", gate, &[other, vm()], P), Authorization::Granted);
        // A second decision with it pairs with the move too, but the first took it.
        assert_eq!(standby.spend_for_gate(Some(n), "compute-2", s(1), &[other, vm()], P), Authorization::Replayed);
        assert_eq!(shared.map.lock().unwrap()[n], "gate compute-2 1700000000000000");
        // A third controller had the move (granted: it pairs with the
        // active's decision), then sees another decision pairing with it:
        // the store says the token is that first decision's, so a replay.
        let mut third = open();
        assert_eq!(third.authorize(vm(), "compute-2", mv, P), Authorization::Granted);
        assert_eq!(third.spend_for_gate(Some(n), "compute-2", s(2), &[other, vm()], P), Authorization::Replayed);
        // A later move of the VM there, on either: a replay (its decision took the token).
        assert_eq!(standby.authorize(vm(), "compute-2", s(60_000_000), P), Authorization::Replayed);
        assert_eq!(active.authorize(vm(), "compute-2", s(60_000_000), P), Authorization::Replayed);
        // A controller that sees a move outside the decision's window first: a
        // replay, 600 s before the move (gate_window_s) or 10 s after it (gate_grace_s).
        for (at, want) in [
            (s(600_000_001), Authorization::Replayed),
            (s(-10_000_001), Authorization::Replayed),
            (s(600_000_000), Authorization::Granted),
            (s(-10_000_000), Authorization::Granted),
        ] {
            assert_eq!(open().authorize(vm(), "compute-2", at, P), want, "{at:?}");
        }
        assert!(!P.gate_for_move("gate compute-2 1700000000000000", "compute-3", mv));

        // Active: the move first; standby: the decision first.
        let n = "5555555555555555";
        token(n);
        let (mut active, mut standby) = (open(), open());
        assert_eq!(active.authorize(vm(), "compute-2", mv, P), Authorization::Granted);
        assert_eq!(standby.spend_for_gate(Some(n), "compute-2", gate, &[vm()], P), Authorization::Granted);
        assert_eq!(shared.map.lock().unwrap()[n], "move fa:16:3e:00:00:01 compute-2 1700000005000000");
        // The standby's move takes the decision's approval; its token is used here now.
        assert_eq!(standby.authorize(vm(), "compute-2", mv, P), Authorization::Replayed);
        // A decision of a domain without the token's VM, of another host, or
        // out of the window: a replay.
        assert_eq!(open().spend_for_gate(Some(n), "compute-2", gate, &[other], P), Authorization::Replayed);
        assert_eq!(open().spend_for_gate(Some(n), "compute-3", gate, &[vm()], P), Authorization::Replayed);
        assert_eq!(open().spend_for_gate(Some(n), "compute-2", s(-595_000_001), &[vm()], P), Authorization::Replayed);
        assert_eq!(open().spend_for_gate(Some(n), "compute-2", s(15_000_001), &[vm()], P), Authorization::Replayed);
        assert_eq!(open().spend_for_gate(Some(n), "compute-2", s(15_000_000), &[vm()], P), Authorization::Granted);
        // Another move with it: a replay.
        assert_eq!(open().authorize(vm(), "compute-2", s(6_000_000), P), Authorization::Replayed);
        // Claims that do not parse pair with nothing.
        for bad in ["gate compute-2", "gate compute-2 x", "move fa:16:3e:00:00:01 compute-2", "move x compute-2 1", "x"]
        {
            assert!(!P.gate_for_move(bad, "compute-2", mv), "{bad}");
            assert!(!P.move_for_gate(bad, "compute-2", gate, &[vm()]), "{bad}");
        }
    }
}
