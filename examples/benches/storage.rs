//! Storage throughput on SQLite and PostgreSQL, against plain SQL doing the same work.
//!
//! ```text
//! cargo bench -p replicable-examples --bench storage
//! REPLICABLE_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo bench -p replicable-examples --bench storage
//! ```
//!
//! Each line prints the framework's rate, the plain-SQL rate and their ratio:
//! - single appends: one `publish` per event (one durable transaction each) vs one plain
//!   autocommitted `INSERT` per row;
//! - batched appends: `append` of 500 and of 5,000 events at a time (one durable transaction
//!   each) vs a single `INSERT ... SELECT` of all rows (the engine's ceiling);
//! - claim + complete: `claim_for_sync` of 100 rows, then a compare-and-set completion per row,
//!   vs plain `UPDATE ... RETURNING` claims of 100 and a plain `UPDATE` per row (same round
//!   trips), and vs two whole-table `UPDATE`s (the engine's ceiling).

use std::time::Instant;

use chrono::Utc;
use replicable_core::Resource;
use replicable_core::event::{EventKind, EventPayload, NewEvent};
use replicable_core::storage::sql::{Dialect, SqlOptions, SqlStore};
use replicable_core::storage::{EventLog, RegistryStore};
use sqlx::{AssertSqlSafe, Executor};

type Error = Box<dyn std::error::Error + Send + Sync>;

const NAME: &str = "bench_item";

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn event(i: i64) -> NewEvent {
    NewEvent {
        replicable_name: NAME.into(),
        kind: EventKind::Created,
        payload: EventPayload {
            model_id: i,
            resource: Resource::Blob {
                key: format!("packages/{i}/package-1.0.0.tgz"),
            },
            generation: Some(1),
            record: Some(
                serde_json::json!({"id": i, "file_path": format!("packages/{i}/package-1.0.0.tgz")}),
            ),
            checksum: None,
        },
    }
}

fn payload_text(i: i64) -> String {
    event(i).payload_json().to_string()
}

struct Line {
    what: &'static str,
    framework: f64,
    plain: f64,
    plain_label: &'static str,
}

fn rate(n: usize, started: Instant) -> f64 {
    n as f64 / started.elapsed().as_secs_f64()
}

async fn plain_table(store: &SqlStore) -> Result<(), Error> {
    store
        .pool()
        .execute("DROP TABLE IF EXISTS bench_plain_events")
        .await?;
    let id = match store.dialect() {
        Dialect::Sqlite => "id INTEGER PRIMARY KEY AUTOINCREMENT",
        Dialect::Postgres => "id BIGSERIAL PRIMARY KEY",
    };
    store
        .pool()
        .execute(AssertSqlSafe(format!(
            "CREATE TABLE bench_plain_events ({id}, replicable_name TEXT NOT NULL, \
             event_name TEXT NOT NULL, payload TEXT NOT NULL, created_at BIGINT NOT NULL)"
        )))
        .await?;
    Ok(())
}

async fn appends(store: &SqlStore, single: usize, batched: usize) -> Result<Vec<Line>, Error> {
    let now = Utc::now();
    let mut lines = Vec::new();

    let started = Instant::now();
    for i in 0..single as i64 {
        store.append(&[event(i)], now).await?;
    }
    let framework = rate(single, started);
    plain_table(store).await?;
    let started = Instant::now();
    for i in 0..single as i64 {
        sqlx::query("INSERT INTO bench_plain_events (replicable_name, event_name, payload, created_at) VALUES ($1, $2, $3, $4)")
            .bind(NAME)
            .bind("created")
            .bind(payload_text(i))
            .bind(now.timestamp_micros())
            .execute(store.pool())
            .await?;
    }
    lines.push(Line {
        what: "single appends / s",
        framework,
        plain: rate(single, started),
        plain_label: "one INSERT per row",
    });

    let events: Vec<NewEvent> = (0..batched as i64).map(event).collect();
    let mut framework = Vec::new();
    for batch in [500, 5_000] {
        let started = Instant::now();
        for chunk in events.chunks(batch) {
            store.append(chunk, now).await?;
        }
        framework.push((batch, rate(batched, started)));
    }
    plain_table(store).await?;
    let series = match store.dialect() {
        Dialect::Postgres => format!("SELECT g FROM generate_series(1, {batched}) AS g"),
        Dialect::Sqlite => format!(
            "WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {batched}) SELECT g FROM s"
        ),
    };
    // The same payload shape, built by the engine.
    let concat = match store.dialect() {
        Dialect::Postgres => {
            "'{\"model_id\":' || g || ',\"resource\":{\"type\":\"blob\",\"key\":\"packages/' || g || '/package-1.0.0.tgz\"},\"generation\":1,\"record\":{\"file_path\":\"packages/' || g || '/package-1.0.0.tgz\",\"id\":' || g || '}}'"
        }
        Dialect::Sqlite => {
            "'{\"model_id\":' || g || ',\"resource\":{\"type\":\"blob\",\"key\":\"packages/' || g || '/package-1.0.0.tgz\"},\"generation\":1,\"record\":{\"file_path\":\"packages/' || g || '/package-1.0.0.tgz\",\"id\":' || g || '}}'"
        }
    };
    let sql = format!(
        "INSERT INTO bench_plain_events (replicable_name, event_name, payload, created_at) \
         SELECT '{NAME}', 'created', {concat}, {} FROM ({series}) AS series",
        now.timestamp_micros()
    );
    let started = Instant::now();
    store.pool().execute(AssertSqlSafe(sql)).await?;
    let plain = rate(batched, started);
    for (batch, framework) in framework {
        lines.push(Line {
            what: if batch == 500 {
                "appends in 500s / s"
            } else {
                "appends in 5,000s / s"
            },
            framework,
            plain,
            plain_label: "one INSERT ... SELECT of all rows",
        });
    }
    store
        .pool()
        .execute("DROP TABLE bench_plain_events")
        .await?;
    Ok(lines)
}

async fn claims(store: &SqlStore, rows: usize) -> Result<Vec<Line>, Error> {
    let now = Utc::now();
    let table = format!("{NAME}_registry");
    let ids: Vec<i64> = (1..=rows as i64).collect();
    store.counts(NAME).await?; // creates the replicable's tables
    let reset = async || -> Result<(), Error> {
        store
            .pool()
            .execute(AssertSqlSafe(format!("DELETE FROM {table}")))
            .await?;
        store.insert_pending(NAME, &ids, now).await?;
        Ok(())
    };

    reset().await?;
    let started = Instant::now();
    loop {
        let batch = store.claim_for_sync(NAME, now, 100).await?;
        if batch.is_empty() {
            break;
        }
        for mut row in batch {
            row.mark_synced(Some(1), true)?;
            assert!(store.update(NAME, &row).await?);
        }
    }
    let framework = rate(rows, started);

    reset().await?;
    let claim = format!(
        "UPDATE {table} SET state = 1 WHERE {NAME}_id IN \
         (SELECT {NAME}_id FROM {table} WHERE state = 0 ORDER BY {NAME}_id LIMIT 100{}) \
         RETURNING {NAME}_id AS id",
        if store.dialect() == Dialect::Postgres {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        }
    );
    let complete = format!("UPDATE {table} SET state = 2 WHERE {NAME}_id = $1");
    let started = Instant::now();
    loop {
        let batch = sqlx::query(AssertSqlSafe(claim.clone()))
            .fetch_all(store.pool())
            .await?;
        if batch.is_empty() {
            break;
        }
        for row in batch {
            let id: i64 = sqlx::Row::try_get(&row, "id")?;
            sqlx::query(AssertSqlSafe(complete.clone()))
                .bind(id)
                .execute(store.pool())
                .await?;
        }
    }
    let same_trips = rate(rows, started);

    reset().await?;
    let started = Instant::now();
    store
        .pool()
        .execute(AssertSqlSafe(format!("UPDATE {table} SET state = 1")))
        .await?;
    store
        .pool()
        .execute(AssertSqlSafe(format!("UPDATE {table} SET state = 2")))
        .await?;
    let ceiling = rate(rows, started);
    Ok(vec![
        Line {
            what: "claims + completions / s",
            framework,
            plain: same_trips,
            plain_label: "plain UPDATE ... RETURNING claims + one UPDATE per row",
        },
        Line {
            what: "claims + completions / s",
            framework,
            plain: ceiling,
            plain_label: "two whole-table UPDATEs",
        },
    ])
}

fn print(engine: &str, lines: &[Line]) {
    for l in lines {
        println!(
            "{engine:<10} {:<26} framework {:>10.0}   plain {:>10.0}   ratio {:>5.1}%   (plain: {})",
            l.what,
            l.framework,
            l.plain,
            100.0 * l.framework / l.plain,
            l.plain_label
        );
    }
}

async fn run(engine: &str, store: &SqlStore) -> Result<(), Error> {
    let single = env_usize("REPLICABLE_BENCH_SINGLE", 2_000);
    let batched = env_usize("REPLICABLE_BENCH_BATCHED", 50_000);
    let rows = env_usize("REPLICABLE_BENCH_CLAIMS", 10_000);
    print(engine, &appends(store, single, batched).await?);
    print(engine, &claims(store, rows).await?);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let sqlite = SqlStore::open(&url).await?;
    run("sqlite", &sqlite).await?;

    match std::env::var("REPLICABLE_BENCH_POSTGRES_URL") {
        Ok(url) => {
            let schema = format!("bench_{}", std::process::id());
            let pg = SqlStore::open_with(
                &url,
                SqlOptions {
                    schema: Some(schema.clone()),
                    ..SqlOptions::default()
                },
            )
            .await?;
            let result = run("postgres", &pg).await;
            pg.pool()
                .execute(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .await?;
            result?;
        }
        Err(_) => println!("postgres   skipped: set REPLICABLE_BENCH_POSTGRES_URL"),
    }
    Ok(())
}
