//! The event log on SQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::batch::{
    append_on, append_rows_sql, batch_names, batch_segments, bump_generations_batch_sql,
    delete_batch_sql, event_rows, event_runs, id_rows, publish_batch_on, record_rows, table_of,
    upsert_records_batch_sql, verification_pending_batch_sql,
};
use super::group_commit::statement_rounds;
use super::verification::{
    bind_verification, verification_assignments, verification_assignments_from_json,
    verification_json,
};
use super::{Dialect, SqlStore, Tables, micros};
use crate::domain::error::StoreError;
use crate::domain::event::{DamagedEvent, EventId, EventKind, LogEntry, NewEvent, StoredEvent};
use crate::storage::{CompletedVerification, EventLog, Publication, Published};

/// PostgreSQL batches at least this large go through `COPY`; smaller ones through `INSERT`
/// (a `COPY` has a fixed cost that a handful of rows does not repay).
#[cfg(feature = "postgres")]
const COPY_FROM: usize = 32;

/// The writes of a [`Publication`] on one connection inside a transaction the caller commits:
/// the store's own (`EventLog::publish`) or the application's (`publish_*_event_in`). `$p` is
/// the prefix that qualifies the framework's tables (`"schema."`, or empty where the search
/// path finds them). Evaluates to `Result<Published, StoreError>`.
macro_rules! publish_on {
    ($store:expr, $conn:expr, $p:expr, $t:expr, $publication:expr, $now:expr) => {{
        async {
            let store: &SqlStore = $store;
            let p: &str = $p;
            let t: &Tables = $t;
            let publication: &Publication = $publication;
            let mut event = publication.event.clone();
            let id = event.payload.model_id;
            let err = store.backend("publish");
            let mut generation = None;
            match event.kind {
                EventKind::Created | EventKind::Updated => {
                    let g: i64 = if publication.in_catalogue {
                        let body = event
                            .payload
                            .record
                            .as_ref()
                            .unwrap_or(&serde_json::Value::Null)
                            .to_string();
                        sqlx::query_scalar(AssertSqlSafe(upsert_record_sql(p, &t.name)))
                            .bind(id)
                            .bind(body)
                            .fetch_one($conn)
                            .await
                            .map_err(&err)?
                    } else {
                        sqlx::query_scalar(AssertSqlSafe(bump_generation_sql(p, &t.name)))
                            .bind(id)
                            .fetch_one($conn)
                            .await
                            .map_err(&err)?
                    };
                    event.payload.generation = Some(g);
                    generation = Some(g);
                    if publication.verifiable {
                        let keep = event.kind == EventKind::Created && !publication.mutable;
                        sqlx::query(AssertSqlSafe(verification_pending_sql(p, t)))
                            .bind(id)
                            .bind(i16::from(keep))
                            .execute($conn)
                            .await
                            .map_err(&err)?;
                    }
                }
                EventKind::Deleted => {
                    // The generation of a row in the application's table is kept: a re-used id
                    // goes on counting from it.
                    let kinds: &[&str] = if publication.in_catalogue {
                        &["records", "verification"]
                    } else {
                        &["verification"]
                    };
                    for kind in kinds {
                        let n = &t.name;
                        let sql = format!("DELETE FROM {p}{n}_{kind} WHERE {n}_id = $1");
                        sqlx::query(AssertSqlSafe(sql))
                            .bind(id)
                            .execute($conn)
                            .await
                            .map_err(&err)?;
                    }
                }
                EventKind::ChecksumSucceeded => {}
            }
            let payload =
                serde_json::to_string(&event.payload).map_err(|e| serialize_error(store, e))?;
            let sql = format!(
                "INSERT INTO {p}replicable_events (replicable_name, event_name, payload, \
                 created_at) VALUES ($1, $2, $3, $4) RETURNING id"
            );
            let event_id: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
                .bind(event.replicable_name.clone())
                .bind(event.kind.name())
                .bind(payload)
                .bind(micros($now))
                .fetch_one($conn)
                .await
                .map_err(&err)?;
            Ok::<_, StoreError>(Published {
                event_id,
                generation,
            })
        }
        .await
    }};
}
pub(super) use publish_on;

#[async_trait]
impl EventLog for SqlStore {
    async fn append(
        &self,
        events: &[NewEvent],
        now: DateTime<Utc>,
    ) -> Result<Vec<EventId>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let appended = match self.dialect {
            Dialect::Sqlite => self.append_sqlite(events, now).await,
            #[cfg(feature = "postgres")]
            Dialect::Postgres => match &self.copy_pool {
                Some(pool) if events.len() >= COPY_FROM => {
                    self.append_by_copy(pool, events, now).await
                }
                _ => self.append_by_insert(events, now).await,
            },
            #[cfg(not(feature = "postgres"))]
            Dialect::Postgres => self.append_by_insert(events, now).await,
        };
        self.announce_appended(appended)
    }

    async fn read_after(&self, after: EventId, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        let d = self.dialect;
        let sql = format!(
            "SELECT id, {}, {}, {}, created_at FROM replicable_events \
             WHERE id > $1 ORDER BY id LIMIT $2 + 0",
            d.raw_text("replicable_name"),
            d.raw_text("event_name"),
            d.raw_text("payload"),
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(after)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *self.reader().await?)
            .await
            .map_err(self.backend("read events"))?;
        rows.iter().map(|row| self.read_entry(row)).collect()
    }

    async fn last_event_id(&self) -> Result<Option<EventId>, StoreError> {
        let row = sqlx::query("SELECT id FROM replicable_events ORDER BY id DESC LIMIT 1")
            .fetch_optional(&mut *self.reader().await?)
            .await
            .map_err(self.backend("read the last event id"))?;
        row.map(|row| row.try_get::<i64, _>("id"))
            .transpose()
            .map_err(|e| self.corrupt(e.to_string()))
    }

    async fn delete_older_than(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let mut w = self.writer().await?;
        let done = sqlx::query(
            "DELETE FROM replicable_events WHERE id IN (SELECT id FROM replicable_events \
             WHERE created_at < $1 ORDER BY id LIMIT $2 + 0)",
        )
        .bind(super::micros(before))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .execute(&mut *w)
        .await
        .map_err(self.backend("delete old events"))?;
        Ok(done.rows_affected())
    }

    async fn delete_up_to(&self, up_to: EventId, limit: usize) -> Result<u64, StoreError> {
        let mut w = self.writer().await?;
        let done = sqlx::query(
            "DELETE FROM replicable_events WHERE id IN (SELECT id FROM replicable_events \
             WHERE id <= $1 ORDER BY id LIMIT $2 + 0)",
        )
        .bind(up_to)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .execute(&mut *w)
        .await
        .map_err(self.backend("delete consumed events"))?;
        Ok(done.rows_affected())
    }

    async fn publish(
        &self,
        publication: &Publication,
        now: DateTime<Utc>,
    ) -> Result<Option<Published>, StoreError> {
        let published = match self.dialect {
            // One writer, one sync per commit: concurrent publishes share commits.
            Dialect::Sqlite => {
                self.write_grouped(super::group_commit::PublishWrite {
                    publication: publication.clone(),
                    now,
                })
                .await
            }
            Dialect::Postgres => self.publish_now(publication, now).await,
        };
        self.announce_appended(published).map(Some)
    }

    async fn publish_batch(
        &self,
        publications: &[Publication],
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<Published>>, StoreError> {
        let published = self.publish_batch_now(publications, now).await;
        self.announce_appended(published).map(Some)
    }

    async fn complete_verifications(
        &self,
        name: &str,
        completed: &[CompletedVerification],
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<bool>>, StoreError> {
        self.retrying_deadlocks(|| self.complete_verifications_once(name, completed, now))
            .await
    }

    fn appends(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.appended.subscribe())
    }

    #[cfg(feature = "sql")]
    fn sql_store(&self) -> Option<&SqlStore> {
        Some(self)
    }
}

impl SqlStore {
    /// [`EventLog::complete_verifications`] in one transaction.
    async fn complete_verifications_once(
        &self,
        name: &str,
        completed: &[CompletedVerification],
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<bool>>, StoreError> {
        if completed.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let t = self.tables(name).await?;
        let n = &t.name;
        let err = self.backend("record verifications");
        // Only an append waits for the disk: rows that announce nothing commit as every
        // verification update does.
        let mut tx = if completed.iter().any(|c| c.event.is_some()) {
            self.begin_durable_write().await
        } else {
            self.begin_write().await
        }
        .map_err(&err)?;
        // The compare-and-set of `VerificationStore::update`, for each row.
        let mut written = vec![false; completed.len()];
        match self.dialect {
            // One statement per round (a row named twice goes to the next): the group's rows
            // as one JSON parameter.
            Dialect::Sqlite => {
                let sql = format!(
                    "UPDATE {n}_verification SET {}, version = version + 1 \
                     FROM json_each($1) AS j \
                     WHERE {n}_id = j.value ->> 0 AND version = j.value ->> 11 \
                     RETURNING {n}_id AS id",
                    verification_assignments_from_json(1)
                );
                for (_, round) in statement_rounds(completed, |c| (name, c.row.model_id)) {
                    let rows: Vec<(i64, serde_json::Value)> = round
                        .iter()
                        .map(|&i| {
                            let row = &completed[i].row;
                            let mut values = vec![serde_json::Value::from(row.model_id)];
                            values.extend(verification_json(&row.verification, row.heartbeat_at));
                            values.push(row.version.into());
                            (row.model_id, serde_json::Value::Array(values))
                        })
                        .collect();
                    let done = self
                        .write_json_rows(&mut tx, &sql, &rows, "record verifications")
                        .await?;
                    for (&i, done) in round.iter().zip(done) {
                        written[i] = done;
                    }
                }
            }
            Dialect::Postgres => {
                let sql = format!(
                    "UPDATE {n}_verification SET {}, version = version + 1 \
                     WHERE {n}_id = $11 AND version = $12",
                    verification_assignments(1)
                );
                // In id order, as batch publishes take their rows: two transactions locking
                // the same rows in opposite orders deadlock, and PostgreSQL aborts one of
                // them (it could be an application's publish re-marking these rows).
                let mut order: Vec<usize> = (0..completed.len()).collect();
                order.sort_by_key(|&i| completed[i].row.model_id);
                for i in order {
                    let c = &completed[i];
                    let done = bind_verification(
                        sqlx::query(AssertSqlSafe(sql.clone())),
                        &c.row.verification,
                        c.row.heartbeat_at,
                    )
                    .bind(c.row.model_id)
                    .bind(c.row.version)
                    .execute(&mut *tx)
                    .await
                    .map_err(&err)?;
                    written[i] = done.rows_affected() == 1;
                }
            }
        }
        let rows = completed
            .iter()
            .zip(&written)
            .filter(|(_, written)| **written)
            .filter_map(|(c, _)| c.event.as_ref())
            .map(|e| {
                let payload =
                    serde_json::to_string(&e.payload).map_err(|e| serialize_error(self, e))?;
                Ok((e.replicable_name.as_str(), e.kind.name(), payload))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        append_on!(self, &mut *tx, "", &rows, now)?;
        tx.commit().await.map_err(&err)?;
        if !rows.is_empty() {
            self.appended.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(Some(written))
    }

    /// Passes `outcome` on, first telling the waiters on [`EventLog::appends`] when it is an
    /// append that committed.
    fn announce_appended<T>(&self, outcome: Result<T, StoreError>) -> Result<T, StoreError> {
        if outcome.is_ok() {
            self.appended.send_modify(|n| *n = n.wrapping_add(1));
        }
        outcome
    }

    /// [`EventLog::publish`] in a transaction of its own (written again after a deadlock).
    pub(super) async fn publish_now(
        &self,
        publication: &Publication,
        now: DateTime<Utc>,
    ) -> Result<Published, StoreError> {
        self.retrying_deadlocks(|| self.publish_once(publication, now))
            .await
    }

    async fn publish_once(
        &self,
        publication: &Publication,
        now: DateTime<Utc>,
    ) -> Result<Published, StoreError> {
        let t = self.tables(&publication.event.replicable_name).await?;
        let err = self.backend("publish");
        let mut tx = self.begin_durable_write().await.map_err(&err)?;
        let published = publish_on!(self, &mut *tx, "", &t, publication, now)?;
        tx.commit().await.map_err(&err)?;
        Ok(published)
    }

    /// [`EventLog::publish_batch`] in a transaction of its own (written again after a
    /// deadlock).
    pub(super) async fn publish_batch_now(
        &self,
        publications: &[Publication],
        now: DateTime<Utc>,
    ) -> Result<Vec<Published>, StoreError> {
        self.retrying_deadlocks(|| self.publish_batch_once(publications, now))
            .await
    }

    async fn publish_batch_once(
        &self,
        publications: &[Publication],
        now: DateTime<Utc>,
    ) -> Result<Vec<Published>, StoreError> {
        if publications.is_empty() {
            return Ok(Vec::new());
        }
        let mut tables = Vec::new();
        for name in batch_names(publications) {
            tables.push(self.tables(name).await?);
        }
        let err = self.backend("publish a batch");
        let mut tx = self.begin_durable_write().await.map_err(&err)?;
        let published = publish_batch_on!(self, &mut *tx, "", &tables, publications, now)?;
        tx.commit().await.map_err(&err)?;
        Ok(published)
    }

    /// One row of the event log: an event, or a damaged entry naming what could not be read.
    /// Only an unreadable id fails (the row could not even be skipped).
    fn read_entry(&self, row: &AnyRow) -> Result<LogEntry, StoreError> {
        let id: i64 = self.get(row, "id")?;
        let mut problems = Vec::new();
        let mut text = |column: &str| -> Option<String> {
            let value = row
                .try_get::<Option<Vec<u8>>, _>(column)
                .map(|bytes| bytes.map(String::from_utf8))
                .or_else(|_| row.try_get::<Option<String>, _>(column).map(|t| t.map(Ok)));
            match value {
                Ok(Some(Ok(text))) => Some(text),
                Ok(Some(Err(e))) => {
                    problems.push(format!("column `{column}` is not UTF-8 text: {e}"));
                    Some(String::from_utf8_lossy(e.as_bytes()).into_owned())
                }
                Ok(None) => {
                    problems.push(format!("column `{column}` is NULL"));
                    None
                }
                Err(e) => {
                    problems.push(format!("column `{column}`: {e}"));
                    None
                }
            }
        };
        let replicable_name = text("replicable_name");
        let event_name = text("event_name");
        let payload = text("payload");
        let created_at = match row.try_get::<Option<i64>, _>("created_at") {
            Ok(Some(v)) => DateTime::from_timestamp_micros(v).or_else(|| {
                problems.push(format!(
                    "column `created_at`: timestamp {v} is out of range"
                ));
                None
            }),
            Ok(None) => {
                problems.push("column `created_at` is NULL".into());
                None
            }
            Err(e) => {
                problems.push(format!("column `created_at`: {e}"));
                None
            }
        };
        match (replicable_name, event_name, payload, created_at) {
            (Some(replicable_name), Some(event_name), Some(payload), Some(created_at))
                if problems.is_empty() =>
            {
                Ok(LogEntry::Event(StoredEvent {
                    id,
                    replicable_name,
                    event_name,
                    // A payload that is not JSON at all is kept as a string, so the cursor
                    // reports and skips it instead of failing the whole batch.
                    payload: serde_json::from_str(&payload)
                        .unwrap_or(serde_json::Value::String(payload)),
                    created_at,
                }))
            }
            (replicable_name, event_name, ..) => Ok(LogEntry::Damaged(DamagedEvent {
                id,
                replicable_name,
                event_name,
                reason: problems.join("; "),
            })),
        }
    }
}

/// Inserts or replaces a record in the catalogue, bumping its generation (`$1` id, `$2`
/// body); returns `generation`.
/// `p` qualifies the table (see [`publish_on`]).
pub(super) fn upsert_record_sql(p: &str, n: &str) -> String {
    format!(
        "INSERT INTO {p}{n}_records AS r ({n}_id, generation, body) VALUES ($1, 1, $2) \
         ON CONFLICT ({n}_id) DO UPDATE SET generation = r.generation + 1, \
         body = excluded.body RETURNING generation"
    )
}

/// Bumps the generation of a row in an application's own table (`$1` id): 1 for a row never
/// published (whose implicit generation is 0), else one more; returns `generation`.
pub(super) fn bump_generation_sql(p: &str, n: &str) -> String {
    format!(
        "INSERT INTO {p}{n}_generations AS g ({n}_id, generation) VALUES ($1, 1) \
         ON CONFLICT ({n}_id) DO UPDATE SET generation = g.generation + 1 \
         RETURNING generation"
    )
}

/// Creates a pending verification row or puts an existing one back to pending (`$1` id), as
/// [`Verification::mark_pending`](crate::domain::verification::Verification::mark_pending) does; with
/// `$2 = 1` a row whose checksum succeeded is kept as it is (and nothing is returned). A failed
/// verification keeps its retry count (its backoff) and failure text until it succeeds.
pub(super) fn verification_pending_sql(p: &str, t: &Tables) -> String {
    let n = &t.name;
    format!(
        "INSERT INTO {p}{n}_verification AS v ({n}_id, verification_state) VALUES ($1, 0) \
         ON CONFLICT ({n}_id) DO UPDATE SET verification_state = 0, \
         verification_retry_at = NULL, verification_started_at = NULL, \
         version = v.version + 1 \
         WHERE NOT ($2 = 1 AND v.verification_state = 2) RETURNING {}",
        t.verification_columns
    )
}

/// One CSV field, always quoted, with quotes doubled.
#[cfg(feature = "postgres")]
fn csv_field(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(feature = "postgres")]
impl SqlStore {
    /// PostgreSQL appends: `COPY` in CSV. `COPY` returns no ids, so they are drawn from the
    /// events' sequence first (ascending, in the order of the events) and sent with the rows.
    /// No lock: concurrent appends may commit out of id order, and the log cursor tracks the
    /// gaps (see `log_cursor::LogCursor`).
    async fn append_by_copy(
        &self,
        pool: &sqlx::PgPool,
        events: &[NewEvent],
        now: DateTime<Utc>,
    ) -> Result<Vec<EventId>, StoreError> {
        let err = self.backend("append events");
        let at = micros(now).to_string();
        let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
        let mut tx = pool.begin().await.map_err(&err)?;
        let mut ids: Vec<i64> = sqlx::query_scalar(
            "SELECT nextval(pg_get_serial_sequence('replicable_events', 'id')) \
             FROM generate_series(1, $1)",
        )
        .bind(count)
        .fetch_all(&mut *tx)
        .await
        .map_err(&err)?;
        ids.sort_unstable();
        if ids.len() != events.len() {
            return Err(StoreError::Backend {
                store: self.url.clone(),
                operation: "append events",
                reason: format!("{} ids drawn for {} events", ids.len(), events.len()),
            });
        }
        let mut csv = String::with_capacity(events.len() * 256);
        for (event, id) in events.iter().zip(&ids) {
            let payload =
                serde_json::to_string(&event.payload).map_err(|e| serialize_error(self, e))?;
            csv.push_str(&id.to_string());
            csv.push(',');
            csv_field(&mut csv, &event.replicable_name);
            csv.push(',');
            csv_field(&mut csv, event.kind.name());
            csv.push(',');
            csv_field(&mut csv, &payload);
            csv.push(',');
            csv.push_str(&at);
            csv.push('\n');
        }
        let mut copy = tx
            .copy_in_raw(
                "COPY replicable_events (id, replicable_name, event_name, payload, created_at) \
                 FROM STDIN (FORMAT csv)",
            )
            .await
            .map_err(&err)?;
        copy.send(csv.as_bytes()).await.map_err(&err)?;
        let stored = copy.finish().await.map_err(&err)?;
        if usize::try_from(stored).ok() != Some(events.len()) {
            return Err(StoreError::Backend {
                store: self.url.clone(),
                operation: "append events",
                reason: format!("{} events sent, {stored} stored", events.len()),
            });
        }
        tx.commit().await.map_err(&err)?;
        Ok(ids)
    }
}

pub(super) fn serialize_error(store: &SqlStore, e: serde_json::Error) -> StoreError {
    StoreError::Backend {
        store: store.url.clone(),
        operation: "append events",
        reason: format!("an event does not serialize: {e}"),
    }
}

impl SqlStore {
    /// SQLite appends: each chunk travels as one JSON parameter that the engine expands into
    /// rows (binding four parameters per event costs more than the insert).
    async fn append_sqlite(
        &self,
        events: &[NewEvent],
        now: DateTime<Utc>,
    ) -> Result<Vec<EventId>, StoreError> {
        let err = self.backend("append events");
        // Payloads go in as JSON strings: extracting a string is cheaper for the engine than
        // re-serializing an object.
        let rows = events
            .iter()
            .map(|e| {
                let payload =
                    serde_json::to_string(&e.payload).map_err(|e| serialize_error(self, e))?;
                Ok((e.replicable_name.as_str(), e.kind.name(), payload))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let mut tx = self.begin_durable_write().await.map_err(&err)?;
        let ids = append_on!(self, &mut *tx, "", &rows, now)?;
        tx.commit().await.map_err(&err)?;
        Ok(ids)
    }

    /// PostgreSQL appends of a few events: one multi-row `INSERT ... RETURNING id`. No lock:
    /// concurrent appends may commit out of id order, and the log cursor tracks the gaps.
    async fn append_by_insert(
        &self,
        events: &[NewEvent],
        now: DateTime<Utc>,
    ) -> Result<Vec<EventId>, StoreError> {
        let err = self.backend("append events");
        let mut tx = self.begin_durable_write().await.map_err(&err)?;
        let at = micros(now);
        let mut ids = Vec::with_capacity(events.len());
        // 4 parameters per row; 1,000 rows stay far below the protocol's limit.
        for chunk in events.chunks(1_000) {
            let values = (0..chunk.len())
                .map(|i| {
                    format!(
                        "(${}, ${}, ${}, ${})",
                        4 * i + 1,
                        4 * i + 2,
                        4 * i + 3,
                        4 * i + 4
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO replicable_events (replicable_name, event_name, payload, created_at) \
                 VALUES {values} RETURNING id"
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for event in chunk {
                let payload =
                    serde_json::to_string(&event.payload).map_err(|e| serialize_error(self, e))?;
                query = query
                    .bind(event.replicable_name.clone())
                    .bind(event.kind.name())
                    .bind(payload)
                    .bind(at);
            }
            let rows = query.fetch_all(&mut *tx).await.map_err(&err)?;
            let mut chunk_ids = rows
                .iter()
                .map(|row| self.get::<i64>(row, "id"))
                .collect::<Result<Vec<_>, _>>()?;
            // Ids are drawn in VALUES order; RETURNING's order is not promised.
            chunk_ids.sort_unstable();
            ids.extend(chunk_ids);
        }
        tx.commit().await.map_err(&err)?;
        Ok(ids)
    }
}
