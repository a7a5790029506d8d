//! Seeding the primary: the app writes its records (blob files, git repositories with real
//! history, rows) and publishes a `created` event for each, as an application would.

use std::path::Path;
use std::time::{Duration, Instant};

use object_store::{ObjectStoreExt, PutPayload};
use replicable_core::Site;
use replicable_core::blob_key::object_path;
use replicable_strategies::git::git;
use serde::{Deserialize, Serialize};

use super::sites::{Error, SiteLocation};
use crate::{CiSetting, PackageFile, Project};

/// How long one git command of the seed may take.
const GIT_TIMEOUT: Duration = Duration::from_secs(120);

/// What to seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedPlan {
    /// Package files (blobs), ids `1..=blobs`.
    pub blobs: u32,
    /// The largest blob in bytes (blob 1 has exactly this size; the others are mostly small).
    pub max_blob_bytes: u64,
    /// Projects (bare git repositories), ids `1..=repositories`.
    pub repositories: u32,
    /// CI settings (rows), ids `1..=rows`.
    pub rows: u32,
}

impl SeedPlan {
    /// The demo's data set: 300 blobs of 1 KiB to 20 MiB, 30 repositories, 300 rows.
    pub fn demo() -> Self {
        Self {
            blobs: 300,
            max_blob_bytes: 20 * 1024 * 1024,
            repositories: 30,
            rows: 300,
        }
    }

    /// A data set of about `n` records: 60 % rows, 2 % repositories (at least one), the rest
    /// small blobs (up to 64 KiB).
    pub fn records(n: u32) -> Self {
        let repositories = (n / 50).max(1);
        let rows = n * 3 / 5;
        Self {
            blobs: n.saturating_sub(repositories + rows),
            max_blob_bytes: 64 * 1024,
            repositories,
            rows,
        }
    }

    /// Records in total.
    pub fn total(&self) -> u64 {
        u64::from(self.blobs) + u64::from(self.repositories) + u64::from(self.rows)
    }
}

/// What a seed did.
#[derive(Debug, Clone, Default)]
pub struct SeedReport {
    /// The data directory already held this seed: nothing was written.
    pub already_seeded: bool,
    /// Blobs written.
    pub blobs: u32,
    /// Their bytes.
    pub blob_bytes: u64,
    /// Repositories written.
    pub repositories: u32,
    /// Commits in them.
    pub commits: u32,
    /// Rows written.
    pub rows: u32,
    /// How long it took.
    pub took: Duration,
}

/// A deterministic 64-bit mix of `x` (splitmix64).
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The size of blob `id` under `plan`: blob 1 is the largest; of the others about 70 % are
/// 1-64 KiB, 23 % 64 KiB-1 MiB, 5 % 1-5 MiB and 2 % 5 MiB up to the maximum.
pub fn blob_size(plan: &SeedPlan, id: i64) -> u64 {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;
    if id == 1 {
        return plan.max_blob_bytes;
    }
    let h = mix(id as u64);
    let (low, high) = match h % 100 {
        0..70 => (KIB, 64 * KIB),
        70..93 => (64 * KIB, MIB),
        93..98 => (MIB, 5 * MIB),
        _ => (5 * MIB, plan.max_blob_bytes),
    };
    let high = high.min(plan.max_blob_bytes).max(1);
    let low = low.min(high);
    low + (h >> 8) % (high - low + 1)
}

/// `len` pseudo-random bytes determined by `seed`.
pub fn blob_bytes(seed: u64, len: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len as usize + 8);
    let mut state = mix(seed) | 1;
    while (bytes.len() as u64) < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len as usize);
    bytes
}

/// Writes `bytes` as the blob `key` of `site`.
pub async fn write_blob(site: &Site, key: &str, bytes: Vec<u8>) -> Result<(), Error> {
    site.blob_store()
        .put(&object_path(key)?, PutPayload::from(bytes))
        .await?;
    Ok(())
}

/// The package file with id `id` (as the seed names it).
pub fn package_file(id: i64) -> PackageFile {
    PackageFile::new(id, &format!("package-{id}.tgz"))
}

/// The project with id `id` (as the seed names it).
pub fn project(id: i64) -> Project {
    Project {
        id,
        disk_path: format!("group-{}/project-{id}.git", id % 5),
    }
}

/// The CI setting with id `id` at `version`.
pub fn ci_setting(id: i64, version: u32) -> CiSetting {
    CiSetting {
        id,
        key: format!("setting.{id}"),
        value: format!("value {id} v{version}"),
    }
}

/// Creates the bare repository at `dir` with `commits` commits on `main` (a few files
/// changing) and a tag, in one `git fast-import`.
pub async fn write_repository(dir: &Path, seed: u64, commits: u32) -> Result<(), Error> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    git(
        Some(dir),
        &["init", "--bare", "--quiet", "--initial-branch=main"],
        None,
        &[],
        GIT_TIMEOUT,
    )
    .await?;
    let mut stream = String::new();
    let data = |s: &str| format!("data {}\n{s}\n", s.len());
    for i in 1..=commits {
        stream.push_str("commit refs/heads/main\n");
        stream.push_str(&format!("mark :{i}\n"));
        stream.push_str(&format!(
            "committer Demo <demo@example.invalid> {} +0000\n",
            1_700_000_000 + u64::from(i) * 3600
        ));
        stream.push_str(&data(&format!("Change {i} of repository {seed}")));
        let readme = format!("# Project {seed}\n\nRevision {i}\n");
        stream.push_str("M 100644 inline README.md\n");
        stream.push_str(&data(&readme));
        let source = format!(
            "fn main() {{\n    println!(\"{}\");\n}}\n",
            mix(seed * 1000 + u64::from(i))
        );
        stream.push_str(&format!("M 100644 inline src/step_{i}.rs\n"));
        stream.push_str(&data(&source));
        stream.push('\n');
    }
    stream.push_str(&format!("reset refs/tags/v{commits}\nfrom :{commits}\n\n"));
    git(
        Some(dir),
        &["fast-import", "--quiet"],
        Some(stream.as_bytes()),
        &[],
        GIT_TIMEOUT,
    )
    .await?;
    Ok(())
}

/// Commits on `main` of repository `project` (how many commits a seeded repository has).
pub fn seeded_commits(id: i64) -> u32 {
    3 + (mix(id as u64 + 7) % 6) as u32
}

fn marker(location: &SiteLocation) -> std::path::PathBuf {
    location.data.join("seed.json")
}

/// The plan this data directory was seeded with, if it was.
pub fn seeded_plan(location: &SiteLocation) -> Option<SeedPlan> {
    let text = std::fs::read_to_string(marker(location)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Seeds `primary` (at `location`) with `plan`, unless the data directory says it was seeded
/// already. Record ids are fixed by the plan, so a seed interrupted half-way and run again
/// rewrites the same records rather than adding new ones.
pub async fn seed(
    primary: &Site,
    location: &SiteLocation,
    plan: SeedPlan,
    mut progress: impl FnMut(&str),
) -> Result<SeedReport, Error> {
    let started = Instant::now();
    if seeded_plan(location).is_some() {
        return Ok(SeedReport {
            already_seeded: true,
            took: started.elapsed(),
            ..SeedReport::default()
        });
    }
    let mut report = SeedReport::default();
    for id in 1..=i64::from(plan.repositories) {
        let project = project(id);
        let commits = seeded_commits(id);
        write_repository(
            &location.repository_dir(&project.disk_path),
            id as u64,
            commits,
        )
        .await?;
        project.replicator(primary).publish_created_event().await?;
        report.repositories += 1;
        report.commits += commits;
    }
    progress(&format!(
        "seeded {} repositories ({} commits)",
        report.repositories, report.commits
    ));
    for id in 1..=i64::from(plan.blobs) {
        let file = package_file(id);
        let size = blob_size(&plan, id);
        write_blob(primary, &file.file_path, blob_bytes(id as u64, size)).await?;
        file.replicator(primary).publish_created_event().await?;
        report.blobs += 1;
        report.blob_bytes += size;
    }
    progress(&format!(
        "seeded {} blobs ({:.1} MiB)",
        report.blobs,
        report.blob_bytes as f64 / (1024.0 * 1024.0)
    ));
    for id in 1..=i64::from(plan.rows) {
        ci_setting(id, 1)
            .replicator(primary)
            .publish_created_event()
            .await?;
        report.rows += 1;
    }
    progress(&format!("seeded {} rows", report.rows));
    std::fs::write(marker(location), serde_json::to_string_pretty(&plan)?)?;
    report.took = started.elapsed();
    Ok(report)
}
