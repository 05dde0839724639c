//! `geo-enrich`: a broker enricher that adds `properties.country` and `properties.region`,
//! looked up from `properties.ip` by longest-prefix match in `prefixes.csv`, a table built into
//! the plugin (no file or network access at run time).
//!
//! - IPv4 and IPv6; an address truncated at the edge by `pii-redact` (/24, /48) still matches
//!   prefixes at least that wide.
//! - Events whose IP is absent, not an address, or in no prefix pass unchanged (and are not
//!   copied).
//! - Parameter `overwrite` (`true`/`false`, default `false`): whether a country or region the
//!   event already has is replaced.

use std::net::IpAddr;
use std::sync::OnceLock;

use runnel_plugin::{Decision, Event, Params, mentions_key};
use serde_json::{Map, Value};

/// The table: `prefix,country,region` lines; `#` starts a comment.
pub const TABLE: &str = include_str!("../prefixes.csv");

/// Where a prefix is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// ISO 3166-1 alpha-2 code.
    pub country: String,
    /// Region name.
    pub region: String,
    /// `"country":…,"region":…`, the members spliced into an event's properties.
    json: String,
}

impl Place {
    /// A place, with the JSON members it adds written once.
    pub fn new(country: &str, region: &str) -> Self {
        let json = format!(
            "\"country\":{},\"region\":{}",
            Value::String(country.into()),
            Value::String(region.into())
        );
        Self {
            country: country.into(),
            region: region.into(),
            json,
        }
    }
}

/// A hasher for masked addresses: one multiply (the table is built into the plugin, so there is
/// no adversary to defend against with SipHash, which cost more than the rest of a lookup).
#[derive(Default)]
pub struct AddrHasher(u64);

impl std::hash::Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        // The product's high half depends on every bit of the key; its low half would not on
        // the key's high bits, and masked addresses differ only in those.
        self.0 ^ (self.0 >> 32)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_u128(&mut self, n: u128) {
        self.write_u32(n as u32);
        for part in [(n >> 32) as u32, (n >> 64) as u32, (n >> 96) as u32] {
            self.0 = self.0.rotate_left(29);
            self.write_u32(part);
        }
    }
}

type AddrMap<K> = std::collections::HashMap<K, Place, std::hash::BuildHasherDefault<AddrHasher>>;

/// Prefixes by length, for longest-prefix match: `v4[len]` maps a masked address to its place.
#[derive(Debug, Default)]
pub struct Table {
    v4: Vec<AddrMap<u32>>,
    v6: Vec<AddrMap<u128>>,
    /// The lengths that have prefixes, longest first: only these are looked up.
    v4_lens: Vec<usize>,
    v6_lens: Vec<usize>,
}

fn mask4(len: usize) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

fn mask6(len: usize) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    }
}

impl Table {
    /// Parses a table; an error names the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut t = Table {
            v4: vec![Default::default(); 33],
            v6: vec![Default::default(); 129],
            ..Table::default()
        };
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |what: &str| format!("prefixes.csv line {}: {what}: {line:?}", n + 1);
            let mut cols = line.splitn(3, ',');
            let (Some(prefix), Some(country), Some(region)) =
                (cols.next(), cols.next(), cols.next())
            else {
                return Err(bad("expected prefix,country,region"));
            };
            let (addr, len) = prefix
                .split_once('/')
                .ok_or_else(|| bad("prefix without /len"))?;
            let len: usize = len.parse().map_err(|_| bad("bad prefix length"))?;
            let place = Place::new(country.trim(), region.trim());
            match addr.parse::<IpAddr>().map_err(|_| bad("bad address"))? {
                IpAddr::V4(a) if len <= 32 => {
                    t.v4[len].insert(u32::from(a) & mask4(len), place);
                }
                IpAddr::V6(a) if len <= 128 => {
                    t.v6[len].insert(u128::from(a) & mask6(len), place);
                }
                _ => return Err(bad("prefix length too long")),
            }
        }
        t.v4_lens = (0..=32).rev().filter(|&l| !t.v4[l].is_empty()).collect();
        t.v6_lens = (0..=128).rev().filter(|&l| !t.v6[l].is_empty()).collect();
        Ok(t)
    }

    /// The place of the longest prefix that holds `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<&Place> {
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4_lens
                    .iter()
                    .find_map(|&len| self.v4[len].get(&(a & mask4(len))))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6_lens
                    .iter()
                    .find_map(|&len| self.v6[len].get(&(a & mask6(len))))
            }
        }
    }
}

static TABLE_PARSED: OnceLock<Table> = OnceLock::new();
static OVERWRITE: OnceLock<bool> = OnceLock::new();

fn table() -> &'static Table {
    TABLE_PARSED.get_or_init(|| Table::parse(TABLE).expect("checked in init"))
}

/// Adds country and region to a properties object; true if anything changed.
pub fn enrich(props: &mut Map<String, Value>, table: &Table, overwrite: bool) -> bool {
    let Some(ip) = props
        .get("ip")
        .and_then(Value::as_str)
        .and_then(|s| s.trim().parse::<IpAddr>().ok())
    else {
        return false;
    };
    let Some(place) = table.lookup(ip) else {
        return false;
    };
    let mut changed = false;
    for (key, value) in [("country", &place.country), ("region", &place.region)] {
        if (overwrite || !props.contains_key(key))
            && props.get(key).and_then(Value::as_str) != Some(value)
        {
            props.insert(key.to_string(), Value::String(value.clone()));
            changed = true;
        }
    }
    changed
}

/// True if `text` has `"ip"` anywhere (see [`mentions_key`]).
pub fn mentions_ip(text: &str) -> bool {
    mentions_key(text, ["ip"])
}

/// The keys `decide` looks at; every other key is skipped without being built.
#[derive(serde::Deserialize)]
struct Keys<'a> {
    #[serde(borrow)]
    ip: Option<std::borrow::Cow<'a, str>>,
    country: Option<serde::de::IgnoredAny>,
    region: Option<serde::de::IgnoredAny>,
}

/// `properties` with `"country"` and `"region"` added before its closing brace, without
/// parsing it into a map and writing it out again (the common case: neither key is there).
pub fn splice(props: &str, place: &Place) -> Option<String> {
    let body = props.trim_end().strip_suffix('}')?;
    let empty = body.trim_end().ends_with('{');
    let mut out = String::with_capacity(body.len() + place.json.len() + 2);
    out.push_str(body);
    if !empty {
        out.push(',');
    }
    out.push_str(&place.json);
    out.push('}');
    Some(out)
}

fn decide(event: &Event<'_>) -> Decision {
    let Some(text) = event.properties() else {
        return Decision::Keep;
    };
    if !mentions_ip(text) {
        return Decision::Keep;
    }
    let overwrite = *OVERWRITE.get().unwrap_or(&false);
    let Ok(keys) = serde_json::from_str::<Keys<'_>>(text) else {
        return Decision::Keep;
    };
    let new_props = if keys.country.is_none() && keys.region.is_none() {
        // The fast path: look up, splice.
        let Some(place) = keys
            .ip
            .and_then(|ip| ip.trim().parse::<IpAddr>().ok())
            .and_then(|ip| table().lookup(ip))
        else {
            return Decision::Keep;
        };
        match splice(text, place) {
            Some(p) => p,
            None => return Decision::Keep,
        }
    } else {
        let Ok(Value::Object(mut props)) = serde_json::from_str::<Value>(text) else {
            return Decision::Keep;
        };
        if !enrich(&mut props, table(), overwrite) {
            return Decision::Keep;
        }
        Value::Object(props).to_string()
    };
    Decision::ReplaceProperties(Some(new_props))
}

fn init(params: &Params) -> Result<(), String> {
    let overwrite = match params.get("overwrite").unwrap_or("false") {
        "true" => true,
        "false" => false,
        other => return Err(format!("overwrite: {other:?} is not true or false")),
    };
    let _ = OVERWRITE.set(overwrite);
    Table::parse(TABLE)?;
    Ok(())
}

runnel_plugin::enricher!(decide, init = init);

#[cfg(test)]
mod tests {
    use super::*;

    /// Masked addresses (zero low bits) spread over the low bits of the hash, where the map's
    /// buckets are chosen.
    #[test]
    fn masked_addresses_spread_over_the_low_bits() {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let build = BuildHasherDefault::<AddrHasher>::default();
        let low: std::collections::HashSet<u64> = (0..1024u32)
            .map(|i| build.hash_one(i << 16) & 1023)
            .collect();
        assert!(low.len() > 500, "{} distinct low bits of 1024", low.len());
        let low6: std::collections::HashSet<u64> = (0..1024u128)
            .map(|i| build.hash_one(i << 80) & 1023)
            .collect();
        assert!(low6.len() > 500, "{} distinct low bits of 1024", low6.len());
    }

    #[test]
    fn the_pre_check_finds_the_key_and_nothing_else() {
        for text in [r#"{"ip":"1"}"#, r#"{"x":1, "ip" :"a"}"#, r#"{"a":"ip"}"#] {
            assert!(mentions_ip(text), "{text}");
        }
        for text in [
            r#"{"x":1}"#,
            r#"{"zip":"1"}"#,
            r#"{"ipv6":"1"}"#,
            "",
            "\"",
            "\"ip",
        ] {
            assert!(!mentions_ip(text), "{text}");
        }
    }

    #[test]
    fn longest_prefix_wins_for_v4_and_v6() {
        let t = Table::parse(TABLE).unwrap();
        let at = |s: &str| t.lookup(s.parse().unwrap()).map(|p| p.region.as_str());
        assert_eq!(at("198.51.100.7"), Some("Lagos"));
        assert_eq!(at("198.51.100.200"), Some("Abuja"));
        assert_eq!(at("10.20.3.4"), Some("Kampala"));
        assert_eq!(at("10.99.3.4"), Some("Mombasa"));
        assert_eq!(at("2001:db8:1234::"), Some("Addis Ababa"));
        assert_eq!(at("2001:db8:85a3::"), Some("Nairobi"));
        assert_eq!(at("8.8.8.8"), None);
    }

    #[test]
    fn keeps_the_events_own_country_unless_told() {
        let t = Table::parse(TABLE).unwrap();
        let mut p: Map<String, Value> =
            serde_json::from_str(r#"{"ip":"203.0.113.0","country":"XX"}"#).unwrap();
        assert!(enrich(&mut p, &t, false));
        assert_eq!(p["country"], "XX");
        assert_eq!(p["region"], "Gauteng");
        assert!(enrich(&mut p, &t, true));
        assert_eq!(p["country"], "ZA");
    }

    #[test]
    fn splice_adds_both_keys_and_keeps_the_json_valid() {
        let place = Place::new("KE", "Nai\"robi");
        for props in [r#"{"ip":"192.0.2.1"}"#, "{ }", r#"{"a":{"b":[1,2]} }"#] {
            let out = splice(props, &place).unwrap();
            let v: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["country"], "KE", "{out}");
            assert_eq!(v["region"], "Nai\"robi", "{out}");
        }
    }

    #[test]
    fn a_bad_line_is_named() {
        let e = Table::parse("1.2.3.0/24,KE").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
    }
}
