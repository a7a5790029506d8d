//! `repos`: 50 bare git repositories of ~1,000 commits each (made with `git fast-import`).
//! First sync: the framework publishes one `created` event per project and the engines
//! (default settings) clone and verify them, against `git clone --mirror` of each. Then new
//! commits land in 10 of them: the framework publishes `updated` events and the clock stops
//! when those 10 are synced and verified at their new generation, against `git fetch` in
//! each of the 10 mirrors. The engines keep running between the two phases, as on a site.

use std::path::Path;
use std::time::{Duration, Instant};

use replicable_core::prelude::*;
use replicable_strategies::git::git;

use super::env::{self, Bench, Error, Sites};
use super::report::{Report, Timings, duration};
use crate::Project;
use crate::geo_demo::seed::{project, write_repository};

/// Repositories at scale 1.
pub const REPOSITORIES: u64 = 50;
/// Commits per repository at scale 1.
pub const COMMITS: u64 = 1_000;
/// Repositories that get new commits.
pub const CHANGED: u64 = 10;
/// New commits in each.
const NEW_COMMITS: u32 = 5;
const GIT_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs the scenario.
pub async fn run(bench: &Bench) -> Result<Report, Error> {
    let repos = bench.scaled(REPOSITORIES, 1);
    let commits = bench.scaled(COMMITS, 2) as u32;
    let changed = bench.scaled(CHANGED, 1).min(repos);
    let mut report = Report::new(
        "repos",
        format!(
            "{repos} repositories of {commits} commits: first sync, then new commits in {changed} ({} tracking databases)",
            bench.database_kind()
        ),
    );
    if !bench.tools.have(&["git"]) {
        report.note("skipped: git not found (the framework's repository strategy needs it too)");
        return Ok(report);
    }
    let source = bench.work().join("source-repos");
    let prepared = Instant::now();
    for id in 1..=repos as i64 {
        write_repository(
            &source.join("repositories").join(project(id).disk_path),
            id as u64,
            commits,
        )
        .await?;
    }
    env::flush_disks().await;
    report.note(format!(
        "prepared the repositories with git fast-import in {} (not measured)",
        duration(prepared.elapsed())
    ));
    let mut first = Timings::framework(
        format!("framework first sync (engine, {})", bench.database_kind()),
        None,
    );
    let mut clone = Timings::tool("git clone --mirror, each", None);
    let mut incremental = Timings::framework("framework incremental sync", None);
    let mut fetch = Timings::tool("git fetch, each changed mirror", None);
    for rep in 0..bench.settings.reps {
        let framework_first = rep % 2 == 0;
        let dir = bench.fresh_dir("repos")?;
        let sites = Sites::open(
            bench.location_with_db(&source, &dir, "primary"),
            bench.location(&dir.join("secondary"), "secondary"),
            None,
        )
        .await?;
        let engines = sites.start_engines().await?;
        let mirrors = dir.join("mirrors");
        // First sync, alternating who goes first.
        for turn in 0..2 {
            if (turn == 0) == framework_first {
                let started = Instant::now();
                for id in 1..=repos as i64 {
                    project(id)
                        .replicator(&sites.primary)
                        .publish_created_event()
                        .await?;
                }
                env::wait_until_synced(
                    &sites.secondary,
                    "project",
                    repos,
                    true,
                    bench.settings.timeout,
                )
                .await?;
                first.samples.push(started.elapsed());
            } else {
                let started = Instant::now();
                for id in 1..=repos as i64 {
                    let p = project(id);
                    let from = source.join("repositories").join(&p.disk_path);
                    let to = mirrors.join(&p.disk_path);
                    git_clone_mirror(&from, &to).await?;
                }
                clone.samples.push(started.elapsed());
            }
        }
        // New commits in the first `changed` repositories (not measured).
        for id in 1..=changed as i64 {
            append_commits(
                &source.join("repositories").join(project(id).disk_path),
                rep as u32,
                NEW_COMMITS,
            )
            .await?;
        }
        for turn in 0..2 {
            if (turn == 0) == framework_first {
                let started = Instant::now();
                for id in 1..=changed as i64 {
                    project(id)
                        .replicator(&sites.primary)
                        .publish_updated_event()
                        .await?;
                }
                wait_until_current(&sites, changed, bench.settings.timeout).await?;
                incremental.samples.push(started.elapsed());
            } else {
                let started = Instant::now();
                for id in 1..=changed as i64 {
                    let to = mirrors.join(project(id).disk_path);
                    git(
                        Some(&to),
                        &["fetch", "--quiet", "--prune", "origin"],
                        None,
                        &[],
                        GIT_TIMEOUT,
                    )
                    .await?;
                }
                fetch.samples.push(started.elapsed());
            }
        }
        engines.shutdown().await;
        check_same_heads(&source, &sites.secondary_location.repositories(), repos).await?;
        sites.drop_databases(bench).await?;
        drop(sites);
        bench.discard(&dir).await?;
    }
    report.timings(&[first, clone]);
    report.timings(&[incremental, fetch]);
    report.note("the git commands run one repository after the other; the framework syncs 4 at once (default)");
    Ok(report)
}

async fn git_clone_mirror(from: &Path, to: &Path) -> Result<(), Error> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let (from, to) = (from.display().to_string(), to.display().to_string());
    git(
        None,
        &["clone", "--quiet", "--mirror", &from, &to],
        None,
        &[],
        GIT_TIMEOUT,
    )
    .await?;
    Ok(())
}

/// Appends `commits` commits to `main` of the bare repository at `dir`.
async fn append_commits(dir: &Path, round: u32, commits: u32) -> Result<(), Error> {
    let mut stream = String::new();
    let data = |s: &str| format!("data {}\n{s}\n", s.len());
    for i in 1..=commits {
        stream.push_str("commit refs/heads/main\n");
        stream.push_str(&format!(
            "committer Bench <bench@example.invalid> {} +0000\n",
            1_800_000_000 + u64::from(round * 1000 + i) * 60
        ));
        stream.push_str(&data(&format!("Round {round}, change {i}")));
        if i == 1 {
            stream.push_str("from refs/heads/main^0\n");
        }
        stream.push_str(&format!("M 100644 inline rounds/{round}/{i}.txt\n"));
        stream.push_str(&data(&format!("round {round} change {i}\n")));
        stream.push('\n');
    }
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

/// Waits until projects `1..=changed` are synced and verified at the primary's generation.
async fn wait_until_current(sites: &Sites, changed: u64, timeout: Duration) -> Result<(), Error> {
    let started = Instant::now();
    let mut left: Vec<i64> = (1..=changed as i64).collect();
    while !left.is_empty() {
        let mut still = Vec::new();
        for &id in &left {
            let generation = sites
                .primary
                .records()
                .get("project", id)
                .await?
                .map(|r| r.generation);
            let row = sites.secondary.registry_store().get("project", id).await?;
            let current = row.is_some_and(|row| {
                row.state == SyncState::Synced
                    && row.synced_generation == generation
                    && row.verification.verification_state == VerificationState::Succeeded
            });
            if !current {
                still.push(id);
            }
        }
        left = still;
        if !left.is_empty() {
            if started.elapsed() > timeout {
                return Err(format!(
                    "projects {left:?} not synced at their new generation after {timeout:?}"
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Checks that the secondary's copies have the same `main` as the primary's repositories.
async fn check_same_heads(source: &Path, copies: &Path, repos: u64) -> Result<(), Error> {
    for id in 1..=repos as i64 {
        let p: Project = project(id);
        let primary = main_of(&source.join("repositories").join(&p.disk_path)).await?;
        let copy = main_of(&copies.join(&p.disk_path)).await?;
        if primary != copy {
            return Err(format!(
                "project {id}: the copy's main is {copy}, the primary's {primary}"
            )
            .into());
        }
    }
    Ok(())
}

async fn main_of(repository: &Path) -> Result<String, Error> {
    let out = git(
        Some(repository),
        &["rev-parse", "refs/heads/main"],
        None,
        &[],
        GIT_TIMEOUT,
    )
    .await?;
    Ok(out.trim().to_owned())
}
