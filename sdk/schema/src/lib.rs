//! # runnel-schema: the schema registry as agents see it, and the event validator
//!
//! The broker's registry (`runnel schema register`) holds, per `event_type`, JSON Schemas for
//! `properties` with integer versions. It hands agents a [`Document`]: every type's versions,
//! and the policy for types without a schema ([`Unregistered`]). An agent compiles it into
//! [`Schemas`] and checks each event against the schema of its `event_type` and
//! `schema_version` before it is stored; a violation names the JSON pointer and the rule
//! ([`Violation`]). Drafts 2020-12 (the default) and 7 (`"$schema":
//! "http://json-schema.org/draft-07/schema#"`) are read; the validator is the `jsonschema`
//! crate's.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What happens to an event whose type has no schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// It is accepted unchecked (the default).
    #[default]
    Allow,
    /// It is rejected.
    Reject,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allow" => Ok(Policy::Allow),
            "reject" => Ok(Policy::Reject),
            other => Err(format!("{other:?} is not a policy (allow or reject)")),
        }
    }
}

/// The policy for event types without a schema: by the longest matching type prefix, else
/// the default.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Unregistered {
    /// For a type no prefix matches.
    #[serde(default)]
    pub default: Policy,
    /// By type prefix (`payment.` → `reject`).
    #[serde(default)]
    pub prefixes: BTreeMap<String, Policy>,
}

impl Unregistered {
    /// The policy for `event_type`.
    pub fn policy(&self, event_type: &str) -> Policy {
        self.prefixes
            .iter()
            .filter(|(p, _)| event_type.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, policy)| *policy)
            .unwrap_or(self.default)
    }
}

/// The registry as the broker hands it to agents.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Document {
    /// Grows by one with every change; an agent that has this generation is up to date.
    pub generation: u64,
    /// Per event type, its schemas by version.
    pub types: BTreeMap<String, BTreeMap<u32, Value>>,
    /// The policy for types without a schema.
    #[serde(default)]
    pub unregistered: Unregistered,
}

/// The JSON Schema drafts a schema may be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Draft {
    /// Draft 2020-12 (the default when `$schema` is absent).
    #[serde(rename = "2020-12")]
    Draft202012,
    /// Draft 7.
    #[serde(rename = "7")]
    Draft7,
}

/// The draft a schema declares in `$schema` (2020-12 when it declares none).
pub fn draft_of(schema: &Value) -> Result<Draft, String> {
    match schema.get("$schema") {
        None => Ok(Draft::Draft202012),
        Some(Value::String(s)) => {
            let s = s.trim_end_matches('#').trim_end_matches('/');
            match s
                .trim_start_matches("https://")
                .trim_start_matches("http://")
            {
                "json-schema.org/draft/2020-12/schema" => Ok(Draft::Draft202012),
                "json-schema.org/draft-07/schema" => Ok(Draft::Draft7),
                _ => Err(format!(
                    "$schema: {s:?} is not a supported draft (https://json-schema.org/draft/2020-12/schema or http://json-schema.org/draft-07/schema#)"
                )),
            }
        }
        Some(_) => Err("$schema: must be a string".into()),
    }
}

/// Compiles a schema, refusing one the validator cannot use (an unknown draft, a keyword of
/// the wrong form, a `$ref` that does not resolve, a remote `$ref`).
pub fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    if !schema.is_object() && !schema.is_boolean() {
        return Err("the schema must be a JSON object (or true/false)".into());
    }
    let draft = match draft_of(schema)? {
        Draft::Draft202012 => jsonschema::Draft::Draft202012,
        Draft::Draft7 => jsonschema::Draft::Draft7,
    };
    // Meta-validation first (against the draft `$schema` names): it names the keyword that is
    // malformed.
    if let Err(e) = jsonschema::meta::validate(schema) {
        let at = e.instance_path().as_str();
        let at = if at.is_empty() { "/" } else { at };
        return Err(format!("schema {at}: {e}"));
    }
    jsonschema::options()
        .with_draft(draft)
        .build(schema)
        .map_err(|e| format!("schema: {e}"))
}

/// One rule an event's `properties` broke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// JSON pointer into the event: `properties/amount`.
    pub pointer: String,
    /// The schema keyword broken (`type`, `required`, `additionalProperties`, ...), or
    /// `schema_version` / `unregistered` when the event has no schema to be checked against.
    pub rule: String,
    /// What the validator says.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.pointer, self.rule, self.message)
    }
}

/// Why an event was refused: every violation (up to [`VIOLATIONS_SHOWN`] in the text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The schema it was checked against, `TYPE vN`, or `None` when it had none.
    pub schema: Option<String>,
    /// The violations.
    pub violations: Vec<Violation>,
}

/// Violations spelled out in a rejection's text; the rest are counted.
pub const VIOLATIONS_SHOWN: usize = 5;

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.violations.iter().take(VIOLATIONS_SHOWN).enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{v}")?;
        }
        if self.violations.len() > VIOLATIONS_SHOWN {
            write!(f, "; and {} more", self.violations.len() - VIOLATIONS_SHOWN)?;
        }
        if let Some(s) = &self.schema {
            write!(f, " (schema {s})")?;
        }
        Ok(())
    }
}

/// A compiled [`Document`]: what an agent checks events with. Cheap to share.
#[derive(Debug, Default)]
pub struct Schemas {
    generation: u64,
    types: HashMap<String, BTreeMap<u32, Arc<jsonschema::Validator>>>,
    unregistered: Unregistered,
}

impl Schemas {
    /// Compiles every schema of `doc`; the error names the type and version that failed.
    pub fn compile(doc: &Document) -> Result<Schemas, String> {
        let mut types = HashMap::with_capacity(doc.types.len());
        for (ty, versions) in &doc.types {
            let mut compiled = BTreeMap::new();
            for (v, schema) in versions {
                let validator = compile(schema).map_err(|e| format!("{ty} v{v}: {e}"))?;
                compiled.insert(*v, Arc::new(validator));
            }
            types.insert(ty.clone(), compiled);
        }
        Ok(Schemas {
            generation: doc.generation,
            types,
            unregistered: doc.unregistered.clone(),
        })
    }

    /// The document's generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether nothing is checked: no schema, and every type allowed.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
            && self.unregistered.default == Policy::Allow
            && self
                .unregistered
                .prefixes
                .values()
                .all(|p| *p == Policy::Allow)
    }

    /// Checks one event's `properties` (compact JSON text, `None` for none) against the
    /// schema of its type and version.
    pub fn check(
        &self,
        event_type: &str,
        schema_version: u32,
        properties: Option<&str>,
    ) -> Result<(), Rejection> {
        let Some(versions) = self.types.get(event_type) else {
            return match self.unregistered.policy(event_type) {
                Policy::Allow => Ok(()),
                Policy::Reject => Err(Rejection {
                    schema: None,
                    violations: vec![Violation {
                        pointer: "event_type".into(),
                        rule: "unregistered".into(),
                        message: format!(
                            "{event_type:?} has no schema and types without one are rejected here (register one with runnel schema register)"
                        ),
                    }],
                }),
            };
        };
        let Some(validator) = versions.get(&schema_version) else {
            let known: Vec<String> = versions.keys().map(u32::to_string).collect();
            return Err(Rejection {
                schema: None,
                violations: vec![Violation {
                    pointer: "schema_version".into(),
                    rule: "schema_version".into(),
                    message: format!(
                        "{schema_version} is not a registered version of {event_type:?} (registered: {})",
                        known.join(", ")
                    ),
                }],
            });
        };
        let empty;
        let parsed;
        let instance = match properties {
            None => {
                empty = Value::Object(Default::default());
                &empty
            }
            Some(text) => {
                parsed = serde_json::from_str::<Value>(text).map_err(|e| Rejection {
                    schema: None,
                    violations: vec![Violation {
                        pointer: "properties".into(),
                        rule: "json".into(),
                        message: e.to_string(),
                    }],
                })?;
                &parsed
            }
        };
        if validator.is_valid(instance) {
            return Ok(());
        }
        let violations = validator
            .iter_errors(instance)
            .map(|e| violation(&e))
            .collect();
        Err(Rejection {
            schema: Some(format!("{event_type} v{schema_version}")),
            violations,
        })
    }
}

fn violation(e: &jsonschema::ValidationError<'_>) -> Violation {
    let mut pointer = format!("properties{}", e.instance_path().as_str());
    // `required` and `additionalProperties` point at the object: name the property too.
    match e.kind() {
        jsonschema::error::ValidationErrorKind::Required { property } => {
            if let Some(p) = property.as_str() {
                pointer = format!("{pointer}/{}", escape(p));
            }
        }
        jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected }
            if unexpected.len() == 1 =>
        {
            pointer = format!("{pointer}/{}", escape(&unexpected[0]));
        }
        _ => {}
    }
    Violation {
        pointer,
        rule: e.kind().keyword().to_string(),
        message: e.to_string(),
    }
}

fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payments() -> Schemas {
        let mut doc = Document {
            generation: 3,
            ..Document::default()
        };
        doc.types
            .entry("payment.completed".into())
            .or_default()
            .insert(
                1,
                json!({
                    "type": "object",
                    "properties": {"amount": {"type": "number"}, "currency": {"type": "string"}},
                    "required": ["amount", "currency"]
                }),
            );
        doc.unregistered
            .prefixes
            .insert("payment.".into(), Policy::Reject);
        Schemas::compile(&doc).unwrap()
    }

    #[test]
    fn a_violation_names_the_pointer_and_the_rule() {
        let s = payments();
        assert!(
            s.check(
                "payment.completed",
                1,
                Some(r#"{"amount":1.5,"currency":"EUR"}"#)
            )
            .is_ok()
        );
        let r = s
            .check("payment.completed", 1, Some(r#"{"amount":"x"}"#))
            .unwrap_err();
        let text = r.to_string();
        assert!(text.contains("properties/amount: type:"), "{text}");
        assert!(text.contains("properties/currency: required:"), "{text}");
        assert!(text.ends_with("(schema payment.completed v1)"), "{text}");
        let no_props = s.check("payment.completed", 1, None).unwrap_err();
        assert_eq!(no_props.violations.len(), 2, "{no_props}");
    }

    #[test]
    fn versions_and_unregistered_types_follow_the_policy() {
        let s = payments();
        let r = s.check("payment.completed", 2, Some("{}")).unwrap_err();
        assert_eq!(r.violations[0].pointer, "schema_version");
        assert!(r.to_string().contains("registered: 1"), "{r}");
        let r = s.check("payment.refunded", 1, None).unwrap_err();
        assert_eq!(r.violations[0].rule, "unregistered");
        assert!(s.check("page.viewed", 1, None).is_ok());
        assert!(!s.is_empty());
        assert!(Schemas::default().is_empty());
    }

    #[test]
    fn bad_schemas_are_refused_with_the_reason() {
        let e = compile(&json!({"type": "strang"})).unwrap_err();
        assert!(e.starts_with("schema"), "{e}");
        let e =
            compile(&json!({"$schema": "http://json-schema.org/draft-04/schema#"})).unwrap_err();
        assert!(e.contains("not a supported draft"), "{e}");
        assert!(compile(&json!({"$schema": "http://json-schema.org/draft-07/schema#", "items": [{"type": "string"}]})).is_ok());
        assert!(compile(&json!([1])).is_err());
    }
}
