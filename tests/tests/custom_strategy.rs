//! A team writing its own strategy, from the README's "Writing a strategy" and the rustdoc of
//! `Strategy` / `SyncRequest`: a small key-value strategy (a text value per key, kept in the
//! site's object store, mutable), proven with the shared suite and run by the engine; then
//! deliberately broken variants of it, each run through every shared check, to see which checks
//! catch them.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use replicable_core::blob_key::object_path;
use replicable_core::engine::config::IdleBackoff;
use replicable_core::engine::{Engine, EngineConfig, EngineHandle};
use replicable_core::prelude::*;
use replicable_core::storage::StoredRecord;
use replicable_core::testing::Harness;
use replicable_core::{
    LinkError, Resource, ResourceError, ResourceTarget, Strategy, StrategyContext, SyncFailure,
    SyncRequest, find_replicable,
};
use replicable_strategies::sha256_hex;

// ---------------------------------------------------------------------------------------------
// The strategy
// ---------------------------------------------------------------------------------------------

/// How a variant of the strategy is broken (0: it is not).
const CORRECT: u8 = 0;
/// Writes the copy under its key, then asks `ensure_current` (and leaves the copy on `Err`).
const VISIBLE_BEFORE_ASKING: u8 = 1;
/// The checksum of a secondary's copy is not the primary's for the same bytes.
const CHECKSUM_DIFFERS_ON_SECONDARY: u8 = 2;
/// `remove` fails when there is no copy.
const REMOVE_FAILS_WHEN_MISSING: u8 = 3;
/// A value missing on the primary is an ordinary failure, never `missing_on_primary`.
const NEVER_MISSING_ON_PRIMARY: u8 = 4;
/// The copy becomes visible whatever `primary_checksum` says.
const IGNORES_PRIMARY_CHECKSUM: u8 = 5;
/// `sync` panics.
const PANICS_IN_SYNC: u8 = 6;

/// A key-value strategy: the resource is a short text value under a key in the site's object
/// store. Values change in place (`MUTABLE`), the checksum is the SHA-256 of the text.
#[derive(Debug, Default)]
pub struct KvStrategy<const FLAW: u8>;

pub type Kv = KvStrategy<CORRECT>;
pub type KvVisibleBeforeAsking = KvStrategy<VISIBLE_BEFORE_ASKING>;
pub type KvChecksumDiffers = KvStrategy<CHECKSUM_DIFFERS_ON_SECONDARY>;
pub type KvRemoveFails = KvStrategy<REMOVE_FAILS_WHEN_MISSING>;
pub type KvNeverMissing = KvStrategy<NEVER_MISSING_ON_PRIMARY>;
pub type KvIgnoresChecksum = KvStrategy<IGNORES_PRIMARY_CHECKSUM>;
pub type KvPanics = KvStrategy<PANICS_IN_SYNC>;

fn kv_key(resource: &Resource) -> Result<&str, ResourceError> {
    match resource {
        Resource::Blob { key } => Ok(key),
        other => Err(ResourceError::Refused {
            resource: other.to_string(),
            reason: "a key-value resource is a key".into(),
        }),
    }
}

fn io(target: &ResourceTarget<'_>, e: impl std::fmt::Display) -> ResourceError {
    ResourceError::Io {
        resource: target.to_string(),
        reason: e.to_string(),
    }
}

/// What a fixture's value is for `seed` (the app's write).
fn fixture_value(key: &str, seed: u64) -> String {
    format!("value {seed} of {key}")
}

async fn read_value(
    context: &StrategyContext,
    target: &ResourceTarget<'_>,
) -> Result<bytes::Bytes, ResourceError> {
    let path = object_path(kv_key(target.resource)?)?;
    match context.blob_store().get(&path).await {
        Ok(got) => got.bytes().await.map_err(|e| io(target, e)),
        Err(object_store::Error::NotFound { .. }) => Err(ResourceError::Missing {
            resource: target.to_string(),
        }),
        Err(e) => Err(io(target, e)),
    }
}

#[async_trait]
impl<const FLAW: u8> Strategy for KvStrategy<FLAW> {
    const NAME: &'static str = "KvStrategy";
    const DATA_TYPE: DataType = DataType::Blob;
    const MUTABLE: bool = true;

    fn validate(resource: &Resource) -> Result<(), ResourceError> {
        let key = kv_key(resource)?;
        if key.is_empty() || key.starts_with('/') || key.split('/').any(|s| s == ".." || s == ".") {
            return Err(ResourceError::Refused {
                resource: resource.to_string(),
                reason: "a key is a relative path without `.` or `..`".into(),
            });
        }
        object_path(key).map(|_| ())
    }

    async fn sync(&self, request: SyncRequest<'_>) -> Result<(), SyncFailure> {
        if FLAW == PANICS_IN_SYNC {
            panic!("the kv strategy fell over on {}", request.model_id);
        }
        let key = kv_key(request.resource).map_err(|e| SyncFailure::new(e.to_string()))?;
        let path = object_path(key).map_err(|e| SyncFailure::new(e.to_string()))?;
        let download = match request
            .primary
            .open_blob(request.replicable_name, request.model_id, key)
            .await
        {
            Ok(download) => download,
            Err(LinkError::NotFound { .. }) if FLAW != NEVER_MISSING_ON_PRIMARY => {
                return Err(SyncFailure::missing_on_primary(format!(
                    "value `{key}` is missing on the primary"
                )));
            }
            Err(e) => return Err(SyncFailure::new(e.to_string())),
        };
        // Staged in memory: values are small.
        let mut value = Vec::new();
        let mut stream = download.stream;
        while let Some(chunk) = stream.next().await {
            value.extend_from_slice(&chunk.map_err(|e| SyncFailure::new(e.to_string()))?);
        }
        let checksum = sha256_hex(&value);
        if FLAW != IGNORES_PRIMARY_CHECKSUM
            && let Some(expected) = request.primary_checksum
            && expected != checksum
        {
            return Err(SyncFailure::new(
                "Downloaded value checksum does not match the primary checksum",
            ));
        }
        let store = request.context.blob_store();
        if FLAW == VISIBLE_BEFORE_ASKING {
            store
                .put(&path, PutPayload::from(value))
                .await
                .map_err(|e| SyncFailure::new(e.to_string()))?;
            return request.ensure_current().await;
        }
        request.ensure_current().await?;
        store
            .put(&path, PutPayload::from(value))
            .await
            .map(|_| ())
            .map_err(|e| SyncFailure::new(e.to_string()))
    }

    async fn remove(
        &self,
        context: &StrategyContext,
        target: &ResourceTarget<'_>,
    ) -> Result<(), ResourceError> {
        let path = object_path(kv_key(target.resource)?)?;
        if FLAW == REMOVE_FAILS_WHEN_MISSING {
            // The bug of `std::fs::remove_file`: a copy that is not there is an error. (An
            // in-memory object store's `delete` does not report a missing object, so ask.)
            if let Err(object_store::Error::NotFound { .. }) =
                context.blob_store().head(&path).await
            {
                return Err(ResourceError::Missing {
                    resource: target.to_string(),
                });
            }
        }
        match context.blob_store().delete(&path).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) if FLAW != REMOVE_FAILS_WHEN_MISSING => {
                Ok(())
            }
            Err(object_store::Error::NotFound { .. }) => Err(ResourceError::Missing {
                resource: target.to_string(),
            }),
            Err(e) => Err(io(target, e)),
        }
    }

    async fn checksum(
        &self,
        context: &StrategyContext,
        target: &ResourceTarget<'_>,
        _record: Option<&StoredRecord>,
    ) -> Result<String, ResourceError> {
        let mut value = read_value(context, target).await?.to_vec();
        if FLAW == CHECKSUM_DIFFERS_ON_SECONDARY && context.site_name() != "primary" {
            // A bug of the kind "the checksum covers something site-specific".
            value.extend_from_slice(context.site_name().as_bytes());
        }
        Ok(sha256_hex(&value))
    }

    async fn create_fixture(
        &self,
        context: &StrategyContext,
        target: &ResourceTarget<'_>,
        _record: &serde_json::Value,
        seed: u64,
    ) -> Result<String, ResourceError> {
        let key = kv_key(target.resource)?;
        let value = fixture_value(key, seed);
        context
            .blob_store()
            .put(&object_path(key)?, PutPayload::from(value.clone()))
            .await
            .map_err(|e| io(target, e))?;
        Ok(sha256_hex(value.as_bytes()))
    }

    async fn corrupt(
        &self,
        context: &StrategyContext,
        target: &ResourceTarget<'_>,
    ) -> Result<(), ResourceError> {
        let path = object_path(kv_key(target.resource)?)?;
        context
            .blob_store()
            .put(
                &path,
                PutPayload::from_static(b"corrupted behind the framework's back"),
            )
            .await
            .map(|_| ())
            .map_err(|e| io(target, e))
    }
}

// ---------------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------------

/// The model of the correct strategy. `region` is not the resource: selective sync reads it.
#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(Kv)]
pub struct KvNote {
    #[replicable(id)]
    pub id: i64,
    #[replicable(blob)]
    pub key: String,
    pub region: String,
}

fn kv_note(id: i64) -> KvNote {
    KvNote {
        id,
        key: format!("kv/{id}"),
        region: if id % 2 == 0 { "eu" } else { "us" }.into(),
    }
}

macro_rules! broken_model {
    ($model:ident, $strategy:ty, $factory:ident) => {
        #[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
        #[replicator($strategy)]
        pub struct $model {
            #[replicable(id)]
            pub id: i64,
            #[replicable(blob)]
            pub key: String,
        }

        fn $factory(id: i64) -> $model {
            $model {
                id,
                key: format!("kv/{id}"),
            }
        }
    };
}

broken_model!(EarlyVisibleNote, KvVisibleBeforeAsking, early_visible_note);
broken_model!(
    ChecksumDiffersNote,
    KvChecksumDiffers,
    checksum_differs_note
);
broken_model!(RemoveFailsNote, KvRemoveFails, remove_fails_note);
broken_model!(NeverMissingNote, KvNeverMissing, never_missing_note);
broken_model!(
    IgnoresChecksumNote,
    KvIgnoresChecksum,
    ignores_checksum_note
);
broken_model!(PanickyNote, KvPanics, panicky_note);

// ---------------------------------------------------------------------------------------------
// 1. The correct strategy passes the shared suite (in memory, and over the HTTP link)
// ---------------------------------------------------------------------------------------------

replicable_core::replicator_test_suite!(KvNote, kv_note);
replicable_core::replicator_test_suite!(kv_suite_over_http: KvNote, kv_note, harness = Harness::<KvNote>::over_http);

// ---------------------------------------------------------------------------------------------
// 2. Each shared check, run one by one against a model, reporting which fail
// ---------------------------------------------------------------------------------------------

/// Runs one shared check on a fresh in-memory harness; `true` if it passed. A check that does
/// not end within a minute counts as failed (a hang is caught too).
fn check_passes<M, F, Fut>(factory: fn(i64) -> M, check: F) -> bool
where
    M: Replicable,
    F: FnOnce(Harness<M>) -> Fut,
    Fut: Future<Output = ()>,
{
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        replicable_core::testing::block_on(async move {
            let harness = Harness::<M>::in_memory(factory);
            tokio::time::timeout(Duration::from_secs(60), check(harness))
                .await
                .is_ok()
        })
    }));
    matches!(result, Ok(true))
}

/// The names of the shared checks that fail for `$model`, in the order of the macro's list.
macro_rules! failing_checks {
    ($model:ty, $factory:expr) => {
        failing_checks!(@ $model, $factory,
            model_is_registered_and_found_by_name,
            replicator_returns_its_model_record,
            created_event_is_published_with_its_payload,
            updated_event_is_published_or_refused_by_the_strategy,
            deleted_event_carries_the_resource,
            publishing_on_a_secondary_writes_nothing,
            consuming_created_syncs_and_the_checksum_matches,
            consuming_deleted_removes_data_and_registry_even_when_the_record_is_gone,
            out_of_scope_records_are_skipped,
            failed_sync_sets_state_retry_and_failure,
            a_resource_missing_on_the_primary_is_reported_as_missing,
            a_copy_that_differs_from_the_primary_checksum_never_becomes_visible,
            pending_mark_during_a_sync_makes_it_sync_again,
            primary_checksum_is_the_resource_checksum,
            secondary_verification_succeeds_on_an_equal_copy,
            secondary_verification_detects_corruption_and_resyncs,
            verification_waits_for_the_primary_checksum,
            checksum_succeeded_resets_secondary_verification,
            a_run_of_checksum_events_resets_every_verified_copy,
            a_verification_whose_record_changed_since_its_claim_records_nothing,
            counts_are_right,
            unknown_events_are_skipped_without_stopping_the_cursor,
            backfill_registers_records_without_events_and_removes_orphans,
            consuming_updated_syncs_the_new_generation,
            an_update_during_a_sync_sends_it_back_to_pending,
            an_overtaken_sync_never_makes_an_older_copy_visible,
            a_sync_resumed_after_a_newer_one_finished_discards_its_copy,
            a_record_deleted_during_its_sync_leaves_nothing_behind,
            a_copy_already_equal_to_the_primary_is_not_downloaded,
            an_event_for_a_record_being_synced_is_not_skipped,
            old_checksums_are_verified_again,
            records_without_a_verification_row_are_backfilled,
            a_paused_replicable_records_events_and_syncs_after_resume,
            backfill_turns_on_verification_of_copies_whose_checksum_event_was_missed,
            out_of_order_updates_leave_the_newer_generation,
            a_record_that_leaves_the_scope_is_removed,
            dataloss_lists_records_behind_and_by_how_much,
        )
    };
    (@ $model:ty, $factory:expr, $($check:ident),* $(,)?) => {{
        let mut failing: Vec<&'static str> = Vec::new();
        $(
            if !check_passes::<$model, _, _>($factory, |h| async move {
                replicable_core::testing::checks::$check::<$model>(&h).await
            }) {
                failing.push(stringify!($check));
            }
        )*
        eprintln!("{}: failing shared checks: {:?}", stringify!($model), failing);
        failing
    }};
}

/// The control: run one by one, every check passes for the correct strategy (so a failure
/// below is the flaw's, not the way the checks are run).
#[test]
fn every_check_run_one_by_one_passes_for_the_correct_strategy() {
    let failing = failing_checks!(KvNote, kv_note);
    assert!(failing.is_empty(), "{failing:?}");
}

/// README: a strategy that makes a copy visible before asking fails
/// `an_overtaken_sync_never_makes_an_older_copy_visible`.
#[test]
fn the_suite_catches_a_copy_made_visible_before_ensure_current() {
    let failing = failing_checks!(EarlyVisibleNote, early_visible_note);
    assert!(
        failing.contains(&"an_overtaken_sync_never_makes_an_older_copy_visible"),
        "{failing:?}"
    );
}

/// `checksum` "the same on both sides" (README, Writing a strategy).
#[test]
fn the_suite_catches_a_checksum_that_differs_between_primary_and_secondary() {
    let failing = failing_checks!(ChecksumDiffersNote, checksum_differs_note);
    assert!(
        failing.contains(&"consuming_created_syncs_and_the_checksum_matches")
            && failing.contains(&"secondary_verification_succeeds_on_an_equal_copy"),
        "{failing:?}"
    );
}

/// `remove` "(a missing copy is not an error)" (README, Writing a strategy).
#[test]
fn the_suite_and_a_missing_copy_whose_remove_fails() {
    let failing = failing_checks!(RemoveFailsNote, remove_fails_note);
    // Caught, by one check only (a record deleted while its first copy is in flight).
    assert_eq!(
        failing,
        ["a_record_deleted_during_its_sync_leaves_nothing_behind"],
        "{failing:?}"
    );
}

/// "A resource that does not exist on the primary is a SyncFailure::missing_on_primary"
/// (rustdoc of `Strategy::sync`).
#[test]
fn the_suite_and_a_strategy_that_never_reports_missing_on_primary() {
    let failing = failing_checks!(NeverMissingNote, never_missing_note);
    // The check that removes a resource while keeping its record catches it.
    assert_eq!(
        failing,
        vec!["a_resource_missing_on_the_primary_is_reported_as_missing"]
    );
}

/// "The copy must not become visible ... when primary_checksum is given, before its checksum
/// matches" (rustdoc of `Strategy::sync`).
#[test]
fn the_suite_and_a_strategy_that_ignores_primary_checksum() {
    let failing = failing_checks!(IgnoresChecksumNote, ignores_checksum_note);
    // The check that changes the primary's bytes after their checksum was stored catches it.
    assert_eq!(
        failing,
        vec!["a_copy_that_differs_from_the_primary_checksum_never_becomes_visible"]
    );
}

// ---------------------------------------------------------------------------------------------
// What the uncaught flaws do (so that "the suite passes" is shown to matter)
// ---------------------------------------------------------------------------------------------

fn memory_pair() -> (Site, Site) {
    let primary = Site::primary("primary").in_memory().build().unwrap();
    let secondary = Site::secondary(
        "secondary",
        Arc::new(InProcessPrimary::new(primary.clone())),
    )
    .in_memory()
    .build()
    .unwrap();
    (primary, secondary)
}

async fn catch_up(site: &Site) -> Result<usize, String> {
    replicable_core::log_cursor::catch_up(site, 50)
        .await
        .map(|r| r.consumed)
        .map_err(|e| e.to_string())
}

async fn row<M: Replicable>(site: &Site, id: i64) -> Option<replicable_core::RegistryRecord> {
    replicable_core::ReplicationTarget::<M>::new(site, id)
        .registry_record()
        .await
        .unwrap()
}

async fn value_on(site: &Site, key: &str) -> Option<String> {
    match site.blob_store().get(&object_path(key).unwrap()).await {
        Ok(got) => Some(String::from_utf8(got.bytes().await.unwrap().to_vec()).unwrap()),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => panic!("reading {key}: {e}"),
    }
}

async fn put_value(site: &Site, key: &str, value: &str) {
    site.blob_store()
        .put(
            &object_path(key).unwrap(),
            PutPayload::from(value.to_owned()),
        )
        .await
        .unwrap();
}

/// A record published without its value (the app's write of the value was lost): the correct
/// strategy's row is missing on primary (retried within 4 hours, not 1); the broken one is an
/// ordinary failure, the loop the README says is avoided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_missing_on_the_primary_is_flagged_only_by_the_strategy_that_reports_it() {
    let (primary, secondary) = memory_pair();
    let good = kv_note(1);
    good.replicator(&primary)
        .publish_created_event()
        .await
        .unwrap();
    let broken = never_missing_note(1);
    broken
        .replicator(&primary)
        .publish_created_event()
        .await
        .unwrap();
    catch_up(&secondary).await.unwrap();
    let good_row = row::<KvNote>(&secondary, 1).await.unwrap();
    assert_eq!(good_row.state, SyncState::Failed);
    assert!(good_row.missing_on_primary);
    let broken_row = row::<NeverMissingNote>(&secondary, 1).await.unwrap();
    assert_eq!(broken_row.state, SyncState::Failed);
    assert!(
        !broken_row.missing_on_primary,
        "the suite passed a strategy that never reports missing on primary"
    );
}

/// The primary's value changes without a publish after its checksum was computed: the correct
/// strategy refuses the copy; the one that ignores `primary_checksum` makes it visible and the
/// row is synced, with a copy whose checksum is not the primary's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_not_matching_the_primary_checksum_becomes_visible_only_with_the_broken_strategy() {
    let (primary, secondary) = memory_pair();
    let good = kv_note(1);
    let broken = ignores_checksum_note(1);
    put_value(&primary, &good.key, "original").await;
    good.replicator(&primary)
        .publish_created_event()
        .await
        .unwrap();
    good.replicator(&primary).verify().await.unwrap();
    let primary_checksum = good
        .replicator(&secondary)
        .target()
        .primary_checksum()
        .await
        .unwrap();
    assert_eq!(
        primary_checksum.as_deref(),
        Some(sha256_hex(b"original").as_str())
    );
    // Behind the framework's back (a torn write, a bug in the app): same key, other bytes.
    put_value(&primary, &good.key, "changed without an event").await;
    catch_up(&secondary).await.unwrap();
    let good_row = row::<KvNote>(&secondary, 1).await.unwrap();
    assert_eq!(good_row.state, SyncState::Failed);
    assert_eq!(
        value_on(&secondary, &good.key).await,
        None,
        "refused copy stays invisible"
    );
    // The two models share the key, so look at the broken one on its own secondary.
    let (primary2, secondary2) = memory_pair();
    put_value(&primary2, &broken.key, "original").await;
    broken
        .replicator(&primary2)
        .publish_created_event()
        .await
        .unwrap();
    broken.replicator(&primary2).verify().await.unwrap();
    put_value(&primary2, &broken.key, "changed without an event").await;
    catch_up(&secondary2).await.unwrap();
    let broken_row = row::<IgnoresChecksumNote>(&secondary2, 1).await.unwrap();
    assert_eq!(broken_row.state, SyncState::Synced);
    assert_eq!(
        value_on(&secondary2, &broken.key).await.as_deref(),
        Some("changed without an event"),
        "the suite passed a strategy that makes a copy visible against the primary's checksum"
    );
}

/// A deleted event for a record whose copy was never made (it failed, missing on the primary):
/// the correct strategy removes the row; the broken `remove` errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_record_never_copied_needs_remove_to_accept_a_missing_copy() {
    let (primary, secondary) = memory_pair();
    let good = kv_note(1);
    let broken = remove_fails_note(1);
    good.replicator(&primary)
        .publish_created_event()
        .await
        .unwrap();
    broken
        .replicator(&primary)
        .publish_created_event()
        .await
        .unwrap();
    catch_up(&secondary).await.unwrap();
    assert_eq!(
        row::<KvNote>(&secondary, 1).await.unwrap().state,
        SyncState::Failed
    );
    assert_eq!(
        row::<RemoveFailsNote>(&secondary, 1).await.unwrap().state,
        SyncState::Failed
    );
    good.replicator(&primary)
        .publish_deleted_event()
        .await
        .unwrap();
    broken
        .replicator(&primary)
        .publish_deleted_event()
        .await
        .unwrap();
    let caught_up = catch_up(&secondary).await;
    eprintln!("catch_up after the deletes: {caught_up:?}");
    assert!(
        row::<KvNote>(&secondary, 1).await.is_none(),
        "the correct strategy's row is removed"
    );
    let broken_row = row::<RemoveFailsNote>(&secondary, 1).await;
    eprintln!("broken strategy's row after its delete: {broken_row:?}");
    // The cursor goes on (the event counts as not consumed), and the broken strategy's row
    // stays behind, failed, for a record that no longer exists.
    assert_eq!(caught_up, Ok(1));
    assert_eq!(broken_row.map(|r| r.state), Some(SyncState::Failed));
}

// ---------------------------------------------------------------------------------------------
// 1b. The engine on a primary and a secondary (SQLite files, local blob directories)
// ---------------------------------------------------------------------------------------------

fn fast() -> EngineConfig {
    let periods = replicable_core::engine::config::Periods {
        stuck_sweep: Duration::from_millis(500),
        backfill: Duration::from_millis(500),
        ..Default::default()
    };
    EngineConfig {
        idle: IdleBackoff {
            min: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
        periods,
        ..EngineConfig::default()
    }
}

async fn start(site: &Site, names: &[&str]) -> EngineHandle {
    Engine::new(
        site.clone(),
        names
            .iter()
            .map(|n| find_replicable(n).unwrap().unwrap())
            .collect(),
    )
    .config(fast())
    .start()
    .await
    .unwrap()
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sqlite_pair(dir: &std::path::Path, scope: SelectiveSync) -> (Site, Site) {
    let db = |name: &str| format!("sqlite://{}", dir.join(format!("{name}.db")).display());
    let primary = Site::primary("primary")
        .database(
            replicable_core::storage::open(&db("primary"))
                .await
                .unwrap(),
        )
        .blob_directory(dir.join("primary-blobs"))
        .build()
        .unwrap();
    let secondary = Site::secondary(
        "secondary",
        Arc::new(InProcessPrimary::new(primary.clone())),
    )
    .database(
        replicable_core::storage::open(&db("secondary"))
            .await
            .unwrap(),
    )
    .blob_directory(dir.join("secondary-blobs"))
    .selective_sync(scope)
    .build()
    .unwrap();
    (primary, secondary)
}

async fn synced_and_verified(secondary: &Site, id: i64) -> bool {
    row::<KvNote>(secondary, id).await.is_some_and(|r| {
        r.state == SyncState::Synced
            && r.verification.verification_state == VerificationState::Succeeded
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_replicates_updates_deletes_and_verifies_with_the_custom_strategy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("primary-blobs")).unwrap();
    std::fs::create_dir_all(dir.path().join("secondary-blobs")).unwrap();
    let (primary, secondary) = sqlite_pair(dir.path(), SelectiveSync::all()).await;
    let notes: Vec<KvNote> = (1..=5).map(kv_note).collect();
    for note in &notes {
        put_value(&primary, &note.key, &format!("first value of {}", note.id)).await;
    }
    primary.publish_created_events(&notes).await.unwrap();
    let primary_engine = start(&primary, &["kv_note"]).await;
    let secondary_engine = start(&secondary, &["kv_note"]).await;

    wait_until("every note is synced and verified", async || {
        let mut all = true;
        for id in 1..=5 {
            all &= synced_and_verified(&secondary, id).await;
        }
        all
    })
    .await;
    for note in &notes {
        assert_eq!(
            value_on(&secondary, &note.key).await,
            Some(format!("first value of {}", note.id))
        );
    }

    // Update in place.
    put_value(&primary, &notes[0].key, "second value of 1").await;
    notes[0]
        .replicator(&primary)
        .publish_updated_event()
        .await
        .unwrap();
    wait_until("the update is copied and verified", async || {
        value_on(&secondary, &notes[0].key).await.as_deref() == Some("second value of 1")
            && synced_and_verified(&secondary, 1).await
            && row::<KvNote>(&secondary, 1)
                .await
                .unwrap()
                .synced_generation
                == Some(2)
    })
    .await;

    // Delete.
    notes[1]
        .replicator(&primary)
        .publish_deleted_event()
        .await
        .unwrap();
    wait_until("the delete removes row and value", async || {
        row::<KvNote>(&secondary, 2).await.is_none()
            && value_on(&secondary, &notes[1].key).await.is_none()
    })
    .await;

    // Corruption behind the framework's back is caught by verification and repaired.
    put_value(&secondary, &notes[2].key, "rotten").await;
    let outcome = notes[2].replicator(&secondary).verify().await.unwrap();
    assert!(
        matches!(outcome, VerifyOutcome::Mismatch { .. }),
        "{outcome:?}"
    );
    let failed = row::<KvNote>(&secondary, 3).await.unwrap();
    assert_eq!(failed.state, SyncState::Failed);
    assert!(failed.verification.checksum_mismatch);
    // As `resync --id 3` would: due at once rather than after the retry backoff.
    notes[2]
        .replicator(&secondary)
        .target()
        .mark_pending()
        .await
        .unwrap();
    secondary_engine.wake();
    wait_until("the corrupted copy is repaired", async || {
        value_on(&secondary, &notes[2].key).await.as_deref() == Some("first value of 3")
            && synced_and_verified(&secondary, 3).await
    })
    .await;

    let counts = secondary.registry_store().counts("kv_note").await.unwrap();
    assert_eq!((counts.registry, counts.synced, counts.verified), (4, 4, 4));
    secondary_engine.shutdown().await;
    primary_engine.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Selective sync, validate, a panicking strategy
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selective_sync_on_a_custom_model_skips_and_removes() {
    let (primary, _) = memory_pair();
    let secondary = Site::secondary(
        "eu-secondary",
        Arc::new(InProcessPrimary::new(primary.clone())),
    )
    .selective_sync(SelectiveSync::all().only::<KvNote>(|n| n.region == "eu"))
    .in_memory()
    .build()
    .unwrap();
    let eu = kv_note(2);
    let us = kv_note(3);
    assert_eq!((eu.region.as_str(), us.region.as_str()), ("eu", "us"));
    for note in [&eu, &us] {
        put_value(&primary, &note.key, "v").await;
        note.replicator(&primary)
            .publish_created_event()
            .await
            .unwrap();
    }
    catch_up(&secondary).await.unwrap();
    assert_eq!(
        row::<KvNote>(&secondary, 2).await.unwrap().state,
        SyncState::Synced
    );
    assert_eq!(value_on(&secondary, &eu.key).await.as_deref(), Some("v"));
    assert!(row::<KvNote>(&secondary, 3).await.is_none());
    assert_eq!(value_on(&secondary, &us.key).await, None);

    // The eu note moves to the us: it leaves the scope and is removed.
    let moved = KvNote {
        region: "us".into(),
        ..eu.clone()
    };
    moved
        .replicator(&primary)
        .publish_updated_event()
        .await
        .unwrap();
    catch_up(&secondary).await.unwrap();
    assert!(row::<KvNote>(&secondary, 2).await.is_none());
    assert_eq!(value_on(&secondary, &eu.key).await, None);

    // Backfill agrees: nothing in scope, nothing registered.
    replicable_core::backfill::backfill(
        &secondary,
        find_replicable("kv_note").unwrap().unwrap(),
        1000,
    )
    .await
    .unwrap();
    assert!(row::<KvNote>(&secondary, 3).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_refuses_a_bad_key_before_anything_is_published() {
    let (primary, _) = memory_pair();
    for key in ["../escape", "a/../../b", "/abs", "", "a/./b"] {
        let note = KvNote {
            id: 7,
            key: key.into(),
            region: "eu".into(),
        };
        let created = note.replicator(&primary).publish_created_event().await;
        assert!(
            matches!(created, Err(ReplicatorError::Resource { .. })),
            "key {key:?}: {created:?}"
        );
        let updated = note.replicator(&primary).publish_updated_event().await;
        assert!(
            matches!(updated, Err(ReplicatorError::Resource { .. })),
            "key {key:?}: {updated:?}"
        );
    }
    // A batch with one bad key writes nothing at all.
    let batch = vec![
        kv_note(1),
        KvNote {
            id: 2,
            key: "../x".into(),
            region: "eu".into(),
        },
    ];
    let refused = primary.publish_created_events(&batch).await;
    assert!(
        matches!(refused, Err(ReplicatorError::Resource { .. })),
        "{refused:?}"
    );
    assert_eq!(primary.event_log().last_event_id().await.unwrap(), None);
    assert!(primary.records().get("kv_note", 1).await.unwrap().is_none());
    assert!(primary.records().get("kv_note", 7).await.unwrap().is_none());
}

/// README: "A panicking strategy is recorded as that record's failure."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strategy_panicking_in_sync_is_that_records_failure_in_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("primary-blobs")).unwrap();
    std::fs::create_dir_all(dir.path().join("secondary-blobs")).unwrap();
    let (primary, secondary) = sqlite_pair(dir.path(), SelectiveSync::all()).await;
    let panicky = panicky_note(1);
    put_value(&primary, &panicky.key, "boom").await;
    panicky
        .replicator(&primary)
        .publish_created_event()
        .await
        .unwrap();
    // A healthy model on the same site keeps replicating.
    let fine = kv_note(1);
    put_value(&primary, "kv/healthy", "fine").await;
    let fine = KvNote {
        key: "kv/healthy".into(),
        ..fine
    };
    fine.replicator(&primary)
        .publish_created_event()
        .await
        .unwrap();
    let engine = start(&secondary, &["panicky_note", "kv_note"]).await;
    wait_until(
        "the panic is recorded as the record's failure",
        async || {
            row::<PanickyNote>(&secondary, 1)
                .await
                .is_some_and(|r| r.state == SyncState::Failed)
        },
    )
    .await;
    let r = row::<PanickyNote>(&secondary, 1).await.unwrap();
    let text = r.last_sync_failure.unwrap_or_default();
    assert!(
        text.contains("panicked") && text.contains("fell over"),
        "{text}"
    );
    assert!(r.retry_at.is_some() && r.retry_count >= 1);
    wait_until("the healthy record is synced", async || {
        row::<KvNote>(&secondary, 1)
            .await
            .is_some_and(|r| r.state == SyncState::Synced)
    })
    .await;
    assert_eq!(engine.in_flight(), 0);
    engine.shutdown().await;
}

/// The single-pass `log_cursor::catch_up` (README: "consumes and syncs inline") with a strategy
/// that panics: the panic is not recorded as the record's failure there; it reaches the caller.
#[test]
fn a_strategy_panicking_under_log_cursor_catch_up() {
    let (primary, secondary) = memory_pair();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        replicable_core::testing::block_on(async {
            let panicky = panicky_note(1);
            put_value(&primary, &panicky.key, "boom").await;
            panicky
                .replicator(&primary)
                .publish_created_event()
                .await
                .unwrap();
            catch_up(&secondary).await
        })
    }));
    let state = replicable_core::testing::block_on(async {
        row::<PanickyNote>(&secondary, 1)
            .await
            .map(|r| (r.state, r.last_sync_failure))
    });
    eprintln!(
        "catch_up: {:?}; row: {state:?}",
        outcome.as_ref().map_err(|_| "panicked")
    );
    assert!(outcome.is_err(), "catch_up returned {outcome:?}");
    assert_eq!(state.map(|s| s.0), Some(SyncState::Started));
}
