//! Syncing a repository with 10,000 commits through the framework, against a plain
//! `git clone --mirror` of the same repository on the same machine, in the same run.
//!
//! ```text
//! cargo bench -p replicable-examples --bench git
//! REPLICABLE_BENCH_COMMITS=50000 cargo bench -p replicable-examples --bench git
//! ```

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use replicable_core::prelude::*;
use replicable_examples::Project;
use replicable_strategies::git::git;

type Error = Box<dyn std::error::Error + Send + Sync>;

const T: Duration = Duration::from_secs(600);

/// A `git fast-import` stream of `commits` commits on main, each changing one of 100 files.
fn history(commits: usize) -> String {
    let mut s = String::with_capacity(commits * 200);
    for i in 1..=commits {
        let content = format!("line {i}\n");
        let _ = write!(
            s,
            "commit refs/heads/main\nmark :{i}\ncommitter dev <dev@example.invalid> {} +0000\ndata {}\ncommit {i}\n",
            1_700_000_000 + i,
            format!("commit {i}").len()
        );
        if i > 1 {
            let _ = writeln!(s, "from :{}", i - 1);
        }
        let _ = write!(
            s,
            "M 100644 inline file{}.txt\ndata {}\n{content}\n",
            i % 100,
            content.len()
        );
        if i % 1000 == 0 {
            let _ = write!(s, "reset refs/tags/v{}\nfrom :{i}\n\n", i / 1000);
        }
    }
    s
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let commits: usize = std::env::var("REPLICABLE_BENCH_COMMITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir()?;
    let primary_root = dir.path().join("primary");
    let project = Project {
        id: 1,
        disk_path: "group/big.git".into(),
    };
    let bare = primary_root.join(&project.disk_path);
    tokio::fs::create_dir_all(&bare).await?;
    git(
        Some(&bare),
        &["init", "--bare", "--quiet", "--initial-branch=main"],
        None,
        &[],
        T,
    )
    .await?;
    let started = Instant::now();
    git(
        Some(&bare),
        &["fast-import", "--quiet"],
        Some(history(commits).as_bytes()),
        &[],
        T,
    )
    .await?;
    println!(
        "built a repository of {commits} commits in {:.2?}",
        started.elapsed()
    );

    let plain_target = dir.path().join("plain.git");
    let started = Instant::now();
    git(
        None,
        &[
            "clone",
            "--mirror",
            "--quiet",
            "--",
            bare.to_str().unwrap(),
            plain_target.to_str().unwrap(),
        ],
        None,
        &[],
        T,
    )
    .await?;
    let plain = started.elapsed();
    let packed_target = dir.path().join("packed.git");
    let started = Instant::now();
    git(
        None,
        &[
            "clone",
            "--mirror",
            "--no-local",
            "--quiet",
            "--",
            bare.to_str().unwrap(),
            packed_target.to_str().unwrap(),
        ],
        None,
        &[],
        T,
    )
    .await?;
    let packed = started.elapsed();

    let primary = Site::primary("primary")
        .repository_root(&primary_root)
        .in_memory()
        .build()
        .expect("a site");
    project.replicator(&primary).publish_created_event().await?;
    project.replicator(&primary).verify().await?;
    let secondary = Site::secondary(
        "secondary",
        Arc::new(InProcessPrimary::new(primary.clone())),
    )
    .repository_root(dir.path().join("secondary"))
    .in_memory()
    .build()
    .expect("a site");
    let started = Instant::now();
    let outcome = project.replicator(&secondary).sync().await?;
    let framework = started.elapsed();
    assert!(matches!(outcome, SyncOutcome::Synced { .. }), "{outcome:?}");

    // A second sync with nothing new: the fetch path.
    project.replicator(&primary).publish_updated_event().await?;
    project.replicator(&primary).verify().await?;
    let started = Instant::now();
    project.replicator(&secondary).sync().await?;
    let refetch = started.elapsed();

    println!(
        "git clone --mirror       {plain:>10.2?}   (local path: objects hardlinked, as the framework's in-process link does)"
    );
    println!(
        "git clone --mirror --no-local {packed:>10.2?}   (pack protocol, what a networked link pays)"
    );
    println!(
        "framework first sync     {framework:>10.2?}   ratio {:.2}x the plain clone (mirror clone, rename, checksum vs the primary's)",
        framework.as_secs_f64() / plain.as_secs_f64()
    );
    println!(
        "framework resync (fetch) {refetch:>10.2?}   (nothing new: forced pruning fetch, HEAD, checksum)"
    );
    Ok(())
}
