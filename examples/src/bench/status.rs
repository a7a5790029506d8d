//! `status`: the operator's status and the metrics at 1,000,000 registry rows on a secondary,
//! and the primary's status at 1,000,000 records with their checksums.
//! Measures `status::site_status` (what the `status` command and each metrics refresh run),
//! `Metrics::refresh`, and one HTTP scrape of `/metrics` (which encodes the last refreshed
//! values), against the grouped count of the registry table by `sqlite3` / `psql` (what a status
//! cost before the stores kept counts as rows change).

use std::sync::Arc;
use std::time::{Duration, Instant};

use replicable_core::metrics::{self, Metrics};
use replicable_core::status::{ReplicableStatus, site_status};
use replicable_core::storage::sql::Dialect;
use sqlx::AssertSqlSafe;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::env::{Bench, Error, Sites};
use super::report::{Report, Timings, duration, thousands};
use crate::geo_demo::sites;

/// Registry rows at scale 1.
pub const ROWS: u64 = 1_000_000;

/// The target: status at [`ROWS`] registry rows under this.
const TARGET: Duration = Duration::from_millis(50);

const COUNT_SQL: &str = "SELECT state, verification_state, checksum_mismatch, COUNT(*) \
                         FROM package_file_registry GROUP BY state, verification_state, checksum_mismatch";

/// Runs the scenario.
pub async fn run(bench: &Bench) -> Result<Report, Error> {
    let rows = bench.scaled(ROWS, 1);
    let mut report = Report::new(
        "status",
        format!(
            "status and metrics of a secondary with {} registry rows ({})",
            thousands(rows as f64),
            bench.database_kind()
        ),
    );
    let dir = bench.fresh_dir("status")?;
    let sites = Sites::open(
        bench.location(&dir.join("primary"), "primary"),
        bench.location(&dir.join("secondary"), "secondary"),
        None,
    )
    .await?;
    let replicables = sites::replicables()?;
    let store = sites.secondary.registry_store();
    store.create_tables("package_file").await?;
    let filled = Instant::now();
    let now = sites.secondary.now();
    let ids: Vec<i64> = (1..=rows as i64).collect();
    for chunk in ids.chunks(10_000) {
        store.insert_pending("package_file", chunk, now).await?;
    }
    report.note(format!(
        "filled the registry with insert_pending in chunks of 10,000 in {} (not measured)",
        duration(filled.elapsed())
    ));

    // The primary: as many records in its catalogue, each with a succeeded checksum, written
    // by plain SQL (the fill is not what is measured).
    let filled = Instant::now();
    let primary_db = sites
        .primary
        .event_log()
        .sql_store()
        .ok_or("the primary's event log is not in SQL")?;
    primary_db.create_replicable_tables("package_file").await?;
    let ids = match primary_db.dialect() {
        Dialect::Sqlite => format!(
            "WITH RECURSIVE ids(id) AS (SELECT 1 UNION ALL SELECT id + 1 FROM ids WHERE id < {rows}) \
             SELECT id FROM ids"
        ),
        Dialect::Postgres => format!("SELECT id FROM generate_series(1, {rows}) AS ids(id)"),
    };
    for fill in [
        format!(
            "INSERT INTO package_file_records (package_file_id, generation, body) \
             SELECT id, 1, '{{}}' FROM ({ids}) AS ids"
        ),
        format!(
            "INSERT INTO package_file_verification (package_file_id, verification_state) \
             SELECT id, 2 FROM ({ids}) AS ids"
        ),
    ] {
        sqlx::query(AssertSqlSafe(fill))
            .execute(primary_db.pool())
            .await?;
    }
    report.note(format!(
        "filled the primary's catalogue and checksums with plain SQL in {} (not measured)",
        duration(filled.elapsed())
    ));

    let metrics = Arc::new(Metrics::new(sites.secondary.role(), &replicables));
    let server = metrics::serve("127.0.0.1:0".parse()?, metrics.clone()).await?;
    let addr = server.local_addr();
    let mut status = Timings::framework("framework status::site_status", None);
    let mut primary_status = Timings::extra(
        format!(
            "framework status::site_status, primary ({} records)",
            thousands(rows as f64)
        ),
        None,
    );
    let mut refresh = Timings::extra("framework Metrics::refresh", None);
    let mut scrape = Timings::extra("framework GET /metrics (after a refresh)", None);
    let tool = reference_tool(bench, &sites);
    let mut plain = tool
        .as_ref()
        .map(|(label, _, _)| Timings::tool(label.clone(), None));
    if tool.is_none() {
        report.note("skipped the reference count: sqlite3 / psql not found");
    }
    for rep in 0..bench.settings.reps.max(3) {
        for k in 0..4 {
            match (k + rep) % 4 {
                0 => {
                    let started = Instant::now();
                    let s = site_status(&sites.secondary, &replicables).await?;
                    status.samples.push(started.elapsed());
                    let registry = s
                        .replicables
                        .iter()
                        .find(|r| r.name() == "package_file")
                        .map(|r| match r {
                            ReplicableStatus::Secondary { status, .. } => status.registry_count,
                            _ => 0,
                        });
                    if registry != Some(rows) {
                        return Err(
                            format!("status counted {registry:?} rows, {rows} expected").into()
                        );
                    }
                }
                1 => {
                    let started = Instant::now();
                    metrics.refresh(&sites.secondary).await?;
                    refresh.samples.push(started.elapsed());
                    let started = Instant::now();
                    let s = site_status(&sites.primary, &replicables).await?;
                    primary_status.samples.push(started.elapsed());
                    let count = s.replicables.iter().find_map(|r| match r {
                        ReplicableStatus::Primary(p) if p.replicable_name == "package_file" => {
                            Some((p.count, p.checksummed_count))
                        }
                        _ => None,
                    });
                    if count != Some((rows, rows)) {
                        return Err(format!(
                            "the primary's status counted {count:?}, {rows} records expected"
                        )
                        .into());
                    }
                }
                2 => scrape.samples.push(scrape_once(addr).await?),
                _ => {
                    if let (Some((_, program, args)), Some(plain)) = (&tool, plain.as_mut()) {
                        let args: Vec<&str> = args.iter().map(String::as_str).collect();
                        plain
                            .samples
                            .push(bench.time_command(program, &args).await?);
                    }
                }
            }
        }
    }
    let verdict = match status.median() {
        Some(median) if rows == ROWS => format!(
            "{}: median {} ({})",
            "target: status at 1,000,000 registry rows under 50 ms",
            duration(median),
            if median < TARGET { "met" } else { "missed" }
        ),
        Some(median) => format!(
            "status at {} registry rows: median {} (the target is at 1,000,000 rows, under 50 ms)",
            thousands(rows as f64),
            duration(median)
        ),
        None => "target: status at 1,000,000 registry rows under 50 ms: not measured".into(),
    };
    let mut all = vec![status, primary_status, refresh, scrape];
    all.extend(plain);
    report.timings(&all);
    report.note(verdict);
    server.shutdown().await?;
    sites.drop_databases(bench).await?;
    drop(sites);
    bench.discard(&dir).await?;
    Ok(report)
}

/// The plain grouped count by the database's command-line client: label, program, arguments.
fn reference_tool(bench: &Bench, sites: &Sites) -> Option<(String, String, Vec<String>)> {
    match (&bench.settings.postgres, &sites.secondary_location.schema) {
        (Some(url), Some(schema)) if bench.tools.have(&["psql"]) => Some((
            "psql, a grouped count of the registry".into(),
            "psql".into(),
            vec![
                url.clone(),
                "-qAtc".into(),
                format!("SET search_path TO {schema}; {COUNT_SQL}"),
            ],
        )),
        (None, _) if bench.tools.have(&["sqlite3"]) => Some((
            "sqlite3, a grouped count of the registry".into(),
            "sqlite3".into(),
            vec![
                sites
                    .secondary_location
                    .data
                    .join("site.db")
                    .display()
                    .to_string(),
                COUNT_SQL.into(),
            ],
        )),
        _ => None,
    }
}

/// One `GET /metrics` over a fresh loopback connection, read to the end.
async fn scrape_once(addr: std::net::SocketAddr) -> Result<Duration, Error> {
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body).await?;
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&body);
    if !text.starts_with("HTTP/1.1 200") || !text.contains("replicable_package_files_registry") {
        return Err(format!(
            "unexpected /metrics answer: {}",
            text.lines().next().unwrap_or("")
        )
        .into());
    }
    Ok(took)
}
