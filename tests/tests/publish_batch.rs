//! Batch publish (`Site::publish_*_events`) and the grouped appends of primary verification, on
//! real SQLite files and the PostgreSQL lane: a batch writes every record, verification row and
//! event in one transaction with consecutive ids, a failing record or a refused write leaves
//! nothing behind, secondaries consume a batch as they consume single publishes, and a
//! verification pass announces every checksum it stored, once. Each statement of a batch, and
//! a verification completion, takes its rows in id order, so that PostgreSQL aborts neither of
//! two that touch the same rows at once for a deadlock.

use std::collections::BTreeSet;
use std::sync::Arc;

use replicable_core::event::LogEntry;
use replicable_core::log_cursor;
use replicable_core::prelude::*;
use replicable_core::storage::sql::SqlStore;
use replicable_core::storage::{Backend, EventLog, RecordStore, RegistryStore, VerificationStore};
use replicable_core::{ReplicableDescriptor, workers};
use replicable_strategies::{BlobStrategy, DatabaseStrategy};
use replicable_tests::{PostgresTarget, SqliteTarget};
use sqlx::{AssertSqlSafe, Executor};

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(BlobStrategy)]
pub struct Receipt {
    #[replicable(id)]
    pub id: i64,
    #[replicable(blob)]
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Replicable)]
#[replicator(DatabaseStrategy)]
pub struct Entry {
    #[replicable(id)]
    pub id: i64,
    pub title: String,
}

fn receipt(id: i64) -> Receipt {
    Receipt {
        id,
        key: format!("receipts/{id}"),
    }
}

fn entry(id: i64, title: &str) -> Entry {
    Entry {
        id,
        title: format!("{title} {id}"),
    }
}

fn entry_descriptor() -> &'static ReplicableDescriptor {
    replicable_core::descriptor::register::<Entry>();
    replicable_core::find_replicable("entry").unwrap().unwrap()
}

fn primary(store: &Arc<SqlStore>) -> Site {
    Site::primary("primary")
        .database(store.clone() as Arc<dyn Backend>)
        .build()
        .expect("a primary")
}

/// The readable events after `after`, as (kind, payload).
async fn events_after(site: &Site, after: i64) -> Vec<(i64, String, serde_json::Value)> {
    site.event_log()
        .read_after(after, 1_000_000)
        .await
        .unwrap()
        .into_iter()
        .map(|entry| match entry {
            LogEntry::Event(e) => (e.id, e.event_name, e.payload),
            LogEntry::Damaged(d) => panic!("damaged event {d:?}"),
        })
        .collect()
}

#[track_caller]
fn assert_consecutive(ids: &[i64]) {
    for pair in ids.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "ids are consecutive: {ids:?}");
    }
}

async fn exec(store: &SqlStore, sql: &str) {
    store
        .pool()
        .execute(AssertSqlSafe(sql.to_owned()))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

// ---- a batch writes every row and consecutive events ----

/// More records than one statement takes (5,000), so that the batch spans several chunks.
const LARGE: i64 = 6_001;

async fn a_batch_writes_every_row_and_consecutive_events(store: Arc<SqlStore>) {
    let site = primary(&store);
    let entries: Vec<Entry> = (1..=LARGE).map(|id| entry(id, "first")).collect();
    let ids = site.publish_created_events(&entries).await.unwrap();
    assert_eq!(ids.len(), entries.len());
    assert_consecutive(&ids);
    assert_eq!(store.last_event_id().await.unwrap(), ids.last().copied());
    let events = events_after(&site, 0).await;
    assert_eq!(events.len(), entries.len());
    for ((id, kind, payload), (expected_id, entry)) in events.iter().zip(ids.iter().zip(&entries)) {
        assert_eq!((id, kind.as_str()), (expected_id, "created"));
        assert_eq!(payload["model_id"], entry.id);
        assert_eq!(payload["generation"], 1, "{payload}");
        assert_eq!(payload["record"]["title"], entry.title.as_str());
    }
    assert_eq!(
        RecordStore::count(&*store, "entry").await.unwrap(),
        LARGE as u64
    );
    let counts = VerificationStore::counts(&*store, "entry").await.unwrap();
    assert_eq!((counts.total, counts.succeeded), (LARGE as u64, 0));
    let last = RecordStore::get(&*store, "entry", LARGE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (last.generation, last.body["title"].clone()),
        (1, "first 6001".into())
    );

    // Updates, one record twice: two events, two generations, the last body kept.
    let updates = [entry(1, "second"), entry(2, "second"), entry(1, "third")];
    let ids = site.publish_updated_events(&updates).await.unwrap();
    assert_consecutive(&ids);
    let events = events_after(&site, ids[0] - 1).await;
    let generations: Vec<_> = events
        .iter()
        .map(|(_, kind, p)| {
            (
                kind.as_str(),
                p["model_id"].as_i64(),
                p["generation"].as_i64(),
            )
        })
        .collect();
    assert_eq!(
        generations,
        vec![
            ("updated", Some(1), Some(2)),
            ("updated", Some(2), Some(2)),
            ("updated", Some(1), Some(3)),
        ]
    );
    let first = RecordStore::get(&*store, "entry", 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.generation, first.body["title"].clone()),
        (3, "third 1".into())
    );

    // Deletes remove the catalogue and verification rows.
    let ids = site
        .publish_deleted_events(&[entry(5, "x"), entry(6, "x")])
        .await
        .unwrap();
    assert_consecutive(&ids);
    for id in [5, 6] {
        assert!(
            RecordStore::get(&*store, "entry", id)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            VerificationStore::get(&*store, "entry", id)
                .await
                .unwrap()
                .is_none()
        );
    }
    assert_eq!(
        RecordStore::count(&*store, "entry").await.unwrap(),
        LARGE as u64 - 2
    );
    // An empty batch publishes nothing.
    assert!(
        site.publish_created_events::<Entry>(&[])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.last_event_id().await.unwrap(), ids.last().copied());
}

#[test]
fn a_batch_writes_every_row_and_consecutive_events_on_sqlite() {
    replicable_core::testing::block_on(async {
        let target = SqliteTarget::new();
        a_batch_writes_every_row_and_consecutive_events(SqlStore::open(&target.url).await.unwrap())
            .await;
    });
}

#[test]
fn a_batch_writes_every_row_and_consecutive_events_on_postgres() {
    let Some(target) = PostgresTarget::new() else {
        return;
    };
    replicable_core::testing::block_on(async {
        a_batch_writes_every_row_and_consecutive_events(target.open().await).await;
    });
}

// ---- all or nothing ----

/// `refuse` makes the event log refuse every insert; `allow` lifts it.
async fn a_failing_record_or_write_rolls_back_the_batch(
    store: Arc<SqlStore>,
    refuse: &[&str],
    allow: &str,
) {
    let site = primary(&store);
    // A record whose resource the strategy refuses fails the batch, named, before any write.
    let mut receipts: Vec<Receipt> = (1..=10).map(receipt).collect();
    receipts[6].key = String::new();
    let err = site
        .publish_created_events(&receipts)
        .await
        .expect_err("a refused resource fails the batch");
    assert!(
        matches!(
            err,
            ReplicatorError::Resource {
                replicable: "receipt",
                id: 7,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(store.last_event_id().await.unwrap(), None);
    assert!(
        RecordStore::get(&*store, "receipt", 1)
            .await
            .unwrap()
            .is_none()
    );

    // A write the database refuses (here: the events) rolls back the records and
    // verification rows written before it.
    let receipts: Vec<Receipt> = (1..=10).map(receipt).collect();
    for sql in refuse {
        exec(&store, sql).await;
    }
    let err = site
        .publish_created_events(&receipts)
        .await
        .expect_err("the events cannot be written");
    assert!(
        matches!(
            &err,
            ReplicatorError::Batch {
                replicable: "receipt",
                count: 10,
                first_id: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("disk full"), "{err}");
    for id in 1..=10 {
        assert!(
            RecordStore::get(&*store, "receipt", id)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            VerificationStore::get(&*store, "receipt", id)
                .await
                .unwrap()
                .is_none()
        );
    }
    assert_eq!(store.last_event_id().await.unwrap(), None);

    exec(&store, allow).await;
    let ids = site.publish_created_events(&receipts).await.unwrap();
    assert_eq!(ids.len(), 10);
    assert_consecutive(&ids);
    // Re-publishing `created` for an immutable blob keeps a succeeded checksum, as a single
    // publish does.
    let mut claimed = store.claim("receipt", chrono::Utc::now(), 1).await.unwrap();
    let mut row = claimed.remove(0);
    row.verification
        .succeed("cd".repeat(32), chrono::Utc::now())
        .unwrap();
    assert!(
        VerificationStore::update(&*store, "receipt", &row)
            .await
            .unwrap()
    );
    site.publish_created_events(&receipts[..2]).await.unwrap();
    let kept = VerificationStore::get(&*store, "receipt", row.model_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.succeeded_checksum(), Some("cd".repeat(32).as_str()));
}

#[test]
fn a_failing_record_or_write_rolls_back_the_batch_on_sqlite() {
    replicable_core::testing::block_on(async {
        let target = SqliteTarget::new();
        a_failing_record_or_write_rolls_back_the_batch(
            SqlStore::open(&target.url).await.unwrap(),
            &[
                "CREATE TRIGGER refuse_events BEFORE INSERT ON replicable_events \
               BEGIN SELECT RAISE(ABORT, 'disk full'); END",
            ],
            "DROP TRIGGER refuse_events",
        )
        .await;
    });
}

#[test]
fn a_failing_record_or_write_rolls_back_the_batch_on_postgres() {
    let Some(target) = PostgresTarget::new() else {
        return;
    };
    replicable_core::testing::block_on(async {
        a_failing_record_or_write_rolls_back_the_batch(
            target.open().await,
            &[
                "CREATE FUNCTION refuse_event() RETURNS trigger AS \
                 $$ BEGIN RAISE EXCEPTION 'disk full'; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER refuse_events BEFORE INSERT ON replicable_events \
                 FOR EACH ROW EXECUTE FUNCTION refuse_event()",
            ],
            "DROP TRIGGER refuse_events ON replicable_events",
        )
        .await;
    });
}

// ---- in the application's transaction ----

async fn a_batch_in_the_applications_transaction(store: Arc<SqlStore>) {
    let site = primary(&store);
    store.create_replicable_tables("entry").await.unwrap();
    let entries: Vec<Entry> = (1..=3).map(|id| entry(id, "in tx")).collect();
    for commit in [false, true] {
        let mut tx = store.pool().begin().await.unwrap();
        let ids = site
            .publish_created_events_in(&mut *tx, &entries)
            .await
            .unwrap();
        assert_eq!(ids.len(), 3);
        assert_consecutive(&ids);
        if commit {
            tx.commit().await.unwrap();
            let events = events_after(&site, 0).await;
            let published: Vec<_> = events.iter().map(|(id, ..)| *id).collect();
            assert_eq!(published, ids);
            for entry in &entries {
                let stored = RecordStore::get(&*store, "entry", entry.id).await.unwrap();
                assert_eq!(stored.expect("committed").generation, 1);
                assert!(
                    VerificationStore::get(&*store, "entry", entry.id)
                        .await
                        .unwrap()
                        .is_some()
                );
            }
        } else {
            tx.rollback().await.unwrap();
            assert_eq!(store.last_event_id().await.unwrap(), None);
            assert!(
                RecordStore::get(&*store, "entry", 1)
                    .await
                    .unwrap()
                    .is_none()
            );
            assert!(
                VerificationStore::get(&*store, "entry", 1)
                    .await
                    .unwrap()
                    .is_none()
            );
        }
    }
}

#[test]
fn a_batch_in_the_applications_transaction_on_sqlite() {
    replicable_core::testing::block_on(async {
        let target = SqliteTarget::new();
        a_batch_in_the_applications_transaction(SqlStore::open(&target.url).await.unwrap()).await;
    });
}

#[test]
fn a_batch_in_the_applications_transaction_on_postgres() {
    let Some(target) = PostgresTarget::new() else {
        return;
    };
    replicable_core::testing::block_on(async {
        a_batch_in_the_applications_transaction(target.open().await).await;
    });
}

// ---- a secondary consumes a batch as it consumes singles ----

/// Runs the secondary's cursor and sync passes until nothing is left to do.
async fn catch_up(secondary: &Site) {
    let d = entry_descriptor();
    for _ in 0..1_000 {
        let report = log_cursor::process_batch(secondary, 500).await.unwrap();
        let pass = workers::sync_due(secondary, d, 500, 8).await.unwrap();
        if report.read == 0 && pass.claimed == 0 {
            return;
        }
    }
    panic!("the secondary never caught up");
}

async fn a_secondary_syncs_a_batch(primary_store: Arc<SqlStore>, secondary_store: Arc<SqlStore>) {
    let primary = primary(&primary_store);
    let link = Arc::new(InProcessPrimary::new(primary.clone()));
    let secondary = Site::secondary("secondary", link)
        .database(secondary_store.clone() as Arc<dyn Backend>)
        .build()
        .expect("a secondary");
    let entries: Vec<Entry> = (1..=300).map(|id| entry(id, "batch")).collect();
    primary.publish_created_events(&entries).await.unwrap();
    // Singles after the batch, and a batch of updates.
    entry(301, "single")
        .replicator(&primary)
        .publish_created_event()
        .await
        .unwrap();
    let updates: Vec<Entry> = (1..=20).map(|id| entry(id, "updated")).collect();
    primary.publish_updated_events(&updates).await.unwrap();
    catch_up(&secondary).await;

    let counts = RegistryStore::counts(&*secondary_store, "entry")
        .await
        .unwrap();
    assert_eq!(counts.synced, 301, "{counts:?}");
    for id in [1, 20, 21, 300, 301] {
        let copy = RecordStore::get(&*secondary_store, "entry", id)
            .await
            .unwrap()
            .expect("a copy");
        let title = match id {
            ..=20 => format!("updated {id}"),
            301 => "single 301".to_owned(),
            _ => format!("batch {id}"),
        };
        assert_eq!(copy.body["title"], title.as_str(), "{id}");
        let row = RegistryStore::get(&*secondary_store, "entry", id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            row.synced_generation,
            Some(if id <= 20 { 2 } else { 1 }),
            "{id}"
        );
    }
}

#[test]
fn a_secondary_syncs_a_batch_on_sqlite() {
    replicable_core::testing::block_on(async {
        let (p, s) = (SqliteTarget::new(), SqliteTarget::new());
        a_secondary_syncs_a_batch(
            SqlStore::open(&p.url).await.unwrap(),
            SqlStore::open(&s.url).await.unwrap(),
        )
        .await;
    });
}

#[test]
fn a_secondary_syncs_a_batch_on_postgres() {
    let (Some(p), Some(s)) = (PostgresTarget::new(), PostgresTarget::new()) else {
        return;
    };
    replicable_core::testing::block_on(async {
        a_secondary_syncs_a_batch(p.open().await, s.open().await).await;
    });
}

// ---- primary verification announces each stored checksum once ----

async fn a_verification_pass_announces_each_checksum(store: Arc<SqlStore>) {
    let site = primary(&store);
    let entries: Vec<Entry> = (1..=40).map(|id| entry(id, "verified")).collect();
    let published = site.publish_created_events(&entries).await.unwrap();
    let last = *published.last().unwrap();
    let pass = workers::verify_due(&site, entry_descriptor(), 100, 8)
        .await
        .unwrap();
    assert_eq!(
        (pass.claimed, pass.succeeded, pass.errors),
        (40, 40, 0),
        "{pass:?}"
    );
    let events = events_after(&site, last).await;
    assert_eq!(events.len(), 40, "one event per verified record");
    let mut announced = BTreeSet::new();
    for (_, kind, payload) in &events {
        assert_eq!(kind, "checksum_succeeded");
        let id = payload["model_id"].as_i64().unwrap();
        assert!(announced.insert(id), "record {id} announced twice");
        let row = VerificationStore::get(&*store, "entry", id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            payload["checksum"].as_str(),
            row.succeeded_checksum(),
            "the event announces the stored checksum"
        );
    }
    assert_eq!(announced, (1..=40).collect::<BTreeSet<_>>());
    let counts = VerificationStore::counts(&*store, "entry").await.unwrap();
    assert_eq!(counts.succeeded, 40);
}

#[test]
fn a_verification_pass_announces_each_checksum_on_sqlite() {
    replicable_core::testing::block_on(async {
        let target = SqliteTarget::new();
        a_verification_pass_announces_each_checksum(SqlStore::open(&target.url).await.unwrap())
            .await;
    });
}

#[test]
fn a_verification_pass_announces_each_checksum_on_postgres() {
    let Some(target) = PostgresTarget::new() else {
        return;
    };
    replicable_core::testing::block_on(async {
        a_verification_pass_announces_each_checksum(target.open().await).await;
    });
}

// ---- lock order ----

/// Batches that publish the same records in opposite orders, at the same time, all succeed.
/// On PostgreSQL two transactions that lock the same rows in opposite orders deadlock, and the
/// database aborts one of them (an application's publish): every batch write takes its rows in
/// id order, so the later one waits instead.
async fn batches_of_the_same_records_in_opposite_orders_all_succeed(store: Arc<SqlStore>) {
    let site = primary(&store);
    let forward: Vec<Receipt> = (1..=300).map(receipt).collect();
    let backward: Vec<Receipt> = forward.iter().rev().cloned().collect();
    site.publish_created_events(&forward).await.unwrap();
    let entries_forward: Vec<Entry> = (1..=300).map(|id| entry(id, "forward")).collect();
    let entries_backward: Vec<Entry> = entries_forward.iter().rev().cloned().collect();
    site.publish_created_events(&entries_forward).await.unwrap();
    for round in 0..4 {
        let (a, b, c, d) = tokio::join!(
            site.publish_created_events(&forward),
            site.publish_created_events(&backward),
            site.publish_updated_events(&entries_forward),
            site.publish_updated_events(&entries_backward),
        );
        for (which, result) in [("receipts forward", a), ("receipts backward", b)]
            .into_iter()
            .chain([("entries forward", c), ("entries backward", d)])
        {
            let ids = result.unwrap_or_else(|e| panic!("round {round}, {which}: {e}"));
            assert_eq!(ids.len(), 300, "round {round}, {which}");
        }
    }
    let records = site
        .records()
        .get_many("receipt", &[1, 150, 300])
        .await
        .unwrap();
    assert!(
        records.iter().all(|r| r.generation == 9),
        "each batch bumped every record once: {records:?}"
    );
}

/// Batches written in several parts (a record named twice starts a new part, and each part is
/// ordered on its own) that take the same records in crossing orders: one locks the high ids
/// first, the other the low ids. On PostgreSQL the database aborts one of two such
/// transactions as a deadlock; the store writes the aborted one again, so every publish
/// succeeds.
async fn batches_in_parts_that_cross_all_succeed(store: Arc<SqlStore>) {
    let site = primary(&store);
    let (low, high): (Vec<i64>, Vec<i64>) = ((1..=100).collect(), (201..=300).collect());
    let batch = |first: &[i64], second: &[i64]| -> Vec<Receipt> {
        first
            .iter()
            .chain(std::iter::once(&first[0]))
            .chain(second)
            .copied()
            .map(receipt)
            .collect()
    };
    let high_first = batch(&high, &low);
    let low_first = batch(&low, &high);
    site.publish_created_events(&high_first).await.unwrap();
    for round in 0..6 {
        let (a, b) = tokio::join!(
            site.publish_created_events(&high_first),
            site.publish_created_events(&low_first),
        );
        for (which, result) in [("high ids first", a), ("low ids first", b)] {
            let ids = result.unwrap_or_else(|e| panic!("round {round}, {which}: {e}"));
            assert_eq!(ids.len(), 201, "round {round}, {which}");
        }
    }
}

#[test]
fn batches_in_parts_that_cross_all_succeed_on_sqlite() {
    replicable_core::testing::block_on(async {
        let target = SqliteTarget::new();
        batches_in_parts_that_cross_all_succeed(SqlStore::open(&target.url).await.unwrap()).await;
    });
}

#[test]
fn batches_in_parts_that_cross_all_succeed_on_postgres() {
    let Some(target) = PostgresTarget::new() else {
        return;
    };
    replicable_core::testing::block_on(async {
        batches_in_parts_that_cross_all_succeed(target.open().await).await;
    });
}

/// The primary's verification completions take their rows in id order too: completions
/// handed over in descending order and batch publishes of the same records (which reset their
/// verification rows) run at once without either failing.
async fn verification_completions_and_batch_publishes_of_the_same_records_all_succeed(
    store: Arc<SqlStore>,
) {
    let site = primary(&store);
    let receipts: Vec<Receipt> = (1..=300).map(receipt).collect();
    site.publish_created_events(&receipts).await.unwrap();
    for round in 0..4 {
        let mut completed = Vec::new();
        for id in (1..=300).rev() {
            let mut row = site
                .verification_store()
                .get("receipt", id)
                .await
                .unwrap()
                .unwrap();
            row.verification.verification_state = replicable_core::VerificationState::Started;
            row.verification
                .succeed(format!("{round:064}"), chrono::Utc::now())
                .unwrap();
            completed.push(replicable_core::storage::CompletedVerification { row, event: None });
        }
        let (recorded, published) = tokio::join!(
            site.event_log()
                .complete_verifications("receipt", &completed, chrono::Utc::now()),
            site.publish_created_events(&receipts),
        );
        let written = recorded
            .unwrap_or_else(|e| panic!("round {round}: recording the checks: {e}"))
            .expect("the SQL log records verifications itself");
        assert_eq!(written.len(), 300);
        published.unwrap_or_else(|e| panic!("round {round}: the batch publish: {e}"));
    }
}

#[test]
fn verification_completions_and_batch_publishes_of_the_same_records_all_succeed_on_postgres() {
    let Some(target) = PostgresTarget::new() else {
        return;
    };
    replicable_core::testing::block_on(async {
        verification_completions_and_batch_publishes_of_the_same_records_all_succeed(
            target.open().await,
        )
        .await;
    });
}

#[test]
fn batches_of_the_same_records_in_opposite_orders_all_succeed_on_sqlite() {
    replicable_core::testing::block_on(async {
        let target = SqliteTarget::new();
        batches_of_the_same_records_in_opposite_orders_all_succeed(
            SqlStore::open(&target.url).await.unwrap(),
        )
        .await;
    });
}

#[test]
fn batches_of_the_same_records_in_opposite_orders_all_succeed_on_postgres() {
    let Some(target) = PostgresTarget::new() else {
        return;
    };
    replicable_core::testing::block_on(async {
        batches_of_the_same_records_in_opposite_orders_all_succeed(target.open().await).await;
    });
}

// ---- a batch of rows in the application's own table, on its typed connection ----

mod own_table {
    use replicable_examples::own_database::{App, Location, Note, primary_site};

    use super::*;

    fn note(id: i64, title: &str) -> Note {
        Note {
            id,
            title: format!("{title} {id}"),
            body: format!("body of {id}"),
            pinned: false,
        }
    }

    /// The generation of each note as its events carry it, after `after`.
    async fn generations(site: &Site, after: i64) -> Vec<(String, i64, Option<i64>)> {
        events_after(site, after)
            .await
            .into_iter()
            .map(|(_, kind, p)| {
                (
                    kind,
                    p["model_id"].as_i64().unwrap(),
                    p["generation"].as_i64(),
                )
            })
            .collect()
    }

    /// Writes `notes` and publishes them in one transaction of the application's typed
    /// connection, committed or rolled back.
    macro_rules! write_and_publish {
        ($pool:expr, $site:expr, $notes:expr, $sql:expr, $publish:ident, $commit:expr) => {{
            let mut tx = $pool.begin().await.unwrap();
            for note in $notes {
                sqlx::query($sql)
                    .bind(note.id)
                    .bind(note.title.clone())
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
            let ids = $site.$publish(&mut *tx, $notes).await.unwrap();
            if $commit {
                tx.commit().await.unwrap();
            } else {
                tx.rollback().await.unwrap();
            }
            ids
        }};
    }

    macro_rules! batches_in_the_applications_table {
        ($pool:expr, $site:expr, $pinned:literal) => {{
            let site: &Site = $site;
            let notes: Vec<Note> = (1..=4).map(|id| note(id, "new")).collect();
            let insert = concat!(
                "INSERT INTO notes (id, title, body, pinned) VALUES ($1, $2, 'b', ",
                $pinned,
                ")"
            );
            let ids = write_and_publish!(
                $pool,
                site,
                &notes,
                insert,
                publish_created_events_in,
                false
            );
            assert_eq!(ids.len(), 4);
            assert_eq!(site.event_log().last_event_id().await.unwrap(), None);
            assert!(site.records().get("note", 1).await.unwrap().is_none());

            let ids =
                write_and_publish!($pool, site, &notes, insert, publish_created_events_in, true);
            assert_consecutive(&ids);
            assert_eq!(
                generations(site, 0).await,
                (1..=4)
                    .map(|id| ("created".to_owned(), id, Some(1)))
                    .collect::<Vec<_>>()
            );
            let stored = site.records().get("note", 2).await.unwrap().unwrap();
            assert_eq!(
                (stored.generation, stored.body["title"].clone()),
                (1, "new 2".into())
            );
            assert!(
                site.verification_store()
                    .get("note", 2)
                    .await
                    .unwrap()
                    .is_some()
            );

            let updates: Vec<Note> = [1, 2, 1]
                .into_iter()
                .map(|id| note(id, "changed"))
                .collect();
            let update = "UPDATE notes SET title = $2 WHERE id = $1";
            let last = *ids.last().unwrap();
            let ids = write_and_publish!(
                $pool,
                site,
                &updates,
                update,
                publish_updated_events_in,
                true
            );
            assert_consecutive(&ids);
            assert_eq!(
                generations(site, last).await,
                vec![
                    ("updated".to_owned(), 1, Some(2)),
                    ("updated".to_owned(), 2, Some(2)),
                    ("updated".to_owned(), 1, Some(3)),
                ]
            );

            let gone: Vec<Note> = (3..=4).map(|id| note(id, "gone")).collect();
            let delete = "DELETE FROM notes WHERE id = $1 AND title <> $2";
            let last = *ids.last().unwrap();
            write_and_publish!($pool, site, &gone, delete, publish_deleted_events_in, true);
            assert_eq!(
                generations(site, last).await,
                vec![
                    ("deleted".to_owned(), 3, None),
                    ("deleted".to_owned(), 4, None)
                ]
            );
            assert!(site.records().get("note", 3).await.unwrap().is_none());
            assert!(
                site.verification_store()
                    .get("note", 3)
                    .await
                    .unwrap()
                    .is_none()
            );
            // A re-used id goes on from the generation the deleted row had.
            let again = vec![note(3, "again")];
            let last = site.event_log().last_event_id().await.unwrap().unwrap();
            write_and_publish!($pool, site, &again, insert, publish_created_events_in, true);
            assert_eq!(
                generations(site, last).await,
                vec![("created".to_owned(), 3, Some(2))]
            );
        }};
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_in_the_applications_table_on_sqlite() {
        let target = SqliteTarget::new();
        let location = Location {
            url: format!("sqlite://{}", target.dir.path().join("app.db").display()),
            schema: None,
        };
        App::open(&location).await.unwrap();
        let site = primary_site(&location).await.unwrap();
        let pool = sqlx::SqlitePool::connect(&location.url).await.unwrap();
        batches_in_the_applications_table!(pool, &site, "0");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_in_the_applications_table_on_postgres() {
        let Some(target) = PostgresTarget::new() else {
            return;
        };
        let location = Location {
            url: target.url.clone(),
            schema: Some(format!("{}_app", target.schema)),
        };
        App::open(&location).await.unwrap();
        let site = primary_site(&location).await.unwrap();
        let schema = location.schema.clone().unwrap();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .after_connect(move |conn, _| {
                let schema = schema.clone();
                Box::pin(async move {
                    sqlx::Executor::execute(
                        conn,
                        sqlx::AssertSqlSafe(format!("SET search_path TO {schema}")),
                    )
                    .await
                    .map(|_| ())
                })
            })
            .connect(&location.url)
            .await
            .unwrap();
        batches_in_the_applications_table!(pool, &site, "false");
    }
}

// ---- concurrent single publishes share commits (SQLite group commit) ----

/// Many single publishes at once: each caller gets its own event, every record and event is
/// stored; a publication the database refuses fails its own caller only, whichever group it
/// was written in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_publishes_share_commits_and_fail_alone_on_sqlite() {
    use futures::StreamExt;

    let target = SqliteTarget::new();
    let store = SqlStore::open(&target.url).await.unwrap();
    let site = primary(&store);
    store.create_replicable_tables("entry").await.unwrap();
    exec(
        &store,
        "CREATE TRIGGER refuse_13 BEFORE INSERT ON replicable_events \
         WHEN json_extract(NEW.payload, '$.model_id') = 13 \
         BEGIN SELECT RAISE(ABORT, 'record 13 is refused'); END",
    )
    .await;
    let results: Vec<(i64, Result<Option<i64>, ReplicatorError>)> = futures::stream::iter(1..=200)
        .map(|id| {
            let site = &site;
            async move {
                let result = entry(id, "concurrent")
                    .replicator(site)
                    .publish_created_event()
                    .await;
                (id, result)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut ids = BTreeSet::new();
    for (id, result) in results {
        if id == 13 {
            let err = result.expect_err("the refused record fails its caller");
            assert!(err.to_string().contains("record 13 is refused"), "{err}");
            assert!(
                RecordStore::get(&*store, "entry", 13)
                    .await
                    .unwrap()
                    .is_none()
            );
        } else {
            let event_id = result.unwrap().expect("the primary publishes");
            assert!(ids.insert(event_id), "event {event_id} given twice");
            let stored = RecordStore::get(&*store, "entry", id).await.unwrap();
            assert_eq!(stored.expect("a stored record").generation, 1);
        }
    }
    let events = events_after(&site, 0).await;
    assert_eq!(events.len(), 199);
    assert_eq!(
        events.iter().map(|(id, ..)| *id).collect::<BTreeSet<_>>(),
        ids,
        "the ids the callers got are the events stored"
    );
}
