//! The shared replicator test suite: checks every replicator must pass, whatever its strategy.
//!
//! Run them all for a model with one line in a test file:
//!
//! ```ignore
//! replicable_core::replicator_test_suite!(PackageFile, |id| PackageFile { id, file_path: format!("pkg/{id}") });
//! ```
//!
//! Each check is also a `pub async fn` in [`checks`], taking a [`Harness`], so a backend or a
//! strategy can run them against its own sites.

pub mod checks;
mod harness;
pub mod storage;

pub use harness::{Fixture, Harness, HoldBeforeVisible};

/// Runs a future to completion on a fresh multi-threaded runtime (the suite's `#[test]`s use it,
/// so that users need no async test attribute of their own).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(future)
}

/// Expands into one `#[test]` per shared check for a model, in a module named
/// `replicator_test_suite` (or the name given first). By default the sites are in memory;
/// `harness = f` builds them with `f(factory)` instead (durable stores, a real object store),
/// which returns a `Harness<Model>`, or an `Option` of one where `None` skips the lane.
///
/// ```ignore
/// replicable_core::replicator_test_suite!(PackageFile, |id| PackageFile { id, file_path: format!("pkg/{id}") });
/// replicable_core::replicator_test_suite!(project_suite: Project, |id| Project { id, disk_path: format!("p/{id}.git") });
/// replicable_core::replicator_test_suite!(on_disk: PackageFile, |id| ..., harness = local_disk_harness);
/// ```
#[macro_export]
macro_rules! replicator_test_suite {
    ($module:ident : $model:ty, $factory:expr, harness = $make:expr $(,)?) => {
        $crate::replicator_test_suite!(@module $module, $model, $factory, $make,
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
        );
    };
    ($module:ident : $model:ty, $factory:expr $(,)?) => {
        $crate::replicator_test_suite!(
            $module: $model, $factory, harness = $crate::testing::Harness::<$model>::in_memory
        );
    };
    ($model:ty, $factory:expr $(,)?) => {
        $crate::replicator_test_suite!(replicator_test_suite: $model, $factory);
    };
    (@module $module:ident, $model:ty, $factory:expr, $make:expr, $($check:ident),* $(,)?) => {
        #[cfg(test)]
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            $(
                #[test]
                fn $check() {
                    $crate::testing::block_on(async {
                        let harness: ::std::option::Option<$crate::testing::Harness<$model>> =
                            ($make)($factory).into();
                        let Some(harness) = harness else { return };
                        $crate::testing::checks::$check(&harness).await;
                    });
                }
            )*
        }
    };
}
