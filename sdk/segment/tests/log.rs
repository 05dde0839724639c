//! Log tests: a model test against a plain `Vec`, recovery from torn tails and corruption,
//! and faults injected through the storage seam.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use runnel_segment::fault::{Faults, FaultyStorage};
use runnel_segment::{FsStorage, LogOptions, RecoveryReport, SegmentLog, Storage};

fn small() -> LogOptions {
    LogOptions {
        segment_bytes_max: 512,
        record_bytes_max: 4096,
        index_interval_bytes: 64,
        trust_sealed_indexes: false,
    }
}

/// `small()`, with sealed segments opened from their index files.
fn indexed() -> LogOptions {
    LogOptions {
        trust_sealed_indexes: true,
        ..small()
    }
}

fn index_files(dir: &Path) -> Vec<std::path::PathBuf> {
    files_ending(dir, "idx")
}

fn open(dir: &Path, opts: LogOptions) -> (SegmentLog, RecoveryReport) {
    SegmentLog::open(Arc::new(FsStorage), dir, opts, 0).expect("open")
}

fn faulty(dir: &Path) -> (SegmentLog, Arc<Faults>) {
    let faults = Faults::new();
    let storage: Arc<dyn Storage> = Arc::new(FaultyStorage::new(FsStorage, faults.clone()));
    let (log, _) = SegmentLog::open(storage, dir, LogOptions::default(), 0).unwrap();
    (log, faults)
}

fn payloads(log: &SegmentLog, from: u64) -> Vec<(u64, Vec<u8>)> {
    log.reader()
        .read(from, usize::MAX, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| (r.header.base_offset, r.payload))
        .collect()
}

/// What `LogReader::scan` hands over from `from`, copied out.
fn scanned(log: &SegmentLog, from: u64) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    log.reader()
        .scan(from, |h, p| {
            out.push((h.base_offset, p.to_vec()));
            ControlFlow::Continue(())
        })
        .unwrap();
    out
}

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    files_ending(dir, "seg")
}

/// The files in `dir` with extension `ext`, sorted.
fn files_ending(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

#[test]
fn appends_survive_reopen_across_many_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small());
    let mut want = Vec::new();
    for i in 0..100u64 {
        let p = format!("record-{i}").into_bytes();
        let off = log.append(&p, 2, i as i64).unwrap();
        want.push((off, p));
    }
    log.sync().unwrap();
    assert_eq!(payloads(&log, 0), want);
    drop(log);
    let (log, report) = open(dir.path(), small());
    assert_eq!(report.records, 100);
    assert!(
        report.segments > 5,
        "small segments roll: {}",
        report.segments
    );
    assert_eq!(report.next_offset, 200);
    assert_eq!(payloads(&log, 0), want);
    // Reading from the middle of a record returns that record first.
    assert_eq!(payloads(&log, 51)[0].0, 50);
    // The time index finds the first record at or after a timestamp.
    assert_eq!(log.reader().offset_for_time(42).unwrap(), 84);
    assert_eq!(log.reader().offset_for_time(1000).unwrap(), 200);
}

#[test]
fn unsynced_records_are_invisible() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), LogOptions::default());
    log.append(b"a", 1, 0).unwrap();
    assert!(payloads(&log, 0).is_empty());
    log.sync().unwrap();
    assert_eq!(payloads(&log, 0).len(), 1);
}

#[test]
fn torn_tail_is_truncated_and_kept_in_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), LogOptions::default());
    for i in 0..10u8 {
        log.append(&[i; 100], 1, 0).unwrap();
    }
    log.sync().unwrap();
    drop(log);
    // A crash in the middle of a write: half a record at the end.
    let seg = dir.path().join(format!("{:020}.seg", 0));
    let mut bytes = std::fs::read(&seg).unwrap();
    let good_len = bytes.len();
    bytes.extend_from_slice(&[0xAB; 50]);
    std::fs::write(&seg, &bytes).unwrap();
    let (mut log, report) = open(dir.path(), LogOptions::default());
    assert_eq!(report.records, 10);
    assert_eq!(report.truncated_bytes, 50);
    assert_eq!(std::fs::metadata(&seg).unwrap().len() as usize, good_len);
    assert_eq!(dir.path().join("quarantine").read_dir().unwrap().count(), 1);
    // Appends continue at the right offset.
    assert_eq!(log.append(b"next", 1, 0).unwrap(), 10);
    log.sync().unwrap();
    assert_eq!(payloads(&log, 0).len(), 11);
}

#[test]
fn corrupt_sealed_segment_is_quarantined_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small());
    for i in 0..40u8 {
        log.append(&[i; 40], 1, 0).unwrap();
    }
    log.sync().unwrap();
    drop(log);
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 3);
    // Flip a payload byte in the second segment.
    let mut bytes = std::fs::read(&segs[1]).unwrap();
    bytes[16 + 28 + 3] ^= 0xFF;
    std::fs::write(&segs[1], &bytes).unwrap();
    let (log, report) = open(dir.path(), small());
    assert_eq!(report.quarantined_segments.len(), 1);
    assert!(
        report.quarantined_segments[0].1.contains("crc32c"),
        "{report:?}"
    );
    // Every record outside the quarantined segment is still readable.
    let lost = 40 - payloads(&log, 0).len();
    assert!(lost > 0 && lost < 40);
    assert!(
        dir.path()
            .join("quarantine")
            .join(segs[1].file_name().unwrap())
            .exists()
    );
}

#[test]
fn garbage_segment_header_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(format!("{:020}.seg", 0)),
        b"not a segment at all",
    )
    .unwrap();
    let (mut log, report) = open(dir.path(), LogOptions::default());
    assert_eq!(report.quarantined_segments.len(), 1);
    assert_eq!(log.append(b"x", 1, 0).unwrap(), 0);
    log.sync().unwrap();
}

#[test]
fn offsets_never_go_back_after_deleting_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small());
    for _ in 0..30 {
        log.append(&[1; 40], 1, 0).unwrap();
    }
    log.sync().unwrap();
    let (deleted, bytes) = log.delete_before(30).unwrap();
    assert!(deleted > 0 && bytes > 0);
    drop(log);
    let (mut log, report) = SegmentLog::open(Arc::new(FsStorage), dir.path(), small(), 30).unwrap();
    assert_eq!(report.next_offset, 30);
    assert_eq!(log.append(b"x", 1, 0).unwrap(), 30);
}

#[test]
fn retention_by_age_keeps_segments_with_a_newer_record() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small());
    // Record n appended at time n.
    for n in 0..30i64 {
        log.append(&[1; 40], 1, n).unwrap();
    }
    log.sync().unwrap();
    let reader = log.reader();
    let before = reader.stats();
    assert!(before.segments > 3, "{before:?}");
    // Nothing is older than 0; nothing is deleted above offset 0.
    assert_eq!(log.delete_before_appended(30, 0).unwrap().0, 0);
    assert_eq!(log.delete_before_appended(0, i64::MAX).unwrap().0, 0);
    // Below offset 30, appended before 12: only whole segments of records 0..12.
    let (deleted, _) = log.delete_before_appended(30, 12).unwrap();
    assert!(deleted > 0);
    let after = reader.stats();
    assert!(after.start_offset <= 12, "{after:?}");
    assert_eq!(after.end_offset, 30);
    assert_eq!(after.segments, before.segments - deleted);
    // Past the segments' first offsets, the records are all still there.
    let first = reader.read(after.start_offset, 100, 1 << 20).unwrap();
    assert_eq!(first.len() as u64, 30 - after.start_offset);
}

#[test]
fn failed_fsync_poisons_the_log_and_nothing_becomes_visible() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, faults) = faulty(dir.path());
    log.append(b"durable", 1, 0).unwrap();
    log.sync().unwrap();
    log.append(b"lost", 1, 0).unwrap();
    faults.set_fail_sync(true);
    assert!(log.sync().unwrap_err().is_poisoned());
    faults.set_fail_sync(false);
    // Once poisoned, it stays poisoned: a later fsync cannot vouch for the lost pages.
    assert!(log.append(b"more", 1, 0).unwrap_err().is_poisoned());
    assert!(log.sync().unwrap_err().is_poisoned());
    assert_eq!(payloads(&log, 0), vec![(0, b"durable".to_vec())]);
}

#[test]
fn enospc_is_reported_and_undone_then_writes_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, faults) = faulty(dir.path());
    log.append(b"first", 1, 0).unwrap();
    faults.set_space_left(10);
    let err = log.append(&[7; 100], 1, 0).unwrap_err();
    assert!(err.is_no_space(), "{err}");
    faults.set_space_left(u64::MAX);
    assert_eq!(log.append(b"second", 1, 0).unwrap(), 1);
    log.sync().unwrap();
    drop(log);
    let (log, report) = open(dir.path(), LogOptions::default());
    assert_eq!(
        report.truncated_bytes, 0,
        "the partial write was cut off at once"
    );
    assert_eq!(
        payloads(&log, 0),
        vec![(0, b"first".to_vec()), (1, b"second".to_vec())]
    );
}

#[test]
fn torn_write_then_crash_recovers_every_synced_record() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, faults) = faulty(dir.path());
    for i in 0..5u8 {
        log.append(&[i; 64], 1, 0).unwrap();
    }
    log.sync().unwrap();
    faults.tear_next_write();
    assert!(log.append(&[9; 64], 1, 0).is_err());
    assert!(faults.injected() >= 1);
    // Crash without any cleanup: forget the writer.
    std::mem::forget(log);
    let (log, _) = open(dir.path(), LogOptions::default());
    assert_eq!(payloads(&log, 0).len(), 5);
}

type Op = (u8, u32, Vec<u8>);

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        (
            0u8..4,
            1u32..4,
            proptest::collection::vec(any::<u8>(), 0..120),
        ),
        1..80,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    /// The log behaves like a `Vec` of records across appends, syncs and reopens.
    #[test]
    fn model(ops in ops()) {
        run_model(ops, small())?;
    }

    /// The same with sealed segments reopened from their index files.
    #[test]
    fn model_with_indexes(ops in ops()) {
        run_model(ops, indexed())?;
    }
}

fn run_model(ops: Vec<Op>, opts: LogOptions) -> Result<(), TestCaseError> {
    {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = open(dir.path(), opts);
        let mut model: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut unsynced: Vec<(u64, Vec<u8>)> = Vec::new();
        for (op, count, payload) in ops {
            match op {
                0 | 1 => {
                    let off = log.append(&payload, count, 0).unwrap();
                    unsynced.push((off, payload));
                }
                2 => {
                    log.sync().unwrap();
                    model.append(&mut unsynced);
                }
                _ => {
                    log.sync().unwrap();
                    model.append(&mut unsynced);
                    drop(log);
                    log = open(dir.path(), opts).0;
                }
            }
            // Readers see a prefix of what was appended that covers at least every synced
            // record (a segment roll makes earlier appends durable, and so visible, early).
            let seen = payloads(&log, 0);
            let all: Vec<_> = model.iter().chain(unsynced.iter()).cloned().collect();
            prop_assert!(seen.len() >= model.len());
            prop_assert_eq!(&seen[..], &all[..seen.len()]);
            let visited = scanned(&log, 0);
            prop_assert_eq!(visited.len(), seen.len());
            prop_assert_eq!(&visited[..], &all[..visited.len()]);
        }
    }
    Ok(())
}

/// What a reader sees of a log: every record and a few time lookups.
fn view(log: &SegmentLog) -> (Vec<(u64, Vec<u8>)>, Vec<u64>) {
    let r = log.reader();
    let times = [0, 7, 42, 99, 1000]
        .iter()
        .map(|&t| r.offset_for_time(t).unwrap())
        .collect();
    (payloads(log, 0), times)
}

fn hundred_records(dir: &Path) {
    let (mut log, _) = open(dir, indexed());
    for i in 0..100u64 {
        log.append(format!("record-{i}").as_bytes(), 2, i as i64)
            .unwrap();
    }
    log.sync().unwrap();
}

#[test]
fn sealed_segments_open_from_their_indexes_and_read_the_same() {
    let dir = tempfile::tempdir().unwrap();
    hundred_records(dir.path());
    let sealed = segment_files(dir.path()).len() - 1;
    assert_eq!(
        index_files(dir.path()).len(),
        sealed,
        "one per sealed segment"
    );
    let (scanned, scan_report) = open(dir.path(), small());
    let want = view(&scanned);
    drop(scanned);
    let (mut log, report) = open(dir.path(), indexed());
    assert_eq!(report.indexed_segments, sealed);
    assert_eq!(scan_report.indexed_segments, 0);
    assert_eq!(
        (report.records, report.segments, report.next_offset),
        (100, scan_report.segments, 200)
    );
    assert_eq!(view(&log), want);
    assert_eq!(log.reader().stats(), {
        let (l, _) = open(dir.path(), small());
        l.reader().stats()
    });
    // Appends go on where the log ended, across more rolls and reopens.
    assert_eq!(log.append(b"next", 1, 500).unwrap(), 200);
    for _ in 0..20 {
        log.append(&[5; 60], 1, 600).unwrap();
    }
    log.sync().unwrap();
    let after = view(&log);
    drop(log);
    let (log, report) = open(dir.path(), indexed());
    assert_eq!(view(&log), after);
    assert_eq!(report.indexed_segments, segment_files(dir.path()).len() - 1);
}

#[test]
fn an_index_that_does_not_match_its_segment_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    hundred_records(dir.path());
    let want = view(&open(dir.path(), small()).0);
    let ixs = index_files(dir.path());
    assert!(ixs.len() >= 4);
    // One flipped byte, one cut short, one gone, and one whose segment grew after it.
    let mut bytes = std::fs::read(&ixs[0]).unwrap();
    bytes[30] ^= 1;
    std::fs::write(&ixs[0], bytes).unwrap();
    let bytes = std::fs::read(&ixs[1]).unwrap();
    std::fs::write(&ixs[1], &bytes[..bytes.len() - 7]).unwrap();
    std::fs::remove_file(&ixs[2]).unwrap();
    let seg3 = ixs[3].with_extension("seg");
    std::io::Write::write_all(
        &mut std::fs::OpenOptions::new()
            .append(true)
            .open(&seg3)
            .unwrap(),
        &[0],
    )
    .unwrap();
    let (log, report) = open(dir.path(), indexed());
    assert_eq!(report.indexed_segments, ixs.len() - 4);
    // The segment that grew is scanned: its extra byte is a bad record in a sealed segment.
    assert_eq!(report.quarantined_segments.len(), 1, "{report:?}");
    assert_eq!(
        report.quarantined_segments[0].0.file_name(),
        seg3.file_name()
    );
    let (records, _) = view(&log);
    let lost: Vec<_> = want.0.iter().filter(|r| !records.contains(r)).collect();
    assert!(
        lost.iter().all(|(off, _)| {
            let base: u64 = seg3.file_stem().unwrap().to_str().unwrap().parse().unwrap();
            *off >= base
        }),
        "only the quarantined segment's records are gone"
    );
    drop(log);
    // The scans wrote the indexes again, and the quarantined segment's went with it.
    let (_, report) = open(dir.path(), indexed());
    assert_eq!(report.indexed_segments, segment_files(dir.path()).len() - 1);
    assert_eq!(
        index_files(dir.path()).len(),
        segment_files(dir.path()).len() - 1
    );
}

/// `scan` and `read` visit the records appended, from any offset (one inside a record too),
/// across segments; `scan` stops when the visitor breaks; `read`'s limits hold on top of it.
#[test]
fn scan_visits_what_read_returns_and_stops_when_told() {
    let dir = tempfile::tempdir().unwrap();
    hundred_records(dir.path());
    let (log, _) = open(dir.path(), indexed());
    assert!(segment_files(dir.path()).len() > 3);
    // Record i holds offsets 2i and 2i + 1.
    let appended = |from: u64| -> Vec<(u64, Vec<u8>)> {
        (from / 2..100)
            .map(|i| (2 * i, format!("record-{i}").into_bytes()))
            .collect()
    };
    for from in [0, 1, 2, 77, 150, 199, 200, 500] {
        assert_eq!(scanned(&log, from), appended(from), "scan from {from}");
        assert_eq!(payloads(&log, from), appended(from), "read from {from}");
    }
    assert_eq!(
        scanned(&log, 77)[0].0,
        76,
        "the record that holds offset 77"
    );
    assert!(scanned(&log, 200).is_empty());
    let mut seen = 0;
    log.reader()
        .scan(0, |_, _| {
            seen += 1;
            if seen == 5 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(seen, 5);
    let r = log.reader();
    assert_eq!(r.read(0, 0, usize::MAX).unwrap().len(), 0);
    assert_eq!(r.read(0, 7, usize::MAX).unwrap().len(), 7);
    // `record-0`..`record-9` are 8 bytes, then 9: three fit in 25 bytes; the first always comes.
    assert_eq!(r.read(0, usize::MAX, 25).unwrap().len(), 3);
    assert_eq!(r.read(0, usize::MAX, 1).unwrap().len(), 1);
}

#[test]
fn a_bad_record_behind_an_index_fails_its_read_then_the_next_open_quarantines_it() {
    let dir = tempfile::tempdir().unwrap();
    hundred_records(dir.path());
    let segs = segment_files(dir.path());
    let mut bytes = std::fs::read(&segs[1]).unwrap();
    bytes[16 + 28 + 3] ^= 0xFF;
    std::fs::write(&segs[1], &bytes).unwrap();
    let (log, report) = open(dir.path(), indexed());
    assert!(
        report.quarantined_segments.is_empty(),
        "not scanned at open"
    );
    let err = log.reader().read(0, usize::MAX, usize::MAX).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("crc32c") && msg.contains("a restart checks it"),
        "{msg}"
    );
    assert!(!segs[1].with_extension("idx").exists(), "its index is gone");
    drop(log);
    let (log, report) = open(dir.path(), indexed());
    assert_eq!(report.quarantined_segments.len(), 1, "{report:?}");
    assert!(report.quarantined_segments[0].1.contains("crc32c"));
    let lost = 100 - payloads(&log, 0).len();
    assert!(lost > 0 && lost < 100);
}

#[test]
fn deleted_segments_take_their_indexes_with_them() {
    let dir = tempfile::tempdir().unwrap();
    hundred_records(dir.path());
    let (mut log, _) = open(dir.path(), indexed());
    let (deleted, _) = log.delete_before(100).unwrap();
    assert!(deleted > 0);
    assert_eq!(
        index_files(dir.path()).len(),
        segment_files(dir.path()).len() - 1
    );
    drop(log);
    // An index whose segment is gone (removed by hand, say) is removed at open.
    let orphan = dir.path().join(format!("{:020}.idx", 0));
    std::fs::write(&orphan, b"left over").unwrap();
    let (_, report) = open(dir.path(), indexed());
    assert!(!orphan.exists());
    assert_eq!(report.indexed_segments, segment_files(dir.path()).len() - 1);
}

#[test]
fn a_roll_that_hits_a_full_disk_fails_that_append_only() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults::new();
    let storage: Arc<dyn Storage> = Arc::new(FaultyStorage::new(FsStorage, faults.clone()));
    let (mut log, _) = SegmentLog::open(storage, dir.path(), small(), 0).unwrap();
    // Fill the first segment so that the next append must roll.
    let mut n = 0u64;
    while log.reader().stats().segments == 1 && n < 9 {
        log.append(&[1; 100], 1, 0).unwrap();
        n += 1;
    }
    log.sync().unwrap();
    let before = payloads(&log, 0).len();
    faults.set_space_left(0);
    let err = log.append(&[2; 100], 1, 0).unwrap_err();
    assert!(err.is_no_space(), "{err}");
    faults.set_space_left(u64::MAX);
    // Not poisoned: the next append rolls and lands.
    let off = log.append(&[3; 100], 1, 0).unwrap();
    log.sync().unwrap();
    let got = payloads(&log, 0);
    assert_eq!(got.len(), before + 1);
    assert_eq!(got.last().unwrap().0, off);
    drop(log);
    let (log, report) = open(dir.path(), small());
    assert_eq!(report.truncated_bytes, 0);
    assert!(report.quarantined_segments.is_empty(), "{report:?}");
    assert_eq!(payloads(&log, 0).len(), before + 1);
}

#[test]
fn lowering_record_bytes_max_never_drops_stored_records() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), LogOptions::default());
    log.append(&[1; 3000], 1, 0).unwrap();
    log.append(&[2; 10], 1, 0).unwrap();
    log.sync().unwrap();
    drop(log);
    let tight = LogOptions {
        record_bytes_max: 100,
        ..LogOptions::default()
    };
    let (mut log, report) = open(dir.path(), tight);
    assert_eq!((report.records, report.truncated_bytes), (2, 0));
    assert_eq!(payloads(&log, 0).len(), 2);
    // The limit still applies to new appends.
    assert!(log.append(&[3; 3000], 1, 0).is_err());
}

/// `payload` with every `needle` replaced by as many `#`s, `None` if it holds none.
fn scrub(payload: &[u8], needle: &[u8]) -> Option<Vec<u8>> {
    let mut out = payload.to_vec();
    let mut hit = false;
    for i in 0..out.len().saturating_sub(needle.len() - 1) {
        if out[i..].starts_with(needle) {
            out[i..i + needle.len()].fill(b'#');
            hit = true;
        }
    }
    hit.then_some(out)
}

/// The bytes of every file under `dir`, concatenated.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            out.extend(std::fs::read(&p).unwrap());
        }
    }
    out
}

fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_rewrite_changes_only_the_edited_records_and_keeps_every_offset() {
    let dir = tempfile::tempdir().unwrap();
    hundred_records(dir.path());
    let (mut log, _) = open(dir.path(), indexed());
    log.seal().unwrap();
    let before = view(&log);
    let reader = log.reader();
    let sealed = reader.sealed_segments();
    assert!(sealed.len() >= 4, "{sealed:?}");
    // record-7 and record-70..79 hold "record-7".
    let mut rewritten = 0;
    for s in &sealed {
        let r = reader
            .rewrite_sealed(s.base, |_, p| scrub(p, b"record-7"))
            .unwrap()
            .expect("sealed segment");
        assert_eq!(r.records, s.records);
        if r.changed == 0 {
            assert_eq!(r.bytes_after, r.bytes_before, "nothing written");
        }
        rewritten += r.changed;
    }
    assert_eq!(rewritten, 11);
    assert!(!holds(&all_bytes(dir.path()), b"record-7"));
    assert!(files_ending(dir.path(), "rewrite").is_empty());
    let want: Vec<(u64, Vec<u8>)> = before
        .0
        .iter()
        .map(|(o, p)| (*o, scrub(p, b"record-7").unwrap_or_else(|| p.clone())))
        .collect();
    assert_eq!(view(&log).0, want);
    assert_eq!(view(&log).1, before.1, "offsets as before");
    assert_eq!(reader.sealed_segments().len(), sealed.len());
    // Reads from the middle find the same records: the index describes the new files.
    assert_eq!(payloads(&log, 141), want[70..].to_vec());
    assert_eq!(
        reader.offset_for_time(71).unwrap(),
        142,
        "the time index still holds"
    );
    drop(log);
    for opts in [small(), indexed()] {
        let (log, report) = open(dir.path(), opts);
        assert!(report.quarantined_segments.is_empty());
        assert_eq!(view(&log).0, want);
    }
    let (log, report) = open(dir.path(), indexed());
    assert_eq!(report.indexed_segments, sealed.len(), "every index trusted");
    assert!(
        log.reader()
            .rewrite_sealed(1, |_, _| None)
            .unwrap()
            .is_none()
    );
}

#[test]
fn the_active_segment_is_rewritten_only_once_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), LogOptions::default());
    log.append(b"alpha", 1, 1).unwrap();
    log.sync().unwrap();
    assert!(log.reader().sealed_segments().is_empty());
    assert!(
        log.reader()
            .rewrite_sealed(0, |_, _| None)
            .unwrap()
            .is_none()
    );
    assert!(log.seal().unwrap());
    assert!(
        !log.seal().unwrap(),
        "an empty active segment is not sealed"
    );
    let r = log
        .reader()
        .rewrite_sealed(0, |_, p| scrub(p, b"alpha"))
        .unwrap()
        .unwrap();
    assert_eq!((r.records, r.changed), (1, 1));
    assert_eq!(log.append(b"beta", 1, 2).unwrap(), 1);
    log.sync().unwrap();
    assert_eq!(
        payloads(&log, 0),
        vec![(0, b"#####".to_vec()), (1, b"beta".to_vec())]
    );
}

#[test]
fn a_failed_rewrite_leaves_the_segment_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, faults) = faulty(dir.path());
    for i in 0..10u64 {
        log.append(format!("event-{i}").as_bytes(), 1, i as i64)
            .unwrap();
    }
    log.sync().unwrap();
    log.seal().unwrap();
    let before = view(&log);
    let reader = log.reader();
    faults.set_fail_sync(true);
    let err = reader
        .rewrite_sealed(0, |_, p| scrub(p, b"event-3"))
        .unwrap_err();
    assert!(err.to_string().contains("fsync rewrite"), "{err}");
    faults.set_fail_sync(false);
    faults.tear_next_write();
    let err = reader
        .rewrite_sealed(0, |_, p| scrub(p, b"event-3"))
        .unwrap_err();
    assert!(err.to_string().contains(".seg.rewrite"), "{err}");
    assert_eq!(faults.injected(), 2);
    assert_eq!(view(&log), before);
    assert!(files_ending(dir.path(), "rewrite").is_empty());
    // The same rewrite goes through once the disk behaves.
    let r = reader
        .rewrite_sealed(0, |_, p| scrub(p, b"event-3"))
        .unwrap()
        .unwrap();
    assert_eq!(r.changed, 1);
    assert!(!holds(&all_bytes(dir.path()), b"event-3"));
}

#[test]
fn an_unfinished_rewrite_is_removed_at_open_and_the_segment_kept() {
    let dir = tempfile::tempdir().unwrap();
    hundred_records(dir.path());
    let want = view(&open(dir.path(), small()).0);
    let first = &segment_files(dir.path())[0];
    // A crash after the copy was written, before its rename.
    let tmp = first.with_extension("seg.rewrite");
    std::fs::write(&tmp, b"RUNNELSG half a copy").unwrap();
    let (log, report) = open(dir.path(), indexed());
    assert!(report.quarantined_segments.is_empty());
    assert!(!tmp.exists());
    assert_eq!(view(&log), want);
}

#[test]
fn a_segment_retention_removed_is_not_brought_back_by_a_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    hundred_records(dir.path());
    let (mut log, _) = open(dir.path(), indexed());
    let first = log.reader().sealed_segments()[0];
    log.delete_before(first.end_offset).unwrap();
    let r = log
        .reader()
        .rewrite_sealed(first.base, |_, p| scrub(p, b"record"))
        .unwrap();
    assert!(r.is_none());
    assert!(
        !segment_files(dir.path())
            .iter()
            .any(|p| p.ends_with(format!("{:020}.seg", first.base)))
    );
    assert!(files_ending(dir.path(), "rewrite").is_empty());
}
