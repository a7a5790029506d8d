//! Backfill racing the log cursor, on SQLite sites with real local blob directories: a link
//! that pauses right after backfill listed the primary's ids lets a test create and sync a
//! record exactly between that listing and backfill's read of the registry.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use object_store::{ObjectStoreExt, PutPayload};
use replicable_core::blob_key::object_path;
use replicable_core::event::{EventId, LogEntry};
use replicable_core::local_blobs::ConfinedLocalFileSystem;
use replicable_core::prelude::*;
use replicable_core::primary_link::BlobDownload;
use replicable_core::storage::StoredRecord;
use replicable_core::{LinkError, PrimaryLink, VerificationRecord, find_replicable, log_cursor};
use replicable_strategies::BlobStrategy;
use tokio::sync::Notify;

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(BlobStrategy)]
pub struct LateBlob {
    #[replicable(id)]
    pub id: i64,
    #[replicable(blob)]
    pub key: String,
}

fn late_blob(id: i64) -> LateBlob {
    LateBlob {
        id,
        key: format!("late/{id}.bin"),
    }
}

/// The in-process link, except that its next id listing waits, once listed, until released.
#[derive(Debug)]
struct PausingListing {
    inner: InProcessPrimary,
    armed: AtomicBool,
    reached: Notify,
    go: Notify,
}

#[async_trait]
impl PrimaryLink for PausingListing {
    async fn events_after(&self, after: EventId, limit: usize) -> Result<Vec<LogEntry>, LinkError> {
        self.inner.events_after(after, limit).await
    }
    async fn last_event_id(&self) -> Result<Option<EventId>, LinkError> {
        self.inner.last_event_id().await
    }
    async fn record(&self, name: &str, id: i64) -> Result<Option<StoredRecord>, LinkError> {
        self.inner.record(name, id).await
    }
    async fn records(&self, name: &str, ids: &[i64]) -> Result<Vec<StoredRecord>, LinkError> {
        self.inner.records(name, ids).await
    }
    async fn record_ids(
        &self,
        name: &str,
        range: Range<i64>,
        limit: usize,
    ) -> Result<Vec<i64>, LinkError> {
        let listed = self.inner.record_ids(name, range, limit).await?;
        if self.armed.swap(false, Ordering::SeqCst) {
            self.reached.notify_one();
            self.go.notified().await;
        }
        Ok(listed)
    }
    async fn verification(
        &self,
        name: &str,
        id: i64,
    ) -> Result<Option<VerificationRecord>, LinkError> {
        self.inner.verification(name, id).await
    }
    async fn open_blob(&self, name: &str, id: i64, key: &str) -> Result<BlobDownload, LinkError> {
        self.inner.open_blob(name, id, key).await
    }
    async fn repository_remote(
        &self,
        name: &str,
        id: i64,
        path: &str,
    ) -> Result<replicable_core::RepositoryRemote, LinkError> {
        self.inner.repository_remote(name, id, path).await
    }
}

async fn publish(primary: &Site, record: &LateBlob) {
    primary
        .blob_store()
        .put(
            &object_path(&record.key).unwrap(),
            PutPayload::from(format!("bytes of {}", record.id)),
        )
        .await
        .unwrap();
    record
        .replicator(primary)
        .publish_created_event()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_created_after_backfill_listed_the_primary_is_no_orphan() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for s in ["p", "s"] {
        std::fs::create_dir_all(d.join(s)).unwrap();
    }
    let open = |f: &str| format!("sqlite://{}", d.join(f).display());
    let primary = Site::primary("primary")
        .database(replicable_core::storage::open(&open("p.db")).await.unwrap())
        .blob_store(Arc::new(ConfinedLocalFileSystem::new(d.join("p")).unwrap()))
        .build()
        .unwrap();
    let link = Arc::new(PausingListing {
        inner: InProcessPrimary::new(primary.clone()),
        armed: AtomicBool::new(false),
        reached: Notify::new(),
        go: Notify::new(),
    });
    let secondary = Site::secondary("secondary", link.clone())
        .database(replicable_core::storage::open(&open("s.db")).await.unwrap())
        .blob_store(Arc::new(ConfinedLocalFileSystem::new(d.join("s")).unwrap()))
        .build()
        .unwrap();
    let descriptor = find_replicable("late_blob").unwrap().unwrap();

    // Record 1 is replicated; record 3 was deleted on the primary without its event reaching
    // the secondary: a real orphan.
    for id in [1, 3] {
        publish(&primary, &late_blob(id)).await;
    }
    log_cursor::catch_up(&secondary, 50).await.unwrap();
    for id in [1, 3] {
        assert!(matches!(
            late_blob(id).replicator(&secondary).sync().await.unwrap(),
            SyncOutcome::Synced { .. }
        ));
    }
    primary.records().delete("late_blob", 3).await.unwrap();

    // Backfill lists the primary's ids (1 only); before it reads the registry, record 2 is
    // created on the primary and synced on the secondary through its event.
    link.armed.store(true, Ordering::SeqCst);
    let (site, task) = (secondary.clone(), descriptor);
    let backfill =
        tokio::spawn(async move { replicable_core::backfill::backfill(&site, task, 100).await });
    tokio::time::timeout(Duration::from_secs(30), link.reached.notified())
        .await
        .expect("backfill listed the primary's ids");
    let late = late_blob(2);
    publish(&primary, &late).await;
    log_cursor::catch_up(&secondary, 50).await.unwrap();
    assert!(matches!(
        late.replicator(&secondary).sync().await.unwrap(),
        SyncOutcome::Synced { .. }
    ));
    link.go.notify_one();
    let report = backfill.await.unwrap().unwrap();

    assert_eq!(report.removed, 1, "only record 3 was an orphan: {report:?}");
    let row = late.replicator(&secondary).registry().await.unwrap();
    assert_eq!(
        row.map(|row| row.state),
        Some(SyncState::Synced),
        "the late record keeps its registry row"
    );
    assert!(
        secondary
            .blob_store()
            .head(&object_path(&late.key).unwrap())
            .await
            .is_ok(),
        "the late record keeps its copy"
    );
    assert!(
        late_blob(3)
            .replicator(&secondary)
            .registry()
            .await
            .unwrap()
            .is_none(),
        "the orphan's row is removed"
    );
    assert!(
        secondary
            .blob_store()
            .head(&object_path(&late_blob(3).key).unwrap())
            .await
            .is_err(),
        "the orphan's copy is removed"
    );
}
