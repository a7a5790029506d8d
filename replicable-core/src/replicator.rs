//! The replicator: publishes a record's events on the primary and consumes them, syncs and
//! verifies on secondaries.

use std::marker::PhantomData;

use tracing::{Instrument, debug, info_span, warn};

use crate::domain::error::{LinkError, ReplicatorError, ResourceError, StoreError};
use crate::domain::event::{Event, EventId, EventKind, EventPayload, NewEvent};
use crate::domain::failure::SyncFailure;
use crate::domain::registry::{RegistryRecord, SyncState};
use crate::domain::verification::{CHECKSUM_MISMATCH, VerificationRecord, VerificationState};
use crate::link::PrimaryLink;
use crate::model::{Replicable, Resource};
use crate::site::Site;
use crate::storage::StoredRecord;
use crate::strategy::{ResourceTarget, Strategy, SyncGuard, SyncRequest};

/// How many times a write that lost a compare-and-set race is retried before giving up.
const CAS_ATTEMPTS: usize = 8;

/// Runs `work`, calling `beat` every `interval` until it completes, so that the claim on the row
/// it works on is not taken for abandoned.
async fn heartbeating<T, B, BF>(
    interval: std::time::Duration,
    work: impl std::future::Future<Output = T>,
    beat: B,
) -> T
where
    B: Fn() -> BF,
    BF: std::future::Future<Output = Result<bool, StoreError>>,
{
    tokio::pin!(work);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = ticker.tick() => match beat().await {
                Ok(true) => {}
                Ok(false) => debug!("the claimed row changed; the work will not be recorded"),
                Err(e) => warn!(error = %e, "heartbeat failed"),
            },
        }
    }
}

/// What consuming an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumeOutcome {
    /// The record was marked pending and synced (with this result).
    Synced(SyncOutcome),
    /// The record was marked pending without syncing it now: a sync of it is already running
    /// (it will not make its copy visible, and the record is synced again after it), or
    /// replication of this replicable is paused on this site.
    Pending,
    /// The record is outside this secondary's selective sync; nothing was copied (and a copy
    /// that was there is removed).
    OutOfScope,
    /// The secondary already holds this generation or a newer one; the event is stale.
    AlreadyCurrent,
    /// The local copy and the registry row were removed.
    Removed,
    /// The primary's checksum changed: the verified copy goes back to verification pending.
    VerificationReset,
    /// Nothing to do (no registry row to update).
    Ignored,
}

/// What a sync attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    /// The copy is complete and the registry row is synced.
    Synced {
        /// The primary's generation of the record that was copied.
        generation: i64,
    },
    /// The copy failed; the row is failed with a retry time.
    Failed(SyncFailure),
    /// The record changed while it was being copied (the row was marked pending meanwhile);
    /// the row stays pending and will be synced again.
    ChangedDuringSync,
    /// The record is outside this secondary's selective sync; its row and copy were removed.
    OutOfScope,
}

/// What a verification did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyOutcome {
    /// The checksum was computed (primary) or matched the primary's (secondary).
    Succeeded {
        /// The checksum.
        checksum: String,
    },
    /// Computing the checksum failed; retried later.
    Failed {
        /// Why.
        reason: String,
    },
    /// The secondary's copy differs from the primary; the row is failed so it is synced again.
    Mismatch {
        /// The primary's checksum.
        primary: String,
        /// The local checksum.
        local: String,
    },
    /// The primary has not computed its checksum yet; nothing to compare with.
    WaitingForPrimary,
    /// The record is not synced on this secondary; nothing to verify.
    NotSynced,
    /// The record changed while it was being verified; it will be verified again.
    ChangedDuringVerification,
    /// The strategy does not verify.
    Disabled,
}

/// The replicator of one record on one site.
///
/// ```ignore
/// let replicator = package_file.replicator(&primary);
/// assert_eq!(replicator.model_record().id, package_file.id);
/// replicator.publish_created_event().await?;
/// ```
pub struct Replicator<'a, M: Replicable> {
    record: &'a M,
    target: ReplicationTarget<'a, M>,
}

impl<M: Replicable> std::fmt::Debug for Replicator<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicator")
            .field("replicable", &M::REPLICABLE_NAME)
            .field("id", &self.target.id)
            .field("site", &self.target.site.name())
            .finish()
    }
}

impl<'a, M: Replicable> Replicator<'a, M> {
    /// The replicator of `record` on `site`.
    pub fn new(site: &'a Site, record: &'a M) -> Self {
        Self {
            record,
            target: ReplicationTarget::new(site, record.replicable_id()),
        }
    }

    /// The record this replicator replicates.
    pub fn model_record(&self) -> &M {
        self.record
    }

    /// The site this replicator works on.
    pub fn site(&self) -> &Site {
        self.target.site
    }

    /// The id-only operations (they work after the record is gone, too).
    pub fn target(&self) -> &ReplicationTarget<'a, M> {
        &self.target
    }

    /// Publishes `created` on the primary: call it after the record's write committed. On a
    /// secondary nothing is written and `Ok(None)` is returned.
    pub async fn publish_created_event(&self) -> Result<Option<EventId>, ReplicatorError> {
        self.publish(EventKind::Created).await
    }

    /// Publishes `updated` on the primary (mutable data types only).
    pub async fn publish_updated_event(&self) -> Result<Option<EventId>, ReplicatorError> {
        self.publish(EventKind::Updated).await
    }

    /// Publishes `deleted` on the primary: the event carries the resource's location so that
    /// secondaries can remove their copy after the record is gone.
    pub async fn publish_deleted_event(&self) -> Result<Option<EventId>, ReplicatorError> {
        self.publish(EventKind::Deleted).await
    }

    async fn publish(&self, kind: EventKind) -> Result<Option<EventId>, ReplicatorError> {
        let target = &self.target;
        target.ensure_supported(kind)?;
        if !target.site.is_primary() {
            debug!(replicable = M::REPLICABLE_NAME, id = target.id, %kind, "not publishing on a secondary");
            return Ok(None);
        }
        let (name, id, site) = (M::REPLICABLE_NAME, target.id, target.site);
        let resource = self.record.resource();
        M::Strategy::validate(&resource).map_err(|e| target.resource_error(e))?;
        let mut payload = EventPayload {
            model_id: id,
            resource,
            generation: None,
            record: None,
            checksum: None,
        };
        if matches!(kind, EventKind::Created | EventKind::Updated) {
            payload.record =
                Some(
                    serde_json::to_value(self.record).map_err(|e| ReplicatorError::Decode {
                        replicable: name,
                        id,
                        reason: format!("record does not serialize: {e}"),
                    })?,
                );
        }
        // One database for the log, the catalogue and the verification rows: the three writes
        // are one transaction, and an event that cannot be written leaves nothing behind.
        let publication = crate::storage::Publication {
            event: NewEvent {
                replicable_name: name.to_owned(),
                kind,
                payload,
            },
            verifiable: M::Strategy::VERIFIABLE,
            mutable: M::Strategy::MUTABLE,
        };
        if crate::storage::same_database(
            site.event_log(),
            site.records(),
            site.verification_store(),
        ) && let Some(published) = site
            .event_log()
            .publish(&publication, site.now())
            .await
            .map_err(|e| target.store_error(e))?
        {
            debug!(replicable = name, id, %kind, event_id = published.event_id, "published");
            return Ok(Some(published.event_id));
        }
        let mut payload = publication.event.payload;
        match kind {
            EventKind::Created | EventKind::Updated => {
                let body = payload.record.as_ref().expect("set above");
                let generation = site
                    .records()
                    .upsert(name, id, body)
                    .await
                    .map_err(|e| target.store_error(e))?;
                // Re-publishing `created` for an immutable resource keeps a succeeded checksum.
                let keep = kind == EventKind::Created
                    && !M::Strategy::MUTABLE
                    && site
                        .verification_store()
                        .get(name, id)
                        .await
                        .map_err(|e| target.store_error(e))?
                        .is_some_and(|row| row.succeeded_checksum().is_some());
                if M::Strategy::VERIFIABLE && !keep {
                    site.verification_store()
                        .mark_pending(name, id)
                        .await
                        .map_err(|e| target.store_error(e))?;
                }
                payload.generation = Some(generation);
            }
            EventKind::Deleted => {
                site.records()
                    .delete(name, id)
                    .await
                    .map_err(|e| target.store_error(e))?;
                site.verification_store()
                    .delete(name, id)
                    .await
                    .map_err(|e| target.store_error(e))?;
            }
            EventKind::ChecksumSucceeded => unreachable!("published by verification only"),
        }
        target.append(kind, payload).await.map(Some)
    }

    /// Consumes an event about this record (secondary). See [`ReplicationTarget::consume`].
    pub async fn consume(&self, event: &Event) -> Result<ConsumeOutcome, ReplicatorError> {
        self.target.consume(event).await
    }

    /// Syncs this record now (secondary). See [`ReplicationTarget::sync`].
    pub async fn sync(&self) -> Result<SyncOutcome, ReplicatorError> {
        self.target.sync().await
    }

    /// Begins a sync: the row is `started` until the attempt runs. See
    /// [`ReplicationTarget::start_sync`].
    pub async fn start_sync(&self) -> Result<SyncAttempt<'a, M>, ReplicatorError> {
        self.target.start_sync().await
    }

    /// The checksum of the resource as this site holds it.
    pub async fn calculate_checksum(&self) -> Result<String, ReplicatorError> {
        let target = &self.target;
        let stored = target.local_record().await?;
        let resource = self.record.resource();
        M::Strategy::default()
            .checksum(
                target.site.strategy_context(),
                &target.resource_target(&resource),
                stored.as_ref(),
            )
            .await
            .map_err(|e| target.resource_error(e))
    }

    /// Verifies the record: on the primary, computes and stores its checksum; on a secondary,
    /// compares the local checksum with the primary's.
    pub async fn verify(&self) -> Result<VerifyOutcome, ReplicatorError> {
        self.target.verify().await
    }

    /// The registry row of this record (secondary).
    pub async fn registry(&self) -> Result<Option<M::Registry>, ReplicatorError> {
        Ok(self.target.registry_record().await?.map(Into::into))
    }

    /// The verification row of this record (primary).
    pub async fn verification_state(
        &self,
    ) -> Result<Option<M::VerificationState>, ReplicatorError> {
        Ok(self.target.verification_record().await?.map(Into::into))
    }
}

/// `record.replicator(&site)` for generic code over any `M: Replicable`. A model made with
/// `#[derive(Replicable)]` also has an inherent `replicator` method, so that code naming the
/// model needs no import; the two never conflict (the inherent method is found first).
///
/// ```ignore
/// use replicable_core::ReplicatorExt;
///
/// async fn publish<M: Replicable>(record: &M, primary: &Site) -> Result<(), ReplicatorError> {
///     record.replicator(primary).publish_created_event().await?;
///     Ok(())
/// }
/// ```
pub trait ReplicatorExt: Replicable {
    /// The replicator of this record on `site`.
    fn replicator<'a>(&'a self, site: &'a Site) -> Replicator<'a, Self>;
}

impl<M: Replicable> ReplicatorExt for M {
    fn replicator<'a>(&'a self, site: &'a Site) -> Replicator<'a, Self> {
        Replicator::new(site, self)
    }
}

/// The operations on one record of replicable `M` on one site that need only its id: what the
/// log cursor, workers and operator tools use.
pub struct ReplicationTarget<'a, M: Replicable> {
    site: &'a Site,
    id: i64,
    _model: PhantomData<fn() -> M>,
}

impl<M: Replicable> Clone for ReplicationTarget<'_, M> {
    fn clone(&self) -> Self {
        Self::new(self.site, self.id)
    }
}

impl<'a, M: Replicable> ReplicationTarget<'a, M> {
    /// The record `id` of `M` on `site`.
    pub fn new(site: &'a Site, id: i64) -> Self {
        Self {
            site,
            id,
            _model: PhantomData,
        }
    }

    /// The record's id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The resource `resource` of this record, as strategies take it.
    pub fn resource_target<'r>(&self, resource: &'r Resource) -> ResourceTarget<'r> {
        ResourceTarget {
            replicable_name: M::REPLICABLE_NAME,
            model_id: self.id,
            resource,
        }
    }

    fn store_error(&self, source: StoreError) -> ReplicatorError {
        ReplicatorError::Store {
            replicable: M::REPLICABLE_NAME,
            id: self.id,
            source,
        }
    }

    fn link_error(&self, source: LinkError) -> ReplicatorError {
        ReplicatorError::Link {
            replicable: M::REPLICABLE_NAME,
            id: self.id,
            source,
        }
    }

    fn resource_error(&self, source: ResourceError) -> ReplicatorError {
        ReplicatorError::Resource {
            replicable: M::REPLICABLE_NAME,
            id: self.id,
            source,
        }
    }

    fn wrong_site(&self, operation: &'static str, needs: &'static str) -> ReplicatorError {
        ReplicatorError::WrongSite {
            operation,
            replicable: M::REPLICABLE_NAME,
            id: self.id,
            needs,
            site: self.site.name().to_owned(),
        }
    }

    fn ensure_supported(&self, kind: EventKind) -> Result<(), ReplicatorError> {
        if M::Strategy::supports(kind) {
            Ok(())
        } else {
            Err(ReplicatorError::UnsupportedEvent {
                replicable: M::REPLICABLE_NAME,
                strategy: M::Strategy::NAME,
                event: kind,
            })
        }
    }

    fn secondary_link(
        &self,
        operation: &'static str,
    ) -> Result<&'a dyn PrimaryLink, ReplicatorError> {
        match self.site.primary_link() {
            Some(link) if !self.site.is_primary() => Ok(link),
            _ => Err(self.wrong_site(operation, "secondary")),
        }
    }

    /// Whether the primary's record is still at (or before) `generation`: a change noted while
    /// a sync of that generation ran is then already in its copy. A record gone from the
    /// primary, or a primary that cannot be read, counts as changed.
    async fn change_included(&self, generation: i64) -> bool {
        let Some(link) = self.site.primary_link() else {
            return false;
        };
        matches!(
            link.record(M::REPLICABLE_NAME, self.id).await,
            Ok(Some(record)) if record.generation <= generation
        )
    }

    /// Whether a copy just synced can be verified now: the strategy verifies and the primary
    /// has a checksum (`known`, read before the copy, or asked again: it may have succeeded
    /// while the copy ran).
    async fn verifiable_now(&self, known: &Option<String>) -> bool {
        M::Strategy::VERIFIABLE
            && (known.is_some() || self.primary_checksum().await.ok().flatten().is_some())
    }

    /// The primary's succeeded checksum of this record, if it has one (secondary).
    pub async fn primary_checksum(&self) -> Result<Option<String>, ReplicatorError> {
        let link = self.secondary_link("read the primary's checksum")?;
        Ok(link
            .verification(M::REPLICABLE_NAME, self.id)
            .await
            .map_err(|e| self.link_error(e))?
            .and_then(|v| v.succeeded_checksum().map(str::to_owned)))
    }

    fn decode(&self, stored: &StoredRecord) -> Result<M, ReplicatorError> {
        serde_json::from_value(stored.body.clone()).map_err(|e| ReplicatorError::Decode {
            replicable: M::REPLICABLE_NAME,
            id: self.id,
            reason: e.to_string(),
        })
    }

    async fn append(
        &self,
        kind: EventKind,
        payload: EventPayload,
    ) -> Result<EventId, ReplicatorError> {
        let event = NewEvent {
            replicable_name: M::REPLICABLE_NAME.to_owned(),
            kind,
            payload,
        };
        let ids = self
            .site
            .event_log()
            .append(std::slice::from_ref(&event), self.site.now())
            .await
            .map_err(|e| self.store_error(e))?;
        let id = ids.first().copied().ok_or_else(|| {
            self.store_error(StoreError::Backend {
                store: "event log".into(),
                operation: "append",
                reason: "no event id returned".into(),
            })
        })?;
        debug!(replicable = M::REPLICABLE_NAME, id = self.id, %kind, event_id = id, "published");
        Ok(id)
    }

    /// The record as this site stores it (the catalogue on the primary, the database
    /// strategy's copy on a secondary).
    async fn local_record(&self) -> Result<Option<StoredRecord>, ReplicatorError> {
        self.site
            .records()
            .get(M::REPLICABLE_NAME, self.id)
            .await
            .map_err(|e| self.store_error(e))
    }

    /// The registry row (secondary).
    pub async fn registry_record(&self) -> Result<Option<RegistryRecord>, ReplicatorError> {
        self.site
            .registry_store()
            .get(M::REPLICABLE_NAME, self.id)
            .await
            .map_err(|e| self.store_error(e))
    }

    /// The verification row (primary).
    pub async fn verification_record(&self) -> Result<Option<VerificationRecord>, ReplicatorError> {
        self.site
            .verification_store()
            .get(M::REPLICABLE_NAME, self.id)
            .await
            .map_err(|e| self.store_error(e))
    }

    /// Marks the registry row pending (creating it if needed), as a `created` / `updated` event
    /// does.
    pub async fn mark_pending(&self) -> Result<RegistryRecord, ReplicatorError> {
        self.site
            .registry_store()
            .mark_pending(M::REPLICABLE_NAME, self.id, self.site.now())
            .await
            .map_err(|e| self.store_error(e))
    }

    /// Consumes an event about this record on a secondary.
    ///
    /// - `created` / `updated`: out-of-scope records are skipped (and a copy that was there is
    ///   removed), stale generations are ignored, otherwise the row is marked pending and synced;
    /// - `deleted`: the local copy and the registry row are removed, whether or not the record
    ///   still exists anywhere;
    /// - `checksum_succeeded`: a verified copy goes back to verification pending.
    pub async fn consume(&self, event: &Event) -> Result<ConsumeOutcome, ReplicatorError> {
        self.consume_with(event, true).await
    }

    /// Consumes an event as the engine's log cursor does: it records intent only. A `created`
    /// / `updated` event marks the registry row pending ([`ConsumeOutcome::Pending`]) for the
    /// sync workers, and never copies anything itself, so that one slow resource does not hold
    /// up the events behind it. Other events act as in [`consume`](Self::consume).
    pub async fn record_intent(&self, event: &Event) -> Result<ConsumeOutcome, ReplicatorError> {
        self.consume_with(event, false).await
    }

    async fn consume_with(
        &self,
        event: &Event,
        sync_now: bool,
    ) -> Result<ConsumeOutcome, ReplicatorError> {
        if event.replicable_name != M::REPLICABLE_NAME || event.payload.model_id != self.id {
            return Err(ReplicatorError::WrongEvent {
                event_id: event.id,
                event_replicable: event.replicable_name.clone(),
                event_id_of: event.payload.model_id,
                replicable: M::REPLICABLE_NAME,
                id: self.id,
            });
        }
        self.ensure_supported(event.kind)?;
        self.secondary_link("consume")?;
        let span = info_span!("consume", replicable = M::REPLICABLE_NAME, id = self.id, event_id = event.id, kind = %event.kind);
        async {
            match event.kind {
                EventKind::Created | EventKind::Updated => {
                    self.consume_change(&event.payload, sync_now).await
                }
                EventKind::Deleted => {
                    self.remove_local(&event.payload.resource).await?;
                    Ok(ConsumeOutcome::Removed)
                }
                EventKind::ChecksumSucceeded => self.consume_checksum_succeeded().await,
            }
        }
        .instrument(span)
        .await
    }

    async fn consume_change(
        &self,
        payload: &EventPayload,
        sync_now: bool,
    ) -> Result<ConsumeOutcome, ReplicatorError> {
        let name = M::REPLICABLE_NAME;
        if let Some(body) = &payload.record
            && !self.site.selective_sync().includes(name, body)
        {
            self.remove_if_registered(&payload.resource).await?;
            return Ok(ConsumeOutcome::OutOfScope);
        }
        let existing = self.registry_record().await?;
        if let (Some(row), Some(generation)) = (&existing, payload.generation)
            && row.synced_generation.is_some_and(|held| held >= generation)
            && row.state == SyncState::Synced
        {
            debug!(
                name,
                id = self.id,
                generation,
                "stale event: a newer generation is held"
            );
            return Ok(ConsumeOutcome::AlreadyCurrent);
        }
        let row = self.mark_pending().await?;
        let enabled = self
            .site
            .registry_store()
            .replication_enabled(name)
            .await
            .map_err(|e| self.store_error(e))?;
        if !enabled {
            debug!(
                name,
                id = self.id,
                "replication is paused: the change is recorded"
            );
            return Ok(ConsumeOutcome::Pending);
        }
        if !sync_now {
            return Ok(ConsumeOutcome::Pending);
        }
        if row.state == SyncState::Started {
            debug!(
                name,
                id = self.id,
                "a sync is in flight: the change waits for it"
            );
            return Ok(ConsumeOutcome::Pending);
        }
        match self.try_start_sync().await? {
            Some(attempt) => Ok(ConsumeOutcome::Synced(attempt.run().await?)),
            // A worker took the row between the two steps: its sync carries the change.
            None => Ok(ConsumeOutcome::Pending),
        }
    }

    async fn consume_checksum_succeeded(&self) -> Result<ConsumeOutcome, ReplicatorError> {
        for _ in 0..CAS_ATTEMPTS {
            let Some(mut row) = self.registry_record().await? else {
                return Ok(ConsumeOutcome::Ignored);
            };
            // A synced copy waiting for the primary's checksum (disabled) or verified against
            // an older one (succeeded) is verified again. A copy being synced reads the
            // checksum when it completes.
            let waiting = matches!(
                row.verification.verification_state,
                VerificationState::Succeeded | VerificationState::Disabled
            );
            if row.state != SyncState::Synced || !waiting {
                return Ok(ConsumeOutcome::Ignored);
            }
            row.verification.mark_pending();
            if self.update_registry(&row).await? {
                return Ok(ConsumeOutcome::VerificationReset);
            }
        }
        Err(self.contention())
    }

    fn contention(&self) -> ReplicatorError {
        self.store_error(StoreError::Backend {
            store: "registry".into(),
            operation: "update",
            reason: format!("row kept changing under {CAS_ATTEMPTS} attempts"),
        })
    }

    async fn update_registry(&self, row: &RegistryRecord) -> Result<bool, ReplicatorError> {
        self.site
            .registry_store()
            .update(M::REPLICABLE_NAME, row)
            .await
            .map_err(|e| self.store_error(e))
    }

    async fn remove_local(&self, resource: &Resource) -> Result<(), ReplicatorError> {
        // The copy first and the registry row last: if removing the copy fails, the row and
        // the stored record still name it, so backfill can remove it later. A sync in flight
        // that makes its copy visible after this removal finds the row gone when it completes
        // and removes its copy itself.
        M::Strategy::default()
            .remove(
                self.site.strategy_context(),
                &self.resource_target(resource),
            )
            .await
            .map_err(|e| self.resource_error(e))?;
        self.site
            .records()
            .delete(M::REPLICABLE_NAME, self.id)
            .await
            .map_err(|e| self.store_error(e))?;
        self.site
            .registry_store()
            .delete(M::REPLICABLE_NAME, self.id)
            .await
            .map_err(|e| self.store_error(e))?;
        Ok(())
    }

    /// Removes the local copy and registry row of a record that no longer exists on the primary
    /// (or left the selective sync), using the copy of the record kept at sync time to find the
    /// resource. Returns whether there was anything to remove.
    pub async fn remove_orphan(&self) -> Result<bool, ReplicatorError> {
        let resource = match self.local_record().await? {
            Some(stored) => Some(self.decode(&stored)?.resource()),
            None => None,
        };
        match resource {
            Some(resource) => self.remove_local(&resource).await?,
            None => {
                self.site
                    .registry_store()
                    .delete(M::REPLICABLE_NAME, self.id)
                    .await
                    .map_err(|e| self.store_error(e))?;
            }
        }
        Ok(true)
    }

    async fn remove_if_registered(&self, resource: &Resource) -> Result<(), ReplicatorError> {
        if self.registry_record().await?.is_some() {
            self.remove_local(resource).await?;
        }
        Ok(())
    }

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
                }));
            }
        }
        Err(self.contention())
    }

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
            self.verify_claimed_secondary(row).await
        }
    }

    async fn update_verification(&self, row: &VerificationRecord) -> Result<bool, ReplicatorError> {
        self.site
            .verification_store()
            .update(M::REPLICABLE_NAME, row)
            .await
            .map_err(|e| self.store_error(e))
    }

    /// Completes a verification row the caller moved to `started` (primary).
    pub(crate) async fn verify_claimed_primary(
        &self,
        row: VerificationRecord,
    ) -> Result<VerifyOutcome, ReplicatorError> {
        let span = info_span!(
            "verify",
            replicable = M::REPLICABLE_NAME,
            id = self.id,
            side = "primary"
        );
        self.verify_claimed_primary_inner(row)
            .instrument(span)
            .await
    }

    async fn verify_claimed_primary_inner(
        &self,
        mut row: VerificationRecord,
    ) -> Result<VerifyOutcome, ReplicatorError> {
        let site = self.site;
        let (policy, now) = (*site.retry_policy(), site.now());
        let jitter = fastrand::u32(0..crate::domain::retry::JITTER_RANGE);
        let checksum = match self.local_record().await? {
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
                .map_err(|e| e.to_string())
            }
        };
        let outcome = match checksum {
            Ok(checksum) => {
                row.verification
                    .succeed(checksum.clone(), now)
                    .expect("row was started by the caller");
                VerifyOutcome::Succeeded { checksum }
            }
            Err(reason) => {
                row.verification
                    .fail(&reason, now, &policy, jitter)
                    .expect("row was started by the caller");
                VerifyOutcome::Failed { reason }
            }
        };
        if !self.update_verification(&row).await? {
            return Ok(VerifyOutcome::ChangedDuringVerification);
        }
        if let VerifyOutcome::Succeeded { checksum } = &outcome {
            let resource = match self.local_record().await? {
                Some(stored) => self.decode(&stored)?.resource(),
                None => return Ok(outcome),
            };
            self.append(
                EventKind::ChecksumSucceeded,
                EventPayload {
                    model_id: self.id,
                    resource,
                    generation: None,
                    record: None,
                    checksum: Some(checksum.clone()),
                },
            )
            .await?;
        }
        Ok(outcome)
    }

    /// Completes a registry row whose verification the caller moved to `started` (secondary).
    pub(crate) async fn verify_claimed_secondary(
        &self,
        row: RegistryRecord,
    ) -> Result<VerifyOutcome, ReplicatorError> {
        let span = info_span!(
            "verify",
            replicable = M::REPLICABLE_NAME,
            id = self.id,
            side = "secondary"
        );
        self.verify_claimed_secondary_inner(row)
            .instrument(span)
            .await
    }

    async fn verify_claimed_secondary_inner(
        &self,
        mut row: RegistryRecord,
    ) -> Result<VerifyOutcome, ReplicatorError> {
        let site = self.site;
        let link = self.secondary_link("verify")?;
        let (policy, now) = (*site.retry_policy(), site.now());
        let jitter = fastrand::u32(0..crate::domain::retry::JITTER_RANGE);
        let name = M::REPLICABLE_NAME;
        let primary_checksum = link
            .verification(name, self.id)
            .await
            .map_err(|e| self.link_error(e))?
            .and_then(|v| v.succeeded_checksum().map(str::to_owned));
        let Some(primary_checksum) = primary_checksum else {
            // Nothing to compare with yet: disabled until the primary's checksum succeeds (its
            // `checksum_succeeded` event, or backfill, turns it back on), so that copies waiting
            // for the primary never fill a verification batch.
            row.verification.disable();
            self.update_registry(&row).await?;
            return Ok(VerifyOutcome::WaitingForPrimary);
        };
        let stored = link
            .record(name, self.id)
            .await
            .map_err(|e| self.link_error(e))?;
        let local = match &stored {
            None => Err(format!(
                "{name} {} no longer exists on the primary",
                self.id
            )),
            Some(stored) => {
                let record = self.decode(stored)?;
                let local_copy = self.local_record().await?;
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

/// A sync whose registry row is `started`, ready to copy the resource.
pub struct SyncAttempt<'a, M: Replicable> {
    target: ReplicationTarget<'a, M>,
    row: RegistryRecord,
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
        Self {
            target: ReplicationTarget::new(site, row.model_id),
            row,
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

    async fn run_inner(self) -> Result<SyncOutcome, ReplicatorError> {
        let target = &self.target;
        let site = target.site;
        let name = M::REPLICABLE_NAME;
        let link = target.secondary_link("sync")?;
        let mut resource = None;
        let mut attempted = None;
        let copied = match link.record(name, target.id).await {
            Ok(Some(stored)) => {
                let record = target.decode(&stored)?;
                resource = Some(record.resource());
                attempted = Some(stored.generation);
                if !site.selective_sync().includes(name, &stored.body) {
                    target.remove_local(&record.resource()).await?;
                    return Ok(SyncOutcome::OutOfScope);
                }
                let version = self.row.version;
                let copy = self.copy(link, &record, &stored);
                let copied = heartbeating(site.timeouts().heartbeat_interval, copy, || {
                    site.registry_store()
                        .heartbeat(name, target.id, version, site.now())
                })
                .await;
                match copied {
                    Ok(primary_checksum) => {
                        // The record as copied is the last thing made visible (for the database
                        // strategy it is the resource itself): the same guard decides.
                        match self.guard(stored.generation).ensure_current().await {
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

    fn guard(&self, generation: i64) -> AttemptGuard<'_, 'a, M> {
        AttemptGuard {
            target: &self.target,
            started_at: self.row.last_synced_at,
            generation,
        }
    }

    /// Copies the resource, unless the secondary already holds a copy whose checksum equals
    /// the primary's (a secondary re-seeded from a backup): then nothing is transferred.
    /// Returns the primary's checksum, if it has one.
    async fn copy(
        &self,
        link: &dyn PrimaryLink,
        record: &M,
        stored: &StoredRecord,
    ) -> Result<Option<String>, SyncFailure> {
        let target = &self.target;
        let primary_checksum = if M::Strategy::VERIFIABLE {
            link.verification(M::REPLICABLE_NAME, target.id)
                .await
                .map_err(|e| SyncFailure::new(e.to_string()))?
                .and_then(|v| v.succeeded_checksum().map(str::to_owned))
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
                return Ok(primary_checksum);
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
        Ok(primary_checksum)
    }
}

/// The guard of one sync attempt: the copy may become visible only while the registry row is
/// still `started` by this attempt, no change arrived meanwhile, and the generation copied is not
/// older than the one the row records.
struct AttemptGuard<'t, 'a, M: Replicable> {
    target: &'t ReplicationTarget<'a, M>,
    started_at: Option<chrono::DateTime<chrono::Utc>>,
    generation: i64,
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
                    return Ok(());
                }
                "it changed while the sync ran"
            }
            Some(_) => return Ok(()),
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
