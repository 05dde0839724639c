//! tag-team: drops debug events and tags the rest with the `team` parameter.

use runnel_plugin::{Decision, Event, Field, Params};

/// Drops debug events, and tags everything else with the plugin's `team` parameter.
fn tag(event: &Event<'_>) -> Decision {
    if event.event_type().starts_with("debug.") {
        return Decision::Drop("debug events stay on the host".into());
    }
    let team = runnel_plugin::params().get("team").unwrap_or("none");
    let version = event.field(Field::AppVersion).unwrap_or("?");
    let mut out = event.to_owned_event();
    out.set(Field::AppVersion, Some(format!("{version}+{team}")));
    Decision::Replace(out)
}

/// Refuses a team name longer than 32 bytes (the deploy fails with this message).
fn check(params: &Params) -> Result<(), String> {
    match params.get("team") {
        Some(t) if t.len() > 32 => Err(format!("team: {} bytes, at most 32", t.len())),
        _ => Ok(()),
    }
}

runnel_plugin::enricher!(tag, init = check);
