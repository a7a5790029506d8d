//! One pass of each kind of background work, with bounded concurrency: syncing due registry
//! rows, verifying on the primary and on secondaries, and failing work stuck in `started`.
//! A scheduler calls these in loops.

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::descriptor::ReplicableDescriptor;
use crate::domain::error::{ReplicatorError, StoreError};
use crate::replicator::{SyncOutcome, VerifyOutcome};
use crate::site::Site;

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassReport {
    /// Rows taken.
    pub claimed: usize,
    /// Rows that succeeded (synced, or verified).
    pub succeeded: usize,
    /// Rows that failed and were scheduled for a retry (or a resync after a mismatch).
    pub failed: usize,
    /// Rows whose work was overtaken by a change of the record.
    pub changed: usize,
    /// Rows whose work errored (storage or link failures); they are picked up again later.
    pub errors: usize,
}

impl PassReport {
    fn add_sync(&mut self, outcome: &Result<SyncOutcome, ReplicatorError>) {
        match outcome {
            Ok(SyncOutcome::Synced { .. }) => self.succeeded += 1,
            Ok(SyncOutcome::Failed(_)) => self.failed += 1,
            Ok(SyncOutcome::ChangedDuringSync | SyncOutcome::OutOfScope) => self.changed += 1,
            Err(_) => self.errors += 1,
        }
    }

    fn add_verify(&mut self, outcome: &Result<VerifyOutcome, ReplicatorError>) {
        match outcome {
            Ok(VerifyOutcome::Succeeded { .. }) => self.succeeded += 1,
            Ok(VerifyOutcome::Failed { .. } | VerifyOutcome::Mismatch { .. }) => self.failed += 1,
            Ok(_) => self.changed += 1,
            Err(_) => self.errors += 1,
        }
    }
}

/// Claims up to `limit` due registry rows of one replicable and syncs them, `concurrency` at a
/// time. While the site's or the replicable's replication is paused it claims nothing.
pub async fn sync_due(
    site: &Site,
    replicable: &ReplicableDescriptor,
    limit: usize,
    concurrency: usize,
) -> Result<PassReport, StoreError> {
    // Nothing is claimed while the site's or this replicable's replication is paused (the
    // switches are read with the claim, as the engine's sync loop reads them).
    let rows = site
        .registry_store()
        .claim_for_sync_while_enabled(
            replicable.name,
            &[super::SITE_SWITCH, replicable.name],
            site.now(),
            limit,
        )
        .await?;
    let mut report = PassReport {
        claimed: rows.len(),
        ..PassReport::default()
    };
    let rows =
        crate::replicator::with_sync_inputs(site, replicable.name, replicable.verifiable, rows)
            .await;
    let mut outcomes = futures::stream::iter(rows)
        .map(|(row, inputs)| replicable.run_claimed_sync_with(site, row, inputs))
        .buffer_unordered(concurrency.max(1));
    while let Some(outcome) = outcomes.next().await {
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "sync errored");
        }
        report.add_sync(&outcome);
    }
    Ok(report)
}

/// Claims up to `limit` rows due for verification and verifies them, `concurrency` at a time:
/// on the primary it computes checksums, on a secondary it compares them with the primary's.
pub async fn verify_due(
    site: &Site,
    replicable: &ReplicableDescriptor,
    limit: usize,
    concurrency: usize,
) -> Result<PassReport, StoreError> {
    if !replicable.verifiable {
        return Ok(PassReport::default());
    }
    let now = site.now();
    let mut report = PassReport::default();
    let outcomes: Vec<_> = if site.is_primary() {
        let rows = site
            .verification_store()
            .claim(replicable.name, now, limit)
            .await?;
        report.claimed = rows.len();
        verify_on_primary(site, replicable, rows, concurrency).await
    } else {
        let rows = site
            .registry_store()
            .claim_for_verification(replicable.name, now, limit)
            .await?;
        report.claimed = rows.len();
        let rows = crate::replicator::with_secondary_inputs(site, replicable.name, rows).await;
        futures::stream::iter(rows)
            .map(|(row, inputs)| {
                replicable.run_claimed_secondary_verification_with(site, row, inputs)
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await
    };
    for outcome in &outcomes {
        report.add_verify(outcome);
    }
    Ok(report)
}

/// Verifies claimed primary rows, `concurrency` at a time, and records the results in groups
/// (group commit): whatever finished while the previous group was being written is written
/// next, rows and `checksum_succeeded` events in one transaction, so that a pass pays one
/// wait for the disk per group instead of one per row, and no finished row waits for more
/// than one write before it is recorded.
async fn verify_on_primary(
    site: &Site,
    replicable: &ReplicableDescriptor,
    rows: Vec<crate::domain::verification::VerificationRecord>,
    concurrency: usize,
) -> Vec<Result<VerifyOutcome, ReplicatorError>> {
    let (finished, mut to_record) = tokio::sync::mpsc::unbounded_channel();
    let rows = crate::replicator::with_primary_records(site, replicable.name, rows).await;
    let check = async move {
        let mut checks = futures::stream::iter(rows)
            .map(|(row, record)| replicable.check_claimed_primary_verification(site, row, record))
            .buffer_unordered(concurrency.max(1));
        while let Some(check) = checks.next().await {
            // The receiver lives until every sender is gone.
            let _ = finished.send(check);
        }
    };
    let record = async {
        let mut outcomes = Vec::new();
        while let Some(first) = to_record.recv().await {
            let mut group = Vec::new();
            for check in
                std::iter::once(first).chain(std::iter::from_fn(|| to_record.try_recv().ok()))
            {
                match check {
                    Ok(check) => group.push(check),
                    Err(e) => outcomes.push(Err(e)),
                }
            }
            outcomes.extend(crate::replicator::complete_primary_verifications(site, group).await);
        }
        outcomes
    };
    let ((), outcomes) = futures::join!(check, record);
    outcomes
}

/// Fails work stuck in `started`: claims whose worker stopped heartbeating (it died; the row
/// is retried after its backoff) and work that ran past the site's timeouts. Returns how many
/// rows were failed.
pub async fn fail_stuck(
    site: &Site,
    replicable: &ReplicableDescriptor,
    limit: usize,
) -> Result<usize, StoreError> {
    // Claim ages are measured on the database's clock, so that a worker whose clock runs ahead
    // does not fail live claims.
    let now = if site.is_primary() {
        site.verification_store().now(site.now()).await?
    } else {
        site.registry_store().now(site.now()).await?
    };
    let policy = *site.retry_policy();
    let timeouts = *site.timeouts();
    let cutoffs = timeouts.cutoffs(now);
    let mut failed = 0;
    if site.is_primary() {
        let store = site.verification_store();
        for mut row in store.stuck(replicable.name, &cutoffs, limit).await? {
            let jitter = fastrand::u32(0..crate::domain::retry::JITTER_RANGE);
            if row.fail_stuck_work(&cutoffs, timeouts.verification, now, &policy, jitter)
                && store.update(replicable.name, &row).await?
            {
                failed += 1;
            }
        }
    } else {
        let store = site.registry_store();
        let limits = (timeouts.sync, timeouts.verification);
        for mut row in store.stuck(replicable.name, &cutoffs, limit).await? {
            let jitter = fastrand::u32(0..crate::domain::retry::JITTER_RANGE);
            if row.fail_stuck_work(&cutoffs, limits, now, &policy, jitter)
                && store.update(replicable.name, &row).await?
            {
                failed += 1;
            }
        }
    }
    Ok(failed)
}

/// How old a succeeded checksum gets before it is verified again (7 days), so that corruption at
/// rest is found.
pub const DEFAULT_REVERIFICATION_INTERVAL: std::time::Duration =
    std::time::Duration::from_secs(7 * 24 * 3600);

/// Re-verification, one batch: succeeded checksums older than `interval` go back to verification
/// pending, at most `limit` of them: the primary's verification rows on the primary, synced
/// registry rows on a secondary. Returns how many were sent back.
pub async fn reverify_stale(
    site: &Site,
    replicable: &ReplicableDescriptor,
    interval: std::time::Duration,
    limit: usize,
) -> Result<u64, StoreError> {
    if !replicable.verifiable {
        return Ok(0);
    }
    let before = site.now() - chrono::Duration::from_std(interval).unwrap_or(chrono::Duration::MAX);
    if site.is_primary() {
        site.verification_store()
            .reverify_older_than(replicable.name, before, limit)
            .await
    } else {
        site.registry_store()
            .reverify_older_than(replicable.name, before, limit)
            .await
    }
}

/// Turns replication of one replicable off (`false`) or on again (`true`) on a secondary,
/// persisted in its tracking database. While it is off, events are still consumed (their
/// records are marked pending) but nothing is synced; once it is on again, the sync passes and
/// backfill catch up.
pub async fn set_replication_enabled(
    site: &Site,
    replicable: &ReplicableDescriptor,
    enabled: bool,
) -> Result<(), StoreError> {
    site.registry_store()
        .set_replication_enabled(replicable.name, enabled)
        .await
}
