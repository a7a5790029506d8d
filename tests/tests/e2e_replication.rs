//! End to end, in one process: the engines of a primary and a secondary replicate the example
//! application (package files, projects, CI settings) and verify it; and a primary that
//! becomes unreachable for a while is backed off from, then fully caught up with. On SQLite
//! files and on PostgreSQL schemas.

mod e2e_support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use e2e_support::fault_link::FaultLink;
use e2e_support::{Lane, locations};
use replicable_core::SyncState;
use replicable_examples::geo_demo::seed::SeedPlan;
use replicable_examples::geo_demo::sites::SecondaryOptions;

async fn thousand_records(lane: Lane) {
    let dir = tempfile::tempdir().unwrap();
    let Some((primary_at, secondary_at)) = locations(dir.path(), lane) else {
        return;
    };
    let plan = SeedPlan::records(1000);
    assert_eq!(plan.total(), 1000);
    let primary = e2e_support::seeded_primary(&primary_at, plan).await;
    let secondary = e2e_support::secondary(
        &secondary_at,
        &primary,
        SecondaryOptions::new(e2e_support::timeouts()),
    )
    .await;
    let started = Instant::now();
    let primary_engine = e2e_support::engine(&primary).await;
    let secondary_engine = e2e_support::engine(&secondary).await;
    let rows = e2e_support::wait_settled(&primary, &secondary, Duration::from_secs(300)).await;
    eprintln!(
        "{lane:?}: 1,000 records synced and verified in {:.1?}",
        started.elapsed()
    );
    let expected = [
        ("package_file", u64::from(plan.blobs)),
        ("project", u64::from(plan.repositories)),
        ("ci_setting", u64::from(plan.rows)),
    ];
    for (row, (name, count)) in rows.iter().zip(expected) {
        assert_eq!(row.name, name);
        assert_eq!(
            (
                row.primary,
                row.checksummed,
                row.registry,
                row.synced,
                row.verified
            ),
            (count, count, count, count, count),
            "{name}"
        );
        assert_eq!(
            (
                row.pending,
                row.started,
                row.failed,
                row.verification_failed
            ),
            (0, 0, 0, 0),
            "{name}"
        );
    }
    secondary_engine.shutdown().await;
    primary_engine.shutdown().await;
    e2e_support::assert_complete(&primary, &secondary, &secondary_at).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_thousand_records_sqlite() {
    thousand_records(Lane::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_thousand_records_postgres() {
    thousand_records(Lane::Postgres).await;
}

async fn primary_unreachable(lane: Lane) {
    let dir = tempfile::tempdir().unwrap();
    let Some((primary_at, secondary_at)) = locations(dir.path(), lane) else {
        return;
    };
    let plan = SeedPlan::records(200);
    let primary = e2e_support::seeded_primary(&primary_at, plan).await;
    let link = Arc::new(std::sync::Mutex::new(
        None::<(
            Arc<std::sync::atomic::AtomicBool>,
            Arc<std::sync::atomic::AtomicU64>,
        )>,
    ));
    let mut options = SecondaryOptions::new(e2e_support::timeouts());
    let slot = link.clone();
    options.wrap_link = Box::new(move |inner| {
        // Transfers take 20 ms, so that the outage starts with syncs in flight.
        let faulty = FaultLink::new(inner, Duration::from_millis(20));
        *slot.lock().unwrap() = Some((faulty.down.clone(), faulty.refused.clone()));
        Arc::new(faulty)
    });
    let secondary = e2e_support::secondary(&secondary_at, &primary, options).await;
    let (down, refused) = link.lock().unwrap().clone().expect("the link was wrapped");
    let primary_engine = e2e_support::engine(&primary).await;
    let secondary_engine = e2e_support::engine(&secondary).await;

    // Some records arrive, then the primary becomes unreachable mid-sync.
    e2e_support::wait_synced_at_least(&secondary, 20, Duration::from_secs(60)).await;
    down.store(true, Ordering::SeqCst);
    let outage = Duration::from_secs(4);
    tokio::time::sleep(outage).await;
    let refused_during = refused.load(Ordering::SeqCst);
    let failed = e2e_support::count_state(&secondary, SyncState::Failed).await;
    let synced_during = e2e_support::count_state(&secondary, SyncState::Synced).await;
    eprintln!(
        "{lane:?}: during a {outage:?} outage: {refused_during} requests refused, {failed} rows failed with a retry time, {synced_during} synced"
    );
    // Backoff: failed rows wait for their retry time and idle loops back off, so the outage
    // costs a bounded number of requests, not a busy loop.
    assert!(failed > 0, "the outage failed no sync");
    assert!(
        refused_during <= plan.total() * 2 + 200,
        "{refused_during} requests in a {outage:?} outage: not backing off"
    );
    let refused_before = refused.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let refused_later = refused.load(Ordering::SeqCst) - refused_before;
    assert!(
        refused_later <= 100,
        "{refused_later} requests in 2 s while down: not backing off"
    );

    // The primary is back: everything is caught up (failed rows on their retry schedule,
    // 16 to 74 s after the first failure).
    down.store(false, Ordering::SeqCst);
    let back = Instant::now();
    e2e_support::wait_settled(&primary, &secondary, Duration::from_secs(180)).await;
    eprintln!(
        "{lane:?}: fully recovered {:.1?} after the primary came back",
        back.elapsed()
    );
    secondary_engine.shutdown().await;
    primary_engine.shutdown().await;
    e2e_support::assert_complete(&primary, &secondary, &secondary_at).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_primary_unreachable_then_recovery_sqlite() {
    primary_unreachable(Lane::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_primary_unreachable_then_recovery_postgres() {
    primary_unreachable(Lane::Postgres).await;
}
