//! Opening SQL stores: what goes wrong is reported with the URL and the cause, and a schema
//! newer than this build is refused.

use std::time::Duration;

use replicable_core::StoreError;
use replicable_core::storage::sql::schema::{CORE_VERSION, REPLICABLE_VERSION};
use replicable_core::storage::sql::{SqlOptions, SqlStore};
use replicable_core::testing::block_on;
use replicable_tests::{PostgresTarget, SqliteTarget};

fn open_error(result: Result<std::sync::Arc<SqlStore>, StoreError>) -> StoreError {
    match result {
        Ok(_) => panic!("opening must fail"),
        Err(e) => e,
    }
}

#[test]
fn a_corrupt_sqlite_file_is_refused_naming_the_url_and_cause() {
    block_on(async {
        let target = SqliteTarget::new();
        let path = target.dir.path().join("site.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = open_error(SqlStore::open(&target.url).await);
        let text = err.to_string();
        assert!(matches!(err, StoreError::Open { .. }), "{text}");
        assert!(text.contains(&target.url), "names the URL: {text}");
        assert!(text.contains("not a database"), "names the cause: {text}");
    });
}

#[test]
fn an_unreadable_sqlite_location_is_refused_naming_the_url() {
    block_on(async {
        let url = "sqlite:///nonexistent-replicable-dir/deeper/site.db";
        let err = open_error(SqlStore::open(url).await);
        let text = err.to_string();
        assert!(text.contains(url), "{text}");
        assert!(text.contains("unable to open database file"), "{text}");
    });
}

#[test]
fn an_unreachable_postgres_is_refused_naming_the_url_without_its_password() {
    block_on(async {
        // Port 1 on loopback: nothing listens there.
        let url = "postgres://app:s3cret@127.0.0.1:1/geo";
        let options = SqlOptions {
            acquire_timeout: Duration::from_secs(2),
            ..SqlOptions::default()
        };
        let err = open_error(SqlStore::open_with(url, options).await);
        let text = err.to_string();
        assert!(
            text.contains("postgres://app:***@127.0.0.1:1/geo"),
            "{text}"
        );
        assert!(
            !text.contains("s3cret"),
            "the password must not leak: {text}"
        );
        assert!(
            text.contains("refused") || text.contains("timed out"),
            "names the cause: {text}"
        );
    });
}

#[test]
fn an_unknown_engine_is_refused() {
    block_on(async {
        let err = open_error(SqlStore::open("mysql://localhost/x").await);
        assert!(err.to_string().contains("unknown engine"), "{err}");
        let err = replicable_core::storage::open("redis://x")
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("unknown engine"), "{err}");
    });
}

async fn bump(store: &SqlStore, component: &str, version: i64) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE replicable_schema SET version = {version} WHERE component = '{component}'"
    )))
    .execute(store.pool())
    .await
    .unwrap();
}

async fn newer_schema_is_refused(
    open: impl AsyncFn() -> Result<std::sync::Arc<SqlStore>, StoreError>,
) {
    let store = open().await.unwrap();
    assert_eq!(
        store.schema_version("core").await.unwrap(),
        Some(CORE_VERSION)
    );
    // A replicable's tables are versioned too.
    use replicable_core::storage::RegistryStore;
    store
        .mark_pending("schema_probe", 1, chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(
        store
            .schema_version("replicable:schema_probe")
            .await
            .unwrap(),
        Some(REPLICABLE_VERSION)
    );
    bump(&store, "core", CORE_VERSION + 1).await;
    store.close().await;
    let err = open_error(open().await);
    match &err {
        StoreError::SchemaTooNew {
            found, supported, ..
        } => {
            assert_eq!((*found, *supported), (CORE_VERSION + 1, CORE_VERSION));
        }
        other => panic!("expected SchemaTooNew, got {other}"),
    }
    assert!(err.to_string().contains("upgrade the binary"), "{err}");
    // Reopening with the old version works again once the schema matches.
    let store_url_err = err.to_string();
    assert!(
        store_url_err.contains(&format!("schema version {}", CORE_VERSION + 1)),
        "{store_url_err}"
    );
}

#[test]
fn a_newer_sqlite_schema_is_refused() {
    block_on(async {
        let target = SqliteTarget::new();
        newer_schema_is_refused(async || SqlStore::open(&target.url).await).await;
    });
}

#[test]
fn a_newer_postgres_schema_is_refused() {
    block_on(async {
        let Some(target) = PostgresTarget::new() else {
            return;
        };
        let options = SqlOptions {
            schema: Some(target.schema.clone()),
            ..SqlOptions::default()
        };
        newer_schema_is_refused(async || SqlStore::open_with(&target.url, options.clone()).await)
            .await;
    });
}

#[test]
fn a_newer_replicable_schema_is_refused_on_first_use() {
    block_on(async {
        use replicable_core::storage::RegistryStore;
        let target = SqliteTarget::new();
        let store = SqlStore::open(&target.url).await.unwrap();
        store
            .mark_pending("schema_probe", 1, chrono::Utc::now())
            .await
            .unwrap();
        bump(&store, "replicable:schema_probe", REPLICABLE_VERSION + 5).await;
        let reopened = SqlStore::open(&target.url).await.unwrap();
        let err = reopened.get("schema_probe", 1).await.unwrap_err();
        assert!(
            matches!(err, StoreError::SchemaTooNew { found, .. } if found == REPLICABLE_VERSION + 5),
            "{err}"
        );
    });
}

#[test]
fn the_replicables_named_in_the_options_get_their_tables_at_open() {
    block_on(async {
        let target = SqliteTarget::new();
        // The store knows no replicable by itself: opening creates no replicable's tables.
        let plain = SqlStore::open(&target.url).await.unwrap();
        assert_eq!(
            plain.schema_version("replicable:early").await.unwrap(),
            None
        );
        plain.close().await;
        let options = SqlOptions {
            replicables: vec!["early".into()],
            ..SqlOptions::default()
        };
        let store = SqlStore::open_with(&target.url, options.clone())
            .await
            .unwrap();
        assert_eq!(
            store.schema_version("replicable:early").await.unwrap(),
            Some(REPLICABLE_VERSION)
        );
        // A named replicable whose tables are newer than this build is refused at open.
        bump(&store, "replicable:early", REPLICABLE_VERSION + 1).await;
        store.close().await;
        let err = open_error(SqlStore::open_with(&target.url, options).await);
        assert!(
            matches!(err, StoreError::SchemaTooNew { found, .. } if found == REPLICABLE_VERSION + 1),
            "{err}"
        );
    });
}

#[test]
fn a_look_only_open_of_a_missing_sqlite_file_is_refused_and_creates_nothing() {
    block_on(async {
        let target = SqliteTarget::new();
        let path = target.dir.path().join("site.db");
        let options = SqlOptions {
            create_if_missing: false,
            ..SqlOptions::default()
        };
        let err = open_error(SqlStore::open_with(&target.url, options.clone()).await);
        let text = err.to_string();
        assert!(matches!(err, StoreError::Open { .. }), "{text}");
        assert!(text.contains("no database file at"), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(!path.exists(), "nothing was created");
        // A site that runs creates it; then a look-only open works.
        drop(SqlStore::open(&target.url).await.unwrap());
        assert!(path.exists());
        SqlStore::open_with(&target.url, options).await.unwrap();
    });
}

#[test]
fn only_event_log_appends_wait_for_the_disk_unless_every_commit_is_asked_to() {
    use sqlx::Row;
    block_on(async {
        let target = SqliteTarget::new();
        let synchronous = |store: std::sync::Arc<SqlStore>| async move {
            let row = sqlx::query("PRAGMA synchronous")
                .fetch_one(store.pool())
                .await
                .unwrap();
            row.try_get::<i64, _>(0).unwrap()
        };
        // 1 = NORMAL, 2 = FULL.
        assert_eq!(
            synchronous(SqlStore::open(&target.url).await.unwrap()).await,
            1
        );
        let every = SqlOptions {
            sync_every_commit: true,
            ..SqlOptions::default()
        };
        assert_eq!(
            synchronous(SqlStore::open_with(&target.url, every).await.unwrap()).await,
            2
        );
        if let Some(pg) = PostgresTarget::new() {
            let store = pg.open().await;
            let row = sqlx::query("SHOW synchronous_commit")
                .fetch_one(store.pool())
                .await
                .unwrap();
            assert_eq!(row.try_get::<String, _>(0).unwrap(), "off");
        }
    });
}
