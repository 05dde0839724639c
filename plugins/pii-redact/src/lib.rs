//! `pii-redact`: an edge plugin that keeps personal data on the host.
//!
//! - `properties.email` and `properties.phone` become `sha256:` + the hex SHA-256 of the
//!   parameter `salt` followed by the value (the same input gives the same hash, so counts of
//!   distinct users still work; the value itself never leaves the host);
//! - `properties.ip` is truncated to its /24 (IPv4: `203.0.113.0`) or /48 (IPv6:
//!   `2001:db8:85a3::`); a value that is not an IP address is removed.
//!
//! Events without these properties pass unchanged (and are not copied). In the common case
//! (string values, each key once) only the values are rewritten in the JSON text, which is not
//! parsed into a map and written out again; anything else takes the general path.

use std::borrow::Cow;

use runnel_plugin::{Decision, Event, mentions_key};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Properties hashed.
pub const HASHED: [&str; 2] = ["email", "phone"];
/// Property truncated to a network prefix.
pub const IP: &str = "ip";

/// Hex SHA-256 of `salt` then `value`, prefixed `sha256:`.
pub fn hash(salt: &str, value: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update(value.as_bytes());
    let digest = h.finalize();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}

/// True if `text` has `"email"`, `"phone"` or `"ip"` anywhere (see [`mentions_key`]).
pub fn mentions_a_key(text: &str) -> bool {
    mentions_key(text, [IP, HASHED[0], HASHED[1]])
}

/// `truncate_ip` of `ip` as a JSON string (quoted), written without the formatting machinery
/// for an IPv4 address.
fn truncated_ip_json(ip: &str) -> Option<String> {
    match network(ip)? {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            let mut out = String::with_capacity(17);
            out.push('"');
            for octet in [a, b, c] {
                push_decimal(&mut out, octet);
                out.push('.');
            }
            out.push_str("0\"");
            Some(out)
        }
        v6 => Some(Value::String(v6.to_string()).to_string()),
    }
}

fn push_decimal(out: &mut String, n: u8) {
    if n >= 100 {
        out.push(char::from(b'0' + n / 100));
    }
    if n >= 10 {
        out.push(char::from(b'0' + n / 10 % 10));
    }
    out.push(char::from(b'0' + n % 10));
}

/// The /24 (IPv4) or /48 (IPv6) network of `ip`, or `None` if it is not an address.
fn network(ip: &str) -> Option<std::net::IpAddr> {
    Some(match ip.trim().parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            std::net::Ipv4Addr::new(a, b, c, 0).into()
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0).into()
        }
    })
}

/// The /24 (IPv4) or /48 (IPv6) network of `ip` as text, or `None` if it is not an address.
pub fn truncate_ip(ip: &str) -> Option<String> {
    network(ip).map(|n| n.to_string())
}

/// Redacts a properties object in place; true if anything changed.
pub fn redact(props: &mut Map<String, Value>, salt: &str) -> bool {
    let mut changed = false;
    for key in HASHED {
        if let Some(v) = props.get_mut(key)
            && !v.is_null()
        {
            let text = match &*v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            *v = Value::String(hash(salt, &text));
            changed = true;
        }
    }
    if let Some(v) = props.get(IP).cloned() {
        match v.as_str().and_then(truncate_ip) {
            Some(net) => props.insert(IP.to_string(), Value::String(net)),
            None => props.remove(IP),
        };
        changed = true;
    }
    changed
}

/// The keys `redact` changes, as they are in the text; every other key is skipped without
/// being built.
#[derive(serde::Deserialize)]
struct Keys<'a> {
    #[serde(borrow)]
    email: Option<&'a RawValue>,
    #[serde(borrow)]
    phone: Option<&'a RawValue>,
    #[serde(borrow)]
    ip: Option<&'a RawValue>,
}

/// A JSON string value's text, when `raw` is a string.
fn string_of(raw: &RawValue) -> Option<Cow<'_, str>> {
    if raw.get().starts_with('"') {
        serde_json::from_str(raw.get()).ok()
    } else {
        None
    }
}

/// `redact` done on the text: each value replaced where it stands. `None` when the general path
/// must decide (a value that is not a string, an IP that is not an address, a key twice).
pub fn redact_in_place(text: &str, salt: &str) -> Option<Option<String>> {
    let keys: Keys<'_> = serde_json::from_str(text).ok()?;
    let mut edits: Vec<(&RawValue, String)> = Vec::with_capacity(3);
    for raw in [keys.email, keys.phone].into_iter().flatten() {
        if raw.get() == "null" {
            continue;
        }
        edits.push((raw, Value::String(hash(salt, &string_of(raw)?)).to_string()));
    }
    if let Some(raw) = keys.ip {
        edits.push((raw, truncated_ip_json(&string_of(raw)?)?));
    }
    if edits.is_empty() {
        return Some(None);
    }
    // Where each value sits in `text` (the raw values borrow from it).
    let at = |raw: &RawValue| raw.get().as_ptr() as usize - text.as_ptr() as usize;
    edits.sort_by_key(|(raw, _)| at(raw));
    let mut out = String::with_capacity(text.len() + 64 * edits.len());
    let mut from = 0;
    for (raw, value) in &edits {
        let start = at(raw);
        out.push_str(&text[from..start]);
        out.push_str(value);
        from = start + raw.get().len();
    }
    out.push_str(&text[from..]);
    Some(Some(out))
}

fn decide(event: &Event<'_>) -> Decision {
    let Some(text) = event.properties() else {
        return Decision::Keep;
    };
    // Cheap pre-check: no key of interest in the text, nothing to parse.
    if !mentions_a_key(text) {
        return Decision::Keep;
    }
    let salt = runnel_plugin::params().get("salt").unwrap_or("");
    match redact_in_place(text, salt) {
        Some(None) => return Decision::Keep,
        Some(Some(new)) => return Decision::ReplaceProperties(Some(new)),
        None => {}
    }
    let Ok(Value::Object(mut props)) = serde_json::from_str::<Value>(text) else {
        return Decision::Keep;
    };
    if !redact(&mut props, salt) {
        return Decision::Keep;
    }
    Decision::ReplaceProperties(Some(Value::Object(props).to_string()))
}

runnel_plugin::enricher!(decide);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips_are_truncated() {
        assert_eq!(truncate_ip("203.0.113.77").as_deref(), Some("203.0.113.0"));
        assert_eq!(
            truncate_ip("2001:db8:85a3:8d3:1319:8a2e:370:7348").as_deref(),
            Some("2001:db8:85a3::")
        );
        assert_eq!(truncate_ip("not an ip"), None);
    }

    #[test]
    fn ipv4_networks_are_written_as_the_general_path_writes_them() {
        for ip in [
            "0.0.0.0",
            "9.8.7.6",
            "10.1.2.3",
            "99.100.255.1",
            " 203.0.113.77 ",
            "2001:db8::1",
        ] {
            assert_eq!(
                truncated_ip_json(ip),
                truncate_ip(ip).map(|n| Value::String(n).to_string()),
                "{ip}"
            );
        }
        assert_eq!(truncated_ip_json("300.1.1.1"), None);
    }

    #[test]
    fn the_pre_check_finds_each_key_and_nothing_else() {
        for text in [
            r#"{"ip":"1"}"#,
            r#"{"x":1,"email":"a"}"#,
            r#"{"phone":null}"#,
            r#"{"a":"ip"}"#,
        ] {
            assert!(mentions_a_key(text), "{text}");
        }
        for text in [
            r#"{"x":1}"#,
            r#"{"zip":"1"}"#,
            r#"{"ipv6":"1"}"#,
            r#"{"emails":"a"}"#,
            "",
            "\"",
        ] {
            assert!(!mentions_a_key(text), "{text}");
        }
    }

    #[test]
    fn emails_and_phones_are_hashed_and_salted() {
        let mut p: Map<String, Value> = serde_json::from_str(
            r#"{"email":"a@b.c","phone":"+254700000000","ip":"10.1.2.3","x":1}"#,
        )
        .unwrap();
        assert!(redact(&mut p, "s"));
        let text = Value::Object(p.clone()).to_string();
        assert!(
            !text.contains("a@b.c") && !text.contains("254700000000") && !text.contains("10.1.2.3")
        );
        assert_eq!(p["ip"], "10.1.2.0");
        assert_eq!(p["x"], 1);
        assert_ne!(hash("s", "a@b.c"), hash("t", "a@b.c"));
    }

    /// The in-place path gives what the general path gives, and leaves the rest of the text as
    /// it was; what it cannot do in place it hands to the general path.
    #[test]
    fn in_place_agrees_with_the_general_path() {
        for text in [
            r#"{"email":"a@b.c","phone":"+254700000000","ip":"10.1.2.3","x":{"ip":"keep"}}"#,
            r#"{ "x" : [1, {"email": "nested"}], "ip" : "2001:db8:85a3:8d3::1" , "email":"\u00e9@b.c" }"#,
            r#"{"phone":null,"ip":"192.0.2.9"}"#,
        ] {
            let fast = redact_in_place(text, "s").unwrap().unwrap();
            let Value::Object(mut general) = serde_json::from_str(text).unwrap() else {
                unreachable!()
            };
            assert!(redact(&mut general, "s"));
            let fast: Value = serde_json::from_str(&fast).unwrap();
            assert_eq!(fast, Value::Object(general), "{text}");
        }
        let kept = redact_in_place(r#"{"ip":"10.1.2.3","pad":"  spaced  "}"#, "s")
            .unwrap()
            .unwrap();
        assert_eq!(kept, r#"{"ip":"10.1.2.0","pad":"  spaced  "}"#);
        assert_eq!(redact_in_place(r#"{"x":1}"#, "s"), Some(None));
        // Not an address (removed), not a string, a key twice: the general path decides.
        assert_eq!(redact_in_place(r#"{"ip":"nope"}"#, "s"), None);
        assert_eq!(redact_in_place(r#"{"email":42}"#, "s"), None);
        assert_eq!(
            redact_in_place(r#"{"ip":"10.0.0.1","ip":"10.0.0.2"}"#, "s"),
            None
        );
    }
}
