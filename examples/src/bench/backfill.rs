//! `backfill`: registry consistency on a secondary that has never heard of the primary's
//! records. The primary's catalogue holds N package files; one `backfill::backfill` pass (what
//! the engine's backfill loop runs) on a fresh secondary creates their N pending registry rows.
//! Measured at 100,000 and 1,000,000 records to show how the time grows, against `sqlite3`
//! (or `psql`) copying the same ids into a plain table (the ceiling: one `INSERT ... SELECT`, no
//! indexes).
//!
//! The primary's catalogue is filled with one SQL statement in the framework's table layout:
//! publishing a million records one by one would take longer than the measurement, and there
//! is no batch publish API yet.

use std::time::{Duration, Instant};

use replicable_core::backfill::{DEFAULT_RANGE_SIZE, backfill};
use replicable_core::site::Timeouts;
use replicable_core::storage::sql::{Dialect, SqlOptions, SqlStore};
use replicable_core::{Site, find_replicable};
use sqlx::{AssertSqlSafe, Executor};

use super::env::{Bench, Error};
use super::report::{Report, Timings, Work, duration, thousands};
use crate::geo_demo::sites::{self, SecondaryOptions, SiteLocation};

/// The sizes measured at scale 1.
pub const SIZES: [u64; 2] = [100_000, 1_000_000];

/// Runs the scenario at `sizes`.
pub async fn run(bench: &Bench, name: &str, sizes: &[u64]) -> Result<Report, Error> {
    let mut report = Report::new(
        name,
        format!(
            "one backfill pass creating the registry rows of N primary records on a fresh secondary ({})",
            bench.database_kind()
        ),
    );
    let mut framework_medians = Vec::new();
    for &size in sizes {
        let n = bench.scaled(size, 1);
        let (framework, plain) = run_size(bench, n, &mut report).await?;
        framework_medians.push((n, framework.median()));
        // One table section per size: its ratio compares with that size's reference.
        let mut section = vec![framework];
        section.extend(plain);
        report.timings(&section);
    }
    if let [(n1, Some(t1)), (n2, Some(t2))] = framework_medians[..] {
        report.note(format!(
            "framework growth: {} records took {:.1}x the time of {} ({:.1}x the records; target: within 12x for 10x)",
            thousands(n2 as f64),
            t2.as_secs_f64() / t1.as_secs_f64().max(1e-9),
            thousands(n1 as f64),
            n2 as f64 / n1 as f64
        ));
    }
    Ok(report)
}

async fn run_size(
    bench: &Bench,
    n: u64,
    report: &mut Report,
) -> Result<(Timings, Option<Timings>), Error> {
    let dir = bench.fresh_dir(&format!("backfill-{n}"))?;
    let primary_location = bench.location(&dir.join("primary"), "primary");
    let seeded = Instant::now();
    seed_catalogue(&primary_location, n).await?;
    report.note(format!(
        "{}: filled the primary's catalogue in {} (one INSERT ... SELECT, not measured)",
        thousands(n as f64),
        duration(seeded.elapsed())
    ));
    let primary = sites::open_primary(&primary_location, Timeouts::default()).await?;
    let work = Some(Work::Items(n, "rows"));
    let mut framework = Timings::framework(
        format!("framework backfill, {} records", thousands(n as f64)),
        work,
    );
    let tool = match &bench.settings.postgres {
        Some(_) => bench.tools.have(&["psql"]).then_some("psql"),
        None => bench.tools.have(&["sqlite3"]).then_some("sqlite3"),
    };
    let mut plain = tool.map(|tool| {
        Timings::tool(
            format!("{tool} INSERT ... SELECT, {} ids", thousands(n as f64)),
            work,
        )
    });
    for rep in 0..bench.settings.reps {
        for k in 0..2 {
            if (k + rep) % 2 == 0 {
                framework
                    .samples
                    .push(framework_run(bench, &primary, n).await?);
            } else if let Some(plain) = plain.as_mut() {
                plain
                    .samples
                    .push(plain_run(bench, &primary_location).await?);
            }
        }
    }
    if tool.is_none() {
        report.note("skipped the plain-SQL reference: sqlite3 / psql not found");
    }
    drop(primary);
    bench.drop_database(&primary_location).await?;
    bench.discard(&dir).await?;
    Ok((framework, plain))
}

/// Fills the primary's `package_file` catalogue with records `1..=n` in one statement.
async fn seed_catalogue(location: &SiteLocation, n: u64) -> Result<(), Error> {
    std::fs::create_dir_all(&location.data)?;
    let store = SqlStore::open_with(
        &location.database_url(),
        SqlOptions {
            schema: location.schema.clone(),
            ..SqlOptions::default()
        },
    )
    .await?;
    store.create_replicable_tables("package_file").await?;
    let series = match store.dialect() {
        Dialect::Postgres => format!("SELECT g FROM generate_series(1, {n}) AS g"),
        Dialect::Sqlite => format!(
            "WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {n}) SELECT g FROM s"
        ),
    };
    let body = "'{\"id\":' || g || ',\"file_path\":\"packages/' || g || '/package-' || g || \
                '.tgz\",\"file_name\":\"package-' || g || '.tgz\"}'";
    store
        .pool()
        .execute(AssertSqlSafe(format!(
            "INSERT INTO package_file_records (package_file_id, generation, body) \
             SELECT g, 1, {body} FROM ({series}) AS series"
        )))
        .await?;
    store.close().await;
    Ok(())
}

async fn framework_run(bench: &Bench, primary: &Site, n: u64) -> Result<Duration, Error> {
    let dir = bench.fresh_dir("backfill-secondary")?;
    let location = bench.location(&dir, "secondary");
    let secondary = sites::open_secondary(
        &location,
        primary,
        SecondaryOptions::new(Timeouts::default()),
    )
    .await?;
    let descriptor = find_replicable("package_file")?.ok_or("package_file is not registered")?;
    secondary
        .registry_store()
        .create_tables("package_file")
        .await?;
    let started = Instant::now();
    let pass = backfill(&secondary, descriptor, DEFAULT_RANGE_SIZE).await?;
    let took = started.elapsed();
    if pass.created != n {
        return Err(format!("backfill created {} rows, {n} expected", pass.created).into());
    }
    drop(secondary);
    bench.drop_database(&location).await?;
    bench.discard(&dir).await?;
    Ok(took)
}

/// The ceiling: the same ids copied into a plain table of a fresh database (SQLite file, or
/// PostgreSQL schema) by the database's command-line client, in one statement.
async fn plain_run(bench: &Bench, primary: &SiteLocation) -> Result<Duration, Error> {
    const TABLE: &str =
        "(id BIGINT PRIMARY KEY, state SMALLINT NOT NULL DEFAULT 0, created_at BIGINT NOT NULL)";
    let dir = bench.fresh_dir("backfill-plain")?;
    let took = match (&bench.settings.postgres, &primary.schema) {
        (Some(url), Some(primary_schema)) => {
            let schema = format!("{primary_schema}_plain");
            let script = format!(
                "CREATE SCHEMA {schema}; CREATE TABLE {schema}.registry {TABLE}; \
                 INSERT INTO {schema}.registry (id, created_at) \
                 SELECT package_file_id, 0 FROM {primary_schema}.package_file_records;"
            );
            let took = bench
                .time_command(
                    "psql",
                    &[url, "-qAt", "-v", "ON_ERROR_STOP=1", "-c", &script],
                )
                .await?;
            bench
                .time_command(
                    "psql",
                    &[url, "-qAtc", &format!("DROP SCHEMA {schema} CASCADE")],
                )
                .await?;
            took
        }
        _ => {
            let db = dir.join("plain.db").display().to_string();
            let script = format!(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                 CREATE TABLE registry {TABLE}; ATTACH '{}' AS p; \
                 INSERT INTO registry (id, created_at) SELECT package_file_id, 0 FROM p.package_file_records;",
                primary.data.join("site.db").display()
            );
            bench.time_command("sqlite3", &[&db, &script]).await?
        }
    };
    bench.discard(&dir).await?;
    Ok(took)
}
