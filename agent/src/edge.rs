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
use runnel_event::{EnvelopeLimits, Event, parse_event};
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

/// Checks a plugin's replacement against the envelope rules by rendering it as JSON and parsing
/// it like any other event.
fn from_replacement(
    view: &BatchView<'_>,
    n: usize,
    limits: &EnvelopeLimits,
    received_at: i64,
) -> Result<Event, String> {
    let ev = view.event(n);
    let mut obj = serde_json::Map::new();
    for f in Field::ALL {
        if let Some(v) = ev.field(f) {
            let value = if f == Field::Properties {
                serde_json::from_str(v).map_err(|e| format!("properties: not JSON: {e}"))?
            } else {
                serde_json::Value::String(v.to_string())
            };
            obj.insert(f.name().to_string(), value);
        }
    }
    obj.insert("timestamp".into(), ev.timestamp_ms().into());
    obj.insert("schema_version".into(), ev.schema_version().into());
    let text = serde_json::Value::Object(obj).to_string();
    parse_event(&text, limits, received_at).map_err(|e| e.to_string())
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
