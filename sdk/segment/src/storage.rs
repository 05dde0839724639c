//! The storage seam: every file the spool and the log touch goes through [`Storage`].
//!
//! Production code uses [`FsStorage`]. Tests wrap it in [`crate::fault::FaultyStorage`] to inject
//! torn writes, failed fsyncs and a full disk exactly where the real system would see them.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A file opened for appending. Writes go to the end of the file.
pub trait WritableFile: Send {
    /// Appends all of `buf`. On error, an unknown prefix of `buf` may have been written.
    fn append(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes every appended byte durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Truncates (or extends) the file to `len` bytes; later appends continue from `len`.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

/// A file opened for positional reads; shared between threads.
pub trait ReadableFile: Send + Sync {
    /// Reads up to `buf.len()` bytes at `pos`; returns how many were read (0 at end of file).
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
    /// The file's current size in bytes.
    fn size(&self) -> io::Result<u64>;
}

/// The file-system operations the spool and the log need, and nothing more.
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    /// Creates `dir` and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Lists the entries of `dir` (full paths), in no particular order.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// Opens `path` for appending, creating it if `create` is true.
    fn open_writable(&self, path: &Path, create: bool) -> io::Result<Box<dyn WritableFile>>;
    /// Opens `path` for positional reads.
    fn open_readable(&self, path: &Path) -> io::Result<Box<dyn ReadableFile>>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Renames a file, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creates, renames, removes) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;

    /// Reads a whole (small) file.
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let file = self.open_readable(path)?;
        let len = usize::try_from(file.size()?).map_err(io::Error::other)?;
        let mut buf = vec![0; len];
        let mut done = 0;
        while done < len {
            let n = file.read_at(&mut buf[done..], done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// Replaces `path` with `bytes` atomically and durably: write a temporary file, fsync it,
    /// rename it over `path`, fsync the directory. A crash leaves either the old or the new file.
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = path.with_extension("tmp");
        let _ = self.remove_file(&tmp);
        let written = self.open_writable(&tmp, true).and_then(|mut file| {
            file.set_len(0)?;
            file.append(bytes)?;
            file.sync_data()
        });
        if let Err(e) = written.and_then(|()| self.rename(&tmp, path)) {
            // A full disk, say: leave no half-written temp file behind.
            let _ = self.remove_file(&tmp);
            return Err(e);
        }
        self.sync_dir(dir)
    }
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct FsStorage;

struct FsWritable {
    file: File,
}

impl WritableFile for FsWritable {
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
        // The file is opened with O_APPEND, so the next write lands at the new end.
    }
}

struct FsReadable {
    file: File,
}

impl ReadableFile for FsReadable {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.file.read_at(buf, pos)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}

impl Storage for FsStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect()
    }
    fn open_writable(&self, path: &Path, create: bool) -> io::Result<Box<dyn WritableFile>> {
        let file = OpenOptions::new().append(true).create(create).open(path)?;
        Ok(Box::new(FsWritable { file }))
    }
    fn open_readable(&self, path: &Path) -> io::Result<Box<dyn ReadableFile>> {
        Ok(Box::new(FsReadable {
            file: File::open(path)?,
        }))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}
