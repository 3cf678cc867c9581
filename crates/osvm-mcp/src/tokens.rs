//! Bearer tokens osvm issues to MCP clients, and revokes.
//!
//! A token is 32 random bytes (from ring's system RNG), shown once, hex-encoded with an `osvm_`
//! prefix. Only its SHA-256 is kept, in `<state>/mcp/tokens.json` (mode 0600), with the client
//! name it stands for, when it was issued, when it expires and whether it was revoked. The file
//! is rewritten whole (write to a temporary file, then rename) on every change, and read again
//! when it changes on disk, so a revocation made by another process applies to the next request.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::digest;

/// What can go wrong with the token store.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a token list.
    #[error("{0} is malformed: {1}")]
    Malformed(PathBuf, String),
    /// The client name is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// No token has this id or client.
    #[error("no token `{0}`")]
    Unknown(String),
}

/// One issued token, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Short id (the first 12 hex digits of the hash), for listing and revoking.
    pub id: String,
    /// The client identity the token stands for.
    pub client: String,
    /// SHA-256 of the token, hex.
    pub sha256: String,
    /// Unix seconds when it was issued.
    pub issued_at: u64,
    /// Unix seconds after which it is refused, if it expires.
    pub expires_at: Option<u64>,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Not a token osvm issued.
    Unknown,
    /// Revoked (by id).
    Revoked(String),
    /// Expired (by id).
    Expired(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Unknown => f.write_str("unknown bearer token"),
            Refused::Revoked(id) => write!(f, "bearer token {id} was revoked"),
            Refused::Expired(id) => write!(f, "bearer token {id} has expired"),
        }
    }
}

/// The token store.
pub struct TokenStore {
    path: PathBuf,
    /// The records and the file's modification time they were read at.
    cache: Mutex<(Vec<TokenRecord>, Option<SystemTime>)>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A client name: 1-200 printable characters without spaces (a name or a SPIFFE ID).
pub fn check_client(client: &str) -> Result<(), TokenError> {
    if client.is_empty() || client.len() > 200 || !client.chars().all(|c| c.is_ascii_graphic()) {
        return Err(TokenError::Invalid(format!(
            "client name `{client}` must be 1-200 printable characters without spaces"
        )));
    }
    Ok(())
}

impl TokenStore {
    /// The store in `<state_dir>/mcp/tokens.json` (created on first issue).
    pub fn open(state_dir: &Path) -> Self {
        Self::at(state_dir.join("mcp").join("tokens.json"))
    }

    /// A store of its own in the file `path` (the dashboard's tokens, which are not MCP
    /// clients), created on first issue.
    pub fn at(path: PathBuf) -> Self {
        Self {
            path,
            cache: Mutex::new((Vec::new(), None)),
        }
    }

    fn load(&self) -> Result<Vec<TokenRecord>, TokenError> {
        let mut cache = self.cache.lock().expect("token cache");
        let mtime = fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        if mtime.is_some() && mtime == cache.1 {
            return Ok(cache.0.clone());
        }
        let records = match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| TokenError::Malformed(self.path.clone(), e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(TokenError::Io {
                    context: format!("read {}", self.path.display()),
                    source,
                });
            }
        };
        *cache = (records, mtime);
        Ok(cache.0.clone())
    }

    fn save(&self, records: &[TokenRecord]) -> Result<(), TokenError> {
        let io = |context: String| move |source| TokenError::Io { context, source };
        let dir = self.path.parent().expect("tokens.json has a directory");
        fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        let partial = self.path.with_extension("json.partial");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .map_err(io(format!("write {}", partial.display())))?;
        f.write_all(&serde_json::to_vec_pretty(records).expect("records serialize"))
            .and_then(|()| f.sync_all())
            .map_err(io(format!("write {}", partial.display())))?;
        fs::rename(&partial, &self.path).map_err(io(format!("replace {}", self.path.display())))?;
        let mut cache = self.cache.lock().expect("token cache");
        *cache = (
            records.to_vec(),
            fs::metadata(&self.path).and_then(|m| m.modified()).ok(),
        );
        Ok(())
    }

    /// Issues a token for `client`, valid for `ttl` (forever if `None`); returns the record and
    /// the secret, which is not kept.
    pub fn issue(
        &self,
        client: &str,
        ttl: Option<Duration>,
    ) -> Result<(TokenRecord, String), TokenError> {
        check_client(client)?;
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| TokenError::Invalid("the system RNG failed".into()))?;
        let secret = format!("osvm_{}", digest::hex(&bytes));
        let sha256 = digest::sha256(secret.as_bytes());
        let issued_at = now();
        let record = TokenRecord {
            id: sha256[..12].to_owned(),
            client: client.to_owned(),
            sha256,
            issued_at,
            expires_at: ttl.map(|t| issued_at + t.as_secs()),
            revoked: false,
        };
        let mut records = self.load()?;
        records.push(record.clone());
        self.save(&records)?;
        Ok((record, secret))
    }

    /// Every issued token.
    pub fn list(&self) -> Result<Vec<TokenRecord>, TokenError> {
        self.load()
    }

    /// Revokes the token with id `what`, or every token of client `what`; returns how many.
    pub fn revoke(&self, what: &str) -> Result<Vec<TokenRecord>, TokenError> {
        let mut records = self.load()?;
        let mut revoked = Vec::new();
        for r in records.iter_mut() {
            if (r.id == what || r.client == what) && !r.revoked {
                r.revoked = true;
                revoked.push(r.clone());
            }
        }
        if revoked.is_empty() {
            return Err(TokenError::Unknown(what.to_owned()));
        }
        self.save(&records)?;
        Ok(revoked)
    }

    /// The client a presented token stands for.
    pub fn verify(&self, token: &str) -> Result<Result<String, Refused>, TokenError> {
        let sha = digest::sha256(token.as_bytes());
        let records = self.load()?;
        // Compared by hash: the secret itself never meets a stored value.
        let Some(r) = records.iter().find(|r| r.sha256 == sha) else {
            return Ok(Err(Refused::Unknown));
        };
        if r.revoked {
            return Ok(Err(Refused::Revoked(r.id.clone())));
        }
        if r.expires_at.is_some_and(|t| now() > t) {
            return Ok(Err(Refused::Expired(r.id.clone())));
        }
        Ok(Ok(r.client.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_until_revoked_and_secrets_are_not_stored() {
        let dir = std::env::temp_dir().join(format!("osvm-tokens-{}", std::process::id()));
        let store = TokenStore::open(&dir);
        let (rec, secret) = store.issue("alice", None).unwrap();
        let (_, bob) = store.issue("bob", Some(Duration::from_secs(3600))).unwrap();
        assert_eq!(store.verify(&secret).unwrap(), Ok("alice".into()));
        assert_eq!(store.verify(&bob).unwrap(), Ok("bob".into()));
        assert_eq!(store.verify("osvm_nope").unwrap(), Err(Refused::Unknown));
        let file = fs::read_to_string(dir.join("mcp/tokens.json")).unwrap();
        assert!(!file.contains(&secret), "the secret is not on disk");
        // Another store on the same file (another process) sees the revocation.
        TokenStore::open(&dir).revoke(&rec.id).unwrap();
        assert_eq!(
            store.verify(&secret).unwrap(),
            Err(Refused::Revoked(rec.id.clone()))
        );
        assert_eq!(store.verify(&bob).unwrap(), Ok("bob".into()));
        assert!(store.revoke("nobody").is_err());
        assert!(store.issue("has space", None).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
