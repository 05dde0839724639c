//! The archive's storage seam for tests: an object store that fails on demand, to show that a
//! failed upload or commit never leaves a range archived twice or half.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// Wraps a store; fails Delta commits (writes under `_delta_log/`) while `fail_commits` is on,
/// and data-file writes while `fail_data` is on.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    /// Fail writes of commit files.
    pub fail_commits: AtomicBool,
    /// Fail writes of data files.
    pub fail_data: AtomicBool,
    /// Writes failed so far.
    pub injected: AtomicU64,
}

impl FaultyStore {
    /// `inner`, failing nothing yet.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            fail_commits: AtomicBool::new(false),
            fail_data: AtomicBool::new(false),
            injected: AtomicU64::new(0),
        }
    }

    fn check(&self, location: &Path) -> Result<()> {
        let commit = location.as_ref().contains("_delta_log/");
        let fail = if commit {
            self.fail_commits.load(Ordering::SeqCst)
        } else {
            self.fail_data.load(Ordering::SeqCst)
        };
        if fail {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Err(object_store::Error::Generic {
                store: "faulty",
                source: format!("injected failure writing {location}").into(),
            });
        }
        Ok(())
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.check(location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.check(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.check(to)?;
        self.inner.copy_opts(from, to, options).await
    }
}

/// An in-memory store behind the fault seam, and its location.
pub fn faulty_memory() -> (Arc<FaultyStore>, super::store::Location) {
    let faulty = Arc::new(FaultyStore::new(Arc::new(
        object_store::memory::InMemory::new(),
    )));
    let loc = super::store::Location {
        root: faulty.clone(),
        url: url::Url::parse("memory:///archive/").unwrap(),
        signer: None,
    };
    (faulty, loc)
}
