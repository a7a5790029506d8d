//! `dataloss`: records whose copy on this secondary is behind the primary.

use clap::Args;
use serde::Serialize;

use super::{CliError, Context};
use crate::status::{BehindRecord, dataloss};

/// Arguments of `dataloss`.
#[derive(Debug, Clone, Default, Args)]
pub struct DatalossArgs {
    /// Only these replicables (default: every one the application runs).
    pub replicables: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report<'a> {
    replicable: &'a str,
    behind: Vec<BehindRecord>,
}

pub(super) async fn run(cx: &mut Context<'_>, args: &DatalossArgs) -> Result<(), CliError> {
    cx.require_secondary("dataloss")?;
    let selected = cx.selected(&args.replicables)?;
    let mut reports = Vec::new();
    for replicable in selected {
        reports.push(Report {
            replicable: replicable.name,
            behind: dataloss(cx.site, replicable.name).await?,
        });
    }
    if args.json {
        serde_json::to_writer_pretty(&mut *cx.out, &reports)?;
        writeln!(cx.out)?;
        return Ok(());
    }
    let total: usize = reports.iter().map(|r| r.behind.len()).sum();
    writeln!(cx.out, "{total} records behind the primary")?;
    if total == 0 {
        return Ok(());
    }
    writeln!(
        cx.out,
        "{:<24} {:>12} {:>12} {:>10} {:>10}",
        "replicable", "id", "secondary", "primary", "behind by"
    )?;
    for report in &reports {
        for b in &report.behind {
            let held = b
                .secondary_generation
                .map_or_else(|| "never".to_owned(), |g| g.to_string());
            writeln!(
                cx.out,
                "{:<24} {:>12} {:>12} {:>10} {:>10}",
                report.replicable, b.model_id, held, b.primary_generation, b.behind_by
            )?;
        }
    }
    Ok(())
}
