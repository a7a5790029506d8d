//! The storage conformance suite: one set of checks every backend (in-memory, SQLite,
//! PostgreSQL, a user's own) must pass.
//!
//! Leases, claims and heartbeats are measured on the store's clock (the database's, for SQL;
//! the caller's, in memory), so the checks that depend on time read it from the store and wait
//! for real, short timeouts instead of moving a fake clock.
//!
//! ```ignore
//! replicable_core::storage_conformance_suite!(sqlite_conformance, || async { Some(MyTarget::new().await) });
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::event::{
    CursorGap, EventId, EventKind, EventPayload, LogEntry, NewEvent, SkippedEvent, StoredEvent,
};
use crate::domain::failure::SyncFailure;
use crate::domain::registry::{RegistryRecord, StuckCutoffs, SyncState};
use crate::domain::resource::Resource;
use crate::domain::retry::RetryPolicy;
use crate::domain::verification::{VerificationRecord, VerificationState};
use crate::storage::memory::MemoryStore;
use crate::storage::{
    Backend, CompletedVerification, EventLog, NotedChange, Publication, RecordStore,
    RegistryCounts, RegistryFilter, RegistryStore, SecondaryStatusRow, StoredRecord,
    VerificationCounts, VerificationStore,
};

/// A database under test.
#[async_trait]
pub trait ConformanceTarget: Send + Sync {
    /// A handle on the database: for SQL engines a new connection pool (as another process
    /// would have); in memory, the same store.
    async fn handle(&self) -> Arc<dyn Backend>;
}

/// The in-memory backend as a conformance target.
#[derive(Default)]
pub struct MemoryTarget {
    store: Arc<MemoryStore>,
}

#[async_trait]
impl ConformanceTarget for MemoryTarget {
    async fn handle(&self) -> Arc<dyn Backend> {
        self.store.clone()
    }
}

const NAME: &str = "conformance_item";

/// One handle seen through each of its roles.
#[derive(Clone)]
struct Db {
    events: Arc<dyn EventLog>,
    records: Arc<dyn RecordStore>,
    verification: Arc<dyn VerificationStore>,
    registry: Arc<dyn RegistryStore>,
}

async fn open(target: &dyn ConformanceTarget) -> Db {
    let backend = target.handle().await;
    Db {
        events: backend.clone(),
        records: backend.clone(),
        verification: backend.clone(),
        registry: backend,
    }
}

fn t0() -> DateTime<Utc> {
    // Microsecond precision: what every backend must round-trip exactly.
    "2030-01-01T00:00:00.123456Z".parse().unwrap()
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

/// The store's current time (see [`RegistryStore::now`]), to microseconds.
async fn store_now(db: &Db) -> DateTime<Utc> {
    let now = db.registry.now(Utc::now()).await.unwrap();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap()
}

/// `at` lies between `before` and `after`, give or take the precision of a database clock.
#[track_caller]
fn assert_between(at: Option<DateTime<Utc>>, before: DateTime<Utc>, after: DateTime<Utc>) {
    let slack = chrono::Duration::milliseconds(50);
    let at = at.expect("a time is set");
    assert!(
        before - slack <= at && at <= after + slack,
        "{at} is not between {before} and {after}"
    );
}

fn stored(entry: &LogEntry) -> &StoredEvent {
    entry.event().expect("a readable event")
}

fn event(id: i64, kind: EventKind) -> NewEvent {
    NewEvent {
        replicable_name: NAME.into(),
        kind,
        payload: EventPayload {
            model_id: id,
            resource: Resource::Blob {
                key: format!("items/{id}"),
            },
            generation: Some(1),
            record: Some(serde_json::json!({"id": id, "note": "ünïcode ✓"})),
            checksum: None,
        },
    }
}

/// Appended events get strictly increasing ids, in order, and read back whole.
pub async fn events_append_in_order_and_read_back(target: &dyn ConformanceTarget) {
    let db = open(target).await;
    assert_eq!(db.events.last_event_id().await.unwrap(), None);
    // A log that announces its appends announces each one, and nothing else.
    let mut appends = db.events.appends();
    let first = db
        .events
        .append(&[event(1, EventKind::Created)], t0())
        .await
        .unwrap();
    if let Some(appends) = appends.as_mut() {
        assert!(appends.has_changed().unwrap(), "an append is announced");
        appends.mark_unchanged();
    }
    let batch: Vec<NewEvent> = (2..=1200).map(|i| event(i, EventKind::Updated)).collect();
    let ids = db.events.append(&batch, t0()).await.unwrap();
    assert_eq!(ids.len(), batch.len());
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids must strictly increase"
    );
    assert!(ids[0] > first[0]);
    assert_eq!(
        db.events.last_event_id().await.unwrap(),
        ids.last().copied()
    );
    let read = db.events.read_after(first[0], 10).await.unwrap();
    assert_eq!(read.len(), 10);
    assert_eq!(read[0].id(), ids[0]);
    let e = stored(&read[0]);
    assert_eq!(e.event_name, "updated");
    assert_eq!(e.replicable_name, NAME);
    assert_eq!(e.created_at, t0());
    assert_eq!(e.payload, batch[0].payload_json());
    assert!(
        db.events
            .read_after(*ids.last().unwrap(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    if let Some(appends) = appends.as_mut() {
        assert!(
            appends.has_changed().unwrap(),
            "a batch append is announced"
        );
        appends.mark_unchanged();
    }
    assert!(db.events.append(&[], t0()).await.unwrap().is_empty());
    db.events.read_after(0, 1).await.unwrap();
    if let Some(appends) = appends.as_ref() {
        assert!(
            !appends.has_changed().unwrap(),
            "reads and empty appends announce nothing"
        );
    }
}

/// Writers appending concurrently (on their own handles) while a reader tails the log. Appends
/// may commit out of id order (PostgreSQL takes no append lock), so the reader does what the log
/// cursor does: it reads after the highest id it saw and reads again the ids it stepped over.
/// It sees every event exactly once, each read returns ascending ids after the one asked for,
/// and every id stepped over fills in (nothing is rolled back here).
pub async fn a_tailing_reader_never_skips_concurrently_appended_events(
    target: &dyn ConformanceTarget,
) {
    const WRITERS: i64 = 4;
    const PER_WRITER: i64 = 150;
    let reader = open(target).await;
    let mut cursor = reader.events.last_event_id().await.unwrap().unwrap_or(0);
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let db = open(target).await;
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while i < PER_WRITER {
                let n = (1 + (i + w) % 4).min(PER_WRITER - i);
                let batch: Vec<_> = (i..i + n)
                    .map(|k| event(w * 1_000_000 + k, EventKind::Created))
                    .collect();
                db.events.append(&batch, t0()).await.unwrap();
                i += n;
            }
        }));
    }
    let mut seen_ids = BTreeSet::new();
    let mut models = Vec::new();
    let mut stepped_over = BTreeSet::new();
    let total = (WRITERS * PER_WRITER) as usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while models.len() < total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reader saw {} of {total}; ids stepped over and never filled: {stepped_over:?}",
            models.len()
        );
        let mut read_any = false;
        for id in stepped_over.clone() {
            let again = reader.events.read_after(id - 1, 1).await.unwrap();
            if let Some(e) = again.first().filter(|e| e.id() == id) {
                assert!(seen_ids.insert(id), "event {id} read twice");
                models.push(stored(e).payload["model_id"].as_i64().unwrap());
                stepped_over.remove(&id);
                read_any = true;
            }
        }
        let batch = reader.events.read_after(cursor, 37).await.unwrap();
        for e in &batch {
            assert!(e.id() > cursor, "ids ascend after the one asked for");
            stepped_over.extend(cursor + 1..e.id());
            cursor = e.id();
            assert!(seen_ids.insert(cursor), "event {cursor} read twice");
            models.push(stored(e).payload["model_id"].as_i64().unwrap());
        }
        if batch.is_empty() && !read_any {
            tokio::task::yield_now().await;
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        reader
            .events
            .read_after(cursor, 10)
            .await
            .unwrap()
            .is_empty(),
        "events after the end"
    );
    assert!(stepped_over.is_empty(), "every id stepped over filled in");
    let unique: BTreeSet<_> = models.iter().collect();
    assert_eq!(unique.len(), total, "every event once, none twice");
}

/// Upserts bump the generation; copies are never replaced by older ones.
pub async fn records_keep_generations_and_never_downgrade(target: &dyn ConformanceTarget) {
    let db = open(target).await;
    let body = serde_json::json!({"id": 5, "v": 1});
    assert_eq!(db.records.upsert(NAME, 5, &body).await.unwrap(), 1);
    assert_eq!(
        db.records
            .upsert(NAME, 5, &serde_json::json!({"v": 2}))
            .await
            .unwrap(),
        2
    );
    let stored = db.records.get(NAME, 5).await.unwrap().unwrap();
    assert_eq!(
        (stored.generation, stored.body),
        (2, serde_json::json!({"v": 2}))
    );
    let copy = |generation| StoredRecord {
        model_id: 6,
        generation,
        body: serde_json::json!({"g": generation}),
    };
    assert!(db.records.put_unless_older(NAME, &copy(3)).await.unwrap());
    assert!(
        !db.records.put_unless_older(NAME, &copy(2)).await.unwrap(),
        "an older copy must not win"
    );
    assert!(
        db.records.put_unless_older(NAME, &copy(3)).await.unwrap(),
        "an equal generation is rewritten"
    );
    assert_eq!(
        db.records.get(NAME, 6).await.unwrap().unwrap().generation,
        3
    );
    for id in [1, 9, 3, 20] {
        db.records.upsert(NAME, id, &body).await.unwrap();
    }
    assert_eq!(
        db.records.ids(NAME, 3..10, 100).await.unwrap(),
        vec![3, 5, 6, 9]
    );
    assert_eq!(db.records.ids(NAME, 0..100, 2).await.unwrap(), vec![1, 3]);
    assert_eq!(
        db.records
            .ids(NAME, std::ops::Range { start: 10, end: 3 }, 100)
            .await
            .unwrap(),
        Vec::<i64>::new()
    );
    assert_eq!(db.records.count(NAME).await.unwrap(), 6);
    assert!(db.records.delete(NAME, 9).await.unwrap());
    assert!(!db.records.delete(NAME, 9).await.unwrap());
    assert!(db.records.get(NAME, 9).await.unwrap().is_none());
}

/// Verification rows: upsert to pending, compare-and-set updates, due claims, counts.
pub async fn verification_rows_follow_the_state_machine(target: &dyn ConformanceTarget) {
    let db = open(target).await;
    let v = |db: &Db, id| {
        let db = db.clone();
        async move { db.verification.get(NAME, id).await.unwrap() }
    };
    let fresh = db.verification.mark_pending(NAME, 1).await.unwrap();
    assert_eq!(fresh, VerificationRecord::new(1));
    // claim: pending rows move to started with the heartbeat set, on the store's clock
    let before = store_now(&db).await;
    let claimed = db.verification.claim(NAME, Utc::now(), 10).await.unwrap();
    let after = store_now(&db).await;
    assert_eq!(claimed.len(), 1);
    let mut row = claimed[0].clone();
    assert_eq!(
        row.verification.verification_state,
        VerificationState::Started
    );
    assert_between(row.verification.verification_started_at, before, after);
    assert_eq!(row.heartbeat_at, row.verification.verification_started_at);
    assert!(
        db.verification
            .claim(NAME, Utc::now(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    // compare-and-set
    let stale = row.clone();
    row.verification.succeed("ab".repeat(32), t0()).unwrap();
    assert!(db.verification.update(NAME, &row).await.unwrap());
    assert!(
        !db.verification.update(NAME, &stale).await.unwrap(),
        "stale version"
    );
    let stored = v(&db, 1).await.unwrap();
    assert_eq!(stored.succeeded_checksum(), Some("ab".repeat(32).as_str()));
    assert_eq!(stored.verification.verified_at, Some(t0()));
    assert_eq!(stored.version, row.version + 1);
    // failed rows are due only after their retry time
    let now = store_now(&db).await;
    let mut failing = db.verification.mark_pending(NAME, 2).await.unwrap();
    failing.start(now).unwrap();
    failing
        .verification
        .fail("boom", now, &RetryPolicy::default(), 0)
        .unwrap();
    assert!(db.verification.update(NAME, &failing).await.unwrap());
    failing.version += 1;
    assert!(
        db.verification
            .claim(NAME, Utc::now(), 10)
            .await
            .unwrap()
            .is_empty(),
        "not due for another 16 seconds"
    );
    failing.verification.verification_retry_at = Some(now - secs(1));
    assert!(db.verification.update(NAME, &failing).await.unwrap());
    let later = db.verification.claim(NAME, Utc::now(), 10).await.unwrap();
    assert_eq!(
        later.iter().map(|r| r.model_id).collect::<Vec<_>>(),
        vec![2]
    );
    assert_eq!(later[0].verification.verification_retry_count, 1);
    assert_eq!(
        later[0].verification.verification_failure.as_deref(),
        Some("boom")
    );
    // mark_pending sends an existing row back to pending (keeping its retry count: the
    // backoff) and bumps its version
    let reset = db.verification.mark_pending(NAME, 2).await.unwrap();
    assert_eq!(
        reset.verification.verification_state,
        VerificationState::Pending
    );
    assert_eq!(reset.verification.verification_retry_count, 1);
    assert_eq!(reset.version, later[0].version + 1);
    let counts = db.verification.counts(NAME).await.unwrap();
    assert_eq!((counts.total, counts.succeeded, counts.failed), (2, 1, 0));
    assert!(db.verification.delete(NAME, 2).await.unwrap());
    assert!(v(&db, 2).await.is_none());
}

async fn registry(db: &Db, id: i64) -> Option<RegistryRecord> {
    db.registry.get(NAME, id).await.unwrap()
}

/// Registry rows: upsert to pending, compare-and-set on the version, every transition stored
/// and read back exactly.
pub async fn registry_rows_round_trip_every_transition(target: &dyn ConformanceTarget) {
    let db = open(target).await;
    let policy = RetryPolicy::default();
    let fresh = db.registry.mark_pending(NAME, 7, t0()).await.unwrap();
    assert_eq!(fresh, RegistryRecord::new_pending(7, t0()));
    let mut row = fresh.clone();
    row.start(t0()).unwrap();
    assert!(db.registry.update(NAME, &row).await.unwrap());
    row.version += 1;
    assert!(
        !db.registry.update(NAME, &fresh).await.unwrap(),
        "stale version"
    );
    row.mark_failed(&SyncFailure::missing_on_primary("gone ✗"), t0(), &policy, 7)
        .unwrap();
    assert!(db.registry.update(NAME, &row).await.unwrap());
    row.version += 1;
    assert_eq!(
        registry(&db, 7).await.unwrap(),
        row,
        "a failed row reads back exactly"
    );
    row.start(t0() + secs(100)).unwrap();
    row.mark_synced(Some(4), true).unwrap();
    row.verification.start(t0()).unwrap();
    row.verification
        .fail_mismatch("cd".repeat(32), t0(), &policy, 3)
        .unwrap();
    row.heartbeat_at = Some(t0() + secs(5));
    assert!(db.registry.update(NAME, &row).await.unwrap());
    row.version += 1;
    assert_eq!(
        registry(&db, 7).await.unwrap(),
        row,
        "a synced, mismatched row reads back exactly"
    );
    // mark_pending on an existing row resets the schedule and keeps created_at
    let pending = db
        .registry
        .mark_pending(NAME, 7, t0() + secs(9))
        .await
        .unwrap();
    assert_eq!(pending.state, SyncState::Pending);
    assert_eq!(pending.created_at, t0());
    assert_eq!(
        (
            pending.retry_count,
            pending.retry_at,
            pending.last_synced_at
        ),
        (0, None, None)
    );
    assert_eq!(pending.version, row.version + 1);
    assert!(db.registry.delete(NAME, 7).await.unwrap());
    assert!(registry(&db, 7).await.is_none());
}

/// A change's publish time is noted on the row (the oldest one the copy does not hold), kept
/// through a claim, a plain resync and a newer change, and cleared when the row is synced.
pub async fn the_oldest_unsynced_change_time_is_kept_until_synced(target: &dyn ConformanceTarget) {
    let db = open(target).await;
    let changed = db
        .registry
        .mark_changed(NAME, 41, t0() + secs(2), t0())
        .await
        .unwrap();
    assert_eq!(changed.state, SyncState::Pending);
    assert_eq!(changed.changed_at, Some(t0()));
    // A newer change keeps the older time; an older one (out of order) replaces it.
    let newer = db
        .registry
        .mark_changed(NAME, 41, t0() + secs(3), t0() + secs(1))
        .await
        .unwrap();
    assert_eq!(newer.changed_at, Some(t0()));
    let older = db
        .registry
        .mark_changed(NAME, 41, t0() + secs(3), t0() - secs(1))
        .await
        .unwrap();
    assert_eq!(older.changed_at, Some(t0() - secs(1)));
    // A resync without an event keeps it.
    let resynced = db
        .registry
        .mark_pending(NAME, 41, t0() + secs(4))
        .await
        .unwrap();
    assert_eq!(resynced.changed_at, Some(t0() - secs(1)));
    // Claimed rows carry it; synced rows drop it.
    let mut claimed = db
        .registry
        .claim_for_sync(NAME, t0() + secs(5), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].changed_at, Some(t0() - secs(1)));
    let mut row = claimed.remove(0);
    row.mark_synced(Some(1), false).unwrap();
    assert!(db.registry.update(NAME, &row).await.unwrap());
    assert_eq!(registry(&db, 41).await.unwrap().changed_at, None);
    // A row queued without an event has none.
    let plain = db.registry.mark_pending(NAME, 42, t0()).await.unwrap();
    assert_eq!(plain.changed_at, None);
}

/// Claims take never-attempted rows first, then due failures by retry time (missing first),
/// and return them in that order; rows not due, started or synced are left alone. The claim's
/// times are the store's.
pub async fn sync_claims_follow_the_scheduling_order(target: &dyn ConformanceTarget) {
    let db = open(target).await;
    let policy = RetryPolicy::default();
    db.registry
        .insert_pending(NAME, &[10, 11, 12, 13, 14, 16], t0())
        .await
        .unwrap();
    let now = store_now(&db).await;
    let fail = |id: i64, retry_at: Option<DateTime<Utc>>| {
        let db = db.clone();
        async move {
            let mut row = registry(&db, id).await.unwrap();
            row.start(now).unwrap();
            row.mark_failed(&SyncFailure::new("x"), now, &policy, 0)
                .unwrap();
            row.retry_at = retry_at;
            assert!(db.registry.update(NAME, &row).await.unwrap());
        }
    };
    fail(10, Some(now - secs(10))).await;
    fail(11, Some(now - secs(40))).await;
    fail(12, Some(now + secs(3600))).await; // not due
    fail(16, None).await; // due, and before any retry time
    let mut synced = registry(&db, 13).await.unwrap();
    synced.start(now).unwrap();
    synced.mark_synced(None, true).unwrap();
    assert!(db.registry.update(NAME, &synced).await.unwrap());
    db.registry.insert_pending(NAME, &[15], t0()).await.unwrap();
    let before = store_now(&db).await;
    let claimed = db
        .registry
        .claim_for_sync(NAME, Utc::now(), 2)
        .await
        .unwrap();
    let after = store_now(&db).await;
    assert_eq!(
        claimed.iter().map(|r| r.model_id).collect::<Vec<_>>(),
        vec![14, 15],
        "never-attempted rows first"
    );
    for row in &claimed {
        assert_eq!(row.state, SyncState::Started);
        assert_between(row.last_synced_at, before, after);
        assert_eq!(row.heartbeat_at, row.last_synced_at);
    }
    let claimed = db
        .registry
        .claim_for_sync(NAME, Utc::now(), 10)
        .await
        .unwrap();
    assert_eq!(
        claimed.iter().map(|r| r.model_id).collect::<Vec<_>>(),
        vec![16, 11, 10],
        "then failures by retry time, missing first, in that order"
    );
    assert_eq!(claimed[1].retry_count, 1);
    assert!(
        db.registry
            .claim_for_sync(NAME, Utc::now(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    // verification claims take synced rows only
    let before = store_now(&db).await;
    let v = db
        .registry
        .claim_for_verification(NAME, Utc::now(), 10)
        .await
        .unwrap();
    let after = store_now(&db).await;
    assert_eq!(v.iter().map(|r| r.model_id).collect::<Vec<_>>(), vec![13]);
    assert_eq!(
        v[0].verification.verification_state,
        VerificationState::Started
    );
    assert_between(v[0].heartbeat_at, before, after);
    assert_eq!(v[0].verification.verification_started_at, v[0].heartbeat_at);
    assert!(
        db.registry
            .claim_for_verification(NAME, Utc::now(), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Verification claims, on the primary and on a secondary, take never-verified rows first,
/// then the least recently verified, and return them in that order.
pub async fn verification_claims_take_the_least_recently_verified_first(
    target: &dyn ConformanceTarget,
) {
    let db = open(target).await;
    let policy = RetryPolicy::default();
    let now = store_now(&db).await;
    // id -> verified_at (None: never verified); all due
    let plan: [(i64, Option<i64>); 5] = [
        (1, Some(300)),
        (2, None),
        (3, Some(100)),
        (4, Some(200)),
        (5, None),
    ];
    for (id, verified) in plan {
        // primary rows
        let mut row = db.verification.mark_pending(NAME, id).await.unwrap();
        if let Some(ago) = verified {
            row.start(now).unwrap();
            row.verification
                .succeed(format!("{id:064}"), now - secs(ago))
                .unwrap();
            row.verification.verification_state = VerificationState::Pending;
            assert!(db.verification.update(NAME, &row).await.unwrap());
        }
        // registry rows, synced
        db.registry.insert_pending(NAME, &[id], t0()).await.unwrap();
        let mut r = registry(&db, id).await.unwrap();
        r.start(now).unwrap();
        r.mark_synced(None, true).unwrap();
        if let Some(ago) = verified {
            r.verification.start(now).unwrap();
            r.verification
                .succeed(format!("{id:064}"), now - secs(ago))
                .unwrap();
            r.verification.verification_state = VerificationState::Pending;
        }
        assert!(db.registry.update(NAME, &r).await.unwrap());
    }
    // A failed row not yet due is not taken.
    db.registry.insert_pending(NAME, &[6], t0()).await.unwrap();
    let mut r = registry(&db, 6).await.unwrap();
    r.start(now).unwrap();
    r.mark_synced(None, true).unwrap();
    r.verification.start(now).unwrap();
    r.verification.fail("x", now, &policy, 0).unwrap();
    assert!(db.registry.update(NAME, &r).await.unwrap());
    let expected = vec![2, 5, 1];
    let first = db.verification.claim(NAME, Utc::now(), 3).await.unwrap();
    assert_eq!(
        first.iter().map(|r| r.model_id).collect::<Vec<_>>(),
        expected.clone(),
        "primary: never verified first, then the oldest"
    );
    let rest = db.verification.claim(NAME, Utc::now(), 10).await.unwrap();
    assert_eq!(rest.iter().map(|r| r.model_id).collect::<Vec<_>>(), [4, 3]);
    let first = db
        .registry
        .claim_for_verification(NAME, Utc::now(), 3)
        .await
        .unwrap();
    assert_eq!(
        first.iter().map(|r| r.model_id).collect::<Vec<_>>(),
        expected,
        "secondary: never verified first, then the oldest"
    );
    let rest = db
        .registry
        .claim_for_verification(NAME, Utc::now(), 10)
        .await
        .unwrap();
    assert_eq!(rest.iter().map(|r| r.model_id).collect::<Vec<_>>(), [4, 3]);
}

/// Bulk insert creates only missing rows; ids and counts follow.
pub async fn bulk_insert_skips_existing_rows_and_counts_follow(target: &dyn ConformanceTarget) {
    let db = open(target).await;
    let ids: Vec<i64> = (1..=2500).collect();
    assert_eq!(
        db.registry
            .insert_pending(NAME, &ids[..1000], t0())
            .await
            .unwrap(),
        1000
    );
    assert_eq!(
        db.registry.insert_pending(NAME, &ids, t0()).await.unwrap(),
        1500
    );
    assert_eq!(
        db.registry.insert_pending(NAME, &[], t0()).await.unwrap(),
        0
    );
    let page = db.registry.ids(NAME, 995..1_000_000, 10).await.unwrap();
    assert_eq!(page, (995..1005).collect::<Vec<_>>());
    let claimed = db.registry.claim_for_sync(NAME, t0(), 3).await.unwrap();
    let policy = RetryPolicy::default();
    let mut rows = claimed.into_iter();
    let mut synced = rows.next().unwrap();
    synced.mark_synced(None, true).unwrap();
    let mut failed = rows.next().unwrap();
    failed
        .mark_failed(&SyncFailure::new("x"), t0(), &policy, 0)
        .unwrap();
    for row in [&synced, &failed] {
        assert!(db.registry.update(NAME, row).await.unwrap());
    }
    let c = db.registry.counts(NAME).await.unwrap();
    assert_eq!(
        (c.registry, c.pending, c.started, c.synced, c.failed),
        (2500, 2497, 1, 1, 1)
    );
    assert_eq!(
        (c.verification_total, c.verified, c.verification_failed),
        (1, 0, 0)
    );
}

/// Two claimers on their own handles take 10,000 rows concurrently: each row exactly once.
pub async fn two_claimers_take_each_row_exactly_once(target: &dyn ConformanceTarget) {
    const ROWS: i64 = 10_000;
    let db = open(target).await;
    let ids: Vec<i64> = (1..=ROWS).collect();
    db.registry.insert_pending(NAME, &ids, t0()).await.unwrap();
    let mut claimers = Vec::new();
    for _ in 0..2 {
        let handle = open(target).await;
        claimers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = handle
                    .registry
                    .claim_for_sync(NAME, t0(), 97)
                    .await
                    .unwrap();
                if batch.is_empty() {
                    return mine;
                }
                mine.extend(batch.into_iter().map(|r| r.model_id));
            }
        }));
    }
    let mut all = Vec::new();
    for claimer in claimers {
        all.extend(claimer.await.unwrap());
    }
    let unique: BTreeSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), ROWS as usize, "no row claimed twice");
    assert_eq!(
        unique,
        ids.into_iter().collect::<BTreeSet<_>>(),
        "every row claimed"
    );
    let c = db.registry.counts(NAME).await.unwrap();
    assert_eq!(c.started, ROWS as u64);
}

/// Cutoffs at `now` with a sync (and verification) timeout and a claim timeout.
fn cutoffs_at(now: DateTime<Utc>, run: Duration, claim: Duration) -> StuckCutoffs {
    let before = |d: Duration| now - chrono::Duration::from_std(d).unwrap();
    StuckCutoffs {
        sync_started_before: before(run),
        verification_started_before: before(run),
        heartbeat_before: before(claim),
    }
}

/// A claim whose worker stops heartbeating is found as stuck after the claim timeout and,
/// once failed, is claimed again after its retry time. A heartbeat keeps a claim alive and is
/// refused once the row moved on. Times are the store's: the check waits for real, short
/// timeouts.
pub async fn abandoned_claims_are_found_and_retried(target: &dyn ConformanceTarget) {
    const HOURS_8: Duration = Duration::from_secs(8 * 3600);
    const CLAIM: Duration = Duration::from_secs(1);
    let db = open(target).await;
    db.registry
        .insert_pending(NAME, &[1, 2], t0())
        .await
        .unwrap();
    db.verification.mark_pending(NAME, 3).await.unwrap();
    let worker = open(target).await;
    let claimed = worker
        .registry
        .claim_for_sync(NAME, Utc::now(), 2)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    let v = worker
        .verification
        .claim(NAME, Utc::now(), 1)
        .await
        .unwrap();
    assert_eq!(v.len(), 1);
    let cutoffs = cutoffs_at(store_now(&db).await, HOURS_8, CLAIM);
    assert!(
        db.registry
            .stuck(NAME, &cutoffs, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        db.verification
            .stuck(NAME, &cutoffs, 10)
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(CLAIM * 3 / 2).await;
    // Worker 1 keeps heartbeating; the other dies.
    let alive = &claimed[0];
    assert!(
        worker
            .registry
            .heartbeat(NAME, alive.model_id, alive.version, Utc::now())
            .await
            .unwrap()
    );
    drop(worker);
    let now = store_now(&db).await;
    let cutoffs = cutoffs_at(now, HOURS_8, CLAIM);
    let stuck = db.registry.stuck(NAME, &cutoffs, 10).await.unwrap();
    assert_eq!(
        stuck.iter().map(|r| r.model_id).collect::<Vec<_>>(),
        vec![claimed[1].model_id]
    );
    let mut dead = stuck[0].clone();
    let policy = RetryPolicy::default();
    assert!(dead.fail_stuck_work(&cutoffs, (HOURS_8, HOURS_8), now, &policy, 0));
    assert!(db.registry.update(NAME, &dead).await.unwrap());
    assert!(
        !db.registry
            .heartbeat(NAME, dead.model_id, dead.version, Utc::now())
            .await
            .unwrap(),
        "the dead worker's version is gone"
    );
    // The first claim lost with its worker is due again at once.
    assert_eq!(
        registry(&db, dead.model_id).await.unwrap().retry_at,
        Some(now)
    );
    let again = db
        .registry
        .claim_for_sync(NAME, Utc::now(), 10)
        .await
        .unwrap();
    assert_eq!(
        again.iter().map(|r| r.model_id).collect::<Vec<_>>(),
        vec![dead.model_id]
    );
    assert_eq!(again[0].retry_count, 1);
    // Past the sync timeout even a heartbeating sync is stuck.
    assert!(
        db.registry
            .heartbeat(NAME, alive.model_id, alive.version, Utc::now())
            .await
            .unwrap()
    );
    let late = cutoffs_at(store_now(&db).await, CLAIM, HOURS_8);
    let stuck = db.registry.stuck(NAME, &late, 10).await.unwrap();
    assert!(stuck.iter().any(|r| r.model_id == alive.model_id));
    // Primary verification rows: same rules.
    let stuck = db.verification.stuck(NAME, &cutoffs, 10).await.unwrap();
    assert_eq!(
        stuck.iter().map(|r| r.model_id).collect::<Vec<_>>(),
        vec![3]
    );
    assert!(
        db.verification
            .heartbeat(NAME, 3, v[0].version, Utc::now())
            .await
            .unwrap()
    );
    let cutoffs = cutoffs_at(store_now(&db).await, HOURS_8, CLAIM);
    let stuck = db.verification.stuck(NAME, &cutoffs, 10).await.unwrap();
    assert!(stuck.is_empty(), "a fresh heartbeat keeps the claim");
}

/// One holder at a time; a lease expires when not renewed (on the store's clock); only the
/// holder releases it.
pub async fn cursor_lease_is_exclusive_until_it_expires(target: &dyn ConformanceTarget) {
    let a = open(target).await;
    let b = open(target).await;
    let ttl = Duration::from_secs(1);
    let take = |db: &Db, holder: &'static str| {
        let db = db.clone();
        async move {
            db.registry
                .acquire_lease("log_cursor", holder, Utc::now(), ttl)
                .await
                .unwrap()
        }
    };
    assert!(take(&a, "a").await);
    assert!(!take(&b, "b").await);
    assert!(take(&a, "a").await, "renewal");
    assert!(!take(&b, "b").await, "renewed lease holds");
    tokio::time::sleep(ttl * 3 / 2).await;
    assert!(take(&b, "b").await, "expired lease is taken");
    assert!(!take(&a, "a").await);
    a.registry.release_lease("log_cursor", "a").await.unwrap();
    assert!(!take(&a, "a").await, "only the holder releases");
    b.registry.release_lease("log_cursor", "b").await.unwrap();
    assert!(take(&a, "a").await);
    assert!(
        a.registry
            .acquire_lease("other_lease", "b", Utc::now(), ttl)
            .await
            .unwrap(),
        "leases are independent"
    );
}

/// The cursor position and skipped events persist.
pub async fn cursor_and_skipped_events_persist(target: &dyn ConformanceTarget) {
    let db = open(target).await;
    assert_eq!(db.registry.cursor().await.unwrap(), 0);
    db.registry.save_cursor(41).await.unwrap();
    db.registry.save_cursor(42).await.unwrap();
    assert_eq!(open(target).await.registry.cursor().await.unwrap(), 42);
    // Open id gaps are saved with the position, and replaced by the next save.
    assert_eq!(db.registry.cursor_gaps().await.unwrap(), vec![]);
    let gaps = vec![
        CursorGap {
            first: 43,
            last: 43,
            noticed_at: t0(),
        },
        CursorGap {
            first: 45,
            last: 47,
            noticed_at: t0() + chrono::Duration::milliseconds(1_500),
        },
    ];
    db.registry.save_cursor_and_gaps(48, &gaps).await.unwrap();
    let reopened = open(target).await;
    assert_eq!(reopened.registry.cursor().await.unwrap(), 48);
    assert_eq!(reopened.registry.cursor_gaps().await.unwrap(), gaps);
    db.registry
        .save_cursor_and_gaps(49, &gaps[1..])
        .await
        .unwrap();
    assert_eq!(db.registry.cursor_gaps().await.unwrap(), gaps[1..].to_vec());
    db.registry.save_cursor_and_gaps(50, &[]).await.unwrap();
    assert_eq!(db.registry.cursor_gaps().await.unwrap(), vec![]);
    assert_eq!(db.registry.cursor().await.unwrap(), 50);
    // Position and gaps read together.
    db.registry.save_cursor_and_gaps(51, &gaps).await.unwrap();
    assert_eq!(
        open(target).await.registry.cursor_state().await.unwrap(),
        (51, gaps.clone())
    );
    // A save that must hold the lease: refused while another holder's lease is live, done
    // once it is free (or the saver's own).
    let ttl = Duration::from_secs(60);
    let lease = "log_cursor";
    let other = open(target).await;
    assert!(
        other
            .registry
            .acquire_lease(lease, "other", Utc::now(), ttl)
            .await
            .unwrap()
    );
    let saved = db
        .registry
        .save_cursor_and_gaps_holding(60, &[], lease, "me", Utc::now(), ttl)
        .await
        .unwrap();
    assert!(!saved, "another holder's live lease refuses the save");
    assert_eq!(
        db.registry.cursor_state().await.unwrap(),
        (51, gaps.clone()),
        "a refused save changes nothing"
    );
    other.registry.release_lease(lease, "other").await.unwrap();
    // Another holder's lease that expired, and no lease at all, let the save through.
    assert!(
        other
            .registry
            .acquire_lease(lease, "other", Utc::now(), Duration::ZERO)
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    let saved = db
        .registry
        .save_cursor_and_gaps_holding(55, &[], lease, "me", Utc::now(), ttl)
        .await
        .unwrap();
    assert!(
        saved,
        "an expired lease of another holder does not refuse the save"
    );
    assert_eq!(db.registry.cursor().await.unwrap(), 55);
    other.registry.release_lease(lease, "other").await.unwrap();
    db.registry.release_lease(lease, "me").await.unwrap();
    let saved = db
        .registry
        .save_cursor_and_gaps_holding(56, &[], lease, "me", Utc::now(), ttl)
        .await
        .unwrap();
    assert!(saved, "with no lease at all the save goes through");
    assert_eq!(db.registry.cursor().await.unwrap(), 56);
    assert!(
        db.registry
            .acquire_lease(lease, "me", Utc::now(), ttl)
            .await
            .unwrap()
    );
    let saved = db
        .registry
        .save_cursor_and_gaps_holding(60, &gaps[1..], lease, "me", Utc::now(), ttl)
        .await
        .unwrap();
    assert!(saved, "the holder saves");
    assert_eq!(
        open(target).await.registry.cursor_state().await.unwrap(),
        (60, gaps[1..].to_vec())
    );
    let skipped = SkippedEvent {
        event_id: 40,
        replicable_name: "mystery".into(),
        event_name: "created".into(),
        reason: "no replicable named `mystery`".into(),
        skipped_at: t0(),
    };
    db.registry.record_skipped_event(&skipped).await.unwrap();
    db.registry.record_skipped_event(&skipped).await.unwrap();
    assert_eq!(db.registry.skipped_events(10).await.unwrap(), vec![skipped]);
}

/// The primary keeps the last status report of each secondary (a newer one replaces it, and it
/// survives reopening), and deletes exactly the events up to a given id.
pub async fn secondary_status_persists_and_consumed_events_are_deleted(
    target: &dyn ConformanceTarget,
) {
    let db = open(target).await;
    assert_eq!(db.registry.secondary_statuses().await.unwrap(), vec![]);
    let row = |name: &str, cursor: Option<EventId>, synced: u64| SecondaryStatusRow {
        secondary: name.into(),
        cursor,
        report: serde_json::json!({"synced": synced, "version": "ünïcode ✓"}),
        received_at: t0(),
    };
    db.registry
        .put_secondary_status(&row("eu", Some(3), 1))
        .await
        .unwrap();
    db.registry
        .put_secondary_status(&row("us", None, 2))
        .await
        .unwrap();
    db.registry
        .put_secondary_status(&row("eu", Some(5), 9))
        .await
        .unwrap();
    let reopened = open(target).await;
    let mut rows = reopened.registry.secondary_statuses().await.unwrap();
    rows.sort_by(|a, b| a.secondary.cmp(&b.secondary));
    assert_eq!(rows, vec![row("eu", Some(5), 9), row("us", None, 2)]);

    let ids = db
        .events
        .append(
            &(1..=5)
                .map(|i| event(i, EventKind::Created))
                .collect::<Vec<_>>(),
            t0(),
        )
        .await
        .unwrap();
    assert_eq!(
        db.events.delete_up_to(ids[2], 2).await.unwrap(),
        2,
        "the limit holds"
    );
    assert_eq!(db.events.delete_up_to(ids[2], 10).await.unwrap(), 1);
    assert_eq!(db.events.delete_up_to(ids[2], 10).await.unwrap(), 0);
    let left: Vec<EventId> = db
        .events
        .read_after(0, 10)
        .await
        .unwrap()
        .iter()
        .map(LogEntry::id)
        .collect();
    assert_eq!(left, ids[3..].to_vec());
}

/// Registry reads made at once (which a SQL store may answer with one statement) each get
/// their own row: rows of two replicables, ids without a row, a replicable without tables.
pub async fn concurrent_registry_reads_each_get_their_own_row(target: &dyn ConformanceTarget) {
    const OTHER: &str = "conformance_other";
    let db = open(target).await;
    let ids: Vec<i64> = (1..=40).collect();
    for &id in &ids {
        synced_row(&db, id, id % 2 == 0).await;
    }
    db.registry
        .insert_pending(OTHER, &[1, 2, 3], t0() + secs(9))
        .await
        .unwrap();
    let mut expected = Vec::new();
    for &id in &ids {
        expected.push((NAME, id, registry(&db, id).await));
    }
    for id in [1, 2, 3, 4] {
        expected.push((OTHER, id, db.registry.get(OTHER, id).await.unwrap()));
    }
    expected.push((NAME, 99, None));
    expected.push(("conformance_never_written", 1, None));
    assert!(expected[..40].iter().all(|(_, _, row)| row.is_some()));
    assert_eq!(
        expected[40..43]
            .iter()
            .map(|(_, _, row)| row.as_ref().map(|r| r.created_at))
            .collect::<Vec<_>>(),
        vec![Some(t0() + secs(9)); 3]
    );
    // Each asked several times over, all at once.
    let asks: Vec<&(&str, i64, Option<RegistryRecord>)> = expected
        .iter()
        .chain(expected.iter())
        .chain(expected.iter())
        .collect();
    let answers =
        futures::future::join_all(asks.iter().map(|(name, id, _)| db.registry.get(name, *id)))
            .await;
    for ((name, id, row), answer) in asks.iter().zip(answers) {
        assert_eq!(&answer.unwrap(), row, "{name} {id}");
    }
}

/// A run of changes marked together ([`RegistryStore::mark_changes`]) leaves every row as
/// marking each alone (`mark_changed` / `mark_changed_unless_held`) does: new rows, synced
/// ones, one whose sync runs, a failed one, a stale generation, a record named twice.
pub async fn changes_marked_together_match_each_marked_alone(target: &dyn ConformanceTarget) {
    const TOGETHER: &str = "conformance_together";
    const ALONE: &str = "conformance_alone";
    let db = open(target).await;
    let policy = RetryPolicy::default();
    for name in [TOGETHER, ALONE] {
        db.registry
            .insert_pending(name, &[2, 3, 4, 5, 7], t0())
            .await
            .unwrap();
        for id in [2, 3, 4, 5, 7] {
            let mut row = db.registry.get(name, id).await.unwrap().unwrap();
            row.start(t0() + secs(id)).unwrap();
            match id {
                // Synced at generation 5 (2 and 7) or without one (4).
                2 | 7 => row.mark_synced(Some(5), true).unwrap(),
                4 => row.mark_synced(None, true).unwrap(),
                5 => row
                    .mark_failed(&SyncFailure::new("boom"), t0(), &policy, 3)
                    .unwrap(),
                // 3: its sync runs.
                _ => {}
            }
            if id != 3 {
                row.changed_at = Some(t0() + secs(50));
            }
            assert!(db.registry.update(name, &row).await.unwrap());
        }
    }
    let change = |model_id: i64, at: i64, generation: Option<i64>| NotedChange {
        model_id,
        published_at: t0() + secs(at),
        generation,
    };
    let changes = [
        change(1, 100, Some(1)),
        change(2, 101, Some(5)), // stale: generation 5 is held, synced
        change(3, 102, Some(2)),
        change(4, 103, None),
        change(5, 104, Some(9)),
        change(6, 110, Some(1)),
        change(7, 40, Some(6)), // newer than held; published before the row's last change
        change(6, 105, Some(2)), // named again, published earlier
    ];
    let now = t0() + secs(200);
    let marked = db
        .registry
        .mark_changes(TOGETHER, &changes, now)
        .await
        .unwrap();
    let mut alone = 0;
    for c in &changes {
        let row = match c.generation {
            Some(generation) => db
                .registry
                .mark_changed_unless_held(ALONE, c.model_id, now, c.published_at, generation)
                .await
                .unwrap(),
            None => Some(
                db.registry
                    .mark_changed(ALONE, c.model_id, now, c.published_at)
                    .await
                    .unwrap(),
            ),
        };
        alone += u64::from(row.is_some());
    }
    assert_eq!(marked, 7, "every change but the stale one marks its row");
    assert_eq!(marked, alone);
    for id in 1..=7 {
        let together = db.registry.get(TOGETHER, id).await.unwrap();
        let alone = db.registry.get(ALONE, id).await.unwrap();
        assert_eq!(together, alone, "row {id}");
    }
    let row = |id| {
        let db = &db;
        async move { db.registry.get(TOGETHER, id).await.unwrap().unwrap() }
    };
    assert_eq!(row(1).await.state, SyncState::Pending);
    assert_eq!(row(1).await.changed_at, Some(t0() + secs(100)));
    assert_eq!(
        row(2).await.state,
        SyncState::Synced,
        "a stale change is ignored"
    );
    let running = row(3).await;
    assert_eq!(running.state, SyncState::Started);
    assert!(
        running.change_pending,
        "a running sync learns of the change"
    );
    assert_eq!(row(4).await.state, SyncState::Pending);
    let failed = row(5).await;
    assert_eq!((failed.state, failed.retry_count), (SyncState::Pending, 0));
    assert_eq!(row(6).await.changed_at, Some(t0() + secs(105)));
    assert_eq!(row(7).await.changed_at, Some(t0() + secs(40)));
    assert_eq!(
        db.registry.mark_changes(TOGETHER, &[], now).await.unwrap(),
        0
    );
}

/// A registry row taken through a sync to `synced`, with verification left as the sync leaves
/// it (pending) or `disabled` when `disabled`.
async fn synced_row(db: &Db, id: i64, disabled: bool) -> RegistryRecord {
    db.registry.insert_pending(NAME, &[id], t0()).await.unwrap();
    let mut row = registry(db, id).await.unwrap();
    row.start(t0()).unwrap();
    row.mark_synced(Some(1), !disabled).unwrap();
    if disabled {
        row.verification.disable();
    }
    assert!(db.registry.update(NAME, &row).await.unwrap());
    registry(db, id).await.unwrap()
}

/// `verification_total` counts synced rows whose verification is not disabled, and nothing
/// else.
pub async fn verification_total_counts_synced_rows_with_verification_on(
    target: &dyn ConformanceTarget,
) {
    let db = open(target).await;
    synced_row(&db, 1, false).await;
    synced_row(&db, 2, true).await;
    let mut verified = synced_row(&db, 3, false).await;
    verified.verification.start(t0()).unwrap();
    verified
        .verification
        .succeed("ab".repeat(32), t0())
        .unwrap();
    assert!(db.registry.update(NAME, &verified).await.unwrap());
    db.registry.insert_pending(NAME, &[4], t0()).await.unwrap(); // pending: disabled
    let mut failed = registry(&db, 4).await.unwrap();
    failed.start(t0()).unwrap();
    failed
        .mark_failed(&SyncFailure::new("x"), t0(), &RetryPolicy::default(), 0)
        .unwrap();
    assert!(db.registry.update(NAME, &failed).await.unwrap());
    let c = db.registry.counts(NAME).await.unwrap();
    assert_eq!((c.registry, c.synced, c.failed), (4, 3, 1));
    assert_eq!(
        (c.verification_total, c.verified, c.verification_failed),
        (2, 1, 0),
        "synced rows with verification disabled are not counted: {c:?}"
    );
}

/// Succeeded checksums older than a cutoff go back to verification pending, in batches,
/// oldest first, keeping the checksum; on a secondary only synced rows.
pub async fn reverification_sends_old_checksums_back_in_batches(target: &dyn ConformanceTarget) {
    let db = open(target).await;
    for id in 1..=5 {
        // primary: verified `id` hours before t0
        let mut row = db.verification.mark_pending(NAME, id).await.unwrap();
        row.start(t0()).unwrap();
        row.verification
            .succeed(format!("{id:064}"), t0() - chrono::Duration::hours(id))
            .unwrap();
        assert!(db.verification.update(NAME, &row).await.unwrap());
        // secondary
        let mut r = synced_row(&db, id, false).await;
        r.verification.start(t0()).unwrap();
        r.verification
            .succeed(format!("{id:064}"), t0() - chrono::Duration::hours(id))
            .unwrap();
        assert!(db.registry.update(NAME, &r).await.unwrap());
    }
    // A synced row gone back to pending (resync) is not re-verified on a secondary.
    db.registry.mark_pending(NAME, 5, t0()).await.unwrap();
    let cutoff = t0() - chrono::Duration::minutes(90); // rows 2..=5 are older
    assert_eq!(
        db.verification
            .reverify_older_than(NAME, cutoff, 2)
            .await
            .unwrap(),
        2
    );
    let state = |db: &Db, id| {
        let db = db.clone();
        async move { db.verification.get(NAME, id).await.unwrap().unwrap() }
    };
    let oldest = state(&db, 5).await;
    assert_eq!(
        oldest.verification.verification_state,
        VerificationState::Pending,
        "oldest first"
    );
    assert_eq!(
        oldest.verification.verification_checksum.as_deref(),
        Some(format!("{:064}", 5).as_str()),
        "the checksum is kept until recomputed"
    );
    assert_eq!(
        state(&db, 3).await.verification.verification_state,
        VerificationState::Succeeded,
        "a batch at a time"
    );
    assert_eq!(
        db.verification
            .reverify_older_than(NAME, cutoff, 10)
            .await
            .unwrap(),
        2,
        "rows 3 and 2"
    );
    assert_eq!(
        state(&db, 1).await.verification.verification_state,
        VerificationState::Succeeded,
        "newer than the cutoff"
    );
    assert_eq!(
        db.registry
            .reverify_older_than(NAME, cutoff, 10)
            .await
            .unwrap(),
        3,
        "rows 2, 3 and 4: row 5 is not synced"
    );
    let r = registry(&db, 2).await.unwrap();
    assert_eq!(
        r.verification.verification_state,
        VerificationState::Pending
    );
    assert_eq!(
        r.verification.verification_checksum.as_deref(),
        Some(format!("{:064}", 2).as_str())
    );
    assert_eq!(
        registry(&db, 1)
            .await
            .unwrap()
            .verification
            .verification_state,
        VerificationState::Succeeded
    );
    assert_eq!(
        db.registry
            .reverify_older_than(NAME, cutoff, 10)
            .await
            .unwrap(),
        0
    );
}

/// Records of the primary's catalogue without a verification row get a pending one, in
/// batches, lowest ids first; existing rows are left alone.
pub async fn verification_backfill_covers_records_without_a_row(target: &dyn ConformanceTarget) {
    let db = open(target).await;
    for id in [1, 2, 3, 4, 5] {
        db.records
            .upsert(NAME, id, &serde_json::json!({"id": id}))
            .await
            .unwrap();
    }
    let mut existing = db.verification.mark_pending(NAME, 2).await.unwrap();
    existing.start(t0()).unwrap();
    existing
        .verification
        .succeed("ab".repeat(32), t0())
        .unwrap();
    assert!(db.verification.update(NAME, &existing).await.unwrap());
    assert_eq!(db.verification.backfill_missing(NAME, 2).await.unwrap(), 2);
    assert!(db.verification.get(NAME, 1).await.unwrap().is_some());
    assert!(db.verification.get(NAME, 3).await.unwrap().is_some());
    assert!(db.verification.get(NAME, 4).await.unwrap().is_none());
    assert_eq!(db.verification.backfill_missing(NAME, 10).await.unwrap(), 2);
    assert_eq!(db.verification.backfill_missing(NAME, 10).await.unwrap(), 0);
    assert_eq!(
        db.verification.get(NAME, 5).await.unwrap().unwrap(),
        VerificationRecord::new(5)
    );
    assert_eq!(
        db.verification
            .get(NAME, 2)
            .await
            .unwrap()
            .unwrap()
            .verification
            .verification_state,
        VerificationState::Succeeded
    );
    let c = db.verification.counts(NAME).await.unwrap();
    assert_eq!((c.total, c.succeeded), (5, 1));
}

/// Verification turned on for synced rows whose verification is disabled; other rows are
/// left alone.
pub async fn enabling_verification_touches_disabled_synced_rows_only(
    target: &dyn ConformanceTarget,
) {
    let db = open(target).await;
    let disabled = synced_row(&db, 1, true).await;
    synced_row(&db, 2, true).await;
    synced_row(&db, 3, false).await;
    db.registry.insert_pending(NAME, &[4], t0()).await.unwrap();
    assert_eq!(
        db.registry
            .enable_verification(NAME, &[1, 3, 4, 99])
            .await
            .unwrap(),
        1
    );
    let row = registry(&db, 1).await.unwrap();
    assert_eq!(
        row.verification.verification_state,
        VerificationState::Pending
    );
    assert_eq!(
        row.version,
        disabled.version + 1,
        "a change bumps the version"
    );
    assert_eq!(
        registry(&db, 2)
            .await
            .unwrap()
            .verification
            .verification_state,
        VerificationState::Disabled,
        "not asked for"
    );
    assert_eq!(
        registry(&db, 4)
            .await
            .unwrap()
            .verification
            .verification_state,
        VerificationState::Disabled,
        "not synced"
    );
    assert_eq!(db.registry.enable_verification(NAME, &[]).await.unwrap(), 0);
    assert_eq!(
        db.registry.counts(NAME).await.unwrap().verification_total,
        2
    );
}

/// Reads of many rows by id (records and the primary's verification rows) return the rows
/// that exist, whatever the order of the ids and however many there are, and nothing for no
/// ids.
pub async fn many_rows_are_read_by_id_at_once(target: &dyn ConformanceTarget) {
    let db = open(target).await;
    assert!(
        db.records.get_many(NAME, &[1, 2]).await.unwrap().is_empty(),
        "nothing stored yet"
    );
    for id in [1, 2, 3] {
        db.records
            .upsert(NAME, id, &serde_json::json!({ "id": id }))
            .await
            .unwrap();
        db.verification.mark_pending(NAME, id).await.unwrap();
    }
    db.records
        .upsert(NAME, 2, &serde_json::json!({ "id": 2, "again": true }))
        .await
        .unwrap();
    // More ids than one statement takes, most of them missing.
    let mut ids: Vec<i64> = (100..1_600).collect();
    ids.extend([3, 2]);
    let mut records = db.records.get_many(NAME, &ids).await.unwrap();
    records.sort_by_key(|r| r.model_id);
    let mut expected = Vec::new();
    for id in [2, 3] {
        expected.push(db.records.get(NAME, id).await.unwrap().unwrap());
    }
    assert_eq!(records, expected);
    assert_eq!(records[0].generation, 2, "the record as it is now");
    assert!(db.records.get_many(NAME, &[]).await.unwrap().is_empty());
    let mut rows = db.verification.get_many(NAME, &[3, 99, 1]).await.unwrap();
    rows.sort_by_key(|r| r.model_id);
    let mut expected = Vec::new();
    for id in [1, 3] {
        expected.push(db.verification.get(NAME, id).await.unwrap().unwrap());
    }
    assert_eq!(rows, expected);
    assert!(
        db.verification
            .get_many(NAME, &[])
            .await
            .unwrap()
            .is_empty()
    );
}

/// Registry updates made at once (the sync and verification workers each end with one) are
/// each a compare-and-set of their own: every row written exactly as sent, of two updates of
/// one row from the same version exactly one written, an update from an older version
/// refused, and each caller told which.
pub async fn concurrent_registry_updates_each_get_their_own_answer(target: &dyn ConformanceTarget) {
    let db = open(target).await;
    let ids: Vec<i64> = (1..=60).collect();
    let mut rows = Vec::new();
    for &id in &ids {
        rows.push(synced_row(&db, id, false).await);
    }
    let policy = RetryPolicy::default();
    // Every column a worker writes moves: the sync's failure and backoff, the verification's
    // result and times, the heartbeat, the change marks.
    let sent: Vec<RegistryRecord> = rows
        .iter()
        .map(|row| {
            let mut row = row.clone();
            let id = row.model_id;
            if id % 2 == 0 {
                row.verification.start(t0() + secs(id)).unwrap();
                row.verification
                    .fail_mismatch(format!("local-{id}"), t0() + secs(id), &policy, 7)
                    .unwrap();
                row.mark_failed(
                    &SyncFailure::new(format!("failure of {id}")),
                    t0() + secs(id),
                    &policy,
                    3,
                )
                .unwrap();
            } else {
                row.verification.start(t0() + secs(id)).unwrap();
                row.verification
                    .succeed(format!("sum-{id}"), t0() + secs(2 * id))
                    .unwrap();
            }
            row.heartbeat_at = Some(t0() + secs(3 * id));
            row.changed_at = Some(t0() + secs(4 * id));
            row.change_pending = id % 3 == 0;
            row
        })
        .collect();
    // Rows 1-10 also get a rival update from the same version; row 60 one from before it.
    let mut rivals: Vec<RegistryRecord> = rows[..10]
        .iter()
        .map(|row| {
            let mut row = row.clone();
            row.last_sync_failure = Some(format!("rival of {}", row.model_id));
            row
        })
        .collect();
    let mut stale = rows[59].clone();
    stale.version -= 1;
    rivals.push(stale);
    let all: Vec<&RegistryRecord> = sent.iter().chain(rivals.iter()).collect();
    let answers = futures::future::join_all(all.iter().map(|row| db.registry.update(NAME, row)))
        .await
        .into_iter()
        .collect::<Result<Vec<bool>, _>>()
        .unwrap();
    let (sent_answers, rival_answers) = answers.split_at(sent.len());
    assert!(
        !rival_answers[10],
        "an update from an older version is refused"
    );
    for (i, row) in sent.iter().enumerate() {
        let stored = registry(&db, row.model_id).await.unwrap();
        let winner = match rival_answers.get(i).filter(|_| i < 10) {
            Some(&rival) => {
                assert_ne!(
                    sent_answers[i], rival,
                    "exactly one of two updates of row {} from one version is written",
                    row.model_id
                );
                if rival { &rivals[i] } else { row }
            }
            None => {
                assert!(sent_answers[i], "row {} is written", row.model_id);
                row
            }
        };
        let mut expected = winner.clone();
        expected.version += 1;
        assert_eq!(
            stored, expected,
            "row {} as its update sent it",
            row.model_id
        );
    }
}

/// A registry update the store refuses (here: under a name that is no replicable's) fails or
/// writes nothing for its own caller alone when it arrives with others: every other update is written exactly once
/// and its caller told so. (A store that wrote part of a group before the refusal and then
/// wrote each again alone would answer "changed meanwhile" for rows it had written, and the
/// workers would apply those changes twice.)
pub async fn a_refused_registry_update_fails_only_its_own_caller(target: &dyn ConformanceTarget) {
    let db = open(target).await;
    let mut sent = Vec::new();
    for id in 1..=20 {
        let mut row = synced_row(&db, id, false).await;
        row.heartbeat_at = Some(t0() + secs(100 + id));
        row.change_pending = true;
        sent.push(row);
    }
    let updates = sent.iter().map(|row| (NAME, row));
    // Refused ones after and among the rest, as they arrive at a busy store.
    let refused = sent[..5].iter().map(|row| ("not a replicable!", row));
    let all: Vec<(&str, &RegistryRecord)> = updates
        .clone()
        .take(10)
        .chain(refused)
        .chain(updates.skip(10))
        .collect();
    let answers =
        futures::future::join_all(all.iter().map(|(name, row)| db.registry.update(name, row)))
            .await;
    for ((name, row), answer) in all.iter().zip(&answers) {
        if *name == NAME {
            assert!(
                matches!(answer, Ok(true)),
                "row {} is written and its caller told so: {answer:?}",
                row.model_id
            );
        } else {
            // Refused (SQL stores) or no such row (the memory store): never written.
            assert!(
                !matches!(answer, Ok(true)),
                "an update under an invalid name writes nothing"
            );
        }
    }
    for row in &sent {
        let mut expected = row.clone();
        expected.version += 1;
        assert_eq!(
            registry(&db, row.model_id).await.unwrap(),
            expected,
            "row {} written exactly once",
            row.model_id
        );
    }
}

/// Record copies written at once (each sync keeps one) are each kept unless older than the
/// copy already there: every new copy stored as sent, an older one refused and told so, and
/// of two copies of one record the newer is what stays.
pub async fn concurrent_record_copies_keep_the_newest(target: &dyn ConformanceTarget) {
    let db = open(target).await;
    let copy = |id: i64, generation: i64| StoredRecord {
        model_id: id,
        generation,
        body: serde_json::json!({ "id": id, "generation": generation, "text": "ä \"quoted\"" }),
    };
    // Record 50 already holds generation 5.
    assert!(
        db.records
            .put_unless_older(NAME, &copy(50, 5))
            .await
            .unwrap()
    );
    let mut copies: Vec<StoredRecord> = (1..=40).map(|id| copy(id, id % 4 + 2)).collect();
    // Records 1-10 are also sent generation 1 (older), record 50 generation 3 (older).
    copies.extend((1..=10).map(|id| copy(id, 1)));
    copies.push(copy(50, 3));
    let answers = futures::future::join_all(
        copies
            .iter()
            .map(|record| db.records.put_unless_older(NAME, record)),
    )
    .await
    .into_iter()
    .collect::<Result<Vec<bool>, _>>()
    .unwrap();
    for (record, written) in copies.iter().zip(&answers).take(40) {
        assert!(written, "record {} is a new copy", record.model_id);
        assert_eq!(
            db.records
                .get(NAME, record.model_id)
                .await
                .unwrap()
                .as_ref(),
            Some(record),
            "record {} keeps its newest copy, whatever came when",
            record.model_id
        );
    }
    assert!(!answers[50], "an older copy than the one held is refused");
    assert_eq!(
        db.records.get(NAME, 50).await.unwrap().unwrap(),
        copy(50, 5)
    );
}

/// A new checksum of the primary (`checksum_succeeded`) sends synced copies verified against
/// an older one, or waiting for one, back to verification pending (their version bumped), and
/// leaves copies in any other state as they were.
pub async fn a_new_primary_checksum_sends_verified_and_waiting_copies_back(
    target: &dyn ConformanceTarget,
) {
    let db = open(target).await;
    synced_row(&db, 1, true).await;
    let mut verified = synced_row(&db, 2, false).await;
    verified.verification.start(t0()).unwrap();
    verified.verification.succeed("old".into(), t0()).unwrap();
    assert!(db.registry.update(NAME, &verified).await.unwrap());
    // Left alone: a copy already waiting for verification, one being verified, one not synced.
    synced_row(&db, 3, false).await;
    let mut running = synced_row(&db, 4, false).await;
    running.verification.start(t0()).unwrap();
    assert!(db.registry.update(NAME, &running).await.unwrap());
    db.registry.insert_pending(NAME, &[5], t0()).await.unwrap();
    let mut before = Vec::new();
    for id in 1..=5 {
        before.push(registry(&db, id).await.unwrap());
    }
    assert_eq!(
        db.registry
            .reverify(NAME, &[1, 2, 3, 4, 5, 99])
            .await
            .unwrap(),
        2
    );
    for (id, was) in (1..=5).zip(&before) {
        let now = registry(&db, id).await.unwrap();
        if id <= 2 {
            assert_eq!(
                now.verification.verification_state,
                VerificationState::Pending,
                "row {id}"
            );
            assert_eq!(now.verification.verification_started_at, None, "row {id}");
            assert_eq!(
                now.version,
                was.version + 1,
                "row {id}: a change bumps the version"
            );
            assert_eq!(
                now.state,
                SyncState::Synced,
                "row {id}: the copy stays synced"
            );
        } else {
            assert_eq!(&now, was, "row {id} is left as it was");
        }
    }
    assert_eq!(
        registry(&db, 2)
            .await
            .unwrap()
            .verification
            .verification_checksum,
        Some("old".into()),
        "the last checksum stays until the next verification"
    );
    assert_eq!(db.registry.reverify(NAME, &[]).await.unwrap(), 0);
    counts_exact(&db, "after reverify", store_now(&db).await).await;
}

/// A change to a generation a synced row already holds (a stale event) writes nothing; a
/// change to a newer generation, or to a record whose row is not synced or does not exist,
/// marks the row pending with the change's time, as `mark_changed` does.
pub async fn a_stale_change_leaves_a_synced_row_alone(target: &dyn ConformanceTarget) {
    let db = open(target).await;
    let held = synced_row(&db, 1, false).await;
    assert_eq!(held.synced_generation, Some(1));
    let published = t0() + secs(5);
    for stale in [0, 1] {
        assert_eq!(
            db.registry
                .mark_changed_unless_held(NAME, 1, t0(), published, stale)
                .await
                .unwrap(),
            None,
            "generation {stale} is held"
        );
    }
    assert_eq!(registry(&db, 1).await.unwrap(), held, "nothing written");
    let newer = db
        .registry
        .mark_changed_unless_held(NAME, 1, t0(), published, 2)
        .await
        .unwrap()
        .expect("a newer generation marks the row");
    assert_eq!(newer.state, SyncState::Pending);
    assert_eq!(newer.changed_at, Some(published));
    assert_eq!(newer, registry(&db, 1).await.unwrap());
    // No row yet, and a row not synced: marked whatever the generation.
    let created = db
        .registry
        .mark_changed_unless_held(NAME, 2, t0(), published, 1)
        .await
        .unwrap()
        .expect("a new row");
    assert_eq!(created.state, SyncState::Pending);
    assert_eq!(created.changed_at, Some(published));
    db.registry.insert_pending(NAME, &[3], t0()).await.unwrap();
    assert!(
        db.registry
            .mark_changed_unless_held(NAME, 3, t0(), published, 0)
            .await
            .unwrap()
            .is_some()
    );
    counts_exact(&db, "after stale and fresh changes", store_now(&db).await).await;
}

/// A sync claim made while a replication switch is off (the site's, or the replicable's)
/// takes nothing and leaves the rows due; once every switch is on again it takes them.
pub async fn a_sync_claim_takes_nothing_while_replication_is_paused(
    target: &dyn ConformanceTarget,
) {
    let db = open(target).await;
    db.registry
        .insert_pending(NAME, &[1, 2], t0())
        .await
        .unwrap();
    let switches = ["conformance_site", NAME];
    let claim = |db: &Db| {
        let registry = db.registry.clone();
        async move {
            registry
                .claim_for_sync_while_enabled(NAME, &switches, Utc::now(), 10)
                .await
                .unwrap()
        }
    };
    for off in switches {
        db.registry
            .set_replication_enabled(off, false)
            .await
            .unwrap();
        assert!(claim(&db).await.is_empty(), "`{off}` is off");
        assert_eq!(registry(&db, 1).await.unwrap().state, SyncState::Pending);
        db.registry
            .set_replication_enabled(off, true)
            .await
            .unwrap();
    }
    let mut claimed: Vec<i64> = claim(&db).await.iter().map(|r| r.model_id).collect();
    claimed.sort_unstable();
    assert_eq!(claimed, [1, 2]);
    assert_eq!(registry(&db, 2).await.unwrap().state, SyncState::Started);
}

/// The replication switch of a replicable is on by default and persists.
pub async fn the_replication_switch_persists(target: &dyn ConformanceTarget) {
    let db = open(target).await;
    assert!(db.registry.replication_enabled(NAME).await.unwrap());
    db.registry
        .set_replication_enabled(NAME, false)
        .await
        .unwrap();
    let other = open(target).await;
    assert!(!other.registry.replication_enabled(NAME).await.unwrap());
    assert!(
        other
            .registry
            .replication_enabled("another_item")
            .await
            .unwrap(),
        "switches are per replicable"
    );
    let all = |names: &'static [&'static str]| {
        let registry = other.registry.clone();
        async move { registry.replication_enabled_all(names).await.unwrap() }
    };
    assert!(!all(&["another_item", NAME]).await, "one switch off is off");
    assert!(all(&["another_item"]).await);
    assert!(all(&[]).await);
    other
        .registry
        .set_replication_enabled(NAME, true)
        .await
        .unwrap();
    assert!(db.registry.replication_enabled(NAME).await.unwrap());
    assert!(all(&["another_item", NAME]).await);
}

/// An operator's resync of many rows is scheduled behind a change that arrives meanwhile: a
/// large resync never stalls normal replication.
pub async fn a_resync_is_scheduled_behind_new_changes(target: &dyn ConformanceTarget) {
    let db = open(target).await;
    let ids: Vec<i64> = (1..=5).collect();
    db.registry.insert_pending(NAME, &ids, t0()).await.unwrap();
    for row in db
        .registry
        .claim_for_sync(NAME, Utc::now(), 10)
        .await
        .unwrap()
    {
        let mut row = row;
        row.mark_synced(Some(1), true).unwrap();
        assert!(db.registry.update(NAME, &row).await.unwrap());
    }
    assert_eq!(db.registry.resync_many(NAME, &ids).await.unwrap(), 5);
    db.registry.mark_pending(NAME, 100, t0()).await.unwrap();
    let first = db
        .registry
        .claim_for_sync(NAME, Utc::now(), 1)
        .await
        .unwrap();
    assert_eq!(
        first.iter().map(|r| r.model_id).collect::<Vec<_>>(),
        vec![100],
        "the new change goes first"
    );
    let rest = db
        .registry
        .claim_for_sync(NAME, Utc::now(), 10)
        .await
        .unwrap();
    assert_eq!(rest.len(), 5, "the resynced rows follow");
}

/// A failed verification sent back to pending keeps its retry count and backoff through every
/// store operation: the store writes what the row says, and claims do not reset it.
pub async fn a_failed_verification_sent_back_to_pending_keeps_its_retry_count(
    target: &dyn ConformanceTarget,
) {
    let db = open(target).await;
    let policy = RetryPolicy::default();
    let now = store_now(&db).await;
    // secondary
    let mut row = synced_row(&db, 1, false).await;
    row.verification.start(now).unwrap();
    row.verification.fail("x", now, &policy, 0).unwrap();
    row.verification.start(now).unwrap();
    row.verification.fail("x", now, &policy, 0).unwrap();
    assert_eq!(row.verification.verification_retry_count, 2);
    row.verification.verification_state = VerificationState::Pending;
    assert!(db.registry.update(NAME, &row).await.unwrap());
    let stored = registry(&db, 1).await.unwrap();
    assert_eq!(stored.verification.verification_retry_count, 2);
    assert_eq!(
        stored.verification.verification_retry_at,
        row.verification.verification_retry_at
    );
    let claimed = db
        .registry
        .claim_for_verification(NAME, Utc::now(), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].verification.verification_retry_count, 2);
    // primary
    let mut v = db.verification.mark_pending(NAME, 1).await.unwrap();
    v.start(now).unwrap();
    v.verification.fail("x", now, &policy, 0).unwrap();
    v.verification.verification_state = VerificationState::Pending;
    assert!(db.verification.update(NAME, &v).await.unwrap());
    let claimed = db.verification.claim(NAME, Utc::now(), 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].verification.verification_retry_count, 1);
    assert_eq!(
        claimed[0].verification.verification_failure.as_deref(),
        Some("x")
    );
}

fn publication(id: i64, kind: EventKind, mutable: bool, note: &str) -> Publication {
    let mut event = event(id, kind);
    event.payload.generation = None;
    event.payload.record = match kind {
        EventKind::Deleted => None,
        _ => Some(serde_json::json!({"id": id, "note": note})),
    };
    Publication {
        event,
        verifiable: true,
        mutable,
        in_catalogue: true,
    }
}

/// A publication writes the record (generation bumped and carried by the event), its
/// verification row and the event together; re-publishing `created` for an immutable resource
/// keeps a succeeded checksum; `deleted` removes the record and its verification row.
pub async fn publishing_writes_record_verification_and_event_together(
    target: &dyn ConformanceTarget,
) {
    let db = open(target).await;
    let published = db
        .events
        .publish(&publication(1, EventKind::Created, false, "a"), t0())
        .await
        .unwrap()
        .expect("every backend of the suite publishes in one transaction");
    assert_eq!(published.generation, Some(1));
    let record = db.records.get(NAME, 1).await.unwrap().unwrap();
    assert_eq!(
        (record.generation, record.body),
        (1, serde_json::json!({"id": 1, "note": "a"}))
    );
    assert_eq!(
        db.verification.get(NAME, 1).await.unwrap(),
        Some(VerificationRecord::new(1))
    );
    let read = db
        .events
        .read_after(published.event_id - 1, 10)
        .await
        .unwrap();
    assert_eq!(read.len(), 1);
    let e = stored(&read[0]);
    assert_eq!(
        (e.id, e.event_name.as_str()),
        (published.event_id, "created")
    );
    assert_eq!(
        e.payload["generation"], 1,
        "the event carries the new generation"
    );
    assert_eq!(e.payload["record"]["note"], "a");
    // The checksum succeeds; re-publishing `created` for an immutable resource keeps it.
    let mut v = db.verification.claim(NAME, Utc::now(), 10).await.unwrap();
    let mut v = v.remove(0);
    v.verification.succeed("ab".repeat(32), t0()).unwrap();
    assert!(db.verification.update(NAME, &v).await.unwrap());
    let again = db
        .events
        .publish(&publication(1, EventKind::Created, false, "b"), t0())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.generation, Some(2));
    assert!(again.event_id > published.event_id);
    let kept = db.verification.get(NAME, 1).await.unwrap().unwrap();
    assert_eq!(
        kept.succeeded_checksum(),
        Some("ab".repeat(32).as_str()),
        "an immutable resource keeps its checksum"
    );
    // A mutable resource's update (or created again) sends it back to pending.
    db.events
        .publish(&publication(1, EventKind::Updated, true, "c"), t0())
        .await
        .unwrap()
        .unwrap();
    let pending = db.verification.get(NAME, 1).await.unwrap().unwrap();
    assert_eq!(
        pending.verification.verification_state,
        VerificationState::Pending
    );
    assert_eq!(
        db.records.get(NAME, 1).await.unwrap().unwrap().generation,
        3
    );
    // Non-verifiable replicables get no verification row.
    let mut plain = publication(2, EventKind::Created, true, "p");
    plain.verifiable = false;
    let p = db.events.publish(&plain, t0()).await.unwrap().unwrap();
    assert_eq!(p.generation, Some(1));
    assert!(db.verification.get(NAME, 2).await.unwrap().is_none());
    // deleted
    let gone = db
        .events
        .publish(&publication(1, EventKind::Deleted, true, ""), t0())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gone.generation, None);
    assert!(db.records.get(NAME, 1).await.unwrap().is_none());
    assert!(db.verification.get(NAME, 1).await.unwrap().is_none());
    assert_eq!(
        db.events.last_event_id().await.unwrap(),
        Some(gone.event_id)
    );
}

/// A batch of publications is written in order in one go: consecutive event ids, each event
/// carrying its record's new generation, a record published twice in one batch bumped twice,
/// a deletion in the batch applied where it stands; batches larger than one statement's chunk
/// too; and an immutable resource keeps its succeeded checksum, as with single publishes.
pub async fn publishing_a_batch_writes_every_publication_in_order(target: &dyn ConformanceTarget) {
    let db = open(target).await;
    let batch = [
        publication(1, EventKind::Created, false, "a"),
        publication(2, EventKind::Created, false, "a"),
        publication(1, EventKind::Created, false, "b"),
        publication(3, EventKind::Updated, true, "a"),
        publication(2, EventKind::Deleted, false, ""),
    ];
    let published = db
        .events
        .publish_batch(&batch, t0())
        .await
        .unwrap()
        .expect("every backend of the suite publishes a batch in one transaction");
    let ids: Vec<EventId> = published.iter().map(|p| p.event_id).collect();
    assert_eq!(ids.len(), batch.len());
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    let generations: Vec<_> = published.iter().map(|p| p.generation).collect();
    assert_eq!(generations, [Some(1), Some(1), Some(2), Some(1), None]);
    let read = db.events.read_after(ids[0] - 1, 10).await.unwrap();
    let seen: Vec<_> = read
        .iter()
        .map(stored)
        .map(|e| {
            (
                e.id,
                e.event_name.clone(),
                e.payload["model_id"].as_i64(),
                e.payload["generation"].as_i64(),
            )
        })
        .collect();
    let kinds = ["created", "created", "created", "updated", "deleted"];
    let expected: Vec<_> = batch
        .iter()
        .zip(&ids)
        .zip(kinds)
        .zip(&generations)
        .map(|(((p, id), kind), g)| (*id, kind.to_owned(), Some(p.event.payload.model_id), *g))
        .collect();
    assert_eq!(seen, expected);
    let one = db.records.get(NAME, 1).await.unwrap().unwrap();
    assert_eq!((one.generation, one.body["note"].clone()), (2, "b".into()));
    assert!(db.records.get(NAME, 2).await.unwrap().is_none());
    assert!(db.verification.get(NAME, 2).await.unwrap().is_none());
    assert_eq!(
        db.records.get(NAME, 3).await.unwrap().unwrap().generation,
        1
    );
    for id in [1, 3] {
        let row = db.verification.get(NAME, id).await.unwrap().unwrap();
        assert_eq!(
            row.verification.verification_state,
            VerificationState::Pending
        );
    }

    // An immutable resource's succeeded checksum is kept by a batch re-publishing `created`.
    let mut claimed = db.verification.claim(NAME, Utc::now(), 10).await.unwrap();
    claimed.retain(|row| row.model_id == 1);
    let mut row = claimed.remove(0);
    row.verification.succeed("ab".repeat(32), t0()).unwrap();
    assert!(db.verification.update(NAME, &row).await.unwrap());
    db.events
        .publish_batch(&[publication(1, EventKind::Created, false, "c")], t0())
        .await
        .unwrap()
        .unwrap();
    let kept = db.verification.get(NAME, 1).await.unwrap().unwrap();
    assert_eq!(kept.succeeded_checksum(), Some("ab".repeat(32).as_str()));

    // More than one statement's worth (5,000 rows).
    let large: Vec<_> = (1_000..6_001)
        .map(|id| publication(id, EventKind::Created, false, "large"))
        .collect();
    let published = db
        .events
        .publish_batch(&large, t0())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(published.len(), large.len());
    assert!(
        published
            .windows(2)
            .all(|w| w[1].event_id == w[0].event_id + 1)
    );
    assert!(published.iter().all(|p| p.generation == Some(1)));
    assert_eq!(
        db.events.last_event_id().await.unwrap(),
        published.last().map(|p| p.event_id)
    );
    assert_eq!(
        db.records.count(NAME).await.unwrap(),
        2 + large.len() as u64
    );
    assert!(db.verification.get(NAME, 6_000).await.unwrap().is_some());
}

/// Finished primary verifications are recorded together: each row only if it is still at its
/// version, and the events of exactly the rows written, with consecutive ids.
pub async fn completed_verifications_append_their_events_together(target: &dyn ConformanceTarget) {
    let db = open(target).await;
    for id in 1..=4 {
        db.events
            .publish(&publication(id, EventKind::Created, false, "v"), t0())
            .await
            .unwrap()
            .unwrap();
    }
    let before = db.events.last_event_id().await.unwrap().unwrap();
    let mut rows = db.verification.claim(NAME, Utc::now(), 10).await.unwrap();
    rows.sort_by_key(|row| row.model_id);
    assert_eq!(rows.len(), 4);
    let policy = RetryPolicy::default();
    let checksum = |id: i64| format!("{id:064x}");
    let announce = |id: i64| {
        let mut event = event(id, EventKind::ChecksumSucceeded);
        event.payload.generation = None;
        event.payload.record = None;
        event.payload.checksum = Some(checksum(id));
        event
    };
    let mut completed = Vec::new();
    for mut row in rows {
        let id = row.model_id;
        let event = if id == 2 {
            row.verification
                .fail("unreadable", t0(), &policy, 0)
                .unwrap();
            None
        } else {
            row.verification.succeed(checksum(id), t0()).unwrap();
            Some(announce(id))
        };
        if id == 3 {
            // Overtaken: the row changed since it was claimed.
            row.version -= 1;
        }
        completed.push(CompletedVerification { row, event });
    }
    let written = db
        .events
        .complete_verifications(NAME, &completed, t0())
        .await
        .unwrap()
        .expect("every backend of the suite records verifications in one transaction");
    assert_eq!(written, [true, true, false, true]);
    let read = db.events.read_after(before, 10).await.unwrap();
    let announced: Vec<_> = read
        .iter()
        .map(stored)
        .map(|e| {
            (
                e.event_name.clone(),
                e.payload["model_id"].as_i64(),
                e.payload["checksum"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        announced,
        [1, 4].map(|id| (
            "checksum_succeeded".to_owned(),
            Some(id),
            Some(checksum(id))
        ))
    );
    assert_eq!(stored(&read[1]).id, stored(&read[0]).id + 1);
    for (id, state) in [
        (1, VerificationState::Succeeded),
        (2, VerificationState::Failed),
        (3, VerificationState::Started),
        (4, VerificationState::Succeeded),
    ] {
        let row = db.verification.get(NAME, id).await.unwrap().unwrap();
        assert_eq!(row.verification.verification_state, state, "{id}");
    }
    // A written row is stored exactly as sent: every verification column.
    for c in completed.iter().filter(|c| c.row.model_id != 3) {
        let mut expected = c.row.clone();
        expected.version += 1;
        assert_eq!(
            db.verification.get(NAME, c.row.model_id).await.unwrap(),
            Some(expected)
        );
    }
    // Nothing to announce: rows only, no event.
    let none = db
        .events
        .complete_verifications(NAME, &[], t0())
        .await
        .unwrap()
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(
        db.events.last_event_id().await.unwrap(),
        Some(stored(&read[1]).id)
    );
}

/// The counts every backend must report, recounted row by row: the registry's from a listing
/// of every row (with the queue depth at `now`), the verification rows' from the ids below
/// 100, the records' from their ids.
async fn recount(db: &Db, now: DateTime<Utc>) -> (RegistryCounts, u64, VerificationCounts, u64) {
    let rows = db
        .registry
        .list(NAME, RegistryFilter::default(), None, usize::MAX)
        .await
        .unwrap();
    let mut r = RegistryCounts::default();
    let mut queue = 0;
    for row in &rows {
        r.registry += 1;
        let v = row.verification.verification_state;
        match row.state {
            SyncState::Pending => r.pending += 1,
            SyncState::Started => r.started += 1,
            SyncState::Synced => r.synced += 1,
            SyncState::Failed => r.failed += 1,
        }
        if row.state == SyncState::Synced && v != VerificationState::Disabled {
            r.verification_total += 1;
        }
        match v {
            VerificationState::Succeeded => r.verified += 1,
            VerificationState::Failed => r.verification_failed += 1,
            _ => {}
        }
        if row.verification.checksum_mismatch {
            r.checksum_mismatch += 1;
        }
        if row.state == SyncState::Pending
            || (row.state == SyncState::Failed && row.retry_at.is_none_or(|at| at <= now))
        {
            queue += 1;
        }
    }
    let mut v = VerificationCounts::default();
    for id in 0..100 {
        if let Some(row) = db.verification.get(NAME, id).await.unwrap() {
            v.total += 1;
            match row.verification.verification_state {
                VerificationState::Succeeded => v.succeeded += 1,
                VerificationState::Failed => v.failed += 1,
                _ => {}
            }
        }
    }
    let records = db
        .records
        .ids(NAME, i64::MIN..i64::MAX, usize::MAX)
        .await
        .unwrap()
        .len() as u64;
    (r, queue, v, records)
}

/// The counts the stores report equal a recount of the rows ([`recount`]).
#[track_caller]
fn assert_counts_exact(
    step: &str,
    reported: (RegistryCounts, u64, VerificationCounts, u64),
    recounted: (RegistryCounts, u64, VerificationCounts, u64),
) {
    assert_eq!(reported, recounted, "after {step}: reported vs recounted");
}

async fn counts_exact(db: &Db, step: &str, now: DateTime<Utc>) {
    let reported = (
        db.registry.counts(NAME).await.unwrap(),
        db.registry.queue_depth(NAME, now).await.unwrap(),
        db.verification.counts(NAME).await.unwrap(),
        db.records.count(NAME).await.unwrap(),
    );
    assert_counts_exact(step, reported, recount(db, now).await);
}

/// The counts of status and metrics (registry counts, queue depth, verification counts, record
/// count) equal a recount of the rows after every kind of change: inserts, claims, every sync
/// and verification outcome (checksum mismatch included), resync and re-verification in
/// batches, stale updates, heartbeats, deletes, publishes.
pub async fn counts_stay_exact_through_every_transition(target: &dyn ConformanceTarget) {
    let db = open(target).await;
    let policy = RetryPolicy::default();
    // Retry times an hour from the store's clock either way: due or not, whichever clock the
    // store measures the queue on.
    let now = store_now(&db).await;
    let hour = secs(3600);
    counts_exact(&db, "nothing", now).await;

    db.registry
        .insert_pending(NAME, &(1..=12).collect::<Vec<_>>(), now)
        .await
        .unwrap();
    db.registry
        .insert_pending(NAME, &[11, 12, 13], now)
        .await
        .unwrap();
    db.registry.mark_pending(NAME, 14, now).await.unwrap();
    db.registry.mark_changed(NAME, 15, now, now).await.unwrap();
    counts_exact(&db, "inserts", now).await;

    let mut claimed = db.registry.claim_for_sync(NAME, now, 7).await.unwrap();
    assert_eq!(claimed.len(), 7);
    counts_exact(&db, "a sync claim", now).await;

    // Outcomes: synced with verification pending (two), synced waiting for the primary's
    // checksum, failed and due, failed not due, overtaken (back to pending); one left running.
    let outcomes = claimed.drain(..6).collect::<Vec<_>>();
    let mut synced = Vec::new();
    for (i, mut row) in outcomes.into_iter().enumerate() {
        match i {
            0 | 1 => row.mark_synced(Some(1), true).unwrap(),
            2 => row.mark_synced(Some(1), false).unwrap(),
            3 => {
                row.mark_failed(&SyncFailure::new("x"), now, &policy, 0)
                    .unwrap();
                row.retry_at = Some(now - hour);
            }
            4 => {
                row.mark_failed(&SyncFailure::missing_on_primary("gone"), now, &policy, 0)
                    .unwrap();
                row.retry_at = Some(now + hour);
            }
            _ => row.requeue().unwrap(),
        }
        assert!(db.registry.update(NAME, &row).await.unwrap());
        if i < 3 {
            synced.push(row.model_id);
        }
        counts_exact(&db, &format!("sync outcome {i}"), now).await;
    }
    // A change while a sync runs keeps the row started.
    let running = claimed.remove(0);
    db.registry
        .mark_pending(NAME, running.model_id, now)
        .await
        .unwrap();
    counts_exact(&db, "a change of a running sync", now).await;
    // A stale update and a heartbeat change nothing counted.
    assert!(!db.registry.update(NAME, &running).await.unwrap());
    db.registry
        .heartbeat(NAME, running.model_id, running.version + 1, now)
        .await
        .unwrap();
    counts_exact(&db, "a stale update and a heartbeat", now).await;

    // Verification of the copies: one succeeds, one mismatches.
    let mut checking = db
        .registry
        .claim_for_verification(NAME, now, 10)
        .await
        .unwrap();
    assert_eq!(checking.len(), 2);
    counts_exact(&db, "a verification claim", now).await;
    checking[0]
        .verification
        .succeed("ab".repeat(32), now - hour)
        .unwrap();
    checking[1]
        .verification
        .fail_mismatch("cd".repeat(32), now, &policy, 0)
        .unwrap();
    for row in &checking {
        assert!(db.registry.update(NAME, row).await.unwrap());
    }
    counts_exact(&db, "a verified copy and a mismatch", now).await;
    // The copy waiting for the primary's checksum gets one; re-verification in batches.
    assert_eq!(
        db.registry
            .enable_verification(NAME, &synced)
            .await
            .unwrap(),
        1
    );
    counts_exact(&db, "verification enabled", now).await;
    assert_eq!(db.registry.reverify_many(NAME, &synced).await.unwrap(), 2);
    counts_exact(&db, "a batch re-verification", now).await;
    let mut again = db
        .registry
        .claim_for_verification(NAME, now, 10)
        .await
        .unwrap();
    for row in &mut again {
        row.verification
            .succeed("ab".repeat(32), now - hour)
            .unwrap();
        assert!(db.registry.update(NAME, row).await.unwrap());
    }
    counts_exact(&db, "every copy verified", now).await;
    assert_eq!(
        db.registry.reverify_older_than(NAME, now, 2).await.unwrap(),
        2
    );
    counts_exact(&db, "re-verification of old checksums", now).await;

    // An operator's resync of everything, in batches; deletes.
    let all: Vec<i64> = (1..=15).collect();
    for batch in all.chunks(4) {
        db.registry.resync_many(NAME, batch).await.unwrap();
        counts_exact(&db, "a resync batch", now).await;
    }
    assert!(db.registry.delete(NAME, 1).await.unwrap());
    assert!(!db.registry.delete(NAME, 1).await.unwrap());
    assert!(db.registry.delete(NAME, running.model_id).await.unwrap());
    counts_exact(&db, "deletes", now).await;
    for id in all {
        db.registry.delete(NAME, id).await.unwrap();
    }
    counts_exact(&db, "every registry row deleted", now).await;

    // The primary's side: verification rows and the catalogue.
    for id in 1..=5 {
        db.verification.mark_pending(NAME, id).await.unwrap();
    }
    counts_exact(&db, "verification rows", now).await;
    let mut v = db.verification.claim(NAME, now, 3).await.unwrap();
    v[0].verification
        .succeed("ab".repeat(32), now - hour)
        .unwrap();
    v[1].verification.fail("boom", now, &policy, 0).unwrap();
    v[2].verification.succeed("ab".repeat(32), now).unwrap();
    for row in &v {
        assert!(db.verification.update(NAME, row).await.unwrap());
    }
    counts_exact(&db, "checksums", now).await;
    db.verification
        .mark_pending(NAME, v[2].model_id)
        .await
        .unwrap();
    db.verification
        .reverify_older_than(NAME, now - secs(60), 10)
        .await
        .unwrap();
    counts_exact(&db, "checksums sent back to pending", now).await;
    for id in 10..=12 {
        db.records
            .upsert(NAME, id, &serde_json::json!({ "id": id }))
            .await
            .unwrap();
    }
    db.records
        .upsert(NAME, 10, &serde_json::json!({ "id": 10, "v": 2 }))
        .await
        .unwrap();
    let copy = |id, generation| StoredRecord {
        model_id: id,
        generation,
        body: serde_json::json!({ "id": id }),
    };
    assert!(
        db.records
            .put_unless_older(NAME, &copy(13, 4))
            .await
            .unwrap()
    );
    assert!(
        !db.records
            .put_unless_older(NAME, &copy(10, 1))
            .await
            .unwrap()
    );
    counts_exact(&db, "records", now).await;
    assert_eq!(db.verification.backfill_missing(NAME, 2).await.unwrap(), 2);
    assert_eq!(
        db.verification
            .insert_missing(NAME, &[1, 13, 20])
            .await
            .unwrap(),
        2
    );
    counts_exact(&db, "verification backfill", now).await;
    assert!(db.records.delete(NAME, 11).await.unwrap());
    assert!(!db.records.delete(NAME, 99).await.unwrap());
    assert!(db.verification.delete(NAME, 2).await.unwrap());
    counts_exact(&db, "record and verification deletes", now).await;
    db.events
        .publish(&publication(30, EventKind::Created, true, "a"), now)
        .await
        .unwrap();
    db.events
        .publish(&publication(30, EventKind::Updated, true, "b"), now)
        .await
        .unwrap();
    db.events
        .publish(&publication(10, EventKind::Deleted, true, ""), now)
        .await
        .unwrap();
    counts_exact(&db, "publishes", now).await;
}

/// Expands into one `#[test]` per storage conformance check, in a module named `$module`.
/// `$make` is an async closure returning `Option<impl ConformanceTarget>`; `None` skips (a lane
/// whose server is not available; the lane's own setup decides whether that is an error).
#[macro_export]
macro_rules! storage_conformance_suite {
    ($module:ident, $make:expr $(,)?) => {
        $crate::storage_conformance_suite!(@module $module, $make,
            events_append_in_order_and_read_back,
            a_tailing_reader_never_skips_concurrently_appended_events,
            records_keep_generations_and_never_downgrade,
            verification_rows_follow_the_state_machine,
            registry_rows_round_trip_every_transition,
            the_oldest_unsynced_change_time_is_kept_until_synced,
            sync_claims_follow_the_scheduling_order,
            bulk_insert_skips_existing_rows_and_counts_follow,
            two_claimers_take_each_row_exactly_once,
            abandoned_claims_are_found_and_retried,
            cursor_lease_is_exclusive_until_it_expires,
            cursor_and_skipped_events_persist,
            verification_claims_take_the_least_recently_verified_first,
            verification_total_counts_synced_rows_with_verification_on,
            reverification_sends_old_checksums_back_in_batches,
            verification_backfill_covers_records_without_a_row,
            enabling_verification_touches_disabled_synced_rows_only,
            the_replication_switch_persists,
            many_rows_are_read_by_id_at_once,
            concurrent_registry_updates_each_get_their_own_answer,
            a_refused_registry_update_fails_only_its_own_caller,
            concurrent_record_copies_keep_the_newest,
            changes_marked_together_match_each_marked_alone,
            concurrent_registry_reads_each_get_their_own_row,
            a_sync_claim_takes_nothing_while_replication_is_paused,
            a_stale_change_leaves_a_synced_row_alone,
            a_new_primary_checksum_sends_verified_and_waiting_copies_back,
            a_resync_is_scheduled_behind_new_changes,
            a_failed_verification_sent_back_to_pending_keeps_its_retry_count,
            publishing_writes_record_verification_and_event_together,
            publishing_a_batch_writes_every_publication_in_order,
            counts_stay_exact_through_every_transition,
            completed_verifications_append_their_events_together,
            secondary_status_persists_and_consumed_events_are_deleted,
        );
    };
    (@module $module:ident, $make:expr, $($check:ident),* $(,)?) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            $(
                #[test]
                fn $check() {
                    $crate::testing::block_on(async {
                        let Some(target) = ($make)().await else { return };
                        $crate::testing::storage::$check(&target).await;
                    });
                }
            )*
        }
    };
}
