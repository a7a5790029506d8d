//! The catalogue of replicables linked into the binary: each `#[derive(Replicable)]` registers a
//! descriptor with `inventory`, and [`register`] adds one by hand where inventory cannot see it
//! (a crate that is never referenced is not linked).

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::domain::error::ReplicatorError;
use crate::domain::event::Event;
use crate::domain::registry::RegistryRecord;
use crate::domain::resource::{DataType, Resource};
use crate::domain::verification::VerificationRecord;
use crate::model::Replicable;
use crate::replicator::{
    ConsumeOutcome, PrimaryCheck, ReplicationTarget, SecondaryInputs, SyncAttempt, SyncInputs,
    SyncOutcome, VerifyOutcome,
};
use crate::site::Site;
use crate::storage::StoredRecord;
use crate::strategy::Strategy;

type ConsumeFn =
    for<'a> fn(&'a Site, &'a Event) -> BoxFuture<'a, Result<ConsumeOutcome, ReplicatorError>>;
type ConsumeChecksumsFn =
    for<'a> fn(&'a Site, &'a [i64]) -> BoxFuture<'a, Result<u64, ReplicatorError>>;
type RecordChangesFn =
    for<'a> fn(&'a Site, &'a [Event]) -> BoxFuture<'a, Result<u64, ReplicatorError>>;
type SyncFn = for<'a> fn(&'a Site, i64) -> BoxFuture<'a, Result<SyncOutcome, ReplicatorError>>;
type RunClaimedSyncFn = for<'a> fn(
    &'a Site,
    RegistryRecord,
    Option<SyncInputs>,
) -> BoxFuture<'a, Result<SyncOutcome, ReplicatorError>>;
type VerifyFn = for<'a> fn(&'a Site, i64) -> BoxFuture<'a, Result<VerifyOutcome, ReplicatorError>>;
type RunClaimedPrimaryFn = for<'a> fn(
    &'a Site,
    VerificationRecord,
) -> BoxFuture<'a, Result<VerifyOutcome, ReplicatorError>>;
type CheckClaimedPrimaryFn = for<'a> fn(
    &'a Site,
    VerificationRecord,
    Option<Option<StoredRecord>>,
) -> BoxFuture<'a, Result<PrimaryCheck, ReplicatorError>>;
type RemoveOrphanFn = for<'a> fn(&'a Site, i64) -> BoxFuture<'a, Result<bool, ReplicatorError>>;
type RunClaimedSecondaryFn = for<'a> fn(
    &'a Site,
    RegistryRecord,
    Option<SecondaryInputs>,
) -> BoxFuture<'a, Result<VerifyOutcome, ReplicatorError>>;

/// What the runtime knows of one replicable without its type: its name, data type, and the
/// replicator's operations, so that events and work can be dispatched by name.
#[derive(Clone, Copy)]
pub struct ReplicableDescriptor {
    /// The replicable's name (`package_file`).
    pub name: &'static str,
    /// The data type.
    pub data_type: DataType,
    /// The strategy's name.
    pub strategy: &'static str,
    /// Whether `updated` events exist.
    pub mutable: bool,
    /// Whether the resource is verified.
    pub verifiable: bool,
    type_name: fn() -> &'static str,
    consume: ConsumeFn,
    record_intent: ConsumeFn,
    consume_checksums: ConsumeChecksumsFn,
    record_changes: RecordChangesFn,
    sync: SyncFn,
    run_claimed_sync: RunClaimedSyncFn,
    verify: VerifyFn,
    run_claimed_primary_verification: RunClaimedPrimaryFn,
    check_claimed_primary_verification: CheckClaimedPrimaryFn,
    run_claimed_secondary_verification: RunClaimedSecondaryFn,
    remove_orphan: RemoveOrphanFn,
    resource_of: ResourceOfFn,
}

/// Where the resource of a record (as its stored JSON body) lives.
type ResourceOfFn = fn(&serde_json::Value) -> Result<Resource, String>;

fn resource_of<M: Replicable>(body: &serde_json::Value) -> Result<Resource, String> {
    M::deserialize(body)
        .map(|record| record.resource())
        .map_err(|e| e.to_string())
}

impl std::fmt::Debug for ReplicableDescriptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicableDescriptor")
            .field("name", &self.name)
            .field("type", &(self.type_name)())
            .field("data_type", &self.data_type)
            .field("strategy", &self.strategy)
            .finish()
    }
}

fn consume<'a, M: Replicable>(
    site: &'a Site,
    event: &'a Event,
) -> BoxFuture<'a, Result<ConsumeOutcome, ReplicatorError>> {
    async move {
        ReplicationTarget::<M>::new(site, event.payload.model_id)
            .consume(event)
            .await
    }
    .boxed()
}

fn record_intent<'a, M: Replicable>(
    site: &'a Site,
    event: &'a Event,
) -> BoxFuture<'a, Result<ConsumeOutcome, ReplicatorError>> {
    async move {
        ReplicationTarget::<M>::new(site, event.payload.model_id)
            .record_intent(event)
            .await
    }
    .boxed()
}

fn consume_checksums<'a, M: Replicable>(
    site: &'a Site,
    ids: &'a [i64],
) -> BoxFuture<'a, Result<u64, ReplicatorError>> {
    async move {
        let Some((first, more)) = ids.split_first() else {
            return Ok(0);
        };
        ReplicationTarget::<M>::new(site, *first)
            .consume_checksums_succeeded(more)
            .await
    }
    .boxed()
}

fn record_changes<'a, M: Replicable>(
    site: &'a Site,
    events: &'a [Event],
) -> BoxFuture<'a, Result<u64, ReplicatorError>> {
    ReplicationTarget::<M>::record_changes(site, events).boxed()
}

fn sync<M: Replicable>(
    site: &Site,
    id: i64,
) -> BoxFuture<'_, Result<SyncOutcome, ReplicatorError>> {
    async move { ReplicationTarget::<M>::new(site, id).sync().await }.boxed()
}

fn run_claimed_sync<M: Replicable>(
    site: &Site,
    row: RegistryRecord,
    inputs: Option<SyncInputs>,
) -> BoxFuture<'_, Result<SyncOutcome, ReplicatorError>> {
    SyncAttempt::<M>::claimed_with(site, row, inputs)
        .run()
        .boxed()
}

fn verify<M: Replicable>(
    site: &Site,
    id: i64,
) -> BoxFuture<'_, Result<VerifyOutcome, ReplicatorError>> {
    async move { ReplicationTarget::<M>::new(site, id).verify().await }.boxed()
}

fn run_claimed_primary<M: Replicable>(
    site: &Site,
    row: VerificationRecord,
) -> BoxFuture<'_, Result<VerifyOutcome, ReplicatorError>> {
    async move {
        ReplicationTarget::<M>::new(site, row.model_id)
            .verify_claimed_primary(row)
            .await
    }
    .boxed()
}

fn check_claimed_primary<M: Replicable>(
    site: &Site,
    row: VerificationRecord,
    record: Option<Option<StoredRecord>>,
) -> BoxFuture<'_, Result<PrimaryCheck, ReplicatorError>> {
    async move {
        ReplicationTarget::<M>::new(site, row.model_id)
            .check_claimed_primary(row, record)
            .await
    }
    .boxed()
}

fn run_claimed_secondary<M: Replicable>(
    site: &Site,
    row: RegistryRecord,
    inputs: Option<SecondaryInputs>,
) -> BoxFuture<'_, Result<VerifyOutcome, ReplicatorError>> {
    async move {
        ReplicationTarget::<M>::new(site, row.model_id)
            .verify_claimed_secondary(row, inputs)
            .await
    }
    .boxed()
}

fn remove_orphan<M: Replicable>(
    site: &Site,
    id: i64,
) -> BoxFuture<'_, Result<bool, ReplicatorError>> {
    async move { ReplicationTarget::<M>::new(site, id).remove_orphan().await }.boxed()
}

impl ReplicableDescriptor {
    /// The descriptor of `M`.
    pub const fn of<M: Replicable>() -> Self {
        Self {
            name: M::REPLICABLE_NAME,
            data_type: <M::Strategy as Strategy>::DATA_TYPE,
            strategy: <M::Strategy as Strategy>::NAME,
            mutable: <M::Strategy as Strategy>::MUTABLE,
            verifiable: <M::Strategy as Strategy>::VERIFIABLE,
            type_name: std::any::type_name::<M>,
            consume: consume::<M>,
            record_intent: record_intent::<M>,
            consume_checksums: consume_checksums::<M>,
            record_changes: record_changes::<M>,
            sync: sync::<M>,
            run_claimed_sync: run_claimed_sync::<M>,
            verify: verify::<M>,
            run_claimed_primary_verification: run_claimed_primary::<M>,
            check_claimed_primary_verification: check_claimed_primary::<M>,
            run_claimed_secondary_verification: run_claimed_secondary::<M>,
            remove_orphan: remove_orphan::<M>,
            resource_of: resource_of::<M>,
        }
    }

    /// The Rust type of the model.
    pub fn type_name(&self) -> &'static str {
        (self.type_name)()
    }

    /// Consumes an event of this replicable on a secondary.
    pub fn consume<'a>(
        &self,
        site: &'a Site,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<ConsumeOutcome, ReplicatorError>> {
        (self.consume)(site, event)
    }

    /// Consumes an event of this replicable on a secondary recording intent only (see
    /// [`ReplicationTarget::record_intent`]).
    pub fn record_intent<'a>(
        &self,
        site: &'a Site,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<ConsumeOutcome, ReplicatorError>> {
        (self.record_intent)(site, event)
    }

    /// Consumes `checksum_succeeded` for the records `ids` on a secondary at once (what
    /// [`consume`](Self::consume) does for each, in one statement): the log cursor's run of
    /// them. Returns how many copies went back to verification pending.
    pub(crate) fn consume_checksums<'a>(
        &self,
        site: &'a Site,
        ids: &'a [i64],
    ) -> BoxFuture<'a, Result<u64, ReplicatorError>> {
        (self.consume_checksums)(site, ids)
    }

    /// Records `created` / `updated` events of this replicable on a secondary as intent at
    /// once (what [`record_intent`](Self::record_intent) does for each, in one write): the log
    /// cursor's run of them. No record may be named twice. Returns how many rows were marked.
    pub(crate) fn record_changes<'a>(
        &self,
        site: &'a Site,
        events: &'a [Event],
    ) -> BoxFuture<'a, Result<u64, ReplicatorError>> {
        (self.record_changes)(site, events)
    }

    /// Syncs one record on a secondary.
    pub fn sync<'a>(
        &self,
        site: &'a Site,
        id: i64,
    ) -> BoxFuture<'a, Result<SyncOutcome, ReplicatorError>> {
        (self.sync)(site, id)
    }

    /// Runs a sync whose row a worker claimed.
    pub fn run_claimed_sync<'a>(
        &self,
        site: &'a Site,
        row: RegistryRecord,
    ) -> BoxFuture<'a, Result<SyncOutcome, ReplicatorError>> {
        (self.run_claimed_sync)(site, row, None)
    }

    /// [`run_claimed_sync`](Self::run_claimed_sync) with the inputs read for the claimed batch
    /// ([`with_sync_inputs`](crate::replicator::with_sync_inputs)).
    pub(crate) fn run_claimed_sync_with<'a>(
        &self,
        site: &'a Site,
        row: RegistryRecord,
        inputs: Option<SyncInputs>,
    ) -> BoxFuture<'a, Result<SyncOutcome, ReplicatorError>> {
        (self.run_claimed_sync)(site, row, inputs)
    }

    /// Verifies one record (on the primary or a secondary).
    pub fn verify<'a>(
        &self,
        site: &'a Site,
        id: i64,
    ) -> BoxFuture<'a, Result<VerifyOutcome, ReplicatorError>> {
        (self.verify)(site, id)
    }

    /// Completes a primary verification row a worker claimed.
    pub fn run_claimed_primary_verification<'a>(
        &self,
        site: &'a Site,
        row: VerificationRecord,
    ) -> BoxFuture<'a, Result<VerifyOutcome, ReplicatorError>> {
        (self.run_claimed_primary_verification)(site, row)
    }

    /// Computes the checksum of a primary verification row a worker claimed, without writing
    /// it: the workers record a group of them together
    /// ([`complete_primary_verifications`](crate::replicator::complete_primary_verifications)).
    pub(crate) fn check_claimed_primary_verification<'a>(
        &self,
        site: &'a Site,
        row: VerificationRecord,
        record: Option<Option<StoredRecord>>,
    ) -> BoxFuture<'a, Result<PrimaryCheck, ReplicatorError>> {
        (self.check_claimed_primary_verification)(site, row, record)
    }

    /// Completes a secondary registry row whose verification a worker claimed.
    pub fn run_claimed_secondary_verification<'a>(
        &self,
        site: &'a Site,
        row: RegistryRecord,
    ) -> BoxFuture<'a, Result<VerifyOutcome, ReplicatorError>> {
        (self.run_claimed_secondary_verification)(site, row, None)
    }

    /// [`run_claimed_secondary_verification`](Self::run_claimed_secondary_verification) with
    /// the inputs read for the claimed batch
    /// ([`with_secondary_inputs`](crate::replicator::with_secondary_inputs)).
    pub(crate) fn run_claimed_secondary_verification_with<'a>(
        &self,
        site: &'a Site,
        row: RegistryRecord,
        inputs: Option<SecondaryInputs>,
    ) -> BoxFuture<'a, Result<VerifyOutcome, ReplicatorError>> {
        (self.run_claimed_secondary_verification)(site, row, inputs)
    }

    /// Where the resource of a record lives, from the record's stored body (the primary's API
    /// checks that a requested blob key or repository path is the record's own). An error
    /// says why the body is not a record of this replicable.
    pub fn resource_of(&self, body: &serde_json::Value) -> Result<Resource, String> {
        (self.resource_of)(body)
    }

    /// Removes the local copy and registry row of a record that is gone from the primary.
    pub fn remove_orphan<'a>(
        &self,
        site: &'a Site,
        id: i64,
    ) -> BoxFuture<'a, Result<bool, ReplicatorError>> {
        (self.remove_orphan)(site, id)
    }
}

inventory::collect!(ReplicableDescriptor);

static EXPLICIT: Mutex<Vec<&'static ReplicableDescriptor>> = Mutex::new(Vec::new());

/// Registers `M` by hand. Needed only when the crate defining `M` is linked but never referenced
/// (inventory then sees nothing); registering twice is harmless.
pub fn register<M: Replicable>() {
    let mut explicit = EXPLICIT.lock().unwrap_or_else(PoisonError::into_inner);
    let type_name = std::any::type_name::<M>();
    if !explicit.iter().any(|d| d.type_name() == type_name) {
        explicit.push(Box::leak(Box::new(ReplicableDescriptor::of::<M>())));
    }
}

/// Two models claim the same replicable name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "replicable name `{name}` is used by both {first} and {second}: give one of them #[replicable(name = \"...\")]"
)]
pub struct DuplicateReplicable {
    /// The name.
    pub name: &'static str,
    /// One model.
    pub first: &'static str,
    /// The other model.
    pub second: &'static str,
}

fn collect() -> Result<BTreeMap<&'static str, &'static ReplicableDescriptor>, DuplicateReplicable> {
    let explicit = EXPLICIT.lock().unwrap_or_else(PoisonError::into_inner);
    let mut by_name: BTreeMap<&'static str, &'static ReplicableDescriptor> = BTreeMap::new();
    for descriptor in inventory::iter::<ReplicableDescriptor>
        .into_iter()
        .chain(explicit.iter().copied())
    {
        match by_name.get(descriptor.name) {
            Some(existing) if existing.type_name() != descriptor.type_name() => {
                return Err(DuplicateReplicable {
                    name: descriptor.name,
                    first: existing.type_name(),
                    second: descriptor.type_name(),
                });
            }
            Some(_) => {}
            None => {
                by_name.insert(descriptor.name, descriptor);
            }
        }
    }
    Ok(by_name)
}

/// Every replicable linked into the binary (or registered by hand), sorted by name.
///
/// Fails if two models claim the same name.
pub fn registered_replicables() -> Result<Vec<&'static ReplicableDescriptor>, DuplicateReplicable> {
    Ok(collect()?.into_values().collect())
}

/// The replicable called `name`.
pub fn find_replicable(
    name: &str,
) -> Result<Option<&'static ReplicableDescriptor>, DuplicateReplicable> {
    Ok(collect()?.get(name).copied())
}
