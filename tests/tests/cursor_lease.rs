//! One log cursor per secondary at a time: a second cursor is refused while the first holds the
//! lease and changes nothing, takes over when the lease expires or is released, and the first is
//! refused once it lost the lease.

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStoreExt;
use replicable_core::log_cursor::LogCursor;
use replicable_core::prelude::*;
use replicable_core::site::Timeouts;
use replicable_core::storage::sql::SqlStore;
use replicable_strategies::BlobStrategy;
use replicable_tests::SqliteTarget;

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(BlobStrategy)]
pub struct Diff {
    #[replicable(id)]
    pub id: i64,
    #[replicable(blob)]
    pub key: String,
}

async fn publish(primary: &Site, id: i64) {
    let diff = Diff {
        id,
        key: format!("diffs/{id}"),
    };
    primary
        .blob_store()
        .put(
            &object_store::path::Path::from(diff.key.as_str()),
            b"diff".to_vec().into(),
        )
        .await
        .unwrap();
    diff.replicator(primary)
        .publish_created_event()
        .await
        .unwrap();
}

/// One process of the secondary replicating `primary`, tracking in `target`'s database with a
/// cursor lease of `lease` (several processes of one secondary share the database).
async fn process(primary: &Site, target: &SqliteTarget, lease: Duration) -> Site {
    Site::secondary(
        "secondary",
        Arc::new(InProcessPrimary::new(primary.clone())),
    )
    .database(SqlStore::open(&target.url).await.unwrap())
    .timeouts(Timeouts {
        cursor_lease: lease,
        ..Timeouts::default()
    })
    .build()
    .expect("a site")
}

#[test]
fn only_one_cursor_per_site_runs_and_an_expired_lease_is_taken_over() {
    replicable_core::testing::block_on(async {
        let target = SqliteTarget::new();
        // The lease is measured on the database's clock: a real, short lease.
        let lease = Duration::from_millis(1500);
        let primary = Site::primary("primary")
            .in_memory()
            .build()
            .expect("a site");
        // Two processes of the same secondary: separate handles on one tracking database.
        let one = process(&primary, &target, lease).await;
        let two = process(&primary, &target, lease).await;
        let a = LogCursor::new(&one).batch_size(2);
        let b = LogCursor::new(&two).batch_size(2);
        for id in 1..=5 {
            publish(&primary, id).await;
        }

        let report = a.process_batch().await.unwrap();
        assert_eq!((report.consumed, report.cursor), (2, 2));
        let refused = b.process_batch().await.unwrap_err();
        assert!(refused.lease_held, "{refused}");
        assert_eq!(
            two.registry_store().cursor().await.unwrap(),
            2,
            "b changed nothing"
        );

        // a stops renewing; after the lease runs out, b takes over where a left off.
        tokio::time::sleep(lease + Duration::from_millis(300)).await;
        let report = b.catch_up().await.unwrap();
        assert_eq!((report.consumed, report.cursor), (3, 5));
        let refused = a.process_batch().await.unwrap_err();
        assert!(refused.lease_held, "a lost the lease: {refused}");

        // Releasing hands over at once.
        b.release().await.unwrap();
        publish(&primary, 6).await;
        let report = a.catch_up().await.unwrap();
        assert_eq!((report.consumed, report.cursor), (1, 6));
        let status = replicable_core::status::secondary_status(&one, "diff")
            .await
            .unwrap();
        assert_eq!(status.synced_count, 6);
    });
}

/// A cursor whose lease was taken from it while it was still young (released behind its back,
/// as a database clock jumping ahead would expire it) and that goes on with a batch saves
/// nothing: the position stays the new holder's.
#[test]
fn a_cursor_that_lost_a_young_lease_saves_nothing() {
    replicable_core::testing::block_on(async {
        let target = SqliteTarget::new();
        // Long: the first cursor's lease stays young, so it does not renew before its batch.
        let lease = Duration::from_secs(120);
        let primary = Site::primary("primary")
            .in_memory()
            .build()
            .expect("a site");
        let one = process(&primary, &target, lease).await;
        let two = process(&primary, &target, lease).await;
        let a = LogCursor::new(&one).batch_size(2);
        let b = LogCursor::new(&two).batch_size(10);
        for id in 1..=3 {
            publish(&primary, id).await;
        }
        let report = a.process_batch().await.unwrap();
        assert_eq!(report.cursor, 2);

        one.registry_store()
            .release_lease(replicable_core::log_cursor::CURSOR_LEASE, a.holder())
            .await
            .unwrap();
        let report = b.process_batch().await.unwrap();
        assert_eq!((report.consumed, report.cursor), (1, 3));

        for id in 4..=5 {
            publish(&primary, id).await;
        }
        let refused = a.process_batch().await.unwrap_err();
        assert!(refused.lease_held, "a lost the lease: {refused}");
        assert_eq!(
            two.registry_store().cursor().await.unwrap(),
            3,
            "a moved nothing"
        );
        let report = b.process_batch().await.unwrap();
        assert_eq!((report.consumed, report.cursor), (2, 5));
    });
}

/// The engine's cursor (recording intent only) takes a burst of events in growing reads:
/// twice the last while they come back full, up to `MAX_BURST` batch sizes, and one batch
/// again after a short read. A cursor that syncs as it consumes reads one batch at a time.
#[test]
fn an_intent_only_cursor_reads_a_burst_in_growing_batches() {
    replicable_core::testing::block_on(async {
        let primary = Site::primary("primary")
            .in_memory()
            .build()
            .expect("a site");
        for id in 1..=100 {
            publish(&primary, id).await;
        }
        let lease = Timeouts::default().cursor_lease;
        let one = SqliteTarget::new();
        let intent_site = process(&primary, &one, lease).await;
        let intent = LogCursor::new(&intent_site).batch_size(2).intent_only(true);
        let mut reads = Vec::new();
        loop {
            let report = intent.process_batch().await.unwrap();
            reads.push(report.read);
            if report.cursor == 100 {
                break;
            }
        }
        let cap = 2 * replicable_core::log_cursor::MAX_BURST;
        assert_eq!(reads, vec![2, 4, 8, 16, cap, cap, cap, 10], "{reads:?}");
        publish(&primary, 101).await;
        publish(&primary, 102).await;
        publish(&primary, 103).await;
        assert_eq!(
            intent.process_batch().await.unwrap().read,
            2,
            "one batch again"
        );

        let two = SqliteTarget::new();
        let plain_site = process(&primary, &two, lease).await;
        let plain = LogCursor::new(&plain_site).batch_size(2);
        for _ in 0..4 {
            assert_eq!(plain.process_batch().await.unwrap().read, 2);
        }
    });
}
