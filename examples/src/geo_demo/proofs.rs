//! The live proofs of `geo-demo run`: with both engines running, each behaviour is triggered
//! the way an application (or an operator, or a disk going bad) would, and checked on the
//! secondary.

use std::future::Future;
use std::time::{Duration, Instant};

use object_store::ObjectStoreExt;
use replicable_core::blob_key::object_path;
use replicable_core::descriptor::ReplicableDescriptor;
use replicable_core::engine::EngineHandle;
use replicable_core::replicator::ReplicationTarget;
use replicable_core::{Site, SyncState, VerificationState, workers};
use replicable_strategies::git::{git, write_commit};

use super::seed::{self, SeedPlan};
use super::sites::{Error, SiteLocation};
use crate::PackageFile;

/// How long one proof waits for the secondary before it fails.
const PROOF_TIMEOUT: Duration = Duration::from_secs(60);

/// The first id of the records the `run`-th run of the demo creates (each run its own ids).
pub fn run_base(run: u64) -> i64 {
    1_000_000 + run as i64 * 1000
}

/// Whether `id` is a package file a run made missing on the primary on purpose.
pub fn deliberately_missing(name: &str, id: i64) -> bool {
    name == "package_file" && id >= 1_000_000 && id % 1000 == 999
}

/// Everything a proof needs.
pub struct Demo<'a> {
    /// The primary.
    pub primary: &'a Site,
    /// Where the primary keeps its data.
    pub primary_location: &'a SiteLocation,
    /// The secondary.
    pub secondary: &'a Site,
    /// Where the secondary keeps its data.
    pub secondary_location: &'a SiteLocation,
    /// The primary's engine.
    pub primary_engine: &'a EngineHandle,
    /// The secondary's engine.
    pub secondary_engine: &'a EngineHandle,
    /// The seed.
    pub plan: SeedPlan,
    /// Which run of the demo this is (1 for the first on a data directory).
    pub run: u64,
    /// The package file replicable.
    pub package_file: &'static ReplicableDescriptor,
}

/// A proof's verdict.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// What was proven.
    pub name: &'static str,
    /// Whether it held.
    pub passed: bool,
    /// What was seen.
    pub detail: String,
}

/// Polls `check` every 100 ms until it gives `Some`, or `timeout` passes.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut check: F) -> Result<Option<T>, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, Error>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(Some(value));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn head_of(dir: &std::path::Path) -> Option<String> {
    git(
        Some(dir),
        &["rev-parse", "--verify", "--quiet", "refs/heads/main"],
        None,
        &[],
        Duration::from_secs(30),
    )
    .await
    .ok()
    .map(|s| s.trim().to_owned())
}

impl Demo<'_> {
    fn wake(&self) {
        self.primary_engine.wake();
        self.secondary_engine.wake();
    }

    async fn synced_and_verified(&self, name: &str, id: i64) -> Result<bool, Error> {
        Ok(self
            .secondary
            .registry_store()
            .get(name, id)
            .await?
            .is_some_and(|row| {
                row.state == SyncState::Synced
                    && row.verification.verification_state == VerificationState::Succeeded
            }))
    }

    /// An update replicates: a new commit on a project, a changed CI setting.
    pub async fn update(&self) -> Result<Verdict, Error> {
        let started = Instant::now();
        let project_id = ((self.run - 1) % u64::from(self.plan.repositories.max(1))) as i64 + 1;
        let project = seed::project(project_id);
        let commit = write_commit(
            &self.primary_location.repository_dir(&project.disk_path),
            &format!("geo-demo run {}: an update", self.run),
            true,
            Duration::from_secs(60),
        )
        .await?;
        project
            .replicator(self.primary)
            .publish_updated_event()
            .await?;
        let setting_id = ((self.run - 1) % u64::from(self.plan.rows.max(1))) as i64 + 1;
        let setting = seed::ci_setting(setting_id, self.run as u32 + 1);
        setting
            .replicator(self.primary)
            .publish_updated_event()
            .await?;
        self.wake();
        let secondary_repo = self.secondary_location.repository_dir(&project.disk_path);
        let expected_value = setting.value.clone();
        let seen = wait_for(PROOF_TIMEOUT, || async {
            let head = head_of(&secondary_repo).await;
            let row = self
                .secondary
                .records()
                .get("ci_setting", setting_id)
                .await?;
            let value = row.and_then(|r| {
                r.body
                    .get("value")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            });
            let done = head.as_deref() == Some(commit.as_str())
                && value.as_deref() == Some(expected_value.as_str())
                && self.synced_and_verified("project", project_id).await?
                && self.synced_and_verified("ci_setting", setting_id).await?;
            Ok(done.then_some(()))
        })
        .await?;
        Ok(Verdict {
            name: "an update replicates",
            passed: seen.is_some(),
            detail: format!(
                "new commit {} on project {project_id} ({}) and ci_setting {setting_id} = {:?}: {} on the secondary, synced and verified, after {:.1?}",
                &commit[..12.min(commit.len())],
                project.disk_path,
                setting.value,
                if seen.is_some() { "both" } else { "NOT" },
                started.elapsed()
            ),
        })
    }

    /// A delete removes: a new package file replicates, is deleted on the primary, and its copy
    /// and registry row disappear from the secondary.
    pub async fn delete(&self) -> Result<Verdict, Error> {
        let started = Instant::now();
        let id = run_base(self.run) + 1;
        let file = seed::package_file(id);
        seed::write_blob(
            self.primary,
            &file.file_path,
            seed::blob_bytes(id as u64, 256 * 1024),
        )
        .await?;
        file.replicator(self.primary)
            .publish_created_event()
            .await?;
        self.wake();
        let copy = self.secondary_location.blob_file(&file.file_path);
        let arrived = wait_for(PROOF_TIMEOUT, || async {
            Ok(
                (copy.exists() && self.synced_and_verified("package_file", id).await?)
                    .then_some(()),
            )
        })
        .await?;
        if arrived.is_none() {
            return Ok(Verdict {
                name: "a delete removes",
                passed: false,
                detail: format!("package_file {id} never arrived on the secondary"),
            });
        }
        let arrived_after = started.elapsed();
        file.replicator(self.primary)
            .publish_deleted_event()
            .await?;
        self.primary
            .blob_store()
            .delete(&object_path(&file.file_path)?)
            .await?;
        self.wake();
        let gone = wait_for(PROOF_TIMEOUT, || async {
            let row = self
                .secondary
                .registry_store()
                .get("package_file", id)
                .await?;
            Ok((!copy.exists() && row.is_none()).then_some(()))
        })
        .await?;
        Ok(Verdict {
            name: "a delete removes",
            passed: gone.is_some(),
            detail: format!(
                "package_file {id} synced and verified after {arrived_after:.1?}, then deleted on the primary: copy {} and registry row {} on the secondary after {:.1?}",
                if copy.exists() { "STILL THERE" } else { "gone" },
                if gone.is_some() {
                    "gone"
                } else {
                    "STILL THERE"
                },
                started.elapsed()
            ),
        })
    }

    /// A blob corrupted on the secondary is caught by verification and repaired.
    pub async fn corruption(&self) -> Result<Verdict, Error> {
        let started = Instant::now();
        let id = ((self.run - 1) % u64::from(self.plan.blobs.max(1))) as i64 + 1;
        let file = seed::package_file(id);
        let copy = self.secondary_location.blob_file(&file.file_path);
        let mut bytes = std::fs::read(&copy)?;
        for b in bytes.iter_mut().take(4096) {
            *b = !*b;
        }
        // Behind the framework's back: the file is overwritten in place, same size.
        std::fs::write(&copy, &bytes)?;
        drop(bytes);
        // Re-verification normally comes after `reverification_interval` (7 days); the demo
        // sends every verified copy back to verification now.
        let sent =
            workers::reverify_stale(self.secondary, self.package_file, Duration::ZERO, 100_000)
                .await?;
        self.wake();
        let caught = wait_for(PROOF_TIMEOUT, || async {
            let row = self
                .secondary
                .registry_store()
                .get("package_file", id)
                .await?;
            Ok(row.filter(|r| r.verification.checksum_mismatch && r.state == SyncState::Failed))
        })
        .await?;
        let Some(row) = caught else {
            return Ok(Verdict {
                name: "a corrupted copy is caught and repaired",
                passed: false,
                detail: format!(
                    "corrupted package_file {id} on the secondary; re-verification of {sent} copies did not catch it"
                ),
            });
        };
        let caught_after = started.elapsed();
        let retry_in = row
            .retry_at
            .map(|at| (at - self.secondary.now()).num_seconds())
            .unwrap_or(0);
        // The scheduled retry is 16 to 74 s away (Geo's schedule); an operator's `resync`
        // makes it pending now.
        ReplicationTarget::<PackageFile>::new(self.secondary, id)
            .mark_pending()
            .await?;
        self.wake();
        let expected = self
            .primary
            .blob_store()
            .get(&object_path(&file.file_path)?)
            .await?
            .bytes()
            .await?;
        let repaired = wait_for(PROOF_TIMEOUT, || async {
            let ok = self.synced_and_verified("package_file", id).await?
                && std::fs::read(&copy).is_ok_and(|b| b == expected);
            Ok(ok.then_some(()))
        })
        .await?;
        Ok(Verdict {
            name: "a corrupted copy is caught and repaired",
            passed: repaired.is_some(),
            detail: format!(
                "overwrote 4 KiB of package_file {id} on the secondary's disk; sent {sent} verified copies back to verification \
                 (workers::reverify_stale, interval 0); caught after {caught_after:.1?}: checksum mismatch, registry failed, \
                 retry scheduled in {retry_in} s; resynced at once (as `resync` would): copy {} after {:.1?}",
                if repaired.is_some() {
                    "identical to the primary's, synced and verified"
                } else {
                    "NOT repaired"
                },
                started.elapsed()
            ),
        })
    }

    /// A blob missing on the primary is reported as missing on primary and not retried in a
    /// loop.
    pub async fn missing_on_primary(&self) -> Result<Verdict, Error> {
        let started = Instant::now();
        let id = run_base(self.run) + 999;
        let file = seed::package_file(id);
        // The record is written and published, but its file never reached the primary's store.
        file.replicator(self.primary)
            .publish_created_event()
            .await?;
        self.wake();
        let reported = wait_for(PROOF_TIMEOUT, || async {
            let row = self
                .secondary
                .registry_store()
                .get("package_file", id)
                .await?;
            Ok(row.filter(|r| r.state == SyncState::Failed && r.missing_on_primary))
        })
        .await?;
        let Some(first) = reported else {
            return Ok(Verdict {
                name: "a blob missing on the primary is reported, not retried in a loop",
                passed: false,
                detail: format!("package_file {id} was never reported missing on the primary"),
            });
        };
        let reported_after = started.elapsed();
        let retry_in = first
            .retry_at
            .map(|at| (at - self.secondary.now()).num_seconds())
            .unwrap_or(0);
        // Watch it for a while with the engines running: no second attempt.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let later = self
            .secondary
            .registry_store()
            .get("package_file", id)
            .await?
            .ok_or("the registry row disappeared")?;
        let passed = later.state == SyncState::Failed
            && later.missing_on_primary
            && later.retry_count == first.retry_count
            && retry_in >= 10;
        Ok(Verdict {
            name: "a blob missing on the primary is reported, not retried in a loop",
            passed,
            detail: format!(
                "package_file {id} published without its file: failed, missing_on_primary = true after {reported_after:.1?} \
                 ({:?}); retry_count {} -> {} over 3 s, next retry in {retry_in} s (the schedule backs off to a 4 h cap)",
                first.last_sync_failure.as_deref().unwrap_or(""),
                first.retry_count,
                later.retry_count,
            ),
        })
    }
}
