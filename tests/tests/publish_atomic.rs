//! Publishing writes the record, its verification row and its event in one transaction when
//! the site keeps them in one database: an event that cannot be written fails the caller and
//! leaves nothing behind.

use std::sync::Arc;

use replicable_core::prelude::*;
use replicable_core::storage::sql::SqlStore;
use replicable_core::storage::{Backend, EventLog, RecordStore, VerificationStore};
use replicable_core::testing::block_on;
use replicable_strategies::BlobStrategy;
use replicable_tests::{PostgresTarget, SqliteTarget};
use sqlx::{AssertSqlSafe, Executor};

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(BlobStrategy)]
pub struct Invoice {
    #[replicable(id)]
    pub id: i64,
    #[replicable(blob)]
    pub key: String,
}

fn invoice(id: i64) -> Invoice {
    Invoice {
        id,
        key: format!("invoices/{id}"),
    }
}

async fn exec(store: &SqlStore, sql: &str) {
    store
        .pool()
        .execute(AssertSqlSafe(sql.to_owned()))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// With `refuse` in force the event log refuses every insert; `allow` lifts it.
async fn a_refused_event_leaves_nothing(store: Arc<SqlStore>, refuse: &[&str], allow: &str) {
    let primary = Site::primary("primary")
        .database(store.clone() as Arc<dyn Backend>)
        .build()
        .expect("a site");
    // A record published before: its generation and checksum must survive a failed update.
    invoice(1)
        .replicator(&primary)
        .publish_created_event()
        .await
        .unwrap();
    let mut v = store
        .claim("invoice", chrono::Utc::now(), 10)
        .await
        .unwrap();
    let mut row = v.remove(0);
    row.verification
        .succeed("ab".repeat(32), chrono::Utc::now())
        .unwrap();
    assert!(
        VerificationStore::update(&*store, "invoice", &row)
            .await
            .unwrap()
    );
    let before = VerificationStore::get(&*store, "invoice", 1).await.unwrap();
    let last = store.last_event_id().await.unwrap();

    for sql in refuse {
        exec(&store, sql).await;
    }
    let err = invoice(2)
        .replicator(&primary)
        .publish_created_event()
        .await
        .expect_err("the event cannot be written");
    assert!(err.to_string().contains("disk full"), "{err}");
    assert!(
        RecordStore::get(&*store, "invoice", 2)
            .await
            .unwrap()
            .is_none(),
        "no record without its event"
    );
    assert!(
        VerificationStore::get(&*store, "invoice", 2)
            .await
            .unwrap()
            .is_none(),
        "no verification row without its event"
    );
    invoice(1)
        .replicator(&primary)
        .publish_deleted_event()
        .await
        .expect_err("the event cannot be written");
    let kept = RecordStore::get(&*store, "invoice", 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.generation, 1, "the record is untouched");
    assert_eq!(
        VerificationStore::get(&*store, "invoice", 1).await.unwrap(),
        before,
        "its verification row is untouched"
    );
    assert_eq!(store.last_event_id().await.unwrap(), last);

    exec(&store, allow).await;
    let id = invoice(2)
        .replicator(&primary)
        .publish_created_event()
        .await
        .unwrap()
        .unwrap();
    assert!(Some(id) > last);
    assert_eq!(
        RecordStore::get(&*store, "invoice", 2)
            .await
            .unwrap()
            .unwrap()
            .generation,
        1
    );
    assert!(
        VerificationStore::get(&*store, "invoice", 2)
            .await
            .unwrap()
            .is_some()
    );
    // Re-publishing `created` for an immutable blob keeps its succeeded checksum.
    invoice(1)
        .replicator(&primary)
        .publish_created_event()
        .await
        .unwrap();
    let again = VerificationStore::get(&*store, "invoice", 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.succeeded_checksum(), Some("ab".repeat(32).as_str()));
}

#[test]
fn a_refused_event_leaves_no_record_and_no_verification_row_on_sqlite() {
    block_on(async {
        let target = SqliteTarget::new();
        let store = SqlStore::open(&target.url).await.unwrap();
        a_refused_event_leaves_nothing(
            store,
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
fn a_refused_event_leaves_no_record_and_no_verification_row_on_postgres() {
    let Some(target) = PostgresTarget::new() else {
        return;
    };
    block_on(async {
        let store = target.open().await;
        a_refused_event_leaves_nothing(
            store,
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
