//! Shared pieces of the end-to-end tests: sites laid out as `geo-demo` lays them out, on
//! SQLite files or PostgreSQL schemas, engines, waiting for replication to settle, and the
//! `e2e_site` process.

#![allow(dead_code)]

#[path = "../../src/bin/e2e_site/fault_link.rs"]
pub mod fault_link;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use replicable_core::descriptor::ReplicableDescriptor;
use replicable_core::engine::{Engine, EngineHandle};
use replicable_core::site::Timeouts;
use replicable_core::{Site, SyncState};
use replicable_examples::geo_demo::report::{self, Row};
use replicable_examples::geo_demo::seed::{self, SeedPlan};
use replicable_examples::geo_demo::sites::{self, SecondaryOptions, SiteLocation};
use replicable_tests::PostgresTarget;

/// The database lane of a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// SQLite files in the sites' data directories.
    Sqlite,
    /// PostgreSQL schemas on `REPLICABLE_TEST_POSTGRES_URL`.
    Postgres,
}

/// The primary's and the secondary's locations under `dir`, on `lane` (`None` when the
/// PostgreSQL lane is not set up).
pub fn locations(dir: &Path, lane: Lane) -> Option<(SiteLocation, SiteLocation)> {
    let mut primary = SiteLocation::embedded(dir.join("primary"));
    let mut secondary = SiteLocation::embedded(dir.join("secondary"));
    if lane == Lane::Postgres {
        let target = PostgresTarget::new()?;
        primary.database = Some(target.url.clone());
        primary.schema = Some(format!("{}_p", target.schema));
        secondary.database = Some(target.url.clone());
        secondary.schema = Some(format!("{}_s", target.schema));
    }
    Some((primary, secondary))
}

/// Short claims and a short cursor lease.
pub fn timeouts() -> Timeouts {
    sites::short_timeouts(Duration::from_secs(2), Duration::from_secs(2))
}

/// Opens the primary at `location` and seeds it with `plan`.
pub async fn seeded_primary(location: &SiteLocation, plan: SeedPlan) -> Site {
    let primary = sites::open_primary(location, timeouts())
        .await
        .expect("opening the primary");
    seed::seed(&primary, location, plan, |_| {})
        .await
        .expect("seeding the primary");
    primary
}

/// Opens a secondary at `location` reading `primary`.
pub async fn secondary(location: &SiteLocation, primary: &Site, options: SecondaryOptions) -> Site {
    sites::open_secondary(location, primary, options)
        .await
        .expect("opening the secondary")
}

/// The three replicables.
pub fn replicables() -> Vec<&'static ReplicableDescriptor> {
    sites::replicables().expect("the example models are registered")
}

/// Starts an engine with the demo's settings.
pub async fn engine(site: &Site) -> EngineHandle {
    Engine::new(site.clone(), replicables())
        .config(sites::demo_config())
        .start()
        .await
        .expect("starting an engine")
}

/// The counts of both sites.
pub async fn rows(primary: &Site, secondary: &Site) -> Vec<Row> {
    report::rows(primary, secondary, &replicables())
        .await
        .expect("reading the counts")
}

/// Whether the secondary's log cursor has read every event the primary's log holds.
pub async fn log_consumed(secondary: &Site) -> bool {
    let position = replicable_core::status::event_position(secondary)
        .await
        .expect("reading where the log and the cursor stand");
    position.last_event_id.is_none() || position.events_behind == Some(0)
}

/// Waits until every record is synced and verified (none missing) and the secondary has read
/// every event, or panics after `timeout` with the last counts.
pub async fn wait_settled(primary: &Site, secondary: &Site, timeout: Duration) -> Vec<Row> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut shown = Instant::now();
    loop {
        let rows = rows(primary, secondary).await;
        // Every copy verified is not yet at rest while events remain unread: a
        // `checksum_succeeded` read later sends a verified copy back to verification pending.
        if report::settled(&rows, 0) && log_consumed(secondary).await {
            return rows;
        }
        if shown.elapsed() >= Duration::from_secs(10) {
            eprintln!(
                "  still settling after {:.0?}: {}",
                started.elapsed(),
                report::progress_line(&rows)
            );
            shown = Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "replication did not settle within {timeout:?}: {}",
            report::progress_line(&rows)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Asserts record by record that the secondary holds every record of the primary, synced and
/// verified, nothing `started`, and nothing left in temporary locations.
pub async fn assert_complete(primary: &Site, secondary: &Site, location: &SiteLocation) {
    let complete = report::completeness(primary, secondary, &replicables(), |_, _| false)
        .await
        .expect("checking completeness");
    assert!(
        complete.complete(),
        "incomplete: {:?}",
        &complete.problems[..complete.problems.len().min(10)]
    );
    for row in rows(primary, secondary).await {
        assert_eq!(row.started, 0, "{}: rows left started", row.name);
    }
    let left = sites::leftover_temporaries(location);
    assert!(left.is_empty(), "left in temporary locations: {left:?}");
}

/// Asserts that every blob file the secondary shows under its real name is complete: byte for
/// byte the primary's (no partial copy is ever visible).
pub fn assert_no_partial_copies(primary: &SiteLocation, secondary: &SiteLocation) -> usize {
    let mut checked = 0;
    let root = secondary.blobs();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.file_name().is_some_and(|n| n == ".replicable") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let relative = path.strip_prefix(&root).expect("beneath the root");
            let ours = std::fs::read(&path).expect("reading a copy");
            let theirs = std::fs::read(primary.blobs().join(relative)).expect("the primary's");
            assert!(
                ours == theirs,
                "{} is visible but not the primary's bytes ({} of {} bytes)",
                relative.display(),
                ours.len(),
                theirs.len()
            );
            checked += 1;
        }
    }
    checked
}

/// Registry rows of the secondary in `state`, all replicables together.
pub async fn count_state(secondary: &Site, state: SyncState) -> u64 {
    let mut n = 0;
    for replicable in replicables() {
        let counts = secondary
            .registry_store()
            .counts(replicable.name)
            .await
            .expect("counts");
        n += match state {
            SyncState::Pending => counts.pending,
            SyncState::Started => counts.started,
            SyncState::Synced => counts.synced,
            SyncState::Failed => counts.failed,
        };
    }
    n
}

/// The command line of a secondary process for these locations.
pub fn secondary_command(
    primary: &SiteLocation,
    secondary: &SiteLocation,
    extra: &[&str],
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_e2e_site"));
    command.arg("secondary");
    command.arg("--data").arg(&secondary.data);
    if let Some(url) = &secondary.database {
        command.arg("--database").arg(url);
    }
    if let Some(schema) = &secondary.schema {
        command.arg("--schema").arg(schema);
    }
    command.arg("--primary-data").arg(&primary.data);
    if let Some(url) = &primary.database {
        command.arg("--primary-database").arg(url);
    }
    if let Some(schema) = &primary.schema {
        command.arg("--primary-schema").arg(schema);
    }
    command.args([
        "--cursor-lease",
        "2",
        "--claim-timeout",
        "2",
        "--progress",
        "0",
    ]);
    command.args(extra);
    // The engine reads `REPLICABLE_*` variables as its settings and refuses unknown ones: the
    // test lanes' own variables must not reach it.
    for (key, _) in std::env::vars() {
        if key.starts_with("REPLICABLE_TEST_") || key.starts_with("REPLICABLE_BENCH_") {
            command.env_remove(key);
        }
    }
    command
        .env("E2E_LINK_DELAY_MS", "100")
        .env("REPLICABLE_IDLE__MIN", "50ms")
        .env("REPLICABLE_IDLE__MAX", "500ms")
        .env("REPLICABLE_PERIODS__STUCK_SWEEP", "1s")
        .env("REPLICABLE_PERIODS__BACKFILL", "5s")
        .env("REPLICABLE_PERIODS__VERIFICATION_MAINTENANCE", "5s")
        .env("REPLICABLE_SHUTDOWN_DEADLINE", "2s")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    command
}

/// Spawns a secondary process.
pub fn spawn_secondary(primary: &SiteLocation, secondary: &SiteLocation, extra: &[&str]) -> Child {
    secondary_command(primary, secondary, extra)
        .spawn()
        .expect("spawning e2e_site")
}

/// Sends SIGTERM to `child`.
pub fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -TERM failed");
}

/// Waits for `child` to exit, at most `timeout`; returns how long it took, or `None` (and kills
/// it) if it did not exit.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if child.try_wait().expect("waiting for the child").is_some() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Panics if `child` has exited.
pub fn assert_running(child: &mut Child) {
    if let Some(status) = child.try_wait().expect("polling the child") {
        panic!("the secondary process exited early: {status}");
    }
}

/// Waits until `secondary` has at least `n` synced rows (all replicables), or panics.
pub async fn wait_synced_at_least(secondary: &Site, n: u64, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if count_state(secondary, SyncState::Synced).await >= n {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "fewer than {n} rows synced after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes a new CI setting `id` on the primary and returns how long the secondary took to
/// sync it: with every earlier event consumed, this is how long the log cursor took to pick
/// up new events (after a restart: how long until the process held the cursor lease).
pub async fn probe_cursor(primary: &Site, secondary: &Site, id: i64) -> Duration {
    use replicable_core::prelude::*;
    let started = Instant::now();
    replicable_examples::geo_demo::seed::ci_setting(id, 1)
        .replicator(primary)
        .publish_created_event()
        .await
        .expect("publishing a probe");
    loop {
        let row = secondary
            .registry_store()
            .get("ci_setting", id)
            .await
            .expect("reading the registry");
        if row.is_some_and(|r| r.state == SyncState::Synced) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the probe event was not consumed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
