//! The event log on SQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row};

use super::{APPEND_LOCK, Dialect, SqlStore, micros};
use crate::error::StoreError;
use crate::event::{EventId, NewEvent, StoredEvent};
use crate::storage::EventLog;

/// Rows per multi-row insert (4 parameters each stays far under every engine's limit).
const APPEND_CHUNK: usize = 500;

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
        let err = self.backend("append events");
        let mut tx = match self.dialect {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Dialect::Postgres => self.pool.begin().await,
        }
        .map_err(&err)?;
        if self.dialect == Dialect::Postgres {
            // Held until commit: the next append takes its ids only after this one is visible.
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(APPEND_LOCK)
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
        }
        let at = micros(now);
        let mut ids = Vec::with_capacity(events.len());
        for chunk in events.chunks(APPEND_CHUNK) {
            let mut sql = String::from(
                "INSERT INTO replicable_events (replicable_name, event_name, payload, created_at) VALUES ",
            );
            for i in 0..chunk.len() {
                let p = i * 4;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("(${}, ${}, ${}, ${})", p + 1, p + 2, p + 3, p + 4));
            }
            sql.push_str(" RETURNING id");
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for event in chunk {
                query = query
                    .bind(event.replicable_name.clone())
                    .bind(event.kind.name())
                    .bind(event.payload_json().to_string())
                    .bind(at);
            }
            let rows = query.fetch_all(&mut *tx).await.map_err(&err)?;
            let mut chunk_ids = rows
                .iter()
                .map(|row| self.get::<i64>(row, "id"))
                .collect::<Result<Vec<_>, _>>()?;
            // Ids are assigned in VALUES order; RETURNING's order is not promised.
            chunk_ids.sort_unstable();
            ids.extend(chunk_ids);
        }
        tx.commit().await.map_err(&err)?;
        Ok(ids)
    }

    async fn read_after(
        &self,
        after: EventId,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, replicable_name, event_name, payload, created_at FROM replicable_events \
             WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(self.backend("read events"))?;
        rows.iter()
            .map(|row| {
                let id: i64 = self.get(row, "id")?;
                let payload: String = self.get(row, "payload")?;
                Ok(StoredEvent {
                    id,
                    replicable_name: self.get(row, "replicable_name")?,
                    event_name: self.get(row, "event_name")?,
                    // A payload that is not JSON at all is kept as a string, so the cursor
                    // reports and skips it instead of failing the whole batch.
                    payload: serde_json::from_str(&payload)
                        .unwrap_or(serde_json::Value::String(payload)),
                    created_at: self.time(self.get(row, "created_at")?)?,
                })
            })
            .collect()
    }

    async fn last_event_id(&self) -> Result<Option<EventId>, StoreError> {
        let row = sqlx::query("SELECT id FROM replicable_events ORDER BY id DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(self.backend("read the last event id"))?;
        row.map(|row| row.try_get::<i64, _>("id"))
            .transpose()
            .map_err(|e| self.corrupt(e.to_string()))
    }
}
