//! A Geo-savvy audit: tests written from GitLab Geo's published self-service framework
//! behaviour and from `reference/SEMANTICS.md`, statement by statement, against the framework's
//! public API. Each test names the statement it checks.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use replicable_core::clock::{Clock, ManualClock};
use replicable_core::prelude::*;
use replicable_strategies::{BlobStrategy, DatabaseStrategy};
use replicable_tests::{descriptor as desc, get_blob, put_blob};

type R = Result<(), Box<dyn std::error::Error>>;

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(BlobStrategy)]
pub struct PackageFile {
    #[replicable(id)]
    pub id: i64,
    #[replicable(blob)]
    pub file_path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(DatabaseStrategy)]
#[replicable(name = "ci_setting")]
pub struct CiSetting {
    #[replicable(id)]
    pub id: i64,
    pub key: String,
    pub value: String,
}

// ---------------------------------------------------------------- helpers

fn pf(id: i64, key: &str) -> PackageFile {
    PackageFile {
        id,
        file_path: key.to_owned(),
    }
}

fn ci(id: i64, value: &str) -> CiSetting {
    CiSetting {
        id,
        key: format!("k{id}"),
        value: value.to_owned(),
    }
}

/// An in-memory primary and secondary, each with its own manual clock.
async fn clocked_pair() -> (Site, Site, Arc<ManualClock>, Arc<ManualClock>) {
    let start = Utc::now();
    let pclock = Arc::new(ManualClock::new(start));
    let sclock = Arc::new(ManualClock::new(start));
    // `GEO_AUDIT_SQLITE=1` runs the same tests on SQLite files (the embedded default). Tests
    // that move the clock to make rows due then fail by design: SQL stores read due-ness and
    // claim ages from the database's clock, not the site's `ManualClock`.
    if std::env::var_os("GEO_AUDIT_SQLITE").is_some() {
        let dir = Box::leak(Box::new(tempfile::tempdir().expect("tempdir")));
        let url = |f: &str| format!("sqlite://{}", dir.path().join(f).display());
        let pdb = replicable_core::storage::open(&url("p.db"))
            .await
            .expect("p db");
        let sdb = replicable_core::storage::open(&url("s.db"))
            .await
            .expect("s db");
        let primary = Site::primary("primary")
            .database(pdb)
            .blob_directory(dir.path().join("pb"))
            .clock(pclock.clone())
            .build()
            .expect("primary");
        let secondary = Site::secondary("secondary", Arc::new(InProcessPrimary::new(&primary)))
            .database(sdb)
            .blob_directory(dir.path().join("sb"))
            .clock(sclock.clone())
            .build()
            .expect("secondary");
        return (primary, secondary, pclock, sclock);
    }
    let primary = Site::primary("primary")
        .in_memory()
        .clock(pclock.clone())
        .build()
        .expect("primary");
    let secondary = Site::secondary("secondary", Arc::new(InProcessPrimary::new(&primary)))
        .in_memory()
        .clock(sclock.clone())
        .build()
        .expect("secondary");
    (primary, secondary, pclock, sclock)
}

async fn reg(secondary: &Site, rec: &PackageFile) -> Option<PackageFileRegistry> {
    rec.replicator(secondary)
        .registry()
        .await
        .expect("registry read")
}

async fn creg(secondary: &Site, rec: &CiSetting) -> Option<CiSettingRegistry> {
    rec.replicator(secondary)
        .registry()
        .await
        .expect("registry read")
}

async fn pver(primary: &Site, rec: &PackageFile) -> PackageFileVerificationState {
    rec.replicator(primary)
        .verification_state()
        .await
        .expect("verification read")
        .expect("a verification row")
}

async fn catch_up(site: &Site) {
    replicable_core::log_cursor::catch_up(site, 50)
        .await
        .expect("cursor catches up");
}

fn secs_between(later: DateTime<Utc>, earlier: DateTime<Utc>) -> i64 {
    (later - earlier).num_seconds()
}

/// Geo's `delay(n) = n^4 + 15 + rand(0..30) * (n + 1)`, capped at `cap + delay(1)` (same jitter).
fn window(n: u32, cap_secs: i64) -> (i64, i64) {
    let n = i64::from(n);
    let lo = n.pow(4) + 15;
    let hi = n.pow(4) + 15 + 29 * (n + 1);
    let lo_cap = cap_secs + 16;
    let hi_cap = cap_secs + 16 + 29 * 2;
    (lo.min(lo_cap), hi.min(hi_cap))
}

async fn events_of(site: &Site) -> Vec<replicable_core::event::Event> {
    let entries = site
        .event_log()
        .read_after(0, 10_000)
        .await
        .expect("log read");
    entries
        .into_iter()
        .filter_map(|e| replicable_core::event::Event::try_from(e).ok())
        .collect()
}

// ---------------------------------------------------------------- registry table and columns

/// Geo doc:38-40: "The class name ... is tightly coupled to the table name for the registry,
/// so for this example the registry table will be package_file_registry". Doc:101: the
/// registry's columns `widget_id, state (default 0), retry_count (default 0), last_sync_failure,
/// retry_at, last_synced_at, created_at`; SEMANTICS: plus verification columns,
/// `checksum_mismatch`, `verification_checksum_mismatched`. Doc:72: the primary's verification
/// columns `verification_retry_at, verified_at, verification_checksum, verification_failure,
/// verification_retry_count`; doc:76 a partial index on `verification_failure`.
#[tokio::test]
async fn geo_registry_table_named_after_replicator_with_geo_columns() -> R {
    let dir = tempfile::tempdir()?;
    let pfile = dir.path().join("primary.db");
    let sfile = dir.path().join("secondary.db");
    let pdb = replicable_core::storage::open(&format!("sqlite://{}", pfile.display())).await?;
    let sdb = replicable_core::storage::open(&format!("sqlite://{}", sfile.display())).await?;
    let primary = Site::primary("primary")
        .database(pdb)
        .blob_directory(dir.path().join("pb"))
        .build()?;
    let secondary = Site::secondary("secondary", Arc::new(InProcessPrimary::new(&primary)))
        .database(sdb)
        .blob_directory(dir.path().join("sb"))
        .build()?;
    let rec = pf(1, "w/1");
    put_blob(&primary, "w/1", b"widget").await;
    rec.replicator(&primary).publish_created_event().await?;
    catch_up(&secondary).await;
    assert_eq!(
        reg(&secondary, &rec).await.map(|r| r.state),
        Some(SyncState::Synced)
    );

    let columns = |file: std::path::PathBuf, table: &'static str| async move {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", file.display()))
            .await
            .expect("pool");
        let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT name FROM pragma_table_info('{table}')"
        )))
        .fetch_all(&pool)
        .await
        .expect("table info");
        pool.close().await;
        rows.into_iter().map(|r| r.0).collect::<Vec<_>>()
    };
    let cols = columns(sfile.clone(), "package_file_registry").await;
    for c in [
        "package_file_id",
        "state",
        "retry_count",
        "retry_at",
        "last_sync_failure",
        "last_synced_at",
        "created_at",
        "verification_state",
        "verification_checksum",
        "verified_at",
        "verification_started_at",
        "verification_retry_at",
        "verification_retry_count",
        "verification_failure",
        "checksum_mismatch",
        "verification_checksum_mismatched",
    ] {
        assert!(
            cols.iter().any(|x| x == c),
            "package_file_registry lacks {c}: {cols:?}"
        );
    }
    let vcols = columns(pfile.clone(), "package_file_verification").await;
    for c in [
        "package_file_id",
        "verification_state",
        "verification_checksum",
        "verified_at",
        "verification_started_at",
        "verification_retry_at",
        "verification_retry_count",
        "verification_failure",
    ] {
        assert!(
            vcols.iter().any(|x| x == c),
            "primary verification lacks {c}: {vcols:?}"
        );
    }
    // The registry row's stored values: state 2 (synced), retry_count 0.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", sfile.display())).await?;
    let (state, retry_count): (i64, i64) = sqlx::query_as(
        "SELECT state, retry_count FROM package_file_registry WHERE package_file_id = 1",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!((state, retry_count), (2, 0));
    pool.close().await;
    Ok(())
}

// ---------------------------------------------------------------- registry transitions

/// SEMANTICS:31 "`start`: from pending/synced/failed; sets `last_synced_at = now`."
#[tokio::test]
async fn geo_start_sets_last_synced_at_to_now() -> R {
    let (primary, secondary, _pc, sclock) = clocked_pair().await;
    let rec = pf(1, "s/1");
    put_blob(&primary, "s/1", b"x").await;
    rec.replicator(&primary).publish_created_event().await?;
    sclock.advance(Duration::from_secs(3600));
    let attempt = rec.replicator(&secondary).start_sync().await?;
    let row = reg(&secondary, &rec).await.expect("row");
    assert_eq!(row.state, SyncState::Started);
    let at = row.last_synced_at.expect("last_synced_at set by start");
    assert_eq!(
        at.timestamp_micros(),
        sclock.now().timestamp_micros(),
        "{row:?}"
    );
    let out = attempt.run().await?;
    assert!(matches!(out, SyncOutcome::Synced { .. }), "{out:?}");
    Ok(())
}

/// SEMANTICS:35-39 "`failed`: from any state; `retry_count += 1`, `retry_at =
/// next_retry_time(retry_count)`"; `next_retry_time(n) = min(now + delay(n), now + cap +
/// delay(1))`, cap = 4 hours when the resource is missing on the primary.
#[tokio::test]
async fn geo_missing_on_primary_retries_grow_and_cap_at_four_hours() -> R {
    let (primary, secondary, _pc, sclock) = clocked_pair().await;
    let rec = pf(2, "missing/2");
    rec.replicator(&primary).publish_created_event().await?;
    catch_up(&secondary).await;
    let d = desc("package_file");
    for n in 1u32..=12 {
        let row = reg(&secondary, &rec).await.expect("row");
        assert_eq!(row.state, SyncState::Failed, "n={n}: {row:?}");
        assert_eq!(row.retry_count, n, "n={n}: {row:?}");
        assert!(row.missing_on_primary, "n={n}: {row:?}");
        let wait = secs_between(row.retry_at.expect("retry_at"), sclock.now());
        let (lo, hi) = window(n, 4 * 3600);
        assert!(
            (lo..=hi).contains(&wait),
            "n={n}: retry after {wait}s, expected {lo}..={hi}"
        );
        // Not due before retry_at.
        let early = replicable_core::workers::sync_due(&secondary, d, 10, 1).await?;
        assert_eq!(early.claimed, 0, "n={n}: claimed before retry_at");
        sclock.set(row.retry_at.unwrap() + chrono::Duration::seconds(1));
        let report = replicable_core::workers::sync_due(&secondary, d, 10, 1).await?;
        assert_eq!(report.claimed, 1, "n={n}: due after retry_at");
    }
    Ok(())
}

/// SEMANTICS: cap = 1 hour for an ordinary failure; SEMANTICS:89-90 "Blob download: written to a
/// temporary location, SHA-256 compared with the primary's checksum before it replaces the real
/// file; mismatch fails the sync ("Downloaded file checksum mismatch")."
#[tokio::test]
async fn geo_download_checksum_mismatch_fails_and_backoff_caps_at_one_hour() -> R {
    let (primary, secondary, _pc, sclock) = clocked_pair().await;
    let rec = pf(3, "dl/3");
    put_blob(&primary, "dl/3", b"the bytes the primary checksummed").await;
    rec.replicator(&primary).publish_created_event().await?;
    rec.replicator(&primary).verify().await?;
    put_blob(&primary, "dl/3", b"changed behind the primary's back").await;
    catch_up(&secondary).await;
    let row = reg(&secondary, &rec).await.expect("row");
    assert_eq!(row.state, SyncState::Failed, "{row:?}");
    assert!(!row.missing_on_primary, "{row:?}");
    let text = row.last_sync_failure.clone().unwrap_or_default();
    assert!(
        text.contains("Downloaded file checksum mismatch"),
        "failure text: {text:?}"
    );
    assert!(
        get_blob(&secondary, "dl/3").await.is_none(),
        "nothing made visible"
    );
    let d = desc("package_file");
    for n in 1u32..=9 {
        let row = reg(&secondary, &rec).await.expect("row");
        assert_eq!(row.retry_count, n, "{row:?}");
        let wait = secs_between(row.retry_at.expect("retry_at"), sclock.now());
        let (lo, hi) = window(n, 3600);
        assert!(
            (lo..=hi).contains(&wait),
            "n={n}: retry after {wait}s, expected {lo}..={hi}"
        );
        sclock.set(row.retry_at.unwrap() + chrono::Duration::seconds(1));
        replicable_core::workers::sync_due(&secondary, d, 10, 1).await?;
    }
    Ok(())
}

/// SEMANTICS:32-34 "`synced`: zeroes retries, clears the failure"; "`synced` clears the failure
/// text and the missing-on-primary flag."
#[tokio::test]
async fn geo_synced_clears_retries_failure_and_missing_flag() -> R {
    let (primary, secondary, _pc, sclock) = clocked_pair().await;
    let rec = pf(4, "late/4");
    rec.replicator(&primary).publish_created_event().await?;
    catch_up(&secondary).await;
    let row = reg(&secondary, &rec).await.expect("row");
    assert!(
        row.missing_on_primary && row.state == SyncState::Failed,
        "{row:?}"
    );
    put_blob(&primary, "late/4", b"now it exists").await;
    sclock.set(row.retry_at.unwrap() + chrono::Duration::seconds(1));
    replicable_core::workers::sync_due(&secondary, desc("package_file"), 10, 1).await?;
    let row = reg(&secondary, &rec).await.expect("row");
    assert_eq!(row.state, SyncState::Synced, "{row:?}");
    assert_eq!(row.retry_count, 0, "{row:?}");
    assert!(row.retry_at.is_none(), "{row:?}");
    assert!(row.last_sync_failure.is_none(), "{row:?}");
    assert!(!row.missing_on_primary, "{row:?}");
    Ok(())
}

/// SEMANTICS:21-22 "Consuming `created`/`updated`: ... mark the registry pending (if it exists)
/// and sync." A new event for a failed row in backoff syncs it at once.
#[tokio::test]
async fn geo_created_event_for_failed_row_syncs_without_waiting_backoff() -> R {
    let (primary, secondary, _pc, _sc) = clocked_pair().await;
    let rec = pf(5, "again/5");
    rec.replicator(&primary).publish_created_event().await?;
    catch_up(&secondary).await;
    let row = reg(&secondary, &rec).await.expect("row");
    assert_eq!(row.state, SyncState::Failed, "{row:?}");
    put_blob(&primary, "again/5", b"here now").await;
    rec.replicator(&primary).publish_created_event().await?;
    catch_up(&secondary).await;
    let row = reg(&secondary, &rec).await.expect("row");
    assert_eq!(row.state, SyncState::Synced, "{row:?}");
    assert_eq!(row.retry_count, 0);
    assert_eq!(
        get_blob(&secondary, "again/5").await.as_deref(),
        Some(&b"here now"[..])
    );
    Ok(())
}

/// SEMANTICS:42-43 "Scheduling order: never-attempted pending rows first, then failed rows whose
/// `retry_at` is due (ordered by `retry_at`, nulls first)".
#[tokio::test]
async fn geo_sync_scheduling_pending_first_then_failed_by_retry_at() -> R {
    let (primary, secondary, _pc, sclock) = clocked_pair().await;
    let d = desc("package_file");
    // Two failed rows: id 31 fails first (earlier retry_at), id 30 fails 200 s later.
    let c = pf(31, "order/31");
    let dd = pf(30, "order/30");
    for r in [&c, &dd] {
        r.replicator(&primary).publish_created_event().await?;
    }
    c.replicator(&secondary).target().mark_pending().await?;
    let out = c.replicator(&secondary).sync().await?;
    assert!(matches!(out, SyncOutcome::Failed(_)), "{out:?}");
    sclock.advance(Duration::from_secs(200));
    dd.replicator(&secondary).target().mark_pending().await?;
    let out = dd.replicator(&secondary).sync().await?;
    assert!(matches!(out, SyncOutcome::Failed(_)), "{out:?}");
    // A never-attempted pending row with the largest id.
    let b = pf(99, "order/99");
    put_blob(&primary, "order/99", b"b").await;
    b.replicator(&primary).publish_created_event().await?;
    b.replicator(&secondary).target().mark_pending().await?;

    sclock.advance(Duration::from_secs(1000)); // both failed rows are due
    let report = replicable_core::workers::sync_due(&secondary, d, 1, 1).await?;
    assert_eq!(report.claimed, 1);
    assert_eq!(
        reg(&secondary, &b).await.map(|r| r.state),
        Some(SyncState::Synced),
        "the never-attempted row goes first"
    );
    assert_eq!(reg(&secondary, &c).await.unwrap().retry_count, 1);
    assert_eq!(reg(&secondary, &dd).await.unwrap().retry_count, 1);

    let report = replicable_core::workers::sync_due(&secondary, d, 1, 1).await?;
    assert_eq!(report.claimed, 1);
    assert_eq!(
        reg(&secondary, &c).await.unwrap().retry_count,
        2,
        "the failed row with the earliest retry_at goes next (not the lowest id)"
    );
    assert_eq!(reg(&secondary, &dd).await.unwrap().retry_count, 1);
    Ok(())
}

// ---------------------------------------------------------------- primary verification

/// SEMANTICS:13 "verifiable types also publish `checksum_succeeded`"; SEMANTICS:56 "Success
/// publishes `checksum_succeeded`"; blob checksum = SHA-256 of the bytes.
#[tokio::test]
async fn geo_primary_checksum_success_publishes_checksum_succeeded_event() -> R {
    let (primary, _secondary, _pc, _sc) = clocked_pair().await;
    let rec = pf(6, "ck/6");
    put_blob(&primary, "ck/6", b"ten bytes!").await;
    rec.replicator(&primary).publish_created_event().await?;
    let report =
        replicable_core::workers::verify_due(&primary, desc("package_file"), 10, 2).await?;
    assert_eq!(report.succeeded, 1, "{report:?}");
    let events = events_of(&primary).await;
    let ck: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventKind::ChecksumSucceeded)
        .collect();
    assert_eq!(ck.len(), 1, "{events:?}");
    assert_eq!(ck[0].replicable_name, "package_file");
    assert_eq!(ck[0].payload.model_id, 6);
    let v = pver(&primary, &rec).await;
    assert_eq!(v.verification_state, VerificationState::Succeeded);
    assert_eq!(
        v.verification_checksum.as_deref(),
        Some("0425074d7748edc4faa98177678ef8e16a493504dfa15ca02bcdc56a848aca99")
    );
    assert!(v.verified_at.is_some(), "{v:?}");
    Ok(())
}

/// SEMANTICS:56-57 "Failure: retry with the same backoff (1 hour cap)." Columns
/// `verification_retry_at`, `verification_retry_count`, `verification_failure`.
#[tokio::test]
async fn geo_primary_checksum_failure_retries_with_backoff_capped_at_one_hour() -> R {
    let (primary, _secondary, pclock, _sc) = clocked_pair().await;
    let rec = pf(7, "ckfail/7");
    rec.replicator(&primary).publish_created_event().await?; // no bytes: checksum fails
    let d = desc("package_file");
    replicable_core::workers::verify_due(&primary, d, 10, 1).await?;
    for n in 1u32..=9 {
        let v = pver(&primary, &rec).await;
        assert_eq!(
            v.verification_state,
            VerificationState::Failed,
            "n={n}: {v:?}"
        );
        assert_eq!(v.verification_retry_count, n, "n={n}: {v:?}");
        let failure = v.verification_failure.clone().unwrap_or_default();
        assert!(
            !failure.is_empty() && failure.chars().count() <= 255,
            "{failure:?}"
        );
        let wait = secs_between(v.verification_retry_at.expect("retry_at"), pclock.now());
        let (lo, hi) = window(n, 3600);
        assert!(
            (lo..=hi).contains(&wait),
            "n={n}: verification retry after {wait}s, expected {lo}..={hi}"
        );
        let early = replicable_core::workers::verify_due(&primary, d, 10, 1).await?;
        assert_eq!(
            early.claimed, 0,
            "n={n}: claimed before verification_retry_at"
        );
        pclock.set(v.verification_retry_at.unwrap() + chrono::Duration::seconds(1));
        let again = replicable_core::workers::verify_due(&primary, d, 10, 1).await?;
        assert_eq!(again.claimed, 1, "n={n}");
    }
    // A checksum that finally succeeds zeroes the retries.
    put_blob(&primary, "ckfail/7", b"bytes").await;
    let v = pver(&primary, &rec).await;
    pclock.set(v.verification_retry_at.unwrap() + chrono::Duration::seconds(1));
    replicable_core::workers::verify_due(&primary, d, 10, 1).await?;
    let v = pver(&primary, &rec).await;
    assert_eq!(v.verification_state, VerificationState::Succeeded, "{v:?}");
    assert_eq!(v.verification_retry_count, 0, "{v:?}");
    assert!(v.verification_failure.is_none(), "{v:?}");
    Ok(())
}

/// SEMANTICS:58 "Verification stuck in started > 8 hours is failed." (primary)
#[tokio::test]
async fn geo_primary_verification_stuck_in_started_is_failed() -> R {
    let (primary, _secondary, pclock, _sc) = clocked_pair().await;
    let rec = pf(8, "stuckv/8");
    put_blob(&primary, "stuckv/8", b"s").await;
    rec.replicator(&primary).publish_created_event().await?;
    let claimed = primary
        .verification_store()
        .claim("package_file", pclock.now(), 10)
        .await?;
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        pver(&primary, &rec).await.verification_state,
        VerificationState::Started
    );
    pclock.advance(Duration::from_secs(9 * 3600));
    let failed = replicable_core::workers::fail_stuck(&primary, desc("package_file"), 100).await?;
    assert_eq!(failed, 1);
    let v = pver(&primary, &rec).await;
    assert_eq!(v.verification_state, VerificationState::Failed, "{v:?}");
    assert!(v.verification_failure.is_some(), "{v:?}");
    assert!(v.verification_retry_at.is_some(), "{v:?}");
    Ok(())
}

/// Geo: an update of a mutable record on the primary makes its checksum stale: the primary
/// computes it again and publishes `checksum_succeeded` with the new checksum, and the secondary
/// ends verified against the new one (SEMANTICS:56-57, `checksum_succeeded` consumption).
#[tokio::test]
async fn geo_update_on_primary_recomputes_checksum_and_secondary_verifies_new_one() -> R {
    let (primary, secondary, _pc, _sc) = clocked_pair().await;
    let d = desc("ci_setting");
    let v1 = ci(9, "v1");
    v1.replicator(&primary).publish_created_event().await?;
    replicable_core::workers::verify_due(&primary, d, 10, 1).await?;
    let c1 = v1
        .replicator(&primary)
        .verification_state()
        .await?
        .expect("row")
        .verification_checksum
        .expect("checksum 1");
    catch_up(&secondary).await;
    replicable_core::workers::verify_due(&secondary, d, 10, 1).await?;
    assert_eq!(
        creg(&secondary, &v1).await.map(|r| r.verification_state),
        Some(VerificationState::Succeeded)
    );

    let v2 = ci(9, "v2");
    v2.replicator(&primary).publish_updated_event().await?;
    let after_update = v2
        .replicator(&primary)
        .verification_state()
        .await?
        .expect("row");
    assert_ne!(
        after_update.verification_state,
        VerificationState::Succeeded,
        "the old checksum no longer describes the record: {after_update:?}"
    );
    replicable_core::workers::verify_due(&primary, d, 10, 1).await?;
    let vs = v2
        .replicator(&primary)
        .verification_state()
        .await?
        .expect("row");
    let c2 = vs.verification_checksum.clone().expect("checksum 2");
    assert_ne!(c1, c2, "{vs:?}");
    let events = events_of(&primary).await;
    let ck = events
        .iter()
        .filter(|e| e.kind == EventKind::ChecksumSucceeded && e.payload.model_id == 9)
        .count();
    assert_eq!(ck, 2, "two checksum_succeeded events: {events:?}");

    catch_up(&secondary).await;
    replicable_core::workers::verify_due(&secondary, d, 10, 1).await?;
    let row = creg(&secondary, &v2).await.expect("row");
    assert_eq!(row.state, SyncState::Synced, "{row:?}");
    assert_eq!(
        row.verification_state,
        VerificationState::Succeeded,
        "{row:?}"
    );
    assert_eq!(
        row.verification_checksum.as_deref(),
        Some(c2.as_str()),
        "{row:?}"
    );
    Ok(())
}

/// SEMANTICS:23 "`checksum_succeeded` on a secondary: a verified registry goes back to
/// verification pending." The primary re-verifies after 7 days (SEMANTICS:58-59) and publishes
/// `checksum_succeeded` again.
#[tokio::test]
async fn geo_checksum_succeeded_sends_verified_secondary_row_back_to_pending() -> R {
    let (primary, secondary, pclock, _sc) = clocked_pair().await;
    let d = desc("package_file");
    let rec = pf(10, "rv/10");
    put_blob(&primary, "rv/10", b"rv").await;
    rec.replicator(&primary).publish_created_event().await?;
    replicable_core::workers::verify_due(&primary, d, 10, 1).await?;
    catch_up(&secondary).await;
    replicable_core::workers::verify_due(&secondary, d, 10, 1).await?;
    assert_eq!(
        reg(&secondary, &rec).await.map(|r| r.verification_state),
        Some(VerificationState::Succeeded)
    );
    pclock.advance(Duration::from_secs(8 * 86400));
    let n = replicable_core::workers::reverify_stale(
        &primary,
        d,
        replicable_core::workers::DEFAULT_REVERIFICATION_INTERVAL,
        100,
    )
    .await?;
    assert_eq!(n, 1);
    replicable_core::workers::verify_due(&primary, d, 10, 1).await?;
    assert_eq!(
        events_of(&primary)
            .await
            .iter()
            .filter(|e| e.kind == EventKind::ChecksumSucceeded)
            .count(),
        2
    );
    catch_up(&secondary).await;
    let row = reg(&secondary, &rec).await.expect("row");
    assert_eq!(
        row.verification_state,
        VerificationState::Pending,
        "{row:?}"
    );
    assert_eq!(row.state, SyncState::Synced);
    replicable_core::workers::verify_due(&secondary, d, 10, 1).await?;
    assert_eq!(
        reg(&secondary, &rec).await.map(|r| r.verification_state),
        Some(VerificationState::Succeeded)
    );
    Ok(())
}

/// SEMANTICS:73 "pending verification rows are taken `verified_at` nulls first, then oldest".
#[tokio::test]
async fn geo_verification_batches_take_never_verified_first_then_oldest() -> R {
    let (primary, _secondary, pclock, _sc) = clocked_pair().await;
    let d = desc("package_file");
    // ids chosen so that id order would pick another row.
    let oldest = pf(13, "vo/13");
    let middle = pf(12, "vo/12");
    let newest = pf(11, "vo/11");
    for r in [&oldest, &middle, &newest] {
        put_blob(&primary, &r.file_path, r.file_path.as_bytes()).await;
        r.replicator(&primary).publish_created_event().await?;
    }
    for r in [&oldest, &middle, &newest] {
        r.replicator(&primary).verify().await?;
        pclock.advance(Duration::from_secs(3600));
    }
    pclock.advance(Duration::from_secs(8 * 86400));
    let n = replicable_core::workers::reverify_stale(
        &primary,
        d,
        replicable_core::workers::DEFAULT_REVERIFICATION_INTERVAL,
        100,
    )
    .await?;
    assert_eq!(n, 3);
    let never = pf(14, "vo/14");
    put_blob(&primary, "vo/14", b"never").await;
    never.replicator(&primary).publish_created_event().await?;

    replicable_core::workers::verify_due(&primary, d, 1, 1).await?;
    assert_eq!(
        pver(&primary, &never).await.verification_state,
        VerificationState::Succeeded,
        "never-verified (verified_at null) first"
    );
    for r in [&oldest, &middle, &newest] {
        assert_eq!(
            pver(&primary, r).await.verification_state,
            VerificationState::Pending
        );
    }
    replicable_core::workers::verify_due(&primary, d, 1, 1).await?;
    assert_eq!(
        pver(&primary, &oldest).await.verification_state,
        VerificationState::Succeeded,
        "then the oldest verified_at"
    );
    assert_eq!(
        pver(&primary, &newest).await.verification_state,
        VerificationState::Pending
    );
    assert_eq!(
        pver(&primary, &middle).await.verification_state,
        VerificationState::Pending
    );
    Ok(())
}

/// SEMANTICS:58-59 / 104 "Re-verification of succeeded rows older than 7 days, on the primary
/// and secondaries", "in batches".
#[tokio::test]
async fn geo_secondary_reverifies_after_seven_days_in_batches() -> R {
    let (primary, secondary, _pc, sclock) = clocked_pair().await;
    let d = desc("package_file");
    let recs: Vec<_> = (40..43).map(|i| pf(i, &format!("srv/{i}"))).collect();
    for r in &recs {
        put_blob(&primary, &r.file_path, b"srv").await;
        r.replicator(&primary).publish_created_event().await?;
    }
    replicable_core::workers::verify_due(&primary, d, 10, 1).await?;
    catch_up(&secondary).await;
    replicable_core::workers::verify_due(&secondary, d, 10, 1).await?;
    for r in &recs {
        assert_eq!(
            reg(&secondary, r).await.map(|x| x.verification_state),
            Some(VerificationState::Succeeded)
        );
    }
    let interval = replicable_core::workers::DEFAULT_REVERIFICATION_INTERVAL;
    sclock.advance(Duration::from_secs(6 * 86400));
    assert_eq!(
        replicable_core::workers::reverify_stale(&secondary, d, interval, 100).await?,
        0
    );
    sclock.advance(Duration::from_secs(2 * 86400));
    assert_eq!(
        replicable_core::workers::reverify_stale(&secondary, d, interval, 2).await?,
        2,
        "a batch of at most 2"
    );
    assert_eq!(
        replicable_core::workers::reverify_stale(&secondary, d, interval, 2).await?,
        1
    );
    for r in &recs {
        let row = reg(&secondary, r).await.expect("row");
        assert_eq!(
            row.verification_state,
            VerificationState::Pending,
            "{row:?}"
        );
        assert_eq!(row.state, SyncState::Synced);
    }
    let report = replicable_core::workers::verify_due(&secondary, d, 10, 1).await?;
    assert_eq!(report.succeeded, 3, "{report:?}");
    Ok(())
}

/// SEMANTICS:67-68 "Verification stuck in `started` past its timeout on a secondary fails the
/// *sync* too, so the copy is fetched again."
#[tokio::test]
async fn geo_secondary_verification_stuck_fails_the_sync_and_refetches() -> R {
    let (primary, secondary, _pc, sclock) = clocked_pair().await;
    let d = desc("package_file");
    let rec = pf(15, "sv/15");
    put_blob(&primary, "sv/15", b"sv").await;
    rec.replicator(&primary).publish_created_event().await?;
    rec.replicator(&primary).verify().await?;
    catch_up(&secondary).await;
    assert_eq!(
        reg(&secondary, &rec).await.map(|r| r.verification_state),
        Some(VerificationState::Pending)
    );
    let claimed = secondary
        .registry_store()
        .claim_for_verification("package_file", sclock.now(), 10)
        .await?;
    assert_eq!(claimed.len(), 1);
    sclock.advance(Duration::from_secs(9 * 3600));
    let failed = replicable_core::workers::fail_stuck(&secondary, d, 100).await?;
    assert_eq!(failed, 1);
    let row = reg(&secondary, &rec).await.expect("row");
    assert_eq!(row.verification_state, VerificationState::Failed, "{row:?}");
    assert_eq!(
        row.state,
        SyncState::Failed,
        "the sync is failed too: {row:?}"
    );
    sclock.set(row.retry_at.expect("retry_at") + chrono::Duration::seconds(1));
    replicable_core::workers::sync_due(&secondary, d, 10, 1).await?;
    replicable_core::workers::verify_due(&secondary, d, 10, 1).await?;
    let row = reg(&secondary, &rec).await.expect("row");
    assert_eq!(row.state, SyncState::Synced, "{row:?}");
    assert_eq!(
        row.verification_state,
        VerificationState::Succeeded,
        "{row:?}"
    );
    Ok(())
}

/// SEMANTICS:66 "A failed verification sent back to pending keeps its retry count."
/// (primary: an operator's `reverify --failed`).
#[tokio::test]
async fn geo_failed_verification_sent_back_to_pending_keeps_retry_count() -> R {
    let (primary, _secondary, pclock, _sc) = clocked_pair().await;
    let d = desc("package_file");
    let rec = pf(16, "kr/16");
    rec.replicator(&primary).publish_created_event().await?;
    replicable_core::workers::verify_due(&primary, d, 10, 1).await?;
    let v = pver(&primary, &rec).await;
    pclock.set(v.verification_retry_at.unwrap() + chrono::Duration::seconds(1));
    replicable_core::workers::verify_due(&primary, d, 10, 1).await?;
    let v = pver(&primary, &rec).await;
    assert_eq!(
        (v.verification_state, v.verification_retry_count),
        (VerificationState::Failed, 2)
    );
    let command =
        <replicable_core::cli::Cli as replicable_core::cli::clap::Parser>::try_parse_from([
            "replicable",
            "reverify",
            "package_file",
            "--failed",
        ])?
        .command;
    let mut out = Vec::new();
    let reps = replicable_core::registered_replicables()?;
    replicable_core::cli::execute(&command, &primary, &reps, &mut out).await?;
    let v = pver(&primary, &rec).await;
    assert_eq!(v.verification_state, VerificationState::Pending, "{v:?}");
    assert_eq!(v.verification_retry_count, 2, "retry count kept: {v:?}");
    Ok(())
}

// ---------------------------------------------------------------- events and deletes

/// SEMANTICS:14-15 "Payload: the model id plus what a consumer needs when the record is already
/// gone (for blobs: the blob path)"; SEMANTICS:22-23 "Consuming `deleted`: remove the local copy
/// and the registry row (no scope check)."
#[tokio::test]
async fn geo_deleted_event_carries_blob_path_and_removes_copy_without_scope_check() -> R {
    let dir = tempfile::tempdir()?;
    let primary = Site::primary("primary").in_memory().build()?;
    let sdb =
        replicable_core::storage::open(&format!("sqlite://{}", dir.path().join("s.db").display()))
            .await?;
    let link: Arc<dyn replicable_core::PrimaryLink> = Arc::new(InProcessPrimary::new(&primary));
    let wide = Site::secondary("secondary", link.clone())
        .database(sdb.clone())
        .blob_directory(dir.path().join("sb"))
        .build()?;
    let rec = pf(17, "eu/17");
    put_blob(&primary, "eu/17", b"eu").await;
    rec.replicator(&primary).publish_created_event().await?;
    catch_up(&wide).await;
    assert_eq!(
        reg(&wide, &rec).await.map(|r| r.state),
        Some(SyncState::Synced)
    );
    assert!(get_blob(&wide, "eu/17").await.is_some());

    // The same secondary, now replicating only "us/" keys.
    let narrow = Site::secondary("secondary", link)
        .database(sdb)
        .blob_directory(dir.path().join("sb"))
        .selective_sync(
            SelectiveSync::all().only::<PackageFile>(|p| p.file_path.starts_with("us/")),
        )
        .build()?;
    rec.replicator(&primary).publish_deleted_event().await?;
    let events = events_of(&primary).await;
    let del = events
        .iter()
        .find(|e| e.kind == EventKind::Deleted)
        .expect("a deleted event");
    assert_eq!(del.payload.model_id, 17);
    assert_eq!(
        del.payload.resource,
        replicable_core::Resource::Blob {
            key: "eu/17".into()
        }
    );
    catch_up(&narrow).await;
    assert!(reg(&narrow, &rec).await.is_none(), "registry row removed");
    assert!(get_blob(&narrow, "eu/17").await.is_none(), "copy removed");
    Ok(())
}

/// SEMANTICS:95-97 "registry rows whose record no longer exists (or left the selective-sync
/// scope) are removed with their data."
#[tokio::test]
async fn geo_backfill_removes_rows_and_copies_that_left_the_scope() -> R {
    let dir = tempfile::tempdir()?;
    let primary = Site::primary("primary").in_memory().build()?;
    let sdb =
        replicable_core::storage::open(&format!("sqlite://{}", dir.path().join("s.db").display()))
            .await?;
    let link: Arc<dyn replicable_core::PrimaryLink> = Arc::new(InProcessPrimary::new(&primary));
    let wide = Site::secondary("secondary", link.clone())
        .database(sdb.clone())
        .blob_directory(dir.path().join("sb"))
        .build()?;
    let eu = pf(18, "eu/18");
    let us = pf(19, "us/19");
    for r in [&eu, &us] {
        put_blob(&primary, &r.file_path, b"data").await;
        r.replicator(&primary).publish_created_event().await?;
    }
    catch_up(&wide).await;
    assert!(get_blob(&wide, "eu/18").await.is_some());
    let narrow = Site::secondary("secondary", link)
        .database(sdb)
        .blob_directory(dir.path().join("sb"))
        .selective_sync(
            SelectiveSync::all().only::<PackageFile>(|p| p.file_path.starts_with("us/")),
        )
        .build()?;
    replicable_core::backfill::backfill(&narrow, desc("package_file"), 10_000).await?;
    assert!(
        reg(&narrow, &eu).await.is_none(),
        "out-of-scope row removed"
    );
    assert!(
        get_blob(&narrow, "eu/18").await.is_none(),
        "out-of-scope copy removed"
    );
    assert_eq!(
        reg(&narrow, &us).await.map(|r| r.state),
        Some(SyncState::Synced)
    );
    assert!(get_blob(&narrow, "us/19").await.is_some());
    Ok(())
}

/// SEMANTICS:92-97 "A background pass walks the primary's model ids in ranges (Geo: 10,000) ...
/// ids with no registry row get a pending row ...; registry rows whose record no longer exists
/// ... are removed with their data." Records whose events were lost.
#[tokio::test]
async fn geo_backfill_covers_every_range_and_removes_deleted_records() -> R {
    let (primary, secondary, _pc, _sc) = clocked_pair().await;
    let d = desc("ci_setting");
    let ids = [1i64, 9_999, 10_000, 10_001, 25_000, 1_000_000];
    for id in ids {
        ci(id, "bf")
            .replicator(&primary)
            .publish_created_event()
            .await?;
    }
    // The secondary never reads the log (its events were "lost").
    let report = replicable_core::backfill::backfill(&secondary, d, 10_000).await?;
    for id in ids {
        let row = creg(&secondary, &ci(id, "bf")).await;
        assert_eq!(
            row.map(|r| r.state),
            Some(SyncState::Pending),
            "id {id}: {report:?}"
        );
    }
    let pass = replicable_core::workers::sync_due(&secondary, d, 100, 4).await?;
    assert_eq!(pass.succeeded, ids.len(), "{pass:?}");
    // Two records deleted on the primary; their events are never read either.
    for id in [10_000, 1_000_000] {
        ci(id, "bf")
            .replicator(&primary)
            .publish_deleted_event()
            .await?;
    }
    replicable_core::backfill::backfill(&secondary, d, 10_000).await?;
    for id in ids {
        let gone = [10_000, 1_000_000].contains(&id);
        let row = creg(&secondary, &ci(id, "bf")).await;
        let copy = secondary.records().get("ci_setting", id).await?;
        if gone {
            assert!(
                row.is_none() && copy.is_none(),
                "id {id} removed: {row:?} {copy:?}"
            );
        } else {
            assert_eq!(row.map(|r| r.state), Some(SyncState::Synced), "id {id}");
            assert!(copy.is_some(), "id {id} kept");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- Praefect queue rules

/// SEMANTICS:124-125 (Praefect) "Identical ready jobs are not enqueued twice": many events for
/// one record while replication is paused give one registry row and one sync, of the latest
/// generation.
#[tokio::test]
async fn praefect_identical_jobs_are_not_enqueued_twice() -> R {
    let (primary, secondary, _pc, _sc) = clocked_pair().await;
    let d = desc("ci_setting");
    replicable_core::workers::set_replication_enabled(&secondary, d, false).await?;
    ci(20, "v1")
        .replicator(&primary)
        .publish_created_event()
        .await?;
    for v in 2..=5 {
        ci(20, &format!("v{v}"))
            .replicator(&primary)
            .publish_updated_event()
            .await?;
    }
    catch_up(&secondary).await;
    let st = replicable_core::status::secondary_status(&secondary, "ci_setting").await?;
    assert_eq!((st.registry_count, st.pending_count), (1, 1), "{st:?}");
    replicable_core::workers::set_replication_enabled(&secondary, d, true).await?;
    let pass = replicable_core::workers::sync_due(&secondary, d, 100, 4).await?;
    assert_eq!(pass.claimed, 1, "{pass:?}");
    let row = creg(&secondary, &ci(20, "")).await.expect("row");
    assert_eq!(row.state, SyncState::Synced);
    assert_eq!(row.synced_generation, Some(5), "{row:?}");
    let copy = secondary
        .records()
        .get("ci_setting", 20)
        .await?
        .expect("copy");
    assert_eq!(copy.body["value"], "v5");
    Ok(())
}

// ---------------------------------------------------------------- status names and values

/// SEMANTICS:112-115: primary `count`, `checksum_total_count`, `checksummed_count`,
/// `checksum_failed_count`; secondary `registry_count`, `synced_count`, `failed_count`,
/// `verification_total_count`, `verified_count`, `verification_failed_count`, and the synced /
/// verified percentages (Geo: `<x>_count / registry_count * 100`). Gauges named after Geo's.
#[tokio::test]
async fn geo_status_names_and_counts_after_a_mismatch() -> R {
    let (primary, secondary, _pc, _sc) = clocked_pair().await;
    let d = desc("package_file");
    let good = pf(21, "st/21");
    let bad = pf(22, "st/22");
    let missing = pf(23, "st/23");
    put_blob(&primary, "st/21", b"good").await;
    put_blob(&primary, "st/22", b"bad").await;
    for r in [&good, &bad, &missing] {
        r.replicator(&primary).publish_created_event().await?;
    }
    replicable_core::workers::verify_due(&primary, d, 10, 1).await?;
    catch_up(&secondary).await;
    put_blob(&secondary, "st/22", b"corrupt").await;
    replicable_core::workers::verify_due(&secondary, d, 10, 1).await?;

    let p = replicable_core::status::primary_status(&primary, "package_file").await?;
    let pj = serde_json::to_value(&p)?;
    for k in [
        "count",
        "checksum_total_count",
        "checksummed_count",
        "checksum_failed_count",
    ] {
        assert!(pj.get(k).is_some(), "primary status lacks {k}: {pj}");
    }
    assert_eq!(
        (
            p.count,
            p.checksum_total_count,
            p.checksummed_count,
            p.checksum_failed_count
        ),
        (3, 3, 2, 1),
        "{p:?}"
    );

    let s = replicable_core::status::secondary_status(&secondary, "package_file").await?;
    let sj = serde_json::to_value(&s)?;
    for k in [
        "registry_count",
        "synced_count",
        "failed_count",
        "verification_total_count",
        "verified_count",
        "verification_failed_count",
    ] {
        assert!(sj.get(k).is_some(), "secondary status lacks {k}: {sj}");
    }
    assert_eq!(s.registry_count, 3, "{s:?}");
    assert_eq!(s.synced_count, 1, "{s:?}");
    assert_eq!(s.failed_count, 2, "missing + mismatch: {s:?}");
    assert_eq!(s.verified_count, 1, "{s:?}");
    assert_eq!(s.verification_failed_count, 1, "{s:?}");
    assert_eq!(s.checksum_mismatch_count, 1, "{s:?}");
    assert!((s.synced_percent - 100.0 / 3.0).abs() < 0.01, "{s:?}");
    assert!((s.verified_percent - 100.0 / 3.0).abs() < 0.01, "{s:?}");

    // Gauges named after Geo's `geo_<plural>_<x>`.
    let reps = replicable_core::registered_replicables()?;
    let m = replicable_core::metrics::Metrics::new(SiteRole::Secondary, &reps);
    m.refresh(&secondary).await?;
    let text = m.encode();
    for (name, value) in [
        ("replicable_package_files_registry", 3),
        ("replicable_package_files_synced", 1),
        ("replicable_package_files_failed", 2),
        ("replicable_package_files_verified", 1),
        ("replicable_package_files_verification_failed", 1),
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(name)
                    && l.split_whitespace().last() == Some(&value.to_string())),
            "{name} {value} in:\n{text}"
        );
    }
    assert!(
        text.contains("replicable_package_files_verification_total"),
        "{text}"
    );
    assert!(text.contains("replicable_cursor_event_id"), "{text}");
    assert!(text.contains("replicable_last_event_id"), "{text}");
    let pm = replicable_core::metrics::Metrics::new(SiteRole::Primary, &reps);
    pm.refresh(&primary).await?;
    let ptext = pm.encode();
    for name in [
        "replicable_package_files_checksummed",
        "replicable_package_files_checksum_failed",
        "replicable_package_files_checksum_total",
    ] {
        assert!(ptext.contains(name), "{name} in:\n{ptext}");
    }
    // Geo's gauge of the primary's records is the plural alone (`geo_package_files`), with the
    // same value as `_count`.
    let value = |name: &str| {
        ptext
            .lines()
            .find(|line| line.split_whitespace().next() == Some(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .map(str::to_owned)
    };
    assert!(value("replicable_package_files").is_some(), "{ptext}");
    assert_eq!(
        value("replicable_package_files"),
        value("replicable_package_files_count")
    );
    Ok(())
}

/// SEMANTICS:84-86 "A checksum different from the primary's ... the registry is failed so the
/// record is re-synced": once re-synced the copy is the primary's again and verifies.
#[tokio::test]
async fn geo_mismatch_resync_repairs_copy_and_verifies() -> R {
    let (primary, secondary, _pc, sclock) = clocked_pair().await;
    let d = desc("package_file");
    let rec = pf(24, "mm/24");
    put_blob(&primary, "mm/24", b"original").await;
    rec.replicator(&primary).publish_created_event().await?;
    rec.replicator(&primary).verify().await?;
    catch_up(&secondary).await;
    put_blob(&secondary, "mm/24", b"damaged!").await;
    replicable_core::workers::verify_due(&secondary, d, 10, 1).await?;
    let row = reg(&secondary, &rec).await.expect("row");
    assert_eq!(row.state, SyncState::Failed, "{row:?}");
    assert!(row.checksum_mismatch);
    if let Some(at) = row.retry_at {
        sclock.set(at + chrono::Duration::seconds(1));
    }
    replicable_core::workers::sync_due(&secondary, d, 10, 1).await?;
    replicable_core::workers::verify_due(&secondary, d, 10, 1).await?;
    let row = reg(&secondary, &rec).await.expect("row");
    assert_eq!(row.state, SyncState::Synced, "{row:?}");
    assert_eq!(
        row.verification_state,
        VerificationState::Succeeded,
        "{row:?}"
    );
    assert!(!row.checksum_mismatch, "{row:?}");
    assert_eq!(
        get_blob(&secondary, "mm/24").await.as_deref(),
        Some(&b"original"[..])
    );
    Ok(())
}

// ---------------------------------------------------------------- more Geo details

/// A replicable whose name pluralises irregularly, as Geo's `container_repository`.
#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(DatabaseStrategy)]
#[replicable(name = "container_repository")]
pub struct ContainerRepository {
    #[replicable(id)]
    pub id: i64,
    pub name: String,
}

/// SEMANTICS:115-116 "Exported as Prometheus gauges (Geo: `geo_<plural>_synced`, ...)"; README:341
/// "gauges named after Geo's (`replicable_<plural>_registry`, ...)". Geo pluralises the replicable
/// name (`container_repository` -> `geo_container_repositories_synced`).
#[tokio::test]
async fn geo_metric_names_use_the_plural_of_the_replicable_name() -> R {
    let reps = replicable_core::registered_replicables()?;
    let m = replicable_core::metrics::Metrics::new(SiteRole::Secondary, &reps);
    let text = m.encode();
    assert!(
        text.contains("replicable_package_files_registry"),
        "regular plural: {text}"
    );
    assert!(
        text.contains("replicable_container_repositories_registry"),
        "Geo: geo_container_repositories_registry; got: {:?}",
        text.lines()
            .filter(|l| l.contains("container_repositor") && l.contains("registry"))
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// SEMANTICS:40-41 "A sync stuck in `started` longer than the sync timeout (8 hours) is failed
/// with "Sync timed out after ..."": a live sync (heartbeating) within 8 hours is left alone,
/// past 8 hours it is failed even though it heartbeats.
#[tokio::test]
async fn geo_sync_timeout_is_eight_hours_even_with_heartbeats() -> R {
    let (primary, secondary, _pc, sclock) = clocked_pair().await;
    let d = desc("package_file");
    let rec = pf(50, "to/50");
    put_blob(&primary, "to/50", b"t").await;
    rec.replicator(&primary).publish_created_event().await?;
    let attempt = rec.replicator(&secondary).start_sync().await?;
    let beat = |secondary: Site| async move {
        let row = secondary
            .registry_store()
            .get("package_file", 50)
            .await
            .expect("get")
            .expect("row");
        secondary
            .registry_store()
            .heartbeat("package_file", 50, row.version, secondary.now())
            .await
            .expect("heartbeat")
    };
    for _ in 0..15 {
        sclock.advance(Duration::from_secs(1800));
        assert!(beat(secondary.clone()).await, "heartbeat accepted");
    }
    // 7.5 hours in, heartbeating: not failed.
    assert_eq!(
        replicable_core::workers::fail_stuck(&secondary, d, 100).await?,
        0
    );
    assert_eq!(
        reg(&secondary, &rec).await.unwrap().state,
        SyncState::Started
    );
    sclock.advance(Duration::from_secs(1800 + 60));
    assert!(beat(secondary.clone()).await);
    assert_eq!(
        replicable_core::workers::fail_stuck(&secondary, d, 100).await?,
        1
    );
    let row = reg(&secondary, &rec).await.unwrap();
    assert_eq!(row.state, SyncState::Failed, "{row:?}");
    assert_eq!(
        row.last_sync_failure.as_deref(),
        Some("Sync timed out after 8 hours")
    );
    drop(attempt);
    Ok(())
}

/// Geo's shared examples ('a verifiable replicator', `#consume_event_checksum_succeeded`):
/// "with an unpersisted registry: does not persist" it. A record this secondary does not track
/// (outside its selective sync) gets no registry row from `checksum_succeeded`.
#[tokio::test]
async fn geo_checksum_succeeded_does_not_create_a_registry_row() -> R {
    let primary = Site::primary("primary").in_memory().build()?;
    let secondary = Site::secondary("secondary", Arc::new(InProcessPrimary::new(&primary)))
        .selective_sync(
            SelectiveSync::all().only::<PackageFile>(|p| p.file_path.starts_with("eu/")),
        )
        .in_memory()
        .build()?;
    let rec = pf(51, "us/51");
    put_blob(&primary, "us/51", b"us").await;
    rec.replicator(&primary).publish_created_event().await?;
    rec.replicator(&primary).verify().await?;
    catch_up(&secondary).await;
    assert!(reg(&secondary, &rec).await.is_none());
    let st = replicable_core::status::secondary_status(&secondary, "package_file").await?;
    assert_eq!(st.registry_count, 0, "{st:?}");
    Ok(())
}

/// SEMANTICS:75-76 Skip download (Geo `ok_to_skip_download?`) needs the primary's checksum: a
/// stale copy already on the secondary while the primary has no checksum yet is replaced by the
/// primary's bytes, never recorded as synced as it is.
#[tokio::test]
async fn geo_skip_download_never_keeps_a_copy_without_the_primarys_checksum() -> R {
    let (primary, secondary, _pc, _sc) = clocked_pair().await;
    let rec = pf(52, "seed/52");
    put_blob(&primary, "seed/52", b"primary's current bytes").await;
    put_blob(&secondary, "seed/52", b"an old backup's bytes").await;
    rec.replicator(&primary).publish_created_event().await?;
    catch_up(&secondary).await;
    let row = reg(&secondary, &rec).await.expect("row");
    assert_eq!(row.state, SyncState::Synced, "{row:?}");
    assert_eq!(
        get_blob(&secondary, "seed/52").await.as_deref(),
        Some(&b"primary's current bytes"[..])
    );
    // And with the primary's checksum known, a differing copy is replaced as well.
    let rec2 = pf(53, "seed/53");
    put_blob(&primary, "seed/53", b"fresh").await;
    put_blob(&secondary, "seed/53", b"stale").await;
    rec2.replicator(&primary).publish_created_event().await?;
    rec2.replicator(&primary).verify().await?;
    catch_up(&secondary).await;
    assert_eq!(
        get_blob(&secondary, "seed/53").await.as_deref(),
        Some(&b"fresh"[..])
    );
    Ok(())
}

/// SEMANTICS:26-27 / 50-51: `verification_failure` max 255 characters ("Failure texts are cut
/// to 255 characters, ending in `...` when cut"), on the primary too.
#[tokio::test]
async fn geo_primary_verification_failure_text_is_cut_to_255() -> R {
    let (primary, _secondary, _pc, _sc) = clocked_pair().await;
    let key = format!("long/{}", "k".repeat(900));
    let rec = pf(54, &key);
    rec.replicator(&primary).publish_created_event().await?; // no bytes: checksum fails
    replicable_core::workers::verify_due(&primary, desc("package_file"), 10, 1).await?;
    let v = pver(&primary, &rec).await;
    assert_eq!(v.verification_state, VerificationState::Failed, "{v:?}");
    let text = v.verification_failure.expect("failure text");
    assert!(
        text.chars().count() <= 255,
        "{} chars: {text}",
        text.chars().count()
    );
    Ok(())
}

/// Geo's registry: `created_at` (null: false) is set when the row is inserted and kept; a
/// mismatch on the secondary fails verification with Geo's verification backoff columns
/// (`verification_retry_count += 1`, `verification_retry_at`).
#[tokio::test]
async fn geo_registry_created_at_kept_and_mismatch_counts_verification_retry() -> R {
    let (primary, secondary, _pc, sclock) = clocked_pair().await;
    let d = desc("package_file");
    let rec = pf(55, "ca/55");
    put_blob(&primary, "ca/55", b"ca").await;
    rec.replicator(&primary).publish_created_event().await?;
    rec.replicator(&primary).verify().await?;
    let t0 = sclock.now();
    catch_up(&secondary).await;
    let row = reg(&secondary, &rec).await.expect("row");
    assert_eq!(row.created_at.timestamp_micros(), t0.timestamp_micros());
    sclock.advance(Duration::from_secs(3600));
    put_blob(&secondary, "ca/55", b"xx").await;
    replicable_core::workers::verify_due(&secondary, d, 10, 1).await?;
    let row = reg(&secondary, &rec).await.expect("row");
    assert_eq!(row.verification_state, VerificationState::Failed, "{row:?}");
    assert_eq!(row.verification_retry_count, 1, "{row:?}");
    assert_eq!(
        row.created_at.timestamp_micros(),
        t0.timestamp_micros(),
        "{row:?}"
    );
    sclock.set(row.retry_at.expect("retry_at") + chrono::Duration::seconds(1));
    replicable_core::workers::sync_due(&secondary, d, 10, 1).await?;
    let row = reg(&secondary, &rec).await.expect("row");
    assert_eq!(row.state, SyncState::Synced, "{row:?}");
    assert_eq!(
        row.created_at.timestamp_micros(),
        t0.timestamp_micros(),
        "{row:?}"
    );
    Ok(())
}

/// SEMANTICS:73 "pending verification rows are taken `verified_at` nulls first, then oldest",
/// on a secondary; SEMANTICS:104 the 7-day re-verification is the engine's default.
#[tokio::test]
async fn geo_secondary_verification_order_and_default_interval() -> R {
    let config = replicable_core::engine::EngineConfig::default();
    assert_eq!(
        config.verification.reverification_interval,
        Duration::from_secs(7 * 86400)
    );
    let (primary, secondary, _pc, sclock) = clocked_pair().await;
    let d = desc("package_file");
    let oldest = pf(63, "so/63");
    let newer = pf(62, "so/62");
    for r in [&oldest, &newer] {
        put_blob(&primary, &r.file_path, b"so").await;
        r.replicator(&primary).publish_created_event().await?;
        r.replicator(&primary).verify().await?;
    }
    catch_up(&secondary).await;
    replicable_core::workers::verify_due(&secondary, d, 1, 1).await?; // one of them
    sclock.advance(Duration::from_secs(3600));
    replicable_core::workers::verify_due(&secondary, d, 1, 1).await?; // the other
    let first = if reg(&secondary, &oldest).await.unwrap().verified_at
        < reg(&secondary, &newer).await.unwrap().verified_at
    {
        (&oldest, &newer)
    } else {
        (&newer, &oldest)
    };
    sclock.advance(Duration::from_secs(8 * 86400));
    let n = replicable_core::workers::reverify_stale(
        &secondary,
        d,
        config.verification.reverification_interval,
        100,
    )
    .await?;
    assert_eq!(n, 2);
    let never = pf(64, "so/64");
    put_blob(&primary, "so/64", b"never").await;
    never.replicator(&primary).publish_created_event().await?;
    never.replicator(&primary).verify().await?;
    catch_up(&secondary).await;
    assert_eq!(
        reg(&secondary, &never).await.map(|r| r.verification_state),
        Some(VerificationState::Pending)
    );
    replicable_core::workers::verify_due(&secondary, d, 1, 1).await?;
    assert_eq!(
        reg(&secondary, &never).await.map(|r| r.verification_state),
        Some(VerificationState::Succeeded),
        "never verified first"
    );
    replicable_core::workers::verify_due(&secondary, d, 1, 1).await?;
    assert_eq!(
        reg(&secondary, first.0).await.map(|r| r.verification_state),
        Some(VerificationState::Succeeded),
        "then the oldest verified_at"
    );
    assert_eq!(
        reg(&secondary, first.1).await.map(|r| r.verification_state),
        Some(VerificationState::Pending)
    );
    Ok(())
}
