//! Any bytes offered as a batch frame are refused or decoded without panicking, and never
//! allocate past the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runnel_event::wire::{access_batch, decode_frame};
use runnel_event::{BatchAck, Chunk};

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = decode_frame(data, 1 << 20) {
        if let Ok((batch, _)) = access_batch(&body) {
            for chunk in batch.chunks.iter() {
                let _ = Chunk::decode(chunk.as_slice());
            }
        }
    }
    let _ = Chunk::decode(data);
    let _ = BatchAck::decode(data);
});
