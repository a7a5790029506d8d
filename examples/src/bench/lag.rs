//! `lag`: replication lag at a steady publish rate. The application writes a 4 KiB file and
//! publishes its `created` event at a fixed rate (200 and 1,000 events/s) for a while, with the
//! engines of a primary and a secondary running at default settings. The lag of a record is
//! the time from its publish returning on the primary to its copy being about to become
//! visible on the secondary (the sync's `SyncObserver::before_visible`, right before the rename;
//! the registry's completion write follows). Reports p50 / p99 / max, the publish rate
//! achieved, and how long the secondary took to drain after the last publish.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use replicable_core::observer::SyncObserver;

use super::env::{self, Bench, Error, Sites};
use super::report::{Report, duration, percentile, thousands};
use crate::geo_demo::seed::{blob_bytes, package_file};

/// The rates measured, events per second.
pub const RATES: [u64; 2] = [200, 1_000];

/// How long each rate is held at scale 1.
pub const PERIOD: Duration = Duration::from_secs(20);

/// The size of each file.
const FILE_SIZE: u64 = 4 * 1024;

/// When each record's copy was about to become visible on the secondary.
#[derive(Debug, Default)]
struct VisibleAt {
    at: Mutex<HashMap<i64, Instant>>,
}

#[async_trait]
impl SyncObserver for VisibleAt {
    async fn before_visible(&self, _replicable: &str, id: i64) {
        let now = Instant::now();
        if let Ok(mut at) = self.at.lock() {
            at.entry(id).or_insert(now);
        }
    }
}

/// What one rate measured.
#[derive(Debug, Clone)]
pub struct LagRun {
    /// The rate asked for.
    pub target_rate: u64,
    /// Events published.
    pub published: u64,
    /// The publish rate achieved.
    pub achieved_rate: f64,
    /// Lags of the records synced.
    pub lags: Vec<Duration>,
    /// How long after the last publish the secondary was synced (None: not within the drain
    /// timeout).
    pub drained_after: Option<Duration>,
}

/// Runs the scenario at `rates`, each for `period` (scaled).
pub async fn run(bench: &Bench, rates: &[u64], period: Duration) -> Result<Report, Error> {
    let period = period
        .mul_f64(bench.settings.scale.min(1.0))
        .max(Duration::from_millis(200));
    let mut report = Report::new(
        "lag",
        format!(
            "replication lag at a steady rate of {} KiB files for {} each ({} tracking databases)",
            FILE_SIZE / 1024,
            duration(period),
            bench.database_kind()
        ),
    );
    report.headers = [
        "target rate",
        "achieved",
        "synced",
        "lag p50",
        "lag p99",
        "lag max",
        "drained after last publish",
    ]
    .map(String::from)
    .to_vec();
    for &rate in rates {
        let run = run_rate(bench, rate, period).await?;
        // Every copy became visible within the slowest lag; a drain much longer than that
        // means rows were synced again later (a retry, or copies removed and brought back):
        // worth a look, so it is said.
        let slowest = run.lags.iter().max().copied().unwrap_or_default();
        if let Some(drained) = run.drained_after
            && drained > Duration::from_secs(1).max(slowest * 10)
        {
            report.note(format!(
                "at {} ev/s the secondary was synced only {} after the last publish, though \
                 every copy became visible within {}: some rows were synced again later \
                 (retries, or copies removed and brought back); run with RUST_LOG=debug to see why",
                thousands(rate as f64),
                duration(drained),
                duration(slowest)
            ));
        }
        report.rows.push(vec![
            format!("{} ev/s", thousands(rate as f64)),
            format!("{} ev/s", thousands(run.achieved_rate)),
            format!("{}/{}", run.lags.len(), run.published),
            percentile(&run.lags, 50.0).map_or("-".into(), duration),
            percentile(&run.lags, 99.0).map_or("-".into(), duration),
            run.lags.iter().max().copied().map_or("-".into(), duration),
            run.drained_after
                .map_or_else(|| "not within the timeout".into(), duration),
        ]);
    }
    report.note("one run per rate; lag = publish returned on the primary -> copy about to become visible on the secondary");
    report.note("engines at default settings (idle loops back off from 1 s to 5 s; an append wakes the primary's engine and a waiting secondary cursor, after a 25 ms / 10 ms gathering wait)");
    Ok(report)
}

/// One rate: fresh sites, engines running, `rate` publishes a second for `period`.
pub async fn run_rate(bench: &Bench, rate: u64, period: Duration) -> Result<LagRun, Error> {
    let dir = bench.fresh_dir("lag")?;
    let observer = Arc::new(VisibleAt::default());
    let sites = Sites::open(
        bench.location(&dir.join("primary"), "primary"),
        bench.location(&dir.join("secondary"), "secondary"),
        Some(observer.clone()),
    )
    .await?;
    let engines = sites.start_engines().await?;
    let total = ((rate as f64) * period.as_secs_f64()).round().max(1.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut published_at = Vec::with_capacity(total as usize);
    let started = tokio::time::Instant::now();
    for i in 0..total {
        tokio::time::sleep_until(started + interval.mul_f64(i as f64)).await;
        let id = i as i64 + 1;
        let file = package_file(id);
        let path = sites.primary_location.blob_file(&file.file_path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, blob_bytes(id as u64, FILE_SIZE))?;
        file.replicator(&sites.primary)
            .publish_created_event()
            .await?;
        published_at.push(Instant::now());
    }
    let publishing = started.elapsed();
    let last_publish = Instant::now();
    let drain_timeout = bench.settings.timeout.min(Duration::from_secs(300));
    let drained = env::wait_until_synced(
        &sites.secondary,
        "package_file",
        total,
        false,
        drain_timeout,
    )
    .await
    .is_ok()
    .then(|| last_publish.elapsed());
    engines.shutdown().await;
    let visible = observer.at.lock().map(|m| m.clone()).unwrap_or_default();
    let lags = published_at
        .iter()
        .enumerate()
        .filter_map(|(i, published)| {
            visible
                .get(&(i as i64 + 1))
                .map(|v| v.saturating_duration_since(*published))
        })
        .collect();
    sites.drop_databases(bench).await?;
    drop(sites);
    bench.discard(&dir).await?;
    Ok(LagRun {
        target_rate: rate,
        published: total,
        achieved_rate: total as f64 / publishing.as_secs_f64().max(1e-9),
        lags,
        drained_after: drained,
    })
}
