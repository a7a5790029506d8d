//! Workers on several machines share one database and their clocks disagree: leases, claims
//! and heartbeats are measured on the database's clock, so a machine whose clock runs 40
//! seconds ahead takes no live lease, sees no live claim as abandoned and no row as due early.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use replicable_core::failure::SyncFailure;
use replicable_core::registry::StuckCutoffs;
use replicable_core::retry::RetryPolicy;
use replicable_core::storage::sql::SqlStore;
use replicable_core::storage::{RegistryStore, VerificationStore};
use replicable_core::testing::block_on;
use replicable_tests::{PostgresTarget, SqliteTarget};

const NAME: &str = "clock_item";

fn ahead() -> chrono::DateTime<Utc> {
    Utc::now() + chrono::Duration::seconds(40)
}

fn cutoffs(now: chrono::DateTime<Utc>, claim_timeout: i64) -> StuckCutoffs {
    StuckCutoffs {
        sync_started_before: now - chrono::Duration::hours(8),
        verification_started_before: now - chrono::Duration::hours(8),
        heartbeat_before: now - chrono::Duration::seconds(claim_timeout),
    }
}

/// Two machines: `good` with a correct clock and `fast` 40 seconds ahead, each with its own
/// pool on the same database.
async fn clocks_disagree(good: Arc<SqlStore>, fast: Arc<SqlStore>) {
    // The cursor lease.
    let ttl = Duration::from_secs(30);
    assert!(
        good.acquire_lease("log_cursor", "good", Utc::now(), ttl)
            .await
            .unwrap()
    );
    assert!(
        !fast
            .acquire_lease("log_cursor", "fast", ahead(), ttl)
            .await
            .unwrap(),
        "a live lease is not taken by a clock running ahead"
    );

    // A claim heartbeating is not abandoned in the eyes of a sweeper 40 seconds ahead.
    good.insert_pending(NAME, &[1], Utc::now()).await.unwrap();
    let claimed = good.claim_for_sync(NAME, Utc::now(), 1).await.unwrap();
    assert!(
        RegistryStore::heartbeat(&*good, NAME, 1, claimed[0].version, Utc::now())
            .await
            .unwrap()
    );
    let sweeper_now = RegistryStore::now(&*fast, ahead()).await.unwrap();
    assert!(
        (sweeper_now - Utc::now()).num_seconds().abs() < 5,
        "the store's time is the database's, not the caller's"
    );
    assert!(
        RegistryStore::stuck(&*fast, NAME, &cutoffs(sweeper_now, 30), 10)
            .await
            .unwrap()
            .is_empty(),
        "a live claim is not abandoned"
    );
    // The primary's verification claims too.
    VerificationStore::mark_pending(&*good, NAME, 1)
        .await
        .unwrap();
    let v = good.claim(NAME, Utc::now(), 1).await.unwrap();
    assert_eq!(v.len(), 1);
    let sweeper_now = VerificationStore::now(&*fast, ahead()).await.unwrap();
    assert!(
        VerificationStore::stuck(&*fast, NAME, &cutoffs(sweeper_now, 30), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // A failed row due in 20 seconds is not due early for a claimer 40 seconds ahead.
    good.insert_pending(NAME, &[2], Utc::now()).await.unwrap();
    let mut row = RegistryStore::get(&*good, NAME, 2).await.unwrap().unwrap();
    row.start(Utc::now()).unwrap();
    row.mark_failed(
        &SyncFailure::new("x"),
        Utc::now(),
        &RetryPolicy::default(),
        0,
    )
    .unwrap();
    row.retry_at = Some(Utc::now() + chrono::Duration::seconds(20));
    assert!(RegistryStore::update(&*good, NAME, &row).await.unwrap());
    assert!(
        fast.claim_for_sync(NAME, ahead(), 10)
            .await
            .unwrap()
            .is_empty(),
        "not due yet on the database's clock"
    );
}

#[test]
fn a_clock_running_ahead_takes_no_live_lease_and_fails_no_live_claim_on_sqlite() {
    block_on(async {
        let target = SqliteTarget::new();
        let good = SqlStore::open(&target.url).await.unwrap();
        let fast = SqlStore::open(&target.url).await.unwrap();
        clocks_disagree(good, fast).await;
    });
}

#[test]
fn a_clock_running_ahead_takes_no_live_lease_and_fails_no_live_claim_on_postgres() {
    let Some(target) = PostgresTarget::new() else {
        return;
    };
    block_on(async {
        let good = target.open().await;
        let fast = target.open().await;
        clocks_disagree(good, fast).await;
    });
}
