//! The counts status and metrics read are kept by the database as rows change (issue 11): they
//! equal a grouped count of the tables after writes the framework did not make (an operator's
//! SQL, deletes of every row, `TRUNCATE`), after an upgrade from a schema without them, after
//! the CLI's batch resync and re-verification, and with many PostgreSQL sessions writing at once
//! (where counting must make no session wait for another).

mod cli_common;

use std::sync::Arc;

use chrono::Utc;
use cli_common::{Lane, lanes, run, seeded};
use replicable_core::domain::registry::SyncState;
use replicable_core::domain::verification::VerificationState;
use replicable_core::storage::sql::schema::{
    REPLICABLE_VERSION, SCHEMA_TABLE, replicable_component, replicable_migrations,
};
use replicable_core::storage::sql::{Dialect, SqlOptions, SqlStore};
use replicable_core::storage::{
    RecordStore, RegistryCounts, RegistryStore, VerificationCounts, VerificationStore,
};
use replicable_core::testing::block_on;
use replicable_tests::{PostgresTarget, SqliteTarget};
use sqlx::{AssertSqlSafe, Row};

async fn execute(store: &SqlStore, sql: &str) {
    sqlx::query(AssertSqlSafe(sql.to_owned()))
        .execute(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The registry counts by a grouped count of the whole table: what the store ran before it
/// kept counts.
async fn recount_registry(store: &SqlStore, name: &str) -> RegistryCounts {
    let sql = format!(
        "SELECT state, verification_state, checksum_mismatch, COUNT(*) AS n \
         FROM {name}_registry GROUP BY state, verification_state, checksum_mismatch"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .fetch_all(store.pool())
        .await
        .unwrap();
    let mut c = RegistryCounts::default();
    for row in &rows {
        let state = SyncState::from_value(row.try_get("state").unwrap());
        let verification =
            VerificationState::from_value(row.try_get("verification_state").unwrap());
        let mismatch: i16 = row.try_get("checksum_mismatch").unwrap();
        let n = row.try_get::<i64, _>("n").unwrap() as u64;
        c.registry += n;
        match state {
            Some(SyncState::Pending) => c.pending += n,
            Some(SyncState::Started) => c.started += n,
            Some(SyncState::Synced) => c.synced += n,
            Some(SyncState::Failed) => c.failed += n,
            None => {}
        }
        if state == Some(SyncState::Synced) && verification != Some(VerificationState::Disabled) {
            c.verification_total += n;
        }
        match verification {
            Some(VerificationState::Succeeded) => c.verified += n,
            Some(VerificationState::Failed) => c.verification_failed += n,
            _ => {}
        }
        if mismatch != 0 {
            c.checksum_mismatch += n;
        }
    }
    c
}

async fn count_where(store: &SqlStore, table: &str, condition: &str) -> u64 {
    let sql = format!("SELECT COUNT(*) AS n FROM {table} WHERE {condition}");
    let row = sqlx::query(AssertSqlSafe(sql))
        .fetch_one(store.pool())
        .await
        .unwrap();
    row.try_get::<i64, _>("n").unwrap() as u64
}

async fn recount_verification(store: &SqlStore, name: &str) -> VerificationCounts {
    let table = format!("{name}_verification");
    VerificationCounts {
        total: count_where(store, &table, "1 = 1").await,
        succeeded: count_where(store, &table, "verification_state = 2").await,
        failed: count_where(store, &table, "verification_state = 3").await,
    }
}

/// Every count the store reports for `name` equals a count of its tables.
async fn assert_exact(store: &SqlStore, name: &str, step: &str) {
    assert_eq!(
        RegistryStore::counts(store, name).await.unwrap(),
        recount_registry(store, name).await,
        "registry counts after {step}"
    );
    assert_eq!(
        store.queue_depth(name, Utc::now()).await.unwrap(),
        count_where(
            store,
            &format!("{name}_registry"),
            &format!(
                "state = 0 OR (state = 3 AND (retry_at IS NULL OR retry_at <= {}))",
                store.dialect().now_micros()
            )
        )
        .await,
        "queue depth after {step}"
    );
    assert_eq!(
        VerificationStore::counts(store, name).await.unwrap(),
        recount_verification(store, name).await,
        "verification counts after {step}"
    );
    assert_eq!(
        store.count(name).await.unwrap(),
        count_where(store, &format!("{name}_records"), "1 = 1").await,
        "record count after {step}"
    );
}

/// Stores on SQLite and (when the lane is set up) PostgreSQL, each with its target kept alive.
async fn stores() -> Vec<(Arc<SqlStore>, Box<dyn std::any::Any>)> {
    let mut stores: Vec<(Arc<SqlStore>, Box<dyn std::any::Any>)> = Vec::new();
    let sqlite = SqliteTarget::new();
    stores.push((SqlStore::open(&sqlite.url).await.unwrap(), Box::new(sqlite)));
    if let Some(pg) = PostgresTarget::new() {
        stores.push((pg.open().await, Box::new(pg)));
    }
    stores
}

/// Rows in every state, written through the store.
async fn populate(store: &SqlStore, name: &str) {
    let now = Utc::now();
    let ids: Vec<i64> = (1..=600).collect();
    store.insert_pending(name, &ids, now).await.unwrap();
    let claimed = store.claim_for_sync(name, now, 300).await.unwrap();
    assert_eq!(claimed.len(), 300);
    for id in 1..=200 {
        RegistryStore::mark_pending(store, name, 1000 + id, now)
            .await
            .unwrap();
    }
    for id in 1..=300 {
        VerificationStore::mark_pending(store, name, id)
            .await
            .unwrap();
        store
            .upsert(name, id, &serde_json::json!({ "id": id }))
            .await
            .unwrap();
    }
}

#[test]
fn counts_follow_writes_the_framework_did_not_make() {
    block_on(async {
        for (store, _target) in stores().await {
            let name = "outside";
            let store = &*store;
            populate(store, name).await;
            assert_exact(store, name, "writes through the store").await;
            // An operator's SQL: any state, any column, many rows at once.
            let r = format!("{name}_registry");
            execute(
                store,
                &format!(
                    "UPDATE {r} SET state = 2, verification_state = {name}_id % 5, \
                     checksum_mismatch = {name}_id % 2 WHERE {name}_id % 3 = 0"
                ),
            )
            .await;
            execute(
                store,
                &format!("UPDATE {r} SET state = 3, retry_at = 0 WHERE {name}_id % 7 = 0"),
            )
            .await;
            execute(
                store,
                &format!(
                    "UPDATE {r} SET state = 3, retry_at = 9000000000000000 \
                     WHERE {name}_id % 11 = 0"
                ),
            )
            .await;
            execute(
                store,
                &format!("UPDATE {r} SET retry_count = retry_count + 1, heartbeat_at = 5"),
            )
            .await;
            execute(
                store,
                &format!(
                    "UPDATE {r} SET checksum_mismatch = 1 - checksum_mismatch \
                     WHERE {name}_id % 4 = 0"
                ),
            )
            .await;
            execute(
                store,
                &format!(
                    "UPDATE {name}_verification SET verification_state = {name}_id % 4 \
                     WHERE {name}_id <= 150"
                ),
            )
            .await;
            assert_exact(store, name, "an operator's updates").await;
            execute(store, &format!("DELETE FROM {r} WHERE {name}_id > 550")).await;
            execute(
                store,
                &format!("DELETE FROM {name}_records WHERE {name}_id < 10"),
            )
            .await;
            assert_exact(store, name, "an operator's deletes").await;
            execute(store, &format!("DELETE FROM {r}")).await;
            execute(store, &format!("DELETE FROM {name}_verification")).await;
            assert_exact(store, name, "every row deleted").await;
            let c = RegistryStore::counts(store, name).await.unwrap();
            assert_eq!(c, RegistryCounts::default());
            populate(store, name).await;
            assert_exact(store, name, "rows written again").await;
            if store.dialect() == Dialect::Postgres {
                for table in ["registry", "verification", "records"] {
                    execute(store, &format!("TRUNCATE {name}_{table}")).await;
                }
                assert_exact(store, name, "TRUNCATE").await;
                assert_eq!(store.count(name).await.unwrap(), 0);
                populate(store, name).await;
                assert_exact(store, name, "rows written after TRUNCATE").await;
            }
        }
    });
}

/// A site whose tables were made by the previous release (schema version 4, no counts) and
/// filled: its first read after the upgrade migrates it, and the counts are those of its rows.
#[test]
fn an_upgraded_site_counts_the_rows_it_had() {
    block_on(async {
        for (store, target) in stores().await {
            let name = "legacy";
            let dialect = store.dialect();
            let n = name;
            for statement in replicable_migrations(dialect, name, "", 0, 4) {
                execute(&store, &statement).await;
            }
            execute(&store, SCHEMA_TABLE).await;
            execute(
                &store,
                &format!(
                    "INSERT INTO replicable_schema (component, version) VALUES ('{}', 4)",
                    replicable_component(name)
                ),
            )
            .await;
            // Rows in every state, written as the old release would have.
            let values = (1..=500)
                .map(|id| {
                    format!(
                        "({id}, {}, {}, {}, {}, 0)",
                        id % 4,
                        id % 5,
                        id % 2,
                        if id % 3 == 0 { "0" } else { "NULL" }
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            execute(
                &store,
                &format!(
                    "INSERT INTO {n}_registry ({n}_id, state, verification_state, \
                     checksum_mismatch, retry_at, created_at) VALUES {values}"
                ),
            )
            .await;
            let values = (1..=300)
                .map(|id| format!("({id}, {})", id % 5))
                .collect::<Vec<_>>()
                .join(", ");
            execute(
                &store,
                &format!(
                    "INSERT INTO {n}_verification ({n}_id, verification_state) VALUES {values}"
                ),
            )
            .await;
            let values = (1..=250)
                .map(|id| format!("({id}, 1, '{{}}')"))
                .collect::<Vec<_>>()
                .join(", ");
            execute(
                &store,
                &format!("INSERT INTO {n}_records ({n}_id, generation, body) VALUES {values}"),
            )
            .await;
            store.close().await;
            drop(store);

            let reopened = match target.downcast_ref::<PostgresTarget>() {
                Some(pg) => pg.open().await,
                None => {
                    let sqlite = target.downcast_ref::<SqliteTarget>().unwrap();
                    SqlStore::open_with(&sqlite.url, SqlOptions::default())
                        .await
                        .unwrap()
                }
            };
            let counts = RegistryStore::counts(&*reopened, name).await.unwrap();
            assert_eq!(
                reopened
                    .schema_version(&replicable_component(name))
                    .await
                    .unwrap(),
                Some(REPLICABLE_VERSION),
                "the read migrated the tables"
            );
            assert_eq!(
                (counts.registry, counts.pending, counts.failed),
                (500, 125, 125)
            );
            assert_exact(&reopened, name, "the upgrade").await;
            // And they are kept from then on.
            populate(&reopened, name).await;
            assert_exact(&reopened, name, "writes after the upgrade").await;
        }
    });
}

/// The CLI's batch resync and re-verification (each batch one statement) keep the counts exact.
#[test]
fn batch_resync_and_reverify_keep_the_counts_exact() {
    lanes(|lane: Lane| {
        Box::pin(async move {
            let Some(s) = seeded(lane).await else { return };
            let secondary = &*s.secondary_store;
            assert_exact(secondary, "artifact", "replication").await;
            let batches = ["--batch-size", "2", "--pause-ms", "0"];
            for args in [
                &["reverify", "artifact", "--all"][..],
                &["resync", "artifact", "--failed"][..],
                &["resync", "artifact", "--all"][..],
            ] {
                let args: Vec<&str> = args.iter().chain(&batches).copied().collect();
                run(&s.secondary, &args).await.unwrap();
                assert_exact(secondary, "artifact", &args.join(" ")).await;
            }
            let c = RegistryStore::counts(secondary, "artifact").await.unwrap();
            assert_eq!((c.registry, c.pending, c.synced), (5, 5, 0));
            let primary = s.primary.verification_store();
            run(
                &s.primary,
                &["reverify", "artifact", "--all", "--batch-size", "2"],
            )
            .await
            .unwrap();
            let v = primary.counts("artifact").await.unwrap();
            assert_eq!((v.total, v.succeeded, v.failed), (5, 0, 0), "{v:?}");
        })
    });
}

/// PostgreSQL: many sessions change rows at once and the counts stay exact; a session holding
/// counted changes in an open transaction makes no other session wait; the rows of many
/// sessions are folded by a reader, keeping the sums.
#[test]
fn postgres_sessions_count_without_waiting_for_each_other() {
    block_on(async {
        let Some(target) = PostgresTarget::new() else {
            return;
        };
        let name = "busy";
        let store = target.open().await;
        let now = Utc::now();
        store
            .insert_pending(name, &(1..=2000).collect::<Vec<_>>(), now)
            .await
            .unwrap();
        // Six workers, each its own pool, claim and complete every row.
        let mut workers = Vec::new();
        for w in 0..6 {
            let handle = target.open().await;
            workers.push(tokio::spawn(async move {
                let mut done = 0;
                loop {
                    let claimed = handle.claim_for_sync(name, Utc::now(), 25).await.unwrap();
                    if claimed.is_empty() {
                        return done;
                    }
                    for mut row in claimed {
                        if (row.model_id + w) % 5 == 0 {
                            row.mark_failed(
                                &replicable_core::domain::failure::SyncFailure::new("x"),
                                Utc::now(),
                                &Default::default(),
                                0,
                            )
                            .unwrap();
                            row.retry_at = Some(Utc::now() + chrono::Duration::hours(1));
                        } else {
                            row.mark_synced(Some(1), true).unwrap();
                        }
                        assert!(RegistryStore::update(&*handle, name, &row).await.unwrap());
                        done += 1;
                    }
                }
            }));
        }
        let mut done = 0;
        for worker in workers {
            done += worker.await.unwrap();
        }
        assert_eq!(done, 2000);
        assert_exact(&store, name, "six workers").await;
        let c = RegistryStore::counts(&*store, name).await.unwrap();
        assert_eq!(
            (c.registry, c.synced + c.failed, c.pending),
            (2000, 2000, 0)
        );

        // An open transaction that changed counted rows...
        let url = &target.url;
        let schema = &target.schema;
        let mut holder = <sqlx::PgConnection as sqlx::Connection>::connect(url)
            .await
            .unwrap();
        let mut tx = sqlx::Connection::begin(&mut holder).await.unwrap();
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {schema}.{name}_registry SET state = 0 WHERE {name}_id <= 10"
        )))
        .execute(&mut *tx)
        .await
        .unwrap();
        // ... holds no row another session's counted change needs (with one row for all, this
        // would wait for the lock, and fail on the timeout).
        let mut other = <sqlx::PgConnection as sqlx::Connection>::connect(url)
            .await
            .unwrap();
        sqlx::query("SET lock_timeout TO '2s'")
            .execute(&mut other)
            .await
            .unwrap();
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {schema}.{name}_registry SET state = 0 WHERE {name}_id > 1990"
        )))
        .execute(&mut other)
        .await
        .expect("a counted change while another session's is uncommitted");
        assert_exact(&store, name, "a change committed beside an open one").await;
        tx.commit().await.unwrap();
        assert_eq!(
            RegistryStore::counts(&*store, name).await.unwrap().pending,
            20
        );
        assert_exact(&store, name, "both committed").await;

        // Many sessions, one change each: a row per session until a reader folds them.
        for i in 0..80 {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
                .await
                .unwrap();
            sqlx::query(AssertSqlSafe(format!(
                "UPDATE {schema}.{name}_registry SET checksum_mismatch = 1 - checksum_mismatch \
                 WHERE {name}_id = {}",
                100 + i
            )))
            .execute(&mut conn)
            .await
            .unwrap();
            sqlx::Connection::close(conn).await.unwrap();
        }
        let rows = || async { count_where(&store, &format!("{name}_counts"), "1 = 1").await };
        assert!(rows().await > 64, "a row per session");
        assert_exact(&store, name, "eighty sessions").await;
        assert!(rows().await < 16, "folded: {}", rows().await);
        assert_exact(&store, name, "the fold").await;
    });
}
