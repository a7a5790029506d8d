//! What every scenario shares: the work directory, fresh directories and databases per run,
//! the reference tools found on the machine, the framework's sites and engines at default
//! settings, and waiting until a secondary is synced and verified.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use replicable_core::engine::{Engine, EngineConfig, EngineHandle};
use replicable_core::observer::SyncObserver;
use replicable_core::site::Timeouts;
use replicable_core::status::secondary_status;
use replicable_core::{Site, find_replicable};

use crate::geo_demo::sites::{self, SecondaryOptions, SiteLocation};

/// The error type of the bench.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Settings of a bench run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Repetitions of each contender.
    pub reps: usize,
    /// Tracking databases in this PostgreSQL instead of SQLite files.
    pub postgres: Option<String>,
    /// Multiplies record counts and sizes (1.0: the documented sizes).
    pub scale: f64,
    /// Where the work directory is made (deleted at the end).
    pub dir: PathBuf,
    /// Gives up waiting for one framework run after this long.
    pub timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            reps: 3,
            postgres: None,
            scale: 1.0,
            dir: PathBuf::from("."),
            timeout: Duration::from_secs(900),
        }
    }
}

/// The shared state of a bench run.
#[derive(Debug)]
pub struct Bench {
    /// The settings.
    pub settings: Settings,
    work: tempfile::TempDir,
    next_run: AtomicU64,
    /// The reference tools found.
    pub tools: Tools,
}

/// Reference tools, present or not.
#[derive(Debug, Clone, Default)]
pub struct Tools {
    found: Vec<&'static str>,
    missing: Vec<&'static str>,
}

/// Every tool a scenario may compare with.
const TOOLS: [&str; 10] = [
    "cp",
    "rsync",
    "rclone",
    "sha256sum",
    "openssl",
    "git",
    "sqlite3",
    "psql",
    "find",
    "xargs",
];

impl Tools {
    /// Looks for each tool on `PATH`.
    pub fn detect() -> Self {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut tools = Self::default();
        for tool in TOOLS {
            if std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()) {
                tools.found.push(tool);
            } else {
                tools.missing.push(tool);
            }
        }
        tools
    }

    /// Whether every tool in `names` is present.
    pub fn have(&self, names: &[&str]) -> bool {
        names.iter().all(|n| self.found.contains(n))
    }

    /// One line: the tools found and those missing.
    pub fn summary(&self) -> String {
        format!(
            "reference tools found: {}; missing (skipped): {}",
            self.found.join(" "),
            if self.missing.is_empty() {
                "none".to_owned()
            } else {
                self.missing.join(" ")
            }
        )
    }

    /// The missing tools among `names`.
    pub fn missing<'a>(&self, names: &[&'a str]) -> Vec<&'a str> {
        names
            .iter()
            .copied()
            .filter(|n| !self.found.contains(n))
            .collect()
    }
}

impl Bench {
    /// A bench with a fresh work directory under `settings.dir`.
    pub fn new(settings: Settings) -> Result<Self, Error> {
        std::fs::create_dir_all(&settings.dir)?;
        // Absolute: git runs in the secondary's repositories, where a relative path to the
        // primary's would not resolve.
        let parent = std::path::absolute(&settings.dir)?;
        let work = tempfile::Builder::new()
            .prefix("replicable-bench-")
            .tempdir_in(parent)?;
        Ok(Self {
            settings,
            work,
            next_run: AtomicU64::new(1),
            tools: Tools::detect(),
        })
    }

    /// The work directory.
    pub fn work(&self) -> &Path {
        self.work.path()
    }

    /// `n` scaled by `--scale`, at least `min`.
    pub fn scaled(&self, n: u64, min: u64) -> u64 {
        ((n as f64 * self.settings.scale).round() as u64).max(min)
    }

    /// A directory no run used before, for one run.
    pub fn fresh_dir(&self, what: &str) -> Result<PathBuf, Error> {
        let n = self.next_run.fetch_add(1, Ordering::Relaxed);
        let dir = self.work().join(format!("run-{n:03}-{what}"));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// A PostgreSQL schema name no run used before.
    fn fresh_schema(&self, what: &str) -> String {
        let n = self.next_run.fetch_add(1, Ordering::Relaxed);
        format!("rbench_{}_{n}_{what}", std::process::id())
    }

    /// The location of a site whose data (blobs, repositories) is under `data`, with a fresh
    /// tracking database: `data/site.db`, or a fresh schema in `--postgres`.
    pub fn location(&self, data: &Path, role: &str) -> SiteLocation {
        match &self.settings.postgres {
            Some(url) => SiteLocation::new(data, Some(url.clone()), Some(self.fresh_schema(role))),
            None => SiteLocation::embedded(data),
        }
    }

    /// The same, but with the SQLite file at `db_dir/site.db` (for a primary whose blobs are
    /// shared by every run).
    pub fn location_with_db(&self, data: &Path, db_dir: &Path, role: &str) -> SiteLocation {
        match &self.settings.postgres {
            Some(_) => self.location(data, role),
            None => SiteLocation::new(
                data,
                Some(format!("sqlite://{}", db_dir.join("site.db").display())),
                None,
            ),
        }
    }

    /// Drops the PostgreSQL schema of `location` (nothing for SQLite: its file goes with the
    /// run's directory).
    pub async fn drop_database(&self, location: &SiteLocation) -> Result<(), Error> {
        if let (Some(url), Some(schema)) = (&self.settings.postgres, &location.schema) {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(url)
                .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE"
            )))
            .execute(&pool)
            .await?;
            pool.close().await;
        }
        Ok(())
    }

    /// Where the tracking databases are, as printed.
    pub fn database_kind(&self) -> &'static str {
        if self.settings.postgres.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    }

    /// Moves a run's directory of many small files aside, to be deleted with the work
    /// directory when the bench ends, and flushes the disk. Deleting thousands of files slows
    /// the creation of new ones for minutes on some file systems (ext4 without a journal
    /// skips inodes freed in the last one to five minutes, reading each one's inode block to
    /// tell), which would charge one contender's cleanup to the next one's run.
    pub async fn set_aside(&self, dir: &Path) -> Result<(), Error> {
        if dir.exists() {
            let aside = self.work().join("set-aside");
            std::fs::create_dir_all(&aside)?;
            let n = self.next_run.fetch_add(1, Ordering::Relaxed);
            std::fs::rename(dir, aside.join(format!("run-{n}")))?;
        }
        flush_disks().await;
        Ok(())
    }

    /// Removes a run's directory and flushes the disk, so that the next run does not pay for
    /// this one's deletions.
    pub async fn discard(&self, dir: &Path) -> Result<(), Error> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        flush_disks().await;
        Ok(())
    }

    /// Runs `program args` (a reference tool), timing it; fails unless it exits 0.
    pub async fn time_command(&self, program: &str, args: &[&str]) -> Result<Duration, Error> {
        let started = Instant::now();
        let output = tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .await?;
        let took = started.elapsed();
        if !output.status.success() {
            return Err(format!(
                "{program} {} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )
            .into());
        }
        Ok(took)
    }

    /// Runs a shell script (a reference pipeline), timing it.
    pub async fn time_script(&self, script: &str) -> Result<Duration, Error> {
        self.time_command("sh", &["-c", script]).await
    }
}

/// `sync(1)`: writes dirty pages out, so that one run's writes are not flushed during the next.
pub async fn flush_disks() {
    let _ = tokio::process::Command::new("sync").status().await;
}

/// A primary and a secondary of the example application, opened with default timeouts.
#[derive(Debug)]
pub struct Sites {
    /// The primary.
    pub primary: Site,
    /// The secondary.
    pub secondary: Site,
    /// Where the primary is.
    pub primary_location: SiteLocation,
    /// Where the secondary is.
    pub secondary_location: SiteLocation,
}

impl Sites {
    /// Opens both sites (creating and migrating their databases).
    pub async fn open(
        primary_location: SiteLocation,
        secondary_location: SiteLocation,
        observer: Option<Arc<dyn SyncObserver>>,
    ) -> Result<Self, Error> {
        let primary = sites::open_primary(&primary_location, Timeouts::default()).await?;
        let mut options = SecondaryOptions::new(Timeouts::default());
        options.observer = observer;
        let secondary = sites::open_secondary(&secondary_location, &primary, options).await?;
        Ok(Self {
            primary,
            secondary,
            primary_location,
            secondary_location,
        })
    }

    /// Starts the engines of both sites with default settings, running every replicable of the
    /// example application.
    pub async fn start_engines(&self) -> Result<Engines, Error> {
        let replicables = sites::replicables()?;
        // The defaults, or what `REPLICABLE_*` variables set (as for `replicable run`).
        let config = EngineConfig::load(None)?;
        let primary = Engine::new(self.primary.clone(), replicables.clone())
            .config(config.clone())
            .start()
            .await?;
        let secondary = Engine::new(self.secondary.clone(), replicables)
            .config(config)
            .start()
            .await?;
        Ok(Engines { primary, secondary })
    }

    /// Drops the PostgreSQL schemas of both sites.
    pub async fn drop_databases(&self, bench: &Bench) -> Result<(), Error> {
        bench.drop_database(&self.primary_location).await?;
        bench.drop_database(&self.secondary_location).await
    }
}

/// The running engines of a primary and a secondary.
#[derive(Debug)]
pub struct Engines {
    /// The primary's.
    pub primary: EngineHandle,
    /// The secondary's.
    pub secondary: EngineHandle,
}

impl Engines {
    /// Graceful shutdown of both.
    pub async fn shutdown(self) {
        self.secondary.shutdown().await;
        self.primary.shutdown().await;
    }
}

/// Waits until the secondary's registry of `replicable` has `expected` rows, all synced and
/// (if `verified`) verified. Polls the status every 50 ms; fails after `timeout` with the last
/// counts.
pub async fn wait_until_synced(
    secondary: &Site,
    replicable: &str,
    expected: u64,
    verified: bool,
    timeout: Duration,
) -> Result<(), Error> {
    find_replicable(replicable)?.ok_or_else(|| format!("{replicable} is not registered"))?;
    let started = Instant::now();
    loop {
        let s = secondary_status(secondary, replicable).await?;
        if s.registry_count == expected
            && s.synced_count == expected
            && (!verified || s.verified_count == expected)
        {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(format!(
                "{replicable}: not synced and verified after {timeout:?}: {expected} expected, \
                 registry {} pending {} started {} synced {} failed {} verified {} \
                 verification failed {}",
                s.registry_count,
                s.pending_count,
                s.started_count,
                s.synced_count,
                s.failed_count,
                s.verified_count,
                s.verification_failed_count
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Regular files under `dir`, outside the framework's own `.replicable` directory.
pub fn count_files(dir: &Path) -> std::io::Result<u64> {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                if entry.file_name() != ".replicable" {
                    stack.push(entry.path());
                }
            } else if kind.is_file() {
                n += 1;
            }
        }
    }
    Ok(n)
}

/// This process's peak resident memory since the last [`reset_peak_rss`] (`VmHWM`), in bytes.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// This process's resident memory now (`VmRSS`), in bytes.
pub fn current_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The CPU time this process has used so far, all threads: user and system
/// (`/proc/self/stat`, whose times are in the kernel's fixed `USER_HZ` of 100 a second).
pub fn process_cpu() -> Option<CpuTime> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; the fields after its `)` are plain.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| -> Option<Duration> {
        Some(Duration::from_millis(
            fields.get(i)?.parse::<u64>().ok()? * 10,
        ))
    };
    Some(CpuTime {
        user: ticks(11)?,
        system: ticks(12)?,
    })
}

/// CPU time, user and system.
#[derive(Debug, Clone, Copy)]
pub struct CpuTime {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTime {
    /// The time from `earlier` to this one.
    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }

    /// User and system together.
    pub fn total(self) -> Duration {
        self.user + self.system
    }
}

/// Resets the peak resident memory to the current one (`/proc/self/clear_refs`, value 5).
/// Returns whether the kernel accepted it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// `len` pseudo-random bytes written to `path` in 1 MiB chunks (any size, little memory).
pub fn write_random_file(path: &Path, seed: u64, len: u64) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut left = len;
    let mut chunk_seed = seed;
    while left > 0 {
        let n = left.min(1024 * 1024);
        file.write_all(&crate::geo_demo::seed::blob_bytes(chunk_seed, n))?;
        chunk_seed = chunk_seed.wrapping_add(0x9E37_79B9);
        left -= n;
    }
    file.flush()
}
