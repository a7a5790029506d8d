//! `publish`: 20,000 single `publish_created_event` calls on a fresh primary, against plain SQL
//! (sqlx, no framework) doing the same writes one transaction each on an equivalent schema in
//! the same kind of database: the record upserted into a catalogue, its verification row set
//! pending, the event appended. SQLite runs with the framework's settings (WAL,
//! `synchronous = FULL`). The same publishes by 16 callers at once show what sharing commits
//! gives concurrent publishers (group commit, SQLite).
//!
//! Then the batch publish: 100,000 records published with `Site::publish_created_events` in
//! batches of 1,000, against plain SQL writing each batch in one transaction with one multi-row
//! `INSERT` per table (parameters bound per row, as an application would write it), and against
//! plain SQL sending the framework's own statements (rows as one JSON parameter), the floor.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
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

/// Concurrent callers of the concurrent single publishes (they share commits on SQLite).
const CALLERS: usize = 16;

/// Batch-published events at scale 1.
pub const BATCH_EVENTS: u64 = 100_000;

/// Records per batch publish.
pub const BATCH: usize = 1_000;

/// What the batch publish must reach on SQLite (issue 11), in events per second.
const BATCH_TARGET: f64 = 100_000.0;

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
    let mut concurrent = Timings::extra(
        format!("framework publish_created_event, {CALLERS} callers at once"),
        work,
    );
    for rep in 0..bench.settings.reps {
        for k in 0..3 {
            match (k + rep) % 3 {
                0 => framework.samples.push(framework_run(bench, n, 1).await?),
                1 => plain.samples.push(plain_run(bench, n).await?),
                _ => concurrent
                    .samples
                    .push(framework_run(bench, n, CALLERS).await?),
            }
        }
    }
    report.timings(&[framework, plain, concurrent]);

    let n = bench.scaled(BATCH_EVENTS, BATCH as u64);
    let work = Some(Work::Items(n, "events"));
    let size = super::report::thousands(BATCH as f64);
    let mut batch = Timings::framework(
        format!("framework publish_created_events, batches of {size}"),
        work,
    );
    let mut plain_batch = Timings::tool(
        format!("plain SQL, same writes, multi-row INSERT per table, batches of {size}"),
        work,
    );
    let mut plain_json = Timings::tool(
        "plain SQL, the framework's statements (rows as one JSON parameter)",
        work,
    );
    for rep in 0..bench.settings.reps {
        for k in 0..3 {
            match (k + rep) % 3 {
                0 => batch.samples.push(framework_batch_run(bench, n).await?),
                1 => plain_batch
                    .samples
                    .push(plain_batch_run(bench, n, Statements::Bound).await?),
                _ => plain_json
                    .samples
                    .push(plain_batch_run(bench, n, Statements::Json).await?),
            }
        }
    }
    report.timings(&[batch.clone(), plain_batch, plain_json]);
    if let Some(median) = batch.median() {
        let rate = n as f64 / median.as_secs_f64().max(1e-9);
        report.note(format!(
            "batch publish: {} events/s at the median ({} events in batches of {}, {}); \
             the target on SQLite is at least {} events/s",
            super::report::thousands(rate),
            super::report::thousands(n as f64),
            super::report::thousands(BATCH as f64),
            bench.database_kind(),
            super::report::thousands(BATCH_TARGET),
        ));
    }
    Ok(report)
}

async fn framework_batch_run(bench: &Bench, n: u64) -> Result<Duration, Error> {
    let dir = bench.fresh_dir("publish-batch")?;
    let location = bench.location(&dir, "primary");
    let primary = sites::open_primary(&location, Timeouts::default()).await?;
    let records: Vec<_> = (1..=n as i64).map(package_file).collect();
    let started = Instant::now();
    for chunk in records.chunks(BATCH) {
        let ids = primary.publish_created_events(chunk).await?;
        if ids.len() != chunk.len() {
            return Err(format!("{} events for {} records", ids.len(), chunk.len()).into());
        }
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

/// `n` single publishes by `callers` tasks at once, each publishing the next id not taken.
async fn framework_run(bench: &Bench, n: u64, callers: usize) -> Result<Duration, Error> {
    let dir = bench.fresh_dir("publish")?;
    let location = bench.location(&dir, "primary");
    let primary = sites::open_primary(&location, Timeouts::default()).await?;
    let next = Arc::new(AtomicI64::new(1));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..callers {
        let (primary, next) = (primary.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let id = next.fetch_add(1, Ordering::Relaxed);
                if id > n as i64 {
                    return Ok::<_, replicable_core::ReplicatorError>(());
                }
                package_file(id)
                    .replicator(&primary)
                    .publish_created_event()
                    .await?;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
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

/// The plain schema: a catalogue, verification rows and an event log, as the framework's.
async fn plain_tables(pool: &AnyPool, postgres: bool) -> Result<(), Error> {
    let event_id = if postgres {
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
    Ok(())
}

async fn plain_run(bench: &Bench, n: u64) -> Result<Duration, Error> {
    let dir = bench.fresh_dir("plain-sql")?;
    let (pool, schema) = plain_pool(bench, &dir).await?;
    plain_tables(&pool, schema.is_some()).await?;
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

/// `($1, $2, ...), (...)`: `rows` groups of `per_row` numbered parameters.
fn placeholders(rows: usize, per_row: usize) -> String {
    (0..rows)
        .map(|r| {
            let row = (1..=per_row)
                .map(|c| format!("${}", r * per_row + c))
                .collect::<Vec<_>>()
                .join(", ");
            format!("({row})")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// How the plain batch writes its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Statements {
    /// `VALUES ($1, $2), ($3, $4), ...`: parameters bound per row, as an application writes it.
    Bound,
    /// The rows as one JSON parameter the engine expands: the statements the framework sends.
    Json,
}

/// `$1` as rows `(key, value)`: an array of numbers or strings (`key` the position), or an
/// object (`key` the label), each value plain text.
fn json_rows(postgres: bool, object: bool) -> &'static str {
    match (postgres, object) {
        (false, _) => "json_each($1)",
        (true, false) => {
            "json_array_elements_text(CAST($1 AS json)) WITH ORDINALITY AS j(value, key)"
        }
        (true, true) => "json_each_text(CAST($1 AS json)) AS j(key, value)",
    }
}

async fn plain_batch_run(bench: &Bench, n: u64, statements: Statements) -> Result<Duration, Error> {
    let dir = bench.fresh_dir("plain-sql-batch")?;
    let (pool, schema) = plain_pool(bench, &dir).await?;
    let postgres = schema.is_some();
    plain_tables(&pool, postgres).await?;
    let records: Vec<_> = (1..=n as i64).map(package_file).collect();
    let started = Instant::now();
    for chunk in records.chunks(BATCH) {
        let bodies = chunk
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()?;
        let mut tx = pool.begin().await?;
        let upsert = "ON CONFLICT (id) DO UPDATE SET generation = r.generation + 1, \
                      body = excluded.body RETURNING id, generation";
        let query = match statements {
            Statements::Bound => {
                // Each row `(id, 1, body)`: a new row's generation is a literal.
                let values = (0..chunk.len())
                    .map(|r| format!("(${}, 1, ${})", 2 * r + 1, 2 * r + 2))
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = format!(
                    "INSERT INTO records AS r (id, generation, body) VALUES {values} {upsert}"
                );
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for (record, body) in chunk.iter().zip(&bodies) {
                    query = query.bind(record.id).bind(body.clone());
                }
                query
            }
            Statements::Json => {
                let rows: serde_json::Map<String, serde_json::Value> = chunk
                    .iter()
                    .zip(&bodies)
                    .map(|(r, body)| (r.id.to_string(), body.clone().into()))
                    .collect();
                let sql = format!(
                    "INSERT INTO records AS r (id, generation, body) \
                     SELECT CAST(key AS BIGINT), 1, value FROM {} WHERE true {upsert}",
                    json_rows(postgres, true)
                );
                sqlx::query(AssertSqlSafe(sql)).bind(serde_json::to_string(&rows)?)
            }
        };
        let rows = query.fetch_all(&mut *tx).await?;
        let mut generations = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = sqlx::Row::try_get(row, "id")?;
            let generation: i64 = sqlx::Row::try_get(row, "generation")?;
            generations.insert(id, generation);
        }
        let pending = "ON CONFLICT (id) DO UPDATE SET verification_state = 0, \
                       verification_retry_at = NULL, verification_started_at = NULL, \
                       version = v.version + 1";
        let query = match statements {
            Statements::Bound => {
                let values = (1..=chunk.len())
                    .map(|r| format!("(${r}, 0)"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = format!(
                    "INSERT INTO verification AS v (id, verification_state) VALUES {values} {pending}"
                );
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for record in chunk {
                    query = query.bind(record.id);
                }
                query
            }
            Statements::Json => {
                let ids: Vec<i64> = chunk.iter().map(|r| r.id).collect();
                let sql = format!(
                    "INSERT INTO verification AS v (id, verification_state) \
                     SELECT CAST(value AS BIGINT), 0 FROM {} WHERE true {pending}",
                    json_rows(postgres, false)
                );
                sqlx::query(AssertSqlSafe(sql)).bind(serde_json::to_string(&ids)?)
            }
        };
        query.execute(&mut *tx).await?;
        let at = chrono::Utc::now().timestamp_micros();
        let mut payloads = Vec::with_capacity(chunk.len());
        for (record, body) in chunk.iter().zip(&bodies) {
            let payload = serde_json::json!({
                "model_id": record.id,
                "resource": {"type": "blob", "key": record.file_path},
                "generation": generations.get(&record.id).copied().unwrap_or(1),
                "record": serde_json::from_str::<serde_json::Value>(body)?,
            })
            .to_string();
            payloads.push(payload);
        }
        let query = match statements {
            Statements::Bound => {
                let sql = format!(
                    "INSERT INTO events (replicable_name, event_name, payload, created_at) VALUES {}",
                    placeholders(chunk.len(), 4)
                );
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for payload in payloads {
                    query = query
                        .bind("package_file")
                        .bind("created")
                        .bind(payload)
                        .bind(at);
                }
                query
            }
            Statements::Json => {
                let sql = format!(
                    "INSERT INTO events (replicable_name, event_name, payload, created_at) \
                     SELECT CAST($2 AS TEXT), CAST($3 AS TEXT), value, CAST($4 AS BIGINT) \
                     FROM {} ORDER BY key",
                    json_rows(postgres, false)
                );
                sqlx::query(AssertSqlSafe(sql))
                    .bind(serde_json::to_string(&payloads)?)
                    .bind("package_file")
                    .bind("created")
                    .bind(at)
            }
        };
        query.execute(&mut *tx).await?;
        tx.commit().await?;
    }
    let took = started.elapsed();
    let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(&pool)
        .await?;
    if events != n as i64 {
        return Err(format!("plain SQL: {events} events, {n} expected").into());
    }
    if let Some(schema) = schema {
        pool.execute(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .await?;
    }
    pool.close().await;
    bench.discard(&dir).await?;
    Ok(took)
}
