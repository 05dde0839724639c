//! # runnel-plugin: a Runnel plugin is one function
//!
//! An enricher decides, for each event, to keep it, replace it, or drop it (with a reason). The
//! host calls the plugin once per batch; this crate turns that call into one call of your
//! function per event, reading events straight out of the batch bytes without copying.
//!
//! ```ignore
//! //! tag-team: drops debug events and tags the rest with the `team` parameter.
//!
//! use runnel_plugin::{Decision, Event, Field, Params};
//!
//! /// Drops debug events, and tags everything else with the plugin's `team` parameter.
//! fn tag(event: &Event<'_>) -> Decision {
//!     if event.event_type().starts_with("debug.") {
//!         return Decision::Drop("debug events stay on the host".into());
//!     }
//!     let team = runnel_plugin::params().get("team").unwrap_or("none");
//!     let version = event.field(Field::AppVersion).unwrap_or("?");
//!     let mut out = event.to_owned_event();
//!     out.set(Field::AppVersion, Some(format!("{version}+{team}")));
//!     Decision::Replace(out)
//! }
//!
//! /// Refuses a team name longer than 32 bytes (the deploy fails with this message).
//! fn check(params: &Params) -> Result<(), String> {
//!     match params.get("team") {
//!         Some(t) if t.len() > 32 => Err(format!("team: {} bytes, at most 32", t.len())),
//!         _ => Ok(()),
//!     }
//! }
//!
//! runnel_plugin::enricher!(tag, init = check);
//! ```
//!
//! This example is `plugins/tag-team` in the Runnel repository, built by its CI (a test checks
//! that the two are the same).
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component to deploy. `enricher!(f, init = g)` also
//! runs `g(&Params) -> Result<(), String>` once per instance, to check parameters: an error
//! refuses the deploy.
//!
//! A plugin has no filesystem or network, and its clocks and randomness are deterministic unless
//! the operator grants them; it can log through [`log`] and
//! count through [`counter_add`]. It must not keep state the host relies on: the host may
//! replace an instance at any time.

use runnel_batch::{BatchView, BatchWriter};
pub use runnel_batch::{EventRef as Event, Field, OwnedEvent};

/// The generated bindings of the `enricher` world (`wit/plugin.wit`).
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "enricher",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_enricher_world",
        default_bindings_module: "runnel_plugin::bindings",
    });
}

use bindings::runnel::plugin::types::{EnrichResult, Outcome, Param};

/// What becomes of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Pass it on unchanged.
    Keep,
    /// Pass this event on instead.
    Replace(OwnedEvent),
    /// Pass the event on with its `properties` replaced by this JSON text (`None`: removed),
    /// every other field as it was. Cheaper than [`Decision::Replace`] when only `properties`
    /// changes: no field is copied into an [`OwnedEvent`] first.
    ReplaceProperties(Option<String>),
    /// Drop it; the reason is counted by the host.
    Drop(String),
}

pub use runnel_guest::{Params, counter_add, log, params};

/// True if `text` (JSON, e.g. an event's `properties`) has any of `keys` as a quoted string
/// anywhere: one pass over its quotes. A pre-check that lets an enricher keep an event without
/// parsing it; in the sandbox it is cheaper than a substring search per key (which sets up its
/// searcher at every call). It can say true for a key that is a value or nested (then parse and
/// look); it never says false for a key that is there unescaped.
#[inline]
pub fn mentions_key<const N: usize>(text: &str, keys: [&str; N]) -> bool {
    let b = text.as_bytes();
    let mut at = 0;
    while let Some(q) = b[at..].iter().position(|&c| c == b'"') {
        let rest = &b[at + q + 1..];
        // With the keys known where it is inlined, each test is a compare of a few bytes.
        if keys
            .iter()
            .any(|k| rest.get(..k.len()) == Some(k.as_bytes()) && rest.get(k.len()) == Some(&b'"'))
        {
            return true;
        }
        at += q + 1;
    }
    false
}

#[doc(hidden)]
pub fn __init(params: Vec<Param>, check: fn(&Params) -> Result<(), String>) -> Result<(), String> {
    let params = Params::new(params.into_iter().map(|p| (p.name, p.value)).collect());
    check(&params)?;
    runnel_guest::set_params(params)
}

#[doc(hidden)]
pub fn __enrich(batch: &[u8], decide: fn(&Event<'_>) -> Decision) -> Result<EnrichResult, String> {
    let view = BatchView::new(batch).map_err(|e| e.to_string())?;
    let mut outcomes = Vec::with_capacity(view.len());
    let mut replacements = BatchWriter::new();
    for event in view.iter() {
        outcomes.push(match decide(&event) {
            Decision::Keep => Outcome::Keep,
            Decision::Drop(reason) => Outcome::Drop(reason),
            Decision::Replace(new) => {
                replacements.push_owned(&new);
                Outcome::Replace(replacements.len() as u32 - 1)
            }
            Decision::ReplaceProperties(properties) => {
                replacements.push_with_properties(&event, properties.as_deref());
                Outcome::Replace(replacements.len() as u32 - 1)
            }
        });
    }
    if replacements.is_empty() && outcomes.iter().all(|o| matches!(o, Outcome::Keep)) {
        // "Keep every event" in its short form: nothing to lift on the host side.
        return Ok(EnrichResult {
            outcomes: Vec::new(),
            replacements: Vec::new(),
        });
    }
    let replacements = if replacements.is_empty() {
        Vec::new()
    } else {
        replacements.finish()
    };
    Ok(EnrichResult {
        outcomes,
        replacements,
    })
}

/// Makes `decide: fn(&Event) -> Decision` this component's enricher (see the crate docs).
#[macro_export]
macro_rules! enricher {
    ($decide:path) => {
        $crate::enricher!($decide, init = |_: &$crate::Params| Ok(()));
    };
    ($decide:path, init = $init:expr) => {
        struct __RunnelEnricher;

        impl $crate::bindings::Guest for __RunnelEnricher {
            fn init(
                params: ::std::vec::Vec<$crate::bindings::runnel::plugin::types::Param>,
            ) -> ::std::result::Result<(), ::std::string::String> {
                $crate::__init(params, $init)
            }

            fn enrich(
                batch: ::std::vec::Vec<u8>,
            ) -> ::std::result::Result<
                $crate::bindings::runnel::plugin::types::EnrichResult,
                ::std::string::String,
            > {
                $crate::__enrich(&batch, $decide)
            }
        }

        $crate::bindings::__export_enricher_world!(__RunnelEnricher with_types_in $crate::bindings);
    };
}

#[cfg(test)]
mod tests {
    use super::mentions_key;

    #[test]
    fn mentions_key_finds_quoted_keys_only() {
        let keys = ["ip", "email"];
        for text in [
            r#"{"ip":"1.2.3.4"}"#,
            r#"{"a":1,"email":"x"}"#,
            r#"{"a":{"ip":1}}"#,
            r#"["ip"]"#,
        ] {
            assert!(mentions_key(text, keys), "{text}");
        }
        for text in [
            "{}",
            r#"{"ipv6":1}"#,
            r#"{"zip":"1"}"#,
            r#"{"e":"email"#,
            r#"{"e":"ip"#,
            "",
            r#"""#,
        ] {
            assert!(!mentions_key(text, keys), "{text}");
        }
        assert!(!mentions_key(r#"{"ip":1}"#, []));
    }
}
