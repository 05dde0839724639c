//! Measures the host folds natively, each mergeable (panes merge into windows).

use datasketches::hll::{HllSketch, HllType, HllUnion};
use datasketches::tdigest::TDigestMut;

/// `lg_k` of the distinct-count sketches: 2^12 buckets, relative standard error
/// 1.04 / sqrt(4096) ≈ 1.6% (about 3.3% at two standard deviations) once past the exact range.
pub const HLL_LG_K: u8 = 12;
/// `k` of the quantile sketches (t-digest): rank error well under 1% in the middle and much
/// smaller at the tails (p99).
pub const TDIGEST_K: u16 = 100;
/// Numbers a quantile accumulator buffers before folding them into its t-digest and
/// compressing it. The digest is thus always compressed between chunks, so its state, and the
/// answers, do not depend on when a snapshot was taken.
pub const QUANTILE_CHUNK: usize = 256;
/// The quantiles reported for a `quantiles` measure.
pub const QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];

/// The built-in kinds of measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeasureKind {
    /// Events.
    Count,
    /// Sum of a number.
    Sum,
    /// Least number.
    Min,
    /// Greatest number.
    Max,
    /// Mean of a number.
    Avg,
    /// Distinct values (HyperLogLog; see [`HLL_LG_K`]).
    Distinct,
    /// p50, p90, p99 of a number (t-digest; see [`TDIGEST_K`]).
    Quantiles,
}

impl MeasureKind {
    /// Every kind, with its name.
    pub const ALL: [(&'static str, MeasureKind); 7] = [
        ("count", MeasureKind::Count),
        ("sum", MeasureKind::Sum),
        ("min", MeasureKind::Min),
        ("max", MeasureKind::Max),
        ("avg", MeasureKind::Avg),
        ("distinct", MeasureKind::Distinct),
        ("quantiles", MeasureKind::Quantiles),
    ];

    /// Its name: `count`, `sum`, `min`, `max`, `avg`, `distinct` or `quantiles`.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map(|(n, _)| *n)
            .expect("every kind is in ALL")
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
    }
}

/// One input to a measure, from the aggregator's row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Input<'a> {
    /// No value (ignored by every measure but `count`).
    Null,
    /// A number.
    Num(f64),
    /// A string (for `distinct`; other measures ignore it).
    Str(&'a str),
}

/// A measure's result.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// No input yet (min, max, avg, quantiles of nothing).
    Null,
    /// A count.
    Count(u64),
    /// A number.
    Num(f64),
    /// Quantiles, as `(rank, value)` for each of [`QUANTILES`].
    Quantiles(Vec<(f64, f64)>),
}

/// The running state of one measure.
#[derive(Debug, Clone)]
pub enum Acc {
    /// See [`MeasureKind::Count`].
    Count(u64),
    /// See [`MeasureKind::Sum`].
    Sum(f64),
    /// See [`MeasureKind::Min`].
    Min(Option<f64>),
    /// See [`MeasureKind::Max`].
    Max(Option<f64>),
    /// See [`MeasureKind::Avg`].
    Avg {
        /// Sum so far.
        sum: f64,
        /// Numbers so far.
        n: u64,
    },
    /// See [`MeasureKind::Distinct`].
    Distinct(Box<HllSketch>),
    /// See [`MeasureKind::Quantiles`].
    Quantiles(Box<Quantiles>),
}

/// A t-digest with its own buffer of not yet folded numbers (see [`QUANTILE_CHUNK`]).
#[derive(Debug, Clone)]
pub struct Quantiles {
    /// Always compressed.
    pub digest: TDigestMut,
    /// Fewer than [`QUANTILE_CHUNK`] numbers.
    pub pending: Vec<f64>,
}

impl Quantiles {
    fn new() -> Self {
        Self {
            digest: TDigestMut::new(TDIGEST_K).expect("k in range"),
            pending: Vec::new(),
        }
    }

    fn add(&mut self, x: f64) {
        self.pending.push(x);
        if self.pending.len() >= QUANTILE_CHUNK {
            for v in self.pending.drain(..) {
                self.digest.update(v);
            }
            // `serialize` is the public way to compress the digest.
            let _ = self.digest.serialize();
        }
    }

    fn merge(&mut self, other: &Quantiles) {
        self.digest.merge(&other.digest);
        let _ = self.digest.serialize();
        for v in &other.pending {
            self.add(*v);
        }
    }

    fn answer(&self) -> TDigestMut {
        let mut t = self.digest.clone();
        for v in &self.pending {
            t.update(*v);
        }
        t
    }
}

impl Acc {
    /// An empty accumulator.
    pub fn new(kind: MeasureKind) -> Self {
        match kind {
            MeasureKind::Count => Self::Count(0),
            MeasureKind::Sum => Self::Sum(0.0),
            MeasureKind::Min => Self::Min(None),
            MeasureKind::Max => Self::Max(None),
            MeasureKind::Avg => Self::Avg { sum: 0.0, n: 0 },
            MeasureKind::Distinct => Self::Distinct(Box::new(
                HllSketch::new(HLL_LG_K, HllType::Hll8).expect("lg_k in range"),
            )),
            MeasureKind::Quantiles => Self::Quantiles(Box::new(Quantiles::new())),
        }
    }

    /// Folds one input in.
    pub fn add(&mut self, input: Input<'_>) {
        let num = match input {
            Input::Num(x) if x.is_finite() => Some(x),
            _ => None,
        };
        match self {
            Self::Count(n) => *n += 1,
            Self::Sum(s) => *s += num.unwrap_or(0.0),
            Self::Min(m) => {
                if let Some(x) = num {
                    *m = Some(m.map_or(x, |m| m.min(x)));
                }
            }
            Self::Max(m) => {
                if let Some(x) = num {
                    *m = Some(m.map_or(x, |m| m.max(x)));
                }
            }
            Self::Avg { sum, n } => {
                if let Some(x) = num {
                    *sum += x;
                    *n += 1;
                }
            }
            Self::Distinct(h) => match input {
                Input::Str(s) => h.update(s),
                // Numbers count by their value's bits (1 and 1.0 are the same).
                Input::Num(x) => h.update(x.to_bits()),
                Input::Null => {}
            },
            Self::Quantiles(q) => {
                if let Some(x) = num {
                    q.add(x);
                }
            }
        }
    }

    /// Folds another accumulator of the same kind in.
    pub fn merge(&mut self, other: &Acc) {
        match (self, other) {
            (Self::Count(a), Self::Count(b)) => *a += b,
            (Self::Sum(a), Self::Sum(b)) => *a += b,
            (Self::Min(a), Self::Min(b)) => {
                *a = match (*a, *b) {
                    (Some(x), Some(y)) => Some(x.min(y)),
                    (x, y) => x.or(y),
                }
            }
            (Self::Max(a), Self::Max(b)) => {
                *a = match (*a, *b) {
                    (Some(x), Some(y)) => Some(x.max(y)),
                    (x, y) => x.or(y),
                }
            }
            (Self::Avg { sum, n }, Self::Avg { sum: s2, n: n2 }) => {
                *sum += s2;
                *n += n2;
            }
            (Self::Distinct(a), Self::Distinct(b)) => {
                let mut u = HllUnion::new(HLL_LG_K).expect("lg_k in range");
                u.update(a);
                u.update(b);
                **a = u.to_sketch(HllType::Hll8);
            }
            (Self::Quantiles(a), Self::Quantiles(b)) => a.merge(b),
            (a, b) => panic!("merging {a:?} with {b:?}: kinds differ"),
        }
    }

    /// The result so far.
    pub fn value(&self) -> Value {
        match self {
            Self::Count(n) => Value::Count(*n),
            Self::Sum(s) => Value::Num(*s),
            Self::Min(m) | Self::Max(m) => m.map_or(Value::Null, Value::Num),
            Self::Avg { sum, n } => {
                if *n == 0 {
                    Value::Null
                } else {
                    Value::Num(sum / *n as f64)
                }
            }
            Self::Distinct(h) => Value::Num(h.estimate().round()),
            Self::Quantiles(q) => {
                let mut t = q.answer();
                if t.is_empty() {
                    return Value::Null;
                }
                Value::Quantiles(
                    QUANTILES
                        .iter()
                        .map(|q| (*q, t.quantile(*q).unwrap_or(f64::NAN)))
                        .collect(),
                )
            }
        }
    }

    /// Approximate bytes held (for `state_bytes_max`).
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + match self {
                Self::Distinct(h) => h.estimated_size(),
                Self::Quantiles(q) => q.digest.estimated_size() + q.pending.capacity() * 8,
                _ => 0,
            }
    }
}
