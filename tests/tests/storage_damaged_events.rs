//! A damaged row of the event log (a timestamp out of range, bytes that are not UTF-8, a NULL)
//! is read back as a damaged entry in its place, and the log cursor records it as skipped and
//! moves on instead of stopping for good.

use std::sync::Arc;

use replicable_core::event::LogEntry;
use replicable_core::log_cursor;
use replicable_core::prelude::*;
use replicable_core::storage::sql::SqlStore;
use replicable_core::storage::{Backend, EventLog};
use replicable_core::testing::block_on;
use replicable_strategies::BlobStrategy;
use replicable_tests::{PostgresTarget, SqliteTarget};
use sqlx::{AssertSqlSafe, Executor};

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(BlobStrategy)]
pub struct Scan {
    #[replicable(id)]
    pub id: i64,
    #[replicable(blob)]
    pub key: String,
}

async fn publish(primary: &Site, id: i64) {
    let scan = Scan {
        id,
        key: format!("scans/{id}"),
    };
    scan.replicator(primary)
        .publish_created_event()
        .await
        .unwrap();
}

async fn exec(store: &SqlStore, sql: &str) {
    store
        .pool()
        .execute(AssertSqlSafe(sql.to_owned()))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

const INSERT: &str =
    "INSERT INTO replicable_events (replicable_name, event_name, payload, created_at) VALUES";

/// Publishes events 1 and (after the damaged rows `damage` writes) a last one, then checks the
/// log and the cursor. `expected` names a fragment of each damaged row's reason, in order.
async fn damaged_rows_are_skipped(store: Arc<SqlStore>, damage: &[String], expected: &[&str]) {
    let primary = Site::primary("primary")
        .database(store.clone() as Arc<dyn Backend>)
        .build()
        .expect("a site");
    publish(&primary, 1).await;
    for sql in damage {
        exec(&store, sql).await;
    }
    publish(&primary, 2).await;
    let entries = store.read_after(0, 100).await.unwrap();
    assert_eq!(entries.len(), damage.len() + 2, "{entries:#?}");
    assert!(matches!(entries.first(), Some(LogEntry::Event(_))));
    assert!(matches!(entries.last(), Some(LogEntry::Event(_))));
    for (entry, fragment) in entries[1..=damage.len()].iter().zip(expected) {
        let LogEntry::Damaged(d) = entry else {
            panic!("expected a damaged entry: {entry:?}")
        };
        assert!(d.reason.contains(fragment), "{fragment:?} in {d:?}");
    }

    let secondary = Site::secondary("secondary", Arc::new(InProcessPrimary::new(primary)))
        .in_memory()
        .build()
        .expect("a site");
    let report = log_cursor::catch_up(&secondary, 50).await.unwrap();
    assert_eq!(report.read, damage.len() + 2);
    assert_eq!(report.skipped, damage.len());
    assert_eq!(report.consumed, 2);
    assert_eq!(report.cursor, entries.last().unwrap().id());
    let skipped = secondary.registry_store().skipped_events(10).await.unwrap();
    assert_eq!(
        skipped.iter().map(|s| s.event_id).collect::<Vec<_>>(),
        entries[1..=damage.len()]
            .iter()
            .map(LogEntry::id)
            .collect::<Vec<_>>()
    );
    for (s, fragment) in skipped.iter().zip(expected) {
        assert!(s.reason.contains("is damaged"), "{s:?}");
        assert!(s.reason.contains(fragment), "{s:?}");
    }
    for id in [1, 2] {
        assert!(
            secondary
                .registry_store()
                .get("scan", id)
                .await
                .unwrap()
                .is_some(),
            "event of scan {id} consumed"
        );
    }
}

#[test]
fn damaged_event_rows_are_skipped_on_sqlite() {
    block_on(async {
        let target = SqliteTarget::new();
        let store = SqlStore::open(&target.url).await.unwrap();
        let damage = [
            format!("{INSERT} ('scan', 'created', '{{}}', 9223372036854775807)"),
            format!("{INSERT} (X'FFFE6E', 'created', '{{}}', 0)"),
            format!("{INSERT} (CAST(X'80' AS TEXT), 'created', '{{}}', 0)"),
            format!("{INSERT} ('scan', 'created', X'C3', 0)"),
            format!("{INSERT} ('scan', 'created', '{{}}', 'yesterday')"),
        ];
        damaged_rows_are_skipped(
            store,
            &damage,
            &[
                "`created_at`: timestamp 9223372036854775807 is out of range",
                "`replicable_name` is not UTF-8",
                "`replicable_name` is not UTF-8",
                "`payload` is not UTF-8",
                "`created_at`",
            ],
        )
        .await;
    });
}

#[test]
fn damaged_event_rows_are_skipped_on_postgres() {
    let Some(target) = PostgresTarget::new() else {
        return;
    };
    block_on(async {
        let store = target.open().await;
        // A column the schema says is never NULL, as a damaged or hand-edited table may have.
        exec(
            &store,
            "ALTER TABLE replicable_events ALTER COLUMN event_name DROP NOT NULL",
        )
        .await;
        let damage = [
            format!("{INSERT} ('scan', 'created', '{{}}', -9223372036854775807)"),
            format!("{INSERT} ('scan', NULL, '{{}}', 0)"),
        ];
        damaged_rows_are_skipped(
            store,
            &damage,
            &["is out of range", "column `event_name` is NULL"],
        )
        .await;
    });
}
