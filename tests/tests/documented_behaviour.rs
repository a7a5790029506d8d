//! A newcomer's tests: written from README.md, DESIGN.md and the Geo semantics only (not from
//! the code), checking that what the docs promise holds, the way a user would try it.

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStoreExt;
use replicable_core::prelude::*;
use replicable_strategies::{BlobStrategy, DatabaseStrategy, GitRepositoryStrategy};
use replicable_tests::{descriptor as desc, get_blob, put_blob, wait_for};

type R = Result<(), Box<dyn std::error::Error>>;

// ---------------------------------------------------------------- the README's models

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(BlobStrategy)]
pub struct PackageFile {
    #[replicable(id)]
    pub id: i64,
    #[replicable(blob)]
    pub file_path: String, // object key in the site's object store
}

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(GitRepositoryStrategy)]
pub struct Project {
    #[replicable(id)]
    pub id: i64,
    #[replicable(repository)]
    pub disk_path: String, // relative to the site's repository root
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

async fn delete_blob(site: &Site, key: &str) {
    let path = replicable_core::blob_key::object_path(key).expect("a valid key");
    site.blob_store().delete(&path).await.expect("deleted");
}

fn mem_pair() -> (Site, Site) {
    let primary = Site::primary("primary")
        .in_memory()
        .build()
        .expect("primary");
    let link = Arc::new(InProcessPrimary::new(&primary));
    let secondary = Site::secondary("secondary", link)
        .in_memory()
        .build()
        .expect("secondary");
    (primary, secondary)
}

async fn registry_of(secondary: &Site, record: &PackageFile) -> Option<PackageFileRegistry> {
    record
        .replicator(secondary)
        .registry()
        .await
        .expect("registry read")
}

async fn catch_up(site: &Site) {
    replicable_core::log_cursor::catch_up(site, 50)
        .await
        .expect("cursor catches up");
}

/// A fast engine config so the tests do not wait on 1-5 s idle loops.
fn fast_config() -> replicable_core::engine::EngineConfig {
    let mut config = replicable_core::engine::EngineConfig::default();
    config.idle.min = Duration::from_millis(50);
    config.idle.max = Duration::from_millis(200);
    config.periods.backfill = Duration::from_secs(1);
    config.periods.verification_maintenance = Duration::from_secs(1);
    config.shutdown_deadline = Duration::from_secs(5);
    config
}

// ---------------------------------------------------------------- README first snippet, end to end

/// The README's headline: SQLite files + blob directories, publish created/updated/deleted,
/// the engine on each site, the secondary ends synced (2) and verified (2), same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_blob_roundtrip_on_sqlite_files_with_engines() -> R {
    let dir = tempfile::tempdir()?;
    let pdb = replicable_core::storage::open(&format!(
        "sqlite://{}",
        dir.path().join("primary.db").display()
    ))
    .await?;
    let sdb = replicable_core::storage::open(&format!(
        "sqlite://{}",
        dir.path().join("secondary.db").display()
    ))
    .await?;
    let primary = Site::primary("primary")
        .database(pdb)
        .blob_directory(dir.path().join("primary-blobs"))
        .build()?;
    let secondary = Site::secondary("secondary", Arc::new(InProcessPrimary::new(&primary)))
        .database(sdb)
        .blob_directory(dir.path().join("secondary-blobs"))
        .build()?;

    let package_file = pf(1, "pkg/1.bin");
    put_blob(&primary, &package_file.file_path, b"version one").await;
    let event = package_file
        .replicator(&primary)
        .publish_created_event()
        .await?;
    assert!(
        event.is_some(),
        "publishing on a primary returns the event id"
    );

    let p_engine = replicable_core::engine::Engine::new(
        primary.clone(),
        replicable_core::registered_replicables()?,
    )
    .config(fast_config())
    .start()
    .await?;
    let s_engine = replicable_core::engine::Engine::new(
        secondary.clone(),
        replicable_core::registered_replicables()?,
    )
    .config(fast_config())
    .start()
    .await?;

    let ok = wait_for(30, || async {
        matches!(registry_of(&secondary, &package_file).await,
            Some(r) if r.state.value() == 2 && r.verification_state.value() == 2)
    })
    .await;
    let row = registry_of(&secondary, &package_file).await;
    assert!(
        ok,
        "secondary synced and verified within 30 s; row: {row:?}"
    );
    let row = row.unwrap();
    assert_eq!(row.package_file_id, 1);
    assert_eq!(row.retry_count, 0);
    assert!(row.last_sync_failure.is_none());
    assert!(row.verification_checksum.is_some());
    let on_disk = std::fs::read(dir.path().join("secondary-blobs/pkg/1.bin"))?;
    assert_eq!(on_disk, b"version one");

    // delete
    delete_blob(&primary, &package_file.file_path).await;
    package_file
        .replicator(&primary)
        .publish_deleted_event()
        .await?;
    let ok = wait_for(30, || async {
        registry_of(&secondary, &package_file).await.is_none()
            && !dir.path().join("secondary-blobs/pkg/1.bin").exists()
    })
    .await;
    assert!(
        ok,
        "delete removed the copy and the registry row; row {:?}",
        registry_of(&secondary, &package_file).await
    );

    s_engine.shutdown().await;
    p_engine.shutdown().await;
    Ok(())
}

/// README: "Blobs are immutable, as in Geo: a blob model publishes `created` and `deleted` only
/// (`publish_updated_event` is refused with `ReplicatorError::UnsupportedEvent` ...)".
#[tokio::test]
async fn readme_blob_publish_updated_event_is_refused() -> R {
    let (primary, secondary) = mem_pair();
    let package_file = pf(2, "pkg/2.bin");
    put_blob(&primary, "pkg/2.bin", b"one").await;
    package_file
        .replicator(&primary)
        .publish_created_event()
        .await?;
    catch_up(&secondary).await;
    let before = primary.event_log().last_event_id().await?;
    let out = package_file
        .replicator(&primary)
        .publish_updated_event()
        .await;
    assert!(
        matches!(
            out,
            Err(ReplicatorError::UnsupportedEvent {
                replicable: "package_file",
                strategy: "BlobStrategy",
                event: EventKind::Updated,
            })
        ),
        "publish_updated_event on a blob model: {out:?}"
    );
    assert_eq!(
        primary.event_log().last_event_id().await?,
        before,
        "nothing published"
    );
    assert_eq!(
        get_blob(&secondary, "pkg/2.bin").await.as_deref(),
        Some(&b"one"[..])
    );
    Ok(())
}

/// Same as above, but with `.in_memory()` sites and default engine settings (as the README).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_blob_roundtrip_in_memory_default_engine() -> R {
    let (primary, secondary) = mem_pair();
    let package_file = pf(7, "pkg/seven");
    put_blob(&primary, "pkg/seven", b"seven").await;
    package_file
        .replicator(&primary)
        .publish_created_event()
        .await?;
    let p = replicable_core::engine::Engine::new(
        primary.clone(),
        replicable_core::registered_replicables()?,
    )
    .start()
    .await?;
    let s = replicable_core::engine::Engine::new(
        secondary.clone(),
        replicable_core::registered_replicables()?,
    )
    .start()
    .await?;
    let ok = wait_for(20, || async {
        matches!(registry_of(&secondary, &package_file).await,
            Some(r) if r.state == SyncState::Synced
                && r.verification_state == VerificationState::Succeeded)
    })
    .await;
    assert!(
        ok,
        "synced+verified with default engine settings within 20 s: {:?}",
        registry_of(&secondary, &package_file).await
    );
    assert_eq!(
        get_blob(&secondary, "pkg/seven").await.as_deref(),
        Some(&b"seven"[..])
    );
    s.shutdown().await;
    p.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------- generated names (DESIGN.md)

#[tokio::test]
async fn design_generated_names_and_fields() -> R {
    let (primary, _secondary) = mem_pair();
    let package_file = pf(42, "pkg/42");
    let replicator: PackageFileReplicator<'_> = package_file.replicator(&primary);
    assert_eq!(replicator.model_record().id, package_file.id);
    assert_eq!(PackageFile::REPLICABLE_NAME, "package_file");
    assert_eq!(Project::REPLICABLE_NAME, "project");
    assert_eq!(CiSetting::REPLICABLE_NAME, "ci_setting");
    assert_eq!(package_file.replicable_id(), 42);

    let names: Vec<&str> = replicable_core::registered_replicables()?
        .iter()
        .map(|d| d.name)
        .collect();
    for n in ["package_file", "project", "ci_setting"] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }

    // The typed registry row, with the columns DESIGN.md lists.
    let now = chrono::Utc::now();
    let row: PackageFileRegistry = replicable_core::RegistryRecord::new_pending(42, now).into();
    let PackageFileRegistry {
        package_file_id,
        state,
        retry_count,
        retry_at,
        last_sync_failure,
        last_synced_at,
        created_at,
        verification_state,
        verification_checksum,
        checksum_mismatch,
        verification_checksum_mismatched,
        ..
    } = row;
    assert_eq!(package_file_id, 42);
    assert_eq!(state, SyncState::Pending);
    assert_eq!(retry_count, 0);
    assert!(retry_at.is_none() && last_sync_failure.is_none() && last_synced_at.is_none());
    assert_eq!(created_at, now);
    // SEMANTICS: a row that is pending (not yet synced) has verification disabled.
    assert_eq!(verification_state, VerificationState::Disabled);
    assert!(verification_checksum.is_none());
    assert!(!checksum_mismatch && verification_checksum_mismatched.is_none());

    let v: PackageFileVerificationState = replicable_core::VerificationRecord::new(42).into();
    let PackageFileVerificationState {
        package_file_id,
        verification_state,
        verification_checksum,
        verified_at,
        verification_started_at,
        verification_retry_at,
        verification_retry_count,
        verification_failure,
        ..
    } = v;
    assert_eq!(package_file_id, 42);
    assert_eq!(verification_state, VerificationState::Pending);
    assert!(verification_checksum.is_none() && verified_at.is_none());
    assert!(verification_started_at.is_none() && verification_retry_at.is_none());
    assert_eq!(verification_retry_count, 0);
    assert!(verification_failure.is_none());

    // ci_setting: the id column is named after the replicable name.
    let c: CiSettingRegistry = replicable_core::RegistryRecord::new_pending(3, now).into();
    assert_eq!(c.ci_setting_id, 3);
    let p: ProjectRegistry = replicable_core::RegistryRecord::new_pending(4, now).into();
    assert_eq!(p.project_id, 4);
    Ok(())
}

#[test]
fn semantics_state_values() {
    assert_eq!(SyncState::Pending.value(), 0);
    assert_eq!(SyncState::Started.value(), 1);
    assert_eq!(SyncState::Synced.value(), 2);
    assert_eq!(SyncState::Failed.value(), 3);
    assert_eq!(VerificationState::Pending.value(), 0);
    assert_eq!(VerificationState::Started.value(), 1);
    assert_eq!(VerificationState::Succeeded.value(), 2);
    assert_eq!(VerificationState::Failed.value(), 3);
    assert_eq!(VerificationState::Disabled.value(), 4);
}

// ---------------------------------------------------------------- the shared suite, one line each

replicable_core::replicator_test_suite!(PackageFile, |id| PackageFile {
    id,
    file_path: format!("pkg/{id}")
});
replicable_core::replicator_test_suite!(project_suite: Project, |id| Project {
    id,
    disk_path: format!("group/p{id}.git")
});
replicable_core::replicator_test_suite!(ci_setting_suite: CiSetting, |id| CiSetting {
    id,
    key: format!("k{id}"),
    value: format!("v{id}")
});

// ---------------------------------------------------------------- retry formula

#[test]
fn semantics_retry_delay_formula_and_caps() {
    use replicable_core::retry::{RetryPolicy, retry_delay};
    let policy = RetryPolicy::default();
    for n in 1u32..=12 {
        for jitter in 0u32..30 {
            let raw = u64::from(n).pow(4) + 15 + u64::from(jitter) * (u64::from(n) + 1);
            let first = 1 + 15 + u64::from(jitter) * 2;
            assert_eq!(
                retry_delay(n, jitter),
                Duration::from_secs(raw),
                "n={n} j={jitter}"
            );
            assert_eq!(
                policy.delay(n, false, jitter),
                Duration::from_secs(raw.min(3600 + first)),
                "1 h cap, n={n} j={jitter}"
            );
            assert_eq!(
                policy.delay(n, true, jitter),
                Duration::from_secs(raw.min(4 * 3600 + first)),
                "4 h cap when missing on primary, n={n} j={jitter}"
            );
        }
    }
    // rand(0..30): the first retry waits 16..=74 s.
    assert_eq!(
        policy.window(1, false),
        (Duration::from_secs(16), Duration::from_secs(74))
    );
    let now = chrono::Utc::now();
    let at = policy.next_retry_time(1, false, now);
    let secs = (at - now).num_seconds();
    assert!((16..=74).contains(&secs), "{secs}");
}

#[test]
fn semantics_failure_text_cut_to_255_with_dots() {
    use replicable_core::failure::truncate_failure;
    let long = "x".repeat(400);
    let cut = truncate_failure(&long);
    assert_eq!(cut.chars().count(), 255);
    assert!(cut.ends_with("..."));
    let short = "y".repeat(255);
    assert_eq!(truncate_failure(&short), short, "exactly 255 is kept");
    // multibyte: counts characters, never splits one
    let wide = "é".repeat(300);
    let cut = truncate_failure(&wide);
    assert!(cut.chars().count() <= 255 && cut.ends_with("..."));
}

// ---------------------------------------------------------------- registry / verification semantics

/// SEMANTICS: a sync fails when the blob is missing on the primary: failed, retry_count 1,
/// retry_at within the first window, `missing_on_primary`.
#[tokio::test]
async fn semantics_missing_on_primary_fails_with_retry_schedule() -> R {
    let (primary, secondary) = mem_pair();
    let rec = pf(5, "pkg/never-written");
    rec.replicator(&primary).publish_created_event().await?;
    let before = chrono::Utc::now();
    catch_up(&secondary).await;
    let row = registry_of(&secondary, &rec).await.expect("a registry row");
    assert_eq!(row.state, SyncState::Failed, "{row:?}");
    assert_eq!(row.retry_count, 1);
    assert!(row.missing_on_primary, "{row:?}");
    assert!(row.last_sync_failure.is_some());
    let wait = (row.retry_at.expect("retry_at") - before).num_seconds();
    assert!(
        (15..=75).contains(&wait),
        "first retry after 16..74 s, got {wait}"
    );
    Ok(())
}

/// SEMANTICS: failure texts are cut to 255 characters, ending in `...`. A very long key gives a
/// long "missing" failure.
#[tokio::test]
async fn semantics_long_failure_text_is_cut() -> R {
    let (primary, secondary) = mem_pair();
    let key = format!("pkg/{}", "a".repeat(900));
    let rec = pf(6, &key);
    rec.replicator(&primary).publish_created_event().await?;
    catch_up(&secondary).await;
    let row = registry_of(&secondary, &rec).await.expect("row");
    assert_eq!(row.state, SyncState::Failed);
    let text = row.last_sync_failure.expect("failure text");
    assert!(
        text.chars().count() <= 255,
        "{} chars",
        text.chars().count()
    );
    // The key is shortened in the middle so that the reason still fits in the 255 characters.
    assert!(text.contains("..."), "{text}");
    assert!(text.ends_with("is missing on the primary"), "{text}");
    Ok(())
}

/// SEMANTICS: verification stays `disabled` until the primary's checksum exists; the
/// `checksum_succeeded` event turns it pending; then it succeeds.
#[tokio::test]
async fn semantics_verification_disabled_until_primary_checksum() -> R {
    let (primary, secondary) = mem_pair();
    let rec = pf(10, "pkg/ten");
    put_blob(&primary, "pkg/ten", b"ten bytes!").await;
    rec.replicator(&primary).publish_created_event().await?;
    catch_up(&secondary).await;
    let row = registry_of(&secondary, &rec).await.expect("row");
    assert_eq!(row.state, SyncState::Synced);
    assert_eq!(
        row.verification_state,
        VerificationState::Disabled,
        "{row:?}"
    );

    // No verification pass takes a disabled row.
    let report =
        replicable_core::workers::verify_due(&secondary, desc("package_file"), 100, 4).await?;
    let row = registry_of(&secondary, &rec).await.expect("row");
    assert_eq!(
        row.verification_state,
        VerificationState::Disabled,
        "{report:?}"
    );

    // The primary computes its checksum: SHA-256 of the bytes.
    let out = rec.replicator(&primary).verify().await?;
    let VerifyOutcome::Succeeded { checksum } = out else {
        panic!("primary verification: {out:?}")
    };
    assert_eq!(
        checksum, "0425074d7748edc4faa98177678ef8e16a493504dfa15ca02bcdc56a848aca99",
        "blob checksum is the hex SHA-256 of its bytes"
    );
    let vs = rec
        .replicator(&primary)
        .verification_state()
        .await?
        .expect("row");
    assert_eq!(vs.verification_state, VerificationState::Succeeded);
    assert_eq!(vs.verification_checksum.as_deref(), Some(checksum.as_str()));

    catch_up(&secondary).await; // consumes checksum_succeeded
    let row = registry_of(&secondary, &rec).await.expect("row");
    assert_eq!(
        row.verification_state,
        VerificationState::Pending,
        "{row:?}"
    );

    replicable_core::workers::verify_due(&secondary, desc("package_file"), 100, 4).await?;
    let row = registry_of(&secondary, &rec).await.expect("row");
    assert_eq!(
        row.verification_state,
        VerificationState::Succeeded,
        "{row:?}"
    );
    assert_eq!(
        row.verification_checksum.as_deref(),
        Some(checksum.as_str())
    );
    Ok(())
}

/// SEMANTICS: a checksum different from the primary's: "Checksum does not match the primary
/// checksum", `checksum_mismatch = true`, the local checksum recorded, and the registry failed.
#[tokio::test]
async fn semantics_checksum_mismatch_fails_registry() -> R {
    let (primary, secondary) = mem_pair();
    let rec = pf(11, "pkg/eleven");
    put_blob(&primary, "pkg/eleven", b"the real bytes").await;
    rec.replicator(&primary).publish_created_event().await?;
    rec.replicator(&primary).verify().await?;
    catch_up(&secondary).await;
    let row = registry_of(&secondary, &rec).await.expect("row");
    assert_eq!(row.state, SyncState::Synced);
    assert_eq!(
        row.verification_state,
        VerificationState::Pending,
        "{row:?}"
    );

    put_blob(&secondary, "pkg/eleven", b"corrupted!!!!!").await;
    let outcome = rec.replicator(&secondary).verify().await?;
    assert!(
        matches!(outcome, VerifyOutcome::Mismatch { .. }),
        "{outcome:?}"
    );
    let row = registry_of(&secondary, &rec).await.expect("row");
    assert_eq!(row.state, SyncState::Failed, "{row:?}");
    assert!(row.checksum_mismatch, "{row:?}");
    assert_eq!(row.verification_state, VerificationState::Failed, "{row:?}");
    assert_eq!(
        row.verification_failure.as_deref(),
        Some("Checksum does not match the primary checksum"),
        "{row:?}"
    );
    assert!(row.verification_checksum_mismatched.is_some(), "{row:?}");
    assert_ne!(
        row.verification_checksum_mismatched,
        row.verification_checksum
    );
    Ok(())
}

/// SEMANTICS / README: skip download, a copy already there whose checksum equals the primary's
/// is recorded synced without transferring it (here: the primary's blob is gone, so a transfer
/// would fail).
#[tokio::test]
async fn semantics_skip_download_when_copy_matches() -> R {
    let (primary, secondary) = mem_pair();
    let rec = pf(12, "pkg/twelve");
    put_blob(&primary, "pkg/twelve", b"same bytes on both").await;
    rec.replicator(&primary).publish_created_event().await?;
    rec.replicator(&primary).verify().await?;
    put_blob(&secondary, "pkg/twelve", b"same bytes on both").await; // re-seeded from a backup
    delete_blob(&primary, "pkg/twelve").await;
    catch_up(&secondary).await;
    let row = registry_of(&secondary, &rec).await.expect("row");
    assert_eq!(row.state, SyncState::Synced, "skip download: {row:?}");
    assert!(!row.missing_on_primary);
    Ok(())
}

/// SEMANTICS: `synced` is a compare-and-set: an event arriving while a sync runs keeps the row
/// `started` with `change_pending`, the sync does not complete, and the row goes pending.
#[tokio::test]
async fn semantics_change_during_sync_is_synced_again() -> R {
    let (primary, secondary) = mem_pair();
    let rec = CiSetting {
        id: 13,
        key: "k".into(),
        value: "v1".into(),
    };
    rec.replicator(&primary).publish_created_event().await?;
    let attempt = rec.replicator(&secondary).start_sync().await?;
    let row = rec.replicator(&secondary).registry().await?.expect("row");
    assert_eq!(row.state, SyncState::Started);
    // The record changes on the primary; the secondary hears of it.
    // (SyncAttempt<'a> keeps `rec` borrowed, so the changed record is a clone.)
    let mut changed = rec.clone();
    changed.value = "v2".into();
    changed.replicator(&primary).publish_updated_event().await?;
    catch_up(&secondary).await;
    let row = rec.replicator(&secondary).registry().await?.expect("row");
    assert_eq!(row.state, SyncState::Started, "{row:?}");
    assert!(row.change_pending, "{row:?}");
    let out = attempt.run().await?;
    // The attempt had not read the primary yet when the change arrived, so it copies v2, the
    // primary's current generation: README, "a copy that already holds the primary's current
    // generation ... is kept, and the row is synced".
    assert_eq!(out, SyncOutcome::Synced { generation: 2 });
    let row = rec.replicator(&secondary).registry().await?.expect("row");
    assert_eq!(row.state, SyncState::Synced, "{row:?}");
    assert_eq!(row.synced_generation, Some(2));
    let copy = secondary
        .records()
        .get("ci_setting", 13)
        .await?
        .expect("copy");
    assert_eq!(copy.body["value"], "v2");
    Ok(())
}

/// SEMANTICS: `pending` clears retry_at, retry_count, last_synced_at; `resync` synced/failed ->
/// pending (through the target's mark_pending).
#[tokio::test]
async fn semantics_mark_pending_clears_retry_schedule() -> R {
    let (primary, secondary) = mem_pair();
    let rec = pf(14, "pkg/missing14");
    rec.replicator(&primary).publish_created_event().await?;
    catch_up(&secondary).await;
    let row = registry_of(&secondary, &rec).await.expect("row");
    assert_eq!(row.state, SyncState::Failed);
    rec.replicator(&secondary).target().mark_pending().await?;
    let row = registry_of(&secondary, &rec).await.expect("row");
    assert_eq!(row.state, SyncState::Pending);
    assert_eq!(row.retry_count, 0);
    assert!(row.retry_at.is_none());
    assert!(row.last_synced_at.is_none());
    Ok(())
}

// ---------------------------------------------------------------- selective sync

#[tokio::test]
async fn semantics_selective_sync_skips_and_removes() -> R {
    // The README's exact expression compiles:
    let _doc_scope = SelectiveSync::all().only::<Project>(|p| p.disk_path.starts_with("eu/"));

    let primary = Site::primary("primary").in_memory().build()?;
    let secondary = Site::secondary("secondary", Arc::new(InProcessPrimary::new(&primary)))
        .selective_sync(
            SelectiveSync::all().only::<PackageFile>(|p| p.file_path.starts_with("eu/")),
        )
        .in_memory()
        .build()?;
    let eu = pf(20, "eu/a");
    let us = pf(21, "us/b");
    put_blob(&primary, "eu/a", b"eu").await;
    put_blob(&primary, "us/b", b"us").await;
    eu.replicator(&primary).publish_created_event().await?;
    us.replicator(&primary).publish_created_event().await?;
    catch_up(&secondary).await;
    assert_eq!(
        registry_of(&secondary, &eu).await.map(|r| r.state),
        Some(SyncState::Synced)
    );
    assert!(
        registry_of(&secondary, &us).await.is_none(),
        "out of scope: no row"
    );
    assert!(get_blob(&secondary, "us/b").await.is_none());

    // Backfill does not register the out-of-scope record either.
    replicable_core::backfill::backfill(&secondary, desc("package_file"), 10_000).await?;
    assert!(
        registry_of(&secondary, &us).await.is_none(),
        "backfill respects the scope"
    );

    Ok(())
}

#[tokio::test]
async fn semantics_selective_sync_record_leaving_scope_is_removed() -> R {
    let primary = Site::primary("primary").in_memory().build()?;
    let secondary = Site::secondary("secondary", Arc::new(InProcessPrimary::new(&primary)))
        .selective_sync(SelectiveSync::all().only::<CiSetting>(|c| c.key.starts_with("eu.")))
        .in_memory()
        .build()?;
    let mut c = CiSetting {
        id: 1,
        key: "eu.x".into(),
        value: "v".into(),
    };
    c.replicator(&primary).publish_created_event().await?;
    catch_up(&secondary).await;
    assert_eq!(
        c.replicator(&secondary).registry().await?.map(|r| r.state),
        Some(SyncState::Synced)
    );
    c.key = "us.x".into();
    c.replicator(&primary).publish_updated_event().await?;
    catch_up(&secondary).await;
    assert!(
        c.replicator(&secondary).registry().await?.is_none(),
        "left the scope: row removed"
    );
    assert!(
        secondary.records().get("ci_setting", 1).await?.is_none(),
        "left the scope: copy removed"
    );
    Ok(())
}

// ---------------------------------------------------------------- backfill

#[tokio::test]
async fn semantics_backfill_creates_pending_and_removes_orphans() -> R {
    let (primary, secondary) = mem_pair();
    let a = pf(30, "pkg/30");
    let b = pf(31, "pkg/31");
    put_blob(&primary, "pkg/30", b"30").await;
    put_blob(&primary, "pkg/31", b"31").await;
    a.replicator(&primary).publish_created_event().await?;
    catch_up(&secondary).await; // a synced through its event
    assert_eq!(
        registry_of(&secondary, &a).await.map(|r| r.state),
        Some(SyncState::Synced)
    );

    // b published, but the secondary never reads the event; a deleted on the primary without
    // the secondary reading it.
    b.replicator(&primary).publish_created_event().await?;
    a.replicator(&primary).publish_deleted_event().await?;

    let report =
        replicable_core::backfill::backfill(&secondary, desc("package_file"), 10_000).await?;
    assert_eq!(report.created, 1, "{report:?}");
    assert_eq!(report.removed, 1, "{report:?}");
    let row_b = registry_of(&secondary, &b)
        .await
        .expect("b registered by backfill");
    assert_eq!(row_b.state, SyncState::Pending);
    assert!(
        registry_of(&secondary, &a).await.is_none(),
        "orphan removed"
    );
    assert!(
        get_blob(&secondary, "pkg/30").await.is_none(),
        "orphan's copy removed"
    );

    // The due pass syncs b.
    replicable_core::workers::sync_due(&secondary, desc("package_file"), 100, 4).await?;
    assert_eq!(
        registry_of(&secondary, &b).await.map(|r| r.state),
        Some(SyncState::Synced)
    );
    Ok(())
}

// ---------------------------------------------------------------- batch publish

#[tokio::test]
async fn readme_publish_created_events_batch() -> R {
    let (primary, secondary) = mem_pair();
    let files: Vec<PackageFile> = (100..110).map(|i| pf(i, &format!("batch/{i}"))).collect();
    for f in &files {
        put_blob(&primary, &f.file_path, f.file_path.as_bytes()).await;
    }
    let ids = primary.publish_created_events(&files).await?;
    assert_eq!(ids.len(), files.len());
    for w in ids.windows(2) {
        assert_eq!(w[1], w[0] + 1, "consecutive ascending ids: {ids:?}");
    }
    catch_up(&secondary).await;
    for f in &files {
        assert_eq!(
            registry_of(&secondary, f).await.map(|r| r.state),
            Some(SyncState::Synced),
            "{f:?}"
        );
    }

    // A record the strategy refuses (a key over 1,024 bytes) fails the whole batch with
    // ReplicatorError::Resource, and nothing is written.
    let last = primary.event_log().last_event_id().await?;
    let bad = vec![pf(200, "ok/200"), pf(201, &"k".repeat(1025))];
    let err = primary
        .publish_created_events(&bad)
        .await
        .expect_err("refused");
    assert!(matches!(err, ReplicatorError::Resource { .. }), "{err:?}");
    assert_eq!(
        primary.event_log().last_event_id().await?,
        last,
        "nothing written"
    );

    // updated / deleted alike (updated on a mutable type)
    let settings: Vec<CiSetting> = (1..=3)
        .map(|i| CiSetting {
            id: i,
            key: format!("k{i}"),
            value: "v".into(),
        })
        .collect();
    primary.publish_created_events(&settings).await?;
    let ids = primary.publish_updated_events(&settings).await?;
    assert_eq!(ids.len(), 3);
    let ids = primary.publish_deleted_events(&files[..3]).await?;
    assert_eq!(ids.len(), 3);
    catch_up(&secondary).await;
    assert!(registry_of(&secondary, &files[0]).await.is_none());
    Ok(())
}

#[tokio::test]
async fn readme_long_key_refused_at_single_publish() -> R {
    let (primary, _secondary) = mem_pair();
    let err = pf(1, &"k".repeat(1025))
        .replicator(&primary)
        .publish_created_event()
        .await
        .expect_err("keys over 1,024 bytes are refused at publish");
    assert!(matches!(err, ReplicatorError::Resource { .. }), "{err:?}");
    // exactly 1024 is fine
    pf(2, &"k".repeat(1024))
        .replicator(&primary)
        .publish_created_event()
        .await?;
    Ok(())
}

#[tokio::test]
async fn design_publishing_on_a_secondary_writes_nothing() -> R {
    let (_primary, secondary) = mem_pair();
    let out = pf(1, "pkg/1")
        .replicator(&secondary)
        .publish_created_event()
        .await?;
    assert_eq!(out, None);
    let ids = secondary.publish_created_events(&[pf(2, "pkg/2")]).await?;
    assert!(ids.is_empty());
    Ok(())
}

// ---------------------------------------------------------------- special keys (README "one key, one object")

#[tokio::test]
async fn readme_blob_keys_with_special_characters_same_object_on_disk() -> R {
    let dir = tempfile::tempdir()?;
    let primary = Site::primary("primary")
        .in_memory()
        .blob_directory(dir.path().join("p"))
        .build()?;
    let secondary = Site::secondary("secondary", Arc::new(InProcessPrimary::new(&primary)))
        .in_memory()
        .blob_directory(dir.path().join("s"))
        .build()?;
    let keys = [
        "libfoo_1.0~rc1.deb",
        "résumé.pdf",
        "dir/with space+plus.txt",
    ];
    for (i, key) in keys.iter().enumerate() {
        put_blob(&primary, key, key.as_bytes()).await;
        assert!(
            dir.path().join("p").join(key).exists(),
            "object_path({key}) writes a file of that very name"
        );
        pf(300 + i as i64, key)
            .replicator(&primary)
            .publish_created_event()
            .await?;
    }
    catch_up(&secondary).await;
    for (i, key) in keys.iter().enumerate() {
        let row = registry_of(&secondary, &pf(300 + i as i64, key))
            .await
            .expect("row");
        assert_eq!(row.state, SyncState::Synced, "{key}: {row:?}");
        assert_eq!(
            std::fs::read(dir.path().join("s").join(key))?,
            key.as_bytes()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- storage / site

#[tokio::test]
async fn readme_site_without_database_is_refused() -> R {
    let err = Site::primary("primary").build().expect_err("no database");
    assert!(
        matches!(err, replicable_core::SiteError::NoDatabase { .. }),
        "{err:?}"
    );
    let err = Site::secondary("s", Arc::new(InProcessPrimary::new(&mem_pair().0)))
        .blob_directory(tempfile::tempdir()?.path())
        .build()
        .expect_err("no database");
    assert!(
        matches!(err, replicable_core::SiteError::NoDatabase { .. }),
        "{err:?}"
    );
    Ok(())
}

#[tokio::test]
async fn readme_storage_open_sqlite_survives_reopen() -> R {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("p.db").display());
    {
        let db = replicable_core::storage::open(&url).await?;
        let object_store: Arc<dyn object_store::ObjectStore> =
            Arc::new(object_store::memory::InMemory::new());
        let site = Site::primary("primary")
            .database(db)
            .blob_store(object_store)
            .build()?;
        pf(1, "a").replicator(&site).publish_created_event().await?;
        pf(2, "b").replicator(&site).publish_created_event().await?;
    }
    let db = replicable_core::storage::open(&url).await?;
    let site = Site::primary("primary").database(db).build()?;
    assert_eq!(site.event_log().last_event_id().await?, Some(2));
    let unknown = replicable_core::storage::open("mysql://x/y").await;
    assert!(unknown.is_err());
    Ok(())
}

#[tokio::test]
async fn readme_storage_open_postgres_roundtrip() -> R {
    // The PostgreSQL lane (scripts/test sets it up; skipped without it, failed under CI).
    let Some(target) = replicable_tests::PostgresTarget::new() else {
        return Ok(());
    };
    let primary = Site::primary("primary")
        .database(target.open().await)
        .build()?;
    let rec = pf(7, "pg/7");
    put_blob(&primary, &rec.file_path, b"pg bytes").await;
    let ev = rec.replicator(&primary).publish_created_event().await?;
    assert!(ev.is_some());
    let secondary = Site::secondary("secondary", Arc::new(InProcessPrimary::new(&primary)))
        .in_memory()
        .build()?;
    let out = rec.replicator(&secondary).sync().await?;
    assert!(matches!(out, SyncOutcome::Synced { .. }), "{out:?}");
    assert_eq!(
        get_blob(&secondary, "pg/7").await.as_deref(),
        Some(&b"pg bytes"[..])
    );
    rec.replicator(&primary).publish_deleted_event().await?;
    Ok(())
}

// ---------------------------------------------------------------- status

#[tokio::test]
async fn semantics_status_counts() -> R {
    let (primary, secondary) = mem_pair();
    for i in 1..=4 {
        let rec = pf(i, &format!("st/{i}"));
        if i != 4 {
            put_blob(&primary, &rec.file_path, b"x").await; // 4 is missing on the primary
        }
        rec.replicator(&primary).publish_created_event().await?;
    }
    replicable_core::workers::verify_due(&primary, desc("package_file"), 100, 4).await?;
    catch_up(&secondary).await;
    replicable_core::workers::verify_due(&secondary, desc("package_file"), 100, 4).await?;

    let p = replicable_core::status::primary_status(&primary, "package_file").await?;
    assert_eq!(p.count, 4, "{p:?}");
    assert_eq!(p.checksummed_count, 3, "{p:?}");
    assert_eq!(p.checksum_failed_count, 1, "{p:?}");
    let s = replicable_core::status::secondary_status(&secondary, "package_file").await?;
    assert_eq!(s.registry_count, 4, "{s:?}");
    assert_eq!(s.synced_count, 3, "{s:?}");
    assert_eq!(s.failed_count, 1, "{s:?}");
    assert_eq!(s.verified_count, 3, "{s:?}");
    assert!((s.synced_percent - 75.0).abs() < 0.01, "{s:?}");
    assert!((s.verified_percent - 75.0).abs() < 0.01, "{s:?}");

    let site = replicable_core::status::site_status(
        &secondary,
        &replicable_core::registered_replicables()?,
    )
    .await?;
    assert_eq!(site.role, "secondary");
    assert!(site.events.cursor_event_id.is_some());
    Ok(())
}

#[tokio::test]
async fn readme_dataloss_lists_records_behind() -> R {
    let (primary, secondary) = mem_pair();
    let rec = CiSetting {
        id: 50,
        key: "k".into(),
        value: "v".into(),
    };
    rec.replicator(&primary).publish_created_event().await?;
    catch_up(&secondary).await;
    assert!(
        replicable_core::status::dataloss(&secondary, "ci_setting")
            .await?
            .is_empty()
    );
    rec.replicator(&primary).publish_updated_event().await?;
    rec.replicator(&primary).publish_updated_event().await?;
    let behind = replicable_core::status::dataloss(&secondary, "ci_setting").await?;
    assert_eq!(behind.len(), 1, "{behind:?}");
    assert_eq!(behind[0].model_id, 50);
    assert_eq!(behind[0].behind_by, 2, "{behind:?}");
    assert_eq!(behind[0].primary_generation, 3, "{behind:?}");
    assert_eq!(behind[0].secondary_generation, Some(1), "{behind:?}");
    Ok(())
}

// ---------------------------------------------------------------- config

#[test]
fn readme_engine_config_toml_and_env() -> R {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("replicable.toml");
    // The README's TOML, verbatim.
    std::fs::write(
        &path,
        r#"shutdown_deadline = "30s"
[sync]            # secondaries: blobs 32, repositories 4, rows 16 at once, 48 in all
concurrency = 48
[verification]
concurrency = 4
reverification_interval = "7days"
[periods]
stuck_sweep = "30s"
backfill = "1m"
[retention]
max_age = "30days"
"#,
    )?;
    let config = replicable_core::engine::EngineConfig::load(Some(path.as_ref()))?;
    assert_eq!(config.sync.concurrency, 48);
    assert_eq!(config.sync.blob_capacity, 32);
    assert_eq!(config.sync.repository_capacity, 4);
    assert_eq!(config.sync.database_capacity, 16);
    assert_eq!(
        config.verification.reverification_interval,
        Duration::from_secs(7 * 86400)
    );
    assert_eq!(config.periods.backfill, Duration::from_secs(60));
    assert_eq!(config.retention.max_age, Duration::from_secs(30 * 86400));
    assert_eq!(config.shutdown_deadline, Duration::from_secs(30));
    assert_eq!(config.periods.status_report, Duration::from_secs(30));
    assert_eq!(config, replicable_core::engine::EngineConfig::default());

    // Environment overrides: the workspace forbids `unsafe` (so no `std::env::set_var` in
    // edition 2024); run this test binary again with the variables set.
    let out = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "engine_config_env_child",
            "--nocapture",
            "--include-ignored",
        ])
        .env("REPLICABLE_SYNC__CONCURRENCY", "16")
        .env("REPLICABLE_SHUTDOWN_DEADLINE", "5s")
        .env("NEWCOMER_AUDIT_TOML", &path)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "env child: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert!(
        replicable_core::engine::EngineConfig::load(Some(dir.path().join("nope.toml").as_ref()))
            .is_err(),
        "a missing file is an error"
    );
    std::fs::write(&path, "[sync]\nconcurency = 3\n")?;
    assert!(
        replicable_core::engine::EngineConfig::load(Some(path.as_ref())).is_err(),
        "a misspelt key is refused"
    );
    Ok(())
}

/// Run by `readme_engine_config_toml_and_env` with `REPLICABLE_*` variables set.
#[test]
#[ignore = "run as a child process by readme_engine_config_toml_and_env"]
fn engine_config_env_child() -> R {
    let path = std::env::var("NEWCOMER_AUDIT_TOML")?;
    let from_env = replicable_core::engine::EngineConfig::load(Some(path.as_ref()))?;
    assert_eq!(from_env.sync.concurrency, 16, "env overrides the file");
    assert_eq!(from_env.shutdown_deadline, Duration::from_secs(5));
    let no_file = replicable_core::engine::EngineConfig::load(None)?;
    assert_eq!(no_file.sync.concurrency, 16);
    Ok(())
}

// ---------------------------------------------------------------- pausing

#[tokio::test]
async fn readme_pause_site_records_events_but_syncs_nothing() -> R {
    let (primary, secondary) = mem_pair();
    replicable_core::engine::set_site_replication_enabled(&secondary, false).await?;
    let rec = pf(60, "pause/60");
    put_blob(&primary, "pause/60", b"p").await;
    rec.replicator(&primary).publish_created_event().await?;
    catch_up(&secondary).await;
    replicable_core::workers::sync_due(&secondary, desc("package_file"), 100, 4).await?;
    let row = registry_of(&secondary, &rec).await;
    assert!(
        matches!(&row, Some(r) if r.state == SyncState::Pending),
        "paused: event recorded as a pending row, nothing synced: {row:?}"
    );
    assert!(get_blob(&secondary, "pause/60").await.is_none());

    replicable_core::engine::set_site_replication_enabled(&secondary, true).await?;
    replicable_core::workers::sync_due(&secondary, desc("package_file"), 100, 4).await?;
    assert_eq!(
        registry_of(&secondary, &rec).await.map(|r| r.state),
        Some(SyncState::Synced)
    );
    Ok(())
}

/// Pause the site after the intent was recorded (backfill makes pending rows): the documented
/// single pass `workers::sync_due` must not sync while the site is paused.
#[tokio::test]
async fn readme_pause_site_stops_sync_due() -> R {
    let (primary, secondary) = mem_pair();
    let rec = pf(62, "pause/62");
    put_blob(&primary, "pause/62", b"p").await;
    rec.replicator(&primary).publish_created_event().await?;
    replicable_core::backfill::backfill(&secondary, desc("package_file"), 10_000).await?;
    assert_eq!(
        registry_of(&secondary, &rec).await.map(|r| r.state),
        Some(SyncState::Pending)
    );
    replicable_core::engine::set_site_replication_enabled(&secondary, false).await?;
    let report =
        replicable_core::workers::sync_due(&secondary, desc("package_file"), 100, 4).await?;
    let row = registry_of(&secondary, &rec).await;
    assert!(
        matches!(&row, Some(r) if r.state == SyncState::Pending),
        "site paused: sync_due synced anyway ({report:?}): {row:?}"
    );
    Ok(())
}

/// The engine honours the site-wide pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_pause_site_engine() -> R {
    let (primary, secondary) = mem_pair();
    replicable_core::engine::set_site_replication_enabled(&secondary, false).await?;
    let rec = pf(63, "pause/63");
    put_blob(&primary, "pause/63", b"p").await;
    rec.replicator(&primary).publish_created_event().await?;
    let s = replicable_core::engine::Engine::new(
        secondary.clone(),
        replicable_core::registered_replicables()?,
    )
    .config(fast_config())
    .start()
    .await?;
    let recorded = wait_for(10, || async {
        registry_of(&secondary, &rec).await.is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let row = registry_of(&secondary, &rec).await;
    assert!(recorded, "the event is recorded while paused");
    assert!(
        matches!(&row, Some(r) if r.state == SyncState::Pending),
        "paused: {row:?}"
    );
    replicable_core::engine::set_site_replication_enabled(&secondary, true).await?;
    let ok = wait_for(15, || async {
        registry_of(&secondary, &rec).await.map(|r| r.state) == Some(SyncState::Synced)
    })
    .await;
    s.shutdown().await;
    assert!(ok, "resumed: synced");
    Ok(())
}

#[tokio::test]
async fn readme_pause_one_replicable() -> R {
    let (primary, secondary) = mem_pair();
    replicable_core::workers::set_replication_enabled(&secondary, desc("package_file"), false)
        .await?;
    let rec = pf(61, "pause/61");
    put_blob(&primary, "pause/61", b"p").await;
    rec.replicator(&primary).publish_created_event().await?;
    catch_up(&secondary).await;
    replicable_core::workers::sync_due(&secondary, desc("package_file"), 100, 4).await?;
    let row = registry_of(&secondary, &rec).await;
    assert!(
        matches!(&row, Some(r) if r.state == SyncState::Pending),
        "{row:?}"
    );
    replicable_core::workers::set_replication_enabled(&secondary, desc("package_file"), true)
        .await?;
    replicable_core::workers::sync_due(&secondary, desc("package_file"), 100, 4).await?;
    assert_eq!(
        registry_of(&secondary, &rec).await.map(|r| r.state),
        Some(SyncState::Synced)
    );
    Ok(())
}

// ---------------------------------------------------------------- CLI

#[tokio::test]
async fn readme_cli_commands_exit_codes_and_effects() -> R {
    use std::process::ExitCode;
    let (primary, secondary) = mem_pair();
    let rec = pf(70, "cli/70");
    put_blob(&primary, "cli/70", b"c").await;
    rec.replicator(&primary).publish_created_event().await?;
    pf(71, "cli/missing")
        .replicator(&primary)
        .publish_created_event()
        .await?;
    catch_up(&secondary).await;
    let reps = replicable_core::registered_replicables()?;
    let run = |args: &[&str]| {
        let mut all = vec!["app".to_owned()];
        all.extend(args.iter().map(|s| s.to_string()));
        replicable_core::cli::run(secondary.clone(), reps.clone(), all)
    };
    assert_eq!(run(&["status"]).await, ExitCode::SUCCESS);
    assert_eq!(run(&["status", "--json"]).await, ExitCode::SUCCESS);
    assert_eq!(
        run(&["status", "--silent-after", "90s"]).await,
        ExitCode::SUCCESS
    );
    assert_eq!(
        run(&["registry", "list", "package_file"]).await,
        ExitCode::SUCCESS
    );
    assert_eq!(
        run(&[
            "registry",
            "list",
            "package_file",
            "--state",
            "failed",
            "--limit",
            "5"
        ])
        .await,
        ExitCode::SUCCESS
    );
    assert_eq!(
        run(&[
            "registry",
            "list",
            "package_file",
            "--verification",
            "failed",
            "--after",
            "0"
        ])
        .await,
        ExitCode::SUCCESS
    );
    assert_eq!(
        run(&["registry", "show", "package_file", "70"]).await,
        ExitCode::SUCCESS
    );
    assert_eq!(
        run(&["registry", "show", "nope", "70"]).await,
        ExitCode::from(1),
        "unknown replicable is a failure"
    );
    assert_eq!(
        run(&["bogus-command"]).await,
        ExitCode::from(2),
        "usage error exits 2"
    );
    assert_eq!(run(&["dataloss"]).await, ExitCode::SUCCESS);
    assert_eq!(run(&["events", "--after", "0"]).await, ExitCode::SUCCESS);

    assert_eq!(
        run(&["resync", "package_file", "--id", "70"]).await,
        ExitCode::SUCCESS
    );
    assert_eq!(
        registry_of(&secondary, &rec).await.map(|r| r.state),
        Some(SyncState::Pending),
        "resync --id sends the row back to pending"
    );
    assert_eq!(
        run(&["resync", "package_file", "--failed"]).await,
        ExitCode::SUCCESS
    );
    assert_eq!(
        registry_of(&secondary, &pf(71, "cli/missing"))
            .await
            .map(|r| r.state),
        Some(SyncState::Pending),
        "resync --failed"
    );
    replicable_core::workers::sync_due(&secondary, desc("package_file"), 100, 4).await?;
    assert_eq!(
        run(&["resync", "package_file", "--all"]).await,
        ExitCode::SUCCESS
    );
    assert_eq!(
        run(&["reverify", "package_file", "--all"]).await,
        ExitCode::SUCCESS
    );

    assert_eq!(run(&["pause"]).await, ExitCode::SUCCESS);
    assert!(
        !secondary
            .registry_store()
            .replication_enabled(replicable_core::engine::SITE_SWITCH)
            .await?,
        "pause persists the site switch"
    );
    assert_eq!(run(&["resume"]).await, ExitCode::SUCCESS);
    assert!(
        secondary
            .registry_store()
            .replication_enabled(replicable_core::engine::SITE_SWITCH)
            .await?
    );
    assert_eq!(run(&["pause", "package_file"]).await, ExitCode::SUCCESS);
    assert!(
        !secondary
            .registry_store()
            .replication_enabled("package_file")
            .await?
    );
    assert_eq!(run(&["resume", "package_file"]).await, ExitCode::SUCCESS);
    assert!(
        secondary
            .registry_store()
            .replication_enabled("package_file")
            .await?
    );

    // primary side
    let prun = |args: &[&str]| {
        let mut all = vec!["app".to_owned()];
        all.extend(args.iter().map(|s| s.to_string()));
        replicable_core::cli::run(primary.clone(), reps.clone(), all)
    };
    assert_eq!(prun(&["status"]).await, ExitCode::SUCCESS);
    assert_eq!(prun(&["events"]).await, ExitCode::SUCCESS);
    assert_eq!(
        prun(&["reverify", "package_file", "--all"]).await,
        ExitCode::SUCCESS
    );
    assert_eq!(
        prun(&["resync", "package_file", "--all"]).await,
        ExitCode::from(1),
        "resync is a secondary command"
    );
    Ok(())
}

// ---------------------------------------------------------------- metrics

#[tokio::test]
async fn readme_metrics_names() -> R {
    let (primary, secondary) = mem_pair();
    let rec = pf(80, "m/80");
    put_blob(&primary, "m/80", b"m").await;
    rec.replicator(&primary).publish_created_event().await?;
    rec.replicator(&primary).verify().await?;
    catch_up(&secondary).await;
    let reps = replicable_core::registered_replicables()?;

    let m = replicable_core::metrics::Metrics::new(SiteRole::Secondary, &reps);
    m.refresh(&secondary).await?;
    let text = m.encode();
    for name in [
        "replicable_package_files_registry",
        "replicable_package_files_synced",
        "replicable_package_files_failed",
        "replicable_package_files_verified",
        "replicable_package_files_verification_failed",
        "replicable_ci_settings_registry",
        "replicable_projects_synced",
    ] {
        assert!(
            text.contains(name),
            "secondary metrics lack {name}:\n{text}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("replicable_package_files_synced") && l.ends_with(" 1")),
        "synced gauge = 1:\n{text}"
    );

    let m = replicable_core::metrics::Metrics::new(SiteRole::Primary, &reps);
    m.refresh(&primary).await?;
    let text = m.encode();
    assert!(
        text.contains("replicable_package_files_checksummed"),
        "{text}"
    );
    Ok(())
}

// ---------------------------------------------------------------- git repositories

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_git_repository_roundtrip_and_empty_checksum() -> R {
    let dir = tempfile::tempdir()?;
    let proot = dir.path().join("p-repos");
    let sroot = dir.path().join("s-repos");
    std::fs::create_dir_all(proot.join("group"))?;
    std::fs::create_dir_all(&sroot)?;
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work)?;
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("README"), "hello")?;
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "first"]);
    git(
        dir.path(),
        &[
            "clone",
            "-q",
            "--bare",
            "work",
            proot.join("group/p1.git").to_str().unwrap(),
        ],
    );
    git(&proot.join("group"), &["init", "-q", "--bare", "empty.git"]);

    let primary = Site::primary("primary")
        .in_memory()
        .repository_root(&proot)
        .build()?;
    let secondary = Site::secondary("secondary", Arc::new(InProcessPrimary::new(&primary)))
        .in_memory()
        .repository_root(&sroot)
        .build()?;
    let p1 = Project {
        id: 1,
        disk_path: "group/p1.git".into(),
    };
    let empty = Project {
        id: 2,
        disk_path: "group/empty.git".into(),
    };
    p1.replicator(&primary).publish_created_event().await?;
    empty.replicator(&primary).publish_created_event().await?;

    // SEMANTICS: an empty repository has the all-zero checksum.
    let out = empty.replicator(&primary).verify().await?;
    assert_eq!(
        out,
        VerifyOutcome::Succeeded {
            checksum: "0".repeat(64)
        },
        "empty repository checksum"
    );
    let out = p1.replicator(&primary).verify().await?;
    assert!(matches!(out, VerifyOutcome::Succeeded { .. }), "{out:?}");

    catch_up(&secondary).await;
    let row = p1.replicator(&secondary).registry().await?.expect("row");
    assert_eq!(row.state, SyncState::Synced, "{row:?}");
    assert_eq!(row.project_id, 1);
    let head_p = git(&proot.join("group/p1.git"), &["rev-parse", "main"]);
    let head_s = git(&sroot.join("group/p1.git"), &["rev-parse", "main"]);
    assert_eq!(head_p, head_s);
    replicable_core::workers::verify_due(&secondary, desc("project"), 100, 2).await?;
    let row = p1.replicator(&secondary).registry().await?.expect("row");
    assert_eq!(
        row.verification_state,
        VerificationState::Succeeded,
        "{row:?}"
    );

    // An update: a new commit on the primary.
    std::fs::write(work.join("README"), "hello again")?;
    git(&work, &["commit", "-q", "-am", "second"]);
    git(
        &work,
        &[
            "push",
            "-q",
            proot.join("group/p1.git").to_str().unwrap(),
            "main",
        ],
    );
    p1.replicator(&primary).publish_updated_event().await?;
    catch_up(&secondary).await;
    let head_p = git(&proot.join("group/p1.git"), &["rev-parse", "main"]);
    let head_s = git(&sroot.join("group/p1.git"), &["rev-parse", "main"]);
    assert_eq!(head_p, head_s, "update replicated");

    p1.replicator(&primary).publish_deleted_event().await?;
    catch_up(&secondary).await;
    assert!(p1.replicator(&secondary).registry().await?.is_none());
    assert!(
        !sroot.join("group/p1.git").exists(),
        "repository removed on the secondary"
    );
    Ok(())
}

// ---------------------------------------------------------------- database rows

#[tokio::test]
async fn readme_database_model_roundtrip() -> R {
    let (primary, secondary) = mem_pair();
    let mut s = CiSetting {
        id: 1,
        key: "k".into(),
        value: "v1".into(),
    };
    s.replicator(&primary).publish_created_event().await?;
    catch_up(&secondary).await;
    let row = s.replicator(&secondary).registry().await?.expect("row");
    assert_eq!(row.state, SyncState::Synced, "{row:?}");
    let copy = secondary
        .records()
        .get("ci_setting", 1)
        .await?
        .expect("copy");
    assert_eq!(copy.body["value"], "v1");

    s.value = "v2".into();
    s.replicator(&primary).publish_updated_event().await?;
    catch_up(&secondary).await;
    let copy = secondary
        .records()
        .get("ci_setting", 1)
        .await?
        .expect("copy");
    assert_eq!(copy.body["value"], "v2", "updated row replicated");

    s.replicator(&primary).verify().await?;
    catch_up(&secondary).await;
    replicable_core::workers::verify_due(&secondary, desc("ci_setting"), 100, 2).await?;
    let row = s.replicator(&secondary).registry().await?.expect("row");
    assert_eq!(
        row.verification_state,
        VerificationState::Succeeded,
        "{row:?}"
    );

    s.replicator(&primary).publish_deleted_event().await?;
    catch_up(&secondary).await;
    assert!(secondary.records().get("ci_setting", 1).await?.is_none());
    assert!(s.replicator(&secondary).registry().await?.is_none());
    Ok(())
}

// ---------------------------------------------------------------- timeouts and re-verification

#[tokio::test]
async fn semantics_stuck_sync_is_failed_by_the_sweep() -> R {
    use replicable_core::clock::{Clock, ManualClock};
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let primary = Site::primary("primary").in_memory().build()?;
    let secondary = Site::secondary("secondary", Arc::new(InProcessPrimary::new(&primary)))
        .in_memory()
        .clock(clock.clone())
        .build()?;
    let rec = pf(90, "stuck/90");
    put_blob(&primary, "stuck/90", b"s").await;
    rec.replicator(&primary).publish_created_event().await?;
    let attempt = rec.replicator(&secondary).start_sync().await?;
    clock.advance(Duration::from_secs(9 * 3600));
    let failed =
        replicable_core::workers::fail_stuck(&secondary, desc("package_file"), 100).await?;
    assert_eq!(failed, 1);
    let row = registry_of(&secondary, &rec).await.expect("row");
    assert_eq!(row.state, SyncState::Failed, "{row:?}");
    let text = row.last_sync_failure.clone().unwrap_or_default();
    // SEMANTICS: a sync stuck in `started` longer than 8 hours is failed "Sync timed out after ...".
    assert_eq!(text, "Sync timed out after 8 hours");
    // README: "failed and retried (the first time at once)".
    assert!(row.retry_at.is_none_or(|at| at <= clock.now()), "{row:?}");
    drop(attempt);
    Ok(())
}

#[tokio::test]
async fn semantics_reverification_after_seven_days() -> R {
    use replicable_core::clock::ManualClock;
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let primary = Site::primary("primary")
        .in_memory()
        .clock(clock.clone())
        .build()?;
    let rec = pf(91, "rv/91");
    put_blob(&primary, "rv/91", b"r").await;
    rec.replicator(&primary).publish_created_event().await?;
    rec.replicator(&primary).verify().await?;
    let d = desc("package_file");
    let interval = replicable_core::workers::DEFAULT_REVERIFICATION_INTERVAL;
    assert_eq!(interval, Duration::from_secs(7 * 86400));
    clock.advance(Duration::from_secs(6 * 86400));
    assert_eq!(
        replicable_core::workers::reverify_stale(&primary, d, interval, 100).await?,
        0
    );
    clock.advance(Duration::from_secs(2 * 86400));
    assert_eq!(
        replicable_core::workers::reverify_stale(&primary, d, interval, 100).await?,
        1
    );
    let vs = rec
        .replicator(&primary)
        .verification_state()
        .await?
        .expect("row");
    assert_eq!(vs.verification_state, VerificationState::Pending, "{vs:?}");
    Ok(())
}

// ---------------------------------------------------------------- confined local blobs

#[tokio::test]
async fn readme_confined_local_blobs_refuse_symlinks() -> R {
    use replicable_core::local_blobs::ConfinedLocalFileSystem;
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("blobs");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&root)?;
    std::fs::create_dir_all(&outside)?;
    std::fs::write(outside.join("secret"), "secret")?;
    std::os::unix::fs::symlink(&outside, root.join("link"))?;
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(ConfinedLocalFileSystem::new(&root)?);
    let primary = Site::primary("primary")
        .in_memory()
        .blob_store(store)
        .build()?;
    let path = replicable_core::blob_key::object_path("link/secret")?;
    assert!(
        primary.blob_store().get(&path).await.is_err(),
        "a key through a symbolic link is refused"
    );
    // And a sync of such a key fails rather than copying the secret.
    let secondary = Site::secondary("s", Arc::new(InProcessPrimary::new(&primary)))
        .in_memory()
        .build()?;
    let rec = pf(1, "link/secret");
    rec.replicator(&primary).publish_created_event().await?;
    catch_up(&secondary).await;
    assert_eq!(
        registry_of(&secondary, &rec).await.map(|r| r.state),
        Some(SyncState::Failed)
    );
    assert!(get_blob(&secondary, "link/secret").await.is_none());
    Ok(())
}

// ---------------------------------------------------------------- status reports to the primary

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_secondary_reports_status_to_primary() -> R {
    let (primary, secondary) = mem_pair();
    let mut config = fast_config();
    config.periods.status_report = Duration::from_millis(200);
    let s = replicable_core::engine::Engine::new(
        secondary.clone(),
        replicable_core::registered_replicables()?,
    )
    .config(config)
    .start()
    .await?;
    let reps = replicable_core::registered_replicables()?;
    let ok = wait_for(15, || async {
        replicable_core::status::site_status(&primary, &reps)
            .await
            .map(|st| {
                st.secondaries
                    .iter()
                    .any(|h| h.name == "secondary" && h.healthy)
            })
            .unwrap_or(false)
    })
    .await;
    s.shutdown().await;
    assert!(
        ok,
        "the primary's status lists the reporting secondary as healthy"
    );
    let m = replicable_core::metrics::Metrics::new(SiteRole::Primary, &reps);
    m.refresh(&primary).await?;
    let text = m.encode();
    assert!(text.contains("replicable_secondary_healthy"), "{text}");
    assert!(
        text.contains("replicable_secondary_report_age_seconds"),
        "{text}"
    );
    assert!(
        text.contains("replicable_secondary_cursor_event_id"),
        "{text}"
    );
    Ok(())
}

// ---------------------------------------------------------------- resync turns verification off

#[tokio::test]
async fn semantics_resync_of_verified_row_disables_verification() -> R {
    let (primary, secondary) = mem_pair();
    let rec = pf(95, "rs/95");
    put_blob(&primary, "rs/95", b"r").await;
    rec.replicator(&primary).publish_created_event().await?;
    rec.replicator(&primary).verify().await?;
    catch_up(&secondary).await;
    replicable_core::workers::verify_due(&secondary, desc("package_file"), 100, 4).await?;
    let row = registry_of(&secondary, &rec).await.expect("row");
    assert_eq!(
        row.verification_state,
        VerificationState::Succeeded,
        "{row:?}"
    );
    let s = replicable_core::status::secondary_status(&secondary, "package_file").await?;
    assert_eq!(s.verified_count, 1);

    rec.replicator(&secondary).target().mark_pending().await?;
    let row = registry_of(&secondary, &rec).await.expect("row");
    assert_eq!(row.state, SyncState::Pending);
    assert_eq!(
        row.verification_state,
        VerificationState::Disabled,
        "{row:?}"
    );
    let s = replicable_core::status::secondary_status(&secondary, "package_file").await?;
    assert_eq!(
        s.verified_count, 0,
        "a pending row is not counted as verified: {s:?}"
    );

    // checksum_succeeded on a verified copy sends it back to verification pending
    replicable_core::workers::sync_due(&secondary, desc("package_file"), 100, 4).await?;
    replicable_core::workers::verify_due(&secondary, desc("package_file"), 100, 4).await?;
    let row = registry_of(&secondary, &rec).await.expect("row");
    assert_eq!(
        row.verification_state,
        VerificationState::Succeeded,
        "{row:?}"
    );
    rec.replicator(&primary).verify().await?; // publishes checksum_succeeded again
    catch_up(&secondary).await;
    let row = registry_of(&secondary, &rec).await.expect("row");
    assert_eq!(
        row.verification_state,
        VerificationState::Pending,
        "{row:?}"
    );
    Ok(())
}
