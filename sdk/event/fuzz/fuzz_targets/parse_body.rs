//! Any body, in either framing, is parsed without panicking, and every event that is accepted
//! survives a wire round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runnel_event::{BodyFormat, Chunk, EnvelopeLimits, parse_body};

fuzz_target!(|data: &[u8]| {
    let limits = EnvelopeLimits::default();
    for format in [BodyFormat::Json, BodyFormat::Ndjson] {
        let parsed = parse_body(data, format, &limits, 0);
        let events: Vec<_> = parsed.events.into_iter().map(|(_, e)| e).collect();
        let chunk = Chunk { events };
        assert_eq!(Chunk::decode(&chunk.encode()).expect("round trip"), chunk);
    }
});
