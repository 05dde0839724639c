//! Keeps every event: measures the host's own overhead per batch.

wit_bindgen::generate!({ world: "enricher", path: "../../../wit" });

struct Noop;

impl Guest for Noop {
    fn init(_params: Vec<Param>) -> Result<(), String> {
        Ok(())
    }

    fn enrich(batch: Vec<u8>) -> Result<EnrichResult, String> {
        runnel_batch::BatchView::new(&batch).map_err(|e| e.to_string())?;
        // An empty outcome list is the contract's "keep every event".
        Ok(EnrichResult {
            outcomes: Vec::new(),
            replacements: Vec::new(),
        })
    }
}

export!(Noop);
