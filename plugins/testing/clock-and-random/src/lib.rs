//! Reads the wall clock and the random generator (through the standard library, as any plugin
//! could) and writes what it saw into every event: `properties` becomes
//! `{"now_ms":N,"random":N}`. The host must show it a frozen clock and seeded randomness
//! unless those capabilities are granted.

use std::hash::{BuildHasher, Hasher};

wit_bindgen::generate!({ world: "enricher", path: "../../../wit" });

use runnel::plugin::types::Outcome;

struct Peek;

impl Guest for Peek {
    fn init(_params: Vec<Param>) -> Result<(), String> {
        Ok(())
    }

    fn enrich(batch: Vec<u8>) -> Result<EnrichResult, String> {
        let view = runnel_batch::BatchView::new(&batch).map_err(|e| e.to_string())?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        // `RandomState` keys come from the WASI random generator.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(42);
        let random = h.finish();
        let mut out = runnel_batch::BatchWriter::new();
        let mut outcomes = Vec::new();
        for (i, ev) in view.iter().enumerate() {
            let mut owned = ev.to_owned_event();
            owned.set(
                runnel_batch::Field::Properties,
                Some(format!("{{\"now_ms\":{now_ms},\"random\":{random}}}")),
            );
            out.push_owned(&owned);
            outcomes.push(Outcome::Replace(i as u32));
        }
        Ok(EnrichResult {
            outcomes,
            replacements: out.finish(),
        })
    }
}

export!(Peek);
