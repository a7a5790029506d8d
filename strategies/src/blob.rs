//! The blob strategy: a resource is one object in the site's object store.
//!
//! A secondary streams the object from the primary into a temporary object under
//! `.replicable/tmp/` (multipart, so a blob of any size needs only a few parts of memory),
//! hashing it on the way. Only when the size and the SHA-256 match the primary's does the copy
//! replace the object under its real key. A small blob (up to [`SMALL_BLOB`]) is read whole
//! into memory, hashed and checked first, then (if the sync is still current) written under its
//! real key with one atomic `put`: no temporary object, no multipart upload, no rename. Blobs
//! are immutable: `created` and `deleted` events only.

use crate::checksum::StreamHasher;
use async_trait::async_trait;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use replicable_core::blob_key::{RESERVED_PREFIX, object_path};
use replicable_core::failure::shorten_name;
use replicable_core::local_blobs::refusal;
use replicable_core::storage::StoredRecord;
use replicable_core::{
    DataType, LinkError, ResourceError, ResourceTarget, Strategy, StrategyContext, SyncFailure,
    SyncRequest,
};

/// Size of one part of a multipart upload (the S3 minimum is 5 MiB).
pub const PART_SIZE: usize = 5 * 1024 * 1024;

/// Parts uploaded at once; with [`PART_SIZE`] this bounds the memory of one download.
pub const PART_CONCURRENCY: usize = 2;

/// Blobs up to this size are read whole, hashed and checked in memory, then written under
/// their key with one `put`; larger ones stream into a temporary object in parts and are
/// renamed into place.
pub const SMALL_BLOB: u64 = 1024 * 1024;

/// The memory all blob syncs of a process hold at once for the bytes they transfer, at most. A
/// sync reserves [`SMALL_BLOB`] before it asks the primary for the blob (a local read may begin
/// with the open), keeps it for a small blob, and trades it for [`STREAM_MEMORY`] for a larger
/// one (handing the first share back before it waits for the second, so no sync holds memory
/// while waiting for more). A high sync capacity (the engine runs 32 blob syncs at once) cannot
/// add up to more: 128 small blobs fit, and 8 large ones stream at once.
pub const TRANSFER_MEMORY: usize = 128 * 1024 * 1024;

/// What one streamed download holds: the part being filled and the parts being uploaded.
pub const STREAM_MEMORY: usize = PART_SIZE * (PART_CONCURRENCY + 1);

/// A budget of bytes in memory, shared by the syncs that reserve from it (counted in KiB).
///
/// Written here rather than taken from a crate: it is a semaphore whose permits are KiB, with
/// a reservation never larger than the whole budget (so one that fits always ends waiting).
#[derive(Debug)]
pub struct TransferBudget {
    kib: tokio::sync::Semaphore,
    total_kib: u32,
}

impl TransferBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        let total_kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .max(1);
        Self {
            kib: tokio::sync::Semaphore::new(total_kib as usize),
            total_kib,
        }
    }

    /// Waits until `bytes` (at most the whole budget, at least 1 KiB) are free and holds them
    /// until the reservation is dropped.
    pub async fn reserve(&self, bytes: u64) -> tokio::sync::SemaphorePermit<'_> {
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_kib);
        self.kib
            .acquire_many(kib)
            .await
            .expect("the budget's semaphore is never closed")
    }

    /// Bytes not reserved now.
    pub fn available(&self) -> u64 {
        self.kib.available_permits() as u64 * 1024
    }
}

/// The budget of every blob sync in this process: [`TRANSFER_MEMORY`].
static TRANSFER_BUDGET: std::sync::LazyLock<TransferBudget> =
    std::sync::LazyLock::new(|| TransferBudget::new(TRANSFER_MEMORY));

/// The memory budget the blob syncs of this process share (to watch it, or, in a test, to hold
/// it).
pub fn transfer_budget() -> &'static TransferBudget {
    &TRANSFER_BUDGET
}

/// Replicates blobs: objects in the site's object store, keyed by the model's
/// `#[replicable(blob)]` field.
#[derive(Debug, Default, Clone, Copy)]
pub struct BlobStrategy;

fn blob_key(resource: &replicable_core::Resource) -> Result<&str, ResourceError> {
    match resource {
        replicable_core::Resource::Blob { key } => Ok(key),
        other => Err(ResourceError::Refused {
            resource: other.to_string(),
            reason: "BlobStrategy replicates blobs only".into(),
        }),
    }
}

/// A store error as a resource error: a confined store's refusal stays a refusal.
fn io_error(key: &str, e: object_store::Error) -> ResourceError {
    if let Some(ResourceError::Refused { resource, reason }) = refusal(&e) {
        return ResourceError::Refused {
            resource: resource.clone(),
            reason: reason.clone(),
        };
    }
    ResourceError::Io {
        resource: format!("blob `{}`", shorten_name(key)),
        reason: e.to_string(),
    }
}

/// A store error during a sync, reason first.
fn store_failure(doing: &str, e: object_store::Error) -> SyncFailure {
    match refusal(&e) {
        Some(refused) => SyncFailure::new(refused.to_string()),
        None => SyncFailure::new(format!("{doing}: {e}")),
    }
}

fn temporary_path(name: &str, id: i64) -> Path {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    Path::from(format!(
        "{RESERVED_PREFIX}/tmp/{name}-{id}-{nanos}-{:016x}",
        fastrand::u64(..)
    ))
}

/// Streams `source` into a temporary object, returning its SHA-256 and size.
async fn download(
    store: &dyn ObjectStore,
    tmp: &Path,
    mut source: futures::stream::BoxStream<'static, Result<bytes::Bytes, LinkError>>,
) -> Result<(String, u64), SyncFailure> {
    let upload = store
        .put_multipart(tmp)
        .await
        .map_err(|e| store_failure("cannot start writing the download", e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
    let mut hasher = StreamHasher::new();
    while let Some(chunk) = source.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                let _ = writer.abort().await;
                return Err(SyncFailure::new(e.to_string()));
            }
        };
        if let Err(e) = writer.wait_for_capacity(PART_CONCURRENCY).await {
            // Abort, so an object store does not keep the parts already uploaded.
            let _ = writer.abort().await;
            return Err(store_failure("writing the download failed", e));
        }
        hasher.update(chunk.clone()).await;
        writer.put(chunk);
    }
    writer
        .finish()
        .await
        .map_err(|e| store_failure("writing the download failed", e))?;
    let size = hasher.len();
    Ok((hasher.finish().await, size))
}

/// Reads a small blob whole (refusing more bytes than announced), returning it and its SHA-256.
async fn read_small(
    mut source: futures::stream::BoxStream<'static, Result<bytes::Bytes, LinkError>>,
    expected_size: u64,
) -> Result<(PutPayload, String, u64), SyncFailure> {
    let mut parts = Vec::new();
    let mut hasher = StreamHasher::new();
    while let Some(chunk) = source.next().await {
        let chunk = chunk.map_err(|e| SyncFailure::new(e.to_string()))?;
        hasher.update(chunk.clone()).await;
        parts.push(chunk);
        if hasher.len() > expected_size {
            break;
        }
    }
    let size = hasher.len();
    Ok((PutPayload::from_iter(parts), hasher.finish().await, size))
}

/// The SHA-256 of an object, streamed.
pub async fn object_sha256(store: &dyn ObjectStore, path: &Path) -> Result<String, ResourceError> {
    let key = path.as_ref();
    let result = store.get(path).await.map_err(|e| match e {
        object_store::Error::NotFound { .. } => ResourceError::Missing {
            resource: format!("blob `{}`", shorten_name(key)),
        },
        e => io_error(key, e),
    })?;
    let mut stream = result.into_stream();
    let mut hasher = StreamHasher::new();
    while let Some(chunk) = stream.next().await {
        hasher.update(chunk.map_err(|e| io_error(key, e))?).await;
    }
    Ok(hasher.finish().await)
}

/// The bytes of the fixture blob for `seed`: between 16 and 20 KiB of seeded pseudo-random
/// data, so that different records have different content.
pub fn fixture_bytes(seed: u64) -> Vec<u8> {
    let len = 16 * 1024 + (seed % 4096) as usize;
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A copy is complete when it has the announced size and, where the primary has a checksum,
/// that checksum.
fn check_copy(
    expected_size: u64,
    size: u64,
    primary_checksum: Option<&str>,
    checksum: &str,
) -> Result<(), SyncFailure> {
    if size != expected_size {
        return Err(SyncFailure::new(format!(
            "Downloaded file size mismatch: expected {expected_size} bytes, got {size}"
        )));
    }
    if let Some(expected) = primary_checksum
        && expected != checksum
    {
        return Err(SyncFailure::new(format!(
            "Downloaded file checksum mismatch: expected {expected}, got {checksum}"
        )));
    }
    Ok(())
}

#[async_trait]
impl Strategy for BlobStrategy {
    const NAME: &'static str = "BlobStrategy";
    const DATA_TYPE: DataType = DataType::Blob;
    const MUTABLE: bool = false;

    fn validate(resource: &replicable_core::Resource) -> Result<(), ResourceError> {
        object_path(blob_key(resource)?).map(|_| ())
    }

    /// Streams the blob into a temporary object, checks its size and SHA-256, asks the
    /// request's guard, and only then renames it into place (a small blob is checked in memory
    /// and, once the guard agrees, put under its key in one atomic write). Only "not found" on
    /// the primary is a [`SyncFailure::missing_on_primary`]; a primary that cannot be read is an
    /// ordinary failure.
    async fn sync(&self, request: SyncRequest<'_>) -> Result<(), SyncFailure> {
        let key = blob_key(request.resource).map_err(|e| SyncFailure::new(e.to_string()))?;
        let path = object_path(key).map_err(|e| SyncFailure::new(e.to_string()))?;
        let small_share = TRANSFER_BUDGET.reserve(SMALL_BLOB).await;
        let download_source = match request
            .primary
            .open_blob(request.replicable_name, request.model_id, key)
            .await
        {
            Ok(source) => source,
            Err(LinkError::NotFound { .. }) => {
                return Err(SyncFailure::missing_on_primary(format!(
                    "blob `{}` is missing on the primary",
                    shorten_name(key)
                )));
            }
            Err(e) => return Err(SyncFailure::new(e.to_string())),
        };
        let expected_size = download_source.size;
        let store = request.context.blob_store();
        let tmp = temporary_path(request.replicable_name, request.model_id);
        let discard = |failure: SyncFailure| async {
            let _ = store.delete(&tmp).await;
            Err(failure)
        };
        if expected_size <= SMALL_BLOB {
            let _memory = small_share;
            let (bytes, checksum, size) = read_small(download_source.stream, expected_size).await?;
            check_copy(expected_size, size, request.primary_checksum, &checksum)?;
            // Complete and verified in memory: if the sync is still current, one put makes it
            // visible under its key. A put is atomic (an object store shows an object only
            // once whole; a local directory writes a hidden staged file and renames it), so no
            // temporary object is needed.
            request.ensure_current().await?;
            return store
                .put(&path, bytes)
                .await
                .map(|_| ())
                .map_err(|e| store_failure("cannot write the download", e));
        }
        drop(small_share);
        let memory = TRANSFER_BUDGET.reserve(STREAM_MEMORY as u64).await;
        let downloaded = download(&**store, &tmp, download_source.stream).await;
        drop(memory);
        let (checksum, size) = downloaded?;
        if let Err(failure) = check_copy(expected_size, size, request.primary_checksum, &checksum) {
            return discard(failure).await;
        }
        // Complete and verified: visible only if the sync is still current.
        if let Err(overtaken) = request.ensure_current().await {
            return discard(overtaken).await;
        }
        if let Err(e) = store.rename(&tmp, &path).await {
            return discard(store_failure("cannot move the download into place", e)).await;
        }
        Ok(())
    }

    async fn remove(
        &self,
        context: &StrategyContext,
        target: &ResourceTarget<'_>,
    ) -> Result<(), ResourceError> {
        let key = blob_key(target.resource)?;
        let path = object_path(key)?;
        match context.blob_store().delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io_error(key, e)),
        }
    }

    async fn checksum(
        &self,
        context: &StrategyContext,
        target: &ResourceTarget<'_>,
        _record: Option<&StoredRecord>,
    ) -> Result<String, ResourceError> {
        let path = object_path(blob_key(target.resource)?)?;
        object_sha256(&**context.blob_store(), &path).await
    }

    async fn create_fixture(
        &self,
        context: &StrategyContext,
        target: &ResourceTarget<'_>,
        _record: &serde_json::Value,
        seed: u64,
    ) -> Result<String, ResourceError> {
        let key = blob_key(target.resource)?;
        let path = object_path(key)?;
        let bytes = fixture_bytes(seed);
        let checksum = crate::sha256_hex(&bytes);
        context
            .blob_store()
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|e| io_error(key, e))?;
        Ok(checksum)
    }

    async fn corrupt(
        &self,
        context: &StrategyContext,
        target: &ResourceTarget<'_>,
    ) -> Result<(), ResourceError> {
        let key = blob_key(target.resource)?;
        let path = object_path(key)?;
        context
            .blob_store()
            .put(
                &path,
                PutPayload::from_static(b"corrupted behind the framework's back"),
            )
            .await
            .map_err(|e| io_error(key, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_transfer_budget_holds_back_what_does_not_fit_until_memory_is_freed() {
        let budget = TransferBudget::new(10 * 1024);
        let first = budget.reserve(6 * 1024).await;
        assert_eq!(budget.available(), 4 * 1024);
        // 5 KiB do not fit beside the 6 held: the reservation waits.
        let second = budget.reserve(5 * 1024);
        tokio::pin!(second);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), &mut second)
                .await
                .is_err()
        );
        drop(first);
        let second_held = tokio::time::timeout(std::time::Duration::from_secs(5), second)
            .await
            .expect("freed memory lets the waiting reservation through");
        assert_eq!(budget.available(), 5 * 1024);
        // Larger than the whole budget: takes all of it rather than waiting forever; nothing is
        // taken for less than 1 KiB.
        drop(second_held);
        let all = budget.reserve(1 << 40).await;
        assert_eq!(budget.available(), 0);
        drop(all);
        let _tiny = budget.reserve(0).await;
        assert_eq!(budget.available(), 9 * 1024);
    }

    #[test]
    fn fixtures_differ_by_seed_and_are_stable() {
        assert_eq!(fixture_bytes(3), fixture_bytes(3));
        assert_ne!(fixture_bytes(3), fixture_bytes(4));
        assert_eq!(fixture_bytes(0).len(), 16 * 1024);
    }
}
