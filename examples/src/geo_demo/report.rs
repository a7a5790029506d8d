//! What the demo shows: progress lines, the status table per replicable, and the check that
//! every record on the primary is synced and verified on the secondary.

use std::fmt::Write as _;

use replicable_core::descriptor::ReplicableDescriptor;
use replicable_core::status::{primary_status, secondary_status};
use replicable_core::{Site, SyncState, VerificationState};

use super::sites::Error;

/// Counts of one replicable on both sides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    /// The replicable.
    pub name: String,
    /// Records on the primary.
    pub primary: u64,
    /// Checksummed on the primary.
    pub checksummed: u64,
    /// Checksum failed on the primary.
    pub checksum_failed: u64,
    /// Registry rows on the secondary.
    pub registry: u64,
    /// Pending.
    pub pending: u64,
    /// Started.
    pub started: u64,
    /// Synced.
    pub synced: u64,
    /// Failed.
    pub failed: u64,
    /// Verified.
    pub verified: u64,
    /// Verification failed.
    pub verification_failed: u64,
}

/// The counts of every replicable.
pub async fn rows(
    primary: &Site,
    secondary: &Site,
    replicables: &[&'static ReplicableDescriptor],
) -> Result<Vec<Row>, Error> {
    let mut rows = Vec::new();
    for replicable in replicables {
        let p = primary_status(primary, replicable.name).await?;
        let s = secondary_status(secondary, replicable.name).await?;
        // `started` is not in the status summary: read it from the registry counts.
        let counts = secondary.registry_store().counts(replicable.name).await?;
        rows.push(Row {
            name: replicable.name.to_owned(),
            primary: p.count,
            checksummed: p.checksummed_count,
            checksum_failed: p.checksum_failed_count,
            registry: s.registry_count,
            pending: s.pending_count,
            started: counts.started,
            synced: s.synced_count,
            failed: s.failed_count,
            verified: s.verified_count,
            verification_failed: s.verification_failed_count,
        });
    }
    Ok(rows)
}

/// Whether replication is done: every record synced and verified, except the deliberately
/// missing package files, which are failed.
pub fn settled(rows: &[Row], missing: u64) -> bool {
    rows.iter().all(|row| {
        let expected_failed = if row.name == "package_file" {
            missing
        } else {
            0
        };
        row.registry == row.primary
            && row.pending == 0
            && row.started == 0
            && row.failed == expected_failed
            && row.synced + row.failed == row.primary
            && row.verified == row.synced
    })
}

/// One progress line: synced and verified out of the primary's records, per replicable.
pub fn progress_line(rows: &[Row]) -> String {
    let mut line = String::new();
    let (mut synced, mut verified, mut total) = (0, 0, 0);
    for row in rows {
        synced += row.synced;
        verified += row.verified;
        total += row.primary;
    }
    let _ = write!(
        line,
        "synced {synced}/{total} verified {verified}/{total} |"
    );
    for row in rows {
        let _ = write!(
            line,
            " {} {}/{} ({} verified, {} failed)",
            row.name, row.synced, row.primary, row.verified, row.failed
        );
    }
    line
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

/// The status table.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "replicable",
        "primary",
        "checksummed",
        "ck failed",
        "registry",
        "pending",
        "started",
        "synced",
        "failed",
        "verified",
        "vfy failed",
        "synced %",
        "verified %",
    ];
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|s| (*s).to_owned()).collect()];
    for row in rows {
        cells.push(vec![
            row.name.clone(),
            row.primary.to_string(),
            row.checksummed.to_string(),
            row.checksum_failed.to_string(),
            row.registry.to_string(),
            row.pending.to_string(),
            row.started.to_string(),
            row.synced.to_string(),
            row.failed.to_string(),
            row.verified.to_string(),
            row.verification_failed.to_string(),
            percent(row.synced, row.primary),
            percent(row.verified, row.primary),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| cells.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (n, row) in cells.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if i == 0 {
                    format!("{cell:<w$}", w = widths[i])
                } else {
                    format!("{cell:>w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if n == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
    }
    out
}

/// Whether the secondary holds every record of the primary.
#[derive(Debug, Clone, Default)]
pub struct Completeness {
    /// Records checked.
    pub checked: u64,
    /// Records synced and verified.
    pub synced_and_verified: u64,
    /// Records deliberately missing on the primary and reported so (`replicable id`).
    pub missing_on_primary: Vec<(String, i64)>,
    /// What is wrong, one line each.
    pub problems: Vec<String>,
}

impl Completeness {
    /// No problems.
    pub fn complete(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks record by record that every record of the primary is synced and verified on the
/// secondary, except those `expected_missing` names, which must be failed and reported missing
/// on the primary; and that the secondary has no row the primary does not.
pub async fn completeness(
    primary: &Site,
    secondary: &Site,
    replicables: &[&'static ReplicableDescriptor],
    expected_missing: impl Fn(&str, i64) -> bool,
) -> Result<Completeness, Error> {
    let mut report = Completeness::default();
    for replicable in replicables {
        let name = replicable.name;
        let mut from = i64::MIN;
        loop {
            let ids = primary.records().ids(name, from..i64::MAX, 1000).await?;
            let Some(&last) = ids.last() else { break };
            for id in ids {
                report.checked += 1;
                let row = secondary.registry_store().get(name, id).await?;
                let Some(row) = row else {
                    report
                        .problems
                        .push(format!("{name} {id}: no registry row"));
                    continue;
                };
                if expected_missing(name, id) {
                    if row.state == SyncState::Failed && row.missing_on_primary {
                        report.missing_on_primary.push((name.to_owned(), id));
                    } else {
                        report.problems.push(format!(
                            "{name} {id}: expected failed and missing on primary, is {} (missing_on_primary = {})",
                            row.state, row.missing_on_primary
                        ));
                    }
                    continue;
                }
                let verified = !replicable.verifiable
                    || row.verification.verification_state == VerificationState::Succeeded;
                if row.state == SyncState::Synced && verified {
                    report.synced_and_verified += 1;
                } else {
                    report.problems.push(format!(
                        "{name} {id}: {} / verification {:?}{}",
                        row.state,
                        row.verification.verification_state,
                        row.last_sync_failure
                            .as_deref()
                            .map(|f| format!(" ({f})"))
                            .unwrap_or_default()
                    ));
                }
            }
            if last == i64::MAX {
                break;
            }
            from = last + 1;
        }
        let primary_count = primary.records().count(name).await?;
        let registry = secondary.registry_store().counts(name).await?.registry;
        if registry != primary_count {
            report.problems.push(format!(
                "{name}: {registry} registry rows for {primary_count} records on the primary"
            ));
        }
    }
    Ok(report)
}
