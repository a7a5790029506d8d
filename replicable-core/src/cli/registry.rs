//! `registry list` and `registry show`: a secondary's registry rows (on the primary, `show`
//! prints the record's generation and verification row).

use clap::{Args, Subcommand};
use serde::Serialize;

use super::{CliError, Context, time};
use crate::domain::registry::{RegistryRecord, SyncState};
use crate::domain::verification::{VerificationRecord, VerificationState};
use crate::storage::RegistryFilter;

/// `registry` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum RegistryCommand {
    /// Lists registry rows in id order, one page at a time (`--after` the last id shown).
    List(ListArgs),
    /// Shows one record: the registry row, and the primary's generation and checksum.
    Show(ShowArgs),
}

/// Arguments of `registry list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// The replicable.
    pub replicable: String,
    /// Only rows in this sync state.
    #[arg(long, value_parser = parse_sync_state)]
    pub state: Option<SyncState>,
    /// Only rows in this verification state.
    #[arg(long, value_parser = parse_verification_state)]
    pub verification: Option<VerificationState>,
    /// Most rows to print.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Only rows with a greater id (the next page).
    #[arg(long)]
    pub after: Option<i64>,
    /// Print the rows as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `registry show`.
#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    /// The replicable.
    pub replicable: String,
    /// The record's id.
    pub id: i64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_sync_state(s: &str) -> Result<SyncState, String> {
    SyncState::ALL
        .into_iter()
        .find(|state| state.name() == s)
        .ok_or_else(|| "expected one of pending, started, synced, failed".to_owned())
}

fn parse_verification_state(s: &str) -> Result<VerificationState, String> {
    VerificationState::ALL
        .into_iter()
        .find(|state| state.name() == s)
        .ok_or_else(|| "expected one of pending, started, succeeded, failed, disabled".to_owned())
}

pub(super) async fn run(cx: &mut Context<'_>, command: &RegistryCommand) -> Result<(), CliError> {
    match command {
        RegistryCommand::List(args) => list(cx, args).await,
        RegistryCommand::Show(args) => show(cx, args).await,
    }
}

async fn list(cx: &mut Context<'_>, args: &ListArgs) -> Result<(), CliError> {
    let replicable = cx.replicable(&args.replicable)?;
    cx.require_secondary("registry list")?;
    let filter = RegistryFilter {
        state: args.state,
        verification: args.verification,
    };
    let rows = cx
        .site
        .registry_store()
        .list(replicable.name, filter, args.after, args.limit)
        .await?;
    if args.json {
        serde_json::to_writer_pretty(&mut *cx.out, &rows)?;
        writeln!(cx.out)?;
        return Ok(());
    }
    writeln!(
        cx.out,
        "{:>12} {:<8} {:>7} {:<20} {:<12} {:>10}  last failure",
        "id", "state", "retries", "retry at", "verification", "generation"
    )?;
    for row in &rows {
        let failure = row
            .last_sync_failure
            .as_deref()
            .or(row.verification.verification_failure.as_deref())
            .unwrap_or("");
        writeln!(
            cx.out,
            "{:>12} {:<8} {:>7} {:<20} {:<12} {:>10}  {}",
            row.model_id,
            row.state.name(),
            row.retry_count,
            time(row.retry_at),
            row.verification.verification_state.name(),
            row.synced_generation
                .map_or_else(|| "-".to_owned(), |g| g.to_string()),
            failure
        )?;
    }
    match rows.last() {
        Some(last) if rows.len() == args.limit => writeln!(
            cx.out,
            "{} rows; next page: --after {}",
            rows.len(),
            last.model_id
        )?,
        _ => writeln!(cx.out, "{} rows", rows.len())?,
    }
    Ok(())
}

/// What `registry show` reports.
#[derive(Debug, Serialize)]
struct Report {
    replicable: String,
    id: i64,
    /// The secondary's registry row (`None` on the primary or when there is none).
    registry: Option<RegistryRecord>,
    /// Whether the record exists on the primary (`None`: the primary could not be read).
    exists_on_primary: Option<bool>,
    /// The primary's generation of the record.
    primary_generation: Option<i64>,
    /// The primary's verification row.
    primary_verification: Option<VerificationRecord>,
    /// Why the primary could not be read.
    primary_error: Option<String>,
}

async fn show(cx: &mut Context<'_>, args: &ShowArgs) -> Result<(), CliError> {
    let replicable = cx.replicable(&args.replicable)?;
    let name = replicable.name;
    let id = args.id;
    let mut report = Report {
        replicable: name.to_owned(),
        id,
        registry: None,
        exists_on_primary: None,
        primary_generation: None,
        primary_verification: None,
        primary_error: None,
    };
    if cx.site.is_primary() {
        let record = cx.site.records().get(name, id).await?;
        report.exists_on_primary = Some(record.is_some());
        report.primary_generation = record.map(|r| r.generation);
        report.primary_verification = cx.site.verification_store().get(name, id).await?;
        if report.exists_on_primary == Some(false) && report.primary_verification.is_none() {
            return Err(CliError::NotFound {
                replicable: name.to_owned(),
                id,
                what: "no such record on the primary",
            });
        }
    } else {
        report.registry = cx.site.registry_store().get(name, id).await?;
        if let Some(link) = cx.site.primary_link() {
            match link.record(name, id).await {
                Ok(record) => {
                    report.exists_on_primary = Some(record.is_some());
                    report.primary_generation = record.map(|r| r.generation);
                    match link.verification(name, id).await {
                        Ok(v) => report.primary_verification = v,
                        Err(e) => report.primary_error = Some(e.to_string()),
                    }
                }
                Err(e) => report.primary_error = Some(e.to_string()),
            }
        }
        if report.registry.is_none() && report.exists_on_primary != Some(true) {
            return Err(CliError::NotFound {
                replicable: name.to_owned(),
                id,
                what: "no registry row, and no such record on the primary",
            });
        }
    }
    if args.json {
        serde_json::to_writer_pretty(&mut *cx.out, &report)?;
        writeln!(cx.out)?;
        return Ok(());
    }
    write_report(cx.out, &report)?;
    Ok(())
}

fn write_report(out: &mut dyn std::io::Write, r: &Report) -> std::io::Result<()> {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    writeln!(out, "{:<22} {} {}", "record", r.replicable, r.id)?;
    if let Some(row) = &r.registry {
        let v = &row.verification;
        writeln!(out, "{:<22} {}", "state", row.state)?;
        if row.change_pending {
            writeln!(
                out,
                "{:<22} yes (goes pending when the running sync ends)",
                "change pending"
            )?;
        }
        writeln!(out, "{:<22} {}", "retry count", row.retry_count)?;
        writeln!(out, "{:<22} {}", "retry at", time(row.retry_at))?;
        writeln!(
            out,
            "{:<22} {}",
            "last sync started",
            time(row.last_synced_at)
        )?;
        writeln!(
            out,
            "{:<22} {}",
            "last sync failure",
            opt(row.last_sync_failure.clone())
        )?;
        writeln!(
            out,
            "{:<22} {}",
            "missing on primary",
            if row.missing_on_primary { "yes" } else { "no" }
        )?;
        writeln!(out, "{:<22} {}", "verification", v.verification_state)?;
        writeln!(out, "{:<22} {}", "verified at", time(v.verified_at))?;
        writeln!(
            out,
            "{:<22} {}",
            "verification retries", v.verification_retry_count
        )?;
        writeln!(
            out,
            "{:<22} {}",
            "verification failure",
            opt(v.verification_failure.clone())
        )?;
        writeln!(
            out,
            "{:<22} {}",
            "checksum",
            opt(v.verification_checksum.clone())
        )?;
        if v.checksum_mismatch {
            writeln!(
                out,
                "{:<22} {}",
                "mismatched checksum",
                opt(v.verification_checksum_mismatched.clone())
            )?;
        }
    } else if r.registry.is_none() && r.primary_verification.is_none() {
        writeln!(out, "{:<22} none", "registry row")?;
    }
    match r.exists_on_primary {
        Some(true) => writeln!(out, "{:<22} yes", "exists on primary")?,
        Some(false) => writeln!(out, "{:<22} no", "exists on primary")?,
        None => {}
    }
    let held = r.registry.as_ref().and_then(|row| row.synced_generation);
    match (&r.registry, r.primary_generation) {
        (Some(_), primary) => writeln!(
            out,
            "{:<22} secondary {}, primary {}{}",
            "generation",
            opt(held.map(|g| g.to_string())),
            opt(primary.map(|g| g.to_string())),
            match primary {
                Some(p) if p > held.unwrap_or(0) =>
                    format!(" (behind by {})", p - held.unwrap_or(0)),
                _ => String::new(),
            }
        )?,
        (None, Some(primary)) => writeln!(out, "{:<22} primary {primary}", "generation")?,
        (None, None) => {}
    }
    if let Some(p) = &r.primary_verification {
        let v = &p.verification;
        writeln!(
            out,
            "{:<22} {} ({})",
            "primary checksum",
            opt(v.verification_checksum.clone()),
            v.verification_state
        )?;
        if let Some(failure) = &v.verification_failure {
            writeln!(out, "{:<22} {failure}", "primary failure")?;
        }
    }
    if let Some(e) = &r.primary_error {
        writeln!(out, "{:<22} {e}", "primary unreachable")?;
    }
    Ok(())
}
