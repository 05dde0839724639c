//! Keeps every event: measures the host's own overhead per batch.

wit_bindgen::generate!({ world: "enricher", path: "../../../wit" });

use runnel::plugin::types::Outcome;

struct Noop;

impl Guest for Noop {
    fn init(_params: Vec<Param>) -> Result<(), String> {
        Ok(())
    }

    fn enrich(batch: Vec<u8>) -> Result<EnrichResult, String> {
        let view = runnel_batch::BatchView::new(&batch).map_err(|e| e.to_string())?;
        Ok(EnrichResult {
            outcomes: vec![Outcome::Keep; view.len()],
            replacements: Vec::new(),
        })
    }
}

export!(Noop);
