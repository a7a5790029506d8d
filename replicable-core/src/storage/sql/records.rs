//! The record store on SQL.

use std::ops::Range;

use async_trait::async_trait;
use sqlx::AssertSqlSafe;

use super::event_log::upsert_record_sql;
use super::group_commit::{GroupStatement, RecordWrite, statement_rounds};
use super::{Dialect, SqlStore};
use crate::domain::error::StoreError;
use crate::storage::{RecordStore, StoredRecord};

#[async_trait]
impl RecordStore for SqlStore {
    async fn upsert(
        &self,
        name: &str,
        model_id: i64,
        body: &serde_json::Value,
    ) -> Result<i64, StoreError> {
        let t = self.tables(name).await?;
        let mut w = self.writer().await?;
        let row = sqlx::query(AssertSqlSafe(upsert_record_sql("", &t.name)))
            .bind(model_id)
            .bind(body.to_string())
            .fetch_one(&mut *w)
            .await
            .map_err(self.backend("upsert record"))?;
        self.get(&row, "generation")
    }

    async fn put_unless_older(
        &self,
        name: &str,
        record: &StoredRecord,
    ) -> Result<bool, StoreError> {
        match self.dialect {
            // One writer: copies arriving while one is written share the next statement.
            Dialect::Sqlite => {
                self.write_grouped(RecordWrite {
                    name: name.to_owned(),
                    record: record.clone(),
                })
                .await
            }
            Dialect::Postgres => self.put_unless_older_now(name, record).await,
        }
    }

    async fn get(&self, name: &str, model_id: i64) -> Result<Option<StoredRecord>, StoreError> {
        let Some(t) = self.existing_tables(name).await? else {
            return Ok(None);
        };
        let n = &t.name;
        let sql = format!("SELECT generation, body FROM {n}_records WHERE {n}_id = $1");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(model_id)
            .fetch_optional(&mut *self.reader().await?)
            .await
            .map_err(self.backend("read record"))?;
        row.map(|row| self.stored_record(name, model_id, &row))
            .transpose()
    }

    async fn get_many(&self, name: &str, ids: &[i64]) -> Result<Vec<StoredRecord>, StoreError> {
        let Some(t) = self.existing_tables(name).await? else {
            return Ok(Vec::new());
        };
        let n = &t.name;
        let rows = self
            .rows_by_ids(ids, "read records", |ids_in| {
                format!(
                    "SELECT {n}_id AS model_id, generation, body FROM {n}_records \
                     WHERE {n}_id IN {ids_in}"
                )
            })
            .await?;
        rows.iter()
            .map(|row| self.stored_record(name, self.get(row, "model_id")?, row))
            .collect()
    }

    async fn delete(&self, name: &str, model_id: i64) -> Result<bool, StoreError> {
        self.delete_row("records", name, model_id).await
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
        self.ids_of(&format!("{}_records", t.name), &t.name, range, limit)
            .await
    }

    async fn count(&self, name: &str) -> Result<u64, StoreError> {
        let Some(t) = self.existing_tables(name).await? else {
            return Ok(0);
        };
        // Kept by triggers as the catalogue changes (`counts.rs`).
        let row = self.counters(&t).await?;
        self.counter(&row, "records")
    }
}

impl SqlStore {
    /// [`RecordStore::put_unless_older`], one record in its own statement.
    pub(super) async fn put_unless_older_now(
        &self,
        name: &str,
        record: &StoredRecord,
    ) -> Result<bool, StoreError> {
        let t = self.tables(name).await?;
        let n = &t.name;
        let sql = format!(
            "INSERT INTO {n}_records ({n}_id, generation, body) VALUES ($1, $2, $3) \
             ON CONFLICT ({n}_id) DO UPDATE SET generation = excluded.generation, \
             body = excluded.body WHERE {n}_records.generation <= excluded.generation"
        );
        let mut w = self.writer().await?;
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(record.model_id)
            .bind(record.generation)
            .bind(record.body.to_string())
            .execute(&mut *w)
            .await
            .map_err(self.backend("write record copy"))?;
        Ok(done.rows_affected() == 1)
    }

    /// [`RecordStore::put_unless_older`] of many records (SQLite): one statement per
    /// replicable and round (see [`statement_rounds`]), the records as one JSON parameter;
    /// returns whether each was written, in the order of `group`.
    pub(super) async fn put_many_unless_older_now(
        &self,
        group: &[RecordWrite],
    ) -> Result<Vec<bool>, StoreError> {
        // Every statement is prepared (its tables looked up) before any runs.
        let mut statements = Vec::new();
        for (name, writes) in statement_rounds(group, |w| (&w.name, w.record.model_id)) {
            let t = self.tables(name).await?;
            let n = &t.name;
            // `WHERE true` tells SQLite's parser that `ON CONFLICT` belongs to the insert.
            let sql = format!(
                "INSERT INTO {n}_records ({n}_id, generation, body) \
                 SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each($1) WHERE true \
                 ON CONFLICT ({n}_id) DO UPDATE SET generation = excluded.generation, \
                 body = excluded.body WHERE {n}_records.generation <= excluded.generation \
                 RETURNING {n}_id AS id"
            );
            let rows = writes
                .iter()
                .map(|&i| {
                    let record = &group[i].record;
                    let row = serde_json::json!([
                        record.model_id,
                        record.generation,
                        record.body.to_string()
                    ]);
                    (record.model_id, row)
                })
                .collect();
            statements.push(GroupStatement { sql, rows, writes });
        }
        self.write_group_statements(group.len(), &statements, "write record copies")
            .await
    }

    /// Deletes the row of `model_id` from replicable `name`'s table `<name>_<kind>`. Returns
    /// whether it existed.
    pub(super) async fn delete_row(
        &self,
        kind: &'static str,
        name: &str,
        model_id: i64,
    ) -> Result<bool, StoreError> {
        let t = self.tables(name).await?;
        let n = &t.name;
        let sql = format!("DELETE FROM {n}_{kind} WHERE {n}_id = $1");
        let mut w = self.writer().await?;
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(model_id)
            .execute(&mut *w)
            .await
            .map_err(self.backend("delete row"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Ids of `table` (keyed by `<name>_id`) in `range`, ascending.
    pub(super) async fn ids_of(
        &self,
        table: &str,
        name: &str,
        range: Range<i64>,
        limit: usize,
    ) -> Result<Vec<i64>, StoreError> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {name}_id AS id FROM {table} WHERE {name}_id >= $1 AND {name}_id < $2 \
             ORDER BY {name}_id LIMIT $3 + 0"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(range.start)
            .bind(range.end)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *self.reader().await?)
            .await
            .map_err(self.backend("list ids"))?;
        rows.iter().map(|row| self.get(row, "id")).collect()
    }

    /// A record read back from a `generation, body` row.
    fn stored_record(
        &self,
        name: &str,
        model_id: i64,
        row: &sqlx::any::AnyRow,
    ) -> Result<StoredRecord, StoreError> {
        let body: String = self.get(row, "body")?;
        Ok(StoredRecord {
            model_id,
            generation: self.get(row, "generation")?,
            body: serde_json::from_str(&body)
                .map_err(|e| self.corrupt(format!("{name} {model_id}: body is not JSON: {e}")))?,
        })
    }
}
