//! Many rows in one statement: the event appends of SQLite, and the batch publish
//! ([`EventLog::publish_batch`](crate::storage::EventLog::publish_batch)) on both engines, in the
//! store's transaction or the application's. Each statement takes its rows as one JSON
//! parameter that the engine expands (`json_each` on SQLite, `json_array_elements` on
//! PostgreSQL): binding a few parameters per row costs more than the insert itself, and no
//! bind-parameter limit (SQLite 32,766, PostgreSQL 65,535) can be reached.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;

use sqlx::AssertSqlSafe;
use sqlx::any::AnyRow;

use super::event_log::serialize_error;
use super::{Dialect, SqlStore, Tables};
use crate::domain::error::StoreError;
use crate::storage::Publication;

/// Rows per statement: bounds the size of one statement (and of its JSON parameter).
pub(super) const APPEND_CHUNK: usize = 5_000;

/// Ids per statement of a read of many rows by id.
const MANY_CHUNK: usize = 1_000;

/// Appends events on one connection inside a transaction the caller commits: `$rows` are
/// `(replicable_name, event_name, payload JSON)`, in order, written one statement per run of
/// one replicable and kind (see [`event_runs`]); `$p` qualifies the table (see `publish_on!`).
/// Evaluates to `Result<Vec<EventId>, StoreError>`, the ids in the order of the rows.
macro_rules! append_on {
    ($store:expr, $conn:expr, $p:expr, $rows:expr, $now:expr) => {{
        async {
            let store: &SqlStore = $store;
            let rows: &[(&str, &str, String)] = $rows;
            let err = store.backend("append events");
            let mut ids: Vec<EventId> = Vec::with_capacity(rows.len());
            if rows.is_empty() {
                return Ok::<_, StoreError>(ids);
            }
            let sql = append_rows_sql(store.dialect, $p);
            let at = micros($now);
            for run in event_runs(rows) {
                let chunk = &rows[run];
                let (name, kind) = (chunk[0].0, chunk[0].1);
                let payloads: Vec<&str> = chunk.iter().map(|row| row.2.as_str()).collect();
                let batch =
                    serde_json::to_string(&payloads).map_err(|e| serialize_error(store, e))?;
                let query = sqlx::query(AssertSqlSafe(sql.clone()))
                    .bind(batch)
                    .bind(name)
                    .bind(kind)
                    .bind(at);
                match store.dialect {
                    Dialect::Sqlite => {
                        query.execute($conn).await.map_err(&err)?;
                        // Under SQLite's write lock the ids of one statement are consecutive:
                        // only the last one and the count come back.
                        let row = sqlx::query("SELECT last_insert_rowid() AS last, changes() AS n")
                            .fetch_one($conn)
                            .await
                            .map_err(&err)?;
                        let last: i64 = sqlx::Row::try_get(&row, "last").map_err(&err)?;
                        let stored: i64 = sqlx::Row::try_get(&row, "n").map_err(&err)?;
                        if usize::try_from(stored).ok() != Some(chunk.len()) {
                            return Err(StoreError::Backend {
                                store: store.url.clone(),
                                operation: "append events",
                                reason: format!("{} events sent, {stored} stored", chunk.len()),
                            });
                        }
                        ids.extend(last - stored + 1..=last);
                    }
                    Dialect::Postgres => {
                        let returned = query.fetch_all($conn).await.map_err(&err)?;
                        let mut chunk_ids = returned
                            .iter()
                            .map(|row| sqlx::Row::try_get::<i64, _>(row, "id"))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(&err)?;
                        // Ids are drawn in the order of the rows; RETURNING's is not promised.
                        chunk_ids.sort_unstable();
                        ids.extend(chunk_ids);
                    }
                }
            }
            Ok(ids)
        }
        .await
    }};
}
pub(super) use append_on;

/// The writes of many [`Publication`]s on one connection inside a transaction the caller
/// commits (see [`EventLog::publish_batch`](crate::storage::EventLog::publish_batch)): the
/// store's own or the application's (`publish_*_events_in`). The record writes go segment by
/// segment (see [`batch_segments`]), each one multi-row statement per table, in order; then
/// every event, last, as in `publish_on!`. `$tables`
/// holds the tables of every replicable named. Evaluates to
/// `Result<Vec<Published>, StoreError>`.
macro_rules! publish_batch_on {
    ($store:expr, $conn:expr, $p:expr, $tables:expr, $publications:expr, $now:expr) => {{
        async {
            let store: &SqlStore = $store;
            let p: &str = $p;
            let tables: &[std::sync::Arc<Tables>] = $tables;
            let publications: &[Publication] = $publications;
            let err = store.backend("publish a batch");
            let d = store.dialect;
            let mut generations: Vec<Option<i64>> = vec![None; publications.len()];
            for segment in batch_segments(publications) {
                let part = &publications[segment.clone()];
                let first = &part[0];
                let t = table_of(store, tables, &first.event.replicable_name)?;
                let n = &t.name;
                match first.event.kind {
                    EventKind::Created | EventKind::Updated => {
                        let (sql, rows) = if first.in_catalogue {
                            (upsert_records_batch_sql(d, p, n), record_rows(store, part)?)
                        } else {
                            (bump_generations_batch_sql(d, p, n), id_rows(part))
                        };
                        let returned = sqlx::query(AssertSqlSafe(sql))
                            .bind(rows)
                            .fetch_all($conn)
                            .await
                            .map_err(&err)?;
                        let mut by_id = std::collections::HashMap::with_capacity(returned.len());
                        for row in &returned {
                            let id: i64 = sqlx::Row::try_get(row, "id").map_err(&err)?;
                            let g: i64 = sqlx::Row::try_get(row, "generation").map_err(&err)?;
                            by_id.insert(id, g);
                        }
                        for (slot, publication) in generations[segment].iter_mut().zip(part) {
                            let id = publication.event.payload.model_id;
                            let g = by_id.get(&id).copied().ok_or_else(|| {
                                store.corrupt(format!("no generation came back for {n} {id}"))
                            })?;
                            *slot = Some(g);
                        }
                        if first.verifiable {
                            let keep = first.event.kind == EventKind::Created && !first.mutable;
                            sqlx::query(AssertSqlSafe(verification_pending_batch_sql(d, p, n)))
                                .bind(id_rows(part))
                                .bind(i16::from(keep))
                                .execute($conn)
                                .await
                                .map_err(&err)?;
                        }
                    }
                    EventKind::Deleted => {
                        // The generation of a row in the application's table is kept, as in
                        // `publish_on`.
                        let kinds: &[&str] = if first.in_catalogue {
                            &["records", "verification"]
                        } else {
                            &["verification"]
                        };
                        let ids = id_rows(part);
                        for kind in kinds {
                            sqlx::query(AssertSqlSafe(delete_batch_sql(d, p, n, kind)))
                                .bind(ids.clone())
                                .execute($conn)
                                .await
                                .map_err(&err)?;
                        }
                    }
                    EventKind::ChecksumSucceeded => {}
                }
            }
            let rows = event_rows(store, publications, &generations)?;
            let ids = append_on!(store, $conn, p, &rows, $now)?;
            Ok::<_, StoreError>(
                ids.into_iter()
                    .zip(generations)
                    .map(|(event_id, generation)| Published {
                        event_id,
                        generation,
                    })
                    .collect::<Vec<_>>(),
            )
        }
        .await
    }};
}
pub(super) use publish_batch_on;

/// Splits events into runs one statement appends: consecutive events of one replicable and
/// kind (they travel as statement parameters), at most [`APPEND_CHUNK`].
pub(super) fn event_runs(rows: &[(&str, &str, String)]) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=rows.len() {
        let ends = i == rows.len()
            || i - start == APPEND_CHUNK
            || (rows[i].0, rows[i].1) != (rows[start].0, rows[start].1);
        if ends {
            runs.push(start..i);
            start = i;
        }
    }
    runs
}

/// Splits a batch into segments that one statement per table can write: consecutive
/// publications of one replicable, kind and set of flags, at most [`APPEND_CHUNK`], and no
/// record twice (an upsert may not touch a row twice in one statement on PostgreSQL, and a
/// record published twice must get two generations, in order).
pub(super) fn batch_segments(publications: &[Publication]) -> Vec<Range<usize>> {
    let mut segments = Vec::new();
    let mut start = 0;
    let mut ids = HashSet::new();
    for (i, publication) in publications.iter().enumerate() {
        let head = &publications[start];
        let joins = i > start
            && i - start < APPEND_CHUNK
            && publication.event.replicable_name == head.event.replicable_name
            && publication.event.kind == head.event.kind
            && (
                publication.verifiable,
                publication.mutable,
                publication.in_catalogue,
            ) == (head.verifiable, head.mutable, head.in_catalogue)
            && !ids.contains(&publication.event.payload.model_id);
        if i > start && !joins {
            segments.push(start..i);
            start = i;
            ids.clear();
        }
        ids.insert(publication.event.payload.model_id);
    }
    if start < publications.len() {
        segments.push(start..publications.len());
    }
    segments
}

/// The tables of replicable `name` among those a batch resolved.
pub(super) fn table_of<'t>(
    store: &SqlStore,
    tables: &'t [Arc<Tables>],
    name: &str,
) -> Result<&'t Tables, StoreError> {
    tables
        .iter()
        .find(|t| t.name == name)
        .map(|t| &**t)
        .ok_or_else(|| store.corrupt(format!("no tables resolved for replicable `{name}`")))
}

/// The distinct replicable names of a batch, in order of first appearance.
pub(super) fn batch_names(publications: &[Publication]) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for publication in publications {
        let name = publication.event.replicable_name.as_str();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// `{"id": "body", ...}`: the catalogue rows of a segment (no id twice), each body the JSON
/// text the catalogue stores. An object rather than an array of pairs: the engine reads each
/// body as a plain string, without parsing a pair again for each of its fields.
pub(super) fn record_rows(store: &SqlStore, part: &[Publication]) -> Result<String, StoreError> {
    let mut rows = String::with_capacity(part.len() * 128);
    rows.push('{');
    for (i, publication) in part.iter().enumerate() {
        if i > 0 {
            rows.push(',');
        }
        let payload = &publication.event.payload;
        let body = payload
            .record
            .as_ref()
            .unwrap_or(&serde_json::Value::Null)
            .to_string();
        rows.push('"');
        rows.push_str(&payload.model_id.to_string());
        rows.push_str("\":");
        rows.push_str(&serde_json::to_string(&body).map_err(|e| serialize_error(store, e))?);
    }
    rows.push('}');
    Ok(rows)
}

/// `[id, ...]`: the record ids of a segment.
pub(super) fn id_rows(part: &[Publication]) -> String {
    let ids: Vec<i64> = part
        .iter()
        .map(|publication| publication.event.payload.model_id)
        .collect();
    json_ids(&ids)
}

/// `[id, ...]` of `ids`.
fn json_ids(ids: &[i64]) -> String {
    let ids = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    format!("[{ids}]")
}

impl SqlStore {
    /// The rows `select` reads for `ids`: `select(ids_in)` is a statement whose `WHERE` takes
    /// `ids_in` as the right-hand side of `IN` (the ids, as one JSON parameter), run once per
    /// [`MANY_CHUNK`] ids. What a read of many rows by id (`get_many`) runs.
    pub(super) async fn rows_by_ids(
        &self,
        ids: &[i64],
        operation: &'static str,
        select: impl Fn(&str) -> String,
    ) -> Result<Vec<AnyRow>, StoreError> {
        let ids_in = format!(
            "(SELECT CAST(value AS BIGINT) FROM {})",
            json_rows(self.dialect, Json::Array)
        );
        let sql = select(&ids_in);
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MANY_CHUNK) {
            found.extend(
                sqlx::query(AssertSqlSafe(sql.clone()))
                    .bind(json_ids(chunk))
                    .fetch_all(&mut *self.reader().await?)
                    .await
                    .map_err(self.backend(operation))?,
            );
        }
        Ok(found)
    }
}

/// The events of a batch as [`append_on`] takes them, each payload carrying its record's new
/// generation.
pub(super) fn event_rows<'a>(
    store: &SqlStore,
    publications: &'a [Publication],
    generations: &[Option<i64>],
) -> Result<Vec<(&'a str, &'static str, String)>, StoreError> {
    publications
        .iter()
        .zip(generations)
        .map(|(publication, generation)| {
            let event = &publication.event;
            let mut payload =
                serde_json::to_string(&event.payload).map_err(|e| serialize_error(store, e))?;
            if let Some(generation) = generation {
                if event.payload.generation.is_none() && payload.ends_with('}') {
                    // The generation goes last: cheaper than copying the record to set it,
                    // and readers look fields up by name.
                    payload.pop();
                    payload.push_str(&format!(",\"generation\":{generation}}}"));
                } else {
                    let mut with = event.payload.clone();
                    with.generation = Some(*generation);
                    payload =
                        serde_json::to_string(&with).map_err(|e| serialize_error(store, e))?;
                }
            }
            Ok((event.replicable_name.as_str(), event.kind.name(), payload))
        })
        .collect()
}

/// The layout of the JSON parameter `$1` of a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Json {
    /// An array of numbers or strings: rows `(key, value)`, `key` the position, `value` the
    /// element as a plain value (text, on PostgreSQL).
    Array,
    /// An object: rows `(key, value)`, `key` the label, `value` the member as plain text.
    Object,
}

/// `$1` as a table, in SQL for `d`.
fn json_rows(d: Dialect, layout: Json) -> &'static str {
    match (d, layout) {
        (Dialect::Sqlite, _) => "json_each($1)",
        (Dialect::Postgres, Json::Array) => {
            "json_array_elements_text(CAST($1 AS json)) WITH ORDINALITY AS j(value, key)"
        }
        (Dialect::Postgres, Json::Object) => "json_each_text(CAST($1 AS json)) AS j(key, value)",
    }
}

/// [`upsert_record_sql`](super::event_log::upsert_record_sql) for the rows of [`record_rows`]
/// in `$1`; returns `id, generation`. (`WHERE true` tells SQLite's parser that `ON CONFLICT`
/// belongs to the insert.)
///
/// The batch statements take their rows in id order (`ORDER BY 1`): on PostgreSQL, two batches
/// that lock the same rows in opposite orders deadlock, and the database aborts one of them (an
/// application's publish). In one order, the later batch waits for the earlier one. The order
/// holds within a statement: a batch written in several segments (a record named twice,
/// another replicable or kind, more than 5,000 rows) orders each segment, so two such batches
/// over the same records can still meet in opposite orders: PostgreSQL then aborts one, and
/// the store writes it again (`SqlStore::retrying_deadlocks`).
pub(super) fn upsert_records_batch_sql(d: Dialect, p: &str, n: &str) -> String {
    format!(
        "INSERT INTO {p}{n}_records AS r ({n}_id, generation, body) \
         SELECT CAST(key AS BIGINT), 1, value FROM {} WHERE true ORDER BY 1 \
         ON CONFLICT ({n}_id) DO UPDATE SET generation = r.generation + 1, \
         body = excluded.body RETURNING {n}_id AS id, generation",
        json_rows(d, Json::Object)
    )
}

/// [`bump_generation_sql`](super::event_log::bump_generation_sql) for the ids of [`id_rows`] in
/// `$1`; returns `id, generation`.
pub(super) fn bump_generations_batch_sql(d: Dialect, p: &str, n: &str) -> String {
    format!(
        "INSERT INTO {p}{n}_generations AS g ({n}_id, generation) \
         SELECT CAST(value AS BIGINT), 1 FROM {} WHERE true ORDER BY 1 \
         ON CONFLICT ({n}_id) DO UPDATE SET generation = g.generation + 1 \
         RETURNING {n}_id AS id, generation",
        json_rows(d, Json::Array)
    )
}

/// [`verification_pending_sql`](super::event_log::verification_pending_sql) for the ids of
/// [`id_rows`] in `$1` (`$2 = 1` keeps succeeded checksums).
pub(super) fn verification_pending_batch_sql(d: Dialect, p: &str, n: &str) -> String {
    format!(
        "INSERT INTO {p}{n}_verification AS v ({n}_id, verification_state) \
         SELECT CAST(value AS BIGINT), 0 FROM {} WHERE true ORDER BY 1 \
         ON CONFLICT ({n}_id) DO UPDATE SET verification_state = 0, \
         verification_retry_at = NULL, verification_started_at = NULL, \
         version = v.version + 1 \
         WHERE NOT ($2 = 1 AND v.verification_state = 2)",
        json_rows(d, Json::Array)
    )
}

/// Deletes the rows of `<n>_<kind>` whose ids [`id_rows`] lists in `$1`.
pub(super) fn delete_batch_sql(d: Dialect, p: &str, n: &str, kind: &str) -> String {
    format!(
        "DELETE FROM {p}{n}_{kind} WHERE {n}_id IN (SELECT CAST(value AS BIGINT) FROM {})",
        json_rows(d, Json::Array)
    )
}

/// Inserts events of replicable `$2` and kind `$3` created at `$4`, their payloads the array of
/// strings `$1`, in order; on PostgreSQL returns their ids.
pub(super) fn append_rows_sql(d: Dialect, p: &str) -> String {
    let returning = match d {
        Dialect::Sqlite => "",
        Dialect::Postgres => " RETURNING id",
    };
    format!(
        "INSERT INTO {p}replicable_events (replicable_name, event_name, payload, created_at) \
         SELECT CAST($2 AS TEXT), CAST($3 AS TEXT), value, CAST($4 AS BIGINT) FROM {} \
         ORDER BY key{returning}",
        json_rows(d, Json::Array)
    )
}
