//! The replicator: publishes a record's events on the primary and consumes them, syncs and
//! verifies on secondaries.
//!
//! One file per operation: publishing in `publish.rs`, consuming events in `consume.rs`,
//! syncing (with [`SyncAttempt`]) in `sync.rs`, verifying in `verify.rs`. The shared types
//! ([`Replicator`], [`ReplicatorExt`], [`ReplicationTarget`], the outcomes) and helpers are here.

use std::marker::PhantomData;

use tracing::{debug, warn};

use crate::domain::error::{LinkError, ReplicatorError, ResourceError, StoreError};
use crate::domain::event::{Event, EventId, EventKind};
use crate::domain::failure::SyncFailure;
use crate::domain::registry::RegistryRecord;
use crate::domain::resource::Resource;
use crate::domain::verification::VerificationRecord;
use crate::link::PrimaryLink;
use crate::model::Replicable;
use crate::site::Site;
use crate::storage::StoredRecord;
use crate::strategy::{ResourceTarget, Strategy};

mod consume;
mod publish;
mod sync;
mod verify;

pub use sync::SyncAttempt;
pub(crate) use sync::{SyncInputs, with_sync_inputs};
pub(crate) use verify::{
    PrimaryCheck, SecondaryInputs, complete_primary_verifications, with_primary_records,
    with_secondary_inputs,
};

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

    async fn update_verification(&self, row: &VerificationRecord) -> Result<bool, ReplicatorError> {
        self.site
            .verification_store()
            .update(M::REPLICABLE_NAME, row)
            .await
            .map_err(|e| self.store_error(e))
    }
}

/// `items` by the id `id_of` names.
fn by_id<T>(items: Vec<T>, id_of: impl Fn(&T) -> i64) -> std::collections::HashMap<i64, T> {
    items.into_iter().map(|item| (id_of(&item), item)).collect()
}
