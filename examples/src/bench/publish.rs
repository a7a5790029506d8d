//! `publish`: 20,000 single `publish_created_event` calls on a fresh primary, against plain SQL
//! (sqlx, no framework) doing the same writes one transaction each on an equivalent schema in
//! the same kind of database: the record upserted into a catalogue, its verification row set
//! pending, the event appended. SQLite runs with the framework's settings (WAL,
//! `synchronous = FULL`).

use std::time::{Duration, Instant};

use replicable_core::site::Timeouts;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, AssertSqlSafe, Executor};

use super::env::{Bench, Error};
use super::report::{Report, Timings, Work};
use crate::geo_demo::seed::package_file;
use crate::geo_demo::sites;

/// Publishes at scale 1.
pub const EVENTS: u64 = 20_000;

/// Runs the scenario.
pub async fn run(bench: &Bench) -> Result<Report, Error> {
    let n = bench.scaled(EVENTS, 1);
    let mut report = Report::new(
        "publish",
        format!(
            "{} single publishes (record + verification row + event, one transaction each; {})",
            super::report::thousands(n as f64),
            bench.database_kind()
        ),
    );
    let work = Some(Work::Items(n, "events"));
    let mut framework = Timings::framework("framework publish_created_event", work);
    let mut plain = Timings::tool("plain SQL, same writes, one transaction each", work);
    for rep in 0..bench.settings.reps {
        for k in 0..2 {
            if (k + rep) % 2 == 0 {
                framework.samples.push(framework_run(bench, n).await?);
            } else {
                plain.samples.push(plain_run(bench, n).await?);
            }
        }
    }
    report.timings(&[framework, plain]);
    report.note("batch publish: n/a (the framework has no batch publish API yet)");
    Ok(report)
}

async fn framework_run(bench: &Bench, n: u64) -> Result<Duration, Error> {
    let dir = bench.fresh_dir("publish")?;
    let location = bench.location(&dir, "primary");
    let primary = sites::open_primary(&location, Timeouts::default()).await?;
    let started = Instant::now();
    for id in 1..=n as i64 {
        package_file(id)
            .replicator(&primary)
            .publish_created_event()
            .await?;
    }
    let took = started.elapsed();
    let events = primary.event_log().last_event_id().await?.unwrap_or(0);
    if events != n as i64 {
        return Err(format!("{events} events in the log, {n} expected").into());
    }
    drop(primary);
    bench.drop_database(&location).await?;
    bench.discard(&dir).await?;
    Ok(took)
}

/// A plain connection pool on a fresh database: a SQLite file with WAL and full fsync, or a
/// fresh schema in `--postgres`. Returns the pool and the schema to drop.
async fn plain_pool(
    bench: &Bench,
    dir: &std::path::Path,
) -> Result<(AnyPool, Option<String>), Error> {
    sqlx::any::install_default_drivers();
    match &bench.settings.postgres {
        Some(url) => {
            let schema = format!("rbench_{}_plain_{}", std::process::id(), fastrand_suffix());
            let set_path = format!("SET search_path TO {schema}");
            let pool = AnyPoolOptions::new()
                .max_connections(1)
                .after_connect(move |conn, _| {
                    let set_path = set_path.clone();
                    Box::pin(async move {
                        conn.execute(AssertSqlSafe(set_path)).await?;
                        Ok(())
                    })
                })
                .connect(url)
                .await?;
            pool.execute(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                .await?;
            Ok((pool, Some(schema)))
        }
        None => {
            let url = format!("sqlite://{}?mode=rwc", dir.join("plain.db").display());
            let pool = AnyPoolOptions::new()
                .max_connections(1)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        Ok(())
                    })
                })
                .connect(&url)
                .await?;
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&pool)
                .await?;
            if mode != "wal" {
                return Err(
                    format!("the plain SQLite file is in journal mode {mode}, not WAL").into(),
                );
            }
            Ok((pool, None))
        }
    }
}

fn fastrand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64 % 1_000_000_007)
}

async fn plain_run(bench: &Bench, n: u64) -> Result<Duration, Error> {
    let dir = bench.fresh_dir("plain-sql")?;
    let (pool, schema) = plain_pool(bench, &dir).await?;
    let event_id = if schema.is_some() {
        "id BIGSERIAL PRIMARY KEY"
    } else {
        "id INTEGER PRIMARY KEY AUTOINCREMENT"
    };
    for ddl in [
        "CREATE TABLE records (id BIGINT PRIMARY KEY, generation BIGINT NOT NULL, body TEXT NOT NULL)".to_owned(),
        "CREATE TABLE verification (id BIGINT PRIMARY KEY, verification_state SMALLINT NOT NULL, \
         verification_retry_at BIGINT, verification_started_at BIGINT, version BIGINT NOT NULL DEFAULT 0)"
            .to_owned(),
        format!(
            "CREATE TABLE events ({event_id}, replicable_name TEXT NOT NULL, event_name TEXT NOT NULL, \
             payload TEXT NOT NULL, created_at BIGINT NOT NULL)"
        ),
    ] {
        pool.execute(AssertSqlSafe(ddl)).await?;
    }
    let started = Instant::now();
    for id in 1..=n as i64 {
        let record = package_file(id);
        let body = serde_json::to_string(&record)?;
        let mut tx = pool.begin().await?;
        let generation: i64 = sqlx::query_scalar(
            "INSERT INTO records (id, generation, body) VALUES ($1, 1, $2) \
             ON CONFLICT (id) DO UPDATE SET generation = records.generation + 1, body = excluded.body \
             RETURNING generation",
        )
        .bind(id)
        .bind(&body)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO verification (id, verification_state) VALUES ($1, 0) \
             ON CONFLICT (id) DO UPDATE SET verification_state = 0, verification_retry_at = NULL, \
             verification_started_at = NULL, version = verification.version + 1",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let payload = serde_json::json!({
            "model_id": id,
            "resource": {"type": "blob", "key": record.file_path},
            "generation": generation,
            "record": serde_json::from_str::<serde_json::Value>(&body)?,
        })
        .to_string();
        let _: i64 = sqlx::query_scalar(
            "INSERT INTO events (replicable_name, event_name, payload, created_at) \
             VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind("package_file")
        .bind("created")
        .bind(payload)
        .bind(chrono::Utc::now().timestamp_micros())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    let took = started.elapsed();
    if let Some(schema) = schema {
        pool.execute(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .await?;
    }
    pool.close().await;
    bench.discard(&dir).await?;
    Ok(took)
}
