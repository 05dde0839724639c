//! Which windows an event time falls in.

use chrono::{Datelike, LocalResult, NaiveDate, NaiveDateTime, TimeZone};
use chrono_tz::Tz;

/// A calendar unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalendarUnit {
    /// Midnight to midnight.
    Day,
    /// Monday 00:00 to the next Monday 00:00 (ISO weeks).
    Week,
    /// The first of the month 00:00 to the first of the next month 00:00.
    Month,
}

/// How events are grouped in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowSpec {
    /// Fixed, non-overlapping windows of `size_ms`, aligned to the Unix epoch.
    Tumbling {
        /// Window length.
        size_ms: i64,
    },
    /// Windows of `size_ms` starting every `slide_ms` (aligned to the epoch); an event falls in
    /// `size_ms / slide_ms` of them.
    Hopping {
        /// Window length.
        size_ms: i64,
        /// Distance between window starts.
        slide_ms: i64,
    },
    /// Per key, events closer than `gap_ms` to each other form one session: a window from the
    /// first event to the last plus `gap_ms`.
    Session {
        /// Inactivity that ends a session.
        gap_ms: i64,
    },
    /// Calendar days, weeks or months in a time zone (UTC or an IANA zone): a window starts at
    /// local midnight, so its length follows daylight-saving changes.
    Calendar {
        /// Day, week or month.
        unit: CalendarUnit,
        /// The zone whose midnights delimit windows.
        tz: Tz,
    },
}

/// A window `[start, end)` in epoch milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Window {
    /// First millisecond in the window.
    pub start: i64,
    /// First millisecond after it.
    pub end: i64,
}

/// Errors in a window specification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A size or slide that is not positive.
    #[error("{0}: must be > 0")]
    NotPositive(&'static str),
    /// A slide that does not divide the size.
    #[error("slide_ms: {slide_ms} must divide size_ms {size_ms}")]
    SlideNotDivisor {
        /// The size.
        size_ms: i64,
        /// The slide.
        slide_ms: i64,
    },
    /// An unknown time zone name.
    #[error("time_zone: {0:?} is not an IANA time zone")]
    UnknownZone(String),
}

impl WindowSpec {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<(), SpecError> {
        match *self {
            Self::Tumbling { size_ms } if size_ms <= 0 => Err(SpecError::NotPositive("size_ms")),
            Self::Hopping { size_ms, .. } if size_ms <= 0 => Err(SpecError::NotPositive("size_ms")),
            Self::Hopping { slide_ms, .. } if slide_ms <= 0 => {
                Err(SpecError::NotPositive("slide_ms"))
            }
            Self::Hopping { size_ms, slide_ms } if size_ms % slide_ms != 0 => {
                Err(SpecError::SlideNotDivisor { size_ms, slide_ms })
            }
            Self::Session { gap_ms } if gap_ms <= 0 => Err(SpecError::NotPositive("gap_ms")),
            _ => Ok(()),
        }
    }

    /// Parses an IANA zone name (`UTC`, `Africa/Nairobi`, …).
    pub fn zone(name: &str) -> Result<Tz, SpecError> {
        name.parse::<Tz>()
            .map_err(|_| SpecError::UnknownZone(name.to_string()))
    }

    /// The pane an event time falls in: the unit in which the engine keeps partial aggregates.
    /// Every window is a whole number of panes, so an event is folded once, into its pane,
    /// however many windows it belongs to.
    pub fn pane(&self, ts: i64) -> Window {
        match *self {
            Self::Tumbling { size_ms } => aligned(ts, size_ms),
            Self::Hopping { slide_ms, .. } => aligned(ts, slide_ms),
            Self::Calendar { unit, tz } => calendar(ts, unit, tz),
            // An event alone is a session of one gap; the engine merges sessions per key.
            Self::Session { gap_ms } => Window {
                start: ts,
                end: ts.saturating_add(gap_ms),
            },
        }
    }

    /// The windows that hold pane `p`, earliest first.
    pub fn windows_of_pane(&self, p: Window) -> Vec<Window> {
        match *self {
            Self::Tumbling { .. } | Self::Calendar { .. } | Self::Session { .. } => vec![p],
            Self::Hopping { size_ms, slide_ms } => {
                let n = size_ms / slide_ms;
                (0..n)
                    .rev()
                    .map(|k| {
                        let start = p.start - k * slide_ms;
                        Window {
                            start,
                            end: start + size_ms,
                        }
                    })
                    .collect()
            }
        }
    }

    /// The earliest and the latest window that hold pane `p` (without allocating).
    pub fn first_last_of_pane(&self, p: Window) -> (Window, Window) {
        match *self {
            Self::Tumbling { .. } | Self::Calendar { .. } | Self::Session { .. } => (p, p),
            Self::Hopping { size_ms, slide_ms } => {
                let n = size_ms / slide_ms;
                let start = p.start - (n - 1) * slide_ms;
                (
                    Window {
                        start,
                        end: start + size_ms,
                    },
                    Window {
                        start: p.start,
                        end: p.start + size_ms,
                    },
                )
            }
        }
    }

    /// The windows an event time falls in, earliest first.
    pub fn windows(&self, ts: i64) -> Vec<Window> {
        self.windows_of_pane(self.pane(ts))
    }

    /// The panes that make up window `w`.
    pub fn panes_of(&self, w: Window) -> Vec<Window> {
        match *self {
            Self::Tumbling { .. } | Self::Calendar { .. } | Self::Session { .. } => vec![w],
            Self::Hopping { slide_ms, .. } => (w.start..w.end)
                .step_by(slide_ms as usize)
                .map(|s| Window {
                    start: s,
                    end: s + slide_ms,
                })
                .collect(),
        }
    }
}

fn aligned(ts: i64, size: i64) -> Window {
    let start = ts.div_euclid(size) * size;
    Window {
        start,
        end: start + size,
    }
}

/// The instant of local midnight at the start of `date` in `tz`. Where midnight does not exist
/// (a daylight-saving jump at midnight) it is the first instant of that local day.
fn midnight(date: NaiveDate, tz: Tz) -> i64 {
    let local: NaiveDateTime = date.and_hms_opt(0, 0, 0).expect("midnight exists");
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => t.timestamp_millis(),
        LocalResult::Ambiguous(first, _) => first.timestamp_millis(),
        LocalResult::None => {
            // Skipped: the day starts at the first local time that exists after midnight.
            (1..=180)
                .find_map(|m| {
                    tz.from_local_datetime(&(local + chrono::Duration::minutes(m)))
                        .earliest()
                })
                .map_or_else(
                    || local.and_utc().timestamp_millis(),
                    |t| t.timestamp_millis(),
                )
        }
    }
}

fn calendar(ts: i64, unit: CalendarUnit, tz: Tz) -> Window {
    let local = tz.timestamp_millis_opt(ts).single().map_or_else(
        || chrono::DateTime::from_timestamp_millis(ts).map_or(NaiveDate::MIN, |t| t.date_naive()),
        |t| t.date_naive(),
    );
    let (first, next) = match unit {
        CalendarUnit::Day => (local, local.succ_opt().unwrap_or(local)),
        CalendarUnit::Week => {
            let monday =
                local - chrono::Duration::days(i64::from(local.weekday().num_days_from_monday()));
            (monday, monday + chrono::Duration::days(7))
        }
        CalendarUnit::Month => {
            let first = local.with_day(1).expect("day 1 exists");
            let next = if first.month() == 12 {
                NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
            } else {
                NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
            }
            .expect("the first of a month exists");
            (first, next)
        }
    };
    Window {
        start: midnight(first, tz),
        end: midnight(next, tz),
    }
}

/// `ms` as the largest whole unit: `90s`, `1m`, `2h`, `1d`, `250ms`.
pub fn format_duration(ms: i64) -> String {
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms != 0 && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Parses a duration: a whole number and a unit, `ms`, `s`, `m`, `h` or `d` (`250ms`, `30s`,
/// `1h`).
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let n: i64 = n
        .parse()
        .map_err(|_| format!("{text:?}: expected a whole number and a unit (ms, s, m, h, d)"))?;
    let size = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        u => return Err(format!("{text:?}: unit {u:?} is not one of ms, s, m, h, d")),
    };
    n.checked_mul(size)
        .ok_or_else(|| format!("{text:?}: too large"))
}

impl std::fmt::Display for WindowSpec {
    /// `tumbling 1m`, `hopping 1h every 5m`, `session 30m`, `calendar month Africa/Nairobi`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tumbling { size_ms } => write!(f, "tumbling {}", format_duration(*size_ms)),
            Self::Hopping { size_ms, slide_ms } => write!(
                f,
                "hopping {} every {}",
                format_duration(*size_ms),
                format_duration(*slide_ms)
            ),
            Self::Session { gap_ms } => write!(f, "session {}", format_duration(*gap_ms)),
            Self::Calendar { unit, tz } => {
                let unit = match unit {
                    CalendarUnit::Day => "day",
                    CalendarUnit::Week => "week",
                    CalendarUnit::Month => "month",
                };
                write!(f, "calendar {unit} {}", tz.name())
            }
        }
    }
}

impl std::str::FromStr for WindowSpec {
    type Err = String;

    /// Parses what [`WindowSpec`]'s `Display` writes (durations in any unit).
    fn from_str(s: &str) -> Result<Self, String> {
        let words: Vec<&str> = s.split_whitespace().collect();
        let spec = match words.as_slice() {
            ["tumbling", size] => Self::Tumbling {
                size_ms: parse_duration(size)?,
            },
            ["hopping", size, "every", slide] => Self::Hopping {
                size_ms: parse_duration(size)?,
                slide_ms: parse_duration(slide)?,
            },
            ["session", gap] => Self::Session {
                gap_ms: parse_duration(gap)?,
            },
            ["calendar", unit, zone] => Self::Calendar {
                unit: match *unit {
                    "day" => CalendarUnit::Day,
                    "week" => CalendarUnit::Week,
                    "month" => CalendarUnit::Month,
                    u => {
                        return Err(format!(
                            "calendar unit {u:?} is not one of day, week, month"
                        ));
                    }
                },
                tz: Self::zone(zone).map_err(|e| e.to_string())?,
            },
            _ => {
                return Err(format!(
                    "{s:?}: expected \"tumbling SIZE\", \"hopping SIZE every SLIDE\", \"session GAP\" or \"calendar day|week|month ZONE\""
                ));
            }
        };
        spec.validate().map_err(|e| e.to_string())?;
        Ok(spec)
    }
}
