//! Shared helpers of the cross-crate tests: the database lanes.
//!
//! The PostgreSQL lane reads `REPLICABLE_TEST_POSTGRES_URL` (set by `scripts/test`). Without it
//! the lane is skipped with a message, except under `CI=true`, where a missing lane is a failure.

use std::sync::Arc;

use async_trait::async_trait;
use replicable_core::storage::Backend;
use replicable_core::storage::sql::{SqlOptions, SqlStore};
use replicable_core::testing::storage::ConformanceTarget;

/// Whether this run is CI, where every lane must run.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The PostgreSQL URL of the test lane, or `None` (with a loud message) when it is not set up.
pub fn postgres_url() -> Option<String> {
    match std::env::var("REPLICABLE_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if in_ci() => panic!(
            "the PostgreSQL lane must run under CI: REPLICABLE_TEST_POSTGRES_URL is not set (scripts/test sets it)"
        ),
        _ => {
            eprintln!(
                "SKIPPED: PostgreSQL lane (REPLICABLE_TEST_POSTGRES_URL is not set; run ./scripts/test)"
            );
            None
        }
    }
}

/// A fresh SQLite file in a temporary directory.
pub struct SqliteTarget {
    /// The directory holding the file.
    pub dir: tempfile::TempDir,
    /// The database URL.
    pub url: String,
}

impl SqliteTarget {
    /// A new empty database.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("site.db").display());
        Self { dir, url }
    }
}

impl Default for SqliteTarget {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl ConformanceTarget for SqliteTarget {
    async fn handle(&self) -> Arc<dyn Backend> {
        SqlStore::open(&self.url)
            .await
            .expect("opening the SQLite test database")
    }
}

/// A fresh PostgreSQL schema on the lane's server.
pub struct PostgresTarget {
    /// The server URL.
    pub url: String,
    /// The schema holding this target's tables.
    pub schema: String,
}

impl PostgresTarget {
    /// A new empty schema, or `None` when the lane is not set up.
    pub fn new() -> Option<Self> {
        let url = postgres_url()?;
        let schema = format!("rt_{}_{:08x}", std::process::id(), fastrand_u32());
        Some(Self { url, schema })
    }

    /// Opens a store on this target's schema.
    pub async fn open(&self) -> Arc<SqlStore> {
        SqlStore::open_with(
            &self.url,
            SqlOptions {
                schema: Some(self.schema.clone()),
                max_connections: Some(4),
                ..SqlOptions::default()
            },
        )
        .await
        .expect("opening the PostgreSQL test schema")
    }
}

fn fastrand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .elapsed()
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish() as u32
}

#[async_trait]
impl ConformanceTarget for PostgresTarget {
    async fn handle(&self) -> Arc<dyn Backend> {
        self.open().await
    }
}

/// The S3-compatible endpoint and bucket of the test lane, or `None` (with a loud message) when
/// it is not set up.
pub fn s3_lane() -> Option<(String, String)> {
    match (
        std::env::var("REPLICABLE_TEST_S3_ENDPOINT"),
        std::env::var("REPLICABLE_TEST_S3_BUCKET"),
    ) {
        (Ok(endpoint), Ok(bucket)) if !endpoint.is_empty() => Some((endpoint, bucket)),
        _ if in_ci() => panic!(
            "the S3 lane must run under CI: REPLICABLE_TEST_S3_ENDPOINT is not set (scripts/test sets it)"
        ),
        _ => {
            eprintln!(
                "SKIPPED: S3 lane (REPLICABLE_TEST_S3_ENDPOINT is not set; run ./scripts/test)"
            );
            None
        }
    }
}

/// "Presigns" URLs of blobs under a test server's base URL:
/// `<base>/signed/<key>?signature=x`, standing in for an object store's presigned URLs.
#[derive(Debug)]
pub struct PointAt(pub String);

#[async_trait]
impl replicable_core::http::PresignGet for PointAt {
    async fn presigned_get(
        &self,
        path: &object_store::path::Path,
        _expires_in: std::time::Duration,
    ) -> Result<String, String> {
        Ok(format!("{}/signed/{path}?signature=x", self.0))
    }
}

/// A secondary's status report as a test sends it: cursor `cursor`, 4 synced and verified, 1
/// failed.
pub fn status_report(cursor: i64) -> replicable_core::link::SiteStatusReport {
    replicable_core::link::SiteStatusReport {
        cursor: Some(cursor),
        pending: 0,
        started: 0,
        synced: 4,
        failed: 1,
        verified: 4,
        events_behind: Some(0),
        lag_seconds: Some(0.0),
        version: "test".into(),
    }
}

/// Writes `bytes` under the blob key `key` in `site`'s object store (the key mapped as the
/// framework maps it, `blob_key::object_path`).
pub async fn put_blob(site: &replicable_core::Site, key: &str, bytes: &[u8]) {
    use object_store::ObjectStoreExt;
    let path = replicable_core::blob_key::object_path(key).expect("a valid key");
    site.blob_store()
        .put(&path, bytes.to_vec().into())
        .await
        .expect("blob written");
}

/// The bytes under the blob key `key` in `site`'s object store, `None` when there are none.
pub async fn get_blob(site: &replicable_core::Site, key: &str) -> Option<Vec<u8>> {
    use object_store::ObjectStoreExt;
    let path = replicable_core::blob_key::object_path(key).expect("a valid key");
    match site.blob_store().get(&path).await {
        Ok(r) => Some(r.bytes().await.expect("bytes").to_vec()),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => panic!("reading blob {key}: {e}"),
    }
}

/// The registered replicable `name` (a test's own models).
pub fn descriptor(name: &str) -> &'static replicable_core::ReplicableDescriptor {
    replicable_core::find_replicable(name)
        .expect("no duplicate names")
        .unwrap_or_else(|| panic!("replicable {name} registered"))
}

/// Polls `check` every 25 ms until it returns true (`true`) or `secs` pass (`false`).
pub async fn wait_for<F, Fut>(secs: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}
