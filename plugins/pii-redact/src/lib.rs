//! `pii-redact`: an edge plugin that keeps personal data on the host.
//!
//! - `properties.email` and `properties.phone` become `sha256:` + the hex SHA-256 of the
//!   parameter `salt` followed by the value (the same input gives the same hash, so counts of
//!   distinct users still work; the value itself never leaves the host);
//! - `properties.ip` is truncated to its /24 (IPv4: `203.0.113.0`) or /48 (IPv6:
//!   `2001:db8:85a3::`); a value that is not an IP address is removed.
//!
//! Events without these properties pass unchanged (and are not copied).

use runnel_plugin::{Decision, Event, Field};
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
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The /24 (IPv4) or /48 (IPv6) network of `ip`, or `None` if it is not an address.
pub fn truncate_ip(ip: &str) -> Option<String> {
    match ip.trim().parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            Some(std::net::Ipv4Addr::new(a, b, c, 0).to_string())
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            Some(std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0).to_string())
        }
    }
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

fn decide(event: &Event<'_>) -> Decision {
    let Some(text) = event.properties() else {
        return Decision::Keep;
    };
    // Cheap pre-check: no key of interest in the text, nothing to parse.
    if !HASHED
        .iter()
        .chain([&IP])
        .any(|k| text.contains(&format!("\"{k}\"")))
    {
        return Decision::Keep;
    }
    let Ok(Value::Object(mut props)) = serde_json::from_str::<Value>(text) else {
        return Decision::Keep;
    };
    let salt = runnel_plugin::params().get("salt").unwrap_or("");
    if !redact(&mut props, salt) {
        return Decision::Keep;
    }
    let mut out = event.to_owned_event();
    out.set(Field::Properties, Some(Value::Object(props).to_string()));
    Decision::Replace(out)
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
}
