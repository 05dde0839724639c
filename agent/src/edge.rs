//! Edge plugins: enrichers the agent runs on every accepted batch before it reaches the spool
//! (PII redaction, filtering), so that what they remove never leaves the host.
//!
//! Plugins run in order (`--edge-plugin A --edge-plugin B`). Per event:
//! - `keep` passes it on; `replace` passes the plugin's event on, after checking it against the
//!   envelope rules again (a plugin cannot smuggle an invalid event into the spool);
//! - `drop` removes it (counted in `runnel_agent_events_dropped_total{reason="plugin"}`; the
//!   client's answer counts it as accepted: it was handled as configured);
//! - a plugin failure (trap, timeout, out of memory, a bad answer) rejects the event with an
//!   error naming the plugin, so it is never stored unprocessed.
//!
//! A plugin file that changes on disk is reloaded before the next batch; a reload that fails
//! keeps the running version and is logged.

use std::path::PathBuf;
use std::time::SystemTime;

use runnel_batch::{BatchView, BatchWriter, Field};
use runnel_event::{EnvelopeLimits, Event, EventParts, validate_parts};
use runnel_host::{Enricher, Fate, Limits, Runtime};

struct Loaded {
    path: PathBuf,
    modified: Option<SystemTime>,
    enricher: Enricher,
}

/// The chain of edge plugins.
pub struct EdgeChain {
    runtime: Runtime,
    limits: Limits,
    plugins: Vec<Loaded>,
}

/// The outcome of running one batch through the chain.
#[derive(Debug, Default)]
pub struct EdgeOutcome {
    /// Events to spool, with their index in the request body.
    pub events: Vec<(usize, Event)>,
    /// Events dropped by a plugin.
    pub dropped: usize,
    /// Events a plugin failed on, or turned invalid: (index, error).
    pub rejected: Vec<(usize, String)>,
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn plugin_name(path: &std::path::Path) -> String {
    path.file_stem()
        .map_or_else(|| "plugin".into(), |s| s.to_string_lossy().into_owned())
}

fn load(runtime: &Runtime, path: &PathBuf, limits: &Limits) -> anyhow::Result<Loaded> {
    let wasm =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("edge_plugin {}: {e}", path.display()))?;
    let enricher = runtime
        .load_enricher(&plugin_name(path), &wasm, Vec::new(), limits.clone())
        .map_err(|e| anyhow::anyhow!("edge_plugin {}: {e}", path.display()))?;
    Ok(Loaded {
        path: path.clone(),
        modified: modified(path),
        enricher,
    })
}

fn to_batch(events: &[(usize, Event)]) -> Vec<u8> {
    let mut w = BatchWriter::with_capacity(events.len(), 200);
    for (_, e) in events {
        runnel_event::fields::push(&mut w, e);
    }
    w.finish()
}

/// Checks a plugin's replacement against the envelope rules, straight from the batch's fields
/// (the host has checked that they are UTF-8 and that the required ones are there).
fn from_replacement(
    view: &BatchView<'_>,
    n: usize,
    limits: &EnvelopeLimits,
    received_at: i64,
) -> Result<Event, String> {
    let ev = view.event(n);
    let parts = EventParts {
        event_id: ev.field(Field::EventId),
        event_type: ev.field(Field::EventType),
        timestamp_ms: ev.timestamp_ms(),
        schema_version: ev.schema_version(),
        optional: [
            Field::UserId,
            Field::SessionId,
            Field::DeviceId,
            Field::Platform,
            Field::AppVersion,
        ]
        .map(|f| ev.field(f)),
        properties: ev.field(Field::Properties),
    };
    validate_parts(parts, limits, received_at).map_err(|e| e.to_string())
}

impl EdgeChain {
    /// Loads every plugin; any that fails to load fails the agent's start.
    pub fn load(paths: &[PathBuf], limits: Limits) -> anyhow::Result<Self> {
        let runtime =
            Runtime::new().map_err(|e| anyhow::anyhow!("starting the plugin runtime: {e}"))?;
        let plugins = paths
            .iter()
            .map(|p| load(&runtime, p, &limits))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            runtime,
            limits,
            plugins,
        })
    }

    /// True when no plugin is configured.
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// Reloads plugins whose file changed since it was loaded (a batch boundary).
    fn reload_changed(&mut self) {
        for slot in &mut self.plugins {
            let now = modified(&slot.path);
            if now == slot.modified {
                continue;
            }
            match load(&self.runtime, &slot.path, &self.limits) {
                Ok(new) => {
                    tracing::info!(plugin = %slot.path.display(), "edge plugin reloaded");
                    metrics::counter!("runnel_agent_edge_plugin_reloads_total").increment(1);
                    *slot = new;
                }
                Err(e) => {
                    tracing::error!(error = %e, "edge plugin changed but does not load; keeping the running version");
                    slot.modified = now;
                }
            }
        }
    }

    /// Runs `events` through every plugin in order.
    pub fn run(&mut self, mut events: Vec<(usize, Event)>, limits: &EnvelopeLimits) -> EdgeOutcome {
        self.reload_changed();
        let mut out = EdgeOutcome::default();
        for plugin in &mut self.plugins {
            if events.is_empty() {
                break;
            }
            let name = plugin.enricher.name().to_string();
            let batch = to_batch(&events);
            let result = plugin
                .enricher
                .enrich(&batch)
                .expect("the agent writes valid batches");
            let view = BatchView::new(&result.replacements).ok();
            let mut next = Vec::with_capacity(events.len());
            for ((index, event), fate) in events.into_iter().zip(result.fates) {
                match fate {
                    Fate::Keep => next.push((index, event)),
                    Fate::Drop(reason) => {
                        tracing::debug!(plugin = %name, reason, "edge plugin dropped an event");
                        out.dropped += 1;
                    }
                    Fate::Replace(n) => {
                        let view = view.as_ref().expect("checked by the host");
                        match from_replacement(view, n as usize, limits, event.received_at_ms) {
                            Ok(new) => next.push((index, new)),
                            Err(e) => out.rejected.push((
                                index,
                                format!("edge plugin {name} produced an invalid event: {e}"),
                            )),
                        }
                    }
                    Fate::Failed(f) => out
                        .rejected
                        .push((index, format!("edge plugin {name} failed: {f}"))),
                }
            }
            events = next;
        }
        out.events = events;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replacement is checked against the envelope rules like a posted event: what breaks
    /// one names its field, and a good one comes back as the event it describes.
    #[test]
    fn replacements_meet_the_envelope_rules() {
        let mut w = BatchWriter::new();
        let push = |w: &mut BatchWriter, event_type: &str, props: &str| {
            w.push(
                1_763_726_400_000,
                5,
                2,
                [
                    Some("e1"),
                    Some(event_type),
                    Some("u1"),
                    None,
                    None,
                    Some("ios"),
                    None,
                    Some(props),
                ],
            );
        };
        push(&mut w, "page.view", r#"{"ip":"203.0.113.0"}"#);
        push(&mut w, "Page View", "{}");
        push(&mut w, "page.view", r#"{"ip":"#);
        push(&mut w, "page.view", r#"{"_runnel_dead_letter":{}}"#);
        let buf = w.finish();
        let view = BatchView::new(&buf).unwrap();
        let limits = EnvelopeLimits::default();
        let ev = from_replacement(&view, 0, &limits, 99).unwrap();
        assert_eq!(
            (ev.event_type.as_str(), ev.schema_version, ev.received_at_ms),
            ("page.view", 2, 99)
        );
        assert_eq!(ev.user_id.as_deref(), Some("u1"));
        assert_eq!(ev.properties.as_deref(), Some(r#"{"ip":"203.0.113.0"}"#));
        let err = |n| from_replacement(&view, n, &limits, 99).unwrap_err();
        assert!(err(1).starts_with("event_type: "), "{}", err(1));
        assert!(err(2).starts_with("properties: not JSON"), "{}", err(2));
        assert!(
            err(3).starts_with("properties: must not start"),
            "{}",
            err(3)
        );
    }
}
