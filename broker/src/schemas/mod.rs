//! The schema registry (`docs/schemas.md`): per `event_type`, JSON Schemas for `properties`
//! with integer versions, a compatibility mode per type and a default, in `state.redb` (tables
//! `schemas` and `schema_settings`, see [`crate::state`]).
//!
//! A registration is checked before it is stored: the schema must compile (drafts 2020-12 and
//! 7, `runnel_schema::compile`), and it must keep the type's mode against the versions before it
//! ([`compat::check`]); one that breaks it is refused with every violation. Registering the
//! latest version's schema again answers that version. Every change grows the registry's
//! generation and is handed to the agents ([`Registry::subscribe`]; `crate::ingest` pushes it
//! over each agent's registry connection), which check events against it at the edge.
//!
//! Blocking: call it from `spawn_blocking`.
//!
//! May call: [`crate::state`].

pub mod compat;

use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use runnel_schema::{Document, Unregistered};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

pub use compat::{Mode, Violation};

use crate::state::{SCHEMA_SETTINGS, SCHEMAS, from_json, to_json};

/// The registry's limits and the policy for types without a schema (broker settings).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Largest schema, in bytes of its JSON (`schema_bytes_max`).
    pub bytes_max: usize,
    /// Most versions of one type (`schema_versions_max`).
    pub versions_max: usize,
    /// Most event types with a schema (`schema_types_max`).
    pub types_max: usize,
    /// The mode of a type that has none of its own, until `runnel schema mode` sets one
    /// (`schema_mode_default`).
    pub mode_default: Mode,
    /// What agents do with an event whose type has no schema (`schema_unregistered`,
    /// `schema_unregistered_prefixes`).
    pub unregistered: Unregistered,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bytes_max: 64 << 10,
            versions_max: 1000,
            types_max: 10_000,
            mode_default: Mode::Backward,
            unregistered: Unregistered::default(),
        }
    }
}

/// One type's schemas.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchemaRecord {
    /// The event type.
    pub event_type: String,
    /// Its own mode; `None`: the registry's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Every version, oldest first.
    pub versions: Vec<SchemaVersion>,
}

/// One registered version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchemaVersion {
    /// `1`, `2`, ...
    pub version: u32,
    /// The schema for `properties`.
    pub schema: Value,
    /// When it was registered (UTC ms).
    pub registered_ms: i64,
}

/// What a check found: whether `schema` may be registered as the next version.
#[derive(Debug, Clone, Serialize)]
pub struct CheckOutcome {
    /// The mode it was checked under.
    pub mode: Mode,
    /// The version it would get (or already has, when `existing`).
    pub version: u32,
    /// It is the latest version's schema already.
    pub existing: bool,
    /// Every incompatible difference (empty: compatible).
    pub violations: Vec<Violation>,
}

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// Nothing registered under that type.
    #[error("{0}")]
    NotFound(String),
    /// The request is wrong (the message names the field or the limit).
    #[error("{0}")]
    Invalid(String),
    /// The schema breaks the type's mode.
    #[error("{message}")]
    Incompatible {
        /// Every violation, one per line after the first.
        message: String,
        /// The check.
        outcome: CheckOutcome,
    },
    /// The database failed.
    #[error("state.redb: {0}")]
    Storage(#[from] anyhow::Error),
}

fn storage(e: impl Into<redb::Error>) -> SchemaError {
    SchemaError::Storage(anyhow::Error::new(e.into()))
}

const DEFAULT_MODE_KEY: &str = "default_mode";
const GENERATION_KEY: &str = "generation";

/// The registry; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    db: Arc<Database>,
    settings: Arc<Settings>,
    doc: Arc<watch::Sender<Arc<Document>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

/// Checks an event type's name as the event contract does.
pub fn check_type(event_type: &str) -> Result<(), SchemaError> {
    runnel_event::check_event_type(event_type)
        .map_err(|rule| SchemaError::Invalid(format!("event_type: {rule}")))
}

impl Registry {
    /// Opens the registry in `db` (creating its tables).
    pub fn open(db: Arc<Database>, settings: Settings) -> Result<Self, SchemaError> {
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(SCHEMAS).map_err(storage)?;
        txn.open_table(SCHEMA_SETTINGS).map_err(storage)?;
        txn.commit().map_err(storage)?;
        let settings = Arc::new(settings);
        let (tx, _) = watch::channel(Arc::new(Document::default()));
        let r = Registry {
            db,
            settings,
            doc: Arc::new(tx),
        };
        r.publish()?;
        Ok(r)
    }

    /// The current document, and each one after it.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Document>> {
        self.doc.subscribe()
    }

    /// The current document.
    pub fn document(&self) -> Arc<Document> {
        self.doc.borrow().clone()
    }

    fn publish(&self) -> Result<(), SchemaError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let schemas = txn.open_table(SCHEMAS).map_err(storage)?;
        let settings = txn.open_table(SCHEMA_SETTINGS).map_err(storage)?;
        let generation = match settings.get(GENERATION_KEY).map_err(storage)? {
            Some(v) => from_json("schema generation", v.value())?,
            None => 0,
        };
        let mut doc = Document {
            generation,
            unregistered: self.settings.unregistered.clone(),
            ..Document::default()
        };
        for entry in schemas.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let record: SchemaRecord = from_json("schema", v.value())?;
            doc.types.insert(
                k.value().to_string(),
                record
                    .versions
                    .into_iter()
                    .map(|v| (v.version, v.schema))
                    .collect(),
            );
        }
        self.doc.send_replace(Arc::new(doc));
        Ok(())
    }

    /// The default mode (set with `runnel schema mode MODE`, else `schema_mode_default`).
    pub fn default_mode(&self) -> Result<Mode, SchemaError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let settings = txn.open_table(SCHEMA_SETTINGS).map_err(storage)?;
        match settings.get(DEFAULT_MODE_KEY).map_err(storage)? {
            Some(v) => Ok(from_json("schema default mode", v.value())?),
            None => Ok(self.settings.mode_default),
        }
    }

    /// Every type's record, by type.
    pub fn list(&self) -> Result<Vec<SchemaRecord>, SchemaError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let schemas = txn.open_table(SCHEMAS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in schemas.iter().map_err(storage)? {
            let (_, v) = entry.map_err(storage)?;
            out.push(from_json("schema", v.value())?);
        }
        Ok(out)
    }

    /// One type's record.
    pub fn get(&self, event_type: &str) -> Result<SchemaRecord, SchemaError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let schemas = txn.open_table(SCHEMAS).map_err(storage)?;
        match schemas.get(event_type).map_err(storage)? {
            Some(v) => Ok(from_json("schema", v.value())?),
            None => Err(SchemaError::NotFound(format!(
                "no schema is registered for event type {event_type:?}"
            ))),
        }
    }

    /// Checks `schema` as the next version of `event_type` without registering it.
    pub fn check(&self, event_type: &str, schema: &Value) -> Result<CheckOutcome, SchemaError> {
        check_type(event_type)?;
        self.valid(schema)?;
        let record = match self.get(event_type) {
            Ok(r) => Some(r),
            Err(SchemaError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        let default = self.default_mode()?;
        Ok(outcome(record.as_ref(), default, schema))
    }

    fn valid(&self, schema: &Value) -> Result<(), SchemaError> {
        let bytes = serde_json::to_vec(schema)
            .expect("a Value serializes")
            .len();
        if bytes > self.settings.bytes_max {
            return Err(SchemaError::Invalid(format!(
                "schema: {bytes} bytes is over schema_bytes_max ({})",
                self.settings.bytes_max
            )));
        }
        runnel_schema::compile(schema).map_err(SchemaError::Invalid)?;
        Ok(())
    }

    /// Registers `schema` as the next version of `event_type` if it keeps the type's mode;
    /// the latest version's schema again answers that version (`true`: it is new).
    pub fn register(
        &self,
        event_type: &str,
        schema: Value,
        now_ms: i64,
    ) -> Result<(u32, bool), SchemaError> {
        check_type(event_type)?;
        self.valid(&schema)?;
        let default = self.default_mode()?;
        let txn = self.db.begin_write().map_err(storage)?;
        let registered = {
            let mut schemas = txn.open_table(SCHEMAS).map_err(storage)?;
            let old: Option<SchemaRecord> = match schemas.get(event_type).map_err(storage)? {
                Some(v) => Some(from_json("schema", v.value())?),
                None => None,
            };
            if old.is_none() && schemas.len().map_err(storage)? as usize >= self.settings.types_max
            {
                return Err(SchemaError::Invalid(format!(
                    "event_type: {} types have schemas, schema_types_max",
                    self.settings.types_max
                )));
            }
            let found = outcome(old.as_ref(), default, &schema);
            if found.existing {
                return Ok((found.version, false));
            }
            if !found.violations.is_empty() {
                let mut message = format!(
                    "{event_type}: the schema breaks {} compatibility; {} violation{}:",
                    found.mode,
                    found.violations.len(),
                    if found.violations.len() == 1 { "" } else { "s" }
                );
                for v in &found.violations {
                    message.push_str("\n  ");
                    message.push_str(&v.message);
                }
                return Err(SchemaError::Incompatible {
                    message,
                    outcome: found,
                });
            }
            let mut record = old.unwrap_or(SchemaRecord {
                event_type: event_type.to_string(),
                mode: None,
                versions: Vec::new(),
            });
            if record.versions.len() >= self.settings.versions_max {
                return Err(SchemaError::Invalid(format!(
                    "{event_type}: {} versions is schema_versions_max",
                    self.settings.versions_max
                )));
            }
            record.versions.push(SchemaVersion {
                version: found.version,
                schema,
                registered_ms: now_ms,
            });
            schemas
                .insert(event_type, to_json(&record).as_slice())
                .map_err(storage)?;
            found.version
        };
        bump(&txn)?;
        txn.commit().map_err(storage)?;
        self.publish()?;
        Ok((registered, true))
    }

    /// Sets the mode of `event_type`, or the default with `None`.
    pub fn set_mode(&self, event_type: Option<&str>, mode: Mode) -> Result<(), SchemaError> {
        let txn = self.db.begin_write().map_err(storage)?;
        match event_type {
            None => {
                let mut settings = txn.open_table(SCHEMA_SETTINGS).map_err(storage)?;
                settings
                    .insert(DEFAULT_MODE_KEY, to_json(&mode).as_slice())
                    .map_err(storage)?;
            }
            Some(ty) => {
                check_type(ty)?;
                let mut schemas = txn.open_table(SCHEMAS).map_err(storage)?;
                let mut record: SchemaRecord = match schemas.get(ty).map_err(storage)? {
                    Some(v) => from_json("schema", v.value())?,
                    None => {
                        return Err(SchemaError::NotFound(format!(
                            "no schema is registered for event type {ty:?}: register one first"
                        )));
                    }
                };
                record.mode = Some(mode);
                schemas
                    .insert(ty, to_json(&record).as_slice())
                    .map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)?;
        Ok(())
    }
}

fn bump(txn: &redb::WriteTransaction) -> Result<(), SchemaError> {
    let mut settings = txn.open_table(SCHEMA_SETTINGS).map_err(storage)?;
    let generation: u64 = match settings.get(GENERATION_KEY).map_err(storage)? {
        Some(v) => from_json("schema generation", v.value())?,
        None => 0,
    };
    settings
        .insert(GENERATION_KEY, to_json(&(generation + 1)).as_slice())
        .map_err(storage)?;
    Ok(())
}

fn outcome(record: Option<&SchemaRecord>, default: Mode, schema: &Value) -> CheckOutcome {
    let mode = record.and_then(|r| r.mode).unwrap_or(default);
    let versions = record.map(|r| r.versions.as_slice()).unwrap_or_default();
    if let Some(last) = versions.last()
        && last.schema == *schema
    {
        return CheckOutcome {
            mode,
            version: last.version,
            existing: true,
            violations: Vec::new(),
        };
    }
    let earlier: Vec<(u32, &Value)> = versions.iter().map(|v| (v.version, &v.schema)).collect();
    CheckOutcome {
        mode,
        version: versions.last().map_or(1, |v| v.version + 1),
        existing: false,
        violations: compat::check(mode, &earlier, schema),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn registry(dir: &std::path::Path) -> Registry {
        let db = Arc::new(Database::create(dir.join("state.redb")).unwrap());
        Registry::open(db, Settings::default()).unwrap()
    }

    #[test]
    fn registers_versions_refuses_a_breaking_one_and_publishes_each_change() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let mut rx = r.subscribe();
        let v1 = json!({"type": "object", "properties": {"amount": {"type": "number"}}});
        assert_eq!(
            r.register("payment.completed", v1.clone(), 1).unwrap(),
            (1, true)
        );
        assert_eq!(r.register("payment.completed", v1, 2).unwrap(), (1, false));
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().generation, 1);
        let bad = json!({"type": "object", "properties": {"amount": {"type": "integer"}}});
        match r.register("payment.completed", bad, 3) {
            Err(SchemaError::Incompatible { message, outcome }) => {
                assert!(
                    message.contains(
                        "/properties/amount: type narrowed from number to integer (BACKWARD)"
                    ),
                    "{message}"
                );
                assert_eq!(outcome.version, 2);
            }
            other => panic!("{other:?}"),
        }
        let ok =
            json!({"type": "object", "properties": {"amount": {"type": "number"}}, "required": []});
        assert_eq!(r.register("payment.completed", ok, 4).unwrap(), (2, true));
        assert_eq!(r.document().types["payment.completed"].len(), 2);
        assert_eq!(r.document().generation, 2);
        r.set_mode(Some("payment.completed"), Mode::None).unwrap();
        let any = json!({"type": "string"});
        assert_eq!(r.register("payment.completed", any, 5).unwrap(), (3, true));
        // A reopened registry hands out the same document.
        drop(r);
        let r = registry(dir.path());
        assert_eq!(r.document().generation, 3);
        assert_eq!(r.get("payment.completed").unwrap().mode, Some(Mode::None));
    }

    #[test]
    fn bad_input_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let e = r
            .register("Bad Type", json!({}), 1)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("event_type:"), "{e}");
        let e = r
            .register("a.b", json!({"type": 5}), 1)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("schema"), "{e}");
        let e = r.set_mode(Some("a.b"), Mode::Full).unwrap_err().to_string();
        assert!(e.contains("register one first"), "{e}");
        let huge = json!({"description": "x".repeat(70 << 10)});
        let e = r.register("a.b", huge, 1).unwrap_err().to_string();
        assert!(e.contains("schema_bytes_max"), "{e}");
    }
}
