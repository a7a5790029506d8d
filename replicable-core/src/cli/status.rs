//! `status`: a row per replicable, and where the event log and the cursor stand.

use clap::Args;

use super::{CliError, Context, human_seconds, time};
use crate::status::{ReplicableStatus, SiteStatus, StatusOptions, site_status_with};

/// Arguments of `status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Only these replicables (default: every one the application runs).
    pub replicables: Vec<String>,
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
    /// Primary: show a secondary SILENT (unhealthy) when its last status report is older than
    /// this (e.g. `90s`, `10m`).
    #[arg(long, value_name = "DURATION", default_value = "150s", value_parser = parse_duration)]
    pub silent_after: std::time::Duration,
}

impl Default for StatusArgs {
    fn default() -> Self {
        Self {
            replicables: Vec::new(),
            json: false,
            silent_after: crate::status::DEFAULT_SILENT_AFTER,
        }
    }
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime_serde::re::humantime::parse_duration(text).map_err(|e| e.to_string())
}

pub(super) async fn run(cx: &mut Context<'_>, args: &StatusArgs) -> Result<(), CliError> {
    let selected = cx.selected(&args.replicables)?;
    let options = StatusOptions::default().silent_after(args.silent_after);
    let status = site_status_with(cx.site, &selected, options).await?;
    if args.json {
        serde_json::to_writer_pretty(&mut *cx.out, &status)?;
        writeln!(cx.out)?;
        return Ok(());
    }
    write_table(cx.out, &status)?;
    Ok(())
}

fn write_table(out: &mut dyn std::io::Write, status: &SiteStatus) -> std::io::Result<()> {
    let paused = if status.replication_enabled {
        ""
    } else {
        ", replication PAUSED"
    };
    writeln!(out, "site {} ({}{paused})", status.site, status.role)?;
    let e = &status.events;
    let last = e
        .last_event_id
        .map_or_else(|| "none".to_owned(), |id| id.to_string());
    match e.cursor_event_id {
        None => writeln!(
            out,
            "event log: last event {last} at {}",
            time(e.last_event_at)
        )?,
        Some(cursor) => {
            let lag = match (e.events_behind, e.lag_seconds) {
                (Some(behind), Some(lag)) => {
                    format!("{behind} events behind, lag {}", human_seconds(lag))
                }
                _ => "primary unreachable".to_owned(),
            };
            writeln!(
                out,
                "cursor: event {cursor} ({}), primary's last event {last} ({}), {lag}",
                time(e.cursor_event_at),
                time(e.last_event_at)
            )?;
        }
    }
    writeln!(out)?;
    if status.role == "primary" {
        writeln!(
            out,
            "{:<24} {:>10} {:>12} {:>16} {:>12}",
            "replicable", "count", "checksummed", "checksum failed", "checksummed %"
        )?;
        for r in &status.replicables {
            if let ReplicableStatus::Primary(p) = r {
                let pct = if p.count == 0 {
                    0.0
                } else {
                    p.checksummed_count as f64 * 100.0 / p.count as f64
                };
                writeln!(
                    out,
                    "{:<24} {:>10} {:>12} {:>16} {:>12.1}%",
                    p.replicable_name, p.count, p.checksummed_count, p.checksum_failed_count, pct
                )?;
            }
        }
        write_secondaries(out, status)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<24} {:>9} {:>8} {:>8} {:>8} {:>7} {:>9} {:>13} {:>9} {:>10} {:>7}",
        "replicable",
        "registry",
        "pending",
        "started",
        "synced",
        "failed",
        "verified",
        "verif. failed",
        "synced %",
        "verified %",
        "queue"
    )?;
    for r in &status.replicables {
        if let ReplicableStatus::Secondary {
            status: s,
            queue_depth,
            replication_enabled,
        } = r
        {
            let name = if *replication_enabled {
                s.replicable_name.clone()
            } else {
                format!("{} (paused)", s.replicable_name)
            };
            writeln!(
                out,
                "{:<24} {:>9} {:>8} {:>8} {:>8} {:>7} {:>9} {:>13} {:>8.1}% {:>9.1}% {:>7}",
                name,
                s.registry_count,
                s.pending_count,
                s.started_count,
                s.synced_count,
                s.failed_count,
                s.verified_count,
                s.verification_failed_count,
                s.synced_percent,
                s.verified_percent,
                queue_depth
            )?;
        }
    }
    Ok(())
}

/// The primary's secondaries, by their last status report.
fn write_secondaries(out: &mut dyn std::io::Write, status: &SiteStatus) -> std::io::Result<()> {
    if status.secondaries.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<24} {:>9} {:>10} {:>12} {:>10} {:>8} {:>8}  version",
        "secondary", "health", "report age", "cursor", "lag", "synced", "failed"
    )?;
    for s in &status.secondaries {
        let field = |name: &str| s.report.get(name).cloned().unwrap_or_default();
        let lag = field("lag_seconds")
            .as_f64()
            .map_or_else(|| "?".to_owned(), human_seconds);
        writeln!(
            out,
            "{:<24} {:>9} {:>10} {:>12} {:>10} {:>8} {:>8}  {}",
            s.name,
            if s.healthy { "healthy" } else { "SILENT" },
            human_seconds(s.age_seconds),
            s.cursor.map_or_else(|| "-".to_owned(), |c| c.to_string()),
            lag,
            field("synced").to_string(),
            field("failed").to_string(),
            field("version").as_str().unwrap_or("?"),
        )?;
    }
    Ok(())
}
