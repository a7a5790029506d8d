//! The primary's verification rows on SQL, and the verification columns both tables share.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;
use sqlx::any::AnyRow;

use super::event_log::verification_pending_sql;
use super::{SqlStore, micros, opt_micros};
use crate::domain::error::StoreError;
use crate::domain::registry::StuckCutoffs;
use crate::domain::verification::{Verification, VerificationRecord, VerificationState};
use crate::storage::{VerificationCounts, VerificationStore};

/// The verification columns both tables share, in the order they are written.
const VERIFICATION_COLUMNS: [&str; 10] = [
    "verification_state",
    "verification_checksum",
    "verified_at",
    "verification_started_at",
    "verification_retry_at",
    "verification_retry_count",
    "verification_failure",
    "checksum_mismatch",
    "verification_checksum_mismatched",
    "heartbeat_at",
];

/// The `SET` list writing every verification column from `$first` on (10 parameters).
pub(super) fn verification_assignments(first: usize) -> String {
    VERIFICATION_COLUMNS
        .iter()
        .enumerate()
        .map(|(i, column)| format!("{column} = ${}", first + i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `SET` list writing every verification column from the elements of the JSON array
/// `j.value` from index `first` on (see [`verification_json`]): a multi-row update.
pub(super) fn verification_assignments_from_json(first: usize) -> String {
    VERIFICATION_COLUMNS
        .iter()
        .enumerate()
        .map(|(i, column)| format!("{column} = j.value ->> {}", first + i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The values of [`verification_assignments_from_json`], in its order.
pub(super) fn verification_json(
    v: &Verification,
    heartbeat_at: Option<DateTime<Utc>>,
) -> [serde_json::Value; 10] {
    [
        v.verification_state.value().into(),
        v.verification_checksum.clone().into(),
        opt_micros(v.verified_at).into(),
        opt_micros(v.verification_started_at).into(),
        opt_micros(v.verification_retry_at).into(),
        v.verification_retry_count.into(),
        v.verification_failure.clone().into(),
        i16::from(v.checksum_mismatch).into(),
        v.verification_checksum_mismatched.clone().into(),
        opt_micros(heartbeat_at).into(),
    ]
}

/// Binds the values of [`verification_assignments`].
pub(super) fn bind_verification<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    v: &Verification,
    heartbeat_at: Option<DateTime<Utc>>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    query
        .bind(v.verification_state.value())
        .bind(v.verification_checksum.clone())
        .bind(opt_micros(v.verified_at))
        .bind(opt_micros(v.verification_started_at))
        .bind(opt_micros(v.verification_retry_at))
        .bind(i64::from(v.verification_retry_count))
        .bind(v.verification_failure.clone())
        .bind(i16::from(v.checksum_mismatch))
        .bind(v.verification_checksum_mismatched.clone())
        .bind(opt_micros(heartbeat_at))
}

impl SqlStore {
    pub(super) fn read_verification(&self, row: &AnyRow) -> Result<Verification, StoreError> {
        let state: i16 = self.get(row, "verification_state")?;
        let retry_count: i64 = self.get(row, "verification_retry_count")?;
        let mismatch: i16 = self.get(row, "checksum_mismatch")?;
        Ok(Verification {
            verification_state: VerificationState::from_value(state)
                .ok_or_else(|| self.corrupt(format!("unknown verification state {state}")))?,
            verification_checksum: self.get(row, "verification_checksum")?,
            verified_at: self.opt_time(self.get(row, "verified_at")?)?,
            verification_started_at: self.opt_time(self.get(row, "verification_started_at")?)?,
            verification_retry_at: self.opt_time(self.get(row, "verification_retry_at")?)?,
            verification_retry_count: u32::try_from(retry_count).unwrap_or(u32::MAX),
            verification_failure: self.get(row, "verification_failure")?,
            checksum_mismatch: mismatch != 0,
            verification_checksum_mismatched: self.get(row, "verification_checksum_mismatched")?,
        })
    }

    fn read_verification_record(&self, row: &AnyRow) -> Result<VerificationRecord, StoreError> {
        Ok(VerificationRecord {
            model_id: self.get(row, "model_id")?,
            verification: self.read_verification(row)?,
            heartbeat_at: self.opt_time(self.get(row, "heartbeat_at")?)?,
            version: self.get(row, "version")?,
        })
    }

    fn read_verification_records(
        &self,
        rows: &[AnyRow],
    ) -> Result<Vec<VerificationRecord>, StoreError> {
        rows.iter()
            .map(|row| self.read_verification_record(row))
            .collect()
    }
}

/// The scheduling order of verification claims: never verified first, then least recently
/// verified. The claims name the due states as `verification_state IN (0, 3)`, which is what
/// the partial indexes in this order (schema version 6) are on: a claim walks the index and
/// stops at its limit instead of sorting every due row.
pub(super) const VERIFICATION_ORDER: &str = "verified_at NULLS FIRST";

/// The predicate of work stuck in verification, with `$1` the started cutoff and `$2` the
/// heartbeat cutoff.
pub(super) const VERIFICATION_STUCK: &str = "(verification_state = 1 AND \
     (verification_started_at IS NULL OR verification_started_at < $1 \
      OR COALESCE(heartbeat_at, verification_started_at) < $2))";

#[async_trait]
impl VerificationStore for SqlStore {
    async fn get(
        &self,
        name: &str,
        model_id: i64,
    ) -> Result<Option<VerificationRecord>, StoreError> {
        let Some(t) = self.existing_tables(name).await? else {
            return Ok(None);
        };
        let sql = format!(
            "SELECT {} FROM {}_verification WHERE {}_id = $1",
            t.verification_columns, t.name, t.name
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(model_id)
            .fetch_optional(&mut *self.reader().await?)
            .await
            .map_err(self.backend("read verification row"))?;
        row.map(|row| self.read_verification_record(&row))
            .transpose()
    }

    async fn get_many(
        &self,
        name: &str,
        ids: &[i64],
    ) -> Result<Vec<VerificationRecord>, StoreError> {
        let Some(t) = self.existing_tables(name).await? else {
            return Ok(Vec::new());
        };
        let rows = self
            .rows_by_ids(ids, "read verification rows", |ids_in| {
                format!(
                    "SELECT {} FROM {}_verification WHERE {}_id IN {ids_in}",
                    t.verification_columns, t.name, t.name
                )
            })
            .await?;
        rows.iter()
            .map(|row| self.read_verification_record(row))
            .collect()
    }

    async fn mark_pending(
        &self,
        name: &str,
        model_id: i64,
    ) -> Result<VerificationRecord, StoreError> {
        let t = self.tables(name).await?;
        let mut w = self.writer().await?;
        let row = sqlx::query(AssertSqlSafe(verification_pending_sql("", &t)))
            .bind(model_id)
            .bind(0_i16)
            .fetch_one(&mut *w)
            .await
            .map_err(self.backend("mark verification pending"))?;
        self.read_verification_record(&row)
    }

    async fn update(&self, name: &str, row: &VerificationRecord) -> Result<bool, StoreError> {
        let t = self.tables(name).await?;
        let n = &t.name;
        let sql = format!(
            "UPDATE {n}_verification SET {}, version = version + 1 \
             WHERE {n}_id = $11 AND version = $12",
            verification_assignments(1)
        );
        let query = bind_verification(
            sqlx::query(AssertSqlSafe(sql)),
            &row.verification,
            row.heartbeat_at,
        )
        .bind(row.model_id)
        .bind(row.version);
        let mut w = self.writer().await?;
        let done = query
            .execute(&mut *w)
            .await
            .map_err(self.backend("update verification row"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn claim(
        &self,
        name: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<VerificationRecord>, StoreError> {
        // Due-ness and the times set are on the database's clock.
        let _ = now;
        let t = self.tables(name).await?;
        let n = &t.name;
        let sql = format!(
            "WITH due AS (SELECT {n}_id FROM {n}_verification{} \
               WHERE verification_state IN (0, 3) AND (verification_state = 0 OR \
                 verification_retry_at IS NULL OR verification_retry_at <= {now}) \
               ORDER BY {VERIFICATION_ORDER}, {n}_id LIMIT $1 + 0{}) \
             UPDATE {n}_verification SET verification_state = 1, \
               verification_started_at = {now}, heartbeat_at = {now}, version = version + 1 \
             WHERE {n}_id IN (SELECT {n}_id FROM due) RETURNING {}",
            self.dialect.indexed_by(&format!("{n}_verification_order")),
            self.dialect.skip_locked(),
            t.verification_columns,
            now = self.dialect.now_micros(),
        );
        let mut w = self.writer().await?;
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *w)
            .await
            .map_err(self.backend("claim verification rows"))?;
        let mut claimed = self.read_verification_records(&rows)?;
        claimed.sort_by_key(|r| (r.verification.verified_at, r.model_id));
        Ok(claimed)
    }

    async fn stuck(
        &self,
        name: &str,
        cutoffs: &StuckCutoffs,
        limit: usize,
    ) -> Result<Vec<VerificationRecord>, StoreError> {
        let t = self.tables(name).await?;
        let sql = format!(
            "SELECT {} FROM {}_verification WHERE {VERIFICATION_STUCK} LIMIT $3 + 0",
            t.verification_columns, t.name
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(micros(cutoffs.verification_started_before))
            .bind(micros(cutoffs.heartbeat_before))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *self.reader().await?)
            .await
            .map_err(self.backend("find stuck verifications"))?;
        self.read_verification_records(&rows)
    }

    async fn heartbeat(
        &self,
        name: &str,
        model_id: i64,
        version: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let _ = now;
        let t = self.tables(name).await?;
        let n = &t.name;
        let sql = format!(
            "UPDATE {n}_verification SET heartbeat_at = {} WHERE {n}_id = $1 AND version = $2",
            self.dialect.now_micros()
        );
        let mut w = self.writer().await?;
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(model_id)
            .bind(version)
            .execute(&mut *w)
            .await
            .map_err(self.backend("heartbeat"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete(&self, name: &str, model_id: i64) -> Result<bool, StoreError> {
        self.delete_row("verification", name, model_id).await
    }

    async fn counts(&self, name: &str) -> Result<VerificationCounts, StoreError> {
        let Some(t) = self.existing_tables(name).await? else {
            return Ok(VerificationCounts::default());
        };
        // Kept by triggers as the rows change (`counts.rs`).
        let row = self.counters(&t).await?;
        Ok(VerificationCounts {
            total: self.counter(&row, "verification_rows")?,
            succeeded: self.counter(&row, "verification_succeeded")?,
            failed: self.counter(&row, "verification_failed")?,
        })
    }

    async fn now(&self, local_now: DateTime<Utc>) -> Result<DateTime<Utc>, StoreError> {
        let _ = local_now;
        self.database_now().await
    }

    async fn reverify_older_than(
        &self,
        name: &str,
        verified_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let t = self.tables(name).await?;
        let table = format!("{}_verification", t.name);
        self.reverify(&table, &t.name, "", verified_before, limit)
            .await
    }

    async fn backfill_missing(&self, name: &str, limit: usize) -> Result<u64, StoreError> {
        let t = self.tables(name).await?;
        let n = &t.name;
        let sql = format!(
            "INSERT INTO {n}_verification ({n}_id, verification_state) \
             SELECT r.{n}_id, 0 FROM {n}_records r \
             LEFT JOIN {n}_verification v ON v.{n}_id = r.{n}_id \
             WHERE v.{n}_id IS NULL ORDER BY r.{n}_id LIMIT $1 + 0 \
             ON CONFLICT ({n}_id) DO NOTHING"
        );
        let mut w = self.writer().await?;
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(&mut *w)
            .await
            .map_err(self.backend("backfill verification rows"))?;
        Ok(done.rows_affected())
    }

    async fn insert_missing(&self, name: &str, model_ids: &[i64]) -> Result<u64, StoreError> {
        let t = self.tables(name).await?;
        let n = &t.name;
        let mut created = 0;
        for chunk in model_ids.chunks(1_000) {
            let values = (1..=chunk.len())
                .map(|i| format!("(${i}, 0)"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO {n}_verification ({n}_id, verification_state) VALUES {values} \
                 ON CONFLICT ({n}_id) DO NOTHING"
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(*id);
            }
            let mut w = self.writer().await?;
            created += query
                .execute(&mut *w)
                .await
                .map_err(self.backend("backfill verification rows"))?
                .rows_affected();
        }
        Ok(created)
    }
}

impl SqlStore {
    /// Sends up to `limit` rows of `table` whose verification succeeded before
    /// `verified_before` (and that match `extra`, an ` AND ...` condition) back to
    /// verification pending, oldest first, keeping their checksum and retry count.
    pub(super) async fn reverify(
        &self,
        table: &str,
        name: &str,
        extra: &str,
        verified_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, StoreError> {
        // The batch is chosen once, in a CTE: as an `IN (subquery)` PostgreSQL may scan the
        // subquery again for each row, skip the rows the statement itself just changed, and
        // take more than `limit`.
        let sql = format!(
            "WITH batch AS (SELECT {name}_id FROM {table} \
               WHERE verification_state = 2 AND verified_at < $1{extra} \
               ORDER BY verified_at, {name}_id LIMIT $2 + 0{}) \
             UPDATE {table} SET verification_state = 0, version = version + 1 \
             WHERE {name}_id IN (SELECT {name}_id FROM batch) \
             AND verification_state = 2{extra}",
            self.dialect.skip_locked()
        );
        let mut w = self.writer().await?;
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(micros(verified_before))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(&mut *w)
            .await
            .map_err(self.backend("re-verify old checksums"))?;
        Ok(done.rows_affected())
    }
}
