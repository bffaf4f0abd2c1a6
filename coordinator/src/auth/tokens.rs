//! The token store: random secrets shown once, kept only as their blake3 hash in the metadata
//! store's `tokens` table (key: the hash; value: the record as JSON), mirrored in memory so a
//! call's check is one hash and one map lookup. Revocation and expiry take effect on the next
//! call; agent sessions watch [`TokenStore::changes`] to end at once.
//!
//! A token is 256 random bits, so a fast hash is enough: there is nothing to brute-force.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, UNIX_EPOCH};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use tessera_cas::meta::{MetaError, MetadataStore, Table};
use tessera_proto::tessera::v1::TokenInfo;
use thiserror::Error;
use tokio::sync::watch;
use tonic::Status;

use super::{Principal, Role};

/// The metadata table of tokens.
const TABLE: &str = "tokens";
/// Every token starts with this, so a leaked one is recognisable (and greppable).
pub const TOKEN_PREFIX: &str = "tsr_";
/// Longest token name.
pub const MAX_NAME: usize = 64;
/// Most instance names in one token's scope.
pub const MAX_INSTANCES: usize = 64;
/// Longest instance name in a scope.
pub const MAX_INSTANCE_LEN: usize = 256;

/// Why a token operation failed.
#[derive(Debug, Error)]
pub enum TokenError {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// A token that is not revoked already has the name.
    #[error("a token named \"{0}\" already exists (revoke it first, or pick another name)")]
    NameTaken(String),
    /// No live token has the name.
    #[error("no token named \"{0}\" (see `tessera token list`)")]
    NotFound(String),
    /// The metadata store failed.
    #[error("token store: {0}")]
    Meta(#[from] MetaError),
    /// The admin token file could not be written.
    #[error("failed to write {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl From<TokenError> for Status {
    fn from(error: TokenError) -> Status {
        match error {
            TokenError::Invalid(_) => Status::invalid_argument(error.to_string()),
            TokenError::NameTaken(_) => Status::already_exists(error.to_string()),
            TokenError::NotFound(_) => Status::not_found(error.to_string()),
            TokenError::Meta(ref inner) => crate::status::meta_error(&error, inner),
            TokenError::File { .. } => Status::internal(error.to_string()),
        }
    }
}

/// One token as stored (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Unique among live tokens.
    pub name: String,
    /// The role's name.
    pub role: String,
    /// Instance scope; empty means all.
    pub instances: Vec<String>,
    /// Creation, Unix milliseconds.
    pub created_ms: i64,
    /// Expiry, Unix milliseconds.
    pub expires_ms: Option<i64>,
    /// Revocation, Unix milliseconds.
    pub revoked_ms: Option<i64>,
    /// The creating token's name.
    pub created_by: String,
}

impl TokenRecord {
    /// Whether the token is neither revoked nor expired at `now_ms`.
    pub fn live(&self, now_ms: i64) -> bool {
        self.revoked_ms.is_none() && self.expires_ms.is_none_or(|e| e > now_ms)
    }

    /// The record as the Admin API shows it.
    pub fn to_info(&self) -> TokenInfo {
        TokenInfo {
            name: self.name.clone(),
            role: self.role.parse::<Role>().map_or(0, |r| r.to_proto() as i32),
            instances: self.instances.clone(),
            created: Some(timestamp(self.created_ms)),
            expires: self.expires_ms.map(timestamp),
            revoked: self.revoked_ms.map(timestamp),
            created_by: self.created_by.clone(),
        }
    }
}

fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// A Unix-milliseconds time as RFC 3339, for messages.
pub fn rfc3339(ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(time).to_string()
}

fn now_ms() -> i64 {
    tessera_proto::time::unix_ms()
}

/// The hash a token is stored under.
pub fn hash(secret: &str) -> [u8; 32] {
    *blake3::hash(secret.as_bytes()).as_bytes()
}

/// The token store. Cheap to clone.
#[derive(Clone)]
pub struct TokenStore {
    inner: Arc<Inner>,
}

struct Inner {
    meta: Arc<dyn MetadataStore>,
    table: Table,
    by_hash: RwLock<HashMap<[u8; 32], TokenRecord>>,
    changes: watch::Sender<u64>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore").finish_non_exhaustive()
    }
}

/// Checks a token name: 1 to [`MAX_NAME`] characters of letters, digits, `.`, `_`, `-`, `@`.
pub fn check_name(name: &str) -> Result<(), TokenError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(TokenError::Invalid(format!(
            "token name must be 1 to {MAX_NAME} characters, got {}",
            name.len()
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-@".contains(*c)))
    {
        return Err(TokenError::Invalid(format!(
            "token name {name:?} has {bad:?}: use letters, digits, '.', '_', '-' and '@'"
        )));
    }
    Ok(())
}

fn check_instances(instances: &[String]) -> Result<(), TokenError> {
    if instances.len() > MAX_INSTANCES {
        return Err(TokenError::Invalid(format!(
            "a token may name at most {MAX_INSTANCES} instances, got {}",
            instances.len()
        )));
    }
    for instance in instances {
        if instance.len() > MAX_INSTANCE_LEN || instance.chars().any(char::is_control) {
            return Err(TokenError::Invalid(format!(
                "instance name {:?} must be at most {MAX_INSTANCE_LEN} printable characters",
                instance.chars().take(40).collect::<String>()
            )));
        }
    }
    Ok(())
}

impl TokenStore {
    /// Loads every token from `meta`.
    pub fn open(meta: Arc<dyn MetadataStore>) -> Result<Self, MetaError> {
        let table = meta.table(TABLE)?;
        let mut by_hash = HashMap::new();
        for entry in table.scan_prefix(b"") {
            let (key, value) = entry?;
            let (Ok(key), Ok(record)) = (
                <[u8; 32]>::try_from(key.as_slice()),
                serde_json::from_slice::<TokenRecord>(&value),
            ) else {
                tracing::warn!("ignoring an unreadable entry of the token table");
                continue;
            };
            by_hash.insert(key, record);
        }
        Ok(TokenStore {
            inner: Arc::new(Inner {
                meta,
                table,
                by_hash: RwLock::new(by_hash),
                changes: watch::channel(0).0,
            }),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<[u8; 32], TokenRecord>> {
        self.inner
            .by_hash
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<[u8; 32], TokenRecord>> {
        self.inner
            .by_hash
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether no token was ever created.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Creates a token; returns its secret (shown once) and its record. Durable on return.
    pub async fn create(
        &self,
        name: &str,
        role: Role,
        mut instances: Vec<String>,
        expires_in: Option<Duration>,
        created_by: &str,
    ) -> Result<(String, TokenRecord), TokenError> {
        check_name(name)?;
        check_instances(&instances)?;
        instances.sort();
        instances.dedup();
        let now = now_ms();
        let expires_ms =
            match expires_in {
                Some(d) if !d.is_zero() => Some(now.saturating_add(
                    i64::try_from(d.as_millis()).map_err(|_| {
                        TokenError::Invalid(format!("expiry {d:?} is too far away"))
                    })?,
                )),
                _ => None,
            };
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let secret = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
        let record = TokenRecord {
            name: name.to_owned(),
            role: role.name().to_owned(),
            instances,
            created_ms: now,
            expires_ms,
            revoked_ms: None,
            created_by: created_by.to_owned(),
        };
        let value = serde_json::to_vec(&record).map_err(|e| TokenError::Invalid(e.to_string()))?;
        {
            let mut tokens = self.write();
            if tokens.values().any(|t| t.name == name && t.live(now)) {
                return Err(TokenError::NameTaken(name.to_owned()));
            }
            self.inner.table.insert(&hash(&secret), &value)?;
            tokens.insert(hash(&secret), record.clone());
        }
        self.inner.meta.flush_async().await?;
        Ok((secret, record))
    }

    /// Tokens by name (with `all`, revoked and expired ones too).
    pub fn list(&self, all: bool) -> Vec<TokenRecord> {
        let now = now_ms();
        let mut tokens: Vec<TokenRecord> = self
            .read()
            .values()
            .filter(|t| all || t.live(now))
            .cloned()
            .collect();
        tokens.sort_by(|a, b| a.name.cmp(&b.name).then(a.created_ms.cmp(&b.created_ms)));
        tokens
    }

    /// Revokes the live token named `name`. Durable on return; running sessions of it end.
    pub async fn revoke(&self, name: &str) -> Result<TokenRecord, TokenError> {
        let now = now_ms();
        let record = {
            let mut tokens = self.write();
            let Some((key, record)) = tokens
                .iter_mut()
                .find(|(_, t)| t.name == name && t.live(now))
            else {
                return Err(TokenError::NotFound(name.to_owned()));
            };
            let mut revoked = record.clone();
            revoked.revoked_ms = Some(now);
            let value =
                serde_json::to_vec(&revoked).map_err(|e| TokenError::Invalid(e.to_string()))?;
            self.inner.table.insert(key, &value)?;
            *record = revoked.clone();
            revoked
        };
        self.inner.meta.flush_async().await?;
        self.inner.changes.send_modify(|n| *n += 1);
        Ok(record)
    }

    /// Bumped at every revocation: sessions re-check their token when it changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// The principal of bearer token `secret`, or `UNAUTHENTICATED` naming why not.
    pub fn authenticate(
        &self,
        secret: &str,
        peer: Option<SocketAddr>,
    ) -> Result<Principal, Status> {
        let key = hash(secret);
        let tokens = self.read();
        let Some(record) = tokens.get(&key) else {
            return Err(Status::unauthenticated(
                "unknown token (it was never created on this coordinator: check TESSERA_TOKEN \
                 or the token file)",
            ));
        };
        check_live(record, now_ms())?;
        let role = record.role.parse::<Role>().map_err(|e| {
            Status::unauthenticated(format!("token \"{}\" is unusable: {e}", record.name))
        })?;
        Ok(Principal {
            name: record.name.clone(),
            role,
            instances: record.instances.clone(),
            token_hash: Some(key),
            peer,
        })
    }

    /// `UNAUTHENTICATED` if the token of `principal` was revoked or has expired since.
    pub fn still_valid(&self, principal: &Principal) -> Result<(), Status> {
        let Some(key) = principal.token_hash else {
            return Ok(());
        };
        match self.read().get(&key) {
            Some(record) => check_live(record, now_ms()),
            None => Err(Status::unauthenticated("the token no longer exists")),
        }
    }

    /// At the first start with auth on (no token ever created): creates the admin token
    /// `admin` and writes it to `DATA_DIR/admin-token` (mode 0600). Returns the file written.
    pub async fn bootstrap(&self, data_dir: &Path) -> Result<Option<PathBuf>, TokenError> {
        if !self.is_empty() {
            return Ok(None);
        }
        let path = data_dir.join("admin-token");
        let (secret, _) = self
            .create("admin", Role::Admin, Vec::new(), None, "bootstrap")
            .await?;
        write_private(&path, &format!("{secret}\n")).map_err(|source| TokenError::File {
            path: path.clone(),
            source,
        })?;
        Ok(Some(path))
    }
}

fn check_live(record: &TokenRecord, now: i64) -> Result<(), Status> {
    if let Some(at) = record.revoked_ms {
        return Err(Status::unauthenticated(format!(
            "token \"{}\" was revoked at {}",
            record.name,
            rfc3339(at)
        )));
    }
    if let Some(at) = record.expires_ms
        && at <= now
    {
        return Err(Status::unauthenticated(format!(
            "token \"{}\" expired at {}",
            record.name,
            rfc3339(at)
        )));
    }
    Ok(())
}

/// Writes `text` to a new file readable by its owner only, durably.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use tessera_cas::meta::MemoryMetaStore;

    use super::*;

    fn store() -> TokenStore {
        TokenStore::open(Arc::new(MemoryMetaStore::new())).unwrap()
    }

    #[tokio::test]
    async fn tokens_are_stored_hashed_and_authenticate() {
        let meta: Arc<dyn MetadataStore> = Arc::new(MemoryMetaStore::new());
        let tokens = TokenStore::open(Arc::clone(&meta)).unwrap();
        let (secret, record) = tokens
            .create(
                "ci-main",
                Role::Ci,
                vec!["b".into(), "a".into()],
                None,
                "admin",
            )
            .await
            .unwrap();
        assert!(
            secret.starts_with(TOKEN_PREFIX) && secret.len() == 68,
            "{secret}"
        );
        assert_eq!(record.instances, ["a", "b"]);
        let stored: Vec<_> = meta
            .table(TABLE)
            .unwrap()
            .scan_prefix(b"")
            .map(Result::unwrap)
            .collect();
        assert_eq!(stored.len(), 1);
        assert!(!String::from_utf8_lossy(&stored[0].1).contains(&secret));
        let p = tokens.authenticate(&secret, None).unwrap();
        assert_eq!((p.name.as_str(), p.role), ("ci-main", Role::Ci));
        // A reopened store knows it.
        let reopened = TokenStore::open(meta).unwrap();
        assert!(reopened.authenticate(&secret, None).is_ok());
        let unknown = tokens.authenticate("tsr_nope", None).unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::Unauthenticated);
    }

    #[tokio::test]
    async fn revoked_and_expired_tokens_are_refused_and_names_are_unique_among_live_ones() {
        let tokens = store();
        let (secret, _) = tokens
            .create("agent-1", Role::Agent, vec![], None, "admin")
            .await
            .unwrap();
        let taken = tokens
            .create("agent-1", Role::Agent, vec![], None, "admin")
            .await
            .unwrap_err();
        assert!(matches!(taken, TokenError::NameTaken(_)));
        let p = tokens.authenticate(&secret, None).unwrap();
        let changes = tokens.changes();
        tokens.revoke("agent-1").await.unwrap();
        assert!(changes.has_changed().unwrap());
        let refused = tokens.authenticate(&secret, None).unwrap_err();
        assert!(
            refused.message().contains("revoked"),
            "{}",
            refused.message()
        );
        assert!(tokens.still_valid(&p).is_err());
        assert!(matches!(
            tokens.revoke("agent-1").await,
            Err(TokenError::NotFound(_))
        ));
        // The name is free again.
        tokens
            .create("agent-1", Role::Agent, vec![], None, "admin")
            .await
            .unwrap();
        assert_eq!(tokens.list(false).len(), 1);
        assert_eq!(tokens.list(true).len(), 2);

        let (short, _) = tokens
            .create(
                "brief",
                Role::Reader,
                vec![],
                Some(Duration::from_millis(1)),
                "admin",
            )
            .await
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let expired = tokens.authenticate(&short, None).unwrap_err();
        assert!(
            expired.message().contains("expired"),
            "{}",
            expired.message()
        );
    }

    #[tokio::test]
    async fn bad_names_and_scopes_are_refused() {
        let tokens = store();
        for name in ["", "a b", "x/y", &"n".repeat(65)] {
            let err = tokens
                .create(name, Role::Reader, vec![], None, "admin")
                .await
                .unwrap_err();
            assert!(matches!(err, TokenError::Invalid(_)), "{name}: {err}");
        }
        let many = (0..65).map(|i| i.to_string()).collect();
        assert!(
            tokens
                .create("x", Role::Reader, many, None, "a")
                .await
                .is_err()
        );
        assert!(tokens.is_empty());
    }

    #[tokio::test]
    async fn the_first_start_writes_a_private_admin_token_once() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = store();
        let path = tokens.bootstrap(dir.path()).await.unwrap().unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let secret = std::fs::read_to_string(&path).unwrap();
        let p = tokens.authenticate(secret.trim(), None).unwrap();
        assert_eq!(p.role, Role::Admin);
        assert_eq!(tokens.bootstrap(dir.path()).await.unwrap(), None);
    }
}
