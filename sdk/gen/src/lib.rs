//! # runnel-gen: event streams with known answers
//!
//! A deterministic (seeded) generator of realistic events for two scenarios, with a chosen
//! share of events delayed, each labelled with how it was delayed, so a test or a benchmark
//! knows which events are out of order, which are late but within the allowed lateness, and
//! which arrive after their window is final.
//!
//! - [`Scenario::Fintech`]: field agents onboarding customers, deposits and withdrawals (KES
//!   amounts), logins; `properties.field_agent_id`, `amount`, `currency`, `ip`.
//! - [`Scenario::Ecommerce`]: page views, searches, cart additions and checkouts (EUR amounts);
//!   `properties.path`, `product_id`, `amount`, `ip`, with sessions.
//!
//! Users and agents are skewed (a few are much more active than most), as real traffic is.
//!
//! ## Time
//! Event `i` arrives at `start_ms + i * 1000 / rate_per_sec` (its arrival time). Its event time
//! is the arrival time, or earlier by its [`Delay`]:
//! - [`Delay::OutOfOrder`]: up to `out_of_orderness_ms` (never late for an engine with that
//!   out-of-orderness);
//! - [`Delay::WithinLateness`]: more than that, by up to `allowed_lateness_ms` (late for the
//!   watermark, but its window still takes it);
//! - [`Delay::BeyondLateness`]: so far back that its window was final before it arrived, for
//!   windows of at most `window_ms`, measured from the least, over sources, of the greatest event
//!   time each has sent, so it holds however the sources interleave.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Which kind of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Mobile money with field agents.
    Fintech,
    /// An online shop.
    Ecommerce,
}

impl std::str::FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fintech" => Ok(Self::Fintech),
            "ecommerce" => Ok(Self::Ecommerce),
            other => Err(format!("scenario: {other:?} is not fintech or ecommerce")),
        }
    }
}

/// How an event's time relates to its arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delay {
    /// Event time = arrival time.
    OnTime,
    /// Earlier by at most the out-of-orderness.
    OutOfOrder,
    /// Earlier by more than the out-of-orderness, at most that plus the lateness.
    WithinLateness,
    /// After its window was final.
    BeyondLateness,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct Config {
    /// Seed: the same config gives the same stream.
    pub seed: u64,
    /// Scenario.
    pub scenario: Scenario,
    /// Events.
    pub events: usize,
    /// Arrival time of the first event.
    pub start_ms: i64,
    /// Arrivals per second.
    pub rate_per_sec: u32,
    /// Sources (agents) the events come from, round robin.
    pub sources: u32,
    /// Distinct users.
    pub users: u32,
    /// Share of events delayed within the out-of-orderness.
    pub out_of_order: f64,
    /// Share delayed past it but within the lateness.
    pub within_lateness: f64,
    /// Share delayed beyond the lateness.
    pub beyond_lateness: f64,
    /// The engine's out-of-orderness.
    pub out_of_orderness_ms: i64,
    /// The engine's allowed lateness.
    pub allowed_lateness_ms: i64,
    /// The longest window the stream is meant for.
    pub window_ms: i64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            seed: 1,
            scenario: Scenario::Fintech,
            events: 10_000,
            start_ms: 1_763_726_400_000,
            rate_per_sec: 1_000,
            sources: 4,
            users: 5_000,
            out_of_order: 0.10,
            within_lateness: 0.02,
            beyond_lateness: 0.01,
            out_of_orderness_ms: 5_000,
            allowed_lateness_ms: 30_000,
            window_ms: 60_000,
        }
    }
}

/// One generated event.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Position in arrival order.
    pub index: usize,
    /// The source (agent) that sends it, `0..sources`.
    pub source: u32,
    /// Arrival time.
    pub arrival_ms: i64,
    /// Event time (the envelope `timestamp`).
    pub event_time_ms: i64,
    /// How it was delayed.
    pub delay: Delay,
    /// `event_type`.
    pub event_type: &'static str,
    /// `user_id`.
    pub user_id: String,
    /// The envelope as JSON text.
    pub json: String,
}

/// A skewed pick in `0..n`: low indices are much more likely (about a cube law).
fn skewed(rng: &mut StdRng, n: u32) -> u32 {
    let u: f64 = rng.random();
    ((u * u * u) * f64::from(n)) as u32 % n.max(1)
}

fn pick<'a>(rng: &mut StdRng, weighted: &[(&'a str, u32)]) -> &'a str {
    let total: u32 = weighted.iter().map(|(_, w)| w).sum();
    let mut x = rng.random_range(0..total);
    for (v, w) in weighted {
        if x < *w {
            return v;
        }
        x -= w;
    }
    weighted[0].0
}

/// Generates the whole stream, in arrival order.
pub fn generate(cfg: &Config) -> Vec<Generated> {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let sources = cfg.sources.max(1);
    let mut max_by_source: Vec<Option<i64>> = vec![None; sources as usize];
    let mut out = Vec::with_capacity(cfg.events);
    for i in 0..cfg.events {
        let arrival = cfg.start_ms + (i as i64) * 1000 / i64::from(cfg.rate_per_sec.max(1));
        let source = (i as u32) % sources;
        let r: f64 = rng.random();
        let ooo = cfg.out_of_orderness_ms;
        let lat = cfg.allowed_lateness_ms;
        let (delay, ts) = if r < cfg.beyond_lateness {
            // Final for every source's watermark: measured from the least greatest time.
            let floor = max_by_source
                .iter()
                .map(|m| m.unwrap_or(i64::MIN))
                .min()
                .unwrap_or(i64::MIN);
            if floor == i64::MIN {
                (Delay::OnTime, arrival)
            } else {
                let extra = rng.random_range(1..=cfg.window_ms.max(1));
                (
                    Delay::BeyondLateness,
                    floor - ooo - lat - cfg.window_ms - extra,
                )
            }
        } else if r < cfg.beyond_lateness + cfg.within_lateness && lat > 0 {
            (
                Delay::WithinLateness,
                arrival - ooo - rng.random_range(1..=lat),
            )
        } else if r < cfg.beyond_lateness + cfg.within_lateness + cfg.out_of_order && ooo > 0 {
            (Delay::OutOfOrder, arrival - rng.random_range(1..=ooo))
        } else {
            (Delay::OnTime, arrival)
        };
        let m = &mut max_by_source[source as usize];
        *m = Some(m.map_or(ts, |m| m.max(ts)));
        let user = skewed(&mut rng, cfg.users.max(1));
        let user_id = format!("user-{user:06}");
        // Addresses of the ranges in plugins/geo-enrich's sample table (KE, NG, ZA, UG, RW).
        let ip = match rng.random_range(0..5u8) {
            0 => format!("192.0.2.{}", rng.random_range(1..=254)),
            1 => format!("198.51.100.{}", rng.random_range(1..=254)),
            2 => format!("203.0.113.{}", rng.random_range(1..=254)),
            3 => format!(
                "10.20.{}.{}",
                rng.random_range(0..=255),
                rng.random_range(1..=254)
            ),
            _ => format!(
                "192.168.{}.{}",
                rng.random_range(0..=255),
                rng.random_range(1..=254)
            ),
        };
        let platform = pick(&mut rng, &[("android", 60), ("ios", 30), ("web", 10)]);
        let event_id = format!("{}-{:016x}-{i}", cfg.seed, rng.random::<u64>());
        let (event_type, properties) = match cfg.scenario {
            Scenario::Fintech => {
                let agent = skewed(&mut rng, 500);
                let t = pick(
                    &mut rng,
                    &[
                        ("onboarding.completed", 10),
                        ("deposit.completed", 40),
                        ("withdrawal.completed", 30),
                        ("app.login", 20),
                    ],
                );
                let amount = match t {
                    "deposit.completed" | "withdrawal.completed" => {
                        // Mostly small, some large: 50 to about 50,000 KES.
                        let u: f64 = rng.random();
                        Some((50.0 * (1000f64).powf(u * u)).round())
                    }
                    _ => None,
                };
                let mut p = serde_json::json!({
                    "field_agent_id": format!("fa-{agent:04}"),
                    "currency": "KES",
                    "ip": ip,
                });
                if let Some(a) = amount {
                    p["amount"] = a.into();
                }
                (t, p)
            }
            Scenario::Ecommerce => {
                let t = pick(
                    &mut rng,
                    &[
                        ("page.view", 60),
                        ("search", 10),
                        ("cart.add", 20),
                        ("checkout.completed", 10),
                    ],
                );
                let product = skewed(&mut rng, 2_000);
                let mut p = serde_json::json!({
                    "path": format!("/p/{product}"),
                    "product_id": format!("sku-{product:05}"),
                    "ip": ip,
                });
                if t == "checkout.completed" {
                    let cents = rng.random_range(500..50_000);
                    p["amount"] = (f64::from(cents) / 100.0).into();
                    p["currency"] = "EUR".into();
                }
                (t, p)
            }
        };
        let json = serde_json::json!({
            "event_id": event_id,
            "event_type": event_type,
            "timestamp": ts,
            "user_id": user_id,
            "session_id": format!("s-{user:06}-{}", arrival / 1_800_000),
            "platform": platform,
            "properties": properties,
        })
        .to_string();
        out.push(Generated {
            index: i,
            source,
            arrival_ms: arrival,
            event_time_ms: ts,
            delay,
            event_type,
            user_id,
            json,
        });
    }
    out
}
