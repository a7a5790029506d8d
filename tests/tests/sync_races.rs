//! Races between a running sync and the events that overtake it, on SQLite sites with real
//! local blob directories: an object store that pauses the step making a copy visible (the
//! rename of a large blob's temporary object, the one put of a small blob under its key) lets a
//! test land a deletion or a change exactly between the sync's guard and that step.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use replicable_core::blob_key::object_path;
use replicable_core::local_blobs::ConfinedLocalFileSystem;
use replicable_core::prelude::*;
use replicable_core::site::Timeouts;
use replicable_core::{find_replicable, log_cursor, workers};
use replicable_strategies::BlobStrategy;
use replicable_strategies::blob::SMALL_BLOB;
use tokio::sync::Notify;

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(BlobStrategy)]
pub struct RaceBlob {
    #[replicable(id)]
    pub id: i64,
    #[replicable(blob)]
    pub key: String,
}

/// A local blob directory whose next visible write (a rename, or a put outside the framework's
/// own `.replicable/` area) waits until released.
#[derive(Debug)]
struct PausingRename {
    inner: ConfinedLocalFileSystem,
    armed: AtomicBool,
    reached: Notify,
    go: Notify,
}

impl PausingRename {
    async fn pause_if_armed(&self) {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.reached.notify_one();
            self.go.notified().await;
        }
    }
}

impl std::fmt::Display for PausingRename {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PausingRename({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for PausingRename {
    async fn put_opts(&self, l: &Path, p: PutPayload, o: PutOptions) -> Result<PutResult> {
        if !l.as_ref().starts_with(".replicable/") {
            self.pause_if_armed().await;
        }
        self.inner.put_opts(l, p, o).await
    }
    async fn put_multipart_opts(
        &self,
        l: &Path,
        o: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(l, o).await
    }
    async fn get_opts(&self, l: &Path, o: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(l, o).await
    }
    async fn get_ranges(&self, l: &Path, r: &[std::ops::Range<u64>]) -> Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(l, r).await
    }
    fn delete_stream(
        &self,
        l: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(l)
    }
    fn list(&self, p: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(p)
    }
    async fn list_with_delimiter(&self, p: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(p).await
    }
    async fn copy_opts(&self, a: &Path, b: &Path, o: CopyOptions) -> Result<()> {
        self.inner.copy_opts(a, b, o).await
    }
    async fn rename_opts(&self, a: &Path, b: &Path, o: RenameOptions) -> Result<()> {
        self.pause_if_armed().await;
        self.inner.rename_opts(a, b, o).await
    }
}

struct Sites {
    primary: Site,
    secondary: Site,
    gate: Arc<PausingRename>,
    _dir: tempfile::TempDir,
}

async fn sites(timeouts: Timeouts) -> Sites {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for s in ["p", "s"] {
        std::fs::create_dir_all(d.join(s)).unwrap();
    }
    let open = |f: &str| format!("sqlite://{}", d.join(f).display());
    let primary_db = replicable_core::storage::open(&open("p.db")).await.unwrap();
    let secondary_db = replicable_core::storage::open(&open("s.db")).await.unwrap();
    let gate = Arc::new(PausingRename {
        inner: ConfinedLocalFileSystem::new(d.join("s")).unwrap(),
        armed: AtomicBool::new(false),
        reached: Notify::new(),
        go: Notify::new(),
    });
    let primary = Site::primary("primary")
        .database(primary_db)
        .blob_store(Arc::new(ConfinedLocalFileSystem::new(d.join("p")).unwrap()))
        .build()
        .unwrap();
    let secondary = Site::secondary(
        "secondary",
        Arc::new(InProcessPrimary::new(primary.clone())),
    )
    .database(secondary_db)
    .blob_store(gate.clone())
    .timeouts(timeouts)
    .build()
    .unwrap();
    Sites {
        primary,
        secondary,
        gate,
        _dir: dir,
    }
}

/// Bytes of a blob copied in memory and put in one step.
fn small(text: &'static str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

/// Bytes of a blob streamed into a temporary object and renamed into place.
fn large(fill: u8) -> Vec<u8> {
    vec![fill; SMALL_BLOB as usize + 1]
}

/// Waits until the sync reaches the paused step; a sync that never gets there fails the test
/// instead of hanging it.
async fn paused(s: &Sites) {
    tokio::time::timeout(Duration::from_secs(30), s.gate.reached.notified())
        .await
        .expect("the sync reached the step that makes its copy visible");
}

async fn publish(s: &Sites, record: &RaceBlob, bytes: Vec<u8>) {
    s.primary
        .blob_store()
        .put(&object_path(&record.key).unwrap(), PutPayload::from(bytes))
        .await
        .unwrap();
    record
        .replicator(&s.primary)
        .publish_created_event()
        .await
        .unwrap();
}

async fn deletion_between_the_guard_and_the_visible_write(bytes: Vec<u8>) {
    let s = sites(Timeouts::default()).await;
    let record = RaceBlob {
        id: 1,
        key: "a/one.bin".into(),
    };
    publish(&s, &record, bytes).await;
    s.gate.armed.store(true, Ordering::SeqCst);
    let (secondary, r) = (s.secondary.clone(), record.clone());
    let sync = tokio::spawn(async move { r.replicator(&secondary).sync().await });
    paused(&s).await; // the guard said yes; the visible write waits
    record
        .replicator(&s.primary)
        .publish_deleted_event()
        .await
        .unwrap();
    let report = log_cursor::catch_up(&s.secondary, 50).await.unwrap();
    assert_eq!(report.skipped, 0);
    s.gate.go.notify_one();
    sync.await.unwrap().unwrap();
    assert!(
        record
            .replicator(&s.secondary)
            .registry()
            .await
            .unwrap()
            .is_none(),
        "no registry row"
    );
    assert!(
        s.secondary
            .blob_store()
            .head(&object_path(&record.key).unwrap())
            .await
            .is_err(),
        "the copy made visible after the deletion was removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_between_the_guard_and_the_put_of_a_small_blob_leaves_no_copy_behind() {
    deletion_between_the_guard_and_the_visible_write(small("v1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_between_the_guard_and_the_rename_of_a_large_blob_leaves_no_copy_behind() {
    deletion_between_the_guard_and_the_visible_write(large(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_during_a_long_sync_does_not_get_the_live_sync_failed_as_abandoned() {
    let s = sites(Timeouts {
        heartbeat_interval: Duration::from_millis(100),
        claim_timeout: Duration::from_secs(1),
        ..Timeouts::default()
    })
    .await;
    let descriptor = find_replicable("race_blob").unwrap().unwrap();
    let record = RaceBlob {
        id: 2,
        key: "a/two.bin".into(),
    };
    publish(&s, &record, large(1)).await;
    s.gate.armed.store(true, Ordering::SeqCst);
    let (secondary, r) = (s.secondary.clone(), record.clone());
    let sync = tokio::spawn(async move { r.replicator(&secondary).sync().await });
    paused(&s).await;
    // A change arrives while the sync runs: the row notes it and stays started.
    publish(&s, &record, large(2)).await;
    log_cursor::catch_up(&s.secondary, 50).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        workers::fail_stuck(&s.secondary, descriptor, 10)
            .await
            .unwrap(),
        0,
        "the sync still heartbeats: it is not abandoned"
    );
    s.gate.go.notify_one();
    sync.await.unwrap().unwrap();
    let row = record
        .replicator(&s.secondary)
        .registry()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.state, SyncState::Pending, "the change is synced next");
    assert_eq!(row.retry_count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_newer_than_the_primary_stays_and_is_not_fetched_again_in_a_loop() {
    let s = sites(Timeouts::default()).await;
    let record = RaceBlob {
        id: 3,
        key: "a/three.bin".into(),
    };
    publish(&s, &record, small("v1")).await;
    let replicator = record.replicator(&s.secondary);
    assert_eq!(
        replicator.sync().await.unwrap(),
        SyncOutcome::Synced { generation: 1 }
    );
    // The secondary holds generation 5 (the primary was restored from an older backup).
    let mut row = s
        .secondary
        .registry_store()
        .get("race_blob", 3)
        .await
        .unwrap()
        .unwrap();
    row.synced_generation = Some(5);
    assert!(
        s.secondary
            .registry_store()
            .update("race_blob", &row)
            .await
            .unwrap()
    );
    assert_eq!(
        replicator.sync().await.unwrap(),
        SyncOutcome::Synced { generation: 5 },
        "kept, not sent back to pending"
    );
    let row = replicator.registry().await.unwrap().unwrap();
    assert_eq!(
        (row.state, row.synced_generation),
        (SyncState::Synced, Some(5))
    );
}
