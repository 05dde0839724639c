//! Wire format: round trips (property tests), and hostile frames.

use proptest::prelude::*;
use runnel_event::wire::{self, WireError, access_batch, decode_frame};
use runnel_event::{AckStatus, Batch, BatchAck, Chunk, Event};

fn arb_opt() -> impl Strategy<Value = Option<String>> {
    proptest::option::of("[a-zA-Z0-9 ]{0,20}")
}

fn arb_event() -> impl Strategy<Value = Event> {
    (
        "[a-z0-9-]{1,40}",
        "[a-z][a-z0-9_.]{0,20}",
        0i64..253_402_300_799_999,
        any::<i64>(),
        any::<u32>(),
        (arb_opt(), arb_opt(), arb_opt(), arb_opt(), arb_opt()),
        proptest::option::of("\\{\"k\":[0-9]{1,5}\\}"),
    )
        .prop_map(|(id, ty, ts, rx, sv, (u, s, d, p, a), props)| Event {
            event_id: id,
            event_type: ty,
            timestamp_ms: ts,
            received_at_ms: rx,
            schema_version: sv,
            user_id: u,
            session_id: s,
            device_id: d,
            platform: p,
            app_version: a,
            properties: props,
        })
}

proptest! {
    #[test]
    fn chunk_round_trip(events in proptest::collection::vec(arb_event(), 0..40)) {
        let chunk = Chunk { events };
        prop_assert_eq!(Chunk::decode(&chunk.encode()).unwrap(), chunk);
    }

    #[test]
    fn batch_frame_round_trip(chunks in proptest::collection::vec(proptest::collection::vec(arb_event(), 1..30), 1..8), seq in any::<u64>()) {
        let encoded: Vec<Vec<u8>> = chunks.iter().map(|e| Chunk { events: e.clone() }.encode()).collect();
        let batch = Batch { agent_id: "agent".into(), host: "h".into(), epoch: 7, first_seq: seq, chunks: encoded };
        let frame = batch.encode_frame();
        let body = decode_frame(&frame, 64 << 20).unwrap();
        let (archived, counts) = access_batch(&body).unwrap();
        prop_assert_eq!(archived.first_seq.to_native(), seq);
        prop_assert_eq!(counts, chunks.iter().map(|c| c.len() as u32).collect::<Vec<_>>());
        for (i, c) in archived.chunks.iter().enumerate() {
            prop_assert_eq!(&Chunk::decode(c.as_slice()).unwrap().events, &chunks[i]);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(body) = decode_frame(&bytes, 1 << 20) {
            let _ = access_batch(&body);
        }
        let _ = Chunk::decode(&bytes);
        let _ = BatchAck::decode(&bytes);
    }

    #[test]
    fn any_flipped_bit_in_a_frame_is_caught(bit in any::<usize>()) {
        let chunk = Chunk { events: vec![Event { event_id: "id".into(), event_type: "t".into(), timestamp_ms: 1, received_at_ms: 2, schema_version: 1, user_id: None, session_id: None, device_id: None, platform: None, app_version: None, properties: None }] };
        let batch = Batch { agent_id: "a".into(), host: "h".into(), epoch: 1, first_seq: 0, chunks: vec![chunk.encode()] };
        let mut frame = batch.encode_frame();
        let bit = bit % (frame.len() * 8);
        frame[bit / 8] ^= 1 << (bit % 8);
        let decoded = decode_frame(&frame, 1 << 20).map(|b| access_batch(&b).map(|(a, _)| a.first_seq.to_native()).is_ok());
        // Either the frame is refused, or (a flip in the reserved header bytes) it still decodes
        // to the same data.
        prop_assert!(matches!(decoded, Err(_) | Ok(true)));
    }
}

#[test]
fn large_batches_are_compressed_and_size_limits_hold_before_decompressing() {
    let ev = Event {
        event_id: "x".repeat(40),
        event_type: "page.view".into(),
        timestamp_ms: 1,
        received_at_ms: 1,
        schema_version: 1,
        user_id: Some("user".into()),
        session_id: None,
        device_id: None,
        platform: Some("web".into()),
        app_version: None,
        properties: Some(r#"{"path":"/home"}"#.into()),
    };
    let chunk = Chunk {
        events: vec![ev; 1000],
    }
    .encode();
    let batch = Batch {
        agent_id: "a".into(),
        host: "h".into(),
        epoch: 1,
        first_seq: 0,
        chunks: vec![chunk.clone()],
    };
    let frame = batch.encode_frame();
    assert!(
        frame.len() < chunk.len() / 4,
        "zstd pays on repetitive events: {} vs {}",
        frame.len(),
        chunk.len()
    );
    assert_eq!(frame[5] & 1, 1);
    // The receiver's limit applies to the declared decompressed size: a small frame that would
    // inflate past it is refused without inflating it.
    match decode_frame(&frame, frame.len() + 100) {
        Err(WireError::TooLarge { size, max }) => assert!(size > max),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(matches!(
        decode_frame(&frame[..frame.len() - 1], 1 << 30),
        Err(WireError::Truncated { .. })
    ));
    assert!(matches!(
        decode_frame(b"XXXXxxxxxxxxxxxxxxxxxxxx", 1 << 30),
        Err(WireError::Magic(_))
    ));
    let _ = wire::FRAME_VERSION;
}

#[test]
fn ack_round_trip() {
    let ack = BatchAck {
        status: AckStatus::Unavailable,
        base_offset: 42,
        appended_events: 3,
        duplicate_chunks: 1,
        message: "disk full".into(),
    };
    assert_eq!(BatchAck::decode(&ack.encode()).unwrap(), ack);
}
