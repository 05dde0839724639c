//! Allocates without bound in `enrich`: the host's memory cap must stop it.

wit_bindgen::generate!({ world: "enricher", path: "../../../wit" });

struct Hog;

impl Guest for Hog {
    fn init(_params: Vec<Param>) -> Result<(), String> {
        Ok(())
    }

    fn enrich(_batch: Vec<u8>) -> Result<EnrichResult, String> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut block = vec![0u8; 1 << 20];
            block[0] = hoard.len() as u8;
            hoard.push(std::hint::black_box(block));
        }
    }
}

export!(Hog);
