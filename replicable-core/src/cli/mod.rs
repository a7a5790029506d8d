//! The operator CLI: `status`, `registry list|show`, `resync`, `reverify`, `dataloss`,
//! `events`, `pause` and `resume` (feature `cli`).
//!
//! An application gets it with one call from its `main`, handing over its site and the list of
//! replicables it runs:
//!
//! ```ignore
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     let replicables = vec![find_replicable("package_file")?.unwrap()];
//!     replicable_core::cli::run_with(|| build_site(), replicables, std::env::args_os()).await
//! }
//! ```
//!
//! or embeds [`Command`] as a subcommand of its own clap CLI and calls [`execute`] with any
//! [`Write`] for the output (tests capture it in a `Vec<u8>`).
//!
//! Commands that read never create tables, and refuse a replicable name the application did not
//! list. `resync` and `reverify` of many rows work in batches (1,000 rows per statement by
//! default, with a short pause between batches) so that normal replication is not stalled.

mod batch;
mod dataloss;
mod events;
mod progress;
mod registry;
mod status;
mod switch;

use std::ffi::OsString;
use std::fmt::Display;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The clap this CLI is built with, for applications that embed [`Command`] in their own CLI.
pub use clap;

pub use batch::BatchArgs;
pub use dataloss::DatalossArgs;
pub use events::EventsArgs;
pub use registry::{ListArgs, RegistryCommand, ShowArgs};
pub use status::StatusArgs;
pub use switch::SwitchArgs;

use crate::descriptor::ReplicableDescriptor;
use crate::domain::error::{LinkError, StoreError};
use crate::site::Site;
use crate::status::ReportError;

/// The operator CLI as a whole program: `<app> <command> ...`.
#[derive(Debug, Clone, Parser)]
#[command(about = "Operate the replication of this site", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The operator's commands. Embed it in an application's own clap CLI with
/// `#[command(subcommand)]` (or `#[command(flatten)]`) and run it with [`execute`].
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Replication status: a row per replicable, the event log's and the cursor's position.
    Status(StatusArgs),
    /// A secondary's registry rows: list them by state, or show one.
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Sends registry rows back to pending so they are synced again (secondary).
    Resync(BatchArgs),
    /// Sends checksums back to verification pending (primary: verification rows; secondary:
    /// synced registry rows).
    Reverify(BatchArgs),
    /// Records whose copy on this secondary is behind the primary, by how many generations.
    Dataloss(DatalossArgs),
    /// The primary's event log (read through the link on a secondary).
    Events(EventsArgs),
    /// Pauses replication of the site, or of one replicable (secondary; persisted).
    Pause(SwitchArgs),
    /// Resumes replication of the site, or of one replicable (secondary; persisted).
    Resume(SwitchArgs),
}

/// A command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The replicable name is not one the application runs.
    #[error("unknown replicable `{name}`; known replicables: {known}")]
    UnknownReplicable {
        /// The name given.
        name: String,
        /// The names the application passed, comma separated.
        known: String,
    },
    /// The command does not apply to this site's role or to this replicable.
    #[error("{0}")]
    NotApplicable(String),
    /// A registry row that does not exist.
    #[error("{replicable} {id}: {what}")]
    NotFound {
        /// The replicable.
        replicable: String,
        /// The record id.
        id: i64,
        /// What was not found.
        what: &'static str,
    },
    /// The site's storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The primary could not be read.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The site could not be built.
    #[error("building the site failed: {0}")]
    Site(String),
    /// Writing the output failed.
    #[error("writing the output failed: {0}")]
    Output(#[from] std::io::Error),
    /// Encoding JSON failed.
    #[error("encoding JSON failed: {0}")]
    Json(#[from] serde_json::Error),
}

impl From<ReportError> for CliError {
    fn from(e: ReportError) -> Self {
        match e {
            ReportError::Store(e) => Self::Store(e),
            ReportError::Link(e) => Self::Link(e),
            ReportError::NotSecondary(site) => {
                Self::NotApplicable(format!("site `{site}` is not a secondary"))
            }
        }
    }
}

/// How [`execute_with`] reports progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecuteOptions {
    /// Draw progress bars on the terminal (stdout) for long operations; otherwise progress is
    /// written as plain lines to the output.
    pub progress_bars: bool,
}

/// What every command works with.
pub(crate) struct Context<'a> {
    pub(crate) site: &'a Site,
    pub(crate) replicables: &'a [&'static ReplicableDescriptor],
    pub(crate) out: &'a mut (dyn Write + Send),
    pub(crate) options: ExecuteOptions,
}

impl Context<'_> {
    /// The replicable named `name` among those the application runs.
    pub(crate) fn replicable(&self, name: &str) -> Result<&'static ReplicableDescriptor, CliError> {
        self.replicables
            .iter()
            .copied()
            .find(|r| r.name == name)
            .ok_or_else(|| CliError::UnknownReplicable {
                name: name.to_owned(),
                known: self.known(),
            })
    }

    /// The replicables named, or all of them when `names` is empty.
    pub(crate) fn selected(
        &self,
        names: &[String],
    ) -> Result<Vec<&'static ReplicableDescriptor>, CliError> {
        if names.is_empty() {
            return Ok(self.replicables.to_vec());
        }
        names.iter().map(|n| self.replicable(n)).collect()
    }

    fn known(&self) -> String {
        if self.replicables.is_empty() {
            return "(none)".into();
        }
        self.replicables
            .iter()
            .map(|r| r.name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub(crate) fn require_secondary(&self, command: &str) -> Result<(), CliError> {
        if self.site.is_primary() {
            return Err(CliError::NotApplicable(format!(
                "`{command}` runs on a secondary; site `{}` is the primary",
                self.site.name()
            )));
        }
        Ok(())
    }
}

/// Runs one command against `site`, writing its output to `out`, with progress as plain lines.
/// `replicables` are the ones the application runs: names outside it are refused.
pub async fn execute(
    command: &Command,
    site: &Site,
    replicables: &[&'static ReplicableDescriptor],
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    execute_with(command, site, replicables, out, ExecuteOptions::default()).await
}

/// [`execute`] with options.
pub async fn execute_with(
    command: &Command,
    site: &Site,
    replicables: &[&'static ReplicableDescriptor],
    out: &mut (dyn Write + Send),
    options: ExecuteOptions,
) -> Result<(), CliError> {
    let mut cx = Context {
        site,
        replicables,
        out,
        options,
    };
    match command {
        Command::Status(args) => status::run(&mut cx, args).await,
        Command::Registry(command) => registry::run(&mut cx, command).await,
        Command::Resync(args) => batch::resync(&mut cx, args).await,
        Command::Reverify(args) => batch::reverify(&mut cx, args).await,
        Command::Dataloss(args) => dataloss::run(&mut cx, args).await,
        Command::Events(args) => events::run(&mut cx, args).await,
        Command::Pause(args) => switch::run(&mut cx, args, false).await,
        Command::Resume(args) => switch::run(&mut cx, args, true).await,
    }
}

/// The whole CLI for an application's `main`: parses `args` (the first is the program name),
/// runs the command against `site` and returns the exit code (0 success, 1 failure, 2 usage).
pub async fn run<I, T>(
    site: Site,
    replicables: Vec<&'static ReplicableDescriptor>,
    args: I,
) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    run_with(
        || async move { Ok::<_, std::convert::Infallible>(site) },
        replicables,
        args,
    )
    .await
}

/// [`run`] with a site built only once the arguments parsed (so `--help` needs no database).
pub async fn run_with<F, Fut, E, I, T>(
    build_site: F,
    replicables: Vec<&'static ReplicableDescriptor>,
    args: I,
) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Site, E>>,
    E: Display,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let site = match build_site().await {
        Ok(site) => site,
        Err(e) => {
            eprintln!("error: {}", CliError::Site(e.to_string()));
            return ExitCode::FAILURE;
        }
    };
    let options = ExecuteOptions {
        progress_bars: std::io::stdout().is_terminal(),
    };
    let mut stdout = std::io::stdout();
    let outcome = tokio::select! {
        outcome = execute_with(&cli.command, &site, &replicables, &mut stdout, options) => outcome,
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    let _ = stdout.flush();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `1.5 s`, `2 min`, `3.0 h`: a short human duration.
pub(crate) fn human_seconds(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{seconds:.1} s")
    } else if seconds < 3600.0 {
        format!("{:.1} min", seconds / 60.0)
    } else {
        format!("{:.1} h", seconds / 3600.0)
    }
}

/// A time as the CLI prints it, `-` when absent.
pub(crate) fn time(at: Option<chrono::DateTime<chrono::Utc>>) -> String {
    at.map_or_else(
        || "-".to_owned(),
        |at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}
