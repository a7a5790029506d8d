//! `replicable-bench`: the framework, run by its engines at default settings, against the
//! tools a team would otherwise script, on the same data in the same run.
//!
//! ```text
//! cargo run --release -p replicable-examples --bin replicable-bench               # the quick scenarios
//! cargo run --release -p replicable-examples --bin replicable-bench -- blobs-1mib sha256 --reps 5
//! cargo run --release -p replicable-examples --bin replicable-bench -- all --postgres postgres://postgres@127.0.0.1:5432/test
//! ```
//!
//! Each scenario prepares its data (not measured), then runs the framework and each reference
//! tool found on the machine alternately, `--reps` times, each run into a fresh directory and
//! fresh tracking databases, and prints medians, minima and the ratio framework / tool of the
//! medians. Nothing is installed: a missing tool is skipped and named. One module per scenario;
//! [`env`] holds what they share, [`report`] the table.

pub mod backfill;
pub mod blobs;
pub mod env;
pub mod lag;
pub mod publish;
pub mod report;
pub mod repos;
pub mod rows;
pub mod sha256;
pub mod status;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

pub use env::{Bench, Error, Settings};
pub use report::Report;

/// Benchmarks of the replicable framework against the reference tools.
#[derive(Debug, Parser)]
#[command(name = "replicable-bench", version, after_help = SCENARIOS_HELP)]
pub struct Cli {
    /// Scenarios to run (default: `quick`).
    #[arg(value_enum)]
    pub scenarios: Vec<Scenario>,
    /// Repetitions of each contender.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Keep the tracking databases in this PostgreSQL (fresh schemas, dropped afterwards)
    /// instead of SQLite files.
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
    /// Multiplies record counts and sizes (0.1 for a quick look; results are then not the
    /// documented ones).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Where to make the work directory (removed at the end).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Gives up on one framework run after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
}

const SCENARIOS_HELP: &str = "\
Scenarios:
  blobs-1mib     1,000 x 1 MiB files, events published -> secondary synced and verified,
                 vs cp -r, rsync -a, rclone copy --checksum, cp + sha256sum both sides
  blobs-4kib     20,000 x 4 KiB files, same tools
  blob-1gib      one 1 GiB file, same tools, plus the framework's peak memory
  sha256         the framework's checksum of a 1 GiB file vs openssl dgst -sha256, sha256sum
  publish        20,000 single publishes vs plain SQL doing the same writes (one transaction
                 each); 100,000 batch-published in batches of 1,000 vs plain SQL multi-row
                 INSERTs, one transaction per batch
  status         status and /metrics at 1,000,000 registry rows, the primary's status at
                 1,000,000 records, vs a grouped count of the registry in sqlite3/psql
  backfill-100k  one backfill pass over 100,000 primary records vs sqlite3 INSERT ... SELECT
  backfill       the same at 100,000 and 1,000,000 records, and the growth 1M / 100k
  lag            replication lag p50 / p99 at a steady 200 and 1,000 events/s, ~20 s each
  repos          50 repositories of ~1,000 commits: first sync vs git clone --mirror, then new
                 commits in 10 vs git fetch
  rows           100,000 rows (database strategy) vs sqlite3 INSERT ... SELECT
  quick          blobs-1mib blobs-4kib blob-1gib sha256 publish status backfill-100k lag
  all            every scenario";

/// A scenario, or a group of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// 1,000 x 1 MiB blobs.
    #[value(name = "blobs-1mib")]
    Blobs1Mib,
    /// 20,000 x 4 KiB blobs.
    #[value(name = "blobs-4kib")]
    Blobs4Kib,
    /// One 1 GiB blob.
    #[value(name = "blob-1gib")]
    Blob1Gib,
    /// SHA-256 of 1 GiB.
    Sha256,
    /// 20,000 single publishes and 100,000 batch-published.
    Publish,
    /// Status at 1,000,000 registry rows.
    Status,
    /// Backfill of 100,000 records.
    #[value(name = "backfill-100k")]
    Backfill100k,
    /// Backfill of 100,000 and 1,000,000 records.
    Backfill,
    /// Replication lag at a steady rate.
    Lag,
    /// 50 repositories.
    Repos,
    /// 100,000 rows.
    Rows,
    /// The quick ones.
    Quick,
    /// Every scenario.
    All,
}

impl Scenario {
    /// The quick scenarios, in the order they run.
    pub const QUICK: [Scenario; 8] = [
        Scenario::Blobs1Mib,
        Scenario::Blobs4Kib,
        Scenario::Blob1Gib,
        Scenario::Sha256,
        Scenario::Publish,
        Scenario::Status,
        Scenario::Backfill100k,
        Scenario::Lag,
    ];

    /// Every single scenario.
    pub const ALL: [Scenario; 10] = [
        Scenario::Blobs1Mib,
        Scenario::Blobs4Kib,
        Scenario::Blob1Gib,
        Scenario::Sha256,
        Scenario::Publish,
        Scenario::Status,
        Scenario::Backfill,
        Scenario::Lag,
        Scenario::Repos,
        Scenario::Rows,
    ];

    /// The name on the command line.
    pub fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }
}

/// Expands groups, keeping the order and dropping repeats.
pub fn expand(scenarios: &[Scenario]) -> Vec<Scenario> {
    let mut out = Vec::new();
    let asked = if scenarios.is_empty() {
        &[Scenario::Quick][..]
    } else {
        scenarios
    };
    for &s in asked {
        let group: &[Scenario] = match s {
            Scenario::Quick => &Scenario::QUICK,
            Scenario::All => &Scenario::ALL,
            _ => std::slice::from_ref(&s),
        };
        for &g in group {
            if !out.contains(&g) {
                out.push(g);
            }
        }
    }
    out
}

/// Runs one scenario.
pub async fn run_scenario(bench: &Bench, scenario: Scenario) -> Result<Report, Error> {
    let name = scenario.name();
    match scenario {
        Scenario::Blobs1Mib => blobs::run(bench, &name, blobs::BlobSet::MIB).await,
        Scenario::Blobs4Kib => blobs::run(bench, &name, blobs::BlobSet::KIB).await,
        Scenario::Blob1Gib => blobs::run(bench, &name, blobs::BlobSet::GIB).await,
        Scenario::Sha256 => sha256::run(bench).await,
        Scenario::Publish => publish::run(bench).await,
        Scenario::Status => status::run(bench).await,
        Scenario::Backfill100k => backfill::run(bench, &name, &backfill::SIZES[..1]).await,
        Scenario::Backfill => backfill::run(bench, &name, &backfill::SIZES).await,
        Scenario::Lag => lag::run(bench, &lag::RATES, lag::PERIOD).await,
        Scenario::Repos => repos::run(bench).await,
        Scenario::Rows => rows::run(bench).await,
        Scenario::Quick | Scenario::All => Err("a group is expanded before it runs".into()),
    }
}

/// The entry point of the `replicable-bench` binary.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log written to a file stays plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // sqlx warns of statements over a second: the fills of a million rows the bench
                // itself runs, noise between its tables.
                .unwrap_or_else(|_| {
                    "warn,replicable_core::replicator=error,sqlx::query=error".into()
                }),
        )
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("replicable-bench: starting the runtime failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (code, bench) = runtime.block_on(run(cli));
    // The runtime first: tasks of an interrupted scenario may still write into the work
    // directory, which goes with the bench.
    drop(runtime);
    drop(bench);
    code
}

/// The first three fields of `/proc/loadavg`.
fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Runs the scenarios the command line names. Returns the bench too, so that its work
/// directory is removed after the runtime stopped.
async fn run(cli: Cli) -> (ExitCode, Option<Bench>) {
    let settings = Settings {
        reps: cli.reps.max(1),
        postgres: cli.postgres,
        scale: if cli.scale > 0.0 { cli.scale } else { 1.0 },
        dir: cli.dir,
        timeout: Duration::from_secs(cli.timeout.max(1)),
    };
    let bench = match Bench::new(settings) {
        Ok(bench) => bench,
        Err(e) => {
            eprintln!("replicable-bench: {e}");
            return (ExitCode::FAILURE, None);
        }
    };
    let scenarios = expand(&cli.scenarios);
    println!(
        "replicable-bench: {} | {} reps | tracking databases: {} | scale {} | {} cores | work dir {}",
        scenarios
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(" "),
        bench.settings.reps,
        bench.database_kind(),
        bench.settings.scale,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        bench.work().display()
    );
    println!("{}", bench.tools.summary());
    let code = tokio::select! {
        code = run_all(&bench, &scenarios) => code,
        () = replicable_core::engine::wait_for_signal() => {
            eprintln!(
                "replicable-bench: interrupted; removing {} (PostgreSQL schemas rbench_* of the \
                 interrupted run are left)",
                bench.work().display()
            );
            ExitCode::from(130)
        }
    };
    (code, Some(bench))
}

async fn run_all(bench: &Bench, scenarios: &[Scenario]) -> ExitCode {
    let mut failed = 0;
    for &scenario in scenarios {
        match run_scenario(bench, scenario).await {
            Ok(mut report) => {
                if let Some(load) = load_average() {
                    report.note(format!(
                        "load average at the end (1, 5, 15 min): {load} (other work on the machine shows here)"
                    ));
                }
                println!("\n{}", report.render());
            }
            Err(e) => {
                failed += 1;
                println!("\n== {}: FAILED: {e}", scenario.name());
            }
        }
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
