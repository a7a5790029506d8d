//! Verifying a record: the primary's checksum and the secondary's comparison with it.

use std::collections::HashMap;

use tracing::{Instrument, debug, info_span, warn};

use super::{ReplicationTarget, VerifyOutcome, heartbeating};
use crate::domain::error::{ReplicatorError, StoreError};
use crate::domain::event::{EventKind, EventPayload, NewEvent};
use crate::domain::failure::SyncFailure;
use crate::domain::registry::{RegistryRecord, SyncState};
use crate::domain::verification::{CHECKSUM_MISMATCH, VerificationRecord, VerificationState};
use crate::model::Replicable;
use crate::site::Site;
use crate::storage::{CompletedVerification, StoredRecord};
use crate::strategy::Strategy;

/// A primary verification whose checksum was computed (or failed), its row moved to succeeded
/// or failed but not yet written: [`complete_primary_verifications`] records it.
#[derive(Debug)]
pub(crate) struct PrimaryCheck {
    replicable: &'static str,
    row: VerificationRecord,
    outcome: VerifyOutcome,
    /// `checksum_succeeded`, for a succeeded checksum.
    event: Option<NewEvent>,
}

/// Records primary verifications of one replicable: each row is written if it is still the
/// one its verifier claimed (a compare-and-set on its version), and the `checksum_succeeded`
/// events of the rows written are appended together, in one transaction with the rows when
/// the event log holds the verification rows (every database of `storage::open`): one wait
/// for the disk for the whole group, and an event is stored exactly when the checksum it
/// announces is. Returns one outcome per check, in order; a row that changed meanwhile (the
/// record was published again, or its claim was taken for abandoned) is
/// [`VerifyOutcome::ChangedDuringVerification`].
pub(crate) async fn complete_primary_verifications(
    site: &Site,
    checks: Vec<PrimaryCheck>,
) -> Vec<Result<VerifyOutcome, ReplicatorError>> {
    let Some(first) = checks.first() else {
        return Vec::new();
    };
    let name = first.replicable;
    let now = site.now();
    let completed: Vec<CompletedVerification> = checks
        .iter()
        .map(|check| CompletedVerification {
            row: check.row.clone(),
            event: check.event.clone(),
        })
        .collect();
    let (log, store) = (site.event_log(), site.verification_store());
    let together = if crate::storage::log_holds_verification(log, store) {
        log.complete_verifications(name, &completed, now).await
    } else {
        Ok(None)
    };
    let written = match together {
        Ok(Some(written)) => Ok(written),
        Ok(None) => complete_one_by_one(site, name, &completed, now).await,
        Err(e) => Err(e),
    };
    match written {
        Ok(written) => checks
            .into_iter()
            .zip(written)
            .map(|(check, written)| {
                Ok(if written {
                    check.outcome
                } else {
                    VerifyOutcome::ChangedDuringVerification
                })
            })
            .collect(),
        Err(e) => {
            let reason = e.to_string();
            let mut source = Some(e);
            checks
                .iter()
                .map(|check| {
                    Err(ReplicatorError::Store {
                        replicable: check.replicable,
                        id: check.row.model_id,
                        source: source.take().unwrap_or_else(|| StoreError::Backend {
                            store: "event log".into(),
                            operation: "record verifications",
                            reason: reason.clone(),
                        }),
                    })
                })
                .collect()
        }
    }
}

/// Stores in different databases: each row by itself, then the events of those written in
/// one append.
async fn complete_one_by_one(
    site: &Site,
    name: &str,
    completed: &[CompletedVerification],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<bool>, StoreError> {
    let mut written = Vec::with_capacity(completed.len());
    let mut events = Vec::new();
    for c in completed {
        let done = site.verification_store().update(name, &c.row).await?;
        if done && let Some(event) = &c.event {
            events.push(event.clone());
        }
        written.push(done);
    }
    // An event log of the application's own need not take an empty append.
    if !events.is_empty() {
        site.event_log().append(&events, now).await?;
    }
    Ok(written)
}

/// What a secondary's verification of one copy reads before it computes the local checksum:
/// the primary's verification row and the copy of the record kept at sync time (`None`: there
/// is none).
#[derive(Debug)]
pub(crate) struct SecondaryInputs {
    primary: Option<VerificationRecord>,
    local: Option<StoredRecord>,
}

/// Claimed registry rows of replicable `name`, each with its [`SecondaryInputs`], read
/// together: one read of the primary's rows and one of the local copies for the batch, instead
/// of two per copy. Read when the batch is claimed: a change of the record since makes its
/// row's compare-and-set fail (the row moves on with the change), so a verification never
/// records a result against inputs older than its row. No inputs when either read fails: each
/// verification then reads its own (and meets the failure itself, with its record named).
pub(crate) async fn with_secondary_inputs(
    site: &Site,
    name: &str,
    rows: Vec<RegistryRecord>,
) -> Vec<(RegistryRecord, Option<SecondaryInputs>)> {
    let ids: Vec<i64> = rows.iter().map(|row| row.model_id).collect();
    let mut read = match site.primary_link() {
        Some(link) if !ids.is_empty() => {
            match futures::join!(
                link.verifications(name, &ids),
                site.records().get_many(name, &ids)
            ) {
                (Ok(primary), Ok(local)) => Some((
                    super::by_id(primary, |row| row.model_id),
                    super::by_id(local, |record| record.model_id),
                )),
                (Err(e), _) => {
                    debug!(replicable = name, error = %e, "reading the primary's checksums of a batch failed");
                    None
                }
                (_, Err(e)) => {
                    debug!(replicable = name, error = %e, "reading the copies of a batch failed");
                    None
                }
            }
        }
        _ => None,
    };
    rows.into_iter()
        .map(|row| {
            let inputs = read.as_mut().map(|(primary, local)| SecondaryInputs {
                primary: primary.remove(&row.model_id),
                local: local.remove(&row.model_id),
            });
            (row, inputs)
        })
        .collect()
}

/// Claimed verification rows of replicable `name` on the primary, each with its record, read
/// together in one statement instead of one per check. Read when the batch is claimed: a
/// publication since puts the row back to pending (its version bumped in the publishing
/// transaction), so the check's result against the older record is not written. `None` for
/// every row when the read fails: each check then reads its own.
pub(crate) async fn with_primary_records(
    site: &Site,
    name: &str,
    rows: Vec<VerificationRecord>,
) -> Vec<(VerificationRecord, Option<Option<StoredRecord>>)> {
    let ids: Vec<i64> = rows.iter().map(|row| row.model_id).collect();
    let mut records: Option<HashMap<i64, StoredRecord>> = if ids.is_empty() {
        None
    } else {
        match site.records().get_many(name, &ids).await {
            Ok(found) => Some(super::by_id(found, |record| record.model_id)),
            Err(e) => {
                debug!(replicable = name, error = %e, "reading the records of a batch failed");
                None
            }
        }
    };
    rows.into_iter()
        .map(|row| {
            let record = records.as_mut().map(|found| found.remove(&row.model_id));
            (row, record)
        })
        .collect()
}

impl<'a, M: Replicable> ReplicationTarget<'a, M> {
    /// Verifies the record: on the primary, computes and stores the checksum and publishes
    /// `checksum_succeeded`; on a secondary, compares the local checksum with the primary's.
    pub async fn verify(&self) -> Result<VerifyOutcome, ReplicatorError> {
        if !M::Strategy::VERIFIABLE {
            return Ok(VerifyOutcome::Disabled);
        }
        if self.site.is_primary() {
            let row = match self.verification_record().await? {
                Some(row) => row,
                None => self
                    .site
                    .verification_store()
                    .mark_pending(M::REPLICABLE_NAME, self.id)
                    .await
                    .map_err(|e| self.store_error(e))?,
            };
            let mut row = row;
            row.verification.start(self.site.now()).map_err(|source| {
                ReplicatorError::Transition {
                    replicable: M::REPLICABLE_NAME,
                    id: self.id,
                    source,
                }
            })?;
            if !self.update_verification(&row).await? {
                return Ok(VerifyOutcome::ChangedDuringVerification);
            }
            row.version += 1;
            self.verify_claimed_primary(row).await
        } else {
            let Some(mut row) = self.registry_record().await? else {
                return Ok(VerifyOutcome::NotSynced);
            };
            if row.state != SyncState::Synced {
                return Ok(VerifyOutcome::NotSynced);
            }
            if row.verification.verification_state == VerificationState::Disabled {
                // Waiting for the primary's checksum: verify only once there is one.
                if self.primary_checksum().await?.is_none() {
                    return Ok(VerifyOutcome::WaitingForPrimary);
                }
                row.verification.mark_pending();
            }
            row.verification.start(self.site.now()).map_err(|source| {
                ReplicatorError::Transition {
                    replicable: M::REPLICABLE_NAME,
                    id: self.id,
                    source,
                }
            })?;
            if !self.update_registry(&row).await? {
                return Ok(VerifyOutcome::ChangedDuringVerification);
            }
            row.version += 1;
            self.verify_claimed_secondary(row, None).await
        }
    }

    /// Completes a verification row the caller moved to `started` (primary): computes the
    /// checksum, then records it with its `checksum_succeeded` event (see
    /// [`complete_primary_verifications`]).
    pub(crate) async fn verify_claimed_primary(
        &self,
        row: VerificationRecord,
    ) -> Result<VerifyOutcome, ReplicatorError> {
        let check = self.check_claimed_primary(row, None).await?;
        complete_primary_verifications(self.site, vec![check])
            .await
            .pop()
            .expect("one outcome per check")
    }

    /// Computes the checksum of a verification row the caller moved to `started` (primary),
    /// and moves the row to succeeded or failed, without writing it: what
    /// [`complete_primary_verifications`] records. `record` is the record when it was read
    /// for the claimed batch ([`with_primary_records`]; `Some(None)`: there is none).
    pub(crate) async fn check_claimed_primary(
        &self,
        row: VerificationRecord,
        record: Option<Option<StoredRecord>>,
    ) -> Result<PrimaryCheck, ReplicatorError> {
        let span = info_span!(
            "verify",
            replicable = M::REPLICABLE_NAME,
            id = self.id,
            side = "primary"
        );
        self.check_claimed_primary_inner(row, record)
            .instrument(span)
            .await
    }

    async fn check_claimed_primary_inner(
        &self,
        mut row: VerificationRecord,
        record: Option<Option<StoredRecord>>,
    ) -> Result<PrimaryCheck, ReplicatorError> {
        let site = self.site;
        let (policy, now) = (*site.retry_policy(), site.now());
        let jitter = fastrand::u32(0..crate::domain::retry::JITTER_RANGE);
        let record = match record {
            Some(record) => record,
            None => self.local_record().await?,
        };
        let checksum = match record {
            None => Err(format!(
                "{} {} is not in the primary's records",
                M::REPLICABLE_NAME,
                self.id
            )),
            Some(stored) => {
                let record = self.decode(&stored)?;
                let strategy = M::Strategy::default();
                let resource = record.resource();
                let resource_target = self.resource_target(&resource);
                let work =
                    strategy.checksum(site.strategy_context(), &resource_target, Some(&stored));
                let version = row.version;
                heartbeating(site.timeouts().heartbeat_interval, work, || {
                    site.verification_store().heartbeat(
                        M::REPLICABLE_NAME,
                        self.id,
                        version,
                        site.now(),
                    )
                })
                .await
                .map(|checksum| (checksum, resource))
                .map_err(|e| e.to_string())
            }
        };
        let (outcome, event) = match checksum {
            Ok((checksum, resource)) => {
                row.verification
                    .succeed(checksum.clone(), now)
                    .expect("row was started by the caller");
                // The resource whose checksum this is. A change of the record meanwhile was
                // published with the row back to pending (its version bumped), so this row
                // and its event are then not written.
                let event = NewEvent {
                    replicable_name: M::REPLICABLE_NAME.to_owned(),
                    kind: EventKind::ChecksumSucceeded,
                    payload: EventPayload {
                        model_id: self.id,
                        resource,
                        generation: None,
                        record: None,
                        checksum: Some(checksum.clone()),
                    },
                };
                (VerifyOutcome::Succeeded { checksum }, Some(event))
            }
            Err(reason) => {
                row.verification
                    .fail(&reason, now, &policy, jitter)
                    .expect("row was started by the caller");
                (VerifyOutcome::Failed { reason }, None)
            }
        };
        Ok(PrimaryCheck {
            replicable: M::REPLICABLE_NAME,
            row,
            outcome,
            event,
        })
    }

    /// Completes a registry row whose verification the caller moved to `started` (secondary),
    /// with its inputs when they were read for a batch ([`with_secondary_inputs`]).
    pub(crate) async fn verify_claimed_secondary(
        &self,
        row: RegistryRecord,
        inputs: Option<SecondaryInputs>,
    ) -> Result<VerifyOutcome, ReplicatorError> {
        let span = info_span!(
            "verify",
            replicable = M::REPLICABLE_NAME,
            id = self.id,
            side = "secondary"
        );
        self.verify_claimed_secondary_inner(row, inputs)
            .instrument(span)
            .await
    }

    async fn verify_claimed_secondary_inner(
        &self,
        mut row: RegistryRecord,
        inputs: Option<SecondaryInputs>,
    ) -> Result<VerifyOutcome, ReplicatorError> {
        let site = self.site;
        let link = self.secondary_link("verify")?;
        let (policy, now) = (*site.retry_policy(), site.now());
        let jitter = fastrand::u32(0..crate::domain::retry::JITTER_RANGE);
        let name = M::REPLICABLE_NAME;
        let (primary, local_copy) = match inputs {
            Some(inputs) => (inputs.primary, Some(inputs.local)),
            None => (
                link.verification(name, self.id)
                    .await
                    .map_err(|e| self.link_error(e))?,
                None,
            ),
        };
        let primary_checksum = primary.and_then(|v| v.succeeded_checksum().map(str::to_owned));
        let Some(primary_checksum) = primary_checksum else {
            // Nothing to compare with yet: disabled until the primary's checksum succeeds (its
            // `checksum_succeeded` event, or backfill, turns it back on), so that copies waiting
            // for the primary never fill a verification batch.
            row.verification.disable();
            self.update_registry(&row).await?;
            return Ok(VerifyOutcome::WaitingForPrimary);
        };
        // The copy of the record kept at sync time names the resource this site holds; the
        // primary's record is asked for only when there is none. (The primary's checksum above
        // exists only while its record does.)
        let local_copy = match local_copy {
            Some(local_copy) => local_copy,
            None => self.local_record().await?,
        };
        let stored = match &local_copy {
            Some(local_copy) => Some(local_copy.clone()),
            None => link
                .record(name, self.id)
                .await
                .map_err(|e| self.link_error(e))?,
        };
        let local = match &stored {
            None => Err(format!(
                "{name} {} no longer exists on the primary",
                self.id
            )),
            Some(stored) => {
                let record = self.decode(stored)?;
                let strategy = M::Strategy::default();
                let resource = record.resource();
                let resource_target = self.resource_target(&resource);
                let work = strategy.checksum(
                    site.strategy_context(),
                    &resource_target,
                    local_copy.as_ref(),
                );
                let version = row.version;
                heartbeating(site.timeouts().heartbeat_interval, work, || {
                    site.registry_store()
                        .heartbeat(name, self.id, version, site.now())
                })
                .await
                .map_err(|e| e.to_string())
            }
        };
        let outcome = match local {
            Ok(local) if local == primary_checksum => {
                row.verification
                    .succeed(local.clone(), now)
                    .expect("row was started by the caller");
                VerifyOutcome::Succeeded { checksum: local }
            }
            Ok(local) => {
                row.verification
                    .fail_mismatch(local.clone(), now, &policy, jitter)
                    .expect("row was started by the caller");
                let failure =
                    SyncFailure::new(format!("Verification failed with: {CHECKSUM_MISMATCH}"));
                row.mark_failed(&failure, now, &policy, jitter)
                    .expect("a synced row can be failed");
                warn!(name, id = self.id, primary = %primary_checksum, local = %local, "checksum mismatch: resyncing");
                VerifyOutcome::Mismatch {
                    primary: primary_checksum,
                    local,
                }
            }
            Err(reason) => {
                row.verification
                    .fail(&reason, now, &policy, jitter)
                    .expect("row was started by the caller");
                let failure = SyncFailure::new(format!("Verification failed with: {reason}"));
                row.mark_failed(&failure, now, &policy, jitter)
                    .expect("a synced row can be failed");
                VerifyOutcome::Failed { reason }
            }
        };
        if !self.update_registry(&row).await? {
            return Ok(VerifyOutcome::ChangedDuringVerification);
        }
        Ok(outcome)
    }
}
