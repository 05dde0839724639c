//! Traps (panics) when a batch holds an event whose `event_id` contains the parameter `poison`
//! (default `"poison"`); keeps every event otherwise. The host must send exactly the poisoned
//! events to the dead letters and every other event on.

use std::sync::OnceLock;

wit_bindgen::generate!({ world: "enricher", path: "../../../wit" });

use runnel::plugin::types::Outcome;

static POISON: OnceLock<String> = OnceLock::new();

struct Trap;

impl Guest for Trap {
    fn init(params: Vec<Param>) -> Result<(), String> {
        let poison = params
            .into_iter()
            .find(|p| p.name == "poison")
            .map_or("poison".into(), |p| p.value);
        POISON
            .set(poison)
            .map_err(|_| "init called twice".to_string())
    }

    fn enrich(batch: Vec<u8>) -> Result<EnrichResult, String> {
        let view = runnel_batch::BatchView::new(&batch).map_err(|e| e.to_string())?;
        let poison = POISON.get().map_or("poison", String::as_str);
        for ev in view.iter() {
            if ev.event_id().contains(poison) {
                panic!("poisoned event {}", ev.event_id());
            }
        }
        Ok(EnrichResult {
            outcomes: vec![Outcome::Keep; view.len()],
            replacements: Vec::new(),
        })
    }
}

export!(Trap);
