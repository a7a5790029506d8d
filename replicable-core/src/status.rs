//! Replication status of one replicable on one site.

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
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
    Link(#[from] crate::error::LinkError),
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
