//! The sync workers of a secondary: claim due registry rows within the free capacity (total and
//! per data type), run each claimed sync as its own tracked task under the sync timeout, record
//! a panicking strategy as that record's failure, and, at shutdown, hand back what did not
//! finish.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use tracing::{Instrument, debug, error, info_span, warn};

use super::Shared;
use super::idle::{Idle, Pace};
use crate::descriptor::ReplicableDescriptor;
use crate::domain::failure::SyncFailure;
use crate::domain::registry::RegistryRecord;
use crate::domain::verification::humanize;
use crate::replicator::{SyncInputs, with_sync_inputs};
use std::time::Duration;

/// A sync the engine started and has not seen end.
#[derive(Debug)]
pub(crate) struct InFlight {
    pub(crate) row: RegistryRecord,
    pub(crate) abort: Option<AbortHandle>,
    /// Which spawn this is: a finishing task removes only its own entry.
    pub(crate) token: u64,
}

/// The in-flight syncs of an engine, by replicable and id.
pub(crate) type InFlightSyncs = Arc<Mutex<HashMap<(&'static str, i64), InFlight>>>;

/// The capacity of one data type, shared by the replicables of that type, under the total.
#[derive(Debug, Clone)]
pub(crate) struct Capacity {
    pub(crate) total: Arc<Semaphore>,
    pub(crate) of_type: Arc<Semaphore>,
    /// How many permits `of_type` has in all.
    pub(crate) of_type_size: usize,
}

impl Capacity {
    fn try_take(&self) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let of_type = self.of_type.clone().try_acquire_owned().ok()?;
        let total = self.total.clone().try_acquire_owned().ok()?;
        Some((total, of_type))
    }
}

/// The longest a claim waits for more of its loop's syncs to end (see `sync_loop`).
const GROUP_LINGER: Duration = Duration::from_millis(10);

/// The claim loop of one replicable.
pub(crate) async fn sync_loop(
    shared: Arc<Shared>,
    replicable: &'static ReplicableDescriptor,
    capacity: Capacity,
) {
    let site = &shared.site;
    let name = replicable.name;
    let mut idle = Idle::new(shared.config.idle);
    // This loop's syncs still running, and how long one takes.
    let running = Arc::new(AtomicUsize::new(0));
    let pace = Arc::new(Pace::default());
    // Claim in groups: while this replicable's own syncs run and fewer than half of its
    // capacity is free, wait a little for more to end, so that a steady stream of short syncs
    // is claimed a few rows per statement rather than one. The wait is a quarter of the
    // average sync, at most `GROUP_LINGER`: a slot freed by a long sync idles a small share of
    // that sync's time, and a stream of short syncs forms groups. (Capacity held by other
    // replicables never makes it wait: only this loop's own syncs count.)
    let group = shared
        .config
        .sync
        .batch
        .clamp(1, capacity.of_type_size)
        .div_ceil(2);
    let mut linger_until: Option<tokio::time::Instant> = None;
    loop {
        if shared.cancel.is_cancelled() {
            return;
        }
        let mut work = shared.sync_wakes.snapshot(name);
        let mut freed = shared.capacity_wake.snapshot();
        // Capacity first, then claims: never claim a row there is no room to run (a claim
        // handed back would lose its place in the queue).
        let mut permits = Vec::new();
        while permits.len() < shared.config.sync.batch.max(1) {
            match capacity.try_take() {
                Some(permit) => permits.push(permit),
                None => break,
            }
        }
        if permits.is_empty() {
            linger_until = None;
            // Full: wait for capacity to come back (a sync ending, or another loop's claim
            // handing back what it held and did not use), or the idle backoff.
            if !idle.wait(Some(&mut freed), &shared.cancel).await {
                return;
            }
            continue;
        }
        if permits.len() < group && running.load(Ordering::Acquire) > 0 {
            let now = tokio::time::Instant::now();
            let until = *linger_until.get_or_insert_with(|| {
                now + pace
                    .average()
                    .map_or(Duration::ZERO, |average| (average / 4).min(GROUP_LINGER))
            });
            if now < until {
                // Handed back without a wake (it would end this loop's own wait): a loop that
                // found none free is woken by this loop's running syncs as they end.
                drop(permits);
                tokio::select! {
                    _ = shared.cancel.cancelled() => return,
                    _ = freed.changed() => {}
                    _ = tokio::time::sleep_until(until) => {}
                }
                continue;
            }
        }
        linger_until = None;
        // Nothing is claimed while the site's or this replicable's replication is paused
        // (the switches are read with the claim).
        let claimed = site
            .registry_store()
            .claim_for_sync_while_enabled(
                name,
                &[super::SITE_SWITCH, name],
                site.now(),
                permits.len(),
            )
            .await;
        let rows = match claimed {
            Ok(rows) => rows,
            Err(e) => {
                warn!(replicable = name, error = %e, "claiming syncs failed; backing off");
                Vec::new()
            }
        };
        if rows.is_empty() {
            // The capacity held for the claim goes back: a loop that found none free (this
            // one held it all for a moment) waits on it.
            drop(permits);
            shared.capacity_wake.notify();
            if !idle.wait(Some(&mut work), &shared.cancel).await {
                return;
            }
            continue;
        }
        idle.busy();
        // Fewer rows due than room for them: the rest of the capacity goes back (below).
        let unused = permits.len() > rows.len();
        let rows = with_sync_inputs(site, name, replicable.verifiable, rows).await;
        for ((row, inputs), permit) in rows.into_iter().zip(permits.drain(..)) {
            if shared.cancel.is_cancelled() {
                // Stopping: what was claimed but not started goes back as it was.
                release_row(&shared, replicable, &row).await;
                continue;
            }
            spawn_sync(
                &shared,
                replicable,
                row,
                inputs,
                permit,
                running.clone(),
                pace.clone(),
            );
        }
        if unused {
            shared.capacity_wake.notify();
        }
    }
}

fn spawn_sync(
    shared: &Arc<Shared>,
    replicable: &'static ReplicableDescriptor,
    row: RegistryRecord,
    inputs: Option<SyncInputs>,
    permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    running: Arc<AtomicUsize>,
    pace: Arc<Pace>,
) {
    let running = Running::start(running);
    let key = (replicable.name, row.model_id);
    let token = fastrand::u64(..);
    let entry = InFlight {
        row: row.clone(),
        abort: None,
        token,
    };
    lock(&shared.in_flight).insert(key, entry);
    let task_shared = shared.clone();
    let span = info_span!("sync", replicable = replicable.name, id = row.model_id);
    let handle = shared.tracker.spawn(
        async move {
            let started = std::time::Instant::now();
            let due_again = run_one(&task_shared, replicable, row, inputs).await;
            pace.add(started.elapsed());
            // Released before the wakes below, so that the loops they wake see them free.
            drop(permits);
            drop(running);
            {
                let mut in_flight = lock(&task_shared.in_flight);
                if in_flight.get(&key).is_some_and(|e| e.token == token) {
                    in_flight.remove(&key);
                }
            }
            // Capacity is free again, and the copy may now be verified. A row put back to
            // pending (a change arrived while it ran) is due again at once.
            task_shared.capacity_wake.notify();
            if due_again {
                task_shared.sync_wakes.notify(replicable.name);
            }
            task_shared.verification_wakes.notify(replicable.name);
        }
        .instrument(span),
    );
    if let Some(entry) = lock(&shared.in_flight).get_mut(&key)
        && entry.token == token
    {
        entry.abort = Some(handle.abort_handle());
    }
}

/// One running sync in its loop's count, from its spawn until its task ends (or is aborted).
struct Running(Arc<AtomicUsize>);

impl Running {
    fn start(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn lock(
    in_flight: &InFlightSyncs,
) -> std::sync::MutexGuard<'_, HashMap<(&'static str, i64), InFlight>> {
    in_flight.lock().unwrap_or_else(|e| e.into_inner())
}

/// One claimed sync, under the sync timeout, with a panic recorded as its failure. Returns
/// whether the row went back to pending (due again at once).
async fn run_one(
    shared: &Shared,
    replicable: &'static ReplicableDescriptor,
    row: RegistryRecord,
    inputs: Option<SyncInputs>,
) -> bool {
    let site = &shared.site;
    let timeout = site.timeouts().sync;
    #[cfg(feature = "metrics")]
    let started = chrono::Utc::now();
    let attempt =
        std::panic::AssertUnwindSafe(replicable.run_claimed_sync_with(site, row.clone(), inputs))
            .catch_unwind();
    let mut made_visible = false;
    let mut due_again = false;
    let failure = match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(Ok(outcome))) => {
            debug!(?outcome, "sync ended");
            made_visible = matches!(outcome, crate::replicator::SyncOutcome::Synced { .. });
            due_again = matches!(outcome, crate::replicator::SyncOutcome::ChangedDuringSync);
            None
        }
        Ok(Ok(Err(e))) => {
            // Storage or link trouble while completing: fail the row now (if it is still this
            // attempt's) rather than leave it `started` for the sweep of abandoned work.
            error!(error = %e, "sync errored");
            Some(SyncFailure::new(e.to_string()))
        }
        Ok(Err(panic)) => {
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            error!(panic = %text, "the strategy panicked");
            Some(SyncFailure::new(format!("Sync panicked: {text}")))
        }
        Err(_) => Some(SyncFailure::new(format!(
            "Sync timed out after {}",
            humanize(timeout)
        ))),
    };
    // The lag runs from the change the sync brought over, when an event noted it; it is
    // measured only for syncs that made a copy visible.
    #[cfg(feature = "metrics")]
    super::timings::record_sync(
        replicable.name,
        started,
        chrono::Utc::now(),
        row.changed_at.filter(|_| made_visible),
    );
    #[cfg(not(feature = "metrics"))]
    let _ = made_visible;
    if let Some(failure) = failure {
        fail_row(shared, replicable, &row, &failure).await;
    }
    due_again
}

/// Fails the row of an attempt that ended without completing it, if the row is still that
/// attempt's.
async fn fail_row(
    shared: &Shared,
    replicable: &'static ReplicableDescriptor,
    attempt: &RegistryRecord,
    failure: &SyncFailure,
) {
    let site = &shared.site;
    let jitter = fastrand::u32(0..crate::domain::retry::JITTER_RANGE);
    update_attempt_row(shared, replicable, attempt, |row| {
        row.mark_failed(failure, site.now(), site.retry_policy(), jitter)
            .is_ok()
    })
    .await;
}

/// Hands a claimed row back as it was before the claim (pending, or failed with its backoff),
/// so that another worker (or the next process) takes it when due instead of after the claim
/// timeout.
pub(crate) async fn release_row(
    shared: &Shared,
    replicable: &ReplicableDescriptor,
    attempt: &RegistryRecord,
) -> bool {
    update_attempt_row(shared, replicable, attempt, |row| {
        row.release_claim().is_ok()
    })
    .await
}

/// Applies `transition` to the row of `attempt` while the row is still that attempt's, as a
/// compare-and-set retried on contention. Returns whether it was written.
async fn update_attempt_row(
    shared: &Shared,
    replicable: &ReplicableDescriptor,
    attempt: &RegistryRecord,
    transition: impl Fn(&mut RegistryRecord) -> bool,
) -> bool {
    let store = shared.site.registry_store();
    for _ in 0..4 {
        let Ok(Some(mut row)) = store.get(replicable.name, attempt.model_id).await else {
            return false;
        };
        if !row.held_by_attempt(attempt.last_synced_at) || !transition(&mut row) {
            return false;
        }
        match store.update(replicable.name, &row).await {
            Ok(true) => return true,
            Ok(false) => continue,
            Err(e) => {
                warn!(replicable = replicable.name, error = %e, "cannot update the claimed row");
                return false;
            }
        }
    }
    false
}
