//! The primary's verification rows.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::registry::StuckCutoffs;
use crate::verification::VerificationRecord;

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
#[async_trait]
pub trait VerificationStore: Send + Sync + std::fmt::Debug {
    /// One row.
    async fn get(
        &self,
        name: &str,
        model_id: i64,
    ) -> Result<Option<VerificationRecord>, StoreError>;

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
    /// and returns them, oldest first. No two callers get the same row.
    async fn claim(
        &self,
        name: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<VerificationRecord>, StoreError>;

    /// Rows `started` that ran past their timeout or lost their worker (see
    /// [`StuckCutoffs`]), at most `limit`.
    async fn stuck(
        &self,
        name: &str,
        cutoffs: &StuckCutoffs,
        limit: usize,
    ) -> Result<Vec<VerificationRecord>, StoreError>;

    /// Records that the worker holding the row at `version` is alive. The version is not
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

    /// Counts by state.
    async fn counts(&self, name: &str) -> Result<VerificationCounts, StoreError>;
}
