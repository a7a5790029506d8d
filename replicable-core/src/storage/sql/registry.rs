//! A secondary's tracking database on SQL: registries, the log cursor, leases and skipped
//! events.

use std::ops::Range;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;
use sqlx::any::AnyRow;

use super::group_commit::{GroupStatement, RegistryRead, RegistryWrite, statement_rounds};
use super::verification::{
    VERIFICATION_ORDER, VERIFICATION_STUCK, bind_verification, verification_assignments,
    verification_assignments_from_json, verification_json,
};
use super::{Dialect, SqlStore, micros, opt_micros};
use crate::domain::error::StoreError;
use crate::domain::event::{CursorGap, EventId, SkippedEvent};
use crate::domain::registry::{RegistryRecord, StuckCutoffs, SyncState};
use crate::storage::{NotedChange, RegistryCounts, RegistryFilter, RegistryStore};

/// Rows per multi-row insert of pending registry rows.
const INSERT_CHUNK: usize = 1000;

/// The assignments of the pending transition ([`RegistryRecord::mark_pending`]) on an existing
/// row referred to as `row`: a row whose sync runs (`state = 1`) stays started with
/// `change_pending` set; any other goes pending with verification disabled, its retry time set
/// to `retry_at` (`NULL`, or now for an operator's resync, which is scheduled behind fresh
/// changes). Every right-hand side reads the row as it was before the statement.
fn pending_assignments(row: &str, retry_at: &str) -> String {
    let started = format!("{row}.state = 1");
    format!(
        "change_pending = CASE WHEN {started} THEN 1 ELSE 0 END, \
         retry_at = CASE WHEN {started} THEN {row}.retry_at ELSE {retry_at} END, \
         retry_count = CASE WHEN {started} THEN {row}.retry_count ELSE 0 END, \
         last_synced_at = CASE WHEN {started} THEN {row}.last_synced_at END, \
         verification_state = CASE WHEN {started} THEN {row}.verification_state ELSE 4 END, \
         verification_started_at = CASE WHEN {started} THEN {row}.verification_started_at END, \
         verification_retry_at = CASE WHEN {started} THEN {row}.verification_retry_at END, \
         state = CASE WHEN {started} THEN 1 ELSE 0 END, \
         version = {row}.version + 1"
    )
}

/// The changes at `round` as the rows a change run's statements read: `(id, [id,
/// published_at, generation, now])`.
fn noted_change_rows(
    changes: &[NotedChange],
    round: &[usize],
    now: DateTime<Utc>,
) -> Vec<(i64, serde_json::Value)> {
    round
        .iter()
        .map(|&i| {
            let c = &changes[i];
            let row = serde_json::json!([
                c.model_id,
                micros(c.published_at),
                c.generation,
                micros(now)
            ]);
            (c.model_id, row)
        })
        .collect()
}

/// A registry row as the JSON array a grouped update reads (`j.value ->> i`): the id, the
/// columns in the order of the statement, the version it was read at.
fn registry_json(row: &RegistryRecord) -> serde_json::Value {
    let mut values: Vec<serde_json::Value> = vec![
        row.model_id.into(),
        row.state.value().into(),
        row.retry_count.into(),
        opt_micros(row.retry_at).into(),
        row.last_sync_failure.clone().into(),
        opt_micros(row.last_synced_at).into(),
        i16::from(row.missing_on_primary).into(),
        row.synced_generation.into(),
        i16::from(row.change_pending).into(),
    ];
    values.extend(verification_json(&row.verification, row.heartbeat_at));
    values.push(opt_micros(row.changed_at).into());
    values.push(row.version.into());
    serde_json::Value::Array(values)
}

impl SqlStore {
    /// [`RegistryStore::update`], one row in its own statement.
    pub(super) async fn update_registry_now(
        &self,
        name: &str,
        row: &RegistryRecord,
    ) -> Result<bool, StoreError> {
        let t = self.tables(name).await?;
        let n = &t.name;
        let sql = format!(
            "UPDATE {n}_registry SET state = $1, retry_count = $2, retry_at = $3, \
             last_sync_failure = $4, last_synced_at = $5, missing_on_primary = $6, \
             synced_generation = $7, change_pending = $8, {}, changed_at = $19, \
             version = version + 1 WHERE {n}_id = $20 AND version = $21",
            verification_assignments(9)
        );
        let mut w = self.writer().await?;
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
            .bind(opt_micros(row.changed_at))
            .bind(row.model_id)
            .bind(row.version)
            .execute(&mut *w)
            .await
            .map_err(self.backend("update registry row"))?;
        Ok(done.rows_affected() == 1)
    }

    /// [`RegistryStore::update`] of many rows (SQLite): one statement per replicable and
    /// round, its rows as one JSON parameter, each a compare-and-set on its version; returns
    /// whether each was written, in the order of `group` (see [`statement_rounds`]).
    pub(super) async fn update_registries_now(
        &self,
        group: &[RegistryWrite],
    ) -> Result<Vec<bool>, StoreError> {
        // Every statement is prepared (its tables looked up) before any runs.
        let mut statements = Vec::new();
        for (name, writes) in statement_rounds(group, |w| (&w.name, w.row.model_id)) {
            let t = self.tables(name).await?;
            let n = &t.name;
            let sql = format!(
                "UPDATE {n}_registry SET state = j.value ->> 1, retry_count = j.value ->> 2, \
                 retry_at = j.value ->> 3, last_sync_failure = j.value ->> 4, \
                 last_synced_at = j.value ->> 5, missing_on_primary = j.value ->> 6, \
                 synced_generation = j.value ->> 7, change_pending = j.value ->> 8, {}, \
                 changed_at = j.value ->> 19, version = version + 1 \
                 FROM json_each($1) AS j \
                 WHERE {n}_id = j.value ->> 0 AND version = j.value ->> 20 RETURNING {n}_id AS id",
                verification_assignments_from_json(9)
            );
            let rows = writes
                .iter()
                .map(|&i| (group[i].row.model_id, registry_json(&group[i].row)))
                .collect();
            statements.push(GroupStatement { sql, rows, writes });
        }
        self.write_group_statements(group.len(), &statements, "update registry rows")
            .await
    }

    /// [`RegistryStore::mark_changes`] on SQLite: one transaction, and in it per round (a
    /// record named twice waits for the next) one statement that marks the existing rows and
    /// one that creates the missing ones, the changes as one JSON parameter. The update comes
    /// first, so a row it would mark is never one the insert just created.
    async fn mark_changes_sqlite(
        &self,
        name: &str,
        changes: &[NotedChange],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let t = self.tables(name).await?;
        let n = &t.name;
        // The statement of `upsert_pending`, its parameters read from each change: `[id,
        // published_at, generation, now]`.
        let update = format!(
            "UPDATE {n}_registry SET {}, \
               changed_at = CASE WHEN {n}_registry.changed_at IS NULL THEN j.value ->> 1 \
                 WHEN {n}_registry.changed_at <= j.value ->> 1 THEN {n}_registry.changed_at \
                 ELSE j.value ->> 1 END \
             FROM json_each($1) AS j \
             WHERE {n}_id = j.value ->> 0 AND (j.value ->> 2 IS NULL OR NOT ({n}_registry.state = 2 \
               AND {n}_registry.synced_generation IS NOT NULL \
               AND {n}_registry.synced_generation >= j.value ->> 2)) \
             RETURNING {n}_id AS id",
            pending_assignments(&format!("{n}_registry"), "NULL"),
        );
        let insert = format!(
            "INSERT INTO {n}_registry ({n}_id, state, created_at, verification_state, changed_at) \
             SELECT j.value ->> 0, 0, j.value ->> 3, 4, j.value ->> 1 \
             FROM json_each($1) AS j WHERE true \
             ON CONFLICT ({n}_id) DO NOTHING RETURNING {n}_id AS id"
        );
        let mut tx = self
            .begin_write()
            .await
            .map_err(self.backend("mark registry rows changed"))?;
        let mut marked = 0;
        for (_, round) in statement_rounds(changes, |c| (name, c.model_id)) {
            let rows = noted_change_rows(changes, &round, now);
            for sql in [&update, &insert] {
                marked += self
                    .write_json_rows(&mut tx, sql, &rows, "mark registry rows changed")
                    .await?
                    .into_iter()
                    .filter(|&done| done)
                    .count() as u64;
            }
        }
        tx.commit()
            .await
            .map_err(self.backend("mark registry rows changed"))?;
        Ok(marked)
    }

    /// [`RegistryStore::mark_changes`] on PostgreSQL: per round (a record named twice waits
    /// for the next) one upsert of every change, the statement of `upsert_pending` with its
    /// parameters read from one JSON parameter (`[id, published_at, generation, now]`); the
    /// stale check reads each row's generation from the same JSON. Several rounds are one
    /// transaction. The log cursor is a serial stage: one statement per run instead of one
    /// round trip per event. Rows are taken in id order, so that another statement locking
    /// several of them in that order waits instead of deadlocking.
    async fn mark_changes_postgres(
        &self,
        name: &str,
        changes: &[NotedChange],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let t = self.tables(name).await?;
        let n = &t.name;
        let sql = format!(
            "WITH j AS (SELECT (value ->> 0)::bigint AS id, (value ->> 1)::bigint AS published, \
               (value ->> 2)::bigint AS generation, (value ->> 3)::bigint AS created \
               FROM json_array_elements($1::json)) \
             INSERT INTO {n}_registry ({n}_id, state, created_at, verification_state, changed_at) \
             SELECT id, 0, created, 4, published FROM j ORDER BY id \
             ON CONFLICT ({n}_id) DO UPDATE SET {}, \
               changed_at = CASE WHEN {n}_registry.changed_at IS NULL THEN excluded.changed_at \
                 WHEN excluded.changed_at IS NULL \
                   OR {n}_registry.changed_at <= excluded.changed_at THEN {n}_registry.changed_at \
                 ELSE excluded.changed_at END \
             WHERE NOT EXISTS (SELECT 1 FROM j WHERE j.id = excluded.{n}_id \
               AND j.generation IS NOT NULL AND {n}_registry.state = 2 \
               AND {n}_registry.synced_generation IS NOT NULL \
               AND {n}_registry.synced_generation >= j.generation) \
             RETURNING {n}_id AS id",
            pending_assignments(&format!("{n}_registry"), "NULL"),
        );
        let statements: Vec<GroupStatement> = statement_rounds(changes, |c| (name, c.model_id))
            .into_iter()
            .map(|(_, writes)| GroupStatement {
                sql: sql.clone(),
                rows: noted_change_rows(changes, &writes, now),
                writes,
            })
            .collect();
        let written = self
            .write_group_statements(changes.len(), &statements, "mark registry rows changed")
            .await?;
        Ok(written.into_iter().filter(|&done| done).count() as u64)
    }

    /// [`RegistryStore::get`] at once, alone.
    pub(super) async fn get_registry_now(
        &self,
        name: &str,
        model_id: i64,
    ) -> Result<Option<RegistryRecord>, StoreError> {
        let Some(t) = self.existing_tables(name).await? else {
            return Ok(None);
        };
        let sql = format!(
            "SELECT {} FROM {}_registry WHERE {}_id = $1",
            t.registry_columns, t.name, t.name
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(model_id)
            .fetch_optional(&mut *self.reader().await?)
            .await
            .map_err(self.backend("read registry row"))?;
        row.map(|row| self.read_registry(&row)).transpose()
    }

    /// [`RegistryStore::get`] of many rows at once: one read per replicable, the answers in
    /// the order of `group`.
    pub(super) async fn get_registries_now(
        &self,
        group: &[RegistryRead],
    ) -> Result<Vec<Option<RegistryRecord>>, StoreError> {
        let mut found = vec![None; group.len()];
        let mut names: Vec<&str> = group.iter().map(|r| r.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let Some(t) = self.existing_tables(name).await? else {
                continue;
            };
            let ids: Vec<i64> = group
                .iter()
                .filter(|r| r.name == name)
                .map(|r| r.id)
                .collect();
            let (n, columns) = (&t.name, &t.registry_columns);
            let rows = self
                .rows_by_ids(&ids, "read registry rows", |ids_in| {
                    format!("SELECT {columns} FROM {n}_registry WHERE {n}_id IN {ids_in}")
                })
                .await?;
            let mut by_id = std::collections::HashMap::with_capacity(rows.len());
            for row in &rows {
                let row = self.read_registry(row)?;
                by_id.insert(row.model_id, row);
            }
            for (read, found) in group.iter().zip(found.iter_mut()) {
                if read.name == name {
                    *found = by_id.get(&read.id).cloned();
                }
            }
        }
        Ok(found)
    }

    /// Runs `statement(list)` for the ids in chunks, `list` being their placeholders (`$1, ...`),
    /// and returns the rows it changed in all.
    async fn update_ids(
        &self,
        model_ids: &[i64],
        operation: &'static str,
        statement: impl Fn(&str) -> String,
    ) -> Result<u64, StoreError> {
        let mut changed = 0;
        for chunk in model_ids.chunks(INSERT_CHUNK) {
            let list = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let mut query = sqlx::query(AssertSqlSafe(statement(&list)));
            for id in chunk {
                query = query.bind(*id);
            }
            let mut w = self.writer().await?;
            changed += query
                .execute(&mut *w)
                .await
                .map_err(self.backend(operation))?
                .rows_affected();
        }
        Ok(changed)
    }

    /// Creates the row in `pending` or puts it back there, noting `changed_at` unless an older
    /// change is noted already; in one statement. With `unless_held`, an existing row that
    /// holds that generation or a newer one synced is left as it is (`None`).
    async fn upsert_pending(
        &self,
        name: &str,
        model_id: i64,
        now: DateTime<Utc>,
        changed_at: Option<DateTime<Utc>>,
        unless_held: Option<i64>,
    ) -> Result<Option<RegistryRecord>, StoreError> {
        let t = self.tables(name).await?;
        let n = &t.name;
        let sql = format!(
            "INSERT INTO {n}_registry ({n}_id, state, created_at, verification_state, changed_at) \
             VALUES ($1, 0, $2, 4, $3) \
             ON CONFLICT ({n}_id) DO UPDATE SET {}, \
               changed_at = CASE WHEN {n}_registry.changed_at IS NULL THEN $3 \
                 WHEN $3 IS NULL OR {n}_registry.changed_at <= $3 THEN {n}_registry.changed_at \
                 ELSE $3 END \
             WHERE $4 IS NULL OR NOT ({n}_registry.state = 2 \
               AND {n}_registry.synced_generation IS NOT NULL \
               AND {n}_registry.synced_generation >= $4) \
             RETURNING {}",
            pending_assignments(&format!("{n}_registry"), "NULL"),
            t.registry_columns
        );
        let mut w = self.writer().await?;
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(model_id)
            .bind(micros(now))
            .bind(opt_micros(changed_at))
            .bind(unless_held)
            .fetch_optional(&mut *w)
            .await
            .map_err(self.backend("mark registry row pending"))?;
        row.map(|row| self.read_registry(&row)).transpose()
    }

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
            changed_at: self.opt_time(self.get(row, "changed_at")?)?,
            verification: self.read_verification(row)?,
            heartbeat_at: self.opt_time(self.get(row, "heartbeat_at")?)?,
            version: self.get(row, "version")?,
        })
    }

    /// Claims due rows for sync in one statement, unless one of `switches` is off (read in the
    /// same statement). The due states are named as `state IN (0, 3)` and the order as
    /// [`SYNC_ORDER_KEY`]: what the partial index of schema version 6 is on, so that a claim
    /// walks it and stops at its limit instead of sorting every due row (a claim of a few
    /// rows among 20,000 pending ones took milliseconds, and claims ran per few records).
    async fn claim_due_for_sync(
        &self,
        name: &str,
        now: DateTime<Utc>,
        switches: &[&str],
        limit: usize,
    ) -> Result<Vec<RegistryRecord>, StoreError> {
        // Due-ness and the times set are on the database's clock.
        let _ = now;
        let t = self.tables(name).await?;
        let n = &t.name;
        let paused = if switches.is_empty() {
            String::new()
        } else {
            let params = (2..2 + switches.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "AND NOT EXISTS (SELECT 1 FROM replicable_settings \
                   WHERE replication_enabled = 0 AND replicable_name IN ({params})) "
            )
        };
        // One statement: choose the due rows in scheduling order (rows never tried first, then
        // by retry time) and start them. The chosen rows are locked (PostgreSQL: skipping rows
        // another worker holds; SQLite: the database's one writer) until they are started.
        let sql = format!(
            "WITH due AS (SELECT {n}_id FROM {n}_registry{} \
               WHERE state IN (0, 3) AND (state = 0 OR retry_at IS NULL OR retry_at <= {now}) \
               {paused}\
               ORDER BY {SYNC_ORDER_KEY}, retry_at NULLS FIRST, {n}_id LIMIT $1 + 0{}) \
             UPDATE {n}_registry SET state = 1, last_synced_at = {now}, heartbeat_at = {now}, \
               change_pending = 0, version = version + 1 \
             WHERE {n}_id IN (SELECT {n}_id FROM due) RETURNING {}",
            self.dialect.indexed_by(&format!("{n}_registry_sync_order")),
            self.dialect.skip_locked(),
            t.registry_columns,
            now = self.dialect.now_micros(),
        );
        let mut query =
            sqlx::query(AssertSqlSafe(sql)).bind(i64::try_from(limit).unwrap_or(i64::MAX));
        for switch in switches {
            query = query.bind((*switch).to_owned());
        }
        let mut w = self.writer().await?;
        let rows = query
            .fetch_all(&mut *w)
            .await
            .map_err(self.backend("claim registry rows for sync"))?;
        let mut claimed = self.read_registries(&rows)?;
        // The rows all start now; the order only decides which task is spawned first.
        claimed.sort_by_key(|r| (r.retry_at.is_some(), r.retry_at, r.model_id));
        Ok(claimed)
    }

    fn read_registries(&self, rows: &[AnyRow]) -> Result<Vec<RegistryRecord>, StoreError> {
        rows.iter().map(|row| self.read_registry(row)).collect()
    }
}

/// The first key of the sync claims' order: rows never tried (pending, no attempt and no retry
/// time) before the rest. Also the first column of the index that order walks (schema
/// version 6): the two must stay the same text.
pub(super) const SYNC_ORDER_KEY: &str =
    "CASE WHEN state = 0 AND last_synced_at IS NULL AND retry_at IS NULL THEN 0 ELSE 1 END";

#[async_trait]
impl RegistryStore for SqlStore {
    async fn get(&self, name: &str, model_id: i64) -> Result<Option<RegistryRecord>, StoreError> {
        match self.dialect {
            Dialect::Sqlite => {
                self.write_grouped(RegistryRead {
                    name: name.to_owned(),
                    id: model_id,
                })
                .await
            }
            Dialect::Postgres => self.get_registry_now(name, model_id).await,
        }
    }

    async fn mark_pending(
        &self,
        name: &str,
        model_id: i64,
        now: DateTime<Utc>,
    ) -> Result<RegistryRecord, StoreError> {
        self.upsert_pending(name, model_id, now, None, None)
            .await?
            .ok_or_else(|| self.corrupt(format!("{name} {model_id}: the upsert returned no row")))
    }

    async fn mark_changed(
        &self,
        name: &str,
        model_id: i64,
        now: DateTime<Utc>,
        published_at: DateTime<Utc>,
    ) -> Result<RegistryRecord, StoreError> {
        self.upsert_pending(name, model_id, now, Some(published_at), None)
            .await?
            .ok_or_else(|| self.corrupt(format!("{name} {model_id}: the upsert returned no row")))
    }

    async fn mark_changed_unless_held(
        &self,
        name: &str,
        model_id: i64,
        now: DateTime<Utc>,
        published_at: DateTime<Utc>,
        generation: i64,
    ) -> Result<Option<RegistryRecord>, StoreError> {
        self.upsert_pending(name, model_id, now, Some(published_at), Some(generation))
            .await
    }

    async fn mark_changes(
        &self,
        name: &str,
        changes: &[NotedChange],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        match (self.dialect, changes) {
            (_, []) => Ok(0),
            (Dialect::Sqlite, _) => self.mark_changes_sqlite(name, changes, now).await,
            (Dialect::Postgres, _) => {
                self.retrying_deadlocks(|| self.mark_changes_postgres(name, changes, now))
                    .await
            }
        }
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
            let mut w = self.writer().await?;
            inserted += query
                .execute(&mut *w)
                .await
                .map_err(self.backend("insert pending registry rows"))?
                .rows_affected();
        }
        Ok(inserted)
    }

    async fn update(&self, name: &str, row: &RegistryRecord) -> Result<bool, StoreError> {
        match self.dialect {
            // One writer: updates arriving while one is written share the next statement.
            Dialect::Sqlite => {
                self.write_grouped(RegistryWrite {
                    name: name.to_owned(),
                    row: row.clone(),
                })
                .await
            }
            Dialect::Postgres => self.update_registry_now(name, row).await,
        }
    }

    async fn claim_for_sync(
        &self,
        name: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<RegistryRecord>, StoreError> {
        self.claim_due_for_sync(name, now, &[], limit).await
    }

    async fn claim_for_sync_while_enabled(
        &self,
        name: &str,
        switches: &[&str],
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<RegistryRecord>, StoreError> {
        self.claim_due_for_sync(name, now, switches, limit).await
    }

    async fn claim_for_verification(
        &self,
        name: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<RegistryRecord>, StoreError> {
        // Due-ness and the times set are on the database's clock.
        let _ = now;
        let t = self.tables(name).await?;
        let n = &t.name;
        let sql = format!(
            "WITH due AS (SELECT {n}_id FROM {n}_registry{} \
               WHERE state = 2 AND verification_state IN (0, 3) AND (verification_state = 0 \
                 OR verification_retry_at IS NULL OR verification_retry_at <= {now}) \
               ORDER BY {VERIFICATION_ORDER}, {n}_id LIMIT $1 + 0{}) \
             UPDATE {n}_registry SET verification_state = 1, verification_started_at = {now}, \
               heartbeat_at = {now}, version = version + 1 \
             WHERE {n}_id IN (SELECT {n}_id FROM due) RETURNING {}",
            self.dialect
                .indexed_by(&format!("{n}_registry_verification_order")),
            self.dialect.skip_locked(),
            t.registry_columns,
            now = self.dialect.now_micros(),
        );
        let mut w = self.writer().await?;
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *w)
            .await
            .map_err(self.backend("claim registry rows for verification"))?;
        let mut claimed = self.read_registries(&rows)?;
        claimed.sort_by_key(|r| (r.verification.verified_at, r.model_id));
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
             OR {VERIFICATION_STUCK} LIMIT $3 + 0",
            t.registry_columns, t.name
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(micros(cutoffs.verification_started_before))
            .bind(micros(cutoffs.heartbeat_before))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(micros(cutoffs.sync_started_before))
            .fetch_all(&mut *self.reader().await?)
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
        let _ = now;
        let t = self.tables(name).await?;
        let n = &t.name;
        let sql = format!(
            "UPDATE {n}_registry SET heartbeat_at = {} WHERE {n}_id = $1 AND \
             (version = $2 OR (state = 1 AND change_pending = 1 AND version > $2))",
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
        self.delete_row("registry", name, model_id).await
    }

    async fn ids(
        &self,
        name: &str,
        range: Range<i64>,
        limit: usize,
    ) -> Result<Vec<i64>, StoreError> {
        let Some(t) = self.existing_tables(name).await? else {
            return Ok(Vec::new());
        };
        self.ids_of(&format!("{}_registry", t.name), &t.name, range, limit)
            .await
    }

    async fn counts(&self, name: &str) -> Result<RegistryCounts, StoreError> {
        let Some(t) = self.existing_tables(name).await? else {
            return Ok(RegistryCounts::default());
        };
        // Kept by triggers as the rows change (`counts.rs`): a few rows to sum, whatever the
        // registry's size.
        let row = self.counters(&t).await?;
        let c = |column: &str| self.counter(&row, column);
        Ok(RegistryCounts {
            registry: c("registry_rows")?,
            pending: c("registry_pending")?,
            started: c("registry_started")?,
            synced: c("registry_synced")?,
            failed: c("registry_failed")?,
            verification_total: c("registry_verification_total")?,
            verified: c("registry_verified")?,
            verification_failed: c("registry_verification_failed")?,
            checksum_mismatch: c("registry_checksum_mismatch")?,
        })
    }

    async fn now(&self, local_now: DateTime<Utc>) -> Result<DateTime<Utc>, StoreError> {
        let _ = local_now;
        self.database_now().await
    }

    async fn list(
        &self,
        name: &str,
        filter: RegistryFilter,
        after_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<RegistryRecord>, StoreError> {
        let Some(t) = self.existing_tables(name).await? else {
            return Ok(Vec::new());
        };
        let n = &t.name;
        let mut conditions = vec![format!("{n}_id > $1")];
        if filter.state.is_some() {
            conditions.push(format!("state = ${}", conditions.len() + 1));
        }
        if filter.verification.is_some() {
            conditions.push(format!("verification_state = ${}", conditions.len() + 1));
        }
        let sql = format!(
            "SELECT {} FROM {n}_registry WHERE {} ORDER BY {n}_id LIMIT ${} + 0",
            t.registry_columns,
            conditions.join(" AND "),
            conditions.len() + 1
        );
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(after_id.unwrap_or(i64::MIN));
        if let Some(state) = filter.state {
            query = query.bind(state.value());
        }
        if let Some(verification) = filter.verification {
            query = query.bind(verification.value());
        }
        let rows = query
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *self.reader().await?)
            .await
            .map_err(self.backend("list registry rows"))?;
        self.read_registries(&rows)
    }

    async fn resync_many(&self, name: &str, model_ids: &[i64]) -> Result<u64, StoreError> {
        let Some(t) = self.existing_tables(name).await? else {
            return Ok(0);
        };
        let n = &t.name;
        let assignments = pending_assignments(&format!("{n}_registry"), self.dialect.now_micros());
        self.update_ids(model_ids, "resync registry rows", |list| {
            format!("UPDATE {n}_registry SET {assignments} WHERE {n}_id IN ({list})")
        })
        .await
    }

    async fn reverify_many(&self, name: &str, model_ids: &[i64]) -> Result<u64, StoreError> {
        let Some(t) = self.existing_tables(name).await? else {
            return Ok(0);
        };
        let n = &t.name;
        self.update_ids(model_ids, "reverify registry rows", |list| {
            format!(
                "UPDATE {n}_registry SET verification_state = 0, verification_retry_at = NULL, \
                 verification_started_at = NULL, version = version + 1 \
                 WHERE {n}_id IN ({list}) AND state = 2 AND verification_state NOT IN (0, 1, 4)"
            )
        })
        .await
    }

    async fn queue_depth(&self, name: &str, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let _ = now;
        let Some(t) = self.existing_tables(name).await? else {
            return Ok(0);
        };
        // Pending rows from the kept counts; failed rows whose retry is due through the index
        // of failed rows (`<name>_registry_failures`): failed rows are few, and their due-ness
        // depends on the time, which no count kept in advance can know.
        let n = &t.name;
        let sql = format!(
            "SELECT (SELECT CAST(COALESCE(SUM(registry_pending), 0) AS BIGINT) FROM {n}_counts) \
               AS pending, \
             (SELECT COUNT(*) FROM {n}_registry \
               WHERE state = 3 AND (retry_at IS NULL OR retry_at <= {})) AS due",
            self.dialect.now_micros()
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .fetch_one(&mut *self.reader().await?)
            .await
            .map_err(self.backend("count the sync queue"))?;
        Ok(self.counter(&row, "pending")? + self.counter(&row, "due")?)
    }

    async fn create_tables(&self, name: &str) -> Result<(), StoreError> {
        self.create_replicable_tables(name).await
    }

    async fn reverify_older_than(
        &self,
        name: &str,
        verified_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let t = self.tables(name).await?;
        let table = format!("{}_registry", t.name);
        self.reverify(&table, &t.name, " AND state = 2", verified_before, limit)
            .await
    }

    async fn waiting_for_primary_checksum(
        &self,
        name: &str,
        range: Range<i64>,
        limit: usize,
    ) -> Result<Vec<i64>, StoreError> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let t = self.tables(name).await?;
        let n = &t.name;
        let sql = format!(
            "SELECT {n}_id AS id FROM {n}_registry WHERE state = 2 AND verification_state = 4 \
             AND {n}_id >= $1 AND {n}_id < $2 ORDER BY {n}_id LIMIT $3 + 0"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(range.start)
            .bind(range.end)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *self.reader().await?)
            .await
            .map_err(self.backend("list copies waiting for the primary's checksum"))?;
        rows.iter().map(|row| self.get(row, "id")).collect()
    }

    async fn enable_verification(&self, name: &str, model_ids: &[i64]) -> Result<u64, StoreError> {
        let t = self.tables(name).await?;
        let n = &t.name;
        self.update_ids(model_ids, "enable verification", |list| {
            format!(
                "UPDATE {n}_registry SET verification_state = 0, version = version + 1 \
                 WHERE {n}_id IN ({list}) AND state = 2 AND verification_state = 4"
            )
        })
        .await
    }

    async fn reverify(&self, name: &str, model_ids: &[i64]) -> Result<u64, StoreError> {
        let t = self.tables(name).await?;
        let n = &t.name;
        self.update_ids(model_ids, "reverify", |list| {
            format!(
                "UPDATE {n}_registry SET verification_state = 0, verification_retry_at = NULL, \
                 verification_started_at = NULL, version = version + 1 \
                 WHERE {n}_id IN ({list}) AND state = 2 AND verification_state IN (2, 4)"
            )
        })
        .await
    }

    async fn set_replication_enabled(&self, name: &str, enabled: bool) -> Result<(), StoreError> {
        let mut w = self.writer().await?;
        sqlx::query(
            "INSERT INTO replicable_settings (replicable_name, replication_enabled) \
             VALUES ($1, $2) ON CONFLICT (replicable_name) \
             DO UPDATE SET replication_enabled = excluded.replication_enabled",
        )
        .bind(name.to_owned())
        .bind(i16::from(enabled))
        .execute(&mut *w)
        .await
        .map_err(self.backend("switch replication"))?;
        Ok(())
    }

    async fn replication_enabled(&self, name: &str) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT replication_enabled FROM replicable_settings WHERE replicable_name = $1",
        )
        .bind(name.to_owned())
        .fetch_optional(&mut *self.reader().await?)
        .await
        .map_err(self.backend("read the replication switch"))?;
        Ok(row
            .map(|row| self.get::<i16>(&row, "replication_enabled"))
            .transpose()?
            .is_none_or(|v| v != 0))
    }

    async fn replication_enabled_all(&self, names: &[&str]) -> Result<bool, StoreError> {
        if names.is_empty() {
            return Ok(true);
        }
        let params = (1..=names.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT COUNT(*) AS off FROM replicable_settings \
             WHERE replication_enabled = 0 AND replicable_name IN ({params})"
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for name in names {
            query = query.bind((*name).to_owned());
        }
        let row = query
            .fetch_one(&mut *self.reader().await?)
            .await
            .map_err(self.backend("read the replication switches"))?;
        Ok(self.get::<i64>(&row, "off")? == 0)
    }

    async fn cursor(&self) -> Result<EventId, StoreError> {
        let row = sqlx::query("SELECT last_event_id FROM replicable_cursor WHERE id = 1")
            .fetch_optional(&mut *self.reader().await?)
            .await
            .map_err(self.backend("read cursor"))?;
        Ok(row
            .map(|row| self.get::<i64>(&row, "last_event_id"))
            .transpose()?
            .unwrap_or(0))
    }

    async fn save_cursor(&self, event_id: EventId) -> Result<(), StoreError> {
        let mut w = self.writer().await?;
        sqlx::query(
            "INSERT INTO replicable_cursor (id, last_event_id) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET last_event_id = excluded.last_event_id",
        )
        .bind(event_id)
        .execute(&mut *w)
        .await
        .map_err(self.backend("save cursor"))?;
        Ok(())
    }

    async fn cursor_gaps(&self) -> Result<Vec<CursorGap>, StoreError> {
        let row = sqlx::query("SELECT gaps FROM replicable_cursor WHERE id = 1")
            .fetch_optional(&mut *self.reader().await?)
            .await
            .map_err(self.backend("read cursor gaps"))?;
        let text = row
            .map(|row| self.get::<Option<String>>(&row, "gaps"))
            .transpose()?
            .flatten();
        self.parse_gaps(text)
    }

    async fn cursor_state(&self) -> Result<(EventId, Vec<CursorGap>), StoreError> {
        let row = sqlx::query("SELECT last_event_id, gaps FROM replicable_cursor WHERE id = 1")
            .fetch_optional(&mut *self.reader().await?)
            .await
            .map_err(self.backend("read cursor"))?;
        let Some(row) = row else {
            return Ok((0, Vec::new()));
        };
        let position = self.get::<i64>(&row, "last_event_id")?;
        let gaps = self.parse_gaps(self.get::<Option<String>>(&row, "gaps")?)?;
        Ok((position, gaps))
    }

    async fn save_cursor_and_gaps_holding(
        &self,
        event_id: EventId,
        gaps: &[CursorGap],
        lease: &str,
        holder: &str,
        now: DateTime<Utc>,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let _ = (now, ttl);
        let text = self.gaps_text(gaps)?;
        // The lease is checked by the statement itself, on the database's clock, and no other
        // cursor can take it between the check and the write: SQLite has one writer at a time,
        // and on PostgreSQL the lease's row is locked while it is read (a cursor taking the
        // lease meanwhile waits, or, having committed first, is seen).
        let lock = match self.dialect {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        };
        let sql = format!(
            "INSERT INTO replicable_cursor (id, last_event_id, gaps) \
             SELECT 1, $1, $2 WHERE NOT EXISTS (SELECT 1 FROM \
               (SELECT holder, expires_at FROM replicable_leases WHERE name = $3{lock}) AS lease \
               WHERE lease.holder <> $4 AND lease.expires_at > {}) \
             ON CONFLICT (id) DO UPDATE SET last_event_id = excluded.last_event_id, \
             gaps = excluded.gaps",
            self.dialect.now_micros()
        );
        let mut w = self.writer().await?;
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(event_id)
            .bind(text)
            .bind(lease.to_owned())
            .bind(holder.to_owned())
            .execute(&mut *w)
            .await
            .map_err(self.backend("save cursor"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn save_cursor_and_gaps(
        &self,
        event_id: EventId,
        gaps: &[CursorGap],
    ) -> Result<(), StoreError> {
        let text = self.gaps_text(gaps)?;
        let mut w = self.writer().await?;
        sqlx::query(
            "INSERT INTO replicable_cursor (id, last_event_id, gaps) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET last_event_id = excluded.last_event_id, \
             gaps = excluded.gaps",
        )
        .bind(event_id)
        .bind(text)
        .execute(&mut *w)
        .await
        .map_err(self.backend("save cursor"))?;
        Ok(())
    }

    async fn put_secondary_status(
        &self,
        status: &crate::storage::SecondaryStatusRow,
    ) -> Result<(), StoreError> {
        let mut w = self.writer().await?;
        sqlx::query(
            "INSERT INTO replicable_secondary_status (secondary, cursor, report, received_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (secondary) DO UPDATE SET \
             cursor = excluded.cursor, report = excluded.report, \
             received_at = excluded.received_at",
        )
        .bind(&status.secondary)
        .bind(status.cursor)
        .bind(status.report.to_string())
        .bind(super::micros(status.received_at))
        .execute(&mut *w)
        .await
        .map_err(self.backend("store a secondary's status"))?;
        Ok(())
    }

    async fn secondary_statuses(
        &self,
    ) -> Result<Vec<crate::storage::SecondaryStatusRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT secondary, cursor, report, received_at FROM replicable_secondary_status \
             ORDER BY secondary",
        )
        .fetch_all(&mut *self.reader().await?)
        .await
        .map_err(self.backend("read the secondaries' status"))?;
        rows.iter()
            .map(|row| {
                let report: String = self.get(row, "report")?;
                Ok(crate::storage::SecondaryStatusRow {
                    secondary: self.get(row, "secondary")?,
                    cursor: self.get(row, "cursor")?,
                    report: serde_json::from_str(&report)
                        .map_err(|e| self.corrupt(format!("a secondary's status report: {e}")))?,
                    received_at: self.time(self.get(row, "received_at")?)?,
                })
            })
            .collect()
    }

    async fn acquire_lease(
        &self,
        lease: &str,
        holder: &str,
        now: DateTime<Utc>,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        // Expiry on the database's clock: a holder whose clock runs ahead cannot take a live
        // lease.
        let _ = now;
        let ttl = i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX / 2);
        let sql = format!(
            "INSERT INTO replicable_leases (name, holder, expires_at) VALUES ($1, $2, {now} + $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
             expires_at = excluded.expires_at \
             WHERE replicable_leases.holder = excluded.holder \
               OR replicable_leases.expires_at <= {now}",
            now = self.dialect.now_micros()
        );
        let mut w = self.writer().await?;
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(lease.to_owned())
            .bind(holder.to_owned())
            .bind(ttl)
            .execute(&mut *w)
            .await
            .map_err(self.backend("acquire lease"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_lease(&self, lease: &str, holder: &str) -> Result<(), StoreError> {
        let mut w = self.writer().await?;
        sqlx::query("DELETE FROM replicable_leases WHERE name = $1 AND holder = $2")
            .bind(lease.to_owned())
            .bind(holder.to_owned())
            .execute(&mut *w)
            .await
            .map_err(self.backend("release lease"))?;
        Ok(())
    }

    async fn record_skipped_event(&self, event: &SkippedEvent) -> Result<(), StoreError> {
        let mut w = self.writer().await?;
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
        .execute(&mut *w)
        .await
        .map_err(self.backend("record skipped event"))?;
        Ok(())
    }

    async fn skipped_events(&self, limit: usize) -> Result<Vec<SkippedEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT event_id, replicable_name, event_name, reason, skipped_at \
             FROM replicable_skipped_events ORDER BY event_id LIMIT $1 + 0",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *self.reader().await?)
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

impl SqlStore {
    /// The stored form of the cursor's gaps (`None`: no gaps).
    fn gaps_text(&self, gaps: &[CursorGap]) -> Result<Option<String>, StoreError> {
        // `[[first, last, noticed_at_micros], ...]`: compact, and no date format to agree on.
        let triples: Vec<(EventId, EventId, i64)> = gaps
            .iter()
            .map(|g| (g.first, g.last, super::micros(g.noticed_at)))
            .collect();
        (!triples.is_empty())
            .then(|| serde_json::to_string(&triples))
            .transpose()
            .map_err(|e| StoreError::Backend {
                store: self.url.clone(),
                operation: "save cursor",
                reason: e.to_string(),
            })
    }

    /// The cursor's gaps from their stored form.
    fn parse_gaps(&self, text: Option<String>) -> Result<Vec<CursorGap>, StoreError> {
        let Some(text) = text else {
            return Ok(Vec::new());
        };
        let triples: Vec<(EventId, EventId, i64)> =
            serde_json::from_str(&text).map_err(|e| StoreError::Backend {
                store: self.url.clone(),
                operation: "read cursor gaps",
                reason: format!("the stored gaps do not parse: {e}"),
            })?;
        Ok(triples
            .into_iter()
            .map(|(first, last, at)| CursorGap {
                first,
                last,
                noticed_at: DateTime::from_timestamp_micros(at).unwrap_or_default(),
            })
            .collect())
    }
}
