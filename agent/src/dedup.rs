//! Dedup by `event_id` within a time window: a sans-IO core (time is an argument).
//!
//! Each id is reduced to a 64-bit XXH3 hash. A hash set answers "seen before?" with one lookup;
//! a queue of buckets (the window split into [`BUCKETS`] slices) lists which hashes to forget
//! when a bucket ages out. Every hash in the set is in exactly one bucket list. Two different
//! ids collide with probability about n²/2⁶⁵ (for 10 million remembered ids, about 3 in a
//! million that any one false duplicate exists).
//!
//! Memory: 8 bytes per id in the set plus its control byte and load-factor slack, and 8 bytes in
//! a bucket list; `benches/benches/dedup_memory.rs` measures it (docs/BENCHMARKS.md). `ids_max`
//! caps it: past the cap, the oldest bucket is forgotten early and counted.
//!
//! Restart: [`Dedup::snapshot`] is written before any spool segment is deleted, and on clean
//! shutdown; after a restart the snapshot is loaded and every event still in the spool is added
//! again, so every id accepted within the window is remembered.
//!
//! Reservations: a request's new ids are inserted before its events are spooled, so that a
//! concurrent request with the same ids sees them. Until the spool answers, they are held
//! ([`Dedup::hold`]) and a snapshot leaves them out: a snapshot taken while a request is in flight
//! must not remember ids whose events may never become durable, or the client's retry after a
//! crash would be answered "duplicate" and its events lost. Those that do become durable are in
//! the spool, which the rebuild reads; [`Snapshot::spool_floor`] says below which sequence
//! number the spool may be deleted without losing them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// The window is split into this many buckets; ids are forgotten a bucket at a time.
pub const BUCKETS: i64 = 60;

/// A hasher for keys that already are uniform 64-bit hashes.
#[derive(Default)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type IdSet = HashSet<u64, BuildHasherDefault<IdentityHasher>>;

/// The hash under which an `event_id` is remembered.
pub fn id_hash(event_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(event_id.as_bytes())
}

/// Remembered event ids.
#[derive(Debug)]
pub struct Dedup {
    bucket_ms: i64,
    ids_max: usize,
    /// Every remembered hash.
    seen: IdSet,
    /// (bucket start, hashes inserted in it), oldest first.
    buckets: VecDeque<(i64, Vec<u64>)>,
    evicted_early: u64,
    /// Held reservations by ticket.
    held: HashMap<u64, Held>,
    next_ticket: u64,
}

/// One request's reservation ([`Dedup::hold`]).
#[derive(Debug)]
struct Held {
    spool_floor: u64,
    /// The request's ids, in its order.
    hashes: Vec<u64>,
    /// Which positions of `hashes` were given back ([`Dedup::unreserve`]; empty until one is):
    /// an undo of the whole hold must not remove them again, since another request may have
    /// reserved the id since.
    given_back: Vec<bool>,
}

/// Keeps "every remembered hash is in exactly one bucket list" after `hash` is forgotten: it was
/// inserted moments ago, so it is near the end of the newest list; the search starts there.
fn remove_from_buckets(buckets: &mut VecDeque<(i64, Vec<u64>)>, hash: u64) {
    for (_, hashes) in buckets.iter_mut().rev() {
        if let Some(i) = hashes.iter().rposition(|h| *h == hash) {
            hashes.swap_remove(i);
            return;
        }
    }
}

/// A serialized [`Dedup`] and what it does not cover.
#[derive(Debug)]
pub struct Snapshot {
    /// Magic, count, (hash, bucket start) pairs, CRC32C.
    pub bytes: Vec<u8>,
    /// Spool records at or after this sequence number may hold ids of requests that were in
    /// flight and left out; only segments wholly below it may be deleted.
    pub spool_floor: u64,
}

/// Magic and version of a snapshot.
const SNAPSHOT_MAGIC: &[u8; 8] = b"RNLDDUP1";

impl Dedup {
    /// An empty set remembering ids for `window_ms`, at most `ids_max` of them.
    pub fn new(window_ms: i64, ids_max: usize) -> Self {
        Self {
            bucket_ms: (window_ms / BUCKETS).max(1),
            ids_max,
            seen: IdSet::default(),
            buckets: VecDeque::new(),
            evicted_early: 0,
            held: HashMap::new(),
            next_ticket: 0,
        }
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Buckets forgotten before their time because of `ids_max`.
    pub fn evicted_early(&self) -> u64 {
        self.evicted_early
    }

    fn bucket_of(&self, now_ms: i64) -> i64 {
        now_ms - now_ms.rem_euclid(self.bucket_ms)
    }

    /// Forgets buckets older than the window.
    pub fn expire(&mut self, now_ms: i64) {
        let oldest_kept = self.bucket_of(now_ms) - (BUCKETS - 1) * self.bucket_ms;
        while self
            .buckets
            .front()
            .is_some_and(|(start, _)| *start < oldest_kept)
        {
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) {
        if let Some((_, hashes)) = self.buckets.pop_front() {
            for h in hashes {
                self.seen.remove(&h);
            }
        }
    }

    /// Remembers `hash` as seen at `now_ms`; false if it was already remembered.
    pub fn insert(&mut self, hash: u64, now_ms: i64) -> bool {
        let bucket = self.bucket_of(now_ms);
        if self.seen.contains(&hash) {
            return false;
        }
        while self.seen.len() >= self.ids_max && !self.buckets.is_empty() {
            self.drop_oldest();
            self.evicted_early += 1;
        }
        // An insert older than the newest bucket (only while rebuilding after a restart) joins
        // the newest bucket, so it is remembered a little longer, never shorter.
        self.seen.insert(hash);
        match self.buckets.back_mut() {
            Some((start, hashes)) if *start >= bucket => hashes.push(hash),
            _ => self.buckets.push_back((bucket, vec![hash])),
        }
        true
    }

    /// Forgets `hash` again (used when the events it belongs to could not be made durable).
    pub fn remove(&mut self, hash: u64) {
        if self.seen.remove(&hash) {
            remove_from_buckets(&mut self.buckets, hash);
        }
    }

    /// Holds `hashes` (just inserted for one request) out of snapshots until [`Dedup::release`]
    /// of the returned ticket. `spool_floor` is at most the sequence number the request's record
    /// will get (the spool's durable end when the ids were reserved).
    pub fn hold(&mut self, spool_floor: u64, hashes: Vec<u64>) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.held.insert(
            ticket,
            Held {
                spool_floor,
                hashes,
                given_back: Vec::new(),
            },
        );
        ticket
    }

    /// Forgets the ids at `positions` of a hold (their events were refused, so a retry must be
    /// accepted).
    pub fn unreserve(&mut self, ticket: u64, positions: impl IntoIterator<Item = usize>) {
        let Some(held) = self.held.get_mut(&ticket) else {
            return;
        };
        for pos in positions {
            let Some(&hash) = held.hashes.get(pos) else {
                continue;
            };
            if held.given_back.is_empty() {
                held.given_back = vec![false; held.hashes.len()];
            }
            if std::mem::replace(&mut held.given_back[pos], true) {
                continue;
            }
            if self.seen.remove(&hash) {
                remove_from_buckets(&mut self.buckets, hash);
            }
        }
    }

    /// Ends a hold. With `undo` its events were not stored, so its ids (those not given back
    /// already) are forgotten; without, they are durable and stay remembered.
    pub fn release(&mut self, ticket: u64, undo: bool) {
        let Some(held) = self.held.remove(&ticket) else {
            return;
        };
        if undo {
            for (pos, hash) in held.hashes.into_iter().enumerate() {
                if !held.given_back.get(pos).copied().unwrap_or(false) {
                    self.remove(hash);
                }
            }
        }
    }

    /// The lowest spool floor of the holds now ([`Dedup::hold`]); `u64::MAX` when none.
    pub fn spool_floor(&self) -> u64 {
        self.held
            .values()
            .map(|held| held.spool_floor)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Requests held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Serializes the remembered ids except those held: magic, count, then (hash, bucket start)
    /// pairs, then a CRC32C of everything before it.
    pub fn snapshot(&self) -> Snapshot {
        let held: HashSet<u64> = self
            .held
            .values()
            .flat_map(|held| held.hashes.iter().copied())
            .collect();
        let spool_floor = self.spool_floor();
        let mut out = Vec::with_capacity(20 + self.seen.len() * 16);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&0u64.to_le_bytes());
        let mut n = 0u64;
        for (start, hashes) in &self.buckets {
            for h in hashes {
                if held.contains(h) {
                    continue;
                }
                out.extend_from_slice(&h.to_le_bytes());
                out.extend_from_slice(&start.to_le_bytes());
                n += 1;
            }
        }
        out[8..16].copy_from_slice(&n.to_le_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Snapshot {
            bytes: out,
            spool_floor,
        }
    }

    /// Adds the ids of a snapshot; ids already outside the window at `now_ms` are skipped.
    pub fn restore(&mut self, bytes: &[u8], now_ms: i64) -> Result<usize, String> {
        if bytes.len() < 20 || &bytes[..8] != SNAPSHOT_MAGIC {
            return Err("not a dedup snapshot".into());
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err("dedup snapshot checksum mismatch".into());
        }
        let n = u64::from_le_bytes(body[8..16].try_into().expect("8 bytes")) as usize;
        let pairs = &body[16..];
        if pairs.len() != n * 16 {
            return Err(format!(
                "dedup snapshot holds {} bytes for {n} ids",
                pairs.len()
            ));
        }
        let mut entries: Vec<(i64, u64)> = pairs
            .chunks_exact(16)
            .map(|p| {
                let h = u64::from_le_bytes(p[..8].try_into().expect("8 bytes"));
                let start = i64::from_le_bytes(p[8..].try_into().expect("8 bytes"));
                (start, h)
            })
            .collect();
        entries.sort_unstable();
        let mut added = 0;
        for (start, h) in entries {
            if self.insert(h, start) {
                added += 1;
            }
        }
        self.expire(now_ms);
        Ok(added)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn repeats_inside_the_window_are_duplicates() {
        let mut d = Dedup::new(HOUR, 1000);
        assert!(d.insert(id_hash("a"), 0));
        assert!(!d.insert(id_hash("a"), HOUR / 2));
        assert!(d.insert(id_hash("b"), HOUR / 2));
    }

    #[test]
    fn ids_are_forgotten_after_the_window() {
        let mut d = Dedup::new(HOUR, 1000);
        d.insert(id_hash("a"), 0);
        d.expire(HOUR + HOUR / BUCKETS);
        assert!(d.insert(id_hash("a"), HOUR + HOUR / BUCKETS));
    }

    #[test]
    fn budget_evicts_oldest_bucket_early() {
        let mut d = Dedup::new(HOUR, 10);
        for i in 0..10 {
            d.insert(i, 0);
        }
        d.insert(100, HOUR / 2);
        assert_eq!(d.evicted_early(), 1);
        assert!(d.len() <= 10);
        assert!(
            d.insert(0, HOUR / 2),
            "the evicted bucket's ids are forgotten"
        );
    }

    #[test]
    fn removal_undoes_an_insert() {
        let mut d = Dedup::new(HOUR, 1000);
        d.insert(7, 0);
        d.remove(7);
        assert!(d.insert(7, HOUR / 2));
        // Removed from the old bucket too: ageing that bucket out keeps the new insert.
        d.expire(HOUR + HOUR / BUCKETS);
        assert!(!d.insert(7, HOUR + HOUR / BUCKETS));
        assert_eq!(d.snapshot().bytes.len(), 8 + 8 + 16 + 4);
    }

    #[test]
    fn snapshot_round_trip_and_corruption() {
        let mut d = Dedup::new(HOUR, 1000);
        for i in 0..100u64 {
            d.insert(i, i as i64 * 1000);
        }
        let snap = d.snapshot().bytes;
        let mut e = Dedup::new(HOUR, 1000);
        assert_eq!(e.restore(&snap, 100_000).unwrap(), 100);
        for i in 0..100u64 {
            assert!(!e.insert(i, 100_000));
        }
        let mut bad = snap.clone();
        bad[30] ^= 1;
        assert!(Dedup::new(HOUR, 1000).restore(&bad, 0).is_err());
        // Restored long after: everything has aged out.
        let mut late = Dedup::new(HOUR, 1000);
        late.restore(&snap, 10 * HOUR).unwrap();
        assert!(late.is_empty());
    }

    /// Ids held for a request in flight stay duplicates for concurrent requests but are left
    /// out of a snapshot until released; the snapshot says from where the spool must be kept.
    #[test]
    fn held_ids_are_left_out_of_snapshots_until_released() {
        let mut d = Dedup::new(HOUR, 1000);
        d.insert(1, 0);
        d.insert(2, 0);
        d.insert(3, 0);
        let early = d.hold(40, vec![2]);
        let late = d.hold(45, vec![3]);
        assert!(!d.insert(2, 0), "a concurrent request sees held ids");
        let restored = |snap: &Snapshot| {
            let mut e = Dedup::new(HOUR, 1000);
            e.restore(&snap.bytes, 0).unwrap();
            [1, 2, 3].map(|h| !e.insert(h, 0))
        };
        let snap = d.snapshot();
        assert_eq!(restored(&snap), [true, false, false]);
        assert_eq!(snap.spool_floor, 40);
        d.release(early, false);
        let snap = d.snapshot();
        assert_eq!(restored(&snap), [true, true, false]);
        assert_eq!(snap.spool_floor, 45);
        d.release(late, false);
        let snap = d.snapshot();
        assert_eq!(restored(&snap), [true, true, true]);
        assert_eq!(snap.spool_floor, u64::MAX);
        assert_eq!(d.held(), 0);
    }

    /// An undone hold forgets its ids, except one given back earlier and reserved since by
    /// another request (its event must stay a duplicate).
    #[test]
    fn an_undone_hold_forgets_its_ids_but_not_those_reserved_again() {
        let mut d = Dedup::new(HOUR, 1000);
        for h in [1, 2, 3] {
            assert!(d.insert(h, 0));
        }
        let first = d.hold(0, vec![1, 2, 3]);
        d.unreserve(first, [1]);
        d.unreserve(first, [1]);
        assert!(d.insert(2, 0), "an id given back may be reserved again");
        let second = d.hold(0, vec![2]);
        d.release(first, true);
        assert!(
            d.insert(1, 0) && d.insert(3, 0),
            "the undone hold's ids are forgotten"
        );
        assert!(!d.insert(2, 0), "the other request's reservation stands");
        d.release(second, false);
        assert_eq!(d.held(), 0);
        assert!(!d.insert(2, 0));
    }
}
