//! Fault injection through the storage seam.
//!
//! [`FaultyStorage`] wraps another [`Storage`] and, when told to through its [`Faults`] handle,
//! fails the way real disks fail: a write that stops half-way (torn), `fdatasync` returning `EIO`,
//! and a disk that fills up (`ENOSPC`, after writing what still fits).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::storage::{ReadableFile, Storage, WritableFile};

/// Switches shared by a [`FaultyStorage`] and the test that drives it.
#[derive(Debug, Default)]
pub struct Faults {
    /// Every `sync_data` fails with `EIO` while set.
    pub fail_sync: AtomicBool,
    /// The next append writes half of its bytes and then fails with `EIO`.
    pub torn_next_write: AtomicBool,
    /// Bytes that may still be written before appends fail with `ENOSPC` (`u64::MAX` = no limit).
    pub space_left_bytes: AtomicU64,
    /// How many faults were actually injected.
    pub injected: AtomicU64,
}

impl Faults {
    /// A handle with no fault armed.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            space_left_bytes: AtomicU64::new(u64::MAX),
            ..Self::default()
        })
    }
    /// Arms or disarms fsync failure.
    pub fn set_fail_sync(&self, on: bool) {
        self.fail_sync.store(on, Ordering::SeqCst);
    }
    /// Arms a torn write for the next append.
    pub fn tear_next_write(&self) {
        self.torn_next_write.store(true, Ordering::SeqCst);
    }
    /// Leaves `bytes` of free space; `u64::MAX` removes the limit.
    pub fn set_space_left(&self, bytes: u64) {
        self.space_left_bytes.store(bytes, Ordering::SeqCst);
    }
    /// How many faults were injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }
}

/// A [`Storage`] that injects the faults armed in its [`Faults`].
#[derive(Debug, Clone)]
pub struct FaultyStorage<S> {
    inner: S,
    faults: Arc<Faults>,
}

impl<S: Storage> FaultyStorage<S> {
    /// Wraps `inner`; faults are armed through `faults`.
    pub fn new(inner: S, faults: Arc<Faults>) -> Self {
        Self { inner, faults }
    }
}

struct FaultyWritable {
    inner: Box<dyn WritableFile>,
    faults: Arc<Faults>,
}

impl WritableFile for FaultyWritable {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        let f = &self.faults;
        if f.torn_next_write.swap(false, Ordering::SeqCst) {
            f.injected.fetch_add(1, Ordering::SeqCst);
            self.inner.append(&buf[..buf.len() / 2])?;
            return Err(io::Error::other("injected torn write"));
        }
        let left = f.space_left_bytes.load(Ordering::SeqCst);
        if left != u64::MAX {
            if (buf.len() as u64) > left {
                f.injected.fetch_add(1, Ordering::SeqCst);
                let fits = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                self.inner.append(&buf[..fits])?;
                f.space_left_bytes.store(0, Ordering::SeqCst);
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            f.space_left_bytes
                .store(left - buf.len() as u64, Ordering::SeqCst);
        }
        self.inner.append(buf)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        if self.faults.fail_sync.load(Ordering::SeqCst) {
            self.faults.injected.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.inner.sync_data()
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

impl<S: Storage> Storage for FaultyStorage<S> {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.inner.list_dir(dir)
    }
    fn open_writable(&self, path: &Path, create: bool) -> io::Result<Box<dyn WritableFile>> {
        let inner = self.inner.open_writable(path, create)?;
        Ok(Box::new(FaultyWritable {
            inner,
            faults: self.faults.clone(),
        }))
    }
    fn open_readable(&self, path: &Path) -> io::Result<Box<dyn ReadableFile>> {
        self.inner.open_readable(path)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.faults.fail_sync.load(Ordering::SeqCst) {
            self.faults.injected.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.inner.sync_dir(dir)
    }
}
