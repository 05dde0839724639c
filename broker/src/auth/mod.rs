//! # auth: who may do what — API tokens with roles, and the agents' certificates
//!
//! Owns the two identities the broker knows (`docs/SECURITY.md`):
//!
//! - **API tokens** ([`Tokens`]): bearer tokens for the admin API and Flight, each with a
//!   [`Role`] (`reader` < `deployer` < `admin`) and an optional tenant. A token is shown once, when
//!   it is created; the broker keeps only its SHA-256 (a token is 32 random bytes, so a hash
//!   without a salt or a slow function is as strong as the token) in [`crate::state::TOKENS`].
//!   On its first start, or whenever no admin token is left, the broker creates one and writes
//!   it to `DATA_DIR/admin-token` (mode 0600): that is how an operator gets in.
//! - **Agents** ([`agents`]): the QUIC endpoint requires a client certificate signed by the
//!   client CA; its subject names the agent (`CN`, the `agent_id` its batches must carry) and its
//!   tenant (`O`). `POST /v1/agents` issues one when the broker holds the CA's key; a revoked
//!   certificate is refused on the next connection attempt and its open connections closed.
//!
//! May call: [`crate::state`] (its tables). Nothing else of the broker.

pub mod agents;
pub mod quotas;
mod tenants;

pub use quotas::Quotas;
pub use tenants::{DEFAULT_TENANT, Scope, TenantMap, Tenants};

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::state::{self, TOKENS};

/// What a token may do; each role may do everything the ones below it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads and queries: the log, plugins, aggregates, the archive, reports and their outputs,
    /// Flight.
    Reader,
    /// Also deploys, pauses and removes plugins, deploys and runs reports.
    Deployer,
    /// Also creates and revokes tokens, enrolls and revokes agents.
    Admin,
}

impl Role {
    /// Its name in the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Deployer => "deployer",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reader" => Ok(Role::Reader),
            "deployer" => Ok(Role::Deployer),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "role: {other:?} is not one of reader, deployer, admin"
            )),
        }
    }
}

/// A token as stored (never the token itself).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    /// Public id: the first 12 hex digits of the token's SHA-256 (lists and revocation name it).
    pub id: String,
    /// What it may do.
    pub role: Role,
    /// The tenant it belongs to; `None`: every tenant (an operator's token).
    pub tenant: Option<String>,
    /// Free text: who or what it is for.
    pub description: String,
    /// When it was created (RFC 3339).
    pub created_at: String,
}

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's id.
    pub token_id: String,
    /// Its role.
    pub role: Role,
    /// Its tenant.
    pub tenant: Option<String>,
}

impl Principal {
    /// Whose data the caller sees.
    pub fn scope(&self) -> Scope {
        Scope::of(self.tenant.clone())
    }
}

/// Why a token call failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No such token or agent.
    #[error("{0}")]
    NotFound(String),
    /// The request is invalid (a field named in the message).
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with what is stored.
    #[error("{0}")]
    Conflict(String),
    /// redb failed.
    #[error("state.redb: {0:#}")]
    Storage(anyhow::Error),
}

fn storage(e: impl Into<anyhow::Error>) -> AuthError {
    AuthError::Storage(e.into())
}

/// Prefix of every token, so a leaked one is recognisable (secret scanners match it).
pub const TOKEN_PREFIX: &str = "rnl_";
/// Longest token description, in bytes.
pub const DESCRIPTION_BYTES_MAX: usize = 256;

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}

/// The API tokens: stored hashed in redb, held in memory by hash.
pub struct Tokens {
    db: Arc<Database>,
    by_hash: RwLock<HashMap<String, TokenRecord>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").finish_non_exhaustive()
    }
}

impl Tokens {
    /// Loads the stored tokens, and adds each of `static_readers` (the `flight_tokens`
    /// setting) as a reader of every tenant, kept in memory only.
    pub fn open(db: Arc<Database>, static_readers: &[String]) -> anyhow::Result<Self> {
        let mut by_hash = HashMap::new();
        {
            let tx = db.begin_write()?;
            tx.open_table(TOKENS)?;
            tx.commit()?;
        }
        let tx = db.begin_read()?;
        let table = tx.open_table(TOKENS)?;
        for row in table.iter()? {
            let (k, v) = row?;
            let record: TokenRecord = state::from_json("token", v.value())?;
            by_hash.insert(k.value().to_string(), record);
        }
        for (i, t) in static_readers.iter().enumerate() {
            by_hash.insert(
                sha256_hex(t.as_bytes()),
                TokenRecord {
                    id: format!("flight_tokens[{i}]"),
                    role: Role::Reader,
                    tenant: None,
                    description: "from the flight_tokens setting".into(),
                    created_at: String::new(),
                },
            );
        }
        Ok(Self {
            db,
            by_hash: RwLock::new(by_hash),
        })
    }

    /// Who `token` is, if it is a token of this broker.
    pub fn check(&self, token: &str) -> Option<Principal> {
        // The map is keyed by the hash: how long the lookup takes tells nothing of the token.
        let hash = sha256_hex(token.as_bytes());
        let map = self.by_hash.read().expect("lock poisoned");
        map.get(&hash).map(|r| Principal {
            token_id: r.id.clone(),
            role: r.role,
            tenant: r.tenant.clone(),
        })
    }

    /// Creates a token; the token itself is in the answer and nowhere else.
    pub fn create(
        &self,
        role: Role,
        tenant: Option<String>,
        description: String,
    ) -> Result<(String, TokenRecord), AuthError> {
        if let Some(t) = &tenant {
            runnel_protocol::check_tenant(t)
                .map_err(|e| AuthError::Invalid(format!("tenant: {e}")))?;
        }
        if description.len() > DESCRIPTION_BYTES_MAX {
            return Err(AuthError::Invalid(format!(
                "description: {} bytes, more than {DESCRIPTION_BYTES_MAX}",
                description.len()
            )));
        }
        let mut secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| storage(anyhow::anyhow!("no randomness for a token")))?;
        let token = format!("{TOKEN_PREFIX}{}", hex(&secret));
        let hash = sha256_hex(token.as_bytes());
        let record = TokenRecord {
            id: hash[..12].to_string(),
            role,
            tenant,
            description,
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        let tx = self.db.begin_write().map_err(storage)?;
        {
            let mut table = tx.open_table(TOKENS).map_err(storage)?;
            table
                .insert(hash.as_str(), state::to_json(&record).as_slice())
                .map_err(storage)?;
        }
        tx.commit().map_err(storage)?;
        self.by_hash
            .write()
            .expect("lock poisoned")
            .insert(hash, record.clone());
        tracing::info!(id = %record.id, role = %record.role, tenant = ?record.tenant, "token created");
        Ok((token, record))
    }

    /// Every token (stored and from settings), by id.
    pub fn list(&self) -> Vec<TokenRecord> {
        let mut v: Vec<_> = self
            .by_hash
            .read()
            .expect("lock poisoned")
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Revokes the stored token `id`: it is refused from the next request on.
    pub fn revoke(&self, id: &str) -> Result<TokenRecord, AuthError> {
        let hash = {
            let map = self.by_hash.read().expect("lock poisoned");
            let (hash, record) = map
                .iter()
                .find(|(_, r)| r.id == id)
                .ok_or_else(|| AuthError::NotFound(format!("token {id:?}: no such token")))?;
            if record.created_at.is_empty() {
                return Err(AuthError::Invalid(format!(
                    "token {id:?} comes from the flight_tokens setting: remove it there"
                )));
            }
            hash.clone()
        };
        let tx = self.db.begin_write().map_err(storage)?;
        {
            let mut table = tx.open_table(TOKENS).map_err(storage)?;
            table.remove(hash.as_str()).map_err(storage)?;
        }
        tx.commit().map_err(storage)?;
        let record = self
            .by_hash
            .write()
            .expect("lock poisoned")
            .remove(&hash)
            .ok_or_else(|| AuthError::NotFound(format!("token {id:?}: no such token")))?;
        tracing::info!(id = %record.id, role = %record.role, "token revoked");
        Ok(record)
    }

    /// When no stored admin token is left, creates one and writes it to `path` (mode 0600):
    /// the way in for the operator of a new broker.
    pub fn ensure_admin(&self, path: &Path) -> anyhow::Result<()> {
        let any_admin = self
            .by_hash
            .read()
            .expect("lock poisoned")
            .values()
            .any(|r| r.role == Role::Admin && !r.created_at.is_empty());
        if any_admin && path.exists() {
            return Ok(());
        }
        if any_admin {
            // The file was removed on purpose (or never kept): nothing to rewrite.
            return Ok(());
        }
        let (token, record) = self
            .create(Role::Admin, None, "the first admin token".into())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        state::write_private(path, token.as_bytes())?;
        tracing::info!(id = %record.id, path = %path.display(), "created an admin token (read it from this file; runnel reads it there by default)");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Arc<Database>) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("state.redb")).unwrap();
        (dir, Arc::new(db))
    }

    #[test]
    fn a_token_is_stored_hashed_checked_and_revoked() {
        let (dir, db) = db();
        let tokens = Tokens::open(db.clone(), &[]).unwrap();
        let (token, record) = tokens
            .create(Role::Deployer, Some("shop".into()), "ci".into())
            .unwrap();
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(tokens.check(&token).unwrap().role, Role::Deployer);
        assert_eq!(tokens.check("rnl_wrong"), None);
        // Only the hash is on disk.
        drop(tokens);
        let bytes = std::fs::read(dir.path().join("state.redb")).unwrap();
        assert!(!bytes.windows(token.len()).any(|w| w == token.as_bytes()));
        let tokens = Tokens::open(db, &[]).unwrap();
        assert_eq!(
            tokens.check(&token).unwrap().tenant.as_deref(),
            Some("shop")
        );
        tokens.revoke(&record.id).unwrap();
        assert_eq!(tokens.check(&token), None);
        assert!(matches!(
            tokens.revoke(&record.id),
            Err(AuthError::NotFound(_))
        ));
    }

    #[test]
    fn the_first_admin_token_is_written_once() {
        let (dir, db) = db();
        let tokens = Tokens::open(db, &["f".repeat(16)]).unwrap();
        let path = dir.path().join("admin-token");
        tokens.ensure_admin(&path).unwrap();
        let token = std::fs::read_to_string(&path).unwrap();
        assert_eq!(tokens.check(&token).unwrap().role, Role::Admin);
        tokens.ensure_admin(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), token);
        assert_eq!(tokens.check(&"f".repeat(16)).unwrap().role, Role::Reader);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn roles_are_ordered_and_parsed() {
        assert!(Role::Reader < Role::Deployer && Role::Deployer < Role::Admin);
        assert_eq!("deployer".parse::<Role>().unwrap(), Role::Deployer);
        assert!(
            "root"
                .parse::<Role>()
                .unwrap_err()
                .contains("reader, deployer, admin")
        );
    }
}
