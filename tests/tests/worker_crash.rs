//! A worker killed in the middle of a sync (its task aborted, its claim left `started`): the
//! row is failed once its heartbeat is older than the claim timeout, and retried, instead of
//! staying stuck for hours. On SQLite and PostgreSQL.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use object_store::ObjectStoreExt;
use replicable_core::event::{EventId, LogEntry};
use replicable_core::prelude::*;
use replicable_core::primary_link::BlobDownload;
use replicable_core::site::Timeouts;
use replicable_core::storage::{Backend, StoredRecord};
use replicable_core::{LinkError, PrimaryLink, VerificationRecord, find_replicable, workers};
use replicable_strategies::BlobStrategy;
use replicable_tests::{PostgresTarget, SqliteTarget};
use tokio::sync::watch;

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(BlobStrategy)]
pub struct Build {
    #[replicable(id)]
    pub id: i64,
    #[replicable(blob)]
    pub log: String,
}

/// A primary whose blob downloads hang until released.
#[derive(Debug)]
struct Hanging {
    inner: InProcessPrimary,
    open: watch::Receiver<bool>,
}

#[async_trait]
impl PrimaryLink for Hanging {
    async fn events_after(&self, after: EventId, limit: usize) -> Result<Vec<LogEntry>, LinkError> {
        self.inner.events_after(after, limit).await
    }
    async fn last_event_id(&self) -> Result<Option<EventId>, LinkError> {
        self.inner.last_event_id().await
    }
    async fn record(&self, name: &str, id: i64) -> Result<Option<StoredRecord>, LinkError> {
        self.inner.record(name, id).await
    }
    async fn record_ids(
        &self,
        name: &str,
        range: Range<i64>,
        limit: usize,
    ) -> Result<Vec<i64>, LinkError> {
        self.inner.record_ids(name, range, limit).await
    }
    async fn verification(
        &self,
        name: &str,
        id: i64,
    ) -> Result<Option<VerificationRecord>, LinkError> {
        self.inner.verification(name, id).await
    }
    async fn open_blob(&self, name: &str, id: i64, key: &str) -> Result<BlobDownload, LinkError> {
        let mut open = self.open.clone();
        open.wait_for(|open| *open)
            .await
            .expect("the test keeps the sender");
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

async fn killed_worker_is_retried(database: Arc<dyn Backend>) {
    // Claim ages are measured on the database's clock: real, short timeouts.
    let primary = Site::primary("primary")
        .in_memory()
        .build()
        .expect("a site");
    let (release, open) = watch::channel(false);
    let link = Arc::new(Hanging {
        inner: InProcessPrimary::new(primary.clone()),
        open,
    });
    let timeouts = Timeouts {
        heartbeat_interval: Duration::from_millis(50),
        claim_timeout: Duration::from_secs(1),
        ..Timeouts::default()
    };
    let secondary = Site::secondary("secondary", link)
        .database(database)
        .timeouts(timeouts)
        .build()
        .expect("a site");
    let record = Build {
        id: 1,
        log: "builds/1.log".into(),
    };
    primary
        .blob_store()
        .put(
            &object_store::path::Path::from(record.log.as_str()),
            b"ok".to_vec().into(),
        )
        .await
        .unwrap();
    record
        .replicator(&primary)
        .publish_created_event()
        .await
        .unwrap();
    secondary
        .registry_store()
        .mark_pending("build", 1, chrono::Utc::now())
        .await
        .unwrap();
    let descriptor = find_replicable("build").unwrap().unwrap();

    // A worker claims the row and hangs in the download, heartbeating.
    let worker_site = secondary.clone();
    let worker =
        tokio::spawn(async move { workers::sync_due(&worker_site, descriptor, 10, 1).await });
    let claimed = async {
        loop {
            let row = record
                .replicator(&secondary)
                .registry()
                .await
                .unwrap()
                .unwrap();
            if row.state == SyncState::Started {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), claimed)
        .await
        .expect("the worker claims the row");

    // While it heartbeats, the claim is its own, however long the sync takes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        workers::fail_stuck(&secondary, descriptor, 10)
            .await
            .unwrap(),
        0
    );

    // The worker dies. A minute later its claim is released as failed.
    worker.abort();
    let _ = worker.await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        workers::fail_stuck(&secondary, descriptor, 10)
            .await
            .unwrap(),
        1
    );
    let row = record
        .replicator(&secondary)
        .registry()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.state, SyncState::Failed);
    assert_eq!(row.retry_count, 1);
    let text = row.last_sync_failure.clone().unwrap();
    assert!(text.starts_with("Sync worker stopped responding"), "{text}");

    // After the retry time another worker syncs it (the retry time is moved to the past
    // rather than waited for).
    release.send(true).unwrap();
    let mut due = secondary
        .registry_store()
        .get("build", 1)
        .await
        .unwrap()
        .unwrap();
    due.retry_at = Some(chrono::Utc::now() - chrono::Duration::seconds(1));
    assert!(
        secondary
            .registry_store()
            .update("build", &due)
            .await
            .unwrap()
    );
    let pass = workers::sync_due(&secondary, descriptor, 10, 1)
        .await
        .unwrap();
    assert_eq!((pass.claimed, pass.succeeded), (1, 1));
    let row = record
        .replicator(&secondary)
        .registry()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.state, SyncState::Synced);
}

#[test]
fn a_killed_worker_s_claim_is_retried_on_sqlite() {
    replicable_core::testing::block_on(async {
        let target = SqliteTarget::new();
        let db = replicable_core::storage::sql::SqlStore::open(&target.url)
            .await
            .unwrap();
        killed_worker_is_retried(db).await;
    });
}

#[test]
fn a_killed_worker_s_claim_is_retried_on_postgres() {
    replicable_core::testing::block_on(async {
        let Some(target) = PostgresTarget::new() else {
            return;
        };
        killed_worker_is_retried(target.open().await).await;
    });
}
