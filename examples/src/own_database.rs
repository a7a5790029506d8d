//! An application that already keeps its records in its own sqlx database (PostgreSQL or
//! SQLite), replicated with the framework. Its only replication code is the derive on `Note`
//! and a `publish_*_event_in(&mut *tx)` call in each transaction that writes a note; the rest of
//! this module is the application itself, plus the wiring of two sites for the demo.
//!
//! The framework's tables live in the application's database (on PostgreSQL in their own
//! schema, `<app schema>_replication`; on SQLite in the same file). The primary reads notes
//! from the application's `notes` table (`SqlTable`), so rows written by bulk SQL with no event
//! are found by backfill too; the secondary writes its copies into a `notes` table of the same
//! shape in its own database, where plain SQL reads them.

use std::sync::Arc;

use replicable_core::prelude::*;
use replicable_core::storage::sql::{Dialect, SqlOptions, SqlStore, SqlTable};
use replicable_core::{PrimaryLink, StoreError};
use replicable_strategies::DatabaseStrategy;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, AssertSqlSafe, Executor, Row};

/// A note: one row of the application's `notes` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Replicable)]
#[replicator(DatabaseStrategy)]
pub struct Note {
    /// The note's id.
    #[replicable(id)]
    pub id: i64,
    /// Its title.
    pub title: String,
    /// Its text.
    pub body: String,
    /// Whether it is pinned.
    pub pinned: bool,
}

/// Where one site of the application keeps its data.
#[derive(Debug, Clone)]
pub struct Location {
    /// `sqlite://path` or `postgres://...`.
    pub url: String,
    /// PostgreSQL: the application's schema (the framework's is `<schema>_replication`).
    pub schema: Option<String>,
}

impl Location {
    fn dialect(&self) -> Dialect {
        if self.url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else {
            Dialect::Postgres
        }
    }

    /// The `notes` table as the framework's store names it.
    fn notes_table(&self) -> String {
        match (&self.schema, self.dialect()) {
            (Some(schema), Dialect::Postgres) => format!("{schema}.notes"),
            _ => "notes".into(),
        }
    }

    /// The framework's schema.
    fn replication_schema(&self) -> Option<String> {
        self.schema.as_ref().map(|s| format!("{s}_replication"))
    }
}

/// The application's database.
#[derive(Debug, Clone)]
pub struct App {
    /// The application's own pool.
    pub pool: AnyPool,
    dialect: Dialect,
}

/// An application or replication error.
pub type AppResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

impl App {
    /// Connects and creates the application's schema (the `notes` table) if missing.
    pub async fn open(location: &Location) -> AppResult<Self> {
        sqlx::any::install_default_drivers();
        let dialect = location.dialect();
        let url = match dialect {
            Dialect::Sqlite if !location.url.contains("mode=") => {
                format!("{}?mode=rwc", location.url)
            }
            _ => location.url.clone(),
        };
        let schema = location
            .schema
            .clone()
            .filter(|_| dialect == Dialect::Postgres);
        let search_path = schema.clone();
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(move |conn, _| {
                let search_path = search_path.clone();
                Box::pin(async move {
                    if let Some(schema) = search_path {
                        conn.execute(AssertSqlSafe(format!("SET search_path TO {schema}")))
                            .await?;
                    } else {
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        if let Some(schema) = &schema {
            pool.execute(AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}"
            )))
            .await?;
        }
        pool.execute(
            "CREATE TABLE IF NOT EXISTS notes (id BIGINT PRIMARY KEY, title TEXT NOT NULL, \
             body TEXT NOT NULL, pinned BOOLEAN NOT NULL DEFAULT FALSE)",
        )
        .await?;
        Ok(Self { pool, dialect })
    }

    /// Writes a new note and publishes it, in one transaction.
    pub async fn create_note(&self, site: &Site, note: &Note) -> AppResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO notes (id, title, body, pinned) VALUES ($1, $2, $3, $4)")
            .bind(note.id)
            .bind(note.title.clone())
            .bind(note.body.clone())
            .bind(note.pinned)
            .execute(&mut *tx)
            .await?;
        note.replicator(site)
            .publish_created_event_in(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Changes a note and publishes the change, in one transaction.
    pub async fn update_note(&self, site: &Site, note: &Note) -> AppResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE notes SET title = $2, body = $3, pinned = $4 WHERE id = $1")
            .bind(note.id)
            .bind(note.title.clone())
            .bind(note.body.clone())
            .bind(note.pinned)
            .execute(&mut *tx)
            .await?;
        note.replicator(site)
            .publish_updated_event_in(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes a note and publishes the deletion, in one transaction.
    pub async fn delete_note(&self, site: &Site, note: &Note) -> AppResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM notes WHERE id = $1")
            .bind(note.id)
            .execute(&mut *tx)
            .await?;
        note.replicator(site)
            .publish_deleted_event_in(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Imports notes `ids` with one SQL statement and no publish call (a migration, another
    /// service): backfill finds them. Returns how many rows were inserted.
    pub async fn bulk_import(&self, ids: std::ops::RangeInclusive<i64>) -> AppResult<u64> {
        let sql = match self.dialect {
            Dialect::Postgres => {
                "INSERT INTO notes (id, title, body, pinned) \
                 SELECT i, 'imported ' || i, 'from the old system', i % 7 = 0 \
                 FROM generate_series(CAST($1 AS BIGINT), CAST($2 AS BIGINT)) AS i"
            }
            Dialect::Sqlite => {
                "WITH RECURSIVE s(i) AS (SELECT $1 UNION ALL SELECT i + 1 FROM s WHERE i < $2) \
                 INSERT INTO notes (id, title, body, pinned) \
                 SELECT i, 'imported ' || i, 'from the old system', i % 7 = 0 FROM s"
            }
        };
        let done = sqlx::query(sql)
            .bind(*ids.start())
            .bind(*ids.end())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Every note, by plain SQL, in id order.
    pub async fn notes(&self) -> AppResult<Vec<Note>> {
        let rows = sqlx::query(
            "SELECT id, title, body, CASE WHEN pinned THEN 1 ELSE 0 END AS pinned \
             FROM notes ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Note {
                    id: row.try_get("id")?,
                    title: row.try_get("title")?,
                    body: row.try_get("body")?,
                    pinned: row.try_get::<i32, _>("pinned")? == 1,
                })
            })
            .collect()
    }
}

/// Opens the framework's store in the application's database, with the tables of `note`.
pub async fn replication_store(location: &Location) -> Result<Arc<SqlStore>, StoreError> {
    SqlStore::open_with(
        &location.url,
        SqlOptions {
            schema: location.replication_schema(),
            replicables: vec![Note::REPLICABLE_NAME.into()],
            ..SqlOptions::default()
        },
    )
    .await
}

/// The primary site: the framework's tables in the application's database, notes read from
/// the application's table.
pub async fn primary_site(location: &Location) -> AppResult<Site> {
    let store = replication_store(location).await?;
    let notes = SqlTable::new(&store, Note::REPLICABLE_NAME, &location.notes_table(), "id")?;
    Ok(Site::primary("primary")
        .database(store)
        .record_source(Note::REPLICABLE_NAME, notes)
        .build()?)
}

/// A secondary site reading `primary`: its copies land in its own `notes` table.
pub async fn secondary_site(location: &Location, primary: Arc<dyn PrimaryLink>) -> AppResult<Site> {
    let store = replication_store(location).await?;
    let notes = SqlTable::new(&store, Note::REPLICABLE_NAME, &location.notes_table(), "id")?;
    Ok(Site::secondary("secondary", primary)
        .database(store)
        .record_source(Note::REPLICABLE_NAME, notes)
        .build()?)
}

/// What [`run_demo`] found at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoReport {
    /// Notes in the primary's table.
    pub primary_notes: usize,
    /// Notes in the secondary's table.
    pub secondary_notes: usize,
    /// Registry rows synced on the secondary.
    pub synced: u64,
    /// Registry rows verified on the secondary.
    pub verified: u64,
    /// Whether both tables hold the same rows (plain SQL on each side).
    pub identical: bool,
}

/// The demo: the application writes notes in transactions (creates, updates, a delete, a
/// rolled-back transaction) and imports `imported` more with one SQL statement; a primary and a
/// secondary engine run until the secondary holds every note, synced and verified. Gives up
/// after `timeout`.
pub async fn run_demo(
    primary: &Location,
    secondary: &Location,
    imported: i64,
    timeout: std::time::Duration,
) -> AppResult<DemoReport> {
    use replicable_core::engine::{Engine, EngineConfig};

    let primary_app = App::open(primary).await?;
    let secondary_app = App::open(secondary).await?;
    let primary_site = primary_site(primary).await?;
    let link = Arc::new(replicable_core::InProcessPrimary::new(&primary_site));
    let secondary_site = secondary_site(secondary, link).await?;

    // The application at work.
    for id in 1..=20 {
        let note = Note {
            id,
            title: format!("note {id}"),
            body: format!("written in a transaction, {id}"),
            pinned: id % 5 == 0,
        };
        primary_app.create_note(&primary_site, &note).await?;
    }
    for id in [2, 4, 6] {
        let note = Note {
            id,
            title: format!("note {id}, edited"),
            body: "changed later".into(),
            pinned: true,
        };
        primary_app.update_note(&primary_site, &note).await?;
    }
    let gone = Note {
        id: 7,
        title: String::new(),
        body: String::new(),
        pinned: false,
    };
    primary_app.delete_note(&primary_site, &gone).await?;
    {
        // Rolled back: neither the row nor its event exist.
        let mut tx = primary_app.pool.begin().await?;
        let draft = Note {
            id: 999,
            title: "draft".into(),
            body: "never committed".into(),
            pinned: false,
        };
        sqlx::query("INSERT INTO notes (id, title, body, pinned) VALUES ($1, $2, $3, $4)")
            .bind(draft.id)
            .bind(draft.title.clone())
            .bind(draft.body.clone())
            .bind(draft.pinned)
            .execute(&mut *tx)
            .await?;
        draft
            .replicator(&primary_site)
            .publish_created_event_in(&mut *tx)
            .await?;
        tx.rollback().await?;
    }
    if imported > 0 {
        primary_app.bulk_import(1_001..=1_000 + imported).await?;
    }

    // Both engines.
    replicable_core::descriptor::register::<Note>();
    let note =
        replicable_core::find_replicable(Note::REPLICABLE_NAME)?.ok_or("note is not registered")?;
    let mut config = EngineConfig::default();
    config.idle.min = std::time::Duration::from_millis(20);
    config.idle.max = std::time::Duration::from_millis(200);
    config.periods.backfill = std::time::Duration::from_millis(500);
    config.periods.verification_maintenance = std::time::Duration::from_millis(500);
    let primary_engine = Engine::new(primary_site.clone(), vec![note])
        .config(config.clone())
        .start()
        .await?;
    let secondary_engine = Engine::new(secondary_site.clone(), vec![note])
        .config(config)
        .start()
        .await?;
    let expected = primary_app.notes().await?.len() as u64;
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    let mut last_report = started;
    let counts = loop {
        let counts = secondary_site
            .registry_store()
            .counts(Note::REPLICABLE_NAME)
            .await?;
        let done =
            counts.registry == expected && counts.synced == expected && counts.verified == expected;
        if done || tokio::time::Instant::now() >= deadline {
            tracing::info!(
                synced = counts.synced,
                verified = counts.verified,
                expected,
                seconds = started.elapsed().as_secs_f64(),
                "secondary caught up"
            );
            break counts;
        }
        if last_report.elapsed() >= std::time::Duration::from_secs(5) {
            last_report = tokio::time::Instant::now();
            tracing::info!(
                synced = counts.synced,
                verified = counts.verified,
                expected,
                seconds = started.elapsed().as_secs_f64(),
                "progress"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    secondary_engine.shutdown().await;
    primary_engine.shutdown().await;

    let on_primary = primary_app.notes().await?;
    let on_secondary = secondary_app.notes().await?;
    Ok(DemoReport {
        primary_notes: on_primary.len(),
        secondary_notes: on_secondary.len(),
        synced: counts.synced,
        verified: counts.verified,
        identical: on_primary == on_secondary,
    })
}
