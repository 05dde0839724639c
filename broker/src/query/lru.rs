//! The one cache of the query layer: values by key within a byte budget, least recently used
//! first out, each value with an optional lifetime. The result cache (`flight_cache_*`) and the
//! `events` block cache (`flight_event_cache_bytes_max`) are two of these with their own budget
//! and metric names. Lookups and evictions take a lock for O(log n); the values are cheap to
//! clone (Arrow batches share their buffers).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The metric names of one cache: lookups that hit, lookups that missed, bytes held.
#[derive(Debug, Clone, Copy)]
pub struct CacheMetrics {
    /// Counter of hits.
    pub hits: &'static str,
    /// Counter of misses (an expired value counts as a miss).
    pub misses: &'static str,
    /// Gauge of the bytes held.
    pub bytes: &'static str,
}

struct Entry<V> {
    value: V,
    bytes: usize,
    used: u64,
    expires: Option<Instant>,
}

struct Inner<K, V> {
    entries: HashMap<K, Entry<V>>,
    /// Use tick → key: the first is the least recently used.
    by_use: BTreeMap<u64, K>,
    tick: u64,
    held: usize,
}

/// Values by key within `bytes_max` bytes, least recently used out first.
pub struct ByteLru<K, V> {
    bytes_max: usize,
    entry_bytes_max: usize,
    metrics: CacheMetrics,
    inner: Mutex<Inner<K, V>>,
}

impl<K: Hash + Eq + Clone, V: Clone> ByteLru<K, V> {
    /// A cache of at most `bytes_max` bytes that keeps no single value over `entry_bytes_max`
    /// (0 for either: it keeps nothing).
    pub fn new(bytes_max: usize, entry_bytes_max: usize, metrics: CacheMetrics) -> Self {
        Self {
            bytes_max,
            entry_bytes_max: entry_bytes_max.min(bytes_max),
            metrics,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                by_use: BTreeMap::new(),
                tick: 0,
                held: 0,
            }),
        }
    }

    /// The value of `key` if it is held and has not expired; it becomes the most recently used.
    pub fn get(&self, key: &K) -> Option<V> {
        let mut guard = self.inner.lock().expect("lock poisoned");
        let inner = &mut *guard;
        let hit = match inner.entries.get_mut(key) {
            Some(e) if e.expires.is_none_or(|t| Instant::now() < t) => {
                inner.tick += 1;
                let k = inner
                    .by_use
                    .remove(&e.used)
                    .expect("every entry has its use");
                e.used = inner.tick;
                inner.by_use.insert(e.used, k);
                Some(e.value.clone())
            }
            Some(_) => {
                inner.remove(key);
                metrics::gauge!(self.metrics.bytes).set(inner.held as f64);
                None
            }
            None => None,
        };
        let name = if hit.is_some() {
            self.metrics.hits
        } else {
            self.metrics.misses
        };
        metrics::counter!(name).increment(1);
        hit
    }

    /// Holds `value` (of `bytes`) under `key` for `ttl` (`None`: until evicted), evicting the
    /// least recently used values to make room. A value over the entry limit is not held.
    pub fn put(&self, key: K, value: V, bytes: usize, ttl: Option<Duration>) {
        if bytes > self.entry_bytes_max || ttl.is_some_and(|t| t.is_zero()) {
            return;
        }
        let mut guard = self.inner.lock().expect("lock poisoned");
        let inner = &mut *guard;
        inner.remove(&key);
        while inner.held + bytes > self.bytes_max {
            let Some((_, oldest)) = inner.by_use.pop_first() else {
                break;
            };
            if let Some(e) = inner.entries.remove(&oldest) {
                inner.held -= e.bytes;
            }
        }
        inner.tick += 1;
        let used = inner.tick;
        inner.by_use.insert(used, key.clone());
        inner.entries.insert(
            key,
            Entry {
                value,
                bytes,
                used,
                expires: ttl.map(|t| Instant::now() + t),
            },
        );
        inner.held += bytes;
        metrics::gauge!(self.metrics.bytes).set(inner.held as f64);
    }

    /// Values held now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner.lock().expect("lock poisoned").entries.len()
    }

    /// Bytes held now.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.inner.lock().expect("lock poisoned").held
    }
}

impl<K: Hash + Eq, V> Inner<K, V> {
    fn remove(&mut self, key: &K) {
        if let Some(e) = self.entries.remove(key) {
            self.by_use.remove(&e.used);
            self.held -= e.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: CacheMetrics = CacheMetrics {
        hits: "test_lru_hits_total",
        misses: "test_lru_misses_total",
        bytes: "test_lru_bytes",
    };

    #[test]
    fn the_least_recently_used_goes_first_and_the_budget_holds() {
        let lru = ByteLru::new(30, 30, NAMES);
        lru.put("a", 1, 10, None);
        lru.put("b", 2, 10, None);
        lru.put("c", 3, 10, None);
        // Using "a" makes "b" the least recently used.
        assert_eq!(lru.get(&"a"), Some(1));
        lru.put("d", 4, 10, None);
        assert_eq!(lru.get(&"b"), None);
        assert_eq!(
            (lru.get(&"a"), lru.get(&"c"), lru.get(&"d")),
            (Some(1), Some(3), Some(4))
        );
        assert_eq!(lru.held(), 30);
        // A bigger value evicts as many as it needs.
        lru.put("e", 5, 25, None);
        assert_eq!(lru.held(), 25);
        assert_eq!(lru.get(&"e"), Some(5));
        assert_eq!(lru.get(&"d"), None);
    }

    #[test]
    fn a_replaced_value_is_counted_once_and_an_oversized_one_is_not_held() {
        let lru = ByteLru::new(100, 40, NAMES);
        lru.put(1u64, "x", 30, None);
        lru.put(1u64, "y", 20, None);
        assert_eq!((lru.get(&1), lru.held()), (Some("y"), 20));
        lru.put(2u64, "big", 41, None);
        assert_eq!((lru.get(&2), lru.held()), (None, 20));
        let none = ByteLru::new(0, 0, NAMES);
        none.put(1u64, "x", 0, None);
        none.put(2u64, "y", 1, None);
        assert_eq!(none.get(&2), None);
    }

    #[test]
    fn an_expired_value_is_a_miss_and_gives_its_bytes_back() {
        let lru = ByteLru::new(100, 100, NAMES);
        lru.put("old", 1, 10, Some(Duration::from_nanos(1)));
        lru.put("zero", 2, 10, Some(Duration::ZERO));
        lru.put("kept", 3, 10, Some(Duration::from_secs(3600)));
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(lru.get(&"old"), None);
        assert_eq!(lru.get(&"zero"), None);
        assert_eq!(lru.get(&"kept"), Some(3));
        assert_eq!(lru.held(), 10);
    }
}
