//! A report's definition: the TOML file `runnel report deploy` sends, checked field by field.
//!
//! ```toml
//! name = "agent_commission"
//! description = "Monthly commission per field agent"
//! time_zone = "Africa/Nairobi"      # of date and month parameters and of the schedule
//! format = "csv"                    # parquet | csv | json | html
//! wait_for = "final"                # final | none
//! sql = "SELECT … FROM agent_performance WHERE window_start = $month_start"
//!
//! [params.month]
//! type = "month"                    # string | int | float | bool | date | month | hour | minute | timestamp
//! default = "previous"              # periods: previous | current | a value
//!
//! [schedule]
//! cron = "0 6 1 * *"                # five fields, in time_zone
//! ```
//!
//! Parameters reach the SQL as typed literals, never as text spliced in: `$name` becomes
//! `'text'` (quotes doubled), `CAST(12 AS BIGINT)`, `CAST(0.05 AS DOUBLE)`, `TRUE`,
//! `DATE '2026-11-01'`, or a UTC timestamp; a date or month parameter also gives
//! `$name_start` and `$name_end`, the period's bounds in `time_zone` as UTC timestamps. A
//! `$` inside a quoted string, a quoted identifier or a comment is left alone.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::Value;

/// A checked definition.
#[derive(Debug, Clone)]
pub struct Definition {
    /// The report's name (`[a-z][a-z0-9_-]{0,63}`).
    pub name: String,
    /// One line for people.
    pub description: String,
    /// The statement, with `$parameters`.
    pub sql: String,
    /// The zone of date and month parameters and of the schedule.
    pub time_zone: Tz,
    /// The parameters, by name.
    pub params: BTreeMap<String, Param>,
    /// When it runs by itself.
    pub schedule: Option<Schedule>,
    /// The output's format.
    pub format: Format,
    /// Where outputs go (an object-store URL); `None`: the broker's default.
    pub destination: Option<String>,
    /// Days an output is kept; `None`: the broker's default.
    pub retention_days: Option<u32>,
    /// Whether a run over a period waits until that period's windows are final.
    pub wait_for_final: bool,
    /// Where a finished run is announced; `None`: nowhere unless the request names one.
    pub webhook_url: Option<String>,
    /// Longest one attempt may take, in milliseconds; `None`: the broker's default.
    pub deadline_ms: Option<u64>,
    /// Most attempts of one run; `None`: the broker's default.
    pub attempts_max: Option<u32>,
}

/// One parameter.
#[derive(Debug, Clone)]
pub struct Param {
    /// Its type.
    pub kind: Kind,
    /// Its value when a run gives none.
    pub default: Option<Default>,
    /// One line for people.
    pub description: String,
}

/// A parameter's default.
#[derive(Debug, Clone, PartialEq)]
pub enum Default {
    /// A value (canonical JSON).
    Value(Value),
    /// Date and month: the period before the current one, in the report's zone.
    Previous,
    /// Date and month: the current period.
    Current,
}

/// The types of parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text.
    String,
    /// A 64-bit integer.
    Int,
    /// A finite 64-bit float.
    Float,
    /// `true` or `false`.
    Bool,
    /// `YYYY-MM-DD`, a day in the report's zone.
    Date,
    /// `YYYY-MM`, a calendar month in the report's zone.
    Month,
    /// `YYYY-MM-DDTHH`, an hour of the report's zone.
    Hour,
    /// `YYYY-MM-DDTHH:MM`, a minute of the report's zone.
    Minute,
    /// An RFC 3339 instant.
    Timestamp,
}

impl Kind {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "string" => Self::String,
            "int" => Self::Int,
            "float" => Self::Float,
            "bool" => Self::Bool,
            "date" => Self::Date,
            "month" => Self::Month,
            "hour" => Self::Hour,
            "minute" => Self::Minute,
            "timestamp" => Self::Timestamp,
            _ => return None,
        })
    }

    /// Its name in a definition.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Int => "int",
            Self::Float => "float",
            Self::Bool => "bool",
            Self::Date => "date",
            Self::Month => "month",
            Self::Hour => "hour",
            Self::Minute => "minute",
            Self::Timestamp => "timestamp",
        }
    }

    fn is_period(self) -> bool {
        matches!(self, Self::Date | Self::Month | Self::Hour | Self::Minute)
    }

    /// The `chrono` format of an hour or a minute.
    fn clock_format(self) -> Option<&'static str> {
        match self {
            Self::Hour => Some("%Y-%m-%dT%H"),
            Self::Minute => Some("%Y-%m-%dT%H:%M"),
            _ => None,
        }
    }
}

/// When a report runs by itself.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The expression as written.
    pub cron: String,
    parsed: croner::Cron,
}

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// zstd Parquet.
    Parquet,
    /// CSV with a header line.
    Csv,
    /// A JSON array of objects.
    Json,
    /// A self-contained HTML page with one table, for people.
    Html,
}

impl Format {
    /// Its name in a definition, and the output's file extension.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Parquet => "parquet",
            Self::Csv => "csv",
            Self::Json => "json",
            Self::Html => "html",
        }
    }

    /// The format named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Parquet, Self::Csv, Self::Json, Self::Html]
            .into_iter()
            .find(|f| f.as_str() == s)
    }

    /// The output's media type.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Parquet => "application/vnd.apache.parquet",
            Self::Csv => "text/csv; charset=utf-8",
            Self::Json => "application/json",
            Self::Html => "text/html; charset=utf-8",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: String,
    #[serde(default)]
    description: String,
    sql: String,
    time_zone: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, RawParam>,
    schedule: Option<RawSchedule>,
    format: Option<String>,
    destination: Option<String>,
    retention_days: Option<u32>,
    wait_for: Option<String>,
    webhook_url: Option<String>,
    deadline_ms: Option<u64>,
    attempts_max: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParam {
    #[serde(rename = "type")]
    kind: String,
    default: Option<toml::Value>,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    cron: String,
}

/// Most bytes of a definition's text.
pub const TEXT_BYTES_MAX: usize = 256 << 10;

impl Definition {
    /// Parses and checks a definition; the error names the field.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > TEXT_BYTES_MAX {
            return Err(format!(
                "the definition is {} bytes; at most {TEXT_BYTES_MAX}",
                text.len()
            ));
        }
        let raw: Raw = toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
        crate::plugins::check_name(&raw.name)?;
        if raw.name == "runs" {
            return Err("name: \"runs\" is reserved (/v1/reports/runs/ID)".into());
        }
        if raw.sql.trim().is_empty() {
            return Err("sql: empty".into());
        }
        let time_zone = match raw.time_zone.as_deref() {
            None => Tz::UTC,
            Some(z) => {
                Tz::from_str(z).map_err(|_| format!("time_zone: {z:?} is not an IANA time zone"))?
            }
        };
        let mut params = BTreeMap::new();
        for (name, p) in raw.params {
            check_param_name(&name)?;
            let kind = Kind::parse(&p.kind).ok_or_else(|| {
                format!(
                    "params.{name}.type: {:?} is not one of string, int, float, bool, date, month, hour, minute, timestamp",
                    p.kind
                )
            })?;
            let default = match p.default {
                None => None,
                Some(toml::Value::String(s)) if kind.is_period() && s == "previous" => {
                    Some(Default::Previous)
                }
                Some(toml::Value::String(s)) if kind.is_period() && s == "current" => {
                    Some(Default::Current)
                }
                Some(v) => {
                    let json = serde_json::to_value(&v)
                        .map_err(|e| format!("params.{name}.default: {e}"))?;
                    Some(Default::Value(
                        canonical(kind, &json)
                            .map_err(|e| format!("params.{name}.default: {e}"))?,
                    ))
                }
            };
            params.insert(
                name,
                Param {
                    kind,
                    default,
                    description: p.description,
                },
            );
        }
        let schedule = match raw.schedule {
            None => None,
            Some(s) => Some(Schedule {
                // Five fields (minute hour day month weekday), as documented.
                parsed: croner::parser::CronParser::builder()
                    .seconds(croner::parser::Seconds::Disallowed)
                    .year(croner::parser::Year::Disallowed)
                    .build()
                    .parse(&s.cron)
                    .map_err(|e| format!("schedule.cron: {:?}: {e}", s.cron))?,
                cron: s.cron,
            }),
        };
        if schedule.is_some() {
            let periods = params.values().filter(|p| p.kind.is_period()).count();
            if periods > 1 {
                return Err(
                    "schedule: a scheduled report has at most one period parameter (date, month, hour or minute)"
                        .into(),
                );
            }
            if let Some((name, _)) = params
                .iter()
                .find(|(_, p)| p.default.is_none() && !p.kind.is_period())
            {
                return Err(format!(
                    "params.{name}.default: a scheduled report needs a default for every parameter but its period"
                ));
            }
        }
        let f = raw.format.as_deref().unwrap_or("csv");
        let format = Format::parse(f)
            .ok_or_else(|| format!("format: {f:?} is not one of parquet, csv, json, html"))?;
        let wait_for_final = match raw.wait_for.as_deref().unwrap_or("final") {
            "final" => true,
            "none" => false,
            other => return Err(format!("wait_for: {other:?} is not final or none")),
        };
        if let Some(u) = &raw.webhook_url {
            check_webhook_url(u).map_err(|e| format!("webhook_url: {e}"))?;
        }
        if raw.deadline_ms == Some(0) {
            return Err("deadline_ms: must be > 0".into());
        }
        if raw.attempts_max == Some(0) {
            return Err("attempts_max: must be > 0".into());
        }
        if raw.retention_days == Some(0) {
            return Err("retention_days: must be > 0".into());
        }
        let def = Self {
            name: raw.name,
            description: raw.description,
            sql: raw.sql,
            time_zone,
            params,
            schedule,
            format,
            destination: raw.destination.filter(|d| !d.is_empty()),
            retention_days: raw.retention_days,
            wait_for_final,
            webhook_url: raw.webhook_url,
            deadline_ms: raw.deadline_ms,
            attempts_max: raw.attempts_max,
        };
        // Every `$name` must be a parameter: found now, not at the first run.
        let sample: BTreeMap<String, Value> = def
            .params
            .iter()
            .map(|(n, p)| (n.clone(), sample_value(p.kind)))
            .collect();
        def.render(&sample).map_err(|e| format!("sql: {e}"))?;
        Ok(def)
    }

    /// The period parameter of a scheduled run (its one date or month parameter).
    pub fn period_param(&self) -> Option<(&str, Kind)> {
        self.params
            .iter()
            .find(|(_, p)| p.kind.is_period())
            .map(|(n, p)| (n.as_str(), p.kind))
    }

    /// A run's parameter values: those given (each checked against its type), then the
    /// defaults, `now_ms` placing `previous` and `current`. The error names the parameter.
    pub fn resolve(
        &self,
        given: &serde_json::Map<String, Value>,
        now_ms: i64,
    ) -> Result<BTreeMap<String, Value>, String> {
        for name in given.keys() {
            if !self.params.contains_key(name) {
                let known: Vec<&str> = self.params.keys().map(String::as_str).collect();
                return Err(format!(
                    "params.{name}: report {} has no such parameter (it has: {})",
                    self.name,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ));
            }
        }
        let mut out = BTreeMap::new();
        for (name, p) in &self.params {
            let value = match given.get(name) {
                Some(v) => canonical(p.kind, v).map_err(|e| format!("params.{name}: {e}"))?,
                None => match &p.default {
                    Some(Default::Value(v)) => v.clone(),
                    Some(Default::Previous) => Value::String(self.period_of(p.kind, now_ms, -1)),
                    Some(Default::Current) => Value::String(self.period_of(p.kind, now_ms, 0)),
                    None => {
                        return Err(format!(
                            "params.{name}: required ({}), and it has no default",
                            p.kind.as_str()
                        ));
                    }
                },
            };
            out.insert(name.clone(), value);
        }
        Ok(out)
    }

    /// The period (date, month, hour, minute) `shift` periods from the one holding `at_ms`, in
    /// the report's zone.
    pub fn period_of(&self, kind: Kind, at_ms: i64, shift: i32) -> String {
        let local_time = DateTime::from_timestamp_millis(at_ms)
            .unwrap_or_default()
            .with_timezone(&self.time_zone)
            .naive_local();
        let local = local_time.date();
        if let Some(f) = kind.clock_format() {
            let step = if kind == Kind::Hour {
                Duration::hours(1)
            } else {
                Duration::minutes(1)
            };
            let minute = if kind == Kind::Hour {
                local_time.with_minute(0)
            } else {
                Some(local_time)
            };
            let truncated = minute
                .and_then(|t| t.with_second(0))
                .and_then(|t| t.with_nanosecond(0))
                .unwrap_or(local_time);
            return (truncated + step * shift).format(f).to_string();
        }
        match kind {
            Kind::Month => {
                let months = local.year() * 12 + local.month0() as i32 + shift;
                format!(
                    "{:04}-{:02}",
                    months.div_euclid(12),
                    months.rem_euclid(12) + 1
                )
            }
            _ => (local + Duration::days(i64::from(shift)))
                .format("%Y-%m-%d")
                .to_string(),
        }
    }

    /// The bounds `[start, end)` in UTC milliseconds of a date or month value.
    pub fn period_bounds(&self, kind: Kind, value: &str) -> Option<(i64, i64)> {
        let (first, next) = match kind {
            Kind::Month => {
                let first = NaiveDate::parse_from_str(&format!("{value}-01"), "%Y-%m-%d").ok()?;
                (first, first.checked_add_months(chrono::Months::new(1))?)
            }
            Kind::Date => {
                let day = NaiveDate::parse_from_str(value, "%Y-%m-%d").ok()?;
                (day, day.succ_opt()?)
            }
            Kind::Hour | Kind::Minute => {
                let start = parse_clock(kind, value)?;
                let step = if kind == Kind::Hour {
                    Duration::hours(1)
                } else {
                    Duration::minutes(1)
                };
                return Some((
                    local_instant(self.time_zone, start),
                    local_instant(self.time_zone, start + step),
                ));
            }
            _ => return None,
        };
        Some((
            local_midnight(self.time_zone, first),
            local_midnight(self.time_zone, next),
        ))
    }

    /// The end of the run's period (UTC ms): that of its one date or month parameter.
    pub fn period_end(&self, values: &BTreeMap<String, Value>) -> Option<i64> {
        let (name, kind) = self.period_param()?;
        let value = values.get(name)?.as_str()?;
        self.period_bounds(kind, value).map(|(_, end)| end)
    }

    /// The SQL with every `$parameter` replaced by its typed literal.
    pub fn render(&self, values: &BTreeMap<String, Value>) -> Result<String, String> {
        let mut out = String::with_capacity(self.sql.len() + 64);
        let mut rest = self.sql.as_str();
        while let Some((i, c)) = rest.char_indices().find(|(_, c)| "'\"-/$".contains(*c)) {
            out.push_str(&rest[..i]);
            rest = &rest[i..];
            let skip = match c {
                '\'' | '"' => quoted_len(rest, c),
                '-' if rest.starts_with("--") => rest.find('\n').unwrap_or(rest.len()),
                '/' if rest.starts_with("/*") => rest.find("*/").map_or(rest.len(), |e| e + 2),
                '$' => {
                    let name_len = rest[1..]
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len() - 1);
                    let name = &rest[1..1 + name_len];
                    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
                        return Err(format!(
                            "{:?}: parameters are named ($month), not numbered",
                            &rest[..(1 + name_len).min(rest.len())]
                        ));
                    }
                    out.push_str(&self.literal(name, values)?);
                    rest = &rest[1 + name_len..];
                    continue;
                }
                _ => 1,
            };
            out.push_str(&rest[..skip]);
            rest = &rest[skip..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn literal(&self, name: &str, values: &BTreeMap<String, Value>) -> Result<String, String> {
        let unknown = || {
            let known: Vec<String> = self
                .params
                .iter()
                .flat_map(|(n, p)| {
                    let mut v = vec![format!("${n}")];
                    if p.kind.is_period() {
                        v.push(format!("${n}_start"));
                        v.push(format!("${n}_end"));
                    }
                    v
                })
                .collect();
            format!(
                "${name} is not a parameter of report {} (it has: {})",
                self.name,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        };
        if let (Some(p), Some(v)) = (self.params.get(name), values.get(name)) {
            return Ok(match (p.kind, v) {
                (Kind::String | Kind::Month | Kind::Hour | Kind::Minute, Value::String(s)) => {
                    quote(s)
                }
                (Kind::Int, v) => format!("CAST({v} AS BIGINT)"),
                (Kind::Float, Value::Number(n)) => {
                    format!("CAST({:?} AS DOUBLE)", n.as_f64().unwrap_or_default())
                }
                (Kind::Bool, Value::Bool(b)) => (if *b { "TRUE" } else { "FALSE" }).to_string(),
                (Kind::Date, Value::String(s)) => format!("DATE {}", quote(s)),
                (Kind::Timestamp, Value::String(s)) => timestamp_literal(
                    DateTime::parse_from_rfc3339(s)
                        .map_err(|e| format!("${name}: {e}"))?
                        .timestamp_millis(),
                ),
                (kind, v) => return Err(format!("${name}: {v} is not a {}", kind.as_str())),
            });
        }
        for (suffix, end) in [("_start", false), ("_end", true)] {
            let Some(base) = name.strip_suffix(suffix) else {
                continue;
            };
            let Some(p) = self.params.get(base).filter(|p| p.kind.is_period()) else {
                continue;
            };
            let v = values
                .get(base)
                .and_then(Value::as_str)
                .ok_or_else(unknown)?;
            let (s, e) = self
                .period_bounds(p.kind, v)
                .ok_or_else(|| format!("${base}: {v:?} is not a {}", p.kind.as_str()))?;
            return Ok(timestamp_literal(if end { e } else { s }));
        }
        Err(unknown())
    }

    /// The fire times of the schedule after `after_ms`, up to and including `until_ms`, at
    /// most `max` of them (the newest if there are more), in UTC milliseconds.
    pub fn fires_between(&self, after_ms: i64, until_ms: i64, max: usize) -> Vec<i64> {
        let Some(s) = &self.schedule else {
            return Vec::new();
        };
        let mut out = std::collections::VecDeque::new();
        let mut t = DateTime::from_timestamp_millis(after_ms)
            .unwrap_or_default()
            .with_timezone(&self.time_zone);
        while let Ok(next) = s.parsed.find_next_occurrence(&t, false) {
            let ms = next.timestamp_millis();
            if ms > until_ms {
                break;
            }
            out.push_back(ms);
            if out.len() > max {
                out.pop_front();
            }
            t = next;
        }
        out.into()
    }
}

/// `[a-z][a-z0-9_]{0,63}`: a parameter's name, usable as `$name` in the SQL.
fn check_param_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "params.{name}: a name must match [a-z][a-z0-9_]{{0,63}}"
        ))
    }
}

/// A webhook URL: `http` or `https` with a host.
pub fn check_webhook_url(u: &str) -> Result<(), String> {
    let url = url::Url::parse(u).map_err(|e| format!("{u:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("{u:?}: not an http:// or https:// URL"));
    }
    Ok(())
}

/// A value of `kind` in canonical JSON (dates, months and timestamps as text), from JSON as a
/// request or a definition gives it (numbers and booleans may come as text, as from
/// `--param k=v`).
pub fn canonical(kind: Kind, v: &Value) -> Result<Value, String> {
    let text = v.as_str();
    let bad = || format!("{v} is not a {}", kind.as_str());
    Ok(match kind {
        Kind::String => Value::String(text.ok_or_else(bad)?.to_string()),
        Kind::Int => match (v.as_i64(), text) {
            (Some(i), _) => Value::from(i),
            (None, Some(t)) => Value::from(t.trim().parse::<i64>().map_err(|_| bad())?),
            _ => return Err(bad()),
        },
        Kind::Float => {
            let f = match (v.as_f64(), text) {
                (Some(f), _) => f,
                (None, Some(t)) => t.trim().parse::<f64>().map_err(|_| bad())?,
                _ => return Err(bad()),
            };
            if !f.is_finite() {
                return Err(format!("{v} is not a finite float"));
            }
            Value::from(f)
        }
        Kind::Bool => match (v.as_bool(), text) {
            (Some(b), _) => Value::Bool(b),
            (None, Some("true")) => Value::Bool(true),
            (None, Some("false")) => Value::Bool(false),
            _ => return Err(bad()),
        },
        Kind::Date => {
            let t = text.ok_or_else(bad)?;
            NaiveDate::parse_from_str(t, "%Y-%m-%d")
                .map_err(|_| format!("{v} is not a date (YYYY-MM-DD)"))?;
            Value::String(t.to_string())
        }
        Kind::Month => {
            let t = text.ok_or_else(bad)?;
            let ok =
                t.len() == 7 && NaiveDate::parse_from_str(&format!("{t}-01"), "%Y-%m-%d").is_ok();
            if !ok {
                return Err(format!("{v} is not a month (YYYY-MM)"));
            }
            Value::String(t.to_string())
        }
        Kind::Hour | Kind::Minute => {
            let t = text.ok_or_else(bad)?;
            parse_clock(kind, t).ok_or_else(|| {
                format!(
                    "{v} is not {} ({})",
                    if kind == Kind::Hour {
                        "an hour"
                    } else {
                        "a minute"
                    },
                    if kind == Kind::Hour {
                        "YYYY-MM-DDTHH"
                    } else {
                        "YYYY-MM-DDTHH:MM"
                    }
                )
            })?;
            Value::String(t.to_string())
        }
        Kind::Timestamp => {
            let t = text.ok_or_else(bad)?;
            let at = DateTime::parse_from_rfc3339(t)
                .map_err(|_| format!("{v} is not an RFC 3339 timestamp"))?;
            Value::String(
                at.with_timezone(&Utc)
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            )
        }
    })
}

/// Some value of `kind` (planning a statement does not depend on which).
pub(crate) fn sample_value(kind: Kind) -> Value {
    match kind {
        Kind::String => Value::from("x"),
        Kind::Int => Value::from(0),
        Kind::Float => Value::from(0.0),
        Kind::Bool => Value::Bool(false),
        Kind::Date => Value::from("2026-01-01"),
        Kind::Month => Value::from("2026-01"),
        Kind::Hour => Value::from("2026-01-01T00"),
        Kind::Minute => Value::from("2026-01-01T00:00"),
        Kind::Timestamp => Value::from("2026-01-01T00:00:00.000Z"),
    }
}

/// `'text'` with quotes doubled.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A UTC timestamp literal of the type the tables' time columns have.
fn timestamp_literal(ms: i64) -> String {
    let at = DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    format!("arrow_cast('{at}', 'Timestamp(ms, \"UTC\")')")
}

/// The length of the quoted text at the start of `s` (quote `q`, doubled inside), to its
/// closing quote or the end.
fn quoted_len(s: &str, q: char) -> usize {
    let mut i = 1;
    let b = s.as_bytes();
    while i < b.len() {
        if b[i] == q as u8 {
            if b.get(i + 1) == Some(&(q as u8)) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

/// An hour (`YYYY-MM-DDTHH`) or a minute (`YYYY-MM-DDTHH:MM`), as local time.
fn parse_clock(kind: Kind, value: &str) -> Option<NaiveDateTime> {
    let full = match kind {
        Kind::Hour if value.len() == 13 => format!("{value}:00:00"),
        Kind::Minute if value.len() == 16 => format!("{value}:00"),
        _ => return None,
    };
    NaiveDateTime::parse_from_str(&full, "%Y-%m-%dT%H:%M:%S").ok()
}

/// The first instant of `day` in `tz`, in UTC milliseconds (a midnight skipped by a clock
/// change: the first local time after it).
fn local_midnight(tz: Tz, day: NaiveDate) -> i64 {
    local_instant(tz, day.and_hms_opt(0, 0, 0).expect("midnight exists"))
}

/// The instant of local time `t` in `tz`, in UTC milliseconds (the earlier one of a time a
/// clock change repeats; for one it skips, the first local time after it).
fn local_instant(tz: Tz, t: NaiveDateTime) -> i64 {
    let mut at = t;
    for _ in 0..48 {
        if let Some(x) = tz.from_local_datetime(&at).earliest() {
            return x.timestamp_millis();
        }
        at += Duration::minutes(30);
    }
    Utc.from_utc_datetime(&t).timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMISSION: &str = r#"
name = "agent_commission"
time_zone = "Africa/Nairobi"
sql = """
SELECT field_agent_id, $fixed + $rate * deposit_total AS commission -- $not_a_param
FROM agent_performance WHERE window_start = $month_start AND note = 'costs $5'
"""
[params.month]
type = "month"
default = "previous"
[params.fixed]
type = "float"
default = 500
[params.rate]
type = "float"
default = 0.01
[schedule]
cron = "0 6 1 * *"
"#;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn parameters_become_typed_literals_outside_quotes_and_comments() {
        let d = Definition::parse(COMMISSION).unwrap();
        let now = ms("2026-12-01T03:00:00Z"); // 06:00 in Nairobi
        let v = d
            .resolve(
                serde_json::json!({"rate": "0.02"}).as_object().unwrap(),
                now,
            )
            .unwrap();
        assert_eq!(v["month"], "2026-11");
        assert_eq!(v["fixed"], 500.0);
        let sql = d.render(&v).unwrap();
        assert!(sql.contains("CAST(500.0 AS DOUBLE) + CAST(0.02 AS DOUBLE) * deposit_total"));
        // A Nairobi month starts at 21:00 UTC the day before.
        assert!(sql.contains("arrow_cast('2026-10-31T21:00:00.000Z', 'Timestamp(ms, \"UTC\")')"));
        assert!(
            sql.contains("-- $not_a_param") && sql.contains("'costs $5'"),
            "{sql}"
        );
        assert_eq!(d.period_end(&v), Some(ms("2026-11-30T21:00:00Z")));
    }

    #[test]
    fn a_string_cannot_leave_its_quotes() {
        let d = Definition::parse(
            "name = \"r\"\nsql = \"SELECT * FROM events WHERE agent_id = $agent\"\n[params.agent]\ntype = \"string\"",
        )
        .unwrap();
        let v = d
            .resolve(
                serde_json::json!({"agent": "x' OR '1'='1"})
                    .as_object()
                    .unwrap(),
                0,
            )
            .unwrap();
        assert_eq!(
            d.render(&v).unwrap(),
            "SELECT * FROM events WHERE agent_id = 'x'' OR ''1''=''1'"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let err = |text: &str| Definition::parse(text).unwrap_err();
        assert!(err("name = \"r\"\nsql = \"SELECT $nope\"").contains("$nope is not a parameter"));
        assert!(err("name = \"r\"\nsql = \"SELECT 1\"\nformat = \"xls\"").contains("format:"));
        assert!(
            err("name = \"r\"\nsql = \"SELECT 1\"\ntime_zone = \"Mars/Base\"")
                .contains("time_zone:")
        );
        assert!(
            err("name = \"r\"\nsql = \"SELECT 1\"\n[schedule]\ncron = \"61 * * * *\"")
                .contains("schedule.cron")
        );
        assert!(err("name = \"r\"\nsql = \"SELECT 1\"\ncolour = 1").contains("colour"));
        assert!(err("name = \"r\"\nsql = \"SELECT $1\"").contains("named"));
        assert!(
            err("name = \"r\"\nsql = \"SELECT $m\"\n[params.m]\ntype = \"month\"\ndefault = \"2026-13\"")
                .contains("params.m.default")
        );
        let d = Definition::parse(COMMISSION).unwrap();
        let bad = |j: serde_json::Value| d.resolve(j.as_object().unwrap(), 0).unwrap_err();
        assert!(bad(serde_json::json!({"month": "2026-1"})).starts_with("params.month:"));
        assert!(bad(serde_json::json!({"rate": "lots"})).starts_with("params.rate:"));
        assert!(bad(serde_json::json!({"colour": 1})).contains("no such parameter"));
    }

    #[test]
    fn the_schedule_fires_in_its_zone() {
        let d = Definition::parse(COMMISSION).unwrap();
        let fires = d.fires_between(ms("2026-10-15T00:00:00Z"), ms("2027-01-01T00:00:00Z"), 10);
        assert_eq!(
            fires,
            vec![ms("2026-11-01T03:00:00Z"), ms("2026-12-01T03:00:00Z")]
        );
        // At most `max`, the newest kept.
        let fires = d.fires_between(ms("2026-01-15T00:00:00Z"), ms("2026-12-15T00:00:00Z"), 2);
        assert_eq!(
            fires,
            vec![ms("2026-11-01T03:00:00Z"), ms("2026-12-01T03:00:00Z")]
        );
        assert_eq!(d.period_of(Kind::Month, fires[0], -1), "2026-10");
        assert_eq!(
            d.period_of(Kind::Month, ms("2026-01-10T00:00:00Z"), -1),
            "2025-12"
        );
        assert_eq!(
            d.period_of(Kind::Date, ms("2026-03-01T00:00:00Z"), -1),
            "2026-02-28"
        );
    }

    #[test]
    fn hours_and_minutes_are_periods_in_the_zone() {
        let d = Definition::parse(
            "name = \"r\"\ntime_zone = \"Asia/Kolkata\"\nsql = \"SELECT $m_start, $m_end\"\n[params.m]\ntype = \"minute\"\ndefault = \"previous\"\n[schedule]\ncron = \"* * * * *\"",
        )
        .unwrap();
        // 12:00:30 UTC is 17:30:30 in Kolkata (UTC+5:30).
        let at = ms("2026-12-01T12:00:30Z");
        assert_eq!(d.period_of(Kind::Minute, at, -1), "2026-12-01T17:29");
        assert_eq!(d.period_of(Kind::Hour, at, 0), "2026-12-01T17");
        assert_eq!(
            d.period_of(Kind::Minute, ms("2026-12-01T18:30:00Z"), -1),
            "2026-12-01T23:59"
        );
        assert_eq!(
            d.period_bounds(Kind::Minute, "2026-12-01T17:29"),
            Some((ms("2026-12-01T11:59:00Z"), ms("2026-12-01T12:00:00Z")))
        );
        assert_eq!(
            d.period_bounds(Kind::Hour, "2026-12-01T17"),
            Some((ms("2026-12-01T11:30:00Z"), ms("2026-12-01T12:30:00Z")))
        );
        let fires = d.fires_between(ms("2026-12-01T12:00:30Z"), ms("2026-12-01T12:03:00Z"), 10);
        assert_eq!(
            fires,
            vec![
                ms("2026-12-01T12:01:00Z"),
                ms("2026-12-01T12:02:00Z"),
                ms("2026-12-01T12:03:00Z")
            ]
        );
        let v = d.resolve(&serde_json::Map::new(), at).unwrap();
        assert_eq!(v["m"], "2026-12-01T17:29");
        assert!(d.render(&v).unwrap().contains("'2026-12-01T11:59:00.000Z'"));
        let bad = |j: serde_json::Value| d.resolve(j.as_object().unwrap(), 0).unwrap_err();
        assert!(bad(serde_json::json!({"m": "2026-12-01T17"})).starts_with("params.m:"));
        assert!(bad(serde_json::json!({"m": "2026-12-01T25:00"})).starts_with("params.m:"));
    }
}
