//! Fault behaviour across the crates: nothing is lost when a store, the primary or an event
//! fails.

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use replicable_core::clock::ManualClock;
use replicable_core::event::{EventId, LogEntry, NewEvent, StoredEvent};
use replicable_core::prelude::*;
use replicable_core::primary_link::BlobDownload;
use replicable_core::storage::memory::MemoryStore;
use replicable_core::storage::{EventLog, StoredRecord};
use replicable_core::testing::{Harness, block_on};
use replicable_core::{
    LinkError, PrimaryLink, StoreError, VerificationRecord, find_replicable, log_cursor, workers,
};
use replicable_strategies::BlobStrategy;

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(BlobStrategy)]
pub struct Attachment {
    #[replicable(id)]
    pub id: i64,
    #[replicable(blob)]
    pub key: String,
}

fn attachment(id: i64) -> Attachment {
    Attachment {
        id,
        key: format!("attachments/{id}"),
    }
}

/// An event log whose disk is full.
#[derive(Debug)]
struct FullDisk;

#[async_trait]
impl EventLog for FullDisk {
    async fn append(&self, _: &[NewEvent], _: DateTime<Utc>) -> Result<Vec<EventId>, StoreError> {
        Err(StoreError::Backend {
            store: "events.db".into(),
            operation: "append",
            reason: "no space left on device".into(),
        })
    }
    async fn read_after(&self, _: EventId, _: usize) -> Result<Vec<LogEntry>, StoreError> {
        Ok(Vec::new())
    }
    async fn last_event_id(&self) -> Result<Option<EventId>, StoreError> {
        Ok(None)
    }

    async fn delete_older_than(&self, _: DateTime<Utc>, _: usize) -> Result<u64, StoreError> {
        Ok(0)
    }
}

#[test]
fn an_event_that_cannot_be_written_fails_the_caller() {
    block_on(async {
        let primary = Site::primary("primary")
            .event_log(Arc::new(FullDisk))
            .in_memory()
            .build()
            .expect("a site");
        let record = attachment(3);
        let err = record
            .replicator(&primary)
            .publish_created_event()
            .await
            .expect_err("a lost event must be an error");
        let text = err.to_string();
        assert!(text.contains("attachment 3"), "{text}");
        assert!(text.contains("no space left on device"), "{text}");
        assert!(matches!(err, ReplicatorError::Store { .. }));
    });
}

/// A link that serves the primary's events with ids multiplied by ten and crafted events in
/// between, and can be told to fail.
#[derive(Debug)]
struct Tampered {
    inner: InProcessPrimary,
    extra: Mutex<Vec<LogEntry>>,
    fail_events: Mutex<bool>,
    fail_records: Mutex<bool>,
}

impl Tampered {
    fn new(primary: Site) -> Self {
        Self {
            inner: InProcessPrimary::new(primary),
            extra: Mutex::new(Vec::new()),
            fail_events: Mutex::new(false),
            fail_records: Mutex::new(false),
        }
    }
}

fn down(what: &str) -> LinkError {
    LinkError::Failed {
        what: what.into(),
        reason: "connection refused".into(),
    }
}

#[async_trait]
impl PrimaryLink for Tampered {
    async fn events_after(&self, after: EventId, limit: usize) -> Result<Vec<LogEntry>, LinkError> {
        if *self.fail_events.lock().unwrap() {
            return Err(down("events"));
        }
        let mut events = self.inner.events_after(after / 10, limit).await?;
        for entry in &mut events {
            match entry {
                LogEntry::Event(e) => e.id *= 10,
                LogEntry::Damaged(d) => d.id *= 10,
            }
        }
        events.retain(|e| e.id() > after);
        events.extend(
            self.extra
                .lock()
                .unwrap()
                .iter()
                .filter(|e| e.id() > after)
                .cloned(),
        );
        events.sort_by_key(LogEntry::id);
        events.truncate(limit);
        Ok(events)
    }
    async fn last_event_id(&self) -> Result<Option<EventId>, LinkError> {
        self.inner.last_event_id().await
    }
    async fn record(&self, name: &str, id: i64) -> Result<Option<StoredRecord>, LinkError> {
        if *self.fail_records.lock().unwrap() {
            return Err(down("record"));
        }
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
        if *self.fail_records.lock().unwrap() {
            return Err(down("verification"));
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

fn raw(id: EventId, replicable: &str, kind: &str, payload: serde_json::Value) -> LogEntry {
    LogEntry::Event(StoredEvent {
        id,
        replicable_name: replicable.into(),
        event_name: kind.into(),
        payload,
        created_at: Utc::now(),
    })
}

#[test]
fn malformed_events_are_recorded_and_skipped_without_stopping_the_cursor() {
    block_on(async {
        let h = Harness::<Attachment>::in_memory(attachment);
        let link = Arc::new(Tampered::new(h.primary.clone()));
        let secondary = Site::secondary("secondary", link.clone())
            .in_memory()
            .build()
            .expect("a site");
        // Events 10 and 20 come from the primary; 13 and 16 are malformed.
        h.create_and_publish(1).await;
        h.create_and_publish(4).await;
        link.extra.lock().unwrap().extend([
            raw(
                13,
                "attachment",
                "created",
                serde_json::json!({"model_id": "not a number"}),
            ),
            raw(16, "attachment", "exploded", serde_json::json!({})),
        ]);

        let report = log_cursor::catch_up(&secondary, 50).await.unwrap();
        assert_eq!(report.cursor, 20);
        assert_eq!(report.consumed, 2, "events 10 and 20 are consumed");
        assert_eq!(report.skipped, 2);
        let skipped = secondary.registry_store().skipped_events(10).await.unwrap();
        let reasons: Vec<_> = skipped
            .iter()
            .map(|s| (s.event_id, s.reason.clone()))
            .collect();
        assert!(
            reasons
                .iter()
                .any(|(id, r)| *id == 13 && r.contains("payload does not decode")),
            "{reasons:?}"
        );
        assert!(
            reasons
                .iter()
                .any(|(id, r)| *id == 16 && r.contains("unknown event kind `exploded`")),
            "{reasons:?}"
        );
        for id in [1, 4] {
            let row = attachment(id)
                .replicator(&secondary)
                .registry()
                .await
                .unwrap()
                .unwrap();
            assert_eq!(row.state, SyncState::Synced, "attachment {id}");
        }
    });
}

#[test]
fn an_unreachable_primary_stops_the_cursor_without_losing_events() {
    block_on(async {
        let h = Harness::<Attachment>::in_memory(attachment);
        let link = Arc::new(Tampered::new(h.primary.clone()));
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let secondary = Site::secondary("secondary", link.clone())
            .clock(clock.clone())
            .in_memory()
            .build()
            .expect("a site");
        h.create_and_publish(1).await;
        h.create_and_publish(2).await;

        *link.fail_events.lock().unwrap() = true;
        let err = log_cursor::process_batch(&secondary, 50).await.unwrap_err();
        assert_eq!(err.cursor, 0);
        assert!(err.to_string().contains("connection refused"), "{err}");

        // Events are readable but every record lookup fails: the events are consumed, and the
        // rows are failed with a retry time, not dropped.
        *link.fail_events.lock().unwrap() = false;
        *link.fail_records.lock().unwrap() = true;
        let report = log_cursor::process_batch(&secondary, 50).await.unwrap();
        assert_eq!((report.consumed, report.cursor), (2, 20));
        for id in [1, 2] {
            let row = attachment(id)
                .replicator(&secondary)
                .registry()
                .await
                .unwrap()
                .unwrap();
            assert_eq!(row.state, SyncState::Failed);
            assert!(
                row.last_sync_failure
                    .unwrap()
                    .contains("connection refused")
            );
            assert!(row.retry_at.is_some());
        }

        // The primary is back; once the retry time passes, the rows sync.
        *link.fail_records.lock().unwrap() = false;
        clock.advance(Duration::from_secs(120));
        let descriptor = find_replicable("attachment").unwrap().unwrap();
        let pass = workers::sync_due(&secondary, descriptor, 10, 2)
            .await
            .unwrap();
        assert_eq!((pass.claimed, pass.succeeded), (2, 2));
        assert!(
            secondary
                .registry_store()
                .skipped_events(10)
                .await
                .unwrap()
                .is_empty()
        );
    });
}

#[test]
fn a_sync_whose_worker_died_is_failed_after_the_claim_timeout() {
    block_on(async {
        let clock = Arc::new(ManualClock::new("2026-03-01T00:00:00Z".parse().unwrap()));
        let primary = Site::primary("primary")
            .in_memory()
            .build()
            .expect("a site");
        let secondary = Site::secondary(
            "secondary",
            Arc::new(InProcessPrimary::new(primary.clone())),
        )
        .clock(clock.clone())
        .in_memory()
        .build()
        .expect("a site");
        let record = attachment(9);
        record
            .replicator(&primary)
            .publish_created_event()
            .await
            .unwrap();
        // A worker starts the sync and dies.
        let attempt = record.replicator(&secondary).start_sync().await.unwrap();
        drop(attempt);
        let descriptor = find_replicable("attachment").unwrap().unwrap();

        // Within the claim timeout the row is left to its worker.
        clock.advance(Duration::from_secs(59));
        assert_eq!(
            workers::fail_stuck(&secondary, descriptor, 100)
                .await
                .unwrap(),
            0
        );
        // A minute without a heartbeat: the worker is taken for dead and the row is retried.
        clock.advance(Duration::from_secs(2));
        assert_eq!(
            workers::fail_stuck(&secondary, descriptor, 100)
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
        let text = row.last_sync_failure.unwrap();
        assert!(text.starts_with("Sync worker stopped responding"), "{text}");
        assert_eq!(row.retry_count, 1);
    });
}

#[test]
fn concurrent_sync_passes_take_each_row_once() {
    block_on(async {
        let h = Harness::<Attachment>::in_memory(attachment);
        for id in 1..=200 {
            h.create_and_publish(id).await;
        }
        let descriptor = find_replicable("attachment").unwrap().unwrap();
        let created = replicable_core::backfill::backfill(&h.secondary, descriptor, 64)
            .await
            .unwrap()
            .created;
        assert_eq!(created, 200);
        let (a, b) = tokio::join!(
            workers::sync_due(&h.secondary, descriptor, 150, 8),
            workers::sync_due(&h.secondary, descriptor, 150, 8),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.claimed + b.claimed, 200);
        assert_eq!(a.succeeded + b.succeeded, 200);
        let status = replicable_core::status::secondary_status(&h.secondary, "attachment")
            .await
            .unwrap();
        assert_eq!(status.synced_count, 200);
    });
}

#[test]
fn stale_claims_are_not_completed_over_a_newer_change() {
    block_on(async {
        let store = Arc::new(MemoryStore::new());
        let primary = Site::primary("primary")
            .in_memory()
            .build()
            .expect("a site");
        let secondary = Site::secondary(
            "secondary",
            Arc::new(InProcessPrimary::new(primary.clone())),
        )
        .database(store)
        .build()
        .expect("a site");
        let record = attachment(12);
        // The blob is missing: the first attempt will fail, but a pending mark lands first.
        record
            .replicator(&primary)
            .publish_created_event()
            .await
            .unwrap();
        let attempt = record.replicator(&secondary).start_sync().await.unwrap();
        record
            .replicator(&secondary)
            .target()
            .mark_pending()
            .await
            .unwrap();
        let outcome = attempt.run().await.unwrap();
        assert_eq!(outcome, SyncOutcome::ChangedDuringSync);
        let row = record
            .replicator(&secondary)
            .registry()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            row.state,
            SyncState::Pending,
            "the failure must not overwrite the newer pending mark"
        );
        assert_eq!(row.retry_count, 0);
    });
}
