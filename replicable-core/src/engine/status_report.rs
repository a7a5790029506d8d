//! A secondary reports its status (cursor, counts, lag, version) to its primary on a period;
//! the primary keeps the last report of each secondary, shows their age in `status`, and its
//! event-log retention deletes what every reporting secondary has processed.

use std::sync::Arc;

use tracing::info;

use super::Shared;
use crate::link::SiteStatusReport;

/// Secondary: builds the report and sends it through the link.
pub(super) async fn report(shared: Arc<Shared>) -> Result<(), String> {
    let site = &shared.site;
    let Some(link) = site.primary_link() else {
        return Ok(());
    };
    let position = crate::status::event_position(site)
        .await
        .map_err(|e| e.to_string())?;
    let oldest_gap = site
        .registry_store()
        .cursor_gaps()
        .await
        .map_err(|e| e.to_string())?
        .first()
        .map(|gap| gap.first - 1);
    let cursor = match (position.cursor_event_id, oldest_gap) {
        (Some(cursor), Some(below)) => Some(cursor.min(below)),
        (cursor, _) => cursor,
    };
    let mut report = SiteStatusReport {
        cursor,
        pending: 0,
        started: 0,
        synced: 0,
        failed: 0,
        verified: 0,
        events_behind: position.events_behind,
        lag_seconds: position.lag_seconds,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    for replicable in &shared.replicables {
        let counts = site
            .registry_store()
            .counts(replicable.name)
            .await
            .map_err(|e| e.to_string())?;
        report.pending += counts.pending;
        report.started += counts.started;
        report.synced += counts.synced;
        report.failed += counts.failed;
        report.verified += counts.verified;
    }
    link.report_status(site.name(), &report)
        .await
        .map_err(|e| e.to_string())
}

/// Primary: deletes the events every secondary that reports its status has processed.
pub(super) async fn delete_consumed(shared: &Shared) -> Result<(), String> {
    let reports = shared
        .site
        .registry_store()
        .secondary_statuses()
        .await
        .map_err(|e| e.to_string())?;
    // A secondary that reported no cursor holds everything back.
    let Some(up_to) = reports
        .iter()
        .map(|r| r.cursor)
        .collect::<Option<Vec<_>>>()
        .and_then(|cursors| cursors.into_iter().min())
    else {
        return Ok(());
    };
    let batch = shared.config.retention.batch.max(1);
    loop {
        let deleted = shared
            .site
            .event_log()
            .delete_up_to(up_to, batch)
            .await
            .map_err(|e| e.to_string())?;
        if deleted > 0 {
            info!(
                deleted,
                up_to, "deleted events every secondary has processed"
            );
        }
        if deleted < batch as u64 {
            return Ok(());
        }
    }
}
