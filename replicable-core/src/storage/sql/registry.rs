//! A secondary's tracking database on SQL: registries, the log cursor, leases and skipped
//! events.

use std::ops::Range;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;
use sqlx::any::AnyRow;

use super::verification::{VERIFICATION_STUCK, bind_verification, verification_assignments};
use super::{SqlStore, micros, opt_micros};
use crate::error::StoreError;
use crate::event::{EventId, SkippedEvent};
use crate::registry::{RegistryRecord, StuckCutoffs, SyncState};
use crate::storage::{RegistryCounts, RegistryStore};
use crate::verification::VerificationState;

/// Rows per multi-row insert of pending registry rows.
const INSERT_CHUNK: usize = 1000;

impl SqlStore {
    fn read_registry(&self, row: &AnyRow) -> Result<RegistryRecord, StoreError> {
        let state: i16 = self.get(row, "state")?;
        let retry_count: i64 = self.get(row, "retry_count")?;
        let missing: i16 = self.get(row, "missing_on_primary")?;
        let change_pending: i16 = self.get(row, "change_pending")?;
        Ok(RegistryRecord {
            model_id: self.get(row, "model_id")?,
            state: SyncState::from_value(state)
                .ok_or_else(|| self.corrupt(format!("unknown registry state {state}")))?,
            retry_count: u32::try_from(retry_count).unwrap_or(u32::MAX),
            retry_at: self.opt_time(self.get(row, "retry_at")?)?,
            last_sync_failure: self.get(row, "last_sync_failure")?,
            last_synced_at: self.opt_time(self.get(row, "last_synced_at")?)?,
            created_at: self.time(self.get(row, "created_at")?)?,
            missing_on_primary: missing != 0,
            synced_generation: self.get(row, "synced_generation")?,
            change_pending: change_pending != 0,
            verification: self.read_verification(row)?,
            heartbeat_at: self.opt_time(self.get(row, "heartbeat_at")?)?,
            version: self.get(row, "version")?,
        })
    }

    fn read_registries(&self, rows: &[AnyRow]) -> Result<Vec<RegistryRecord>, StoreError> {
        rows.iter().map(|row| self.read_registry(row)).collect()
    }
}

#[async_trait]
impl RegistryStore for SqlStore {
    async fn get(&self, name: &str, model_id: i64) -> Result<Option<RegistryRecord>, StoreError> {
        let t = self.tables(name).await?;
        let sql = format!(
            "SELECT {} FROM {}_registry WHERE {}_id = $1",
            t.registry_columns, t.name, t.name
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(model_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.backend("read registry row"))?;
        row.map(|row| self.read_registry(&row)).transpose()
    }

    async fn mark_pending(
        &self,
        name: &str,
        model_id: i64,
        now: DateTime<Utc>,
    ) -> Result<RegistryRecord, StoreError> {
        let t = self.tables(name).await?;
        let n = &t.name;
        let sql = format!(
            "INSERT INTO {n}_registry ({n}_id, state, created_at, verification_state) \
             VALUES ($1, 0, $2, 4) \
             ON CONFLICT ({n}_id) DO UPDATE SET \
             change_pending = CASE WHEN {n}_registry.state = 1 THEN 1 ELSE 0 END, \
             retry_at = CASE WHEN {n}_registry.state = 1 THEN {n}_registry.retry_at END, \
             retry_count = CASE WHEN {n}_registry.state = 1 THEN {n}_registry.retry_count ELSE 0 END, \
             last_synced_at = CASE WHEN {n}_registry.state = 1 THEN {n}_registry.last_synced_at END, \
             verification_state = CASE WHEN {n}_registry.state = 1 \
               THEN {n}_registry.verification_state ELSE 4 END, \
             verification_started_at = CASE WHEN {n}_registry.state = 1 \
               THEN {n}_registry.verification_started_at END, \
             verification_retry_at = CASE WHEN {n}_registry.state = 1 \
               THEN {n}_registry.verification_retry_at END, \
             state = CASE WHEN {n}_registry.state = 1 THEN 1 ELSE 0 END, \
             version = {n}_registry.version + 1 RETURNING {}",
            t.registry_columns
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(model_id)
            .bind(micros(now))
            .fetch_one(&self.pool)
            .await
            .map_err(self.backend("mark registry row pending"))?;
        self.read_registry(&row)
    }

    async fn insert_pending(
        &self,
        name: &str,
        model_ids: &[i64],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let t = self.tables(name).await?;
        let n = &t.name;
        let mut inserted = 0;
        for chunk in model_ids.chunks(INSERT_CHUNK) {
            let values = (0..chunk.len())
                .map(|i| format!("(${}, 0, $1, 4)", i + 2))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO {n}_registry ({n}_id, state, created_at, verification_state) \
                 VALUES {values} ON CONFLICT ({n}_id) DO NOTHING"
            );
            let mut query = sqlx::query(AssertSqlSafe(sql)).bind(micros(now));
            for id in chunk {
                query = query.bind(*id);
            }
            inserted += query
                .execute(&self.pool)
                .await
                .map_err(self.backend("insert pending registry rows"))?
                .rows_affected();
        }
        Ok(inserted)
    }

    async fn update(&self, name: &str, row: &RegistryRecord) -> Result<bool, StoreError> {
        let t = self.tables(name).await?;
        let n = &t.name;
        let sql = format!(
            "UPDATE {n}_registry SET state = $1, retry_count = $2, retry_at = $3, \
             last_sync_failure = $4, last_synced_at = $5, missing_on_primary = $6, \
             synced_generation = $7, change_pending = $8, {}, version = version + 1 \
             WHERE {n}_id = $19 AND version = $20",
            verification_assignments(9)
        );
        let query = sqlx::query(AssertSqlSafe(sql))
            .bind(row.state.value())
            .bind(i64::from(row.retry_count))
            .bind(opt_micros(row.retry_at))
            .bind(row.last_sync_failure.clone())
            .bind(opt_micros(row.last_synced_at))
            .bind(i16::from(row.missing_on_primary))
            .bind(row.synced_generation)
            .bind(i16::from(row.change_pending));
        let done = bind_verification(query, &row.verification, row.heartbeat_at)
            .bind(row.model_id)
            .bind(row.version)
            .execute(&self.pool)
            .await
            .map_err(self.backend("update registry row"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn claim_for_sync(
        &self,
        name: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<RegistryRecord>, StoreError> {
        let t = self.tables(name).await?;
        let n = &t.name;
        // Never-attempted rows first, then failed rows by retry time, as the scheduler promises.
        let sql = format!(
            "WITH due AS (SELECT {n}_id FROM {n}_registry \
               WHERE state = 0 OR (state = 3 AND (retry_at IS NULL OR retry_at <= $1)) \
               ORDER BY CASE WHEN state = 0 AND last_synced_at IS NULL THEN 0 ELSE 1 END, \
                 retry_at NULLS FIRST, {n}_id LIMIT $2{}) \
             UPDATE {n}_registry SET state = 1, last_synced_at = $1, heartbeat_at = $1, \
               change_pending = 0, version = version + 1 \
             WHERE {n}_id IN (SELECT {n}_id FROM due) RETURNING {}",
            self.dialect.skip_locked(),
            t.registry_columns
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(micros(now))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(self.backend("claim registry rows for sync"))?;
        let mut claimed = self.read_registries(&rows)?;
        claimed.sort_by_key(|r| r.model_id);
        Ok(claimed)
    }

    async fn claim_for_verification(
        &self,
        name: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<RegistryRecord>, StoreError> {
        let t = self.tables(name).await?;
        let n = &t.name;
        let sql = format!(
            "WITH due AS (SELECT {n}_id FROM {n}_registry \
               WHERE state = 2 AND (verification_state = 0 OR (verification_state = 3 AND \
                 (verification_retry_at IS NULL OR verification_retry_at <= $1))) \
               ORDER BY verification_retry_at NULLS FIRST, {n}_id LIMIT $2{}) \
             UPDATE {n}_registry SET verification_state = 1, verification_started_at = $1, \
               heartbeat_at = $1, version = version + 1 \
             WHERE {n}_id IN (SELECT {n}_id FROM due) RETURNING {}",
            self.dialect.skip_locked(),
            t.registry_columns
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(micros(now))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(self.backend("claim registry rows for verification"))?;
        let mut claimed = self.read_registries(&rows)?;
        claimed.sort_by_key(|r| r.model_id);
        Ok(claimed)
    }

    async fn stuck(
        &self,
        name: &str,
        cutoffs: &StuckCutoffs,
        limit: usize,
    ) -> Result<Vec<RegistryRecord>, StoreError> {
        let t = self.tables(name).await?;
        let sql = format!(
            "SELECT {} FROM {}_registry WHERE \
             (state = 1 AND (last_synced_at IS NULL OR last_synced_at < $4 \
               OR COALESCE(heartbeat_at, last_synced_at) < $2)) \
             OR {VERIFICATION_STUCK} LIMIT $3",
            t.registry_columns, t.name
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(micros(cutoffs.verification_started_before))
            .bind(micros(cutoffs.heartbeat_before))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(micros(cutoffs.sync_started_before))
            .fetch_all(&self.pool)
            .await
            .map_err(self.backend("find stuck registry rows"))?;
        self.read_registries(&rows)
    }

    async fn heartbeat(
        &self,
        name: &str,
        model_id: i64,
        version: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let t = self.tables(name).await?;
        let n = &t.name;
        let sql =
            format!("UPDATE {n}_registry SET heartbeat_at = $1 WHERE {n}_id = $2 AND version = $3");
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(micros(now))
            .bind(model_id)
            .bind(version)
            .execute(&self.pool)
            .await
            .map_err(self.backend("heartbeat"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete(&self, name: &str, model_id: i64) -> Result<bool, StoreError> {
        self.delete_row("registry", name, model_id).await
    }

    async fn ids(
        &self,
        name: &str,
        range: Range<i64>,
        limit: usize,
    ) -> Result<Vec<i64>, StoreError> {
        let t = self.tables(name).await?;
        self.ids_of(&format!("{}_registry", t.name), &t.name, range, limit)
            .await
    }

    async fn counts(&self, name: &str) -> Result<RegistryCounts, StoreError> {
        let t = self.tables(name).await?;
        let sql = format!(
            "SELECT state, verification_state, checksum_mismatch, COUNT(*) AS n \
             FROM {}_registry GROUP BY state, verification_state, checksum_mismatch",
            t.name
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(self.backend("count registry rows"))?;
        let mut c = RegistryCounts::default();
        for row in &rows {
            let state = SyncState::from_value(self.get(row, "state")?);
            let verification = VerificationState::from_value(self.get(row, "verification_state")?);
            let mismatch: i16 = self.get(row, "checksum_mismatch")?;
            let n = self.get::<i64>(row, "n")?.max(0) as u64;
            c.registry += n;
            match state {
                Some(SyncState::Pending) => c.pending += n,
                Some(SyncState::Started) => c.started += n,
                Some(SyncState::Synced) => c.synced += n,
                Some(SyncState::Failed) => c.failed += n,
                None => {}
            }
            if state == Some(SyncState::Synced) && verification != Some(VerificationState::Disabled)
            {
                c.verification_total += n;
            }
            match verification {
                Some(VerificationState::Succeeded) => c.verified += n,
                Some(VerificationState::Failed) => c.verification_failed += n,
                _ => {}
            }
            if mismatch != 0 {
                c.checksum_mismatch += n;
            }
        }
        Ok(c)
    }

    async fn cursor(&self) -> Result<EventId, StoreError> {
        let row = sqlx::query("SELECT last_event_id FROM replicable_cursor WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(self.backend("read cursor"))?;
        Ok(row
            .map(|row| self.get::<i64>(&row, "last_event_id"))
            .transpose()?
            .unwrap_or(0))
    }

    async fn save_cursor(&self, event_id: EventId) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO replicable_cursor (id, last_event_id) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET last_event_id = excluded.last_event_id",
        )
        .bind(event_id)
        .execute(&self.pool)
        .await
        .map_err(self.backend("save cursor"))?;
        Ok(())
    }

    async fn acquire_lease(
        &self,
        lease: &str,
        holder: &str,
        now: DateTime<Utc>,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let until = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let done = sqlx::query(
            "INSERT INTO replicable_leases (name, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
             expires_at = excluded.expires_at \
             WHERE replicable_leases.holder = excluded.holder OR replicable_leases.expires_at <= $4",
        )
        .bind(lease.to_owned())
        .bind(holder.to_owned())
        .bind(micros(until))
        .bind(micros(now))
        .execute(&self.pool)
        .await
        .map_err(self.backend("acquire lease"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_lease(&self, lease: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM replicable_leases WHERE name = $1 AND holder = $2")
            .bind(lease.to_owned())
            .bind(holder.to_owned())
            .execute(&self.pool)
            .await
            .map_err(self.backend("release lease"))?;
        Ok(())
    }

    async fn record_skipped_event(&self, event: &SkippedEvent) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO replicable_skipped_events \
             (event_id, replicable_name, event_name, reason, skipped_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(event.event_id)
        .bind(event.replicable_name.clone())
        .bind(event.event_name.clone())
        .bind(event.reason.clone())
        .bind(micros(event.skipped_at))
        .execute(&self.pool)
        .await
        .map_err(self.backend("record skipped event"))?;
        Ok(())
    }

    async fn skipped_events(&self, limit: usize) -> Result<Vec<SkippedEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT event_id, replicable_name, event_name, reason, skipped_at \
             FROM replicable_skipped_events ORDER BY event_id LIMIT $1",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(self.backend("read skipped events"))?;
        rows.iter()
            .map(|row| {
                Ok(SkippedEvent {
                    event_id: self.get(row, "event_id")?,
                    replicable_name: self.get(row, "replicable_name")?,
                    event_name: self.get(row, "event_name")?,
                    reason: self.get(row, "reason")?,
                    skipped_at: self.time(self.get(row, "skipped_at")?)?,
                })
            })
            .collect()
    }
}
