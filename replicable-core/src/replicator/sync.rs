//! Syncing one record on a secondary: claiming its registry row ([`SyncAttempt`]), copying the
//! resource through the strategy under a guard ([`AttemptGuard`]) and recording the outcome.

use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{Instrument, debug, info_span, warn};

use super::{CAS_ATTEMPTS, ReplicationTarget, SyncOutcome, heartbeating};
use crate::domain::error::ReplicatorError;
use crate::domain::failure::SyncFailure;
use crate::domain::registry::{RegistryRecord, SyncState};
use crate::domain::resource::Resource;
use crate::domain::verification::VerificationRecord;
use crate::link::PrimaryLink;
use crate::model::Replicable;
use crate::site::Site;
use crate::storage::StoredRecord;
use crate::strategy::{Strategy, SyncGuard, SyncRequest};

impl<'a, M: Replicable> ReplicationTarget<'a, M> {
    /// Syncs the record now: starts the row (creating it if needed), copies the resource and
    /// completes the row. A row already `started` by another worker is an error.
    pub async fn sync(&self) -> Result<SyncOutcome, ReplicatorError> {
        self.start_sync().await?.run().await
    }

    /// Moves the registry row to `started` (creating it pending first if there is none) and
    /// returns the attempt, to be [run](SyncAttempt::run). A row already `started` (a sync of
    /// the record is running) is an error: one sync per record at a time.
    pub async fn start_sync(&self) -> Result<SyncAttempt<'a, M>, ReplicatorError> {
        let now = self.site.now();
        match self.try_start_sync().await? {
            Some(attempt) => Ok(attempt),
            None => {
                let mut row = RegistryRecord::new_pending(self.id, now);
                row.state = SyncState::Started;
                Err(ReplicatorError::Transition {
                    replicable: M::REPLICABLE_NAME,
                    id: self.id,
                    source: row.start(now).expect_err("a started row cannot start"),
                })
            }
        }
    }

    /// Like [`start_sync`](Self::start_sync), but `None` when a sync of the record is already
    /// running (the row is `started`).
    pub async fn try_start_sync(&self) -> Result<Option<SyncAttempt<'a, M>>, ReplicatorError> {
        self.secondary_link("sync")?;
        let now = self.site.now();
        for _ in 0..CAS_ATTEMPTS {
            let mut row = match self.registry_record().await? {
                Some(row) => row,
                None => self.mark_pending().await?,
            };
            if row.start(now).is_err() {
                return Ok(None);
            }
            if self.update_registry(&row).await? {
                row.version += 1;
                return Ok(Some(SyncAttempt {
                    target: self.clone(),
                    row,
                    inputs: None,
                }));
            }
        }
        Err(self.contention())
    }
}

/// What a claimed sync reads from the primary before it copies: the record as the primary
/// has it (`None`: it does not exist) and its verification row (`None`: there is none).
#[derive(Debug)]
pub(crate) struct SyncInputs {
    record: Option<StoredRecord>,
    primary: Option<VerificationRecord>,
}

/// Claimed registry rows of replicable `name`, each with its [`SyncInputs`], read together:
/// one read of the primary's records and, for a strategy that verifies, one of its
/// verification rows, instead of two per sync. Read right after the claim, as a sync reads
/// them when it starts (a change since is caught as for any sync: the event marks the row, and
/// the attempt's guard and completion see it). No inputs when a read fails: each sync then
/// reads its own (and meets the failure itself, with its record named).
pub(crate) async fn with_sync_inputs(
    site: &Site,
    name: &str,
    verifiable: bool,
    rows: Vec<RegistryRecord>,
) -> Vec<(RegistryRecord, Option<SyncInputs>)> {
    let ids: Vec<i64> = rows.iter().map(|row| row.model_id).collect();
    let read = match site.primary_link() {
        Some(link) if !ids.is_empty() => {
            let primary = async {
                if verifiable {
                    link.verifications(name, &ids).await
                } else {
                    Ok(Vec::new())
                }
            };
            match futures::join!(link.records(name, &ids), primary) {
                (Ok(records), Ok(primary)) => Some((
                    super::by_id(records, |record| record.model_id),
                    super::by_id(primary, |row| row.model_id),
                )),
                (Err(e), _) | (_, Err(e)) => {
                    debug!(replicable = name, error = %e, "reading the primary's side of a sync batch failed");
                    None
                }
            }
        }
        _ => None,
    };
    let mut read = read;
    rows.into_iter()
        .map(|row| {
            let inputs = read.as_mut().map(|(records, primary)| SyncInputs {
                record: records.remove(&row.model_id),
                primary: primary.remove(&row.model_id),
            });
            (row, inputs)
        })
        .collect()
}

/// A sync whose registry row is `started`, ready to copy the resource.
pub struct SyncAttempt<'a, M: Replicable> {
    target: ReplicationTarget<'a, M>,
    row: RegistryRecord,
    /// What was read for it with its claimed batch, taken when it runs.
    inputs: Option<SyncInputs>,
}

impl<M: Replicable> std::fmt::Debug for SyncAttempt<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncAttempt")
            .field("replicable", &M::REPLICABLE_NAME)
            .field("row", &self.row)
            .finish()
    }
}

impl<'a, M: Replicable> SyncAttempt<'a, M> {
    /// An attempt for a row the caller already moved to `started` (claimed by a worker).
    pub fn claimed(site: &'a Site, row: RegistryRecord) -> Self {
        Self::claimed_with(site, row, None)
    }

    /// [`claimed`](Self::claimed), with what was read for it with its claimed batch.
    pub(crate) fn claimed_with(
        site: &'a Site,
        row: RegistryRecord,
        inputs: Option<SyncInputs>,
    ) -> Self {
        Self {
            target: ReplicationTarget::new(site, row.model_id),
            row,
            inputs,
        }
    }

    /// The row as it was when the attempt started.
    pub fn row(&self) -> &RegistryRecord {
        &self.row
    }

    /// Copies the resource and completes the row: synced if it is still the row this attempt
    /// started, failed with a retry time if the copy failed.
    pub async fn run(self) -> Result<SyncOutcome, ReplicatorError> {
        let span = info_span!("sync", replicable = M::REPLICABLE_NAME, id = self.target.id);
        self.run_inner().instrument(span).await
    }

    async fn run_inner(mut self) -> Result<SyncOutcome, ReplicatorError> {
        let inputs = self.inputs.take();
        let target = &self.target;
        let site = target.site;
        let name = M::REPLICABLE_NAME;
        let link = target.secondary_link("sync")?;
        let mut resource = None;
        let mut attempted = None;
        let (record, primary) = match inputs {
            Some(SyncInputs { record, primary }) => (Ok(record), Some(primary)),
            None => (link.record(name, target.id).await, None),
        };
        let copied = match record {
            Ok(Some(stored)) => {
                let record = target.decode(&stored)?;
                resource = Some(record.resource());
                attempted = Some(stored.generation);
                if !site.selective_sync().includes(name, &stored.body) {
                    target.remove_local(&record.resource()).await?;
                    return Ok(SyncOutcome::OutOfScope);
                }
                let version = self.row.version;
                let copy = self.copy(link, &record, &stored, primary);
                let copied = heartbeating(site.timeouts().heartbeat_interval, copy, || {
                    site.registry_store()
                        .heartbeat(name, target.id, version, site.now())
                })
                .await;
                match copied {
                    Ok((primary_checksum, checked)) => {
                        // The record as copied is the last thing made visible (for the database
                        // strategy it is the resource itself): the same guard decides, unless
                        // the strategy just asked it before making the resource visible (a
                        // change arriving since is caught when the row is completed, and the
                        // record copy is never older than the one held).
                        let current = if checked {
                            Ok(())
                        } else {
                            self.guard(stored.generation).ensure_current().await
                        };
                        match current {
                            Ok(()) => {
                                site.records()
                                    .put_unless_older(name, &stored)
                                    .await
                                    .map_err(|e| target.store_error(e))?;
                                Ok((stored.generation, primary_checksum, record.resource()))
                            }
                            Err(overtaken) => Err(overtaken),
                        }
                    }
                    Err(failure) => Err(failure),
                }
            }
            Ok(None) => Err(SyncFailure::missing_on_primary(format!(
                "{name} {} does not exist on the primary",
                target.id
            ))),
            Err(e) => Err(SyncFailure::new(e.to_string())),
        };
        self.complete(copied, resource, attempted).await
    }

    /// Writes the attempt's end into the registry row, if the row is still this attempt's.
    ///
    /// The write is a compare-and-set on the version the attempt started at. When it is
    /// refused, the row is read again: a row this attempt still holds (a change arrived, or the
    /// primary's checksum reset its verification) is completed again from the fresh copy of the
    /// row, a change making it pending rather than synced; a row another attempt took is left
    /// alone; a row that was deleted while the copy became visible has that copy removed.
    async fn complete(
        mut self,
        copied: Result<(i64, Option<String>, Resource), SyncFailure>,
        resource: Option<Resource>,
        attempted: Option<i64>,
    ) -> Result<SyncOutcome, ReplicatorError> {
        let target = &self.target;
        let site = target.site;
        let name = M::REPLICABLE_NAME;
        let started_at = self.row.last_synced_at;
        let (policy, now) = (*site.retry_policy(), site.now());
        let jitter = fastrand::u32(0..crate::domain::retry::JITTER_RANGE);
        for _ in 0..CAS_ATTEMPTS {
            let mut row = self.row.clone();
            // Whether the copy was recorded synced with its verification waiting for the
            // primary's checksum (disabled).
            let mut waits_for_checksum = false;
            // A change noted while the copy ran is already in the copy when the primary's
            // record is still at the generation copied (the event was for the state this sync
            // read, e.g. a `created` event arriving after backfill had started the sync).
            let included = match &copied {
                Ok((generation, _, _)) if row.change_pending => {
                    target.change_included(*generation).await
                }
                _ => false,
            };
            let outcome = if row.change_pending && !included {
                row.requeue().expect("attempt rows are started");
                SyncOutcome::ChangedDuringSync
            } else {
                match &copied {
                    Ok((generation, primary_checksum, _)) => {
                        let verifiable = target.verifiable_now(primary_checksum).await;
                        row.mark_synced(Some(*generation), verifiable)
                            .expect("attempt rows are started");
                        waits_for_checksum = M::Strategy::VERIFIABLE && !verifiable;
                        SyncOutcome::Synced {
                            generation: *generation,
                        }
                    }
                    Err(failure) if failure.overtaken => {
                        let held = row
                            .synced_generation
                            .filter(|held| attempted.is_some_and(|g| *held > g));
                        match held {
                            // The copy already here is newer than what the primary has now (a
                            // primary restored from a backup): it stays, and is not fetched
                            // again in a loop.
                            Some(held) => {
                                let verifiable = target.verifiable_now(&None).await;
                                row.mark_synced(None, verifiable)
                                    .expect("attempt rows are started");
                                waits_for_checksum = M::Strategy::VERIFIABLE && !verifiable;
                                SyncOutcome::Synced { generation: held }
                            }
                            None => {
                                row.requeue().expect("attempt rows are started");
                                SyncOutcome::ChangedDuringSync
                            }
                        }
                    }
                    Err(failure) => {
                        row.mark_failed(failure, now, &policy, jitter)
                            .expect("a row can always fail");
                        warn!(name, id = target.id, failure = %failure.message, "sync failed");
                        SyncOutcome::Failed(failure.clone())
                    }
                }
            };
            if target.update_registry(&row).await? {
                if waits_for_checksum {
                    self.enable_if_checksum_arrived().await;
                }
                return Ok(outcome);
            }
            match target.registry_record().await? {
                Some(fresh) if fresh.held_by_attempt(started_at) => {
                    self.row = fresh;
                }
                Some(_) => {
                    debug!(
                        name,
                        id = target.id,
                        "another attempt took the row; leaving it"
                    );
                    return Ok(SyncOutcome::ChangedDuringSync);
                }
                None => {
                    // Deleted while the copy ran. Even an overtaken copy may have become visible
                    // (the deletion can land between the strategy's check and its rename):
                    // nothing may be left behind.
                    if let Some(resource) = &resource {
                        debug!(
                            name,
                            id = target.id,
                            "deleted during sync: removing the copy"
                        );
                        target.remove_local(resource).await?;
                    }
                    return Ok(SyncOutcome::ChangedDuringSync);
                }
            }
        }
        Err(target.contention())
    }

    /// A copy recorded as waiting for the primary's checksum, when that checksum arrived in the
    /// meantime: its `checksum_succeeded` event may have been consumed while this sync still
    /// held the row (the event then leaves a `started` row alone), after the sync asked for the
    /// checksum and before it recorded the copy. Asking once more now closes that window: the
    /// checksum and its event commit together, so either the event finds the row synced and
    /// sends it to verification, or this finds the checksum. (Otherwise the copy would wait for
    /// the periodic pass that enables verification.)
    async fn enable_if_checksum_arrived(&self) {
        let target = &self.target;
        match target.primary_checksum().await {
            Ok(Some(_)) => {
                if let Err(e) = target
                    .site
                    .registry_store()
                    .enable_verification(M::REPLICABLE_NAME, &[target.id])
                    .await
                {
                    debug!(
                        replicable = M::REPLICABLE_NAME,
                        id = target.id,
                        error = %e,
                        "enabling verification failed; the periodic pass will"
                    );
                }
            }
            Ok(None) => {}
            Err(e) => debug!(
                replicable = M::REPLICABLE_NAME,
                id = target.id,
                error = %e,
                "cannot ask for the primary's checksum; the periodic pass will"
            ),
        }
    }

    fn guard(&self, generation: i64) -> AttemptGuard<'_, 'a, M> {
        AttemptGuard {
            target: &self.target,
            started_at: self.row.last_synced_at,
            generation,
            checked: AtomicBool::new(false),
        }
    }

    /// Copies the resource, unless the secondary already holds a copy whose checksum equals
    /// the primary's (a secondary re-seeded from a backup): then nothing is transferred.
    /// Returns the primary's checksum, if it has one, and whether the strategy found the
    /// attempt current (through its guard) before it made the copy visible.
    async fn copy(
        &self,
        link: &dyn PrimaryLink,
        record: &M,
        stored: &StoredRecord,
        primary: Option<Option<VerificationRecord>>,
    ) -> Result<(Option<String>, bool), SyncFailure> {
        let target = &self.target;
        let primary_checksum = if M::Strategy::VERIFIABLE {
            let primary = match primary {
                Some(primary) => primary,
                None => link
                    .verification(M::REPLICABLE_NAME, target.id)
                    .await
                    .map_err(|e| SyncFailure::new(e.to_string()))?,
            };
            primary.and_then(|v| v.succeeded_checksum().map(str::to_owned))
        } else {
            None
        };
        let resource = record.resource();
        let strategy = M::Strategy::default();
        if let Some(expected) = &primary_checksum {
            let local = strategy
                .checksum(
                    target.site.strategy_context(),
                    &target.resource_target(&resource),
                    Some(stored),
                )
                .await;
            if local.as_ref().is_ok_and(|local| local == expected) {
                debug!(
                    replicable = M::REPLICABLE_NAME,
                    id = target.id,
                    "the local copy already matches the primary: nothing to transfer"
                );
                return Ok((primary_checksum, false));
            }
        }
        if let Some(observer) = target.site.sync_observer() {
            observer
                .before_transfer(M::REPLICABLE_NAME, target.id)
                .await;
        }
        let guard = self.guard(stored.generation);
        strategy
            .sync(SyncRequest {
                context: target.site.strategy_context(),
                primary: link,
                replicable_name: M::REPLICABLE_NAME,
                model_id: target.id,
                resource: &resource,
                record: stored,
                primary_checksum: primary_checksum.as_deref(),
                guard: &guard,
            })
            .await?;
        Ok((primary_checksum, guard.checked.load(Ordering::Acquire)))
    }
}

/// The guard of one sync attempt: the copy may become visible only while the registry row is
/// still `started` by this attempt, no change arrived meanwhile, and the generation copied is not
/// older than the one the row records.
struct AttemptGuard<'t, 'a, M: Replicable> {
    target: &'t ReplicationTarget<'a, M>,
    started_at: Option<chrono::DateTime<chrono::Utc>>,
    generation: i64,
    /// Whether a check found the attempt current.
    checked: AtomicBool,
}

#[async_trait::async_trait]
impl<M: Replicable> SyncGuard for AttemptGuard<'_, '_, M> {
    async fn ensure_current(&self) -> Result<(), SyncFailure> {
        let (name, id) = (M::REPLICABLE_NAME, self.target.id);
        if let Some(observer) = self.target.site.sync_observer() {
            observer.before_visible(name, id).await;
        }
        let row = self
            .target
            .registry_record()
            .await
            .map_err(|e| SyncFailure::new(e.to_string()))?;
        let reason = match row {
            None => "it was deleted while the sync ran",
            Some(row) if !row.held_by_attempt(self.started_at) => {
                "another attempt took the registry row"
            }
            Some(row)
                if row
                    .synced_generation
                    .is_some_and(|held| held > self.generation) =>
            {
                "a newer generation is already held"
            }
            Some(row) if row.change_pending => {
                if self.target.change_included(self.generation).await {
                    self.checked.store(true, Ordering::Release);
                    return Ok(());
                }
                "it changed while the sync ran"
            }
            Some(_) => {
                self.checked.store(true, Ordering::Release);
                return Ok(());
            }
        };
        debug!(
            name,
            id, reason, "sync overtaken: discarding the staged copy"
        );
        Err(SyncFailure::overtaken(format!(
            "sync of {name} {id} overtaken: {reason}"
        )))
    }
}
