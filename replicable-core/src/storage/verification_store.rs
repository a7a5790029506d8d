//! The primary's verification rows.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::error::StoreError;
use crate::domain::registry::StuckCutoffs;
use crate::domain::verification::VerificationRecord;

/// Verification counts of one replicable on the primary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationCounts {
    /// Rows (records that have verification state).
    pub total: u64,
    /// Rows whose checksum succeeded.
    pub succeeded: u64,
    /// Rows whose checksum failed.
    pub failed: u64,
}

/// The primary's verification state, one row per record.
///
/// Claims and heartbeats are measured on the store's clock, as for
/// [`RegistryStore`](crate::storage::RegistryStore): a SQL store uses the database's clock and
/// the in-memory store the `now` it is given.
#[async_trait]
pub trait VerificationStore: Send + Sync + std::fmt::Debug {
    /// The store's current time: the time claims, heartbeats and stuck cutoffs are measured
    /// against. A SQL store reads the database's clock; the default (and the in-memory store)
    /// returns `local_now`, the caller's clock.
    async fn now(&self, local_now: DateTime<Utc>) -> Result<DateTime<Utc>, StoreError> {
        Ok(local_now)
    }

    /// One row.
    async fn get(
        &self,
        name: &str,
        model_id: i64,
    ) -> Result<Option<VerificationRecord>, StoreError>;

    /// The rows of `ids` that exist, in no particular order. The default reads them one by
    /// one; a SQL store reads them in one statement.
    async fn get_many(
        &self,
        name: &str,
        ids: &[i64],
    ) -> Result<Vec<VerificationRecord>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        for &id in ids {
            found.extend(self.get(name, id).await?);
        }
        Ok(found)
    }

    /// Creates the row in `pending`, or puts an existing row back to `pending` (the record
    /// changed). Returns the row as written.
    async fn mark_pending(
        &self,
        name: &str,
        model_id: i64,
    ) -> Result<VerificationRecord, StoreError>;

    /// Writes `row` if the stored row still has `row.version`; the stored version is bumped.
    /// Returns whether it was written.
    async fn update(&self, name: &str, row: &VerificationRecord) -> Result<bool, StoreError>;

    /// Moves up to `limit` due rows (pending, or failed with the retry time passed) to `started`
    /// and returns them, never verified first, then least recently verified (`verified_at`),
    /// then by id. No two callers get the same row. Due-ness and the
    /// `verification_started_at` / `heartbeat_at` the claim sets are on the store's clock
    /// ([`VerificationStore::now`]); `now` is used only by a store without a clock of its own.
    async fn claim(
        &self,
        name: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<VerificationRecord>, StoreError>;

    /// Rows `started` that ran past their timeout or lost their worker (see
    /// [`StuckCutoffs`]), at most `limit`. Compute the cutoffs from [`VerificationStore::now`].
    async fn stuck(
        &self,
        name: &str,
        cutoffs: &StuckCutoffs,
        limit: usize,
    ) -> Result<Vec<VerificationRecord>, StoreError>;

    /// Records that the worker holding the row at `version` is alive, at the store's current
    /// time (`now` is used only by a store without a clock of its own). The version is not
    /// bumped. Returns whether the row is still at `version`.
    async fn heartbeat(
        &self,
        name: &str,
        model_id: i64,
        version: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Removes a row. Returns whether it existed.
    async fn delete(&self, name: &str, model_id: i64) -> Result<bool, StoreError>;

    /// Counts by state. A SQL store keeps them as the rows change, so reading them costs the
    /// same at any size.
    async fn counts(&self, name: &str) -> Result<VerificationCounts, StoreError>;

    /// Sends up to `limit` rows whose verification succeeded before `verified_before` back to
    /// pending (re-verification, in batches), oldest first. Their checksum is kept until it is
    /// recomputed. Returns how many rows changed.
    async fn reverify_older_than(
        &self,
        name: &str,
        verified_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, StoreError>;

    /// Gives up to `limit` records of the same database's catalogue (`<name>_records`) that
    /// have no verification row a pending one, lowest ids first: records written before
    /// replication was turned on, or through another record store, are checksummed too.
    /// Returns how many rows were created.
    async fn backfill_missing(&self, name: &str, limit: usize) -> Result<u64, StoreError>;

    /// Gives each of `model_ids` that has no verification row a pending one (the records of a
    /// [`RecordSource`](crate::storage::RecordSource), which the catalogue join of
    /// [`backfill_missing`](Self::backfill_missing) does not see). Returns how many rows were
    /// created. The default reads and writes one row at a time.
    async fn insert_missing(&self, name: &str, model_ids: &[i64]) -> Result<u64, StoreError> {
        let mut created = 0;
        for &id in model_ids {
            if self.get(name, id).await?.is_none() {
                self.mark_pending(name, id).await?;
                created += 1;
            }
        }
        Ok(created)
    }
}
