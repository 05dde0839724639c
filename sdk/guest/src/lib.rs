//! # runnel-guest: what every Runnel guest SDK shares
//!
//! `runnel-plugin` (enrichers) and `runnel-aggregator` (aggregators) both re-export this: a
//! plugin's [`Params`] as its `init` got them, and the host's [`log`] and [`counter_add`]. Its
//! bindings come from the contract's `guest` world (`wit/plugin.wit`), which imports only the
//! `host` interface both plugin worlds import.

use std::sync::OnceLock;

/// The generated bindings of the `guest` world.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({ world: "guest", path: "../../wit" });
}

use bindings::runnel::plugin::host;

/// The plugin's parameters (from its manifest and the deploy command).
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Parameters from `(name, value)` pairs, in the order `init` got them.
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Self(pairs)
    }

    /// The value of parameter `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

static PARAMS: OnceLock<Params> = OnceLock::new();

/// The parameters this instance was started with.
pub fn params() -> &'static Params {
    PARAMS.get_or_init(Params::default)
}

/// Keeps the parameters `init` got, once per instance.
#[doc(hidden)]
pub fn set_params(params: Params) -> Result<(), String> {
    PARAMS
        .set(params)
        .map_err(|_| "init called twice".to_string())
}

/// Writes a line to the host's log at level info.
pub fn log(message: &str) {
    host::log(host::Level::Info, message);
}

/// Adds `delta` to this plugin's counter `name` on the host.
pub fn counter_add(name: &str, delta: u64) {
    host::counter_add(name, delta);
}
