//! The shared checks. Each takes a [`Harness`] and panics with a message naming the record when
//! the replicator misbehaves.

use crate::descriptor::ReplicableDescriptor;
use crate::descriptor::{find_replicable, registered_replicables};
use crate::domain::error::ReplicatorError;
use crate::domain::event::{Event, EventKind, EventPayload, NewEvent};
use crate::domain::registry::{RegistryRecord, SyncState};
use crate::domain::resource::Resource;
use crate::domain::selective_sync::SelectiveSync;
use crate::domain::verification::{CHECKSUM_MISMATCH, VerificationState};
use crate::engine::backfill;
use crate::engine::cursor;
use crate::model::Replicable;
use crate::replicator::{ConsumeOutcome, ReplicatorExt, SyncOutcome, VerifyOutcome};
use crate::site::Site;
use crate::status::{primary_status, secondary_status};
use crate::strategy::Strategy;

use super::Harness;

fn name<M: Replicable>() -> &'static str {
    M::REPLICABLE_NAME
}

fn descriptor<M: Replicable>() -> &'static ReplicableDescriptor {
    find_replicable(name::<M>())
        .expect("no duplicate replicable names")
        .unwrap_or_else(|| panic!("replicable `{}` is not registered", name::<M>()))
}

async fn last_event(site: &Site) -> Event {
    let id = site
        .event_log()
        .last_event_id()
        .await
        .expect("reading the event log")
        .expect("an event was published");
    let raw = site
        .event_log()
        .read_after(id - 1, 1)
        .await
        .expect("reading the event log")
        .pop()
        .expect("the last event");
    Event::try_from(raw).expect("published events decode")
}

async fn secondary_checksum<M: Replicable>(
    site: &Site,
    record: &M,
) -> Result<String, ReplicatorError> {
    record.replicator(site).calculate_checksum().await
}

async fn catch_up(site: &Site) -> cursor::CursorReport {
    cursor::catch_up(site, cursor::DEFAULT_BATCH_SIZE)
        .await
        .expect("the log cursor runs")
}

async fn registry_row<M: Replicable>(site: &Site, id: i64) -> Option<RegistryRecord> {
    crate::replicator::ReplicationTarget::<M>::new(site, id)
        .registry_record()
        .await
        .expect("reading the registry")
}

async fn registry_state<M: Replicable>(site: &Site, id: i64) -> Option<SyncState> {
    registry_row::<M>(site, id).await.map(|row| row.state)
}

/// The model is in the registered replicables, found by its name, with its strategy's data type.
pub async fn model_is_registered_and_found_by_name<M: Replicable>(_: &Harness<M>) {
    let all = registered_replicables().expect("no duplicate replicable names");
    assert!(
        all.iter().any(|d| d.name == name::<M>()),
        "`{}` is not among the registered replicables {:?}",
        name::<M>(),
        all.iter().map(|d| d.name).collect::<Vec<_>>()
    );
    let found = descriptor::<M>();
    assert_eq!(found.type_name(), std::any::type_name::<M>());
    assert_eq!(found.data_type, M::Strategy::DATA_TYPE);
    assert_eq!(found.mutable, M::Strategy::MUTABLE);
}

/// A replicator made from a record returns that record.
pub async fn replicator_returns_its_model_record<M: Replicable>(h: &Harness<M>) {
    let record = h.build(11);
    let replicator = record.replicator(&h.primary);
    assert_eq!(replicator.model_record().replicable_id(), 11);
    assert_eq!(
        serde_json::to_value(replicator.model_record()).unwrap(),
        serde_json::to_value(&record).unwrap()
    );
    assert_eq!(replicator.target().id(), 11);
}

/// `created` on the primary appends one event with the id, the resource, the record and
/// generation 1.
pub async fn created_event_is_published_with_its_payload<M: Replicable>(h: &Harness<M>) {
    let (fixture, event_id) = h.create_and_publish(21).await;
    let event = last_event(&h.primary).await;
    assert_eq!(event.id, event_id);
    assert_eq!(event.replicable_name, name::<M>());
    assert_eq!(event.kind, EventKind::Created);
    assert_eq!(event.payload.model_id, 21);
    assert_eq!(event.payload.resource, fixture.record.resource());
    assert_eq!(event.payload.generation, Some(1));
    assert_eq!(
        event.payload.record,
        Some(serde_json::to_value(&fixture.record).unwrap())
    );
}

/// Mutable strategies publish `updated` with the next generation; immutable ones refuse it with
/// a typed error and write nothing.
pub async fn updated_event_is_published_or_refused_by_the_strategy<M: Replicable>(h: &Harness<M>) {
    let (fixture, created) = h.create_and_publish(31).await;
    let result = fixture
        .record
        .replicator(&h.primary)
        .publish_updated_event()
        .await;
    if M::Strategy::MUTABLE {
        let id = result.expect("publishing updated").expect("an event id");
        assert!(id > created);
        let event = last_event(&h.primary).await;
        assert_eq!(event.kind, EventKind::Updated);
        assert_eq!(event.payload.generation, Some(2));
    } else {
        match result {
            Err(ReplicatorError::UnsupportedEvent {
                event, replicable, ..
            }) => {
                assert_eq!(event, EventKind::Updated);
                assert_eq!(replicable, name::<M>());
            }
            other => panic!("updated on an immutable strategy must be refused, got {other:?}"),
        }
        let last = h.primary.event_log().last_event_id().await.unwrap();
        assert_eq!(last, Some(created), "a refused event must not be written");
    }
}

/// `deleted` carries the resource's location, and removes the record from the primary's
/// catalogue (a record source's row is deleted by the application, before it publishes).
pub async fn deleted_event_carries_the_resource<M: Replicable>(h: &Harness<M>) {
    let (fixture, _) = h.create_and_publish(41).await;
    h.delete_row(41).await;
    fixture
        .record
        .replicator(&h.primary)
        .publish_deleted_event()
        .await
        .expect("publishing deleted")
        .expect("an event id");
    let event = last_event(&h.primary).await;
    assert_eq!(event.kind, EventKind::Deleted);
    assert_eq!(event.payload.model_id, 41);
    assert_eq!(event.payload.resource, fixture.record.resource());
    assert!(
        h.primary
            .records()
            .get(name::<M>(), 41)
            .await
            .unwrap()
            .is_none()
    );
}

/// Publishing on a secondary writes nothing anywhere and returns `None`.
pub async fn publishing_on_a_secondary_writes_nothing<M: Replicable>(h: &Harness<M>) {
    let record = h.build(51);
    let replicator = record.replicator(&h.secondary);
    assert_eq!(replicator.publish_created_event().await.unwrap(), None);
    assert_eq!(replicator.publish_deleted_event().await.unwrap(), None);
    if M::Strategy::MUTABLE {
        assert_eq!(replicator.publish_updated_event().await.unwrap(), None);
    }
    assert_eq!(h.secondary.event_log().last_event_id().await.unwrap(), None);
    assert_eq!(h.primary.event_log().last_event_id().await.unwrap(), None);
    assert!(
        h.secondary
            .records()
            .get(name::<M>(), 51)
            .await
            .unwrap()
            .is_none()
    );
}

/// The log cursor consumes `created`: the registry row is synced and the secondary's copy has
/// the checksum of the primary's resource.
pub async fn consuming_created_syncs_and_the_checksum_matches<M: Replicable>(h: &Harness<M>) {
    let (fixture, event_id) = h.create_and_publish(61).await;
    let report = catch_up(&h.secondary).await;
    assert_eq!(
        (report.consumed, report.skipped, report.cursor),
        (1, 0, event_id)
    );
    assert_eq!(
        registry_state::<M>(&h.secondary, 61).await,
        Some(SyncState::Synced)
    );
    let local = secondary_checksum(&h.secondary, &fixture.record)
        .await
        .expect("the secondary has a copy");
    assert_eq!(
        local, fixture.checksum,
        "the copy differs from the primary's resource"
    );
    let registry = fixture
        .record
        .replicator(&h.secondary)
        .registry()
        .await
        .unwrap();
    assert!(registry.is_some(), "typed registry row");
}

/// Consuming `deleted` removes the local copy and the registry row, although the record no
/// longer exists on the primary.
pub async fn consuming_deleted_removes_data_and_registry_even_when_the_record_is_gone<
    M: Replicable,
>(
    h: &Harness<M>,
) {
    let (fixture, _) = h.create_and_publish(71).await;
    catch_up(&h.secondary).await;
    assert!(
        secondary_checksum(&h.secondary, &fixture.record)
            .await
            .is_ok()
    );
    h.delete_row(71).await;
    fixture
        .record
        .replicator(&h.primary)
        .publish_deleted_event()
        .await
        .unwrap();
    let gone = h.primary.records().get(name::<M>(), 71).await.unwrap();
    assert!(gone.is_none(), "the record is gone on the primary");
    let report = catch_up(&h.secondary).await;
    assert_eq!(report.consumed, 1);
    assert_eq!(registry_state::<M>(&h.secondary, 71).await, None);
    assert!(
        secondary_checksum(&h.secondary, &fixture.record)
            .await
            .is_err(),
        "the local copy must be removed"
    );
}

/// A secondary whose selective sync excludes a record neither registers nor copies it.
pub async fn out_of_scope_records_are_skipped<M: Replicable>(h: &Harness<M>) {
    let scoped =
        h.secondary_with_scope(SelectiveSync::all().only::<M>(|r| r.replicable_id() != 82));
    let (excluded, _) = h.create_and_publish(82).await;
    let (included, _) = h.create_and_publish(81).await;
    let report = catch_up(&scoped).await;
    assert_eq!(report.consumed, 2);
    assert_eq!(registry_state::<M>(&scoped, 82).await, None);
    assert!(secondary_checksum(&scoped, &excluded.record).await.is_err());
    assert_eq!(
        registry_state::<M>(&scoped, 81).await,
        Some(SyncState::Synced)
    );
    assert_eq!(
        secondary_checksum(&scoped, &included.record).await.unwrap(),
        included.checksum
    );
}

/// A sync that fails records `failed`, the retry count, a retry time inside the schedule's
/// window and the failure text; a second failure counts up.
pub async fn failed_sync_sets_state_retry_and_failure<M: Replicable>(h: &Harness<M>) {
    let (fixture, _) = h.create_and_publish(91).await;
    // The record vanishes from the primary without a `deleted` event.
    h.primary.records().delete(name::<M>(), 91).await.unwrap();
    let policy = *h.secondary.retry_policy();
    for attempt in 1..=2u32 {
        let before = h.secondary.now();
        let outcome = fixture
            .record
            .replicator(&h.secondary)
            .sync()
            .await
            .unwrap();
        let after = h.secondary.now();
        let SyncOutcome::Failed(failure) = outcome else {
            panic!("sync of a record missing on the primary must fail, got {outcome:?}");
        };
        assert!(failure.missing_on_primary);
        let row = crate::replicator::ReplicationTarget::<M>::new(&h.secondary, 91)
            .registry_record()
            .await
            .unwrap()
            .expect("a registry row");
        assert_eq!(row.state, SyncState::Failed);
        assert_eq!(row.retry_count, attempt);
        assert!(row.missing_on_primary);
        let text = row.last_sync_failure.as_deref().unwrap_or_default();
        assert!(
            text.contains("does not exist on the primary"),
            "failure text: {text:?}"
        );
        let (lo, hi) = policy.window(attempt, true);
        let retry_at = row.retry_at.expect("a retry time");
        assert!(
            retry_at >= before + chrono::Duration::from_std(lo).unwrap()
                && retry_at <= after + chrono::Duration::from_std(hi).unwrap(),
            "retry {attempt} at {retry_at} outside [{lo:?}, {hi:?}] from now"
        );
    }
}

/// A record the primary still has whose resource is gone (a blob or repository removed behind
/// the framework's back) is a failure *missing on the primary*: the strategy must say so
/// (`SyncFailure::missing_on_primary`), so that the row backs off on the longer cap instead of
/// being fetched again every hour. (A strategy whose resource is the record has nothing that
/// can go missing apart from it.)
pub async fn a_resource_missing_on_the_primary_is_reported_as_missing<M: Replicable>(
    h: &Harness<M>,
) {
    if M::Strategy::DATA_TYPE == crate::domain::resource::DataType::Database {
        return;
    }
    let (fixture, _) = h.create_and_publish(93).await;
    let resource = fixture.record.resource();
    let primary = crate::replicator::ReplicationTarget::<M>::new(&h.primary, 93);
    M::Strategy::default()
        .remove(
            h.primary.strategy_context(),
            &primary.resource_target(&resource),
        )
        .await
        .expect("removing the primary's resource");
    let outcome = fixture
        .record
        .replicator(&h.secondary)
        .sync()
        .await
        .unwrap();
    let SyncOutcome::Failed(failure) = outcome else {
        panic!("a sync whose resource is gone from the primary must fail, got {outcome:?}");
    };
    assert!(
        failure.missing_on_primary,
        "the strategy must report the resource missing on the primary: {failure:?}"
    );
    let row = crate::replicator::ReplicationTarget::<M>::new(&h.secondary, 93)
        .registry_record()
        .await
        .unwrap()
        .expect("a registry row");
    assert_eq!(row.state, SyncState::Failed);
    assert!(row.missing_on_primary, "{row:?}");
}

/// A resource whose bytes no longer match the primary's stored checksum (changed behind the
/// framework's back after its verification) is never made visible: the strategy compares
/// what it copied with `primary_checksum` before the copy replaces anything, and the sync
/// fails.
pub async fn a_copy_that_differs_from_the_primary_checksum_never_becomes_visible<M: Replicable>(
    h: &Harness<M>,
) {
    if M::Strategy::DATA_TYPE == crate::domain::resource::DataType::Database {
        // The record is the resource, and the copy is the record the primary serves.
        return;
    }
    let (fixture, _) = h.create_and_publish(94).await;
    fixture
        .record
        .replicator(&h.primary)
        .verify()
        .await
        .unwrap();
    let resource = fixture.record.resource();
    let primary = crate::replicator::ReplicationTarget::<M>::new(&h.primary, 94);
    M::Strategy::default()
        .corrupt(
            h.primary.strategy_context(),
            &primary.resource_target(&resource),
        )
        .await
        .expect("changing the primary's resource behind the framework's back");
    let outcome = fixture
        .record
        .replicator(&h.secondary)
        .sync()
        .await
        .unwrap();
    assert!(
        matches!(outcome, SyncOutcome::Failed(_)),
        "a copy that does not match the primary's checksum must fail its sync, got {outcome:?}"
    );
    let secondary = crate::replicator::ReplicationTarget::<M>::new(&h.secondary, 94);
    let local = M::Strategy::default()
        .checksum(
            h.secondary.strategy_context(),
            &secondary.resource_target(&resource),
            None,
        )
        .await;
    assert!(
        local.is_err(),
        "nothing may be visible on the secondary, found a copy with checksum {local:?}"
    );
}

/// A row marked pending while its sync runs (a resync, or an event for the state the sync
/// copies) does not start a second copy; the running sync completes it when the primary's
/// record is still at the generation it copied, so nothing is transferred twice.
pub async fn pending_mark_during_a_sync_makes_it_sync_again<M: Replicable>(h: &Harness<M>) {
    let (fixture, _) = h.create_and_publish(101).await;
    let replicator = fixture.record.replicator(&h.secondary);
    let attempt = replicator.start_sync().await.unwrap();
    assert_eq!(
        registry_state::<M>(&h.secondary, 101).await,
        Some(SyncState::Started)
    );
    replicator.target().mark_pending().await.unwrap();
    assert_eq!(
        registry_state::<M>(&h.secondary, 101).await,
        Some(SyncState::Started),
        "no second sync starts"
    );
    assert_eq!(
        attempt.run().await.unwrap(),
        SyncOutcome::Synced { generation: 1 }
    );
    let row = replicator
        .target()
        .registry_record()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.state, SyncState::Synced);
    assert!(!row.change_pending);
    assert_eq!(
        replicator.calculate_checksum().await.unwrap(),
        fixture.checksum
    );
}

/// The primary's checksum is the checksum of the resource (for blobs, the SHA-256 of the bytes),
/// and verifying on the primary stores it and publishes `checksum_succeeded`.
pub async fn primary_checksum_is_the_resource_checksum<M: Replicable>(h: &Harness<M>) {
    let (fixture, _) = h.create_and_publish(111).await;
    let replicator = fixture.record.replicator(&h.primary);
    assert_eq!(
        replicator.calculate_checksum().await.unwrap(),
        fixture.checksum
    );
    let outcome = replicator.verify().await.unwrap();
    assert_eq!(
        outcome,
        VerifyOutcome::Succeeded {
            checksum: fixture.checksum.clone()
        }
    );
    let state = replicator
        .target()
        .verification_record()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        state.verification.verification_state,
        VerificationState::Succeeded
    );
    assert_eq!(state.succeeded_checksum(), Some(fixture.checksum.as_str()));
    assert!(replicator.verification_state().await.unwrap().is_some());
    let event = last_event(&h.primary).await;
    assert_eq!(event.kind, EventKind::ChecksumSucceeded);
    assert_eq!(
        event.payload.checksum.as_deref(),
        Some(fixture.checksum.as_str())
    );
}

async fn synced_and_primary_verified<M: Replicable>(h: &Harness<M>, id: i64) -> super::Fixture<M> {
    let (fixture, _) = h.create_and_publish(id).await;
    fixture
        .record
        .replicator(&h.primary)
        .verify()
        .await
        .unwrap();
    catch_up(&h.secondary).await;
    assert_eq!(
        registry_state::<M>(&h.secondary, id).await,
        Some(SyncState::Synced)
    );
    fixture
}

/// A synced copy equal to the primary's verifies.
pub async fn secondary_verification_succeeds_on_an_equal_copy<M: Replicable>(h: &Harness<M>) {
    let fixture = synced_and_primary_verified(h, 121).await;
    let outcome = fixture
        .record
        .replicator(&h.secondary)
        .verify()
        .await
        .unwrap();
    assert_eq!(
        outcome,
        VerifyOutcome::Succeeded {
            checksum: fixture.checksum.clone()
        }
    );
    let row = crate::replicator::ReplicationTarget::<M>::new(&h.secondary, 121)
        .registry_record()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        row.verification.verification_state,
        VerificationState::Succeeded
    );
    assert_eq!(
        row.verification.verification_checksum,
        Some(fixture.checksum)
    );
    assert!(!row.verification.checksum_mismatch);
}

/// A copy damaged behind the framework's back fails verification with a mismatch, which fails
/// the registry row; the resync repairs it and it verifies again.
pub async fn secondary_verification_detects_corruption_and_resyncs<M: Replicable>(h: &Harness<M>) {
    let fixture = synced_and_primary_verified(h, 131).await;
    let resource = fixture.record.resource();
    let target = crate::replicator::ReplicationTarget::<M>::new(&h.secondary, 131);
    M::Strategy::default()
        .corrupt(
            h.secondary.strategy_context(),
            &target.resource_target(&resource),
        )
        .await
        .expect("corrupting the copy");
    let replicator = fixture.record.replicator(&h.secondary);
    let outcome = replicator.verify().await.unwrap();
    let VerifyOutcome::Mismatch { primary, local } = outcome else {
        panic!("a corrupted copy must not verify, got {outcome:?}");
    };
    assert_eq!(primary, fixture.checksum);
    assert_ne!(local, fixture.checksum);
    let row = replicator
        .target()
        .registry_record()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        row.verification.verification_state,
        VerificationState::Failed
    );
    assert!(row.verification.checksum_mismatch);
    assert_eq!(
        row.verification.verification_checksum_mismatched,
        Some(local)
    );
    assert_eq!(
        row.verification.verification_failure.as_deref(),
        Some(CHECKSUM_MISMATCH)
    );
    assert_eq!(
        row.state,
        SyncState::Failed,
        "a mismatch must fail the registry to resync"
    );
    assert!(row.last_sync_failure.unwrap().contains(CHECKSUM_MISMATCH));
    // The resync repairs the copy.
    let outcome = replicator.sync().await.unwrap();
    assert!(matches!(outcome, SyncOutcome::Synced { .. }), "{outcome:?}");
    assert_eq!(
        replicator.calculate_checksum().await.unwrap(),
        fixture.checksum
    );
    assert!(matches!(
        replicator.verify().await.unwrap(),
        VerifyOutcome::Succeeded { .. }
    ));
}

/// Until the primary has a checksum there is nothing to compare with: the secondary's
/// verification is disabled (no verification pass takes it, so such copies never starve
/// verifiable ones) and becomes pending when the primary's checksum succeeds.
pub async fn verification_waits_for_the_primary_checksum<M: Replicable>(h: &Harness<M>) {
    let (fixture, _) = h.create_and_publish(141).await;
    catch_up(&h.secondary).await;
    let replicator = fixture.record.replicator(&h.secondary);
    assert_eq!(
        replicator.verify().await.unwrap(),
        VerifyOutcome::WaitingForPrimary
    );
    let row = replicator
        .target()
        .registry_record()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        row.verification.verification_state,
        VerificationState::Disabled
    );
    assert_eq!(row.state, SyncState::Synced);
    let pass = crate::engine::workers::verify_due(&h.secondary, descriptor::<M>(), 100, 4)
        .await
        .unwrap();
    assert_eq!(
        pass.claimed, 0,
        "a copy waiting for the primary is not taken"
    );
    fixture
        .record
        .replicator(&h.primary)
        .verify()
        .await
        .unwrap();
    // The primary's `checksum_succeeded` turns verification on.
    catch_up(&h.secondary).await;
    let row = replicator
        .target()
        .registry_record()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        row.verification.verification_state,
        VerificationState::Pending
    );
    let pass = crate::engine::workers::verify_due(&h.secondary, descriptor::<M>(), 100, 4)
        .await
        .unwrap();
    assert_eq!((pass.claimed, pass.succeeded), (1, 1), "{pass:?}");
}

/// `checksum_succeeded` from the primary puts a verified copy back to verification pending.
pub async fn checksum_succeeded_resets_secondary_verification<M: Replicable>(h: &Harness<M>) {
    let fixture = synced_and_primary_verified(h, 151).await;
    let replicator = fixture.record.replicator(&h.secondary);
    replicator.verify().await.unwrap();
    let event = Event {
        id: 10_000,
        replicable_name: name::<M>().to_owned(),
        kind: EventKind::ChecksumSucceeded,
        payload: EventPayload {
            model_id: 151,
            resource: fixture.record.resource(),
            generation: None,
            record: None,
            checksum: Some(fixture.checksum.clone()),
        },
        created_at: h.secondary.now(),
    };
    assert_eq!(
        replicator.consume(&event).await.unwrap(),
        ConsumeOutcome::VerificationReset
    );
    let row = replicator
        .target()
        .registry_record()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        row.verification.verification_state,
        VerificationState::Pending
    );
}

/// A run of `checksum_succeeded` events (a primary that verified several records in a row),
/// read by the log cursor in one batch, puts every verified copy back to verification pending,
/// and the cursor moves past all of them.
pub async fn a_run_of_checksum_events_resets_every_verified_copy<M: Replicable>(h: &Harness<M>) {
    let ids = [171, 172, 173];
    for id in ids {
        h.create_and_publish(id).await;
    }
    catch_up(&h.secondary).await;
    for id in ids {
        h.build(id).replicator(&h.primary).verify().await.unwrap();
    }
    let last = h.primary.event_log().last_event_id().await.unwrap();
    for id in ids {
        // Verified against the checksum the events are about to announce.
        let outcome = h.build(id).replicator(&h.secondary).verify().await.unwrap();
        assert!(
            matches!(outcome, VerifyOutcome::Succeeded { .. }),
            "{id}: {outcome:?}"
        );
    }
    let report = catch_up(&h.secondary).await;
    assert_eq!(
        (report.consumed, report.skipped),
        (ids.len(), 0),
        "{report:?}"
    );
    assert_eq!(Some(report.cursor), last);
    for id in ids {
        let row = registry_row::<M>(&h.secondary, id).await.unwrap();
        assert_eq!(
            row.verification.verification_state,
            VerificationState::Pending,
            "{id}"
        );
    }
}

/// The inputs of a claimed verification batch are read when it is claimed; a change of the
/// record arriving before the check runs makes the check record nothing (its row has moved
/// on with the change), so no result stands against inputs older than the row.
pub async fn a_verification_whose_record_changed_since_its_claim_records_nothing<M: Replicable>(
    h: &Harness<M>,
) {
    let id = 181;
    synced_and_primary_verified(h, id).await;
    let registry = h.secondary.registry_store();
    let claimed = registry
        .claim_for_verification(name::<M>(), h.secondary.now(), 10)
        .await
        .unwrap();
    assert_eq!(
        claimed.iter().map(|row| row.model_id).collect::<Vec<_>>(),
        [id]
    );
    let claimed =
        crate::replicator::with_secondary_inputs(&h.secondary, name::<M>(), claimed).await;
    assert!(claimed[0].1.is_some(), "the batch's inputs were read");
    registry
        .mark_changed(name::<M>(), id, h.secondary.now(), h.secondary.now())
        .await
        .unwrap();
    for (row, inputs) in claimed {
        assert_eq!(
            descriptor::<M>()
                .run_claimed_secondary_verification_with(&h.secondary, row, inputs)
                .await
                .unwrap(),
            VerifyOutcome::ChangedDuringVerification
        );
    }
    let row = registry_row::<M>(&h.secondary, id).await.unwrap();
    assert_eq!(row.state, SyncState::Pending, "the change stands");
    assert_ne!(
        row.verification.verification_state,
        VerificationState::Succeeded
    );
}

/// Status counts on both sides follow the rows.
pub async fn counts_are_right<M: Replicable>(h: &Harness<M>) {
    for id in [161, 162] {
        synced_and_primary_verified(h, id).await;
        h.build(id).replicator(&h.secondary).verify().await.unwrap();
    }
    let (failing, _) = h.create_and_publish(163).await;
    h.primary.records().delete(name::<M>(), 163).await.unwrap();
    failing
        .record
        .replicator(&h.secondary)
        .sync()
        .await
        .unwrap();

    let primary = primary_status(&h.primary, name::<M>()).await.unwrap();
    assert_eq!(primary.count, 2);
    assert_eq!(primary.checksummed_count, 2);
    assert_eq!(primary.checksum_failed_count, 0);
    assert_eq!(primary.checksum_total_count, 3);

    let secondary = secondary_status(&h.secondary, name::<M>()).await.unwrap();
    assert_eq!(secondary.registry_count, 3);
    assert_eq!(secondary.synced_count, 2);
    assert_eq!(secondary.failed_count, 1);
    assert_eq!(secondary.verification_total_count, 2);
    assert_eq!(secondary.verified_count, 2);
    assert_eq!(secondary.verification_failed_count, 0);
    assert!((secondary.synced_percent - 200.0 / 3.0).abs() < 1e-9);
}

/// An event of a replicable this binary does not know is recorded as skipped, and the cursor
/// goes on to the events after it.
pub async fn unknown_events_are_skipped_without_stopping_the_cursor<M: Replicable>(h: &Harness<M>) {
    let stray = NewEvent {
        replicable_name: "no_such_replicable".into(),
        kind: EventKind::Created,
        payload: EventPayload {
            model_id: 1,
            resource: Resource::Record,
            generation: Some(1),
            record: None,
            checksum: None,
        },
    };
    h.primary
        .event_log()
        .append(&[stray], h.primary.now())
        .await
        .unwrap();
    let (_, last) = h.create_and_publish(171).await;
    let report = catch_up(&h.secondary).await;
    assert_eq!(
        (report.consumed, report.skipped, report.cursor),
        (1, 1, last)
    );
    let skipped = h
        .secondary
        .registry_store()
        .skipped_events(10)
        .await
        .unwrap();
    assert_eq!(skipped.len(), 1);
    assert!(
        skipped[0].reason.contains("no_such_replicable"),
        "{}",
        skipped[0].reason
    );
    assert_eq!(
        registry_state::<M>(&h.secondary, 171).await,
        Some(SyncState::Synced)
    );
}

/// Backfill registers records the secondary never heard of and removes rows (and copies) of
/// records that are gone.
pub async fn backfill_registers_records_without_events_and_removes_orphans<M: Replicable>(
    h: &Harness<M>,
) {
    // 181 and 182 were synced; 182 then vanishes without an event. 183..=187 were written
    // before replication started: in the catalogue but never consumed.
    for id in [181, 182] {
        h.create_and_publish(id).await;
    }
    catch_up(&h.secondary).await;
    let orphan = h.build(182);
    h.primary.records().delete(name::<M>(), 182).await.unwrap();
    for id in 183..=187 {
        h.create_and_publish(id).await;
    }
    let d = descriptor::<M>();
    let report = backfill::backfill(&h.secondary, d, 2).await.unwrap();
    assert_eq!(report.primary_ids, 6);
    assert_eq!(report.created, 5);
    assert_eq!(report.removed, 1);
    assert_eq!(registry_state::<M>(&h.secondary, 182).await, None);
    assert!(secondary_checksum(&h.secondary, &orphan).await.is_err());
    for id in 183..=187 {
        assert_eq!(
            registry_state::<M>(&h.secondary, id).await,
            Some(SyncState::Pending)
        );
    }
    let pass = crate::engine::workers::sync_due(&h.secondary, d, 100, 4)
        .await
        .unwrap();
    assert_eq!((pass.claimed, pass.succeeded), (5, 5));
}

/// An immutable strategy refuses `updated`; the mutable-only checks below assert that instead.
async fn refuses_updates<M: Replicable>(h: &Harness<M>, id: i64) -> bool {
    if M::Strategy::MUTABLE {
        return false;
    }
    let (fixture, _) = h.create_and_publish(id).await;
    let err = fixture
        .record
        .replicator(&h.primary)
        .publish_updated_event()
        .await;
    assert!(
        matches!(err, Err(ReplicatorError::UnsupportedEvent { .. })),
        "an immutable strategy must refuse updated: {err:?}"
    );
    true
}

async fn publish_updated<M: Replicable>(h: &Harness<M>, id: i64, seed: u64) -> super::Fixture<M> {
    let fixture = h.change(id, seed).await;
    fixture
        .record
        .replicator(&h.primary)
        .publish_updated_event()
        .await
        .expect("publishing updated")
        .expect("the primary publishes");
    fixture
}

/// Consuming `updated` syncs the changed resource and records the new generation.
pub async fn consuming_updated_syncs_the_new_generation<M: Replicable>(h: &Harness<M>) {
    if refuses_updates(h, 191).await {
        return;
    }
    h.create_and_publish(191).await;
    catch_up(&h.secondary).await;
    let changed = publish_updated(h, 191, 10_191).await;
    let report = catch_up(&h.secondary).await;
    assert_eq!(report.consumed, 1);
    let row = crate::replicator::ReplicationTarget::<M>::new(&h.secondary, 191)
        .registry_record()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.state, SyncState::Synced);
    assert_eq!(row.synced_generation, Some(2));
    assert_eq!(
        secondary_checksum(&h.secondary, &changed.record)
            .await
            .unwrap(),
        changed.checksum,
        "the secondary holds the changed resource"
    );
}

/// An `updated` event consumed while a sync of the record runs does not start a second copy:
/// the row stays `started` with the change noted, and the running sync, which reads the
/// record when it runs, leaves the new state (a sync that read the older state is overtaken:
/// see `an_overtaken_sync_never_makes_an_older_copy_visible`).
pub async fn an_update_during_a_sync_sends_it_back_to_pending<M: Replicable>(h: &Harness<M>) {
    if refuses_updates(h, 201).await {
        return;
    }
    let (fixture, _) = h.create_and_publish(201).await;
    let replicator = fixture.record.replicator(&h.secondary);
    let attempt = replicator.start_sync().await.unwrap();
    let changed = publish_updated(h, 201, 10_201).await;
    let event = last_event(&h.primary).await;
    assert_eq!(
        replicator.consume(&event).await.unwrap(),
        ConsumeOutcome::Pending,
        "one sync per record at a time"
    );
    assert_eq!(
        registry_state::<M>(&h.secondary, 201).await,
        Some(SyncState::Started)
    );
    // The running sync reads the record when it runs: it copies the new generation, which
    // carries the change, and completes the row.
    let outcome = attempt.run().await.unwrap();
    assert_eq!(outcome, SyncOutcome::Synced { generation: 2 });
    let row = replicator
        .target()
        .registry_record()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (row.state, row.synced_generation),
        (SyncState::Synced, Some(2))
    );
    assert_eq!(
        replicator.calculate_checksum().await.unwrap(),
        changed.checksum
    );
}

/// A sync overtaken by a change of its record never makes its older copy visible: held right
/// before its copy would become visible while the record changes (new bytes under the same
/// key, a new commit, a changed row), it discards its copy, the row goes pending, and the next
/// sync leaves the new state and the new generation.
pub async fn an_overtaken_sync_never_makes_an_older_copy_visible<M: Replicable>(h: &Harness<M>) {
    let hold = std::sync::Arc::new(super::HoldBeforeVisible::default());
    let secondary = h.secondary_observed(hold.clone());
    let (old, _) = h.create_and_publish(301).await;
    let replicator = old.record.replicator(&secondary);
    let attempt = replicator.start_sync().await.unwrap();
    hold.arm();
    let (outcome, changed) = tokio::join!(attempt.run(), async {
        hold.reached().await;
        assert!(
            secondary_checksum(&secondary, &old.record).await.is_err(),
            "{} {} became visible before its sync checked it was still current \
             (a strategy must call SyncRequest::ensure_current before making a copy visible)",
            name::<M>(),
            301
        );
        let changed = h.change_and_publish(301, 10_301).await;
        let event = last_event(&h.primary).await;
        let consumed = replicator.consume(&event).await.unwrap();
        assert_eq!(consumed, ConsumeOutcome::Pending, "no second copy starts");
        hold.release();
        changed
    });
    assert_eq!(outcome.unwrap(), SyncOutcome::ChangedDuringSync);
    assert_eq!(
        registry_state::<M>(&secondary, 301).await,
        Some(SyncState::Pending)
    );
    assert_eq!(
        replicator.sync().await.unwrap(),
        SyncOutcome::Synced { generation: 2 }
    );
    assert_eq!(
        secondary_checksum(&secondary, &changed.record)
            .await
            .unwrap(),
        changed.checksum,
        "the secondary holds the newer copy"
    );
}

/// A sync whose row was taken from it while it ran (its worker looked dead, the row was failed
/// and a newer sync completed) discards its copy when it resumes: the newer copy and the
/// registry's newer generation stay.
pub async fn a_sync_resumed_after_a_newer_one_finished_discards_its_copy<M: Replicable>(
    h: &Harness<M>,
) {
    let hold = std::sync::Arc::new(super::HoldBeforeVisible::default());
    let secondary = h.secondary_observed(hold.clone());
    let (old, _) = h.create_and_publish(311).await;
    let replicator = old.record.replicator(&secondary);
    let attempt = replicator.start_sync().await.unwrap();
    hold.arm();
    let (outcome, changed) = tokio::join!(attempt.run(), async {
        hold.reached().await;
        let changed = h.change_and_publish(311, 10_311).await;
        // What the sweep of abandoned work does to a worker that stopped heartbeating.
        let target = replicator.target();
        let mut row = target.registry_record().await.unwrap().unwrap();
        row.mark_failed(
            &crate::domain::failure::SyncFailure::new("Sync worker stopped responding"),
            secondary.now(),
            secondary.retry_policy(),
            0,
        )
        .unwrap();
        assert!(
            secondary
                .registry_store()
                .update(name::<M>(), &row)
                .await
                .unwrap()
        );
        assert_eq!(
            target.sync().await.unwrap(),
            SyncOutcome::Synced { generation: 2 },
            "the newer sync completes while the old one is held"
        );
        hold.release();
        changed
    });
    assert_eq!(outcome.unwrap(), SyncOutcome::ChangedDuringSync);
    let row = replicator
        .target()
        .registry_record()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (row.state, row.synced_generation),
        (SyncState::Synced, Some(2))
    );
    assert_eq!(
        secondary_checksum(&secondary, &changed.record)
            .await
            .unwrap(),
        changed.checksum,
        "the old sync did not put its copy back"
    );
}

/// A `deleted` event consumed while a copy is in flight ends with nothing left behind: no
/// registry row, no stored record, no resource.
pub async fn a_record_deleted_during_its_sync_leaves_nothing_behind<M: Replicable>(h: &Harness<M>) {
    let hold = std::sync::Arc::new(super::HoldBeforeVisible::default());
    let secondary = h.secondary_observed(hold.clone());
    let (fixture, _) = h.create_and_publish(321).await;
    let replicator = fixture.record.replicator(&secondary);
    let attempt = replicator.start_sync().await.unwrap();
    hold.arm();
    let (outcome, ()) = tokio::join!(attempt.run(), async {
        hold.reached().await;
        fixture
            .record
            .replicator(&h.primary)
            .publish_deleted_event()
            .await
            .unwrap();
        let event = last_event(&h.primary).await;
        assert_eq!(
            replicator.consume(&event).await.unwrap(),
            ConsumeOutcome::Removed
        );
        hold.release();
    });
    assert_eq!(outcome.unwrap(), SyncOutcome::ChangedDuringSync);
    assert_eq!(registry_state::<M>(&secondary, 321).await, None);
    assert!(
        secondary
            .records()
            .get(name::<M>(), 321)
            .await
            .unwrap()
            .is_none(),
        "no record left on the secondary"
    );
    assert!(
        secondary_checksum(&secondary, &fixture.record)
            .await
            .is_err(),
        "no resource left on the secondary"
    );
}

/// An event about a record whose sync a worker holds at that moment is consumed (the change
/// waits for the running sync), never recorded as skipped.
pub async fn an_event_for_a_record_being_synced_is_not_skipped<M: Replicable>(h: &Harness<M>) {
    let (fixture, _) = h.create_and_publish(341).await;
    catch_up(&h.secondary).await;
    let replicator = fixture.record.replicator(&h.secondary);
    let attempt = replicator.start_sync().await.unwrap();
    h.change_and_publish(341, 10_341).await;
    let report = catch_up(&h.secondary).await;
    assert_eq!((report.consumed, report.skipped), (1, 0), "{report:?}");
    assert!(
        h.secondary
            .registry_store()
            .skipped_events(10)
            .await
            .unwrap()
            .is_empty(),
        "no event was recorded as skipped"
    );
    // The running sync reads the changed record, so it carries the change.
    assert_eq!(
        attempt.run().await.unwrap(),
        SyncOutcome::Synced { generation: 2 }
    );
    assert_eq!(
        registry_state::<M>(&h.secondary, 341).await,
        Some(SyncState::Synced)
    );
}

/// Re-verification: succeeded checksums older than the interval go back to verification
/// pending, on the primary and on secondaries, and are verified again.
pub async fn old_checksums_are_verified_again<M: Replicable>(h: &Harness<M>) {
    if !M::Strategy::VERIFIABLE {
        return;
    }
    let fixture = synced_and_primary_verified(h, 351).await;
    let replicator = fixture.record.replicator(&h.secondary);
    let first = replicator.verify().await.unwrap();
    assert!(
        matches!(first, VerifyOutcome::Succeeded { .. }),
        "{first:?}"
    );
    let d = descriptor::<M>();
    let week = crate::engine::workers::DEFAULT_REVERIFICATION_INTERVAL;
    assert_eq!(
        crate::engine::workers::reverify_stale(&h.primary, d, week, 100)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        crate::engine::workers::reverify_stale(&h.secondary, d, week, 100)
            .await
            .unwrap(),
        0
    );
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let now = std::time::Duration::ZERO;
    assert!(
        crate::engine::workers::reverify_stale(&h.primary, d, now, 100)
            .await
            .unwrap()
            >= 1
    );
    assert!(
        crate::engine::workers::reverify_stale(&h.secondary, d, now, 100)
            .await
            .unwrap()
            >= 1
    );
    let primary_row = fixture
        .record
        .replicator(&h.primary)
        .target()
        .verification_record()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        primary_row.verification.verification_state,
        VerificationState::Pending
    );
    let row = replicator
        .target()
        .registry_record()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        row.verification.verification_state,
        VerificationState::Pending
    );
    assert!(matches!(
        fixture
            .record
            .replicator(&h.primary)
            .verify()
            .await
            .unwrap(),
        VerifyOutcome::Succeeded { .. }
    ));
    let again = replicator.verify().await.unwrap();
    assert!(
        matches!(again, VerifyOutcome::Succeeded { .. }),
        "{again:?}"
    );
}

/// Primary verification backfill: a record in the primary's catalogue with no verification row
/// (written before replication was on) gets one and is checksummed.
pub async fn records_without_a_verification_row_are_backfilled<M: Replicable>(h: &Harness<M>) {
    if !M::Strategy::VERIFIABLE {
        return;
    }
    let fixture = h.create(361).await;
    let body = serde_json::to_value(&fixture.record).unwrap();
    // A record source already has the row (`create` wrote it, as the application would).
    if h.primary.record_source(name::<M>()).is_none() {
        h.primary
            .records()
            .upsert(name::<M>(), 361, &body)
            .await
            .unwrap();
    }
    let d = descriptor::<M>();
    let created = crate::engine::backfill::backfill_primary_verification(&h.primary, d, 2)
        .await
        .unwrap();
    assert!(created >= 1, "{created}");
    let pass = crate::engine::workers::verify_due(&h.primary, d, 1000, 4)
        .await
        .unwrap();
    assert!(pass.succeeded >= 1, "{pass:?}");
    let row = fixture
        .record
        .replicator(&h.primary)
        .target()
        .verification_record()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.succeeded_checksum(), Some(fixture.checksum.as_str()));
}

/// Replication of one replicable turned off on a secondary: events are recorded (rows pending)
/// and nothing is synced; turned on again, the sync passes catch up.
pub async fn a_paused_replicable_records_events_and_syncs_after_resume<M: Replicable>(
    h: &Harness<M>,
) {
    let d = descriptor::<M>();
    crate::engine::workers::set_replication_enabled(&h.secondary, d, false)
        .await
        .unwrap();
    h.create_and_publish(371).await;
    let report = catch_up(&h.secondary).await;
    assert_eq!(report.skipped, 0);
    assert_eq!(
        registry_state::<M>(&h.secondary, 371).await,
        Some(SyncState::Pending)
    );
    let pass = crate::engine::workers::sync_due(&h.secondary, d, 10, 1)
        .await
        .unwrap();
    assert_eq!(pass.claimed, 0, "nothing is synced while paused");
    crate::engine::workers::set_replication_enabled(&h.secondary, d, true)
        .await
        .unwrap();
    let pass = crate::engine::workers::sync_due(&h.secondary, d, 10, 1)
        .await
        .unwrap();
    assert_eq!(pass.succeeded, 1, "{pass:?}");
    assert_eq!(
        registry_state::<M>(&h.secondary, 371).await,
        Some(SyncState::Synced)
    );
}

/// A copy waiting for the primary's checksum whose `checksum_succeeded` event was missed has its
/// verification turned on by backfill.
pub async fn backfill_turns_on_verification_of_copies_whose_checksum_event_was_missed<
    M: Replicable,
>(
    h: &Harness<M>,
) {
    if !M::Strategy::VERIFIABLE {
        return;
    }
    let (fixture, _) = h.create_and_publish(381).await;
    catch_up(&h.secondary).await;
    fixture
        .record
        .replicator(&h.primary)
        .verify()
        .await
        .unwrap();
    // The event is lost: the cursor moves past it without consuming it.
    let last = h
        .primary
        .event_log()
        .last_event_id()
        .await
        .unwrap()
        .unwrap();
    h.secondary
        .registry_store()
        .save_cursor(last)
        .await
        .unwrap();
    let replicator = fixture.record.replicator(&h.secondary);
    let row = replicator
        .target()
        .registry_record()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        row.verification.verification_state,
        VerificationState::Disabled
    );
    let report = backfill::backfill(&h.secondary, descriptor::<M>(), 100)
        .await
        .unwrap();
    assert_eq!(report.verification_enabled, 1, "{report:?}");
    let row = replicator
        .target()
        .registry_record()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        row.verification.verification_state,
        VerificationState::Pending
    );
    let again = backfill::backfill(&h.secondary, descriptor::<M>(), 100)
        .await
        .unwrap();
    assert_eq!(again.verification_enabled, 0);
}

/// A secondary that already holds a copy equal to the primary's (re-seeded from a backup)
/// records it as synced without transferring it.
pub async fn a_copy_already_equal_to_the_primary_is_not_downloaded<M: Replicable>(h: &Harness<M>) {
    let hold = std::sync::Arc::new(super::HoldBeforeVisible::default());
    let secondary = h.secondary_observed(hold.clone());
    let (fixture, _) = h.create_and_publish(331).await;
    fixture
        .record
        .replicator(&h.primary)
        .verify()
        .await
        .unwrap();
    // The backup: the same resource made on the secondary behind the framework's back.
    let body = serde_json::to_value(&fixture.record).unwrap();
    let resource = fixture.record.resource();
    let target = crate::replicator::ReplicationTarget::<M>::new(&secondary, 331);
    M::Strategy::default()
        .create_fixture(
            secondary.strategy_context(),
            &target.resource_target(&resource),
            &body,
            331,
        )
        .await
        .unwrap();
    if let Ok(Some(stored)) = h.primary.records().get(name::<M>(), 331).await {
        // Strategies whose resource is the record hold it in the record store.
        if M::Strategy::DATA_TYPE == crate::domain::resource::DataType::Database {
            secondary
                .records()
                .put_unless_older(name::<M>(), &stored)
                .await
                .unwrap();
        }
    }
    let replicator = fixture.record.replicator(&secondary);
    assert_eq!(
        replicator.sync().await.unwrap(),
        SyncOutcome::Synced { generation: 1 }
    );
    assert_eq!(hold.transfers(), 0, "nothing was transferred");
    let row = replicator
        .target()
        .registry_record()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        row.verification.verification_state,
        VerificationState::Pending
    );
    assert!(matches!(
        replicator.verify().await.unwrap(),
        VerifyOutcome::Succeeded { .. }
    ));
}

/// Two `updated` events consumed out of order: the older one is ignored and the newer
/// generation stays in place.
pub async fn out_of_order_updates_leave_the_newer_generation<M: Replicable>(h: &Harness<M>) {
    if refuses_updates(h, 211).await {
        return;
    }
    h.create_and_publish(211).await;
    catch_up(&h.secondary).await;
    publish_updated(h, 211, 10_211).await;
    let older = last_event(&h.primary).await;
    let newest = publish_updated(h, 211, 20_211).await;
    let newer = last_event(&h.primary).await;
    assert_eq!(
        (older.payload.generation, newer.payload.generation),
        (Some(2), Some(3))
    );
    let replicator = newest.record.replicator(&h.secondary);
    let outcome = replicator.consume(&newer).await.unwrap();
    assert!(
        matches!(
            outcome,
            ConsumeOutcome::Synced(SyncOutcome::Synced { generation: 3 })
        ),
        "{outcome:?}"
    );
    assert_eq!(
        replicator.consume(&older).await.unwrap(),
        ConsumeOutcome::AlreadyCurrent
    );
    let row = replicator
        .target()
        .registry_record()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (row.state, row.synced_generation),
        (SyncState::Synced, Some(3))
    );
    assert_eq!(
        replicator.calculate_checksum().await.unwrap(),
        newest.checksum
    );
}

/// A record that leaves a secondary's selective sync is removed from it, with its copy.
pub async fn a_record_that_leaves_the_scope_is_removed<M: Replicable>(h: &Harness<M>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let excluded = Arc::new(AtomicBool::new(false));
    let flag = excluded.clone();
    let scoped = h.secondary_with_scope(
        SelectiveSync::all()
            .only::<M>(move |r| !(r.replicable_id() == 221 && flag.load(Ordering::SeqCst))),
    );
    let (fixture, _) = h.create_and_publish(221).await;
    h.create_and_publish(222).await;
    catch_up(&scoped).await;
    assert_eq!(
        registry_state::<M>(&scoped, 221).await,
        Some(SyncState::Synced)
    );
    excluded.store(true, Ordering::SeqCst);
    let report = backfill::backfill(&scoped, descriptor::<M>(), 100)
        .await
        .unwrap();
    assert_eq!((report.out_of_scope, report.removed), (1, 0));
    assert_eq!(registry_state::<M>(&scoped, 221).await, None);
    assert!(
        secondary_checksum(&scoped, &fixture.record).await.is_err(),
        "the copy is removed"
    );
    assert_eq!(
        registry_state::<M>(&scoped, 222).await,
        Some(SyncState::Synced)
    );
}

/// The data-loss report lists the records whose copy is behind the primary, and by how many
/// generations.
pub async fn dataloss_lists_records_behind_and_by_how_much<M: Replicable>(h: &Harness<M>) {
    h.create_and_publish(231).await;
    h.create_and_publish(232).await;
    catch_up(&h.secondary).await;
    h.create_and_publish(233).await;
    h.secondary
        .registry_store()
        .mark_pending(name::<M>(), 233, h.secondary.now())
        .await
        .unwrap();
    let mut expected = vec![crate::status::BehindRecord {
        model_id: 233,
        secondary_generation: None,
        primary_generation: 1,
        behind_by: 1,
    }];
    if M::Strategy::MUTABLE {
        publish_updated(h, 232, 10_232).await;
        publish_updated(h, 232, 20_232).await;
        expected.insert(
            0,
            crate::status::BehindRecord {
                model_id: 232,
                secondary_generation: Some(1),
                primary_generation: 3,
                behind_by: 2,
            },
        );
    }
    let report = crate::status::dataloss(&h.secondary, name::<M>())
        .await
        .unwrap();
    assert_eq!(report, expected);
    catch_up(&h.secondary).await;
    crate::engine::workers::sync_due(&h.secondary, descriptor::<M>(), 10, 2)
        .await
        .unwrap();
    assert!(
        crate::status::dataloss(&h.secondary, name::<M>())
            .await
            .unwrap()
            .is_empty()
    );
}
