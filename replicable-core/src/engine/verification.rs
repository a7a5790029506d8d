//! The verification workers of a site: a pipeline per replicable that keeps up to
//! `verification.concurrency` checks running, claiming more rows as checks end (a few at a
//! time, so that a stream of short checks is claimed a few rows per statement), and, on the
//! primary, records finished checks in groups (rows and their `checksum_succeeded` events in
//! one transaction: one wait for the disk per group).
//!
//! Rows are claimed only when a slot is free to check them: a claimed row waiting its turn
//! would send no heartbeat and be failed as abandoned. At shutdown the loop stops claiming and
//! lets the checks it started finish and be recorded (the engine's shutdown deadline bounds the
//! wait): a check dropped midway would leave its row `started` until the stuck sweep.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::task::TaskTracker;
use tracing::{error, warn};

use super::Shared;
use super::idle::{Idle, Pace, Wake};
use crate::descriptor::ReplicableDescriptor;
use crate::domain::error::ReplicatorError;
use crate::domain::registry::RegistryRecord;
use crate::domain::verification::VerificationRecord;
use crate::replicator::{
    PrimaryCheck, SecondaryInputs, with_primary_records, with_secondary_inputs,
};
use crate::storage::StoredRecord;

/// Verification of one replicable (primary or secondary).
pub(crate) async fn verification_loop(
    shared: Arc<Shared>,
    replicable: &'static ReplicableDescriptor,
) {
    if !replicable.verifiable {
        return;
    }
    let site = &shared.site;
    let name = replicable.name;
    let settings = shared.config.verification;
    let concurrency = settings.concurrency.max(1);
    let slots = Arc::new(Semaphore::new(concurrency));
    let pace = Arc::new(Pace::default());
    // Claimed rows waiting for a slot, oldest claim first.
    let mut queue: VecDeque<Claimed> = VecDeque::new();
    let finished = Wake::new();
    let checks = TaskTracker::new();
    let (to_record, recorded) = mpsc::unbounded_channel();
    if site.is_primary() {
        checks.spawn(record_loop(shared.clone(), recorded));
    } else {
        drop(recorded);
    }
    let mut idle = Idle::new(shared.config.idle);
    // Whether the last claim found rows: if not, wait for new work before claiming again.
    let mut found = true;
    let mut last_claim: Option<Instant> = None;
    loop {
        if shared.cancel.is_cancelled() {
            break;
        }
        let mut work = shared.verification_wakes.snapshot(name);
        let mut freed = finished.snapshot();
        // Start what the free slots allow.
        while !queue.is_empty() {
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                break;
            };
            let row = queue.pop_front().expect("the queue is not empty");
            start_check(
                &checks, &shared, replicable, row, permit, &finished, &pace, &to_record,
            );
        }
        let running = concurrency - slots.available_permits();
        let held = running + queue.len();
        let target = rows_to_hold(
            &pace,
            concurrency,
            settings.batch,
            site.timeouts().claim_timeout,
        );
        // Claim when what is held runs low (half the target), unless the last claim found
        // nothing and no wake came since.
        if found && held <= target / 2 {
            // While checks are held, claims come at most every `CLAIM_GAP`: work that
            // trickles in (a sync ending every millisecond) is then claimed several rows per
            // statement instead of one or two, and each claim is a write under the database's
            // one writer. With nothing held, the claim is made at once.
            if held > 0
                && let Some(due) = last_claim.map(|at| at + CLAIM_GAP)
                && Instant::now() < due
            {
                // A check ending meanwhile lets the next held row start (the loop's top).
                tokio::select! {
                    _ = shared.cancel.cancelled() => break,
                    _ = freed.changed() => {}
                    _ = tokio::time::sleep_until(due.into()) => {}
                }
                continue;
            }
            last_claim = Some(Instant::now());
            let now = site.now();
            let limit = target - held;
            let claimed = if site.is_primary() {
                match site.verification_store().claim(name, now, limit).await {
                    Ok(rows) => Ok(with_primary_records(site, name, rows)
                        .await
                        .into_iter()
                        .map(|claimed| Claimed::Primary(Box::new(claimed)))
                        .collect::<Vec<_>>()),
                    Err(e) => Err(e),
                }
            } else {
                match site
                    .registry_store()
                    .claim_for_verification(name, now, limit)
                    .await
                {
                    Ok(rows) => Ok(with_secondary_inputs(site, name, rows)
                        .await
                        .into_iter()
                        .map(|claimed| Claimed::Secondary(Box::new(claimed)))
                        .collect()),
                    Err(e) => Err(e),
                }
            };
            match claimed {
                Ok(rows) if !rows.is_empty() => {
                    idle.busy();
                    queue.extend(rows);
                    continue;
                }
                Ok(_) => found = false,
                Err(e) => {
                    warn!(replicable = name, error = %e, "claiming verifications failed; backing off");
                    if !idle.wait(None, &shared.cancel).await {
                        break;
                    }
                    continue;
                }
            }
        }
        if held > 0 {
            // Wait for a check to end (or new work, once what is held runs low).
            let woke = tokio::select! {
                _ = shared.cancel.cancelled() => false,
                _ = freed.changed() => true,
                _ = work.changed() => { found = true; true }
            };
            if !woke {
                break;
            }
            continue;
        }
        // Nothing held, nothing found: back off until new work is signalled.
        if !idle.wait(Some(&mut work), &shared.cancel).await {
            break;
        }
        found = true;
    }
    // Stopping: the rows claimed are checked and recorded (a claimed row left alone would
    // stay `started` until the stuck sweep fails it); no more are claimed. The engine's
    // shutdown deadline bounds the wait, and the rows held are few enough to start within a
    // quarter of the claim timeout.
    for row in queue {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        start_check(
            &checks, &shared, replicable, row, permit, &finished, &pace, &to_record,
        );
    }
    drop(to_record);
    checks.close();
    checks.wait().await;
}

/// The shortest time between two claims of one replicable's verification loop while it holds
/// rows (see `verification_loop`).
const CLAIM_GAP: Duration = Duration::from_millis(10);

/// Rows to hold (running and waiting): `concurrency` until a check has been measured, then as
/// many as `concurrency` workers get through in a quarter of `claim_timeout` at the measured
/// pace (a claimed row waiting for a slot sends no heartbeat), at most `batch` and never fewer
/// than `concurrency`.
fn rows_to_hold(pace: &Pace, concurrency: usize, batch: usize, claim_timeout: Duration) -> usize {
    let Some(average) = pace.average() else {
        return concurrency;
    };
    let budget = (claim_timeout / 4).as_micros();
    let per_worker = usize::try_from(budget / average.as_micros().max(1)).unwrap_or(usize::MAX);
    concurrency
        .saturating_mul(per_worker.max(1))
        .min(batch.max(concurrency))
}

/// A claimed row.
enum Claimed {
    /// With its record, when that was read for the batch.
    Primary(Box<(VerificationRecord, Option<Option<StoredRecord>>)>),
    /// With what its check compares, when that was read for the batch.
    Secondary(Box<(RegistryRecord, Option<SecondaryInputs>)>),
}

/// Checks one claimed row in a task of its own, holding a slot; on the primary the result goes
/// to the recorder.
#[allow(clippy::too_many_arguments)]
fn start_check(
    checks: &TaskTracker,
    shared: &Arc<Shared>,
    replicable: &'static ReplicableDescriptor,
    row: Claimed,
    permit: OwnedSemaphorePermit,
    finished: &Wake,
    pace: &Arc<Pace>,
    to_record: &mpsc::UnboundedSender<Result<PrimaryCheck, ReplicatorError>>,
) {
    let (shared, finished, pace) = (shared.clone(), finished.clone(), pace.clone());
    let to_record = to_record.clone();
    checks.spawn(async move {
        let started = Instant::now();
        match row {
            Claimed::Primary(claimed) => {
                let (row, record) = *claimed;
                let check = replicable
                    .check_claimed_primary_verification(&shared.site, row, record)
                    .await;
                // The receiver lives until every sender is gone.
                let _ = to_record.send(check);
            }
            Claimed::Secondary(claimed) => {
                let (row, inputs) = *claimed;
                let outcome = replicable
                    .run_claimed_secondary_verification_with(&shared.site, row, inputs)
                    .await;
                if let Err(e) = outcome {
                    error!(replicable = replicable.name, error = %e, "verification errored");
                }
            }
        }
        pace.add(started.elapsed());
        drop(permit);
        finished.notify();
    });
}

/// Primary: records finished checks in groups, whatever finished while the previous group was
/// being written going into the next, until every check has ended.
async fn record_loop(
    shared: Arc<Shared>,
    mut recorded: mpsc::UnboundedReceiver<Result<PrimaryCheck, ReplicatorError>>,
) {
    while let Some(first) = recorded.recv().await {
        let mut group = Vec::new();
        for check in std::iter::once(first).chain(std::iter::from_fn(|| recorded.try_recv().ok())) {
            match check {
                Ok(check) => group.push(check),
                Err(e) => error!(error = %e, "verification errored"),
            }
        }
        for outcome in crate::replicator::complete_primary_verifications(&shared.site, group).await
        {
            if let Err(e) = outcome {
                error!(error = %e, "recording a verification failed");
            }
        }
    }
}
