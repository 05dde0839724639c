//! The segmented log: recovery, appends with group commit, and concurrent readers.
//! The format and its rules are described in the crate documentation.

use std::io;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::index::SegmentIndex;
use crate::record::{
    Decoded, RECORD_HEADER_BYTES, RecordFault, RecordHeader, SEGMENT_HEADER_BYTES,
    check_segment_header, decode_record, encode_record, segment_header,
};
use crate::storage::{ReadableFile, Storage, WritableFile};

/// Limits and tuning of a [`SegmentLog`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// A segment is sealed and a new one started before it would grow past this many bytes.
    pub segment_bytes_max: u64,
    /// Largest payload of a single new record; larger appends are refused. Records already on
    /// disk are read whatever this is set to now (a scan never reads past the end of the file,
    /// so a garbage length cannot make it allocate more than the file holds).
    pub record_bytes_max: u32,
    /// One sparse index entry per this many bytes of a segment.
    pub index_interval_bytes: u64,
    /// At open, take a sealed segment's figures from its index file (`NAME.idx`, written when it
    /// was sealed) instead of scanning it, so a restart reads only the active segment. Its
    /// records' CRCs are then checked when they are read, not at open; a reader that meets a bad
    /// record in a sealed segment removes that segment's index, so the next open scans it and
    /// quarantines it. Off: every segment is scanned at open, as without index files.
    pub trust_sealed_indexes: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            segment_bytes_max: 64 << 20,
            record_bytes_max: 32 << 20,
            index_interval_bytes: 64 << 10,
            trust_sealed_indexes: false,
        }
    }
}

/// Errors of the log. Each says what failed and whether retrying can help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The disk is full. Retry once space is freed; nothing of the failed append remains.
    #[error("disk full while appending to {path}: {source}")]
    NoSpace { path: PathBuf, source: io::Error },
    /// An I/O operation failed.
    #[error("{op} failed on {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A failed fsync (or an undo that failed) stopped the log. Restart the process.
    #[error(
        "the log in {dir} stopped accepting writes: {reason}; restart the process to recover from what is durable"
    )]
    Poisoned { dir: PathBuf, reason: String },
    /// The record is larger than `record_bytes_max`.
    #[error("record of {len} bytes exceeds record_bytes_max ({max} bytes)")]
    RecordTooLarge { len: usize, max: u32 },
    /// A durable record failed its check when read back. In a sealed segment its index file
    /// is removed, so that the next open scans the segment and quarantines it (`sealed`).
    #[error("corrupt record in {path} at byte {pos}: {fault}{}", if *.sealed { "; the segment is sealed: a restart checks it and moves it to quarantine/" } else { "" })]
    Corrupt {
        path: PathBuf,
        pos: u64,
        fault: RecordFault,
        sealed: bool,
    },
}

impl LogError {
    /// True when the disk was full: the caller may retry later.
    pub fn is_no_space(&self) -> bool {
        matches!(self, Self::NoSpace { .. })
    }
    /// True when the log no longer accepts writes.
    pub fn is_poisoned(&self) -> bool {
        matches!(self, Self::Poisoned { .. })
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LogError + use<> {
    let path = path.to_path_buf();
    move |source| LogError::Io { op, path, source }
}

/// What recovery found and did when the log was opened.
#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    /// Segments in use after recovery.
    pub segments: usize,
    /// Valid records found.
    pub records: u64,
    /// Bytes cut off the tail of the last segment (copied to `quarantine/` first).
    pub truncated_bytes: u64,
    /// Sealed segments taken from their index files, not scanned
    /// ([`LogOptions::trust_sealed_indexes`]).
    pub indexed_segments: usize,
    /// Segments moved to `quarantine/`, with the reason.
    pub quarantined_segments: Vec<(PathBuf, String)>,
    /// The offset the next append gets.
    pub next_offset: u64,
}

/// Size figures of a log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Segment files.
    pub segments: usize,
    /// Durable bytes in all segments.
    pub bytes: u64,
    /// First offset still stored.
    pub start_offset: u64,
    /// One past the last durable offset.
    pub end_offset: u64,
}

/// A sealed segment, as [`LogReader::sealed_segments`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSummary {
    /// Its first offset (its name).
    pub base: u64,
    /// One past its last offset.
    pub end_offset: u64,
    /// Its bytes.
    pub bytes: u64,
    /// Its records.
    pub records: u64,
    /// Its largest record timestamp (`i64::MIN` if it holds none).
    pub max_ts: i64,
}

/// What [`LogReader::rewrite_sealed`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// Records in the segment.
    pub records: u64,
    /// Records given a new payload.
    pub changed: u64,
    /// The segment's bytes before.
    pub bytes_before: u64,
    /// Its bytes after.
    pub bytes_after: u64,
}

/// A record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// The record's header (offsets, count, timestamp).
    pub header: RecordHeader,
    /// The payload as written.
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct IndexEntry {
    offset: u64,
    pos: u64,
    /// Largest record timestamp strictly before `pos` in this segment (`i64::MIN` if none).
    max_ts_before: i64,
}

struct SegmentInfo {
    base: u64,
    path: PathBuf,
    file: Arc<dyn ReadableFile>,
    /// One past the last durable offset.
    end_offset: u64,
    /// Durable length in bytes.
    durable_len: u64,
    index: Vec<IndexEntry>,
    max_ts: i64,
    /// Durable records.
    records: u64,
}

impl SegmentInfo {
    fn has_records(&self) -> bool {
        self.end_offset > self.base
    }

    fn to_index(&self) -> SegmentIndex {
        SegmentIndex {
            base: self.base,
            end_offset: self.end_offset,
            durable_len: self.durable_len,
            max_ts: self.max_ts,
            records: self.records,
            entries: self
                .index
                .iter()
                .map(|e| (e.offset, e.pos, e.max_ts_before))
                .collect(),
        }
    }

    fn from_index(ix: SegmentIndex, path: PathBuf, file: Arc<dyn ReadableFile>) -> Self {
        Self {
            base: ix.base,
            path,
            file,
            end_offset: ix.end_offset,
            durable_len: ix.durable_len,
            index: ix
                .entries
                .into_iter()
                .map(|(offset, pos, max_ts_before)| IndexEntry {
                    offset,
                    pos,
                    max_ts_before,
                })
                .collect(),
            max_ts: ix.max_ts,
            records: ix.records,
        }
    }

    /// A scan of this segment's durable bytes from the last index entry for which `before`
    /// holds (index entries are in file order), or from the first record.
    fn plan_from(&self, before: impl Fn(&IndexEntry) -> bool, sealed: bool) -> ScanPlan {
        let start = self
            .index
            .iter()
            .take_while(|e| before(e))
            .last()
            .map_or(SEGMENT_HEADER_BYTES as u64, |e| e.pos);
        ScanPlan {
            file: self.file.clone(),
            path: self.path.clone(),
            start,
            end: self.durable_len,
            sealed,
        }
    }
}

struct Shared {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    segments: RwLock<Vec<SegmentInfo>>,
    index_interval_bytes: u64,
    /// Held for the whole of a [`LogReader::rewrite_sealed`]: one rewrite at a time.
    rewriting: Mutex<()>,
}

/// Sequential scanning of one segment file's records.
struct Scanner<'f> {
    file: &'f dyn ReadableFile,
    buf: Vec<u8>,
    /// File position of `buf[0]`.
    buf_pos: u64,
    /// Bytes of `buf` already consumed.
    start: usize,
    /// File position where scanning stops.
    end: u64,
    max_len: u32,
}

enum Scan<'a> {
    Record {
        header: RecordHeader,
        payload: &'a [u8],
        pos: u64,
        size: usize,
    },
    End,
    /// The bytes at `pos` are an incomplete record (a torn tail).
    Torn {
        pos: u64,
    },
    Fault {
        pos: u64,
        fault: RecordFault,
    },
}

const SCAN_CHUNK_BYTES: usize = 256 << 10;

impl<'f> Scanner<'f> {
    fn new(file: &'f dyn ReadableFile, pos: u64, end: u64, max_len: u32) -> Self {
        Self {
            file,
            buf: Vec::new(),
            buf_pos: pos,
            start: 0,
            end,
            max_len,
        }
    }

    fn pos(&self) -> u64 {
        self.buf_pos + self.start as u64
    }

    fn next(&mut self, expected: Option<u64>) -> io::Result<Scan<'_>> {
        loop {
            let pos = self.pos();
            if pos >= self.end {
                return Ok(Scan::End);
            }
            let limit = usize::try_from(self.end - pos).unwrap_or(usize::MAX);
            let avail = &self.buf[self.start..];
            let avail = &avail[..avail.len().min(limit)];
            match decode_record(avail, self.max_len, expected) {
                Decoded::Record { header, size, .. } => {
                    let s = self.start;
                    self.start += size;
                    let payload = &self.buf[s + RECORD_HEADER_BYTES..s + size];
                    return Ok(Scan::Record {
                        header,
                        payload,
                        pos,
                        size,
                    });
                }
                Decoded::Incomplete { need } => {
                    if need > limit || !self.fill(need)? {
                        return Ok(Scan::Torn { pos });
                    }
                }
                Decoded::Fault(fault) => return Ok(Scan::Fault { pos, fault }),
            }
        }
    }

    /// Makes at least `need` unconsumed bytes available; false if the file ends first.
    fn fill(&mut self, need: usize) -> io::Result<bool> {
        self.buf.drain(..self.start);
        self.buf_pos += self.start as u64;
        self.start = 0;
        let remaining = usize::try_from(self.end - self.buf_pos).unwrap_or(usize::MAX);
        let want = need.max(SCAN_CHUNK_BYTES).min(remaining);
        while self.buf.len() < want {
            let have = self.buf.len();
            self.buf.resize(want, 0);
            let n = self
                .file
                .read_at(&mut self.buf[have..], self.buf_pos + have as u64)?;
            self.buf.truncate(have + n);
            if n == 0 {
                break;
            }
        }
        Ok(self.buf.len() >= need)
    }
}

/// The largest record length the format can express; what reading and recovery accept.
const RECORD_FORMAT_MAX: u32 = u32::MAX;

fn segment_name(base: u64) -> String {
    format!("{base:020}.seg")
}

/// The index file of the segment at `path`.
fn index_path(path: &Path) -> PathBuf {
    path.with_extension("idx")
}

fn parse_segment_name(path: &Path) -> Option<u64> {
    parse_name(path, ".seg")
}

fn parse_name(path: &Path, suffix: &str) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The writer side of a segmented log. One owner appends; [`LogReader`]s read concurrently.
pub struct SegmentLog {
    storage: Arc<dyn Storage>,
    shared: Arc<Shared>,
    opts: LogOptions,
    active: Box<dyn WritableFile>,
    active_path: PathBuf,
    /// Bytes written to the active segment, durable or not.
    active_len: u64,
    /// Offset the next append gets.
    next_offset: u64,
    /// Index entries of the active segment not yet published (not yet durable).
    pending_index: Vec<IndexEntry>,
    /// Records appended to the active segment and not yet published.
    pending_records: u64,
    /// Largest timestamp in the active segment, durable or not.
    active_max_ts: i64,
    /// Timestamp of the active segment's first record appended since open (or roll).
    active_first_ts: Option<i64>,
    last_index_pos: u64,
    poisoned: Option<String>,
    frame: Vec<u8>,
}

impl std::fmt::Debug for SegmentLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentLog")
            .field("dir", &self.shared.dir)
            .field("next_offset", &self.next_offset)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl SegmentLog {
    /// Opens (creating if needed) the log in `dir`, recovering from whatever a crash left.
    /// The next append gets an offset of at least `min_next_offset`.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        opts: LogOptions,
        min_next_offset: u64,
    ) -> Result<(Self, RecoveryReport), LogError> {
        assert!(opts.segment_bytes_max > (SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES) as u64);
        storage
            .create_dir_all(dir)
            .map_err(io_err("create directory", dir))?;
        let mut found: Vec<(u64, PathBuf)> = storage
            .list_dir(dir)
            .map_err(io_err("list directory", dir))?
            .into_iter()
            .filter_map(|p| parse_segment_name(&p).map(|b| (b, p)))
            .collect();
        found.sort();

        let mut report = RecoveryReport::default();
        let mut segments: Vec<SegmentInfo> = Vec::new();
        let n = found.len();
        for (i, (base, path)) in found.into_iter().enumerate() {
            let is_last = i + 1 == n;
            if let Some(prev) = segments.last()
                && base < prev.end_offset
            {
                let why = format!("starts at {base}, before the previous segment ends");
                quarantine_segment(&*storage, dir, &path, why, &mut report)?;
                continue;
            }
            if !is_last
                && opts.trust_sealed_indexes
                && let Some(info) = indexed_segment(&*storage, &path, base)
            {
                report.indexed_segments += 1;
                report.records += info.records;
                segments.push(info);
                continue;
            }
            match recover_segment(&*storage, dir, &path, base, is_last, opts, &mut report)? {
                Some(info) => {
                    if !is_last {
                        write_index(&*storage, &info, true);
                    }
                    segments.push(info);
                }
                None => continue,
            }
        }
        remove_orphan_indexes(&*storage, dir, &segments);
        remove_unfinished_rewrites(&*storage, dir);

        let mut next_offset = segments
            .last()
            .map_or(0, |s| s.end_offset)
            .max(min_next_offset);
        // The active segment must be the last one and must continue at `next_offset`.
        let reuse_last = segments.last().is_some_and(|s| s.end_offset == next_offset);
        if !reuse_last {
            if let Some(last) = segments.last()
                && !last.has_records()
            {
                let last = segments.pop().expect("checked");
                storage
                    .remove_file(&last.path)
                    .map_err(io_err("remove segment", &last.path))?;
            }
            next_offset = next_offset.max(segments.last().map_or(0, |s| s.end_offset));
            segments.push(create_segment(&*storage, dir, next_offset)?);
        }
        let last = segments.last().expect("at least one segment");
        // The active segment grows again: an index written when it was sealed would be stale.
        let _ = storage.remove_file(&index_path(&last.path));
        let active_path = last.path.clone();
        let active_len = last.durable_len;
        let active_max_ts = last.max_ts;
        let last_index_pos = last.index.last().map_or(0, |e| e.pos);
        let active = storage
            .open_writable(&active_path, false)
            .map_err(io_err("open", &active_path))?;
        report.segments = segments.len();
        report.next_offset = next_offset;
        let shared = Arc::new(Shared {
            storage: storage.clone(),
            dir: dir.to_path_buf(),
            segments: RwLock::new(segments),
            index_interval_bytes: opts.index_interval_bytes,
            rewriting: Mutex::new(()),
        });
        let log = Self {
            storage,
            shared,
            opts,
            active,
            active_path,
            active_len,
            next_offset,
            pending_index: Vec::new(),
            pending_records: 0,
            active_max_ts,
            active_first_ts: None,
            last_index_pos,
            poisoned: None,
            frame: Vec::new(),
        };
        Ok((log, report))
    }

    /// Whether the active segment holds records, and the timestamp of the first one appended
    /// to it since this open (`None` for records recovered at open): what a caller that seals
    /// by age ([`Self::seal`]) measures from.
    pub fn active_since(&self) -> (bool, Option<i64>) {
        (
            self.active_len > SEGMENT_HEADER_BYTES as u64,
            self.active_first_ts,
        )
    }

    /// The offset the next append gets.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// A reader that sees every durable record.
    pub fn reader(&self) -> LogReader {
        LogReader {
            shared: self.shared.clone(),
        }
    }

    /// The directory of this log.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Appends one record covering `count` offsets; returns its base offset. The record is not
    /// durable, and not visible to readers, until the next successful [`Self::sync`].
    pub fn append(&mut self, payload: &[u8], count: u32, ts_ms: i64) -> Result<u64, LogError> {
        self.check_poisoned()?;
        if payload.len() > self.opts.record_bytes_max as usize {
            return Err(LogError::RecordTooLarge {
                len: payload.len(),
                max: self.opts.record_bytes_max,
            });
        }
        assert!(count >= 1, "a record covers at least one offset");
        let size = (RECORD_HEADER_BYTES + payload.len()) as u64;
        if self.active_len > SEGMENT_HEADER_BYTES as u64
            && self.active_len + size > self.opts.segment_bytes_max
        {
            self.roll()?;
        }
        let base = self.next_offset;
        self.frame.clear();
        encode_record(&mut self.frame, base, count, ts_ms, payload);
        if let Err(source) = self.active.append(&self.frame) {
            // Cut the partial record off again so the file stays a sequence of whole records.
            if let Err(undo) = self.active.set_len(self.active_len) {
                return Err(
                    self.poison(format!("write failed ({source}) and undo failed ({undo})"))
                );
            }
            let path = self.active_path.clone();
            return Err(if source.raw_os_error() == Some(libc::ENOSPC) {
                LogError::NoSpace { path, source }
            } else {
                LogError::Io {
                    op: "append",
                    path,
                    source,
                }
            });
        }
        let pos = self.active_len;
        if pos == SEGMENT_HEADER_BYTES as u64
            || pos - self.last_index_pos >= self.opts.index_interval_bytes
        {
            self.pending_index.push(IndexEntry {
                offset: base,
                pos,
                max_ts_before: self.active_max_ts,
            });
            self.last_index_pos = pos;
        }
        self.active_len += size;
        self.pending_records += 1;
        self.active_max_ts = self.active_max_ts.max(ts_ms);
        self.active_first_ts.get_or_insert(ts_ms);
        self.next_offset = base + u64::from(count);
        Ok(base)
    }

    /// Makes every appended record durable with one `fdatasync` and visible to readers.
    /// Returns one past the last durable offset. A failure poisons the log.
    pub fn sync(&mut self) -> Result<u64, LogError> {
        self.check_poisoned()?;
        if let Err(e) = self.active.sync_data() {
            return Err(self.poison(format!(
                "fdatasync of {} failed: {e}",
                self.active_path.display()
            )));
        }
        self.publish();
        Ok(self.next_offset)
    }

    fn publish(&mut self) {
        let mut segs = self.shared.segments.write().expect("lock poisoned");
        let last = segs.last_mut().expect("active segment");
        debug_assert!(self.next_offset >= last.end_offset, "offsets only grow");
        last.end_offset = self.next_offset;
        last.durable_len = self.active_len;
        last.max_ts = self.active_max_ts;
        last.index.append(&mut self.pending_index);
        last.records += std::mem::take(&mut self.pending_records);
    }

    fn check_poisoned(&self) -> Result<(), LogError> {
        match &self.poisoned {
            Some(reason) => Err(LogError::Poisoned {
                dir: self.shared.dir.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn poison(&mut self, reason: String) -> LogError {
        self.poisoned = Some(reason.clone());
        LogError::Poisoned {
            dir: self.shared.dir.clone(),
            reason,
        }
    }

    /// Seals the active segment, if it holds any record, and starts a new one, so every record
    /// appended so far lies in a sealed segment (which [`LogReader::rewrite_sealed`] can
    /// rewrite). Returns whether it sealed one.
    pub fn seal(&mut self) -> Result<bool, LogError> {
        self.check_poisoned()?;
        if self.active_len <= SEGMENT_HEADER_BYTES as u64 {
            return Ok(false);
        }
        self.roll()?;
        Ok(true)
    }

    /// Seals the active segment (durably) and starts a new one at `next_offset`.
    fn roll(&mut self) -> Result<(), LogError> {
        self.sync()?;
        {
            let segs = self.shared.segments.read().expect("lock poisoned");
            write_index(&*self.storage, segs.last().expect("active segment"), false);
        }
        // If the new segment cannot be made (a full disk, say), nothing has changed: the active
        // segment stays active and complete, the append that wanted the roll fails, and a later
        // one tries again.
        let info = match create_segment(&*self.storage, &self.shared.dir, self.next_offset) {
            Ok(info) => info,
            Err(e) => {
                let _ = self
                    .storage
                    .remove_file(&self.shared.dir.join(segment_name(self.next_offset)));
                return Err(match e {
                    LogError::Io { path, source, .. }
                        if source.raw_os_error() == Some(libc::ENOSPC) =>
                    {
                        LogError::NoSpace { path, source }
                    }
                    other => other,
                });
            }
        };
        let path = info.path.clone();
        let active = self
            .storage
            .open_writable(&path, false)
            .map_err(io_err("open", &path))?;
        self.shared
            .segments
            .write()
            .expect("lock poisoned")
            .push(info);
        self.active = active;
        self.active_path = path;
        self.active_len = SEGMENT_HEADER_BYTES as u64;
        self.active_max_ts = i64::MIN;
        self.active_first_ts = None;
        self.last_index_pos = 0;
        Ok(())
    }

    /// Deletes sealed segments whose every offset is below `offset`. Returns (segments, bytes)
    /// removed. The active segment is never deleted.
    pub fn delete_before(&mut self, offset: u64) -> Result<(usize, u64), LogError> {
        self.delete_before_appended(offset, i64::MAX)
    }

    /// Deletes the oldest sealed segments whose every offset is below `offset` and whose
    /// every record was appended before `appended_before_ms` (record timestamps): a retention
    /// by age. Returns (segments, bytes) removed. The active segment is never deleted.
    pub fn delete_before_appended(
        &mut self,
        offset: u64,
        appended_before_ms: i64,
    ) -> Result<(usize, u64), LogError> {
        let doomed: Vec<(PathBuf, u64)> = {
            let segs = self.shared.segments.read().expect("lock poisoned");
            let sealed = &segs[..segs.len() - 1];
            sealed
                .iter()
                .take_while(|s| s.end_offset <= offset && s.max_ts < appended_before_ms)
                .map(|s| (s.path.clone(), s.durable_len))
                .collect()
        };
        if doomed.is_empty() {
            return Ok((0, 0));
        }
        // Readers stop seeing the segments before the files go.
        self.shared
            .segments
            .write()
            .expect("lock poisoned")
            .drain(..doomed.len());
        let mut bytes = 0;
        for (path, len) in &doomed {
            self.storage
                .remove_file(path)
                .map_err(io_err("remove segment", path))?;
            let _ = self.storage.remove_file(&index_path(path));
            bytes += len;
        }
        self.storage
            .sync_dir(&self.shared.dir)
            .map_err(io_err("fsync directory", &self.shared.dir))?;
        Ok((doomed.len(), bytes))
    }
}

fn create_segment(storage: &dyn Storage, dir: &Path, base: u64) -> Result<SegmentInfo, LogError> {
    let path = dir.join(segment_name(base));
    let mut file = storage
        .open_writable(&path, true)
        .map_err(io_err("create segment", &path))?;
    file.set_len(0).map_err(io_err("truncate segment", &path))?;
    file.append(&segment_header())
        .map_err(io_err("write segment header", &path))?;
    file.sync_data().map_err(io_err("fsync segment", &path))?;
    storage
        .sync_dir(dir)
        .map_err(io_err("fsync directory", dir))?;
    let readable = storage
        .open_readable(&path)
        .map_err(io_err("open", &path))?;
    Ok(SegmentInfo {
        base,
        path,
        file: Arc::from(readable),
        end_offset: base,
        durable_len: SEGMENT_HEADER_BYTES as u64,
        index: Vec::new(),
        max_ts: i64::MIN,
        records: 0,
    })
}

/// A sealed segment described by its index file, if that file is there and matches the segment
/// (see [`SegmentIndex::decode`]); `None` means scan it.
fn indexed_segment(storage: &dyn Storage, path: &Path, base: u64) -> Option<SegmentInfo> {
    let bytes = storage.read_file(&index_path(path)).ok()?;
    let file: Arc<dyn ReadableFile> = Arc::from(storage.open_readable(path).ok()?);
    let len = file.size().ok()?;
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    let got = file.read_at(&mut header, 0).ok()?;
    check_segment_header(&header[..got]).ok()?;
    let ix = SegmentIndex::decode(&bytes, base, len).ok()?;
    Some(SegmentInfo::from_index(ix, path.to_path_buf(), file))
}

/// Writes the index file of a sealed segment. Best effort: without it the next open scans the
/// segment, as it would without index files. With `if_changed`, an index file that already
/// says the same is left as it is.
fn write_index(storage: &dyn Storage, info: &SegmentInfo, if_changed: bool) {
    let bytes = info.to_index().encode();
    let path = index_path(&info.path);
    if if_changed && storage.read_file(&path).is_ok_and(|old| old == bytes) {
        return;
    }
    let _ = storage.write_atomic(&path, &bytes);
}

/// The file a rewrite of the segment at `path` is written to before it replaces the segment.
fn rewrite_path(path: &Path) -> PathBuf {
    path.with_extension("seg.rewrite")
}

/// Removes the files of rewrites a crash interrupted before their swap: the segment they were
/// to replace is still there, unchanged, and the caller rewrites it again.
fn remove_unfinished_rewrites(storage: &dyn Storage, dir: &Path) {
    let Ok(files) = storage.list_dir(dir) else {
        return;
    };
    for p in files {
        if parse_name(&p, ".seg.rewrite").is_some() {
            let _ = storage.remove_file(&p);
        }
    }
}

/// Removes index files whose segment is gone (deleted or quarantined before its index was).
fn remove_orphan_indexes(storage: &dyn Storage, dir: &Path, segments: &[SegmentInfo]) {
    let Ok(files) = storage.list_dir(dir) else {
        return;
    };
    for p in files {
        if let Some(base) = parse_name(&p, ".idx")
            && !segments.iter().any(|s| s.base == base)
        {
            let _ = storage.remove_file(&p);
        }
    }
}

fn quarantine_dir(dir: &Path) -> PathBuf {
    dir.join("quarantine")
}

fn quarantine_segment(
    storage: &dyn Storage,
    dir: &Path,
    path: &Path,
    why: String,
    report: &mut RecoveryReport,
) -> Result<(), LogError> {
    let qdir = quarantine_dir(dir);
    storage
        .create_dir_all(&qdir)
        .map_err(io_err("create directory", &qdir))?;
    let to = qdir.join(path.file_name().expect("segment file name"));
    storage
        .rename(path, &to)
        .map_err(io_err("quarantine segment", path))?;
    let _ = storage.remove_file(&index_path(path));
    storage
        .sync_dir(dir)
        .map_err(io_err("fsync directory", dir))?;
    report.quarantined_segments.push((to, why));
    Ok(())
}

/// Scans one segment; returns its info, or `None` if it was quarantined.
fn recover_segment(
    storage: &dyn Storage,
    dir: &Path,
    path: &Path,
    base: u64,
    is_last: bool,
    opts: LogOptions,
    report: &mut RecoveryReport,
) -> Result<Option<SegmentInfo>, LogError> {
    let file: Arc<dyn ReadableFile> =
        Arc::from(storage.open_readable(path).map_err(io_err("open", path))?);
    let len = file.size().map_err(io_err("stat", path))?;
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    let got = file.read_at(&mut header, 0).map_err(io_err("read", path))?;
    if let Err(why) = check_segment_header(&header[..got]) {
        quarantine_segment(storage, dir, path, why, report)?;
        return Ok(None);
    }
    let mut info = SegmentInfo {
        base,
        path: path.to_path_buf(),
        file: file.clone(),
        end_offset: base,
        durable_len: SEGMENT_HEADER_BYTES as u64,
        index: Vec::new(),
        max_ts: i64::MIN,
        records: 0,
    };
    let mut scanner = Scanner::new(&*file, SEGMENT_HEADER_BYTES as u64, len, RECORD_FORMAT_MAX);
    let mut last_index_pos = 0u64;
    let bad = loop {
        match scanner
            .next(Some(info.end_offset))
            .map_err(io_err("read", path))?
        {
            Scan::Record {
                header, pos, size, ..
            } => {
                if pos == SEGMENT_HEADER_BYTES as u64
                    || pos - last_index_pos >= opts.index_interval_bytes
                {
                    info.index.push(IndexEntry {
                        offset: header.base_offset,
                        pos,
                        max_ts_before: info.max_ts,
                    });
                    last_index_pos = pos;
                }
                info.end_offset = header.base_offset + u64::from(header.count);
                info.durable_len = pos + size as u64;
                info.max_ts = info.max_ts.max(header.ts_ms);
                info.records += 1;
                report.records += 1;
            }
            Scan::End => break None,
            Scan::Torn { pos } => break Some((pos, "incomplete record".to_string())),
            Scan::Fault { pos, fault } => break Some((pos, fault.to_string())),
        }
    };
    let Some((pos, why)) = bad else {
        return Ok(Some(info));
    };
    if !is_last {
        let why = format!("byte {pos}: {why}");
        quarantine_segment(storage, dir, path, why, report)?;
        return Ok(None);
    }
    // Torn tail of the active segment: keep a copy of the bytes, then cut them off.
    let qdir = quarantine_dir(dir);
    storage
        .create_dir_all(&qdir)
        .map_err(io_err("create directory", &qdir))?;
    let name = path
        .file_name()
        .expect("segment file name")
        .to_string_lossy();
    let tail_path = qdir.join(format!("{name}.tail-{pos}"));
    let mut tail = vec![
        0u8;
        usize::try_from(len - pos)
            .map_err(io::Error::other)
            .map_err(io_err("read", path))?
    ];
    let mut done = 0;
    while done < tail.len() {
        let n = file
            .read_at(&mut tail[done..], pos + done as u64)
            .map_err(io_err("read", path))?;
        if n == 0 {
            break;
        }
        done += n;
    }
    storage
        .write_atomic(&tail_path, &tail[..done])
        .map_err(io_err("write", &tail_path))?;
    let mut w = storage
        .open_writable(path, false)
        .map_err(io_err("open", path))?;
    w.set_len(pos).map_err(io_err("truncate torn tail", path))?;
    w.sync_data().map_err(io_err("fsync", path))?;
    report.truncated_bytes += len - pos;
    Ok(Some(info))
}

/// A segment file being written by [`LogReader::rewrite_sealed`], indexed as appends index.
struct SegmentCopy {
    file: Box<dyn WritableFile>,
    path: PathBuf,
    frame: Vec<u8>,
    len: u64,
    index: Vec<IndexEntry>,
    last_index_pos: u64,
    max_ts: i64,
    index_interval_bytes: u64,
}

impl SegmentCopy {
    fn create(
        storage: &dyn Storage,
        path: &Path,
        index_interval_bytes: u64,
    ) -> Result<Self, LogError> {
        let mut file = storage
            .open_writable(path, true)
            .map_err(io_err("create rewrite", path))?;
        file.set_len(0).map_err(io_err("truncate rewrite", path))?;
        file.append(&segment_header())
            .map_err(io_err("write segment header", path))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            frame: Vec::new(),
            len: SEGMENT_HEADER_BYTES as u64,
            index: Vec::new(),
            last_index_pos: 0,
            max_ts: i64::MIN,
            index_interval_bytes,
        })
    }

    fn push(&mut self, header: &RecordHeader, payload: &[u8]) -> Result<(), LogError> {
        self.frame.clear();
        encode_record(
            &mut self.frame,
            header.base_offset,
            header.count,
            header.ts_ms,
            payload,
        );
        self.file
            .append(&self.frame)
            .map_err(io_err("write rewrite", &self.path))?;
        let pos = self.len;
        if pos == SEGMENT_HEADER_BYTES as u64
            || pos - self.last_index_pos >= self.index_interval_bytes
        {
            self.index.push(IndexEntry {
                offset: header.base_offset,
                pos,
                max_ts_before: self.max_ts,
            });
            self.last_index_pos = pos;
        }
        self.len += self.frame.len() as u64;
        self.max_ts = self.max_ts.max(header.ts_ms);
        Ok(())
    }

    /// Makes the copy durable.
    fn finish(mut self) -> Result<Self, LogError> {
        self.file
            .sync_data()
            .map_err(io_err("fsync rewrite", &self.path))?;
        Ok(self)
    }
}

/// The part of one segment a read will scan.
struct ScanPlan {
    file: Arc<dyn ReadableFile>,
    path: PathBuf,
    start: u64,
    end: u64,
    /// Not the active segment.
    sealed: bool,
}

/// Reads durable records; cheap to clone, safe to use from many threads.
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader")
            .field("dir", &self.shared.dir)
            .finish()
    }
}

impl LogReader {
    /// The error for a bad record met by a reader. In a sealed segment, its index file goes, so
    /// the next open scans the segment (and quarantines it) rather than trusting the index.
    fn corrupt(&self, path: PathBuf, pos: u64, fault: RecordFault, sealed: bool) -> LogError {
        if sealed {
            let _ = self.shared.storage.remove_file(&index_path(&path));
        }
        LogError::Corrupt {
            path,
            pos,
            fault,
            sealed,
        }
    }

    /// Sizes and offsets of what is durable now.
    pub fn stats(&self) -> LogStats {
        let segs = self.shared.segments.read().expect("lock poisoned");
        LogStats {
            segments: segs.len(),
            bytes: segs.iter().map(|s| s.durable_len).sum(),
            start_offset: segs.first().map_or(0, |s| s.base),
            end_offset: segs.last().map_or(0, |s| s.end_offset),
        }
    }

    /// Sealed segments whose every offset is below `offset` (what
    /// [`SegmentLog::delete_before`] would remove).
    pub fn sealed_segments_below(&self, offset: u64) -> usize {
        let segs = self.shared.segments.read().expect("lock poisoned");
        segs[..segs.len().saturating_sub(1)]
            .iter()
            .take_while(|s| s.end_offset <= offset)
            .count()
    }

    /// The sealed segments, oldest first (the active one is never among them).
    pub fn sealed_segments(&self) -> Vec<SegmentSummary> {
        let segs = self.shared.segments.read().expect("lock poisoned");
        segs[..segs.len().saturating_sub(1)]
            .iter()
            .map(|s| SegmentSummary {
                base: s.base,
                end_offset: s.end_offset,
                bytes: s.durable_len,
                records: s.records,
                max_ts: s.max_ts,
            })
            .collect()
    }

    /// Rewrites the sealed segment that starts at `base`, record by record: `edit` sees each
    /// record and returns a new payload for it, or `None` to keep it as it is. Every record
    /// keeps its offsets, count and timestamp, so what readers see at other offsets does not
    /// change. The new segment is written next to the old one (`NAME.seg.rewrite`), fsynced,
    /// and renamed over it; readers then see the new file, a read already under way finishes
    /// on the old one. A crash before the rename leaves the old segment whole (the next open
    /// removes the unfinished file); after it, the new one. The segment's index file is
    /// removed before the rename and written again after it, so it never describes the wrong
    /// file. One rewrite runs at a time.
    ///
    /// Returns `Ok(None)` when there is no sealed segment at `base` (deleted by retention, say,
    /// before or during the rewrite) and a [`Rewrite`] with `changed == 0`, having written
    /// nothing, when `edit` kept every record. A bad record in the segment fails the rewrite
    /// with [`LogError::Corrupt`] and leaves it as it was.
    pub fn rewrite_sealed(
        &self,
        base: u64,
        mut edit: impl FnMut(&RecordHeader, &[u8]) -> Option<Vec<u8>>,
    ) -> Result<Option<Rewrite>, LogError> {
        let _one = self.shared.rewriting.lock().expect("lock poisoned");
        let (file, path, end) = {
            let segs = self.shared.segments.read().expect("lock poisoned");
            let sealed = &segs[..segs.len().saturating_sub(1)];
            let Some(s) = sealed.iter().find(|s| s.base == base) else {
                return Ok(None);
            };
            (s.file.clone(), s.path.clone(), s.durable_len)
        };
        let tmp = rewrite_path(&path);
        let mut out: Option<SegmentCopy> = None;
        let mut records = 0u64;
        let mut changed = 0u64;
        // Records before the first change are copied once it comes.
        let mut kept: Vec<(RecordHeader, Vec<u8>)> = Vec::new();
        let mut scanner = Scanner::new(&*file, SEGMENT_HEADER_BYTES as u64, end, RECORD_FORMAT_MAX);
        let scanned = (|| -> Result<(), LogError> {
            loop {
                let (header, payload) = match scanner.next(None).map_err(io_err("read", &path))? {
                    Scan::Record {
                        header, payload, ..
                    } => (header, payload),
                    Scan::End => return Ok(()),
                    Scan::Torn { pos } => {
                        return Err(self.corrupt(path.clone(), pos, RecordFault::Truncated, true));
                    }
                    Scan::Fault { pos, fault } => {
                        return Err(self.corrupt(path.clone(), pos, fault, true));
                    }
                };
                records += 1;
                let new = edit(&header, payload);
                changed += u64::from(new.is_some());
                let copy = match (&mut out, &new) {
                    (Some(copy), _) => copy,
                    (None, None) => {
                        kept.push((header, payload.to_vec()));
                        continue;
                    }
                    (None, Some(_)) => {
                        let mut copy = SegmentCopy::create(
                            &*self.shared.storage,
                            &tmp,
                            self.shared.index_interval_bytes,
                        )?;
                        for (h, p) in kept.drain(..) {
                            copy.push(&h, &p)?;
                        }
                        out.insert(copy)
                    }
                };
                copy.push(&header, new.as_deref().unwrap_or(payload))?;
            }
        })();
        let Some(copy) = out else {
            if let Err(e) = scanned {
                // The copy may have failed while it was being created.
                let _ = self.shared.storage.remove_file(&tmp);
                return Err(e);
            }
            return Ok(Some(Rewrite {
                records,
                changed,
                bytes_before: end,
                bytes_after: end,
            }));
        };
        let storage = &*self.shared.storage;
        let copy = match scanned.and_then(|()| copy.finish()) {
            Ok(copy) => copy,
            Err(e) => {
                let _ = storage.remove_file(&tmp);
                return Err(e);
            }
        };
        let readable: Arc<dyn ReadableFile> =
            Arc::from(storage.open_readable(&tmp).map_err(io_err("open", &tmp))?);
        let _ = storage.remove_file(&index_path(&path));
        let index = {
            let mut segs = self.shared.segments.write().expect("lock poisoned");
            let active = segs.len().saturating_sub(1);
            let Some(s) = segs[..active].iter_mut().find(|s| s.base == base) else {
                drop(segs);
                let _ = storage.remove_file(&tmp);
                return Ok(None);
            };
            if let Err(source) = storage.rename(&tmp, &path) {
                drop(segs);
                let _ = storage.remove_file(&tmp);
                return Err(LogError::Io {
                    op: "rename rewrite",
                    path,
                    source,
                });
            }
            s.file = readable;
            s.durable_len = copy.len;
            s.index = copy.index;
            s.max_ts = copy.max_ts;
            s.records = records;
            s.to_index()
        };
        storage
            .sync_dir(&self.shared.dir)
            .map_err(io_err("fsync directory", &self.shared.dir))?;
        let _ = storage.write_atomic(&index_path(&path), &index.encode());
        Ok(Some(Rewrite {
            records,
            changed,
            bytes_before: end,
            bytes_after: copy.len,
        }))
    }

    /// One past the last durable offset.
    pub fn end_offset(&self) -> u64 {
        self.stats().end_offset
    }

    /// Reads whole records that hold offsets at or after `from`, in order: at most `max_records`
    /// records and at most `max_bytes` of payload, except that the first record is returned
    /// whatever its size. The first record may start before `from` when `from` falls inside it.
    pub fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, LogError> {
        let mut out = Vec::new();
        if max_records == 0 {
            return Ok(out);
        }
        let mut bytes = 0usize;
        self.scan(from, |header, payload| {
            if !out.is_empty() && bytes + payload.len() > max_bytes {
                return ControlFlow::Break(());
            }
            bytes += payload.len();
            out.push(StoredRecord {
                header: *header,
                payload: payload.to_vec(),
            });
            if out.len() >= max_records {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        Ok(out)
    }

    /// Hands `visit` every durable record that holds offsets at or after `from`, in order, until
    /// it breaks or the log ends, without copying payloads out of the read buffer (the slice is
    /// valid for the call only). Each record's CRC is checked first; a bad one ends the scan with
    /// [`LogError::Corrupt`], as [`LogReader::read`] does.
    pub fn scan(
        &self,
        from: u64,
        mut visit: impl FnMut(&RecordHeader, &[u8]) -> ControlFlow<()>,
    ) -> Result<(), LogError> {
        let plan: Vec<ScanPlan> = {
            let segs = self.shared.segments.read().expect("lock poisoned");
            let first = segs.partition_point(|s| s.end_offset <= from);
            let active = segs.len() - 1;
            segs.iter()
                .enumerate()
                .skip(first)
                .filter(|(_, s)| s.has_records())
                .map(|(i, s)| s.plan_from(|e| e.offset <= from, i < active))
                .collect()
        };
        for ScanPlan {
            file,
            path,
            start,
            end,
            sealed,
        } in plan
        {
            let mut scanner = Scanner::new(&*file, start, end, RECORD_FORMAT_MAX);
            loop {
                match scanner.next(None).map_err(io_err("read", &path))? {
                    Scan::Record {
                        header, payload, ..
                    } => {
                        if header.base_offset + u64::from(header.count) <= from {
                            continue;
                        }
                        if visit(&header, payload).is_break() {
                            return Ok(());
                        }
                    }
                    Scan::End => break,
                    Scan::Torn { pos } => {
                        return Err(self.corrupt(path, pos, RecordFault::Truncated, sealed));
                    }
                    Scan::Fault { pos, fault } => {
                        return Err(self.corrupt(path, pos, fault, sealed));
                    }
                }
            }
        }
        Ok(())
    }

    /// The offset of the first durable record whose timestamp is at least `ts_ms` (records are
    /// scanned from the nearest time-index entry), or the end offset if there is none.
    pub fn offset_for_time(&self, ts_ms: i64) -> Result<u64, LogError> {
        let candidates: Vec<ScanPlan> = {
            let segs = self.shared.segments.read().expect("lock poisoned");
            let active = segs.len() - 1;
            segs.iter()
                .enumerate()
                .filter(|(_, s)| s.has_records() && s.max_ts >= ts_ms)
                .map(|(i, s)| s.plan_from(|e| e.max_ts_before < ts_ms, i < active))
                .collect()
        };
        for ScanPlan {
            file,
            path,
            start,
            end,
            sealed,
        } in candidates
        {
            let mut scanner = Scanner::new(&*file, start, end, RECORD_FORMAT_MAX);
            loop {
                match scanner.next(None).map_err(io_err("read", &path))? {
                    Scan::Record { header, .. } if header.ts_ms >= ts_ms => {
                        return Ok(header.base_offset);
                    }
                    Scan::Record { .. } => {}
                    Scan::End | Scan::Torn { .. } => break,
                    Scan::Fault { pos, fault } => {
                        return Err(self.corrupt(path, pos, fault, sealed));
                    }
                }
            }
        }
        Ok(self.end_offset())
    }
}
