//! Envelope parsing and validation: every rejection names its field.

use runnel_event::{BodyFormat, EnvelopeLimits, parse_body, parse_event};

fn limits() -> EnvelopeLimits {
    EnvelopeLimits::default()
}

fn err_field(json: &str) -> String {
    parse_event(json, &limits(), 0).unwrap_err().field
}

#[test]
fn accepts_a_full_envelope() {
    let ev = parse_event(
        r#"{"event_id":"e1","event_type":"checkout.completed","timestamp":"2026-11-21T14:00:00.250+01:00",
            "user_id":"u1","session_id":"s","device_id":"d","platform":"ios","app_version":"1.2.3",
            "schema_version":3,"properties":{"amount":12.5,"nested":{"a":[1,2]}}}"#,
        &limits(),
        99,
    )
    .unwrap();
    assert_eq!(ev.event_id, "e1");
    assert_eq!(
        runnel_event::envelope::rfc3339_ms(ev.timestamp_ms),
        "2026-11-21T13:00:00.250Z"
    );
    assert_eq!(ev.schema_version, 3);
    assert_eq!(ev.received_at_ms, 99);
    assert_eq!(
        ev.properties.as_deref(),
        Some(r#"{"amount":12.5,"nested":{"a":[1,2]}}"#)
    );
}

#[test]
fn integer_epoch_millis_and_defaults() {
    let ev = parse_event(
        r#"{"event_id":"x","event_type":"a","timestamp":1700000000123}"#,
        &limits(),
        0,
    )
    .unwrap();
    assert_eq!(ev.timestamp_ms, 1_700_000_000_123);
    assert_eq!(ev.schema_version, 1);
    assert_eq!(ev.user_id, None);
}

#[test]
fn each_rule_names_its_field() {
    let cases = [
        (r#"{"event_type":"a","timestamp":1}"#, "event_id"),
        (
            r#"{"event_id":"","event_type":"a","timestamp":1}"#,
            "event_id",
        ),
        (
            r#"{"event_id":5,"event_type":"a","timestamp":1}"#,
            "event_id",
        ),
        (
            &format!(
                r#"{{"event_id":"{}","event_type":"a","timestamp":1}}"#,
                "x".repeat(129)
            ),
            "event_id",
        ),
        (
            r#"{"event_id":"e","event_type":"Bad","timestamp":1}"#,
            "event_type",
        ),
        (
            r#"{"event_id":"e","event_type":"9a","timestamp":1}"#,
            "event_type",
        ),
        (r#"{"event_id":"e","timestamp":1}"#, "event_type"),
        (r#"{"event_id":"e","event_type":"a"}"#, "timestamp"),
        (
            r#"{"event_id":"e","event_type":"a","timestamp":"yesterday"}"#,
            "timestamp",
        ),
        (
            r#"{"event_id":"e","event_type":"a","timestamp":1.5}"#,
            "timestamp",
        ),
        (
            r#"{"event_id":"e","event_type":"a","timestamp":-1}"#,
            "timestamp",
        ),
        (
            r#"{"event_id":"e","event_type":"a","timestamp":1,"user_id":7}"#,
            "user_id",
        ),
        (
            r#"{"event_id":"e","event_type":"a","timestamp":1,"schema_version":-2}"#,
            "schema_version",
        ),
        (
            r#"{"event_id":"e","event_type":"a","timestamp":1,"properties":[1]}"#,
            "properties",
        ),
        (
            r#"{"event_id":"e","event_type":"a","timestamp":1,"colour":"red"}"#,
            "colour",
        ),
    ];
    for (json, field) in cases {
        let err = parse_event(json, &limits(), 0).unwrap_err();
        assert_eq!(err.field, field, "{json} -> {err}");
        assert!(err.to_string().starts_with(&format!("{field}: ")), "{err}");
    }
    let long = format!(
        r#"{{"event_id":"e","event_type":"{}","timestamp":1}}"#,
        "a".repeat(65)
    );
    assert_eq!(err_field(&long), "event_type");
}

#[test]
fn unknown_field_message_lists_allowed_fields() {
    let err = parse_event(
        r#"{"event_id":"e","event_type":"a","timestamp":1,"extra":1}"#,
        &limits(),
        0,
    )
    .unwrap_err();
    assert_eq!(err.field, "extra");
    assert!(err.rule.contains("allowed fields are event_id"), "{err}");
}

#[test]
fn body_forms_object_array_ndjson() {
    let one = br#"{"event_id":"a","event_type":"t","timestamp":1}"#;
    assert_eq!(
        parse_body(one, BodyFormat::Json, &limits(), 0).events.len(),
        1
    );
    let arr = br#"[{"event_id":"a","event_type":"t","timestamp":1},{"event_id":"b","event_type":"T","timestamp":1},
                  {"event_id":"c","event_type":"t","timestamp":1}]"#;
    let p = parse_body(arr, BodyFormat::Json, &limits(), 0);
    assert_eq!(
        p.events.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        vec![0, 2]
    );
    assert_eq!(p.rejected.len(), 1);
    assert_eq!(p.rejected[0].0, 1);
    assert_eq!(p.rejected[0].1.field, "event_type");
    let nd = b"{\"event_id\":\"a\",\"event_type\":\"t\",\"timestamp\":1}\n\nnot json\n{\"event_id\":\"b\",\"event_type\":\"t\",\"timestamp\":2}\n";
    let p = parse_body(nd, BodyFormat::Ndjson, &limits(), 0);
    assert_eq!(p.events.len(), 2);
    assert_eq!(p.rejected[0].0, 1);
    assert_eq!(p.rejected[0].1.field, "body");
}

#[test]
fn malformed_and_hostile_bodies_are_rejected_not_fatal() {
    for body in [
        &b"{"[..],
        b"[1,2",
        b"",
        b"\xff\xfe",
        b"null",
        b"42",
        b"[[[[]]]]",
    ] {
        let p = parse_body(body, BodyFormat::Json, &limits(), 0);
        assert!(p.events.is_empty(), "{body:?}");
        assert!(!p.rejected.is_empty(), "{body:?}");
    }
    // 100k-deep nesting inside properties and as the whole body.
    let deep = format!(
        r#"{{"event_id":"e","event_type":"a","timestamp":1,"properties":{{"x":{}{}}}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let p = parse_body(deep.as_bytes(), BodyFormat::Json, &limits(), 0);
    assert!(p.events.is_empty());
    assert_eq!(p.rejected[0].1.field, "properties");
    // Within the size cap, depth is limited on its own.
    let roomy = EnvelopeLimits {
        properties_bytes_max: 1 << 20,
        ..limits()
    };
    let p = parse_body(deep.as_bytes(), BodyFormat::Json, &roomy, 0);
    assert!(
        p.rejected[0].1.rule.contains("properties_depth_max"),
        "{:?}",
        p.rejected
    );
    let ok = r#"{"event_id":"e","event_type":"a","timestamp":1,"properties":{"s":"[[[[{{{{\"","a":[[1]]}}"#;
    assert!(parse_event(ok, &limits(), 0).is_ok());
    let deep_array = "[".repeat(100_000) + &"]".repeat(100_000);
    let p = parse_body(deep_array.as_bytes(), BodyFormat::Json, &limits(), 0);
    assert!(p.events.is_empty() && p.rejected.len() == 1);
}

#[test]
fn events_per_request_limit_is_named() {
    let small = EnvelopeLimits {
        events_per_request_max: 2,
        ..EnvelopeLimits::default()
    };
    let arr = br#"[{"event_id":"a","event_type":"t","timestamp":1},{"event_id":"b","event_type":"t","timestamp":1},{"event_id":"c","event_type":"t","timestamp":1}]"#;
    let p = parse_body(arr, BodyFormat::Json, &small, 0);
    assert!(p.events.is_empty());
    assert!(p.rejected[0].1.rule.contains("events_per_request_max"));
}

/// A client cannot send an event the broker would take for one its agent dead-lettered: the
/// marker key may not open `properties` (elsewhere in the object it is an ordinary key).
#[test]
fn the_dead_letter_marker_is_reserved() {
    let e = parse_event(
        r#"{"event_id":"e","event_type":"a.b","timestamp":1,"properties":{"_runnel_dead_letter":{"kind":"event_time"}}}"#,
        &limits(),
        0,
    )
    .unwrap_err();
    assert_eq!(e.field, "properties");
    assert!(e.rule.contains("_runnel_dead_letter"), "{e}");
    parse_event(
        r#"{"event_id":"e","event_type":"a.b","timestamp":1,"properties":{"a":1,"_runnel_dead_letter":2}}"#,
        &limits(),
        0,
    )
    .unwrap();
}

/// An event handed over as parts (an edge plugin's replacement) meets the same rules as one
/// parsed from JSON, and comes out the same.
#[test]
fn parts_meet_the_same_rules_as_json() {
    use runnel_event::{EventParts, validate_parts};
    let good = EventParts {
        event_id: Some("e1"),
        event_type: Some("checkout.completed"),
        timestamp_ms: 1_763_726_400_000,
        schema_version: 3,
        optional: [Some("u1"), None, None, Some("ios"), None],
        properties: Some(r#"{"amount":12.5,"ip":"203.0.113.0"}"#),
    };
    let from_json = parse_event(
        r#"{"event_id":"e1","event_type":"checkout.completed","timestamp":1763726400000,
            "user_id":"u1","platform":"ios","schema_version":3,
            "properties":{"amount":12.5,"ip":"203.0.113.0"}}"#,
        &limits(),
        7,
    )
    .unwrap();
    assert_eq!(validate_parts(good, &limits(), 7).unwrap(), from_json);

    let field_of = |parts: EventParts<'_>| validate_parts(parts, &limits(), 0).unwrap_err();
    let e = field_of(EventParts {
        event_type: Some("Checkout"),
        ..good
    });
    assert_eq!(e.field, "event_type", "{e}");
    let e = field_of(EventParts {
        properties: Some(r#"{"amount":"#),
        ..good
    });
    assert_eq!(e.field, "properties", "{e}");
    assert!(e.rule.contains("not JSON"), "{e}");
    let e = field_of(EventParts {
        properties: Some("[1,2]"),
        ..good
    });
    assert!(e.rule.contains("must be a JSON object"), "{e}");
    let e = field_of(EventParts {
        timestamp_ms: -1,
        ..good
    });
    assert_eq!(e.field, "timestamp", "{e}");
    let long = "x".repeat(300);
    let e = field_of(EventParts {
        optional: [Some(&long), None, None, None, None],
        ..good
    });
    assert_eq!(e.field, "user_id", "{e}");
    assert!(e.rule.contains("field_bytes_max"), "{e}");
    let e = field_of(EventParts {
        event_id: None,
        ..good
    });
    assert_eq!(e.field, "event_id", "{e}");
}
