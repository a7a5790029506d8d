//! `rows`: 100,000 CI settings replicated by the database strategy: the framework publishes their
//! `created` events in batches of 1,000 (as an import would; one publish per row is the rate of
//! single publishes, which `publish` measures) and the engines (default settings) copy and
//! verify them; the clock
//! stops when the secondary's status shows every row synced and verified. Compared with
//! `sqlite3` copying the same rows from the application's table into a fresh database in one
//! statement (the ceiling of a hand-written copy, with no tracking or verification).

use std::time::{Duration, Instant};

use super::env::{self, Bench, Error, Sites};
use super::report::{Report, Timings, Work, duration, thousands};
use crate::geo_demo::seed::ci_setting;

/// Rows at scale 1.
pub const ROWS: u64 = 100_000;

/// Records per batch publish.
const BATCH: i64 = 1_000;

/// Runs the scenario.
pub async fn run(bench: &Bench) -> Result<Report, Error> {
    let n = bench.scaled(ROWS, 1);
    let mut report = Report::new(
        "rows",
        format!(
            "{} rows (database strategy), events published -> secondary synced and verified ({})",
            thousands(n as f64),
            bench.database_kind()
        ),
    );
    let work = Some(Work::Items(n, "rows"));
    let mut framework = Timings::framework(
        format!("framework (engine, {})", bench.database_kind()),
        work,
    );
    let use_sqlite3 = bench.tools.have(&["sqlite3"]);
    let mut plain =
        use_sqlite3.then(|| Timings::tool("sqlite3 INSERT ... SELECT into a fresh file", work));
    let source = bench.work().join("source-rows.db");
    if use_sqlite3 {
        let prepared = Instant::now();
        let script = format!(
            "CREATE TABLE ci_settings (id BIGINT PRIMARY KEY, key TEXT NOT NULL, value TEXT NOT NULL); \
             WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {n}) \
             INSERT INTO ci_settings SELECT g, 'setting.' || g, 'value ' || g || ' v1' FROM s;"
        );
        bench
            .time_command("sqlite3", &[&source.display().to_string(), &script])
            .await?;
        report.note(format!(
            "prepared the application's table for sqlite3 in {} (not measured)",
            duration(prepared.elapsed())
        ));
    } else {
        report.note("skipped the sqlite3 reference: sqlite3 not found");
    }
    let mut publishing = Vec::new();
    for rep in 0..bench.settings.reps {
        for k in 0..2 {
            if (k + rep) % 2 == 0 {
                let (took, published) = framework_run(bench, n).await?;
                framework.samples.push(took);
                publishing.push(published);
            } else if let Some(plain) = plain.as_mut() {
                let dir = bench.fresh_dir("rows-sqlite3")?;
                let script = format!(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; ATTACH '{}' AS s; \
                     CREATE TABLE ci_settings (id BIGINT PRIMARY KEY, key TEXT NOT NULL, value TEXT NOT NULL); \
                     INSERT INTO ci_settings SELECT * FROM s.ci_settings;",
                    source.display()
                );
                let db = dir.join("copy.db").display().to_string();
                plain
                    .samples
                    .push(bench.time_command("sqlite3", &[&db, &script]).await?);
                bench.discard(&dir).await?;
            }
        }
    }
    let mut all = vec![framework];
    all.extend(plain);
    report.timings(&all);
    if let Some(p) = super::report::median(&publishing) {
        report.note(format!(
            "framework: publishing the {} events (batches of {}, engines running) took {} of it (median)",
            thousands(n as f64),
            thousands(BATCH as f64),
            duration(p)
        ));
    }
    Ok(report)
}

async fn framework_run(bench: &Bench, n: u64) -> Result<(Duration, Duration), Error> {
    let dir = bench.fresh_dir("rows")?;
    let sites = Sites::open(
        bench.location(&dir.join("primary"), "primary"),
        bench.location(&dir.join("secondary"), "secondary"),
        None,
    )
    .await?;
    let engines = sites.start_engines().await?;
    let started = Instant::now();
    let n = n as i64;
    for first in (1..=n).step_by(BATCH as usize) {
        let batch: Vec<_> = (first..=(first + BATCH - 1).min(n))
            .map(|id| ci_setting(id, 1))
            .collect();
        sites.primary.publish_created_events(&batch).await?;
    }
    let publishing = started.elapsed();
    let waited = env::wait_until_synced(
        &sites.secondary,
        "ci_setting",
        n as u64,
        true,
        bench.settings.timeout,
    )
    .await;
    let took = started.elapsed();
    engines.shutdown().await;
    waited?;
    sites.drop_databases(bench).await?;
    drop(sites);
    bench.discard(&dir).await?;
    Ok((took, publishing))
}
