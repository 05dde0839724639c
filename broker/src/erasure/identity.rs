//! Who an erasure is about: identity fields, their keyed hashes, and the match of an event.
//!
//! A request names values of identity fields (`user_id` always; `device_id`, `session_id` or a
//! top-level property `properties.NAME` when the operator lists them in
//! `erasure_identity_fields`). The broker keeps none of those values: it stores each as
//! HMAC-SHA256 under the erasure key (`DATA_DIR/erasure/key`, made at first start, mode 0600)
//! of `FIELD 0x00 VALUE`, and an event matches when the keyed hash of one of its identity
//! fields is among a request's. So neither the request record nor the audit log holds a user
//! id, and the rewrite of a store needs none: it hashes what it reads.

use std::collections::HashSet;

use ring::hmac;
use runnel_event::envelope::ArchivedEvent;
use serde_json::Value;

/// One identity field.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// The envelope's `user_id`.
    UserId,
    /// The envelope's `device_id`.
    DeviceId,
    /// The envelope's `session_id`.
    SessionId,
    /// A top-level property (a string, or a number as its JSON text).
    Property(String),
}

/// Longest property name an identity field may name.
pub const PROPERTY_NAME_BYTES_MAX: usize = 256;

impl std::str::FromStr for Field {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "user_id" => Ok(Self::UserId),
            "device_id" => Ok(Self::DeviceId),
            "session_id" => Ok(Self::SessionId),
            _ => match s.strip_prefix("properties.") {
                Some(p) if !p.is_empty() && p.len() <= PROPERTY_NAME_BYTES_MAX => {
                    Ok(Self::Property(p.to_string()))
                }
                _ => Err(format!(
                    "{s:?} is not an identity field (user_id, device_id, session_id or properties.NAME with NAME 1 to {PROPERTY_NAME_BYTES_MAX} bytes)"
                )),
            },
        }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UserId => f.write_str("user_id"),
            Self::DeviceId => f.write_str("device_id"),
            Self::SessionId => f.write_str("session_id"),
            Self::Property(p) => write!(f, "properties.{p}"),
        }
    }
}

/// A keyed hash of one identity value.
pub type Digest = [u8; 32];

/// The erasure key.
#[derive(Clone)]
pub struct Key(hmac::Key);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// The key from its secret bytes.
    pub fn new(secret: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// The keyed hash of `value` of `field`.
    pub fn digest(&self, field: &Field, value: &str) -> Digest {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(field.to_string().as_bytes());
        ctx.update(&[0]);
        ctx.update(value.as_bytes());
        ctx.sign()
            .as_ref()
            .try_into()
            .expect("HMAC-SHA256 is 32 bytes")
    }
}

/// Hex of a digest, as the audit log shows it.
pub fn hex(d: &Digest) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// A digest from its hex.
pub fn unhex(s: &str) -> Option<Digest> {
    if s.len() != 64 {
        return None;
    }
    let mut d = [0u8; 32];
    for (i, b) in d.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(d)
}

/// Says whether an event belongs to any of a set of erasures.
#[derive(Debug, Clone)]
pub struct Matcher {
    key: Key,
    /// The fields any target names, so an event's others are not hashed.
    fields: Vec<Field>,
    targets: HashSet<(Field, Digest)>,
}

impl Matcher {
    /// A matcher for `targets`.
    pub fn new(key: Key, targets: impl IntoIterator<Item = (Field, Digest)>) -> Self {
        let targets: HashSet<(Field, Digest)> = targets.into_iter().collect();
        let mut fields: Vec<Field> = targets.iter().map(|(f, _)| f.clone()).collect();
        fields.sort();
        fields.dedup();
        Self {
            key,
            fields,
            targets,
        }
    }

    /// Whether there is nothing to match.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    fn hit(&self, field: &Field, value: &str) -> bool {
        self.targets
            .contains(&(field.clone(), self.key.digest(field, value)))
    }

    fn property_hit(&self, name: &str, properties: &serde_json::Map<String, Value>) -> bool {
        let field = Field::Property(name.to_string());
        match properties.get(name) {
            Some(Value::String(s)) => self.hit(&field, s),
            Some(v @ Value::Number(_)) => self.hit(&field, &v.to_string()),
            _ => false,
        }
    }

    /// Whether a log event matches.
    pub fn matches_event(&self, e: &ArchivedEvent) -> bool {
        let mut properties: Option<Option<serde_json::Map<String, Value>>> = None;
        self.fields.iter().any(|f| match f {
            Field::UserId => e.user_id.as_ref().is_some_and(|v| self.hit(f, v.as_str())),
            Field::DeviceId => e
                .device_id
                .as_ref()
                .is_some_and(|v| self.hit(f, v.as_str())),
            Field::SessionId => e
                .session_id
                .as_ref()
                .is_some_and(|v| self.hit(f, v.as_str())),
            Field::Property(name) => properties
                .get_or_insert_with(|| {
                    e.properties
                        .as_ref()
                        .and_then(|p| serde_json::from_str(p.as_str()).ok())
                })
                .as_ref()
                .is_some_and(|m| self.property_hit(name, m)),
        })
    }

    /// Whether an event as JSON (the `event` of a side-topic entry) matches.
    pub fn matches_json(&self, event: &Value) -> bool {
        let text = |k: &str| event.get(k).and_then(Value::as_str);
        self.fields.iter().any(|f| match f {
            Field::UserId => text("user_id").is_some_and(|v| self.hit(f, v)),
            Field::DeviceId => text("device_id").is_some_and(|v| self.hit(f, v)),
            Field::SessionId => text("session_id").is_some_and(|v| self.hit(f, v)),
            Field::Property(name) => event
                .get("properties")
                .and_then(Value::as_object)
                .is_some_and(|m| self.property_hit(name, m)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_parse_and_print_back() {
        for s in ["user_id", "device_id", "session_id", "properties.email"] {
            assert_eq!(s.parse::<Field>().unwrap().to_string(), s);
        }
        for bad in ["", "email", "properties.", "event_id"] {
            let e = bad.parse::<Field>().unwrap_err();
            assert!(e.contains("not an identity field"), "{e}");
        }
    }

    #[test]
    fn digests_are_keyed_and_per_field() {
        let a = Key::new(b"one key");
        let b = Key::new(b"another key");
        let d = a.digest(&Field::UserId, "u-1");
        assert_eq!(d, a.digest(&Field::UserId, "u-1"));
        assert_ne!(d, b.digest(&Field::UserId, "u-1"));
        assert_ne!(d, a.digest(&Field::DeviceId, "u-1"));
        assert_eq!(unhex(&hex(&d)), Some(d));
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn json_events_match_by_any_field() {
        let key = Key::new(b"k");
        let email = Field::Property("email".into());
        let m = Matcher::new(
            key.clone(),
            [
                (Field::UserId, key.digest(&Field::UserId, "u-1")),
                (email.clone(), key.digest(&email, "a@example.com")),
            ],
        );
        let ev = |v: Value| m.matches_json(&v);
        assert!(ev(serde_json::json!({"user_id": "u-1"})));
        assert!(!ev(serde_json::json!({"user_id": "u-2"})));
        assert!(!ev(serde_json::json!({"device_id": "u-1"})));
        assert!(ev(
            serde_json::json!({"user_id": "u-2", "properties": {"email": "a@example.com"}})
        ));
        assert!(!ev(
            serde_json::json!({"properties": {"email": "b@example.com"}})
        ));
    }
}
