//! Replication status of one replicable on one site.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::descriptor::ReplicableDescriptor;
use crate::domain::error::StoreError;
use crate::domain::event::EventId;
use crate::site::Site;
use crate::storage::{RegistryCounts, VerificationCounts};

/// The primary's view of one replicable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrimaryStatus {
    /// The replicable's name.
    pub replicable_name: String,
    /// Records.
    pub count: u64,
    /// Records with verification state.
    pub checksum_total_count: u64,
    /// Records whose checksum succeeded.
    pub checksummed_count: u64,
    /// Records whose checksum failed.
    pub checksum_failed_count: u64,
}

/// A secondary's view of one replicable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecondaryStatus {
    /// The replicable's name.
    pub replicable_name: String,
    /// Registry rows.
    pub registry_count: u64,
    /// Rows pending.
    pub pending_count: u64,
    /// Rows whose sync is running.
    #[serde(default)]
    pub started_count: u64,
    /// Rows synced.
    pub synced_count: u64,
    /// Rows failed.
    pub failed_count: u64,
    /// Synced rows that take part in verification.
    pub verification_total_count: u64,
    /// Rows verified.
    pub verified_count: u64,
    /// Rows whose verification failed.
    pub verification_failed_count: u64,
    /// Rows whose copy differed from the primary at the last verification.
    pub checksum_mismatch_count: u64,
    /// `synced / registry`, in percent (0 when there are no rows).
    pub synced_percent: f64,
    /// `verified / registry`, in percent (0 when there are no rows).
    pub verified_percent: f64,
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

impl PrimaryStatus {
    fn from_counts(name: &str, count: u64, v: VerificationCounts) -> Self {
        Self {
            replicable_name: name.to_owned(),
            count,
            checksum_total_count: v.total,
            checksummed_count: v.succeeded,
            checksum_failed_count: v.failed,
        }
    }
}

impl SecondaryStatus {
    fn from_counts(name: &str, c: RegistryCounts) -> Self {
        Self {
            replicable_name: name.to_owned(),
            registry_count: c.registry,
            pending_count: c.pending,
            started_count: c.started,
            synced_count: c.synced,
            failed_count: c.failed,
            verification_total_count: c.verification_total,
            verified_count: c.verified,
            verification_failed_count: c.verification_failed,
            checksum_mismatch_count: c.checksum_mismatch,
            synced_percent: percent(c.synced, c.registry),
            verified_percent: percent(c.verified, c.registry),
        }
    }
}

/// The primary's status of replicable `name`.
pub async fn primary_status(site: &Site, name: &str) -> Result<PrimaryStatus, StoreError> {
    let count = site.records().count(name).await?;
    let verification = site.verification_store().counts(name).await?;
    Ok(PrimaryStatus::from_counts(name, count, verification))
}

/// A secondary's status of replicable `name`.
pub async fn secondary_status(site: &Site, name: &str) -> Result<SecondaryStatus, StoreError> {
    let counts = site.registry_store().counts(name).await?;
    Ok(SecondaryStatus::from_counts(name, counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_are_zero_without_rows_and_exact_otherwise() {
        let empty = SecondaryStatus::from_counts("x", RegistryCounts::default());
        assert_eq!((empty.synced_percent, empty.verified_percent), (0.0, 0.0));
        let counts = RegistryCounts {
            registry: 4,
            synced: 3,
            verified: 1,
            ..Default::default()
        };
        let status = SecondaryStatus::from_counts("x", counts);
        assert_eq!(status.synced_percent, 75.0);
        assert_eq!(status.verified_percent, 25.0);
    }
}

/// A record whose copy on a secondary is behind the primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BehindRecord {
    /// The record's id.
    pub model_id: i64,
    /// The generation the secondary holds (`None`: never synced).
    pub secondary_generation: Option<i64>,
    /// The primary's generation.
    pub primary_generation: i64,
    /// How many generations the secondary is behind.
    pub behind_by: i64,
}

/// Reading the primary or the registry failed while building a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The tracking database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The primary could not be read.
    #[error(transparent)]
    Link(#[from] crate::domain::error::LinkError),
    /// The site is not a secondary.
    #[error("site `{0}` is not a secondary")]
    NotSecondary(String),
}

/// The data-loss report of one replicable on a secondary: every registered record whose copy
/// is behind the primary's generation, and by how much, in id order. A record is up to date only
/// when the generations are equal.
pub async fn dataloss(site: &Site, name: &str) -> Result<Vec<BehindRecord>, ReportError> {
    const PAGE: usize = 1_000;
    let link = site
        .primary_link()
        .filter(|_| !site.is_primary())
        .ok_or_else(|| ReportError::NotSecondary(site.name().to_owned()))?;
    let mut behind = Vec::new();
    let mut from = i64::MIN;
    loop {
        let ids = site
            .registry_store()
            .ids(name, from..i64::MAX, PAGE)
            .await?;
        for &id in &ids {
            let Some(primary) = link.record(name, id).await? else {
                continue;
            };
            let held = site
                .registry_store()
                .get(name, id)
                .await?
                .and_then(|row| row.synced_generation);
            let behind_by = primary.generation - held.unwrap_or(0);
            if behind_by > 0 {
                behind.push(BehindRecord {
                    model_id: id,
                    secondary_generation: held,
                    primary_generation: primary.generation,
                    behind_by,
                });
            }
        }
        match ids.last() {
            Some(&last) if ids.len() == PAGE => from = last.saturating_add(1),
            _ => return Ok(behind),
        }
    }
}

/// Where the primary's event log and a secondary's log cursor stand.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventPosition {
    /// The newest event's id in the primary's log.
    pub last_event_id: Option<EventId>,
    /// When the newest event was appended.
    pub last_event_at: Option<DateTime<Utc>>,
    /// Secondary: the id of the last event the log cursor processed (0 before the first).
    pub cursor_event_id: Option<EventId>,
    /// Secondary: when the event at the cursor was appended (`None` once retention removed it).
    pub cursor_event_at: Option<DateTime<Utc>>,
    /// Secondary: how many event ids the cursor is behind the log's newest.
    pub events_behind: Option<u64>,
    /// Secondary: how old the oldest event the cursor has not processed is, in seconds (0 when
    /// it is caught up): the cursor's lag in time.
    pub lag_seconds: Option<f64>,
}

/// The status of one replicable on one site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum ReplicableStatus {
    /// The primary's view.
    Primary(PrimaryStatus),
    /// A secondary's view, with the sync queue's depth and the replication switch.
    Secondary {
        /// The counts.
        #[serde(flatten)]
        status: SecondaryStatus,
        /// Rows pending plus failed rows whose retry is due.
        queue_depth: u64,
        /// Whether replication of this replicable is on.
        replication_enabled: bool,
    },
}

impl ReplicableStatus {
    /// The replicable's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Primary(p) => &p.replicable_name,
            Self::Secondary { status, .. } => &status.replicable_name,
        }
    }
}

/// The status of a site: every replicable it runs, and where the event log and cursor stand.
/// Reading it never creates tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteStatus {
    /// The site's name.
    pub site: String,
    /// `primary` or `secondary`.
    pub role: String,
    /// Whether replication of the whole site is on (always on for a primary).
    pub replication_enabled: bool,
    /// The event log and the cursor.
    pub events: EventPosition,
    /// One entry per replicable, in the order given.
    pub replicables: Vec<ReplicableStatus>,
    /// Primary: every secondary that reported its status, with the age of its report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secondaries: Vec<SecondaryHealth>,
}

/// The event log's and (on a secondary) the cursor's position. A secondary reads the log
/// through its link to the primary; an unreachable primary leaves the log's fields `None`.
pub async fn event_position(site: &Site) -> Result<EventPosition, ReportError> {
    let mut position = EventPosition::default();
    if site.is_primary() {
        let log = site.event_log();
        position.last_event_id = log.last_event_id().await?;
        if let Some(last) = position.last_event_id {
            position.last_event_at = log
                .read_after(last - 1, 1)
                .await?
                .first()
                .and_then(|e| e.event())
                .map(|e| e.created_at);
        }
        return Ok(position);
    }
    let cursor = site.registry_store().cursor().await?;
    position.cursor_event_id = Some(cursor);
    let Some(link) = site.primary_link() else {
        return Ok(position);
    };
    position.last_event_id = link.last_event_id().await?;
    let created_at = |entries: Vec<crate::domain::event::LogEntry>, id: EventId| {
        entries
            .into_iter()
            .find(|e| e.id() == id)
            .and_then(|e| e.into_event())
            .map(|e| e.created_at)
    };
    if let Some(last) = position.last_event_id {
        position.last_event_at = created_at(link.events_after(last - 1, 1).await?, last);
        position.events_behind = Some(u64::try_from(last - cursor).unwrap_or(0));
        let oldest_unconsumed = link
            .events_after(cursor, 1)
            .await?
            .into_iter()
            .next()
            .and_then(|e| e.into_event());
        position.lag_seconds = Some(oldest_unconsumed.map_or(0.0, |e| {
            (site.now() - e.created_at).num_milliseconds().max(0) as f64 / 1000.0
        }));
    } else {
        position.events_behind = Some(0);
        position.lag_seconds = Some(0.0);
    }
    if cursor > 0 {
        position.cursor_event_at = created_at(link.events_after(cursor - 1, 1).await?, cursor);
    }
    Ok(position)
}

/// The status of `site` for `replicables`: per replicable counts (on a secondary with the
/// queue depth and the replication switch), the event position, and on a primary its
/// secondaries (unhealthy after [`DEFAULT_SILENT_AFTER`] without a report). The counts are
/// kept as rows change (SQL stores: a `<name>_counts` table kept by triggers), so a call reads
/// a few rows per replicable whatever the registry's size; a record source's count is its own.
pub async fn site_status(
    site: &Site,
    replicables: &[&'static ReplicableDescriptor],
) -> Result<SiteStatus, ReportError> {
    site_status_with(site, replicables, StatusOptions::default()).await
}

/// How [`site_status_with`] judges what it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatusOptions {
    /// How long a secondary may go without reporting before its primary shows it unhealthy
    /// (default [`DEFAULT_SILENT_AFTER`]). Keep it a few times the secondaries' report period
    /// (`EngineConfig::periods.status_report`, 30 s by default).
    pub silent_after: std::time::Duration,
}

impl Default for StatusOptions {
    fn default() -> Self {
        Self {
            silent_after: DEFAULT_SILENT_AFTER,
        }
    }
}

impl StatusOptions {
    /// A secondary silent for longer than `after` is unhealthy.
    pub fn silent_after(mut self, after: std::time::Duration) -> Self {
        self.silent_after = after;
        self
    }
}

/// [`site_status`] with options.
pub async fn site_status_with(
    site: &Site,
    replicables: &[&'static ReplicableDescriptor],
    options: StatusOptions,
) -> Result<SiteStatus, ReportError> {
    let mut statuses = Vec::with_capacity(replicables.len());
    for replicable in replicables {
        let name = replicable.name;
        statuses.push(if site.is_primary() {
            ReplicableStatus::Primary(primary_status(site, name).await?)
        } else {
            let store = site.registry_store();
            ReplicableStatus::Secondary {
                status: secondary_status(site, name).await?,
                queue_depth: store.queue_depth(name, site.now()).await?,
                replication_enabled: store.replication_enabled(name).await?,
            }
        });
    }
    let replication_enabled = site.is_primary()
        || site
            .registry_store()
            .replication_enabled(crate::storage::SITE_SWITCH)
            .await?;
    Ok(SiteStatus {
        site: site.name().to_owned(),
        role: site.role().name().to_owned(),
        replication_enabled,
        events: event_position(site).await?,
        replicables: statuses,
        secondaries: if site.is_primary() {
            secondaries(site, site.now(), options.silent_after).await?
        } else {
            Vec::new()
        },
    })
}

/// A secondary as its primary sees it: its last status report and how old it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecondaryHealth {
    /// The secondary's name.
    pub name: String,
    /// The event its cursor was at.
    pub cursor: Option<EventId>,
    /// Its report (counts, lag, version).
    pub report: serde_json::Value,
    /// When the primary received it.
    pub reported_at: DateTime<Utc>,
    /// How old the report is, in seconds.
    pub age_seconds: f64,
    /// Whether it reported within the threshold; a secondary silent for longer is unhealthy.
    pub healthy: bool,
}

/// How long a secondary may stay silent before its primary shows it unhealthy, unless
/// [`StatusOptions::silent_after`] says otherwise: five report periods of the engine's
/// default.
pub const DEFAULT_SILENT_AFTER: std::time::Duration = std::time::Duration::from_secs(150);

/// Primary: every secondary that reported its status, with the age of its last report at
/// `now`; one silent for longer than `silent_after` is unhealthy.
pub async fn secondaries(
    site: &Site,
    now: DateTime<Utc>,
    silent_after: std::time::Duration,
) -> Result<Vec<SecondaryHealth>, StoreError> {
    let rows = site.registry_store().secondary_statuses().await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let age = (now - row.received_at).to_std().unwrap_or_default();
            SecondaryHealth {
                name: row.secondary,
                cursor: row.cursor,
                report: row.report,
                reported_at: row.received_at,
                age_seconds: age.as_secs_f64(),
                healthy: age <= silent_after,
            }
        })
        .collect())
}
