//! `geo-demo`: the main job. A primary and a secondary of the example application, run by their
//! engines, in one process (`geo-demo run`, the default) or each in its own
//! (`geo-demo primary`, `geo-demo secondary`).

pub mod proofs;
pub mod report;
pub mod seed;
pub mod sites;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use clap::{Args, Parser, Subcommand};
use replicable_core::engine::{Engine, EngineConfig, EngineHandle};
use replicable_core::link::http::token::SharedSecret;
use replicable_core::link::http::{HttpPrimary, HttpPrimaryConfig};
use replicable_core::observer::SyncObserver;
use replicable_core::{PrimaryLink, Site};

use proofs::{Demo, deliberately_missing};
use seed::SeedPlan;
use sites::{Error, SecondaryOptions, SiteLocation};

/// Replicates a small package registry (package files, projects, CI settings) from a primary
/// site to a secondary one.
#[derive(Debug, Parser)]
#[command(name = "geo-demo", version)]
pub struct Cli {
    /// What to run (default: `run`).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Seeds a primary, runs the engines of a primary and a secondary in this process, proves
    /// each behaviour live, prints the status table; exits 0 only if the secondary holds every
    /// record of the primary, synced and verified.
    Run(RunArgs),
    /// Runs the primary's engine until SIGINT / SIGTERM.
    Primary(PrimaryArgs),
    /// Runs a secondary's engine until SIGINT / SIGTERM. It reads its primary over the HTTP link
    /// (`--primary-url`), or the primary's stores directly (`--primary-data`).
    Secondary(SecondaryArgs),
    /// Prints the status table of a primary and a secondary; exits 0 only if the secondary
    /// holds every record of the primary, synced and verified.
    Status(StatusArgs),
    /// The operator commands (`status`, `registry list|show`, `resync`, `reverify`, `dataloss`,
    /// `events`, `pause`, `resume`) on one site: the secondary at `--data` when
    /// `--primary-data` is given, else the primary at `--data`.
    Admin(AdminArgs),
}

/// `geo-demo admin`.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// The site's data.
    #[command(flatten)]
    pub site: SiteArgs,
    /// The primary's data directory, for a secondary (without it, the site is the primary).
    #[arg(long)]
    pub primary_data: Option<PathBuf>,
    /// The primary's database (default: `PRIMARY_DATA/site.db`).
    #[arg(long)]
    pub primary_database: Option<String>,
    /// PostgreSQL: the schema holding the primary's tables.
    #[arg(long)]
    pub primary_schema: Option<String>,
    /// The operator command.
    #[command(subcommand)]
    pub command: replicable_core::cli::Command,
}

/// `geo-demo run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The data directory (`primary/` and `secondary/` under it); reused by later runs.
    #[arg(long, default_value = "geo-demo-data")]
    pub data: PathBuf,
    /// Blobs to seed.
    #[arg(long, default_value_t = SeedPlan::demo().blobs)]
    pub blobs: u32,
    /// Repositories to seed.
    #[arg(long, default_value_t = SeedPlan::demo().repositories)]
    pub repositories: u32,
    /// Rows to seed.
    #[arg(long, default_value_t = SeedPlan::demo().rows)]
    pub rows: u32,
    /// The largest blob, in MiB.
    #[arg(long, default_value_t = 20)]
    pub max_blob_mib: u64,
    /// Gives up waiting for the initial replication after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

impl Default for RunArgs {
    fn default() -> Self {
        let plan = SeedPlan::demo();
        Self {
            data: PathBuf::from("geo-demo-data"),
            blobs: plan.blobs,
            repositories: plan.repositories,
            rows: plan.rows,
            max_blob_mib: plan.max_blob_bytes / (1024 * 1024),
            timeout: 300,
        }
    }
}

/// Where a site's data is, on the command line.
#[derive(Debug, Clone, Args)]
pub struct SiteArgs {
    /// The site's data directory (blobs, repositories, and `site.db` unless `--database`).
    #[arg(long)]
    pub data: PathBuf,
    /// The site's database: `sqlite://FILE` or `postgres://...` (default: `DATA/site.db`).
    #[arg(long)]
    pub database: Option<String>,
    /// PostgreSQL: the schema holding the site's tables.
    #[arg(long)]
    pub schema: Option<String>,
}

impl SiteArgs {
    /// The location.
    pub fn location(&self) -> SiteLocation {
        SiteLocation::new(&self.data, self.database.clone(), self.schema.clone())
    }
}

/// Engine settings and timeouts of a site process.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// A TOML file of engine settings (`REPLICABLE_*` environment variables override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// How long the log cursor's lease lasts without renewal, in seconds.
    #[arg(long, default_value_t = 30)]
    pub cursor_lease: u64,
    /// How long a claim may go without a heartbeat before it is taken for dead, in seconds.
    #[arg(long, default_value_t = 60)]
    pub claim_timeout: u64,
    /// Prints a progress line every this many seconds (0: never).
    #[arg(long, default_value_t = 1)]
    pub progress: u64,
    /// Serves Prometheus metrics at `http://ADDR/metrics` (e.g. `127.0.0.1:9464`).
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Serves the site's metrics when `--metrics-listen` asks for it; the gauges are refreshed from
/// the stores every 15 s, so a scrape never counts a table.
async fn serve_metrics(
    args: &EngineArgs,
    site: &Site,
) -> Result<Option<replicable_core::metrics::MetricsServer>, Error> {
    let Some(addr) = args.metrics_listen else {
        return Ok(None);
    };
    let metrics = Arc::new(replicable_core::metrics::Metrics::new(
        site.role(),
        &sites::replicables()?,
    ));
    replicable_core::metrics::spawn_refresh(
        metrics.clone(),
        site.clone(),
        replicable_core::metrics::DEFAULT_REFRESH,
    );
    let server = replicable_core::metrics::serve(addr, metrics).await?;
    println!("metrics: http://{}/metrics", server.local_addr());
    Ok(Some(server))
}

impl EngineArgs {
    fn timeouts(&self) -> replicable_core::site::Timeouts {
        sites::short_timeouts(
            Duration::from_secs(self.cursor_lease.max(1)),
            Duration::from_secs(self.claim_timeout.max(1)),
        )
    }

    fn config(&self) -> Result<EngineConfig, Error> {
        Ok(EngineConfig::load(self.config.as_deref())?)
    }
}

/// `geo-demo primary`.
#[derive(Debug, Clone, Args)]
pub struct PrimaryArgs {
    /// The primary's data.
    #[command(flatten)]
    pub site: SiteArgs,
    /// Seeds about N records first (60 % rows, 2 % repositories, small blobs), unless the data
    /// directory was seeded already.
    #[arg(long)]
    pub seed: Option<u32>,
    /// Engine settings.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// The primary's API.
    #[command(flatten)]
    pub api: PrimaryApiArgs,
}

/// The primary's API: the HTTP link its secondaries read it through.
#[derive(Debug, Clone, Args)]
pub struct PrimaryApiArgs {
    /// Serves the primary's API on ADDR (e.g. `127.0.0.1:7070`; port 0 picks a free port) and
    /// prints `api: URL`.
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// The name of the secondary allowed to read the API.
    #[arg(long, default_value = "secondary")]
    pub secondary_name: String,
    /// A file holding the secret shared with that secondary (default: the
    /// `GEO_DEMO_LINK_SECRET` environment variable). At least 32 bytes.
    #[arg(long)]
    pub link_secret_file: Option<PathBuf>,
    /// Serves TLS with this certificate chain (PEM; with `--tls-key`).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// The environment variable holding the link's secret when no file is given.
pub const LINK_SECRET_VAR: &str = "GEO_DEMO_LINK_SECRET";

fn link_secret(file: Option<&std::path::Path>) -> Result<SharedSecret, Error> {
    Ok(match file {
        Some(file) => SharedSecret::from_file(file)?,
        None => SharedSecret::from_env(LINK_SECRET_VAR)?,
    })
}

/// Where a secondary process finds its primary: its API, or its stores.
#[derive(Debug, Clone, Args)]
pub struct SecondaryLinkArgs {
    /// The primary's API (`http://HOST:PORT/` or `https://...`): the secondary reads the
    /// primary over the HTTP link, sharing nothing with it but this URL and a secret.
    #[arg(long, conflicts_with_all = ["primary_data", "primary_database", "primary_schema"])]
    pub primary_url: Option<String>,
    /// The primary's data directory, read directly (without `--primary-url`).
    #[arg(long, required_unless_present = "primary_url")]
    pub primary_data: Option<PathBuf>,
    /// The primary's database (default: `PRIMARY_DATA/site.db`).
    #[arg(long)]
    pub primary_database: Option<String>,
    /// PostgreSQL: the schema holding the primary's tables.
    #[arg(long)]
    pub primary_schema: Option<String>,
    /// This secondary's name, as the primary's API knows it.
    #[arg(long, default_value = "secondary")]
    pub link_name: String,
    /// A file holding the secret shared with the primary (default: the `GEO_DEMO_LINK_SECRET`
    /// environment variable).
    #[arg(long)]
    pub link_secret_file: Option<PathBuf>,
    /// The certificate authority (PEM) of a primary whose certificate the system does not
    /// trust.
    #[arg(long)]
    pub link_ca_file: Option<PathBuf>,
}

/// Where a secondary finds its primary's stores, to read them directly.
#[derive(Debug, Clone, Args)]
pub struct PrimaryLocationArgs {
    /// The primary's data directory.
    #[arg(long)]
    pub primary_data: PathBuf,
    /// The primary's database (default: `PRIMARY_DATA/site.db`).
    #[arg(long)]
    pub primary_database: Option<String>,
    /// PostgreSQL: the schema holding the primary's tables.
    #[arg(long)]
    pub primary_schema: Option<String>,
}

impl PrimaryLocationArgs {
    /// The primary's location.
    pub fn location(&self) -> SiteLocation {
        SiteLocation::new(
            &self.primary_data,
            self.primary_database.clone(),
            self.primary_schema.clone(),
        )
    }
}

/// `geo-demo secondary`.
#[derive(Debug, Clone, Args)]
pub struct SecondaryArgs {
    /// The secondary's data.
    #[command(flatten)]
    pub site: SiteArgs,
    /// Where the primary is.
    #[command(flatten)]
    pub primary: SecondaryLinkArgs,
    /// Appends `<replicable> <id> <pid> <unix ms>` to this file each time a sync transfers a
    /// resource.
    #[arg(long)]
    pub sync_log: Option<PathBuf>,
    /// Engine settings.
    #[command(flatten)]
    pub engine: EngineArgs,
}

impl SecondaryArgs {
    /// The primary's location, when its stores are read directly.
    pub fn primary_location(&self) -> Option<SiteLocation> {
        let data = self.primary.primary_data.as_ref()?;
        Some(SiteLocation::new(
            data,
            self.primary.primary_database.clone(),
            self.primary.primary_schema.clone(),
        ))
    }

    /// The HTTP link to the primary, when `--primary-url` is given.
    pub fn http_link(&self) -> Result<Option<HttpPrimary>, Error> {
        let Some(url) = &self.primary.primary_url else {
            return Ok(None);
        };
        let secret = link_secret(self.primary.link_secret_file.as_deref())?;
        let mut config = HttpPrimaryConfig::new(url, &self.primary.link_name, secret);
        config.ca_file = self.primary.link_ca_file.clone();
        Ok(Some(HttpPrimary::new(config)?))
    }
}

/// `geo-demo status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The secondary's data.
    #[command(flatten)]
    pub site: SiteArgs,
    /// Where the primary is.
    #[command(flatten)]
    pub primary: PrimaryLocationArgs,
}

/// Hooks for tests that run the site processes with faults.
pub struct Hooks {
    /// Wraps the secondary's link to the primary.
    pub wrap_link: fn(Arc<dyn PrimaryLink>) -> Arc<dyn PrimaryLink>,
    /// Configures the primary's API further (e.g. redirects of blob requests).
    pub configure_api: fn(replicable_core::http::PrimaryApi) -> replicable_core::http::PrimaryApi,
}

impl Default for Hooks {
    fn default() -> Self {
        Self {
            wrap_link: |link| link,
            configure_api: |api| api,
        }
    }
}

/// The entry point of the `geo-demo` binary.
pub fn main() -> ExitCode {
    main_with(Hooks::default())
}

/// [`main`] with hooks.
pub fn main_with(hooks: Hooks) -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log written to a file stays plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,replicable_core::replicator=error".into()),
        )
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("geo-demo: starting the runtime failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Run(RunArgs::default())) {
            Command::Run(args) => run(args).await,
            Command::Primary(args) => run_primary(args, &hooks).await,
            Command::Secondary(args) => run_secondary(args, hooks).await,
            Command::Status(args) => status(args).await,
            Command::Admin(args) => admin(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("geo-demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a progress line every `every` until dropped.
fn progress_printer(
    primary: Site,
    secondary: Site,
    replicables: Vec<&'static replicable_core::descriptor::ReplicableDescriptor>,
    every: Duration,
    started: Instant,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if every.is_zero() {
            return;
        }
        loop {
            tokio::time::sleep(every).await;
            if let Ok(rows) = report::rows(&primary, &secondary, &replicables).await {
                println!(
                    "[{:>5.1}s] {}",
                    started.elapsed().as_secs_f64(),
                    report::progress_line(&rows)
                );
            }
        }
    })
}

/// Prints the secondary's own progress every `every` until dropped: its registry counts and
/// how many events its cursor is behind (for a secondary without the primary's stores).
fn registry_printer(
    secondary: Site,
    replicables: Vec<&'static replicable_core::descriptor::ReplicableDescriptor>,
    every: Duration,
    started: Instant,
) -> tokio::task::JoinHandle<()> {
    use replicable_core::status::ReplicableStatus;
    tokio::spawn(async move {
        if every.is_zero() {
            return;
        }
        loop {
            tokio::time::sleep(every).await;
            let Ok(status) = replicable_core::status::site_status(&secondary, &replicables).await
            else {
                continue;
            };
            let (mut synced, mut verified, mut rows) = (0, 0, 0);
            let mut parts = Vec::new();
            for replicable in &status.replicables {
                if let ReplicableStatus::Secondary { status: s, .. } = replicable {
                    synced += s.synced_count;
                    verified += s.verified_count;
                    rows += s.registry_count;
                    parts.push(format!(
                        "{} {}/{} ({} verified, {} failed)",
                        s.replicable_name,
                        s.synced_count,
                        s.registry_count,
                        s.verified_count,
                        s.failed_count
                    ));
                }
            }
            let behind = status
                .events
                .events_behind
                .map_or_else(|| "-".to_owned(), |n| n.to_string());
            println!(
                "[{:>5.1}s] synced {synced}/{rows} verified {verified}/{rows}, {behind} events behind | {}",
                started.elapsed().as_secs_f64(),
                parts.join(" ")
            );
        }
    })
}

/// The run number of this `geo-demo run` on `data` (1, 2, ...), recorded in `data/runs`.
fn next_run(data: &std::path::Path) -> Result<u64, Error> {
    let file = data.join("runs");
    let last: u64 = std::fs::read_to_string(&file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    std::fs::write(&file, format!("{}\n", last + 1))?;
    Ok(last + 1)
}

/// Package files deliberately missing on the primary (left by earlier runs).
async fn missing_on_primary_count(primary: &Site) -> Result<u64, Error> {
    let ids = primary
        .records()
        .ids("package_file", 1_000_000..i64::MAX, 1_000_000)
        .await?;
    Ok(ids
        .into_iter()
        .filter(|&id| deliberately_missing("package_file", id))
        .count() as u64)
}

async fn run(args: RunArgs) -> Result<ExitCode, Error> {
    let started = Instant::now();
    let plan = SeedPlan {
        blobs: args.blobs.max(1),
        max_blob_bytes: args.max_blob_mib.max(1) * 1024 * 1024,
        repositories: args.repositories.max(1),
        rows: args.rows.max(1),
    };
    std::fs::create_dir_all(&args.data)?;
    let run = next_run(&args.data)?;
    let primary_location = SiteLocation::embedded(args.data.join("primary"));
    let secondary_location = SiteLocation::embedded(args.data.join("secondary"));
    // A short cursor lease and claim timeout: a demo stopped with Ctrl-C or killed is taken
    // over quickly by the next run.
    let timeouts = sites::short_timeouts(Duration::from_secs(5), Duration::from_secs(10));
    let primary = sites::open_primary(&primary_location, timeouts).await?;
    let secondary = sites::open_secondary(
        &secondary_location,
        &primary,
        SecondaryOptions::new(timeouts),
    )
    .await?;
    let replicables = sites::replicables()?;
    println!(
        "geo-demo run {run}: primary in {}, secondary in {} (SQLite, local blob directories, bare git repositories)",
        primary_location.data.display(),
        secondary_location.data.display()
    );

    // 1. The primary's application writes its records and publishes their events.
    let plan = seed::seeded_plan(&primary_location).unwrap_or(plan);
    let seeded = seed::seed(&primary, &primary_location, plan, |line| {
        println!("primary: {line}");
    })
    .await?;
    if seeded.already_seeded {
        println!(
            "primary: already seeded ({} blobs, {} repositories, {} rows): reusing it",
            plan.blobs, plan.repositories, plan.rows
        );
    } else {
        println!(
            "primary: seeded {} records and published their events in {:.1?}",
            plan.total(),
            seeded.took
        );
    }

    // 2. Both engines.
    let config = sites::demo_config();
    let primary_engine = Engine::new(primary.clone(), replicables.clone())
        .config(config.clone())
        .start()
        .await?;
    let secondary_engine = Engine::new(secondary.clone(), replicables.clone())
        .config(config)
        .start()
        .await?;
    println!(
        "engines started: primary (verification, retention, sweeps) and secondary (log cursor, sync, verification, backfill, sweeps)"
    );

    // 3. Progress until the secondary holds everything.
    let missing_before = missing_on_primary_count(&primary).await?;
    let initial = Instant::now();
    let deadline = initial + Duration::from_secs(args.timeout);
    let mut last_print = Instant::now() - Duration::from_secs(1);
    let caught_up = loop {
        let rows = report::rows(&primary, &secondary, &replicables).await?;
        let done = report::settled(&rows, missing_before);
        if done || last_print.elapsed() >= Duration::from_secs(1) {
            println!(
                "[{:>5.1}s] {}",
                started.elapsed().as_secs_f64(),
                report::progress_line(&rows)
            );
            last_print = Instant::now();
        }
        if done {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if caught_up {
        println!(
            "secondary: every record synced and verified in {:.1?}",
            initial.elapsed()
        );
    } else {
        println!(
            "secondary: NOT caught up after {} s; going on with the proofs",
            args.timeout
        );
    }

    // 4. The behaviours, live.
    let demo = Demo {
        primary: &primary,
        primary_location: &primary_location,
        secondary: &secondary,
        secondary_location: &secondary_location,
        primary_engine: &primary_engine,
        secondary_engine: &secondary_engine,
        plan,
        run,
        package_file: replicables[0],
    };
    let mut verdicts = Vec::new();
    verdicts.push(demo.update().await?);
    print_verdict(verdicts.last());
    verdicts.push(demo.delete().await?);
    print_verdict(verdicts.last());
    verdicts.push(demo.corruption().await?);
    print_verdict(verdicts.last());
    verdicts.push(demo.missing_on_primary().await?);
    print_verdict(verdicts.last());

    // 5. Everything settled, then the table and the record-by-record check.
    let missing_now = missing_on_primary_count(&primary).await?;
    let settled_now = proofs::wait_for(Duration::from_secs(60), || async {
        let rows = report::rows(&primary, &secondary, &replicables).await?;
        Ok(report::settled(&rows, missing_now).then_some(()))
    })
    .await?
    .is_some();
    let rows = report::rows(&primary, &secondary, &replicables).await?;
    let complete =
        report::completeness(&primary, &secondary, &replicables, deliberately_missing).await?;
    let stop = Instant::now();
    let secondary_report = secondary_engine.shutdown().await;
    let primary_report = primary_engine.shutdown().await;
    println!(
        "engines stopped in {:.1?} (secondary: {} syncs finished, {} handed back; primary: {} finished)",
        stop.elapsed(),
        secondary_report.finished,
        secondary_report.released,
        primary_report.finished
    );
    println!();
    print!("{}", report::table(&rows));
    println!();
    for (name, id) in &complete.missing_on_primary {
        println!(
            "{name} {id}: missing on primary (deliberately), reported and not retried in a loop"
        );
    }
    for problem in complete.problems.iter().take(20) {
        println!("PROBLEM: {problem}");
    }
    let passed = verdicts.iter().filter(|v| v.passed).count();
    let ok = caught_up && settled_now && complete.complete() && passed == verdicts.len();
    println!(
        "{}: {passed}/{} behaviours proven; {} of {} records on the primary synced and verified on the secondary, {} missing on primary as intended; {:.1?} in all",
        if ok { "PASS" } else { "FAIL" },
        verdicts.len(),
        complete.synced_and_verified,
        complete.checked,
        complete.missing_on_primary.len(),
        started.elapsed()
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_verdict(verdict: Option<&proofs::Verdict>) {
    if let Some(v) = verdict {
        println!(
            "{} {}: {}",
            if v.passed { "PASS" } else { "FAIL" },
            v.name,
            v.detail
        );
    }
}

/// Serves the primary's API when `--listen` asks for it.
async fn serve_api(
    args: &PrimaryApiArgs,
    primary: &Site,
    hooks: &Hooks,
) -> Result<Option<replicable_core::http::ApiServer>, Error> {
    let Some(addr) = args.listen else {
        return Ok(None);
    };
    let secret = link_secret(args.link_secret_file.as_deref())?;
    let router = (hooks.configure_api)(
        replicable_core::http::PrimaryApi::new(primary.clone())
            .secondary(args.secondary_name.clone(), secret),
    )
    .router();
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(replicable_core::http::TlsFiles {
            certificate_chain: cert.clone(),
            private_key: key.clone(),
        }),
        _ => None,
    };
    let server = replicable_core::http::serve(addr, router, tls.as_ref()).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("api: {scheme}://{}/", server.local_addr());
    Ok(Some(server))
}

async fn run_primary(args: PrimaryArgs, hooks: &Hooks) -> Result<ExitCode, Error> {
    let location = args.site.location();
    let primary = sites::open_primary(&location, args.engine.timeouts()).await?;
    let replicables = sites::replicables()?;
    if let Some(n) = args.seed {
        let report = seed::seed(&primary, &location, SeedPlan::records(n), |line| {
            println!("primary: {line}");
        })
        .await?;
        if report.already_seeded {
            println!("primary: already seeded");
        }
    }
    let engine = Engine::new(primary.clone(), replicables)
        .config(args.engine.config()?)
        .start()
        .await?;
    let _metrics = serve_metrics(&args.engine, &primary).await?;
    let api = serve_api(&args.api, &primary, hooks).await?;
    println!(
        "primary: engine running on {} (pid {}); SIGINT or SIGTERM stops it",
        location.database_url().split('@').next_back().unwrap_or(""),
        std::process::id()
    );
    let report = engine.run_until_signal().await;
    if let Some(api) = api {
        api.shutdown().await?;
    }
    println!("primary: stopped ({report:?})");
    Ok(ExitCode::SUCCESS)
}

/// Appends `<replicable> <id> <pid> <unix ms>` to a file before each transfer.
#[derive(Debug)]
struct SyncLog {
    file: std::sync::Mutex<std::fs::File>,
}

#[async_trait]
impl SyncObserver for SyncLog {
    async fn before_transfer(&self, replicable: &str, id: i64) {
        use std::io::Write as _;
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let _ = writeln!(file, "{replicable} {id} {} {ms}", std::process::id());
    }
}

/// Opens the secondary of `args` and starts its engine. Returns the primary's site too when
/// its stores are read directly.
pub async fn start_secondary(
    args: &SecondaryArgs,
    hooks: &Hooks,
) -> Result<(Option<Site>, Site, EngineHandle), Error> {
    let timeouts = args.engine.timeouts();
    let (primary, link): (Option<Site>, Arc<dyn PrimaryLink>) = match args.http_link()? {
        Some(link) => (None, Arc::new(link)),
        None => {
            let location = args
                .primary_location()
                .ok_or("give --primary-url or --primary-data")?;
            let primary = sites::open_primary(&location, timeouts).await?;
            let link = Arc::new(replicable_core::InProcessPrimary::new(primary.clone()));
            (Some(primary), link)
        }
    };
    let mut options = SecondaryOptions::new(timeouts);
    let wrap = hooks.wrap_link;
    options.wrap_link = Box::new(wrap);
    if let Some(path) = &args.sync_log {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        options.observer = Some(Arc::new(SyncLog {
            file: std::sync::Mutex::new(file),
        }));
    }
    let secondary = sites::open_linked_secondary(&args.site.location(), link, options).await?;
    let engine = Engine::new(secondary.clone(), sites::replicables()?)
        .config(args.engine.config()?)
        .start()
        .await?;
    Ok((primary, secondary, engine))
}

async fn run_secondary(args: SecondaryArgs, hooks: Hooks) -> Result<ExitCode, Error> {
    let started = Instant::now();
    let (primary, secondary, engine) = start_secondary(&args, &hooks).await?;
    let _metrics = serve_metrics(&args.engine, &secondary).await?;
    let reading = match (&args.primary.primary_url, &args.primary.primary_data) {
        (Some(url), _) => format!("at {url}"),
        (None, Some(data)) => format!("in {}", data.display()),
        (None, None) => String::new(),
    };
    println!(
        "secondary: engine running (pid {}), reading the primary {reading}; SIGINT or SIGTERM stops it",
        std::process::id(),
    );
    // The progress line compares with the primary's own counts when its stores are here;
    // over HTTP it shows the secondary's registry and how far its cursor is behind.
    let replicables = sites::replicables()?;
    let every = Duration::from_secs(args.engine.progress);
    let printer = Some(match primary {
        Some(primary) => progress_printer(primary, secondary, replicables, every, started),
        None => registry_printer(secondary, replicables, every, started),
    });
    replicable_core::engine::wait_for_signal().await;
    if let Some(printer) = printer {
        printer.abort();
    }
    let stopping = Instant::now();
    let report = engine.shutdown().await;
    println!(
        "secondary: stopped in {:.1?}: {} syncs finished, {} handed back to pending",
        stopping.elapsed(),
        report.finished,
        report.released
    );
    Ok(ExitCode::SUCCESS)
}

async fn status(args: StatusArgs) -> Result<ExitCode, Error> {
    let timeouts = replicable_core::site::Timeouts::default();
    let primary = sites::open_primary(&args.primary.location().existing(), timeouts).await?;
    let secondary = sites::open_secondary(
        &args.site.location().existing(),
        &primary,
        SecondaryOptions::new(timeouts),
    )
    .await?;
    let replicables = sites::replicables()?;
    let rows = report::rows(&primary, &secondary, &replicables).await?;
    print!("{}", report::table(&rows));
    let complete =
        report::completeness(&primary, &secondary, &replicables, deliberately_missing).await?;
    for problem in complete.problems.iter().take(20) {
        println!("PROBLEM: {problem}");
    }
    Ok(if complete.complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn admin(args: AdminArgs) -> Result<ExitCode, Error> {
    let timeouts = replicable_core::site::Timeouts::default();
    let site = match &args.primary_data {
        Some(primary_data) => {
            let location = SiteLocation::new(
                primary_data,
                args.primary_database.clone(),
                args.primary_schema.clone(),
            )
            .existing();
            let primary = sites::open_primary(&location, timeouts).await?;
            sites::open_secondary(
                &args.site.location().existing(),
                &primary,
                SecondaryOptions::new(timeouts),
            )
            .await?
        }
        None => sites::open_primary(&args.site.location().existing(), timeouts).await?,
    };
    let replicables = sites::replicables()?;
    let mut out = std::io::stdout();
    match replicable_core::cli::execute(&args.command, &site, &replicables, &mut out).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("geo-demo admin: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
