//! A primary's checksum that arrives while a secondary's sync of the record runs: its
//! `checksum_succeeded` event is consumed while the row is still `started` (and leaves it
//! alone), after the sync asked for the checksum and found none. The copy must still go to
//! verification when the sync ends, not wait for the periodic pass that enables it.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use object_store::{ObjectStoreExt, PutPayload};
use replicable_core::blob_key::object_path;
use replicable_core::event::{EventId, LogEntry};
use replicable_core::log_cursor::LogCursor;
use replicable_core::prelude::*;
use replicable_core::primary_link::BlobDownload;
use replicable_core::storage::StoredRecord;
use replicable_core::{
    LinkError, PrimaryLink, SyncState, VerificationRecord, VerificationState, find_replicable,
    workers,
};
use replicable_strategies::BlobStrategy;

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(BlobStrategy)]
pub struct Artifact {
    #[replicable(id)]
    pub id: i64,
    #[replicable(blob)]
    pub key: String,
}

/// The in-process link, except that the primary's checksums stay hidden while the secondary's
/// registry row of the record is not yet synced: what a sync sees when it asks just before the
/// primary commits its checksum.
#[derive(Debug)]
struct ChecksumLate {
    inner: InProcessPrimary,
    secondary: OnceLock<Site>,
}

#[async_trait]
impl PrimaryLink for ChecksumLate {
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
        let secondary = self
            .secondary
            .get()
            .expect("set once the secondary is built");
        let row = secondary.registry_store().get(name, id).await.unwrap();
        if !row.is_some_and(|row| row.state == SyncState::Synced) {
            return Ok(None);
        }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checksum_consumed_while_its_record_syncs_still_sends_the_copy_to_verification() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let open = |f: &str| format!("sqlite://{}", d.join(f).display());
    let primary = Site::primary("primary")
        .database(replicable_core::storage::open(&open("p.db")).await.unwrap())
        .blob_directory(d.join("p"))
        .build()
        .unwrap();
    let link = Arc::new(ChecksumLate {
        inner: InProcessPrimary::new(primary.clone()),
        secondary: OnceLock::new(),
    });
    let secondary = Site::secondary("secondary", link.clone())
        .database(replicable_core::storage::open(&open("s.db")).await.unwrap())
        .blob_directory(d.join("s"))
        .build()
        .unwrap();
    link.secondary.set(secondary.clone()).unwrap();
    let descriptor = find_replicable("artifact").unwrap().unwrap();

    let artifact = Artifact {
        id: 1,
        key: "artifacts/1.bin".into(),
    };
    primary
        .blob_store()
        .put(
            &object_path(&artifact.key).unwrap(),
            PutPayload::from_static(b"artifact bytes"),
        )
        .await
        .unwrap();
    artifact
        .replicator(&primary)
        .publish_created_event()
        .await
        .unwrap();
    // The primary verifies: the checksum and its `checksum_succeeded` event.
    let verified = workers::verify_due(&primary, descriptor, 10, 1)
        .await
        .unwrap();
    assert_eq!(verified.succeeded, 1, "{verified:?}");
    // The secondary's cursor consumes both events before the sync runs: the checksum event
    // finds the row pending and leaves it.
    let cursor = LogCursor::new(&secondary).intent_only(true);
    assert_eq!(cursor.catch_up().await.unwrap().read, 2);

    // The sync finds no checksum (it is "not committed yet" for it) and records the copy as
    // waiting for one; the checksum is there by the time the row is synced.
    let synced = workers::sync_due(&secondary, descriptor, 10, 1)
        .await
        .unwrap();
    assert_eq!(synced.succeeded, 1, "{synced:?}");
    let row = secondary
        .registry_store()
        .get("artifact", 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.state, SyncState::Synced);
    assert_eq!(
        row.verification.verification_state,
        VerificationState::Pending,
        "the copy goes to verification, not waiting for a checksum that already arrived"
    );
    let checked = workers::verify_due(&secondary, descriptor, 10, 1)
        .await
        .unwrap();
    assert_eq!(checked.succeeded, 1, "{checked:?}");
}
