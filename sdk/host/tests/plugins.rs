//! The example plugins of `plugins/`, run through the real host.

mod common;
use common::wasm;

use std::time::Duration;

use runnel_batch::{BatchView, BatchWriter, Field};
use runnel_host::{Fate, Limits, Runtime};

#[test]
fn pii_redact_leaves_no_raw_email_phone_or_ip() {
    let rt = Runtime::new().unwrap();
    let params = vec![("salt".to_string(), "s3cret".to_string())];
    let limits = Limits {
        deadline: Duration::from_millis(200),
        ..Limits::default()
    };
    let mut p = rt
        .load_enricher("pii-redact", &wasm("pii_redact"), params, limits)
        .unwrap();
    let props = [
        r#"{"email":"ada@example.com","phone":"+254700123456","ip":"203.0.113.77","plan":"pro"}"#,
        r#"{"path":"/home"}"#,
        r#"{"ip":"2001:db8:85a3:8d3:1319:8a2e:370:7348"}"#,
    ];
    let mut w = BatchWriter::new();
    for (i, p) in props.iter().enumerate() {
        let id = format!("e{i}");
        w.push(
            1,
            2,
            1,
            [
                Some(&id),
                Some("signup"),
                None,
                None,
                None,
                None,
                None,
                Some(p),
            ],
        );
    }
    w.push(
        1,
        2,
        1,
        [
            Some("e3"),
            Some("signup"),
            None,
            None,
            None,
            None,
            None,
            None,
        ],
    );
    let out = p.enrich(&w.finish()).unwrap();
    assert_eq!(out.fates[1], Fate::Keep, "nothing to redact");
    assert_eq!(out.fates[3], Fate::Keep, "no properties");
    let repl = BatchView::new(&out.replacements).unwrap();
    let redacted: Vec<String> = [0, 2]
        .iter()
        .map(|&i| match &out.fates[i] {
            Fate::Replace(n) => repl
                .event(*n as usize)
                .field(Field::Properties)
                .unwrap()
                .to_string(),
            other => panic!("event {i}: {other:?}"),
        })
        .collect();
    for raw in [
        "ada@example.com",
        "254700123456",
        "203.0.113.77",
        "1319:8a2e",
    ] {
        assert!(
            !redacted.iter().any(|r| r.contains(raw)),
            "{raw} leaked: {redacted:?}"
        );
    }
    assert!(
        redacted[0].contains(r#""ip":"203.0.113.0""#),
        "{}",
        redacted[0]
    );
    assert!(redacted[0].contains(r#""email":"sha256:"#));
    assert!(redacted[0].contains(r#""plan":"pro""#));
    assert!(
        redacted[1].contains(r#""ip":"2001:db8:85a3::""#),
        "{}",
        redacted[1]
    );
    // The rest of the event is carried over.
    let n = match out.fates[0] {
        Fate::Replace(n) => n as usize,
        _ => unreachable!(),
    };
    assert_eq!(repl.event(n).event_id(), "e0");
    assert_eq!(repl.event(n).event_type(), "signup");
}
