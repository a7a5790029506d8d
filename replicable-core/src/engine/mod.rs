//! The engine: runs a site's replication by itself, as tasks on one tokio runtime, until it is
//! stopped.
//!
//! ```ignore
//! let engine = Engine::new(site, vec![find_replicable("package_file")?.unwrap()])
//!     .config(EngineConfig::load(Some("replicable.toml".as_ref()))?)
//!     .start()
//!     .await?;
//! engine.run_until_signal().await;   // SIGINT / SIGTERM: graceful shutdown
//! ```
//!
//! On a **secondary** it runs the log cursor (recording intent only), sync workers with a total
//! concurrency and per-data-type capacities, verification, the sweep of stuck or abandoned
//! work, registry consistency (backfill), and re-verification. On the **primary** it runs
//! verification (claims skip locked rows), the verification backfill, re-verification, the
//! stuck-work sweep and event-log retention.
//!
//! Crash safety follows Geo's contract: the intent to sync or verify lives in the registry and
//! verification tables, never only in a queue. A process killed at any point loses no work; the
//! next one finds it again. A graceful shutdown stops claiming, lets in-flight syncs finish
//! within a deadline, hands back what did not (to pending, not `started`), and releases the
//! cursor lease so a restarted process takes over at once.
//!
//! Every loop that errors logs, backs off and goes on; none takes the process down.

pub mod backfill;
pub mod config;
pub mod cursor;
mod idle;
pub mod staging;
mod status_report;
mod sync;
#[cfg(feature = "metrics")]
pub mod timings;
mod verification;
pub mod workers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub use config::EngineConfig;

use crate::descriptor::ReplicableDescriptor;
use crate::domain::error::StoreError;
use crate::domain::event::EventId;
use crate::domain::resource::DataType;
use crate::engine::cursor::LogCursor;
use crate::site::Site;
use idle::{Idle, Wake, Wakes, sleep_or_stop};
use sync::{Capacity, InFlightSyncs};

pub use crate::storage::SITE_SWITCH;

/// The engine could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The engine was given no replicables to run.
    #[error("site `{site}`: the engine was given no replicables")]
    NoReplicables {
        /// The site.
        site: String,
    },
    /// The site's storage could not be prepared.
    #[error("site `{site}`: preparing the tables of `{replicable}` failed: {source}")]
    Storage {
        /// The site.
        site: String,
        /// The replicable.
        replicable: &'static str,
        /// The failure.
        source: StoreError,
    },
}

/// An engine to start for a site and an explicit list of replicables.
#[derive(Debug)]
pub struct Engine {
    site: Site,
    replicables: Vec<&'static ReplicableDescriptor>,
    config: EngineConfig,
    holder: Option<String>,
}

pub(crate) struct Shared {
    pub(crate) site: Site,
    pub(crate) config: EngineConfig,
    pub(crate) cancel: CancellationToken,
    pub(crate) tracker: TaskTracker,
    /// Rows to sync, per replicable.
    pub(crate) sync_wakes: Wakes,
    /// Sync capacity freed (any replicable's sync ended).
    pub(crate) capacity_wake: Wake,
    /// Rows to verify, per replicable.
    pub(crate) verification_wakes: Wakes,
    pub(crate) in_flight: InFlightSyncs,
    replicables: Vec<&'static ReplicableDescriptor>,
}

impl Engine {
    /// An engine for `site` running `replicables` (find them with
    /// [`find_replicable`](crate::descriptor::find_replicable) or
    /// [`registered_replicables`](crate::descriptor::registered_replicables)), with default settings.
    pub fn new(site: Site, replicables: Vec<&'static ReplicableDescriptor>) -> Self {
        Self {
            site,
            replicables,
            config: EngineConfig::default(),
            holder: None,
        }
    }

    /// The settings.
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// The name this process holds the cursor lease under (default: site, pid and a random
    /// suffix).
    pub fn holder(mut self, holder: impl Into<String>) -> Self {
        self.holder = Some(holder.into());
        self
    }

    /// Prepares the tables of the replicables and starts every loop. Returns at once.
    pub async fn start(self) -> Result<EngineHandle, EngineError> {
        let site = self.site;
        if self.replicables.is_empty() {
            return Err(EngineError::NoReplicables {
                site: site.name().to_owned(),
            });
        }
        for replicable in &self.replicables {
            prepare(&site, replicable)
                .await
                .map_err(|source| EngineError::Storage {
                    site: site.name().to_owned(),
                    replicable: replicable.name,
                    source,
                })?;
        }
        let shared = Arc::new(Shared {
            site: site.clone(),
            config: self.config,
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            sync_wakes: Wakes::new(self.replicables.iter().map(|r| r.name)),
            capacity_wake: Wake::new(),
            verification_wakes: Wakes::new(self.replicables.iter().map(|r| r.name)),
            in_flight: Arc::new(Mutex::new(HashMap::new())),
            replicables: self.replicables,
        });
        let holder = self.holder.unwrap_or_else(|| {
            format!(
                "{}-{}-{:08x}",
                site.name(),
                std::process::id(),
                fastrand::u32(..)
            )
        });
        let cursor = LogCursor::with_holder(&site, holder)
            .batch_size(shared.config.cursor.batch_size)
            .intent_only(true);
        let loops = TaskTracker::new();
        if site.is_primary() {
            start_primary(&shared, &loops);
        } else {
            match crate::engine::staging::sweep_abandoned_staging(&site).await {
                Ok(swept) => debug!(?swept, "swept abandoned staging at start-up"),
                Err(e) => warn!(error = %e, "sweeping abandoned staging at start-up failed"),
            }
            start_secondary(&shared, &loops, cursor.clone());
        }
        loops.close();
        info!(
            site = site.name(),
            role = site.role().name(),
            replicables = shared.replicables.len(),
            "engine started"
        );
        Ok(EngineHandle {
            shared,
            loops,
            cursor: (!site.is_primary()).then_some(cursor),
        })
    }
}

/// Creates (or migrates) the tables the site needs for one replicable. Read paths never do.
async fn prepare(site: &Site, replicable: &ReplicableDescriptor) -> Result<(), StoreError> {
    site.registry_store().create_tables(replicable.name).await
}

fn start_secondary(shared: &Arc<Shared>, loops: &TaskTracker, cursor: LogCursor) {
    loops.spawn(cursor_loop(shared.clone(), cursor));
    let sync = shared.config.sync;
    let total = Arc::new(Semaphore::new(sync.concurrency.max(1)));
    let mut per_type: HashMap<DataType, Arc<Semaphore>> = HashMap::new();
    for &replicable in &shared.replicables {
        let of_type = per_type
            .entry(replicable.data_type)
            .or_insert_with(|| Arc::new(Semaphore::new(sync.capacity(replicable.data_type))))
            .clone();
        let capacity = Capacity {
            total: total.clone(),
            of_type,
            of_type_size: sync.capacity(replicable.data_type),
        };
        loops.spawn(sync::sync_loop(shared.clone(), replicable, capacity));
        loops.spawn(verification::verification_loop(shared.clone(), replicable));
    }
    loops.spawn(periodic(
        shared.clone(),
        "stuck sweep",
        |c| c.periods.stuck_sweep,
        sweep_stuck,
    ));
    loops.spawn(periodic(
        shared.clone(),
        "backfill",
        |c| c.periods.backfill,
        backfill,
    ));
    loops.spawn(periodic(
        shared.clone(),
        "re-verification",
        |c| c.periods.verification_maintenance,
        reverify,
    ));
    // The report at start shows a cursor at 0 and empty counts: the next one comes after a few
    // seconds of work rather than a whole period later.
    loops.spawn(periodic_soon_again(
        shared.clone(),
        "status report",
        |c| c.periods.status_report,
        Some(STATUS_REPORT_SOON),
        status_report::report,
    ));
}

/// How soon after its start a secondary reports its status again (then every
/// `periods.status_report`).
const STATUS_REPORT_SOON: Duration = Duration::from_secs(5);

fn start_primary(shared: &Arc<Shared>, loops: &TaskTracker) {
    for &replicable in &shared.replicables {
        loops.spawn(verification::verification_loop(shared.clone(), replicable));
    }
    loops.spawn(publish_watch(shared.clone()));
    loops.spawn(periodic(
        shared.clone(),
        "stuck sweep",
        |c| c.periods.stuck_sweep,
        sweep_stuck,
    ));
    loops.spawn(periodic(
        shared.clone(),
        "verification maintenance",
        |c| c.periods.verification_maintenance,
        |shared| async move {
            for &replicable in &shared.replicables {
                crate::engine::backfill::backfill_primary_verification(
                    &shared.site,
                    replicable,
                    shared.config.verification.batch.max(1) * 20,
                )
                .await
                .map_err(|e| e.to_string())?;
            }
            reverify(shared).await
        },
    ));
    loops.spawn(periodic(
        shared.clone(),
        "retention",
        |c| c.periods.retention,
        retention,
    ));
}

/// The log cursor: reads batches and records intent, waking the sync workers. Caught up, it
/// waits on the link for the next event ([`PrimaryLink::wait_for_events`]): a new event is
/// read as soon as the primary has it, not after an idle backoff.
///
/// [`PrimaryLink::wait_for_events`]: crate::link::PrimaryLink::wait_for_events
async fn cursor_loop(shared: Arc<Shared>, cursor: LogCursor) {
    let mut idle = Idle::new(shared.config.idle);
    // Whether the last wait said there were new events: if the batch after it reads none,
    // back off instead of asking again at once.
    let mut promised = false;
    loop {
        if shared.cancel.is_cancelled() {
            return;
        }
        let batch = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            batch = cursor.process_batch_touching() => batch,
        };
        // The loops of the replicables whose events were consumed have work; the others do
        // not, and each wake would cost them a claim (a write on SQLite).
        let wake = |touched: &[&'static str]| {
            for name in touched {
                shared.sync_wakes.notify(name);
                shared.verification_wakes.notify(name);
            }
        };
        match batch {
            Ok((report, touched)) if report.read >= shared.config.cursor.batch_size => {
                wake(&touched);
                idle.busy();
                promised = false;
            }
            Ok((report, touched)) => {
                // Open id gaps are read again soon: no wait outlasts their next reading.
                let gaps_due = cursor.gaps_due_in();
                if report.read > 0 {
                    wake(&touched);
                    idle.busy();
                } else if promised {
                    promised = false;
                    let waited = match gaps_due {
                        Some(due) => sleep_or_stop(due, &shared.cancel).await,
                        None => idle.wait(None, &shared.cancel).await,
                    };
                    if !waited {
                        return;
                    }
                    continue;
                }
                match wait_for_events(&shared, report.cursor, gaps_due, &mut idle).await {
                    Some(news) => promised = news,
                    None => return,
                }
            }
            Err(e) if e.lease_held => {
                debug!("another process holds the cursor lease; waiting");
                let wait = shared.site.timeouts().cursor_lease / 3;
                if !sleep_or_stop(wait, &shared.cancel).await {
                    return;
                }
            }
            Err(e) => {
                warn!(error = %e, "the log cursor failed; backing off");
                if !idle.wait(None, &shared.cancel).await {
                    return;
                }
            }
        }
    }
}

/// A caught-up cursor's wait for an event after `after`: `Some(true)` when the primary has
/// one, `Some(false)` when the wait ran out (or failed, after a backoff), `None` when the
/// engine stops.
async fn wait_for_events(
    shared: &Shared,
    after: EventId,
    at_most: Option<Duration>,
    idle: &mut Idle,
) -> Option<bool> {
    let Some(link) = shared.site.primary_link() else {
        return idle.wait(None, &shared.cancel).await.then_some(false);
    };
    // Within a third of the lease, as between batches: the lease is renewed by the next batch.
    let max_wait = shared
        .config
        .idle
        .max
        .min(shared.site.timeouts().cursor_lease / 3)
        .min(at_most.unwrap_or(Duration::MAX));
    let waited = tokio::select! {
        _ = shared.cancel.cancelled() => return None,
        waited = link.wait_for_events(after, max_wait) => waited,
    };
    match waited {
        Ok(newest) => Some(newest.is_some_and(|id| id > after)),
        Err(e) => {
            debug!(error = %e, "waiting for events failed; backing off");
            idle.wait(None, &shared.cancel).await.then_some(false)
        }
    }
}

/// Primary: wakes the verification loops as soon as the log grows (a publish makes a
/// verification row pending), whichever process published: at once for an append in this
/// process, within `PUBLISH_POLL` otherwise; without it a new record would wait for an idle
/// backoff before its checksum.
async fn publish_watch(shared: Arc<Shared>) {
    let log = shared.site.event_log();
    let mut seen = log.last_event_id().await.ok().flatten().unwrap_or(0);
    loop {
        let waited = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            waited = crate::link::wait_on_log(
                log,
                seen,
                shared.config.idle.max,
                PUBLISH_POLL,
                PUBLISH_GATHER,
            ) => waited,
        };
        match waited {
            Ok(newest) => {
                let newest = newest.unwrap_or(0);
                if newest > seen {
                    shared.verification_wakes.notify_all();
                }
                // Retention may have emptied the log: follow its newest id down too.
                seen = newest;
            }
            Err(e) => {
                debug!(error = %e, "reading the log's newest id failed");
                if !sleep_or_stop(shared.config.idle.max, &shared.cancel).await {
                    return;
                }
            }
        }
    }
}

/// How often a primary's engine looks for new events to checksum.
const PUBLISH_POLL: Duration = Duration::from_millis(100);

/// How long a primary's engine lets publishes in this process gather before it wakes the
/// verification loops: each wake costs every idle replicable a claim (a write), which under a
/// steady stream of publishes would compete with the publishes themselves.
const PUBLISH_GATHER: Duration = Duration::from_millis(25);

/// Runs `pass` every `period(config)`, logging and going on when it fails.
async fn periodic<F, Fut>(
    shared: Arc<Shared>,
    what: &'static str,
    period: fn(&EngineConfig) -> Duration,
    pass: F,
) where
    F: Fn(Arc<Shared>) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    periodic_soon_again(shared, what, period, None, pass).await;
}

/// [`periodic`], with the second pass at most `soon` after the first (the one at start).
async fn periodic_soon_again<F, Fut>(
    shared: Arc<Shared>,
    what: &'static str,
    period: fn(&EngineConfig) -> Duration,
    soon: Option<Duration>,
    pass: F,
) where
    F: Fn(Arc<Shared>) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut soon = soon;
    loop {
        let result = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            result = pass(shared.clone()) => result,
        };
        if let Err(e) = result {
            warn!(pass = what, error = %e, "periodic pass failed; trying again next period");
        }
        let wait = period(&shared.config);
        let wait = soon.take().map_or(wait, |soon| soon.min(wait));
        if !sleep_or_stop(wait, &shared.cancel).await {
            return;
        }
    }
}

async fn sweep_stuck(shared: Arc<Shared>) -> Result<(), String> {
    if !shared.site.is_primary()
        && let Err(e) = crate::engine::staging::sweep_abandoned_staging(&shared.site).await
    {
        // Partial downloads of syncs that were failed as abandoned, or whose process died;
        // a failure here must not keep stuck work from being failed below.
        warn!(error = %e, "sweeping abandoned staging failed");
    }
    for &replicable in &shared.replicables {
        let failed = crate::engine::workers::fail_stuck(&shared.site, replicable, 1_000)
            .await
            .map_err(|e| e.to_string())?;
        if failed > 0 {
            info!(replicable = replicable.name, failed, "failed stuck work");
            shared.sync_wakes.notify(replicable.name);
        }
    }
    Ok(())
}

async fn backfill(shared: Arc<Shared>) -> Result<(), String> {
    for &replicable in &shared.replicables {
        let report = crate::engine::backfill::backfill(
            &shared.site,
            replicable,
            crate::engine::backfill::DEFAULT_RANGE_SIZE,
        )
        .await
        .map_err(|e| e.to_string())?;
        if report.created > 0 || report.verification_enabled > 0 {
            shared.sync_wakes.notify(replicable.name);
            shared.verification_wakes.notify(replicable.name);
        }
    }
    Ok(())
}

async fn reverify(shared: Arc<Shared>) -> Result<(), String> {
    let settings = shared.config.verification;
    for &replicable in &shared.replicables {
        let n = crate::engine::workers::reverify_stale(
            &shared.site,
            replicable,
            settings.reverification_interval,
            settings.batch.max(1) * 20,
        )
        .await
        .map_err(|e| e.to_string())?;
        if n > 0 {
            shared.verification_wakes.notify(replicable.name);
        }
    }
    Ok(())
}

async fn retention(shared: Arc<Shared>) -> Result<(), String> {
    let settings = shared.config.retention;
    let before = shared.site.now()
        - chrono::Duration::from_std(settings.max_age).unwrap_or(chrono::Duration::MAX);
    loop {
        let deleted = shared
            .site
            .event_log()
            .delete_older_than(before, settings.batch.max(1))
            .await
            .map_err(|e| e.to_string())?;
        if deleted > 0 {
            info!(deleted, "deleted events past the retention age");
        }
        if deleted < settings.batch.max(1) as u64 {
            break;
        }
    }
    status_report::delete_consumed(&shared).await
}

/// A running engine.
#[derive(Debug)]
pub struct EngineHandle {
    shared: Arc<Shared>,
    loops: TaskTracker,
    cursor: Option<LogCursor>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("site", &self.site.name())
            .finish_non_exhaustive()
    }
}

/// What a graceful shutdown did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Syncs that finished within the deadline.
    pub finished: usize,
    /// Syncs that did not, handed back to pending.
    pub released: usize,
}

impl EngineHandle {
    /// The site.
    pub fn site(&self) -> &Site {
        &self.shared.site
    }

    /// Syncs running now.
    pub fn in_flight(&self) -> usize {
        self.shared
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Wakes every idle loop at once: new work was written in this process (a publish, an
    /// operator's resync).
    pub fn wake(&self) {
        self.shared.sync_wakes.notify_all();
        self.shared.verification_wakes.notify_all();
    }

    /// Stops claiming, lets in-flight syncs finish within the configured deadline, hands back
    /// what did not (to pending), and releases the cursor lease.
    pub async fn shutdown(self) -> ShutdownReport {
        let deadline = self.shared.config.shutdown_deadline;
        self.shutdown_within(deadline).await
    }

    /// [`shutdown`](Self::shutdown) with an explicit deadline.
    pub async fn shutdown_within(self, deadline: Duration) -> ShutdownReport {
        let shared = &self.shared;
        let running = self.in_flight();
        info!(running, ?deadline, "engine stopping");
        shared.cancel.cancel();
        // The loops stop claiming at once; a verification pass in flight finishes first.
        if tokio::time::timeout(deadline, self.loops.wait())
            .await
            .is_err()
        {
            warn!("a loop did not stop within the deadline");
        }
        // The cursor has stopped: another process may take over now, not after the drain.
        if let Some(cursor) = &self.cursor
            && let Err(e) = cursor.release().await
        {
            warn!(error = %e, "releasing the cursor lease failed; it expires on its own");
        }
        shared.tracker.close();
        let finished_in_time = tokio::time::timeout(deadline, shared.tracker.wait())
            .await
            .is_ok();
        let mut report = ShutdownReport::default();
        if !finished_in_time {
            let left: Vec<_> = shared
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain()
                .collect();
            for ((name, _), entry) in left {
                if let Some(abort) = &entry.abort {
                    abort.abort();
                }
                let Some(replicable) = shared.replicables.iter().find(|d| d.name == name) else {
                    continue;
                };
                if sync::release_row(shared, replicable, &entry.row).await {
                    report.released += 1;
                }
            }
            if tokio::time::timeout(deadline, shared.tracker.wait())
                .await
                .is_err()
            {
                warn!("some syncs did not stop after being aborted");
            }
        }
        report.finished = running.saturating_sub(report.released);
        info!(?report, "engine stopped");
        report
    }

    /// Runs until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run_until_signal(self) -> ShutdownReport {
        wait_for_signal().await;
        self.shutdown().await
    }
}

/// Waits for SIGINT or SIGTERM (Ctrl-C elsewhere).
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut interrupt), Ok(mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Turns replication of the whole site off (`false`) or on (`true`), persisted: paused, the
/// cursor still records intent but nothing is synced.
pub async fn set_site_replication_enabled(site: &Site, enabled: bool) -> Result<(), StoreError> {
    site.registry_store()
        .set_replication_enabled(SITE_SWITCH, enabled)
        .await
}
