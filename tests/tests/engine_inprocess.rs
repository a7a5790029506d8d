//! The engine running a primary and a secondary in one process, on real SQLite files (and
//! PostgreSQL when the lane is set up) and real local blob directories: replication through the
//! engine's own loops, graceful shutdown, a panicking strategy, and pausing.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use object_store::{ObjectStoreExt, PutPayload};
use replicable_core::blob_key::object_path;
use replicable_core::engine::config::IdleBackoff;
use replicable_core::engine::{Engine, EngineConfig, EngineHandle, set_site_replication_enabled};
use replicable_core::local_blobs::ConfinedLocalFileSystem;
use replicable_core::log_cursor::LogCursor;
use replicable_core::observer::SyncObserver;
use replicable_core::prelude::*;
use replicable_core::storage::{Backend, StoredRecord};
use replicable_core::{
    ReplicableDescriptor, ResourceError, ResourceTarget, Strategy, StrategyContext, SyncFailure,
    SyncRequest, find_replicable,
};
use replicable_strategies::{BlobStrategy, DatabaseStrategy};
use replicable_tests::{PostgresTarget, SqliteTarget};

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(BlobStrategy)]
pub struct EngineFile {
    #[replicable(id)]
    pub id: i64,
    #[replicable(blob)]
    pub key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(DatabaseStrategy)]
pub struct EngineRow {
    #[replicable(id)]
    pub id: i64,
    pub value: String,
}

/// A strategy whose sync panics: the engine must record it as the record's failure.
#[derive(Debug, Default)]
pub struct PanickingStrategy;

#[async_trait]
impl Strategy for PanickingStrategy {
    const NAME: &'static str = "PanickingStrategy";
    const DATA_TYPE: DataType = DataType::Database;
    const MUTABLE: bool = true;
    const VERIFIABLE: bool = false;

    async fn sync(&self, _: SyncRequest<'_>) -> Result<(), SyncFailure> {
        panic!("the strategy fell over")
    }
    async fn remove(
        &self,
        _: &StrategyContext,
        _: &ResourceTarget<'_>,
    ) -> Result<(), ResourceError> {
        Ok(())
    }
    async fn checksum(
        &self,
        _: &StrategyContext,
        _: &ResourceTarget<'_>,
        _: Option<&StoredRecord>,
    ) -> Result<String, ResourceError> {
        Ok(String::new())
    }
    async fn create_fixture(
        &self,
        _: &StrategyContext,
        _: &ResourceTarget<'_>,
        _: &serde_json::Value,
        _: u64,
    ) -> Result<String, ResourceError> {
        Ok(String::new())
    }
    async fn corrupt(
        &self,
        _: &StrategyContext,
        _: &ResourceTarget<'_>,
    ) -> Result<(), ResourceError> {
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(PanickingStrategy)]
pub struct Fragile {
    #[replicable(id)]
    pub id: i64,
}

fn fast() -> EngineConfig {
    let periods = replicable_core::engine::config::Periods {
        stuck_sweep: Duration::from_millis(500),
        backfill: Duration::from_millis(500),
        ..Default::default()
    };
    EngineConfig {
        idle: IdleBackoff {
            min: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
        periods,
        ..EngineConfig::default()
    }
}

fn descriptor(name: &str) -> &'static ReplicableDescriptor {
    find_replicable(name).unwrap().unwrap()
}

struct Pair {
    primary: Site,
    secondary: Site,
    _dirs: tempfile::TempDir,
}

fn pair(
    primary_db: Arc<dyn Backend>,
    secondary_db: Arc<dyn Backend>,
    observer: Option<Arc<dyn SyncObserver>>,
) -> Pair {
    let dirs = tempfile::tempdir().unwrap();
    let blobs = |name: &str| {
        let dir = dirs.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        Arc::new(ConfinedLocalFileSystem::new(dir).unwrap())
    };
    let primary = Site::primary("primary")
        .database(primary_db)
        .blob_store(blobs("primary"))
        .build()
        .unwrap();
    let builder = Site::secondary(
        "secondary",
        Arc::new(InProcessPrimary::new(primary.clone())),
    )
    .database(secondary_db)
    .blob_store(blobs("secondary"));
    let secondary = match observer {
        Some(observer) => builder.sync_observer(observer),
        None => builder,
    }
    .build()
    .unwrap();
    Pair {
        primary,
        secondary,
        _dirs: dirs,
    }
}

async fn publish_files_and_rows(primary: &Site, n: i64) {
    for id in 1..=n {
        let file = EngineFile {
            id,
            key: format!("files/{id}.bin"),
        };
        primary
            .blob_store()
            .put(
                &object_path(&file.key).unwrap(),
                PutPayload::from(format!("file {id}").repeat(id as usize)),
            )
            .await
            .unwrap();
        file.replicator(primary)
            .publish_created_event()
            .await
            .unwrap();
        let row = EngineRow {
            id,
            value: format!("value {id}"),
        };
        row.replicator(primary)
            .publish_created_event()
            .await
            .unwrap();
    }
}

async fn counts(site: &Site, name: &str) -> replicable_core::storage::RegistryCounts {
    site.registry_store().counts(name).await.unwrap()
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start(site: &Site, names: &[&str]) -> EngineHandle {
    Engine::new(site.clone(), names.iter().map(|n| descriptor(n)).collect())
        .config(fast())
        .start()
        .await
        .unwrap()
}

async fn replicates_and_verifies(p: Pair) {
    let n = 60;
    publish_files_and_rows(&p.primary, n).await;
    let primary = start(&p.primary, &["engine_file", "engine_row"]).await;
    // Backfill makes one pass at start and none after it, so that the records published
    // below reach the secondary through its log cursor only.
    let mut config = fast();
    config.periods.backfill = Duration::from_secs(3600);
    let secondary = Engine::new(
        p.secondary.clone(),
        ["engine_file", "engine_row"]
            .iter()
            .map(|n| descriptor(n))
            .collect(),
    )
    .config(config)
    .start()
    .await
    .unwrap();
    wait_until("every file is synced and verified", async || {
        let s = counts(&p.secondary, "engine_file").await;
        s.synced == n as u64 && s.verified == n as u64
    })
    .await;
    wait_until("every row is synced", async || {
        let s = counts(&p.secondary, "engine_row").await;
        s.synced == n as u64
    })
    .await;
    // Records published while both engines run.
    for id in n + 1..=n + 5 {
        let file = EngineFile {
            id,
            key: format!("files/{id}.bin"),
        };
        p.primary
            .blob_store()
            .put(
                &object_path(&file.key).unwrap(),
                PutPayload::from(format!("late file {id}")),
            )
            .await
            .unwrap();
        file.replicator(&p.primary)
            .publish_created_event()
            .await
            .unwrap();
    }
    let n = n + 5;
    wait_until("the late files are synced and verified", async || {
        let s = counts(&p.secondary, "engine_file").await;
        s.synced == n as u64 && s.verified == n as u64
    })
    .await;
    let report = secondary.shutdown().await;
    assert_eq!(report.released, 0);
    primary.shutdown().await;
    let rows = counts(&p.secondary, "engine_file").await;
    assert_eq!((rows.started, rows.failed, rows.pending), (0, 0, 0));
    // The syncs the log cursor queued (the late files at least) fed the lag histograms (rows
    // backfill found first have no event time). The histograms are per process: other tests of
    // this binary may add to them.
    let text = replicable_core::metrics::Metrics::new(SiteRole::Secondary, &[]).encode();
    let sample = |name: &str| {
        let prefix = format!("{name}{{replicable=\"engine_file\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0.0, |v| v.trim().parse::<f64>().unwrap())
    };
    assert!(sample("replicable_replication_lag_seconds_count") >= 1.0);
    assert!(sample("replicable_sync_delay_seconds_count") >= 1.0);
    assert!(sample("replicable_replication_lag_seconds_sum") > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_replicate_and_verify_every_record_on_sqlite() {
    let (a, b) = (SqliteTarget::new(), SqliteTarget::new());
    let p = pair(
        replicable_core::storage::open(&a.url).await.unwrap(),
        replicable_core::storage::open(&b.url).await.unwrap(),
        None,
    );
    replicates_and_verifies(p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_replicate_and_verify_every_record_on_postgres() {
    let (Some(a), Some(b)) = (PostgresTarget::new(), PostgresTarget::new()) else {
        return;
    };
    let p = pair(a.open().await, b.open().await, None);
    replicates_and_verifies(p).await;
}

/// Holds every sync right before its copy becomes visible.
#[derive(Debug, Default)]
struct HoldAll {
    reached: tokio::sync::Notify,
}

#[async_trait]
impl SyncObserver for HoldAll {
    async fn before_visible(&self, _: &str, _: i64) {
        self.reached.notify_one();
        std::future::pending::<()>().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_hands_back_unfinished_syncs_and_releases_the_cursor_lease() {
    let (a, b) = (SqliteTarget::new(), SqliteTarget::new());
    let hold = Arc::new(HoldAll::default());
    let p = pair(
        replicable_core::storage::open(&a.url).await.unwrap(),
        replicable_core::storage::open(&b.url).await.unwrap(),
        Some(hold.clone()),
    );
    publish_files_and_rows(&p.primary, 1).await;
    let secondary = start(&p.secondary, &["engine_file"]).await;
    tokio::time::timeout(Duration::from_secs(30), hold.reached.notified())
        .await
        .expect("a sync starts");
    assert_eq!(secondary.in_flight(), 1);
    let report = secondary.shutdown_within(Duration::from_millis(200)).await;
    assert_eq!(report.released, 1, "{report:?}");
    let row = EngineFile {
        id: 1,
        key: "files/1.bin".into(),
    }
    .replicator(&p.secondary)
    .registry()
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        row.state,
        SyncState::Pending,
        "handed back, not left started"
    );
    // The lease was released: another process's cursor takes over at once.
    let next = LogCursor::with_holder(&p.secondary, "the-next-process").intent_only(true);
    next.process_batch()
        .await
        .expect("the lease is free at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_strategy_is_recorded_as_that_records_failure() {
    let (a, b) = (SqliteTarget::new(), SqliteTarget::new());
    let p = pair(
        replicable_core::storage::open(&a.url).await.unwrap(),
        replicable_core::storage::open(&b.url).await.unwrap(),
        None,
    );
    Fragile { id: 7 }
        .replicator(&p.primary)
        .publish_created_event()
        .await
        .unwrap();
    let secondary = start(&p.secondary, &["fragile"]).await;
    wait_until("the panic is recorded", async || {
        Fragile { id: 7 }
            .replicator(&p.secondary)
            .registry()
            .await
            .unwrap()
            .is_some_and(|r| r.state == SyncState::Failed)
    })
    .await;
    let row = Fragile { id: 7 }
        .replicator(&p.secondary)
        .registry()
        .await
        .unwrap()
        .unwrap();
    let text = row.last_sync_failure.unwrap();
    assert!(
        text.contains("panicked") && text.contains("the strategy fell over"),
        "{text}"
    );
    assert_eq!(row.retry_count, 1);
    secondary.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_site_records_events_and_syncs_nothing_until_resumed() {
    let (a, b) = (SqliteTarget::new(), SqliteTarget::new());
    let p = pair(
        replicable_core::storage::open(&a.url).await.unwrap(),
        replicable_core::storage::open(&b.url).await.unwrap(),
        None,
    );
    set_site_replication_enabled(&p.secondary, false)
        .await
        .unwrap();
    publish_files_and_rows(&p.primary, 3).await;
    let secondary = start(&p.secondary, &["engine_file", "engine_row"]).await;
    wait_until("the events are recorded", async || {
        counts(&p.secondary, "engine_row").await.pending == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let paused = counts(&p.secondary, "engine_row").await;
    assert_eq!(paused.synced, 0, "nothing syncs while paused");
    set_site_replication_enabled(&p.secondary, true)
        .await
        .unwrap();
    secondary.wake();
    wait_until("everything syncs after resume", async || {
        counts(&p.secondary, "engine_row").await.synced == 3
    })
    .await;
    secondary.shutdown().await;
}

/// Idle engines pick up a new record as soon as it is published, not after their idle backoff:
/// the secondary's log cursor waits on the link for the next event, and the primary's engine
/// wakes its verification when its log grows. With a two-minute backoff, the record is synced
/// and verified well within the wait below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_engines_pick_up_a_new_event_without_waiting_out_their_backoff() {
    let (a, b) = (SqliteTarget::new(), SqliteTarget::new());
    let p = pair(
        replicable_core::storage::open(&a.url).await.unwrap(),
        replicable_core::storage::open(&b.url).await.unwrap(),
        None,
    );
    let mut slow = EngineConfig {
        idle: IdleBackoff {
            min: Duration::from_secs(120),
            max: Duration::from_secs(120),
        },
        ..EngineConfig::default()
    };
    // One sync at a time in all: whichever loop claims first holds the only slot.
    slow.sync.concurrency = 1;
    // Two data types sharing the sync capacity: a loop that finds it all held by the other
    // (for a sync, or for a moment while the other claims) must be woken when it comes back,
    // not at the end of its backoff.
    let run = |site: &Site| {
        Engine::new(
            site.clone(),
            vec![descriptor("engine_file"), descriptor("engine_row")],
        )
        .config(slow.clone())
        .start()
    };
    let primary = run(&p.primary).await.unwrap();
    let secondary = run(&p.secondary).await.unwrap();
    // Let both go idle (their first passes find nothing).
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish_files_and_rows(&p.primary, 1).await;
    wait_until("the new file and row are synced and verified", async || {
        let f = counts(&p.secondary, "engine_file").await;
        let r = counts(&p.secondary, "engine_row").await;
        f.synced == 1 && f.verified == 1 && r.synced == 1 && r.verified == 1
    })
    .await;
    secondary.shutdown().await;
    primary.shutdown().await;
}

/// A run of `checksum_succeeded` events of a replicable whose strategy does not verify is not
/// consumed together: each event is skipped on its own, with its reason, and the cursor moves
/// past them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_refused_checksum_events_is_skipped_event_by_event() {
    let (a, b) = (SqliteTarget::new(), SqliteTarget::new());
    let p = pair(
        replicable_core::storage::open(&a.url).await.unwrap(),
        replicable_core::storage::open(&b.url).await.unwrap(),
        None,
    );
    use replicable_core::event::NewEvent;
    use replicable_core::{EventKind, EventPayload, Resource};
    let events: Vec<NewEvent> = (1..=3)
        .map(|id| NewEvent {
            replicable_name: "fragile".into(),
            kind: EventKind::ChecksumSucceeded,
            payload: EventPayload {
                model_id: id,
                resource: Resource::Blob {
                    key: format!("fragile/{id}"),
                },
                generation: None,
                record: None,
                checksum: Some("0".repeat(64)),
            },
        })
        .collect();
    let ids = p
        .primary
        .event_log()
        .append(&events, p.primary.now())
        .await
        .unwrap();
    let report = replicable_core::log_cursor::catch_up(&p.secondary, 50)
        .await
        .unwrap();
    assert_eq!(
        (report.read, report.consumed, report.skipped),
        (3, 0, 3),
        "{report:?}"
    );
    assert_eq!(Some(&report.cursor), ids.last());
    let skipped = p
        .secondary
        .registry_store()
        .skipped_events(10)
        .await
        .unwrap();
    let mut skipped_ids: Vec<_> = skipped.iter().map(|s| s.event_id).collect();
    skipped_ids.sort_unstable();
    assert_eq!(skipped_ids, ids);
    for s in &skipped {
        assert!(
            s.reason.contains("does not support `checksum_succeeded`"),
            "{}",
            s.reason
        );
    }
}

/// The engine's cursor records a run of `created` / `updated` events of one replicable
/// together, and each event still counts as it would alone: a refused event in the run is
/// skipped on its own with its reason, the others mark their rows pending, a record named
/// again starts a new run, and the cursor moves past them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_changes_is_recorded_together_and_a_refused_one_skipped_alone() {
    let (a, b) = (SqliteTarget::new(), SqliteTarget::new());
    let p = pair(
        replicable_core::storage::open(&a.url).await.unwrap(),
        replicable_core::storage::open(&b.url).await.unwrap(),
        None,
    );
    use replicable_core::event::NewEvent;
    use replicable_core::{EventKind, EventPayload, Resource};
    let event = |id: i64, kind: EventKind| NewEvent {
        replicable_name: "engine_file".into(),
        kind,
        payload: EventPayload {
            model_id: id,
            resource: Resource::Blob {
                key: format!("files/{id}.bin"),
            },
            generation: None,
            record: None,
            checksum: None,
        },
    };
    // Blobs never change: `updated` is refused.
    let events = vec![
        event(1, EventKind::Created),
        event(2, EventKind::Created),
        event(3, EventKind::Updated),
        event(4, EventKind::Created),
        event(1, EventKind::Created),
        event(5, EventKind::Created),
        event(6, EventKind::Created),
    ];
    let ids = p
        .primary
        .event_log()
        .append(&events, p.primary.now())
        .await
        .unwrap();
    let cursor = LogCursor::with_holder(&p.secondary, "runs").intent_only(true);
    let report = cursor.process_batch().await.unwrap();
    assert_eq!(
        (report.read, report.consumed, report.skipped),
        (7, 6, 1),
        "{report:?}"
    );
    assert_eq!(Some(&report.cursor), ids.last());
    let skipped = p
        .secondary
        .registry_store()
        .skipped_events(10)
        .await
        .unwrap();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0].event_id, ids[2]);
    assert!(
        skipped[0].reason.contains("does not support `updated`"),
        "{}",
        skipped[0].reason
    );
    for id in [1, 2, 4, 5, 6] {
        let row = p
            .secondary
            .registry_store()
            .get("engine_file", id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("row {id} is recorded"));
        assert_eq!(row.state, SyncState::Pending, "row {id}");
        assert!(row.changed_at.is_some(), "row {id} notes its change");
    }
    assert!(
        p.secondary
            .registry_store()
            .get("engine_file", 3)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(counts(&p.secondary, "engine_file").await.pending, 5);
}
