//! Prometheus metrics of a site (feature `metrics`): per-replicable gauges named after Geo's,
//! the event log's and the cursor's position, the sync queue's depth, and histograms of sync
//! delay, sync duration and end-to-end replication lag; served as text on `/metrics`.
//!
//! ```ignore
//! let metrics = Arc::new(Metrics::new(site.role(), &replicables));
//! let _refresh = metrics::spawn_refresh(metrics.clone(), site.clone(), metrics::DEFAULT_REFRESH);
//! let server = metrics::serve("0.0.0.0:9394".parse()?, metrics).await?;
//! ```
//!
//! # Scrapes are cheap
//! A scrape never queries the database: it encodes the values last stored. The gauges are
//! refreshed from the stores by a background task every [`DEFAULT_REFRESH`] (15 s) by default
//! ([`spawn_refresh`]); each refresh reads the counts the stores keep as rows change (on SQL,
//! a few rows per replicable, whatever the number of records), the queue depth, and a few reads
//! of the event log's ends. The gauges are therefore up to one period old;
//! `replicable_metrics_refreshed_timestamp_seconds` says when they were taken.
//!
//! # Names
//! For a replicable `package_file` (plural `package_files`; see [`plural`]: `container_repository`
//! is `container_repositories`, `merge_request_diff` `merge_request_diffs`, as Geo names them):
//! - primary: `replicable_package_files_count` (also as Geo names it, `replicable_package_files`),
//!   `_checksum_total`, `_checksummed`, `_checksum_failed`;
//! - secondary: `replicable_package_files_registry`, `_pending`, `_started`, `_synced`,
//!   `_failed`, `_verification_total`, `_verified`, `_verification_failed`, `_queue_depth`
//!   (pending plus failed rows whose retry is due);
//! - primary, labelled `secondary="<name>"` for every secondary that reported its status:
//!   `replicable_secondary_report_age_seconds`, `replicable_secondary_healthy` (1 while its
//!   last report is younger than the silence threshold, [`Metrics::silent_after`]),
//!   `replicable_secondary_cursor_event_id`;
//! - both: `replicable_last_event_id`, `replicable_last_event_timestamp_seconds`; secondary:
//!   `replicable_cursor_event_id`, `replicable_cursor_event_timestamp_seconds`,
//!   `replicable_cursor_events_behind`, `replicable_cursor_lag_seconds`;
//! - histograms labelled `replicable="package_file"`: `replicable_sync_delay_seconds` (event
//!   published on the primary -> sync started), `replicable_sync_duration_seconds`,
//!   `replicable_replication_lag_seconds` (event published -> copy synced), recorded by the
//!   engine with [`record_sync`] for every sync that made a copy visible. The delay and the lag
//!   start at the oldest change the copy did not hold, as the log cursor noted it
//!   (`RegistryRecord::changed_at`, the event's time on the primary's database); rows queued
//!   without an event (backfill, an operator's resync) have no lag. Both compare the primary's
//!   clock with the secondary's: keep the machines' clocks synchronised (NTP).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::descriptor::ReplicableDescriptor;
use crate::engine::timings::HISTOGRAMS;
pub use crate::engine::timings::{ReplicableLabel, record_sync};
use crate::site::{Site, SiteRole};
use crate::status::{ReplicableStatus, ReportError, SiteStatus, StatusOptions, site_status_with};

/// How often [`spawn_refresh`] reads the stores by default.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(15);

/// The content type of the text served on `/metrics` (OpenMetrics, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type FloatGauge = Gauge<f64, AtomicU64>;

/// The `secondary` label of a primary's per-secondary gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SecondaryLabel {
    secondary: String,
}

/// A primary's gauges of its secondaries, one series per secondary.
#[derive(Debug, Default)]
struct SecondaryGauges {
    report_age: Family<SecondaryLabel, FloatGauge>,
    healthy: Family<SecondaryLabel, Gauge>,
    cursor_event_id: Family<SecondaryLabel, Gauge>,
}

/// The gauges of one replicable.
#[derive(Debug, Default)]
struct ReplicableGauges {
    name: &'static str,
    // Primary.
    count: Gauge,
    checksum_total: Gauge,
    checksummed: Gauge,
    checksum_failed: Gauge,
    // Secondary.
    registry: Gauge,
    pending: Gauge,
    started: Gauge,
    synced: Gauge,
    failed: Gauge,
    verification_total: Gauge,
    verified: Gauge,
    verification_failed: Gauge,
    queue_depth: Gauge,
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A site's metrics: a Prometheus registry whose gauges [`Metrics::refresh`] sets from the
/// stores, and the shared histograms.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    replicables: Vec<&'static ReplicableDescriptor>,
    gauges: Vec<ReplicableGauges>,
    last_event_id: Gauge,
    last_event_timestamp: FloatGauge,
    cursor_event_id: Gauge,
    cursor_event_timestamp: FloatGauge,
    cursor_events_behind: Gauge,
    cursor_lag: FloatGauge,
    refreshed: FloatGauge,
    secondaries: SecondaryGauges,
    silent_after: Duration,
}

impl Metrics {
    /// The metrics of a site of `role` running `replicables`: the role's gauges, all zero until
    /// the first [`refresh`](Self::refresh), and the histograms.
    pub fn new(role: SiteRole, replicables: &[&'static ReplicableDescriptor]) -> Self {
        let mut registry = Registry::default();
        let primary = role == SiteRole::Primary;
        let mut gauges = Vec::with_capacity(replicables.len());
        for replicable in replicables {
            let g = ReplicableGauges {
                name: replicable.name,
                ..ReplicableGauges::default()
            };
            let plural = plural(replicable.name);
            if primary {
                // Geo's name for the primary's count: the plural alone (`geo_package_files`).
                registry.register(
                    format!("replicable_{plural}"),
                    format!("Records on the primary ({})", replicable.name),
                    g.count.clone(),
                );
            }
            let mut add = |suffix: &str, help: &str, metric: &Gauge| {
                registry.register(
                    format!("replicable_{plural}_{suffix}"),
                    format!("{help} ({})", replicable.name),
                    metric.clone(),
                );
            };
            if primary {
                add("count", "Records on the primary", &g.count);
                add(
                    "checksum_total",
                    "Records with verification state",
                    &g.checksum_total,
                );
                add(
                    "checksummed",
                    "Records whose checksum succeeded",
                    &g.checksummed,
                );
                add(
                    "checksum_failed",
                    "Records whose checksum failed",
                    &g.checksum_failed,
                );
            } else {
                add("registry", "Registry rows", &g.registry);
                add("pending", "Registry rows pending", &g.pending);
                add("started", "Registry rows whose sync is running", &g.started);
                add("synced", "Registry rows synced", &g.synced);
                add("failed", "Registry rows failed", &g.failed);
                add(
                    "verification_total",
                    "Synced rows that take part in verification",
                    &g.verification_total,
                );
                add("verified", "Rows whose verification succeeded", &g.verified);
                add(
                    "verification_failed",
                    "Rows whose verification failed",
                    &g.verification_failed,
                );
                add(
                    "queue_depth",
                    "Rows pending plus failed rows whose retry is due",
                    &g.queue_depth,
                );
            }
            gauges.push(g);
        }
        let metrics = Self {
            registry: Registry::default(),
            replicables: replicables.to_vec(),
            gauges,
            last_event_id: Gauge::default(),
            last_event_timestamp: FloatGauge::default(),
            cursor_event_id: Gauge::default(),
            cursor_event_timestamp: FloatGauge::default(),
            cursor_events_behind: Gauge::default(),
            cursor_lag: FloatGauge::default(),
            refreshed: FloatGauge::default(),
            secondaries: SecondaryGauges::default(),
            silent_after: crate::status::DEFAULT_SILENT_AFTER,
        };
        if primary {
            registry.register(
                "replicable_secondary_report_age_seconds",
                "Age of the last status report of a secondary",
                metrics.secondaries.report_age.clone(),
            );
            registry.register(
                "replicable_secondary_healthy",
                "1 while a secondary's last status report is younger than the silence threshold",
                metrics.secondaries.healthy.clone(),
            );
            registry.register(
                "replicable_secondary_cursor_event_id",
                "The last event a secondary's log cursor processed, as it reported",
                metrics.secondaries.cursor_event_id.clone(),
            );
        }
        registry.register(
            "replicable_last_event_id",
            "The newest event's id in the primary's log",
            metrics.last_event_id.clone(),
        );
        registry.register(
            "replicable_last_event_timestamp_seconds",
            "When the newest event was appended (Unix time)",
            metrics.last_event_timestamp.clone(),
        );
        if !primary {
            registry.register(
                "replicable_cursor_event_id",
                "The id of the last event the log cursor processed",
                metrics.cursor_event_id.clone(),
            );
            registry.register(
                "replicable_cursor_event_timestamp_seconds",
                "When the event at the cursor was appended (Unix time)",
                metrics.cursor_event_timestamp.clone(),
            );
            registry.register(
                "replicable_cursor_events_behind",
                "Event ids between the cursor and the log's newest",
                metrics.cursor_events_behind.clone(),
            );
            registry.register(
                "replicable_cursor_lag_seconds",
                "Age of the oldest event the cursor has not processed",
                metrics.cursor_lag.clone(),
            );
            let h = &*HISTOGRAMS;
            registry.register(
                "replicable_sync_delay_seconds",
                "Event published on the primary -> sync started",
                h.sync_delay.clone(),
            );
            registry.register(
                "replicable_sync_duration_seconds",
                "Sync started -> sync finished",
                h.sync_duration.clone(),
            );
            registry.register(
                "replicable_replication_lag_seconds",
                "Event published on the primary -> copy synced on this secondary",
                h.replication_lag.clone(),
            );
        }
        registry.register(
            "replicable_metrics_refreshed_timestamp_seconds",
            "When the gauges were last read from the stores (Unix time)",
            metrics.refreshed.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// A primary shows a secondary unhealthy (`replicable_secondary_healthy` 0) once its last
    /// status report is older than `after` (default [`DEFAULT_SILENT_AFTER`](crate::status::DEFAULT_SILENT_AFTER)).
    pub fn silent_after(mut self, after: Duration) -> Self {
        self.silent_after = after;
        self
    }

    /// The replicables these metrics cover.
    pub fn replicables(&self) -> &[&'static ReplicableDescriptor] {
        &self.replicables
    }

    /// Reads the stores (the counts they keep per replicable, the queue depth, the log's and
    /// cursor's ends) and sets the gauges. Returns the status it read.
    pub async fn refresh(&self, site: &Site) -> Result<SiteStatus, ReportError> {
        let options = StatusOptions::default().silent_after(self.silent_after);
        let status = site_status_with(site, &self.replicables, options).await?;
        self.set(&status);
        self.refreshed
            .set(site.now().timestamp_micros() as f64 / 1e6);
        Ok(status)
    }

    /// Sets the gauges from a status read elsewhere.
    pub fn set(&self, status: &SiteStatus) {
        for r in &status.replicables {
            let Some(g) = self.gauges.iter().find(|g| g.name == r.name()) else {
                continue;
            };
            match r {
                ReplicableStatus::Primary(p) => {
                    g.count.set(gauge(p.count));
                    g.checksum_total.set(gauge(p.checksum_total_count));
                    g.checksummed.set(gauge(p.checksummed_count));
                    g.checksum_failed.set(gauge(p.checksum_failed_count));
                }
                ReplicableStatus::Secondary {
                    status: s,
                    queue_depth,
                    ..
                } => {
                    g.registry.set(gauge(s.registry_count));
                    g.pending.set(gauge(s.pending_count));
                    g.started.set(gauge(s.started_count));
                    g.synced.set(gauge(s.synced_count));
                    g.failed.set(gauge(s.failed_count));
                    g.verification_total.set(gauge(s.verification_total_count));
                    g.verified.set(gauge(s.verified_count));
                    g.verification_failed
                        .set(gauge(s.verification_failed_count));
                    g.queue_depth.set(gauge(*queue_depth));
                }
            }
        }
        let e = &status.events;
        let unix =
            |at: Option<DateTime<Utc>>| at.map_or(0.0, |at| at.timestamp_micros() as f64 / 1e6);
        if let Some(id) = e.last_event_id {
            self.last_event_id.set(id);
            self.last_event_timestamp.set(unix(e.last_event_at));
        }
        if let Some(cursor) = e.cursor_event_id {
            self.cursor_event_id.set(cursor);
            self.cursor_event_timestamp.set(unix(e.cursor_event_at));
        }
        if let Some(behind) = e.events_behind {
            self.cursor_events_behind.set(gauge(behind));
        }
        if let Some(lag) = e.lag_seconds {
            self.cursor_lag.set(lag);
        }
        for s in &status.secondaries {
            let label = SecondaryLabel {
                secondary: s.name.clone(),
            };
            let g = &self.secondaries;
            g.report_age.get_or_create(&label).set(s.age_seconds);
            g.healthy.get_or_create(&label).set(i64::from(s.healthy));
            if let Some(cursor) = s.cursor {
                g.cursor_event_id.get_or_create(&label).set(cursor);
            }
        }
    }

    /// The metrics in the text format, as `/metrics` serves them. No I/O.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String never fails");
        text
    }

    /// The Prometheus registry, to add an application's own metrics next to these.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// Refreshes `metrics` from `site` now and then every `period`, until the task is aborted.
/// A failed refresh is logged and the last values are kept.
pub fn spawn_refresh(metrics: Arc<Metrics>, site: Site, period: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period.max(Duration::from_millis(10)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(e) = metrics.refresh(&site).await {
                warn!(site = site.name(), error = %e, "refreshing the metrics failed");
            }
        }
    })
}

/// A router serving `GET /metrics`: the last refreshed values, never a database query.
/// Merge it into a larger axum application (the primary's API) or serve it with [`serve`].
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.encode()).into_response() }
        }),
    )
}

/// A running `/metrics` server.
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl MetricsServer {
    /// The address it listens on (the port chosen when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets requests in flight finish, and waits for the server to end.
    pub async fn shutdown(self) -> std::io::Result<()> {
        self.stop.cancel();
        self.task
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }
}

/// Serves `/metrics` on `addr` (port 0 picks a free port; see
/// [`MetricsServer::local_addr`]). Returns once the socket is bound.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<MetricsServer> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let app = router(metrics);
    let task = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future(),
    );
    Ok(MetricsServer {
        local_addr,
        stop,
        task,
    })
}

/// The plural of a replicable's (snake_case) name as Geo's metric names use it: the English
/// rules for the last word (`repository` -> `repositories`, `status` -> `statuses`, `box` ->
/// `boxes`, `branch` -> `branches`, `file` -> `files`). Written here rather than taken from an
/// inflection crate: these few rules are all Geo's names need.
pub fn plural(name: &str) -> String {
    let ends = |suffix: &str| name.ends_with(suffix);
    let before_last = name.chars().rev().nth(1);
    if ends("y") && before_last.is_some_and(|c| !"aeiou".contains(c)) {
        format!("{}ies", &name[..name.len() - 1])
    } else if ends("s") || ends("x") || ends("z") || ends("ch") || ends("sh") {
        format!("{name}es")
    } else {
        format!("{name}s")
    }
}

#[cfg(test)]
mod tests {
    use super::plural;

    #[test]
    fn plurals_are_geos() {
        for (one, many) in [
            ("package_file", "package_files"),
            ("container_repository", "container_repositories"),
            ("snippet_repository", "snippet_repositories"),
            ("ci_secure_file", "ci_secure_files"),
            ("merge_request_diff", "merge_request_diffs"),
            ("pages_deployment", "pages_deployments"),
            ("status", "statuses"),
            ("box", "boxes"),
            ("branch", "branches"),
            ("key", "keys"),
        ] {
            assert_eq!(plural(one), many);
        }
    }
}
