//! Replicating what lives in the application's own database (issue 10), on real SQLite files
//! and the PostgreSQL lane: publishing in the application's transaction, rows found by backfill
//! in the application's table, copies written into the secondary's table.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use replicable_core::engine::{Engine, EngineConfig};
use replicable_core::event::LogEntry;
use replicable_core::prelude::*;
use replicable_examples::own_database::{
    App, Location, Note, primary_site, run_demo, secondary_site,
};
use replicable_tests::{PostgresTarget, SqliteTarget};
use sqlx::Row;

fn sqlite(dir: &tempfile::TempDir, name: &str) -> Location {
    Location {
        url: format!("sqlite://{}", dir.path().join(name).display()),
        schema: None,
    }
}

fn postgres(target: &PostgresTarget, side: &str) -> Location {
    Location {
        url: target.url.clone(),
        schema: Some(format!("{}_{side}", target.schema)),
    }
}

fn note(id: i64, title: &str) -> Note {
    Note {
        id,
        title: title.into(),
        body: format!("body of {id}"),
        pinned: id % 2 == 0,
    }
}

fn config() -> EngineConfig {
    let mut config = EngineConfig::default();
    config.idle.min = Duration::from_millis(20);
    config.idle.max = Duration::from_millis(200);
    config.periods.backfill = Duration::from_millis(300);
    config.periods.verification_maintenance = Duration::from_millis(300);
    config
}

fn descriptor() -> &'static replicable_core::ReplicableDescriptor {
    replicable_core::descriptor::register::<Note>();
    replicable_core::find_replicable("note").unwrap().unwrap()
}

/// Events of the primary's log, as (kind, model id).
async fn events(site: &Site) -> Vec<(String, i64)> {
    site.event_log()
        .read_after(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|entry| match entry {
            LogEntry::Event(e) => (
                e.event_name,
                e.payload["model_id"].as_i64().expect("a model id"),
            ),
            LogEntry::Damaged(d) => panic!("damaged event {d:?}"),
        })
        .collect()
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- a rolled-back transaction publishes nothing (typed sqlx connections) ----

/// The checks after the application's transaction: rolled back, nothing; committed, the
/// row, its event, generation 1 and a pending verification row.
async fn after_transaction(site: &Site, committed: bool, event_id: i64) {
    let names: Vec<(String, i64)> = events(site).await;
    let record = site.records().get("note", 1).await.unwrap();
    let verification = site.verification_store().get("note", 1).await.unwrap();
    if committed {
        assert_eq!(names, vec![("created".to_owned(), 1)]);
        assert_eq!(
            site.event_log().last_event_id().await.unwrap(),
            Some(event_id)
        );
        let record = record.expect("the committed row");
        assert_eq!(record.generation, 1);
        assert_eq!(record.body["title"], "committed");
        assert_eq!(
            verification
                .expect("a verification row")
                .verification
                .verification_state,
            VerificationState::Pending
        );
    } else {
        assert!(
            names.is_empty(),
            "a rolled-back transaction published {names:?}"
        );
        assert_eq!(site.event_log().last_event_id().await.unwrap(), None);
        assert!(record.is_none());
        assert!(verification.is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_transaction_publishes_nothing_on_sqlite() {
    let target = SqliteTarget::new();
    let location = sqlite(&target.dir, "app.db");
    App::open(&location).await.unwrap();
    let site = primary_site(&location).await.unwrap();
    let pool = sqlx::SqlitePool::connect(&location.url).await.unwrap();
    for commit in [false, true] {
        let mut tx = pool.begin().await.unwrap();
        let title = if commit { "committed" } else { "rolled back" };
        sqlx::query("INSERT INTO notes (id, title, body, pinned) VALUES (1, $1, 'b', 0)")
            .bind(title)
            .execute(&mut *tx)
            .await
            .unwrap();
        let event_id = note(1, title)
            .replicator(&site)
            .publish_created_event_in(&mut *tx)
            .await
            .unwrap()
            .expect("the primary publishes");
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        after_transaction(&site, commit, event_id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_transaction_publishes_nothing_on_postgres() {
    let Some(target) = PostgresTarget::new() else {
        return;
    };
    let location = postgres(&target, "app");
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
    for commit in [false, true] {
        let mut tx = pool.begin().await.unwrap();
        let title = if commit { "committed" } else { "rolled back" };
        sqlx::query("INSERT INTO notes (id, title, body, pinned) VALUES (1, $1, 'b', false)")
            .bind(title)
            .execute(&mut *tx)
            .await
            .unwrap();
        let event_id = note(1, title)
            .replicator(&site)
            .publish_created_event_in(&mut *tx)
            .await
            .unwrap()
            .expect("the primary publishes");
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        after_transaction(&site, commit, event_id).await;
    }
}

/// A publication the site's database cannot take is an error to the caller, and the
/// application's transaction rolls back with nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_publish_in_a_transaction_is_an_error() {
    let target = SqliteTarget::new();
    let location = sqlite(&target.dir, "app.db");
    App::open(&location).await.unwrap();
    let site = primary_site(&location).await.unwrap();
    // Another application database: the framework's tables are not there.
    let other = sqlite(&target.dir, "other.db");
    let other_app = App::open(&other).await.unwrap();
    let pool = sqlx::SqlitePool::connect(&other.url).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO notes (id, title, body, pinned) VALUES (5, 't', 'b', 0)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let err = note(5, "t")
        .replicator(&site)
        .publish_created_event_in(&mut *tx)
        .await
        .expect_err("the framework's tables are not in that database");
    let text = err.to_string();
    assert!(text.contains("note") && text.contains('5'), "{text}");
    tx.rollback().await.unwrap();
    assert!(other_app.notes().await.unwrap().is_empty());
    assert!(events(&site).await.is_empty());
}

// ---- SIGKILL right after the commit loses nothing ----

fn writer(location: &Location, args: &[&str]) -> std::process::Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_own_db_writer"))
        .arg(&location.url)
        .arg(location.schema.as_deref().unwrap_or("-"))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("the writer starts");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "committed", "the writer committed");
    child
}

async fn killed_after_commit(primary: Location, secondary: Location) {
    App::open(&primary).await.unwrap();
    // Published in the transaction: the event committed with the row.
    let mut child = writer(&primary, &["publish", "42"]);
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    // Written with no event at all: backfill finds the row.
    let mut child = writer(&primary, &["bulk", "100", "109"]);
    child.kill().expect("SIGKILL");
    child.wait().unwrap();

    let site = primary_site(&primary).await.unwrap();
    assert_eq!(events(&site).await, vec![("created".to_owned(), 42)]);
    assert_eq!(
        site.records()
            .get("note", 42)
            .await
            .unwrap()
            .unwrap()
            .generation,
        1
    );
    assert_eq!(site.records().count("note").await.unwrap(), 11);

    let secondary_app = App::open(&secondary).await.unwrap();
    let link = Arc::new(InProcessPrimary::new(&site));
    let secondary_site = secondary_site(&secondary, link).await.unwrap();
    let d = descriptor();
    let primary_engine = Engine::new(site.clone(), vec![d])
        .config(config())
        .start()
        .await
        .unwrap();
    let secondary_engine = Engine::new(secondary_site.clone(), vec![d])
        .config(config())
        .start()
        .await
        .unwrap();
    wait_until("the secondary holds all 11 notes, verified", async || {
        let counts = secondary_site
            .registry_store()
            .counts("note")
            .await
            .unwrap();
        counts.synced == 11 && counts.verified == 11
    })
    .await;
    secondary_engine.shutdown().await;
    primary_engine.shutdown().await;
    let ids: Vec<i64> = secondary_app
        .notes()
        .await
        .unwrap()
        .iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(ids, [42].into_iter().chain(100..=109).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_after_its_commit_loses_nothing_on_sqlite() {
    let target = SqliteTarget::new();
    killed_after_commit(
        sqlite(&target.dir, "primary.db"),
        sqlite(&target.dir, "secondary.db"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_after_its_commit_loses_nothing_on_postgres() {
    let Some(target) = PostgresTarget::new() else {
        return;
    };
    killed_after_commit(postgres(&target, "p"), postgres(&target, "s")).await;
}

// ---- 10,000 rows inserted by one SQL statement end synced and verified ----

async fn bulk_rows_are_replicated(primary: Location, secondary: Location) {
    let report = run_demo(&primary, &secondary, 10_000, Duration::from_secs(600))
        .await
        .unwrap();
    // 20 created, one deleted, one rolled back, 10,000 imported.
    assert_eq!(report.primary_notes, 10_019);
    assert_eq!(report.secondary_notes, 10_019);
    assert!(report.identical, "{report:?}");
    assert_eq!(report.synced, 10_019);
    assert_eq!(report.verified, 10_019);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_bulk_rows_end_synced_and_verified_on_sqlite() {
    let target = SqliteTarget::new();
    bulk_rows_are_replicated(
        sqlite(&target.dir, "primary.db"),
        sqlite(&target.dir, "secondary.db"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_bulk_rows_end_synced_and_verified_on_postgres() {
    let Some(target) = PostgresTarget::new() else {
        return;
    };
    bulk_rows_are_replicated(postgres(&target, "p"), postgres(&target, "s")).await;
}

// ---- the secondary's copy is in its own table, readable with plain SQL ----

async fn copies_are_rows(primary: Location, secondary: Location) {
    let app = App::open(&primary).await.unwrap();
    let secondary_app = App::open(&secondary).await.unwrap();
    let site = primary_site(&primary).await.unwrap();
    let link = Arc::new(InProcessPrimary::new(&site));
    let secondary_site = secondary_site(&secondary, link).await.unwrap();
    let d = descriptor();
    let engine = Engine::new(secondary_site.clone(), vec![d])
        .config(config())
        .start()
        .await
        .unwrap();
    let title = |pool: sqlx::AnyPool| async move {
        sqlx::query("SELECT title FROM notes WHERE id = 3")
            .fetch_optional(&pool)
            .await
            .unwrap()
            .map(|row| row.get::<String, _>("title"))
    };
    app.create_note(&site, &note(3, "first")).await.unwrap();
    wait_until("the copy is in the secondary's table", async || {
        title(secondary_app.pool.clone()).await.as_deref() == Some("first")
    })
    .await;
    app.update_note(&site, &note(3, "second")).await.unwrap();
    wait_until("the change is in the secondary's table", async || {
        title(secondary_app.pool.clone()).await.as_deref() == Some("second")
    })
    .await;
    assert_eq!(
        secondary_app.notes().await.unwrap(),
        vec![note(3, "second")]
    );
    // The copy's generation, in the framework's side table.
    let copy = secondary_site
        .records()
        .get("note", 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(copy.generation, 2);
    // An older generation never replaces it.
    let mut older = copy.clone();
    older.generation = 1;
    older.body["title"] = "older".into();
    assert!(
        !secondary_site
            .records()
            .put_unless_older("note", &older)
            .await
            .unwrap()
    );
    assert_eq!(
        title(secondary_app.pool.clone()).await.as_deref(),
        Some("second")
    );
    // A deletion removes the row.
    app.delete_note(&site, &note(3, "")).await.unwrap();
    wait_until("the row is gone from the secondary's table", async || {
        title(secondary_app.pool.clone()).await.is_none()
    })
    .await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_copies_are_rows_of_its_table_on_sqlite() {
    let target = SqliteTarget::new();
    copies_are_rows(
        sqlite(&target.dir, "primary.db"),
        sqlite(&target.dir, "secondary.db"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_copies_are_rows_of_its_table_on_postgres() {
    let Some(target) = PostgresTarget::new() else {
        return;
    };
    copies_are_rows(postgres(&target, "p"), postgres(&target, "s")).await;
}

// ---- a model kept in the catalogue publishes in the application's transaction too ----

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(replicable_strategies::DatabaseStrategy)]
pub struct AuditEntry {
    #[replicable(id)]
    pub id: i64,
    pub what: String,
}

async fn catalogue_in_transaction(location: Location, mut conn: sqlx::AnyConnection) {
    use replicable_core::storage::sql::{SqlOptions, SqlStore};
    let store = SqlStore::open_with(
        &location.url,
        SqlOptions {
            schema: location.schema.as_ref().map(|s| format!("{s}_replication")),
            replicables: vec!["audit_entry".into()],
            ..SqlOptions::default()
        },
    )
    .await
    .unwrap();
    let site = Site::primary("primary").database(store).build().unwrap();
    for commit in [false, true] {
        let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
        let entry = AuditEntry {
            id: 9,
            what: format!("commit {commit}"),
        };
        entry
            .replicator(&site)
            .publish_created_event_in(&mut *tx)
            .await
            .unwrap();
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        let stored = site.records().get("audit_entry", 9).await.unwrap();
        if commit {
            let stored = stored.expect("the catalogue row committed with the event");
            assert_eq!(stored.body["what"], "commit true");
            assert_eq!(events(&site).await, vec![("created".to_owned(), 9)]);
        } else {
            assert!(stored.is_none());
            assert!(events(&site).await.is_empty());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalogue_model_publishes_in_the_transaction_on_sqlite() {
    sqlx::any::install_default_drivers();
    let target = SqliteTarget::new();
    let location = sqlite(&target.dir, "app.db");
    App::open(&location).await.unwrap();
    let conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&location.url)
        .await
        .unwrap();
    catalogue_in_transaction(location, conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalogue_model_publishes_in_the_transaction_on_postgres() {
    sqlx::any::install_default_drivers();
    let Some(target) = PostgresTarget::new() else {
        return;
    };
    let location = postgres(&target, "app");
    App::open(&location).await.unwrap();
    // The application's connection: its own search path, not the framework's schema.
    let conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&location.url)
        .await
        .unwrap();
    catalogue_in_transaction(location, conn).await;
}

/// A model read from the application's table needs its site's event log in the database that
/// holds the table (the generation is kept there): elsewhere, publishing is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_source_without_its_sql_event_log_is_refused() {
    let target = SqliteTarget::new();
    let location = sqlite(&target.dir, "app.db");
    App::open(&location).await.unwrap();
    let store = replicable_examples::own_database::replication_store(&location)
        .await
        .unwrap();
    let notes =
        replicable_core::storage::sql::SqlTable::new(&store, "note", "notes", "id").unwrap();
    let site = Site::primary("primary")
        .in_memory()
        .record_source("note", notes)
        .build()
        .unwrap();
    let err = note(4, "t")
        .replicator(&site)
        .publish_created_event()
        .await
        .expect_err("no SQL event log");
    let text = err.to_string();
    assert!(
        text.contains("note 4") && text.contains("record source"),
        "{text}"
    );
    assert_eq!(site.event_log().last_event_id().await.unwrap(), None);
}

// ---- transactions that publish at once: no lock between them, no event missed ----

/// Two application transactions publish on PostgreSQL at once, the one that drew the smaller
/// event id committing last. The second does not wait for the first (no lock is held from a
/// publish to its commit), and the secondary's log cursor, which reads the later event first,
/// keeps the skipped id as an open gap and consumes the late event once it commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_neither_blocks_other_publishes_nor_is_missed_on_postgres() {
    let Some(target) = PostgresTarget::new() else {
        return;
    };
    let (primary, secondary) = (postgres(&target, "p"), postgres(&target, "s"));
    let app = App::open(&primary).await.unwrap();
    let secondary_app = App::open(&secondary).await.unwrap();
    let site = primary_site(&primary).await.unwrap();
    let link = Arc::new(InProcessPrimary::new(&site));
    let secondary_site = secondary_site(&secondary, link).await.unwrap();
    descriptor();
    // A first event, so that the cursor is past the log's start.
    app.create_note(&site, &note(1, "first")).await.unwrap();
    let cursor = replicable_core::log_cursor::LogCursor::new(&secondary_site);
    assert_eq!(cursor.process_batch().await.unwrap().consumed, 1);

    // Transaction A publishes note 2 and stays open.
    let mut late = app.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO notes (id, title, body, pinned) VALUES (2, 'late', 'b', false)")
        .execute(&mut *late)
        .await
        .unwrap();
    let late_id = note(2, "late")
        .replicator(&site)
        .publish_created_event_in(&mut *late)
        .await
        .unwrap()
        .unwrap();
    // Transaction B publishes note 3 and commits while A is open: with a lock held from a
    // publish to its commit, this would wait for A forever.
    tokio::time::timeout(
        Duration::from_secs(60),
        app.create_note(&site, &note(3, "early")),
    )
    .await
    .expect("a publish waited for another transaction's commit")
    .unwrap();
    let early_id = site.event_log().last_event_id().await.unwrap().unwrap();
    assert!(early_id > late_id, "{early_id} > {late_id}");

    // The cursor reads B's event and steps over A's id, keeping it as an open gap.
    let report = cursor.process_batch().await.unwrap();
    assert_eq!((report.consumed, report.cursor), (1, early_id));
    let gaps = secondary_site.registry_store().cursor_gaps().await.unwrap();
    assert_eq!(
        gaps.iter().map(|g| (g.first, g.last)).collect::<Vec<_>>(),
        vec![(late_id, early_id - 1)]
    );
    // Nothing new: the gap stays open.
    let report = cursor.process_batch().await.unwrap();
    assert_eq!((report.read, report.cursor), (0, early_id));

    // A commits: the next batch consumes its event, and the gap closes.
    late.commit().await.unwrap();
    let report = cursor.process_batch().await.unwrap();
    assert_eq!((report.consumed, report.cursor), (1, early_id));
    assert!(
        secondary_site
            .registry_store()
            .cursor_gaps()
            .await
            .unwrap()
            .is_empty()
    );
    let mut titles: Vec<String> = secondary_app
        .notes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.title)
        .collect();
    titles.sort();
    assert_eq!(titles, vec!["early", "first", "late"]);
}
