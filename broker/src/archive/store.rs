//! Where the archive's tables live: an `object_store` chosen by `archive_url`.
//!
//! - a path, or `file:///path`: a local folder (the default is `DATA_DIR/archive`);
//! - `s3://bucket/prefix`: S3 or an S3-compatible server; endpoint, region and credentials
//!   from the `archive_s3_*` settings, else from the usual `AWS_*` variables
//!   (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, …);
//! - `memory:///`: in memory (tests).
//!
//! A table's URL is the archive URL with the table's name appended
//! (`s3://bucket/prefix/events`). Commits to the Delta log use `PutMode::Create` (S3's
//! `If-None-Match: *`), so two writers can never both commit one version.

use std::sync::{Arc, Once};

use deltalake::logstore::{LogStore, LogStoreFactory, ObjectStoreRef, StorageConfig};
use deltalake::logstore::{default_logstore, logstore_factories};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use url::Url;

/// The S3 settings that override the `AWS_*` variables.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// Endpoint of an S3-compatible server (`http://127.0.0.1:9000`); `http://` allows plain HTTP.
    pub endpoint: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
}

/// An opened archive location: the store at its root, and the URL of the archive's folder.
#[derive(Debug, Clone)]
pub struct Location {
    /// The store, `/` at the root of the bucket or file system.
    pub root: Arc<dyn ObjectStore>,
    /// The archive's folder, ending in `/`.
    pub url: Url,
    /// Makes pre-signed URLs of its objects (S3); `None` for a store without them.
    pub signer: Option<Arc<dyn object_store::signer::Signer>>,
}

impl Location {
    /// The URL of table `name` (a folder under the archive's).
    pub fn table_url(&self, name: &str) -> Url {
        self.url
            .join(&format!("{name}/"))
            .expect("a table name is a plain path segment")
    }
}

/// Opens `archive_url` (see the module doc). The error says what is wrong with the URL.
pub fn open(archive_url: &str, s3: &S3Settings) -> Result<Location, String> {
    let url = parse(archive_url)?;
    let mut signer: Option<Arc<dyn object_store::signer::Signer>> = None;
    let root: Arc<dyn ObjectStore> = match url.scheme() {
        "file" => {
            let path = url
                .to_file_path()
                .map_err(|()| format!("archive_url {archive_url:?}: not a local path"))?;
            std::fs::create_dir_all(&path)
                .map_err(|e| format!("archive_url: creating {}: {e}", path.display()))?;
            Arc::new(LocalFileSystem::new())
        }
        "s3" | "s3a" => {
            let bucket = url.host_str().filter(|b| !b.is_empty()).ok_or_else(|| {
                format!("archive_url {archive_url:?}: no bucket (s3://BUCKET/prefix)")
            })?;
            let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
            if let Some(e) = s3
                .endpoint
                .clone()
                .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            {
                b = b
                    .with_allow_http(e.starts_with("http://"))
                    .with_endpoint(e.trim_end_matches('/'));
            }
            if let Some(r) = &s3.region {
                b = b.with_region(r);
            }
            if let Some(k) = &s3.access_key_id {
                b = b.with_access_key_id(k);
            }
            if let Some(k) = &s3.secret_access_key {
                b = b.with_secret_access_key(k);
            }
            let s3 = Arc::new(
                b.build()
                    .map_err(|e| format!("archive_url {archive_url:?}: {e}"))?,
            );
            signer = Some(s3.clone());
            s3
        }
        "memory" => Arc::new(InMemory::new()),
        other => {
            return Err(format!(
                "archive_url {archive_url:?}: scheme {other:?} is not supported (a path, file://, s3://, memory://)"
            ));
        }
    };
    register_log_stores();
    Ok(Location { root, url, signer })
}

/// `archive_url` as a URL ending in `/`: a plain path is a local folder.
fn parse(archive_url: &str) -> Result<Url, String> {
    let mut url = if archive_url.contains("://") {
        Url::parse(archive_url).map_err(|e| format!("archive_url {archive_url:?}: {e}"))?
    } else {
        let path = std::path::absolute(archive_url)
            .map_err(|e| format!("archive_url {archive_url:?}: {e}"))?;
        Url::from_directory_path(&path)
            .map_err(|()| format!("archive_url {archive_url:?}: not a usable local path"))?
    };
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    Ok(url)
}

/// The Delta log stores for the schemes `deltalake` registers none for itself: the default
/// one, which commits with `PutMode::Create` on the store it is given.
fn register_log_stores() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for scheme in ["s3://", "s3a://"] {
            logstore_factories().insert(
                Url::parse(scheme).expect("a scheme is a URL"),
                Arc::new(CreateCommits),
            );
        }
    });
}

struct CreateCommits;

impl LogStoreFactory for CreateCommits {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> deltalake::DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_problem() {
        assert!(
            open("ftp://x/y", &S3Settings::default())
                .unwrap_err()
                .contains("scheme \"ftp\"")
        );
        assert!(
            open("s3:///prefix", &S3Settings::default())
                .unwrap_err()
                .contains("no bucket")
        );
        let dir = tempfile::tempdir().unwrap();
        let loc = open(
            dir.path().join("a").to_str().unwrap(),
            &S3Settings::default(),
        )
        .unwrap();
        assert!(loc.url.as_str().ends_with("/a/"), "{}", loc.url);
        assert!(loc.table_url("events").as_str().ends_with("/a/events/"));
        let loc = open("s3://bucket/some/prefix", &S3Settings::default()).unwrap();
        assert_eq!(
            loc.table_url("events").as_str(),
            "s3://bucket/some/prefix/events/"
        );
    }
}
