//! # erasure: a user's events removed from the broker's stores, physically, and audited
//!
//! `POST /v1/erasures {"user_id": …}` (`runnel erase --user-id U`) records a request in
//! `state.redb` (table `erasures`) and answers `202 {"id"}` once that is committed. The request
//! holds no identity value, only keyed hashes of them ([`identity`]); it is also the audit
//! record: when each store finished and what was rewritten there.
//!
//! ## Passes ([`run`])
//! Every `erasure_interval_ms` while a request is unfinished, one pass covers all of them:
//! 1. **log**: the active segment is sealed ([`crate::log::BrokerLog::seal`]), then every
//!    sealed segment not yet clean for some request is rewritten with each selected event
//!    replaced by an empty one at the same offset ([`crate::log::erase`]);
//! 2. once the pipeline has committed past the sealed end (so whatever it made of those
//!    events is in the side topics), the side topics `dead_letters` and `late_events` (an
//!    entry whose event is selected becomes `{"source_offset", "erased": true}`) and
//!    `enriched` (an event whose log offset was erased becomes an empty one) are sealed and
//!    rewritten the same way.
//!
//! A segment without a selected event is read, not written. Rewrites are idempotent (an
//! erased event matches nothing), so a pass a crash cut short is simply run again; each
//! request records per store the offset below which it is clean, so the next pass starts
//! there. Agents keep accepted events in their spools until the broker has them: the log is
//! done for a request only after a pass that began `erasure_spool_grace_ms` after the request,
//! by when the agents have shipped what they had accepted before it.
//!
//! A request is late once `erasure_deadline_ms` have passed and it is unfinished:
//! `runnel_erasure_requests_late` in `/metrics`.
//!
//! May call: [`crate::log`], [`crate::topics`], [`crate::pipeline`] (its committed offset, and
//! the sealing of its topics), [`crate::state`].

pub mod identity;
pub mod run;

use std::collections::BTreeMap;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::state::{ERASURES, from_json, to_json};
use identity::{Digest, Field, Key};

/// The stores an erasure covers, in the order a pass visits them.
pub const STORES: [&str; 4] = ["log", "dead_letters", "late_events", "enriched"];

/// Longest identity value a request may name, in bytes.
pub const VALUE_BYTES_MAX: usize = 1024;
/// Most identity values in one request.
pub const VALUES_MAX: usize = 16;

/// How erasure runs; from the broker's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The identity fields a request may name (`user_id` always among them).
    pub fields: Vec<Field>,
    /// A request is late after this long.
    pub deadline_ms: i64,
    /// How long after a request agents may still ship events they accepted before it.
    pub spool_grace_ms: i64,
    /// Most unfinished requests.
    pub pending_max: usize,
}

/// What went wrong, and whether the caller can fix it.
#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    /// The request is wrong; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// No such request.
    #[error("{0}")]
    NotFound(String),
    /// Too many unfinished requests.
    #[error("{0}")]
    Busy(String),
    /// The state database failed.
    #[error("{0:#}")]
    Storage(anyhow::Error),
}

fn storage(e: impl Into<redb::Error>) -> ErasureError {
    ErasureError::Storage(anyhow::Error::new(e.into()))
}

/// One identity value of a request, as kept: its field and keyed hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hashed {
    /// The identity field.
    pub field: String,
    /// HMAC-SHA256 of `FIELD 0x00 VALUE` under the erasure key, hex.
    pub hash: String,
}

/// One segment a store rewrote for a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rewritten {
    /// The segment (its first offset: its file name).
    pub segment: u64,
    /// Entries (events, or topic entries) of the request's erased in it.
    pub entries: u64,
    /// Its bytes before.
    pub bytes_before: u64,
    /// Its bytes after.
    pub bytes_after: u64,
    /// When (UTC ms).
    pub at_ms: i64,
    /// Counted, not yet rewritten: recorded before the rewrite, so a crash between the two
    /// still leaves the audit right (the next pass finds the segment clean, or rewrites it).
    #[serde(default)]
    pub pending: bool,
}

/// A store's progress on one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreProgress {
    /// `log`, `dead_letters`, `late_events`, `enriched`.
    pub store: String,
    /// The store's offset below which it is clean of the request.
    pub clean_below: u64,
    /// When it finished (UTC ms); `None` while it has not.
    pub finished_ms: Option<i64>,
    /// What it rewrote.
    pub rewritten: Vec<Rewritten>,
    /// Records it could not read, so could not check (kept as they are; see the log).
    pub unreadable: u64,
}

/// One request: the audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Its id.
    pub id: u64,
    /// When it was made (UTC ms).
    pub created_ms: i64,
    /// When it is late (UTC ms).
    pub deadline_ms: i64,
    /// Whom it erases.
    pub identity: Vec<Hashed>,
    /// Each store's progress, in [`STORES`] order.
    pub stores: Vec<StoreProgress>,
    /// When every store had finished (UTC ms).
    pub finished_ms: Option<i64>,
    /// When the first pass over the log for it began (UTC ms): the next is due once the
    /// spool grace is over.
    #[serde(default)]
    pub first_pass_ms: Option<i64>,
}

impl Request {
    /// A store's progress.
    pub fn store(&self, store: &str) -> &StoreProgress {
        self.stores
            .iter()
            .find(|s| s.store == store)
            .expect("every request has every store")
    }

    /// Its identity as the matcher takes it.
    pub fn targets(&self) -> Vec<(Field, Digest)> {
        self.identity
            .iter()
            .filter_map(|h| Some((h.field.parse().ok()?, identity::unhex(&h.hash)?)))
            .collect()
    }

    /// `done`, `late` (unfinished past its deadline) or `running`.
    pub fn state(&self, now_ms: i64) -> &'static str {
        match self.finished_ms {
            Some(_) => "done",
            None if now_ms >= self.deadline_ms => "late",
            None => "running",
        }
    }

    /// The request as the admin API shows it.
    pub fn status(&self, now_ms: i64) -> runnel_client::api::ErasureStatus {
        use runnel_client::api::{ErasureIdentity, ErasureRewrite, ErasureStatus, ErasureStore};
        use runnel_event::envelope::rfc3339_ms;
        ErasureStatus {
            id: self.id,
            state: self.state(now_ms).to_string(),
            created: rfc3339_ms(self.created_ms),
            deadline: rfc3339_ms(self.deadline_ms),
            finished: self.finished_ms.map(rfc3339_ms),
            identity: self
                .identity
                .iter()
                .map(|h| ErasureIdentity {
                    field: h.field.clone(),
                    hash: h.hash.clone(),
                })
                .collect(),
            stores: self
                .stores
                .iter()
                .map(|s| ErasureStore {
                    store: s.store.clone(),
                    state: if s.finished_ms.is_some() {
                        "done"
                    } else {
                        "running"
                    }
                    .to_string(),
                    finished: s.finished_ms.map(rfc3339_ms),
                    clean_below: s.clean_below,
                    rewritten: s
                        .rewritten
                        .iter()
                        .map(|r| ErasureRewrite {
                            segment: r.segment,
                            entries: r.entries,
                            bytes_before: r.bytes_before,
                            bytes_after: r.bytes_after,
                            at: rfc3339_ms(r.at_ms),
                            pending: r.pending,
                        })
                        .collect(),
                    unreadable: s.unreadable,
                })
                .collect(),
        }
    }

    /// A store's progress.
    pub fn store_mut(&mut self, store: &str) -> &mut StoreProgress {
        self.stores
            .iter_mut()
            .find(|s| s.store == store)
            .expect("every request has every store")
    }
}

/// The requests, in `state.redb`. Cheap to clone.
#[derive(Clone)]
pub struct Erasures {
    db: Arc<Database>,
    key: Key,
    settings: Arc<Settings>,
    /// Wakes the passes when a request comes.
    wake: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Erasures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Erasures").finish_non_exhaustive()
    }
}

impl Erasures {
    /// Opens the requests (creating the table) with the erasure key's secret.
    pub fn open(db: Arc<Database>, secret: &[u8], settings: Settings) -> anyhow::Result<Self> {
        let txn = db.begin_write()?;
        txn.open_table(ERASURES)?;
        txn.commit()?;
        Ok(Self {
            db,
            key: Key::new(secret),
            settings: Arc::new(settings),
            wake: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Records a request for the identity values `values` (field name → value), durably;
    /// returns it.
    pub fn request(
        &self,
        values: &BTreeMap<String, String>,
        now_ms: i64,
    ) -> Result<Request, ErasureError> {
        let allowed = || {
            self.settings
                .fields
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if values.is_empty() {
            return Err(ErasureError::Invalid(format!(
                "name at least one identity field ({})",
                allowed()
            )));
        }
        if values.len() > VALUES_MAX {
            return Err(ErasureError::Invalid(format!(
                "{} identity values, more than {VALUES_MAX}",
                values.len()
            )));
        }
        let mut identity = Vec::new();
        for (name, value) in values {
            let field: Field = name.parse().map_err(ErasureError::Invalid)?;
            if !self.settings.fields.contains(&field) {
                return Err(ErasureError::Invalid(format!(
                    "{name}: not an identity field of this broker (erasure_identity_fields: {})",
                    allowed()
                )));
            }
            if value.is_empty() || value.len() > VALUE_BYTES_MAX {
                return Err(ErasureError::Invalid(format!(
                    "{name}: the value must be 1 to {VALUE_BYTES_MAX} bytes, not {}",
                    value.len()
                )));
            }
            identity.push(Hashed {
                field: field.to_string(),
                hash: identity::hex(&self.key.digest(&field, value)),
            });
        }
        let txn = self.db.begin_write().map_err(storage)?;
        let request = {
            let mut t = txn.open_table(ERASURES).map_err(storage)?;
            let mut pending = 0usize;
            for entry in t.iter().map_err(storage)? {
                let (_, v) = entry.map_err(storage)?;
                let r: Request = from_json("erasure", v.value()).map_err(ErasureError::Storage)?;
                pending += usize::from(r.finished_ms.is_none());
            }
            if pending >= self.settings.pending_max {
                return Err(ErasureError::Busy(format!(
                    "{pending} erasures are unfinished, the most erasure_pending_max allows; retry when one is done"
                )));
            }
            let id = t.last().map_err(storage)?.map_or(1, |(k, _)| k.value() + 1);
            let request = Request {
                id,
                created_ms: now_ms,
                deadline_ms: now_ms.saturating_add(self.settings.deadline_ms),
                identity,
                stores: STORES
                    .iter()
                    .map(|s| StoreProgress {
                        store: (*s).to_string(),
                        clean_below: 0,
                        finished_ms: None,
                        rewritten: Vec::new(),
                        unreadable: 0,
                    })
                    .collect(),
                finished_ms: None,
                first_pass_ms: None,
            };
            t.insert(id, to_json(&request).as_slice())
                .map_err(storage)?;
            request
        };
        txn.commit().map_err(storage)?;
        self.wake.notify_one();
        Ok(request)
    }

    /// Every request, oldest first.
    pub fn list(&self) -> Result<Vec<Request>, ErasureError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(ERASURES).map_err(storage)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(storage)? {
            let (_, v) = entry.map_err(storage)?;
            out.push(from_json("erasure", v.value()).map_err(ErasureError::Storage)?);
        }
        Ok(out)
    }

    /// One request.
    pub fn get(&self, id: u64) -> Result<Request, ErasureError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let t = txn.open_table(ERASURES).map_err(storage)?;
        let v = t
            .get(id)
            .map_err(storage)?
            .ok_or_else(|| ErasureError::NotFound(format!("no erasure {id}")))?;
        from_json("erasure", v.value()).map_err(ErasureError::Storage)
    }

    /// The unfinished requests, oldest first.
    pub fn unfinished(&self) -> Result<Vec<Request>, ErasureError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|r| r.finished_ms.is_none())
            .collect())
    }

    /// Writes back requests a pass changed.
    pub fn save(&self, requests: &[Request]) -> Result<(), ErasureError> {
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut t = txn.open_table(ERASURES).map_err(storage)?;
            for r in requests {
                t.insert(r.id, to_json(r).as_slice()).map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)
    }

    /// Waits for a new request or `timeout`.
    pub async fn woken(&self, timeout: std::time::Duration) {
        let _ = tokio::time::timeout(timeout, self.wake.notified()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn erasures(pending_max: usize) -> (tempfile::TempDir, Erasures) {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("state.redb")).unwrap());
        let settings = Settings {
            fields: vec![Field::UserId, Field::Property("email".into())],
            deadline_ms: 1000,
            spool_grace_ms: 0,
            pending_max,
        };
        (dir, Erasures::open(db, b"secret", settings).unwrap())
    }

    fn values(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn a_request_keeps_hashes_and_every_store() {
        let (_d, e) = erasures(10);
        let r = e
            .request(
                &values(&[("user_id", "u-1"), ("properties.email", "a@b")]),
                5,
            )
            .unwrap();
        assert_eq!(r.id, 1);
        assert_eq!(r.deadline_ms, 1005);
        assert_eq!(r.stores.len(), STORES.len());
        let json = serde_json::to_string(&e.get(1).unwrap()).unwrap();
        assert!(!json.contains("u-1") && !json.contains("a@b"), "{json}");
        assert_eq!(r.targets().len(), 2);
        assert_eq!(r.state(5), "running");
        assert_eq!(r.state(1005), "late");
        assert_eq!(e.request(&values(&[("user_id", "u-2")]), 6).unwrap().id, 2);
        assert_eq!(e.unfinished().unwrap().len(), 2);
    }

    #[test]
    fn a_bad_request_is_refused_by_field() {
        let (_d, e) = erasures(1);
        let err = |kv: &[(&str, &str)]| e.request(&values(kv), 0).unwrap_err().to_string();
        assert!(err(&[]).contains("at least one identity field (user_id, properties.email)"));
        assert!(
            err(&[("device_id", "d")]).contains("device_id: not an identity field of this broker")
        );
        assert!(err(&[("email", "d")]).contains("\"email\" is not an identity field"));
        assert!(err(&[("user_id", "")]).contains("user_id: the value must be 1 to 1024 bytes"));
        let long = "x".repeat(VALUE_BYTES_MAX + 1);
        assert!(err(&[("user_id", &long)]).contains("not 1025"));
        e.request(&values(&[("user_id", "u")]), 0).unwrap();
        assert!(err(&[("user_id", "v")]).contains("erasure_pending_max"));
        assert!(matches!(
            e.get(9),
            Err(ErasureError::NotFound(m)) if m == "no erasure 9"
        ));
    }
}
