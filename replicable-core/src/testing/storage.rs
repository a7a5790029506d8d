//! The storage conformance suite: one set of checks every backend (in-memory, SQLite,
//! PostgreSQL, a user's own) must pass.
//!
//! ```ignore
//! replicable_core::storage_conformance_suite!(sqlite_conformance, || async { Some(MyTarget::new().await) });
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::event::{EventKind, EventPayload, NewEvent, SkippedEvent};
use crate::failure::SyncFailure;
use crate::model::Resource;
use crate::registry::{RegistryRecord, StuckCutoffs, SyncState};
use crate::retry::RetryPolicy;
use crate::storage::memory::MemoryStore;
use crate::storage::{
    Backend, EventLog, RecordStore, RegistryStore, StoredRecord, VerificationStore,
};
use crate::verification::{VerificationRecord, VerificationState};

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
    let first = db
        .events
        .append(&[event(1, EventKind::Created)], t0())
        .await
        .unwrap();
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
    assert_eq!(read[0].id, ids[0]);
    assert_eq!(read[0].event_name, "updated");
    assert_eq!(read[0].replicable_name, NAME);
    assert_eq!(read[0].created_at, t0());
    assert_eq!(read[0].payload, batch[0].payload_json());
    assert!(
        db.events
            .read_after(*ids.last().unwrap(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(db.events.append(&[], t0()).await.unwrap().is_empty());
}

/// Writers appending concurrently (on their own handles) while a reader tails the log: the
/// reader, only ever reading after the last id it saw, sees every event exactly once.
pub async fn a_tailing_reader_never_skips_concurrently_appended_events(
    target: &dyn ConformanceTarget,
) {
    const WRITERS: i64 = 4;
    const PER_WRITER: i64 = 150;
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
    let reader = open(target).await;
    let mut seen = Vec::new();
    let mut cursor = 0;
    let total = (WRITERS * PER_WRITER) as usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while seen.len() < total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reader saw {} of {total}",
            seen.len()
        );
        let batch = reader.events.read_after(cursor, 37).await.unwrap();
        for e in &batch {
            assert!(e.id > cursor);
            cursor = e.id;
            seen.push(e.payload["model_id"].as_i64().unwrap());
        }
        if batch.is_empty() {
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
    let unique: BTreeSet<_> = seen.iter().collect();
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
    // claim: pending rows move to started with the heartbeat set
    let claimed = db.verification.claim(NAME, t0(), 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let mut row = claimed[0].clone();
    assert_eq!(
        row.verification.verification_state,
        VerificationState::Started
    );
    assert_eq!(row.verification.verification_started_at, Some(t0()));
    assert_eq!(row.heartbeat_at, Some(t0()));
    assert!(
        db.verification
            .claim(NAME, t0(), 10)
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
    let mut failing = db.verification.mark_pending(NAME, 2).await.unwrap();
    failing.start(t0()).unwrap();
    failing
        .verification
        .fail("boom", t0(), &RetryPolicy::default(), 0)
        .unwrap();
    assert!(db.verification.update(NAME, &failing).await.unwrap());
    assert!(
        db.verification
            .claim(NAME, t0(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let later = db
        .verification
        .claim(NAME, t0() + secs(16), 10)
        .await
        .unwrap();
    assert_eq!(
        later.iter().map(|r| r.model_id).collect::<Vec<_>>(),
        vec![2]
    );
    assert_eq!(later[0].verification.verification_retry_count, 1);
    assert_eq!(
        later[0].verification.verification_failure.as_deref(),
        Some("boom")
    );
    // mark_pending resets an existing row and bumps its version
    let reset = db.verification.mark_pending(NAME, 2).await.unwrap();
    assert_eq!(
        reset.verification.verification_state,
        VerificationState::Pending
    );
    assert_eq!(reset.verification.verification_retry_count, 0);
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

/// Claims take never-attempted rows first, then due failures by retry time; rows not due,
/// started or synced are left alone.
pub async fn sync_claims_follow_the_scheduling_order(target: &dyn ConformanceTarget) {
    let db = open(target).await;
    let policy = RetryPolicy::default();
    db.registry
        .insert_pending(NAME, &[10, 11, 12, 13, 14], t0())
        .await
        .unwrap();
    let fail = |id: i64, jitter: u32| {
        let db = db.clone();
        async move {
            let mut row = registry(&db, id).await.unwrap();
            row.start(t0()).unwrap();
            row.mark_failed(&SyncFailure::new("x"), t0(), &policy, jitter)
                .unwrap();
            assert!(db.registry.update(NAME, &row).await.unwrap());
        }
    };
    fail(10, 20).await; // due at t0 + 56 s
    fail(11, 0).await; // due at t0 + 16 s
    fail(12, 29).await; // due at t0 + 74 s: not yet due below
    let mut synced = registry(&db, 13).await.unwrap();
    synced.start(t0()).unwrap();
    synced.mark_synced(None, true).unwrap();
    assert!(db.registry.update(NAME, &synced).await.unwrap());
    db.registry.insert_pending(NAME, &[15], t0()).await.unwrap();
    let now = t0() + secs(60);
    let claimed = db.registry.claim_for_sync(NAME, now, 2).await.unwrap();
    let ids: BTreeSet<i64> = claimed.iter().map(|r| r.model_id).collect();
    assert_eq!(ids, BTreeSet::from([14, 15]), "never-attempted rows first");
    for row in &claimed {
        assert_eq!(row.state, SyncState::Started);
        assert_eq!(
            (row.last_synced_at, row.heartbeat_at),
            (Some(now), Some(now))
        );
    }
    let claimed = db.registry.claim_for_sync(NAME, now, 1).await.unwrap();
    assert_eq!(claimed[0].model_id, 11, "then failures by retry time");
    let claimed = db.registry.claim_for_sync(NAME, now, 10).await.unwrap();
    assert_eq!(
        claimed.iter().map(|r| r.model_id).collect::<Vec<_>>(),
        vec![10]
    );
    assert_eq!(claimed[0].retry_count, 1);
    assert!(
        db.registry
            .claim_for_sync(NAME, now, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // verification claims take synced rows only
    let v = db
        .registry
        .claim_for_verification(NAME, now, 10)
        .await
        .unwrap();
    assert_eq!(v.iter().map(|r| r.model_id).collect::<Vec<_>>(), vec![13]);
    assert_eq!(
        v[0].verification.verification_state,
        VerificationState::Started
    );
    assert_eq!(v[0].heartbeat_at, Some(now));
    assert!(
        db.registry
            .claim_for_verification(NAME, now, 10)
            .await
            .unwrap()
            .is_empty()
    );
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

/// A claim whose worker stops heartbeating is found as stuck after the claim timeout and,
/// once failed, is claimed again after its retry time. A heartbeat keeps a claim alive and is
/// refused once the row moved on.
pub async fn abandoned_claims_are_found_and_retried(target: &dyn ConformanceTarget) {
    let db = open(target).await;
    db.registry
        .insert_pending(NAME, &[1, 2], t0())
        .await
        .unwrap();
    let worker = open(target).await;
    let claimed = worker.registry.claim_for_sync(NAME, t0(), 2).await.unwrap();
    assert_eq!(claimed.len(), 2);
    // Worker 1 keeps heartbeating; the other dies.
    let alive = &claimed[0];
    assert!(
        worker
            .registry
            .heartbeat(NAME, alive.model_id, alive.version, t0() + secs(50))
            .await
            .unwrap()
    );
    drop(worker);
    let cutoffs = |now: DateTime<Utc>| StuckCutoffs {
        sync_started_before: now - chrono::Duration::hours(8),
        verification_started_before: now - chrono::Duration::hours(8),
        heartbeat_before: now - secs(60),
    };
    let now = t0() + secs(61);
    let stuck = db.registry.stuck(NAME, &cutoffs(now), 10).await.unwrap();
    assert_eq!(
        stuck.iter().map(|r| r.model_id).collect::<Vec<_>>(),
        vec![claimed[1].model_id]
    );
    let mut dead = stuck[0].clone();
    let policy = RetryPolicy::default();
    assert!(dead.fail_stuck_work(
        &cutoffs(now),
        (Duration::from_secs(8 * 3600), Duration::from_secs(8 * 3600)),
        now,
        &policy,
        0
    ));
    assert!(db.registry.update(NAME, &dead).await.unwrap());
    assert!(
        !db.registry
            .heartbeat(NAME, dead.model_id, dead.version, now)
            .await
            .unwrap(),
        "the dead worker's version is gone"
    );
    let again = db
        .registry
        .claim_for_sync(NAME, now + secs(16), 10)
        .await
        .unwrap();
    assert_eq!(
        again.iter().map(|r| r.model_id).collect::<Vec<_>>(),
        vec![dead.model_id]
    );
    assert_eq!(again[0].retry_count, 1);
    // After eight hours even a heartbeating sync is stuck.
    let late = t0() + chrono::Duration::hours(8) + secs(1);
    assert!(
        db.registry
            .heartbeat(NAME, alive.model_id, alive.version, late)
            .await
            .unwrap()
    );
    let stuck = db.registry.stuck(NAME, &cutoffs(late), 10).await.unwrap();
    assert!(stuck.iter().any(|r| r.model_id == alive.model_id));
    // Primary verification rows: same rules.
    db.verification.mark_pending(NAME, 3).await.unwrap();
    let v = db.verification.claim(NAME, t0(), 1).await.unwrap();
    let stuck = db
        .verification
        .stuck(NAME, &cutoffs(t0() + secs(30)), 10)
        .await
        .unwrap();
    assert!(stuck.is_empty());
    let stuck = db
        .verification
        .stuck(NAME, &cutoffs(now), 10)
        .await
        .unwrap();
    assert_eq!(
        stuck.iter().map(|r| r.model_id).collect::<Vec<_>>(),
        vec![3]
    );
    assert!(
        db.verification
            .heartbeat(NAME, 3, v[0].version, now)
            .await
            .unwrap()
    );
    let stuck = db
        .verification
        .stuck(NAME, &cutoffs(now), 10)
        .await
        .unwrap();
    assert!(stuck.is_empty(), "a fresh heartbeat keeps the claim");
}

/// One holder at a time; a lease expires when not renewed; only the holder releases it.
pub async fn cursor_lease_is_exclusive_until_it_expires(target: &dyn ConformanceTarget) {
    let a = open(target).await;
    let b = open(target).await;
    let ttl = Duration::from_secs(30);
    assert!(
        a.registry
            .acquire_lease("log_cursor", "a", t0(), ttl)
            .await
            .unwrap()
    );
    assert!(
        !b.registry
            .acquire_lease("log_cursor", "b", t0() + secs(10), ttl)
            .await
            .unwrap()
    );
    assert!(
        a.registry
            .acquire_lease("log_cursor", "a", t0() + secs(20), ttl)
            .await
            .unwrap(),
        "renewal"
    );
    assert!(
        !b.registry
            .acquire_lease("log_cursor", "b", t0() + secs(40), ttl)
            .await
            .unwrap(),
        "renewed lease holds"
    );
    assert!(
        b.registry
            .acquire_lease("log_cursor", "b", t0() + secs(51), ttl)
            .await
            .unwrap(),
        "expired lease is taken"
    );
    assert!(
        !a.registry
            .acquire_lease("log_cursor", "a", t0() + secs(52), ttl)
            .await
            .unwrap()
    );
    a.registry.release_lease("log_cursor", "a").await.unwrap();
    assert!(
        !a.registry
            .acquire_lease("log_cursor", "a", t0() + secs(53), ttl)
            .await
            .unwrap(),
        "only the holder releases"
    );
    b.registry.release_lease("log_cursor", "b").await.unwrap();
    assert!(
        a.registry
            .acquire_lease("log_cursor", "a", t0() + secs(54), ttl)
            .await
            .unwrap()
    );
    assert!(
        a.registry
            .acquire_lease("other_lease", "b", t0(), ttl)
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
            sync_claims_follow_the_scheduling_order,
            bulk_insert_skips_existing_rows_and_counts_follow,
            two_claimers_take_each_row_exactly_once,
            abandoned_claims_are_found_and_retried,
            cursor_lease_is_exclusive_until_it_expires,
            cursor_and_skipped_events_persist,
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
