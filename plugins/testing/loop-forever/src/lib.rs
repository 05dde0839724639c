//! Never returns from `enrich`: the host must interrupt it at its deadline.

wit_bindgen::generate!({ world: "enricher", path: "../../../wit" });

struct Spin;

impl Guest for Spin {
    fn init(_params: Vec<Param>) -> Result<(), String> {
        Ok(())
    }

    fn enrich(batch: Vec<u8>) -> Result<EnrichResult, String> {
        let mut x = batch.len() as u64;
        loop {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

export!(Spin);
