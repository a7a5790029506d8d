//! Many rows in one statement: the event appends of SQLite, and the batch publish
//! ([`EventLog::publish_batch`](crate::storage::EventLog::publish_batch)) on both engines, in the
//! store's transaction or the application's. Each statement takes its rows as one JSON
//! parameter that the engine expands (`json_each` on SQLite, `json_array_elements` on
//! PostgreSQL): binding a few parameters per row costs more than the insert itself, and no
//! bind-parameter limit (SQLite 32,766, PostgreSQL 65,535) can be reached.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;

use super::event_log::serialize_error;
use super::{Dialect, SqlStore, Tables};
use crate::domain::error::StoreError;
use crate::storage::Publication;

/// Rows per statement: bounds the size of one statement (and of its JSON parameter).
pub(super) const APPEND_CHUNK: usize = 5_000;

/// Appends events on one connection inside a transaction the caller commits, under the
/// append lock on PostgreSQL (taken here, held until commit): `$rows` are
/// `(replicable_name, event_name, payload JSON)`, in order; `$p` qualifies the table (see
/// `publish_on!`). Evaluates to `Result<Vec<EventId>, StoreError>`, the ids in the order of
/// the rows.
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
            if store.dialect == Dialect::Postgres {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(APPEND_LOCK)
                    .execute($conn)
                    .await
                    .map_err(&err)?;
            }
            let sql = append_rows_sql(store.dialect, $p);
            let at = micros($now);
            for chunk in rows.chunks(APPEND_CHUNK) {
                let batch = serde_json::to_string(chunk).map_err(|e| serialize_error(store, e))?;
                let query = sqlx::query(AssertSqlSafe(sql.clone())).bind(batch).bind(at);
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
/// commits (see [`EventLog::publish_batch`](crate::storage::EventLog::publish_batch)): the store's own or the application's
/// (`publish_*_events_in`). The record writes go segment by segment (see [`batch_segments`]),
/// each one multi-row statement per table, in order; then every event, under the append lock on
/// PostgreSQL, taken last as in `publish_on!`. `$tables` holds the tables of every replicable
/// named. Evaluates to `Result<Vec<Published>, StoreError>`.
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

/// `[[id, body], ...]`: the catalogue rows of a segment, each body the JSON text the catalogue
/// stores.
pub(super) fn record_rows(store: &SqlStore, part: &[Publication]) -> Result<String, StoreError> {
    let rows = part
        .iter()
        .map(|publication| {
            let body = publication
                .event
                .payload
                .record
                .as_ref()
                .unwrap_or(&serde_json::Value::Null)
                .to_string();
            (publication.event.payload.model_id, body)
        })
        .collect::<Vec<_>>();
    serde_json::to_string(&rows).map_err(|e| serialize_error(store, e))
}

/// `[id, ...]`: the record ids of a segment.
pub(super) fn id_rows(part: &[Publication]) -> String {
    let ids = part
        .iter()
        .map(|publication| publication.event.payload.model_id.to_string())
        .collect::<Vec<_>>()
        .join(",");
    format!("[{ids}]")
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
            let payload = if generation.is_some() {
                let mut payload = event.payload.clone();
                payload.generation = *generation;
                serde_json::to_string(&payload)
            } else {
                serde_json::to_string(&event.payload)
            }
            .map_err(|e| serialize_error(store, e))?;
            Ok((event.replicable_name.as_str(), event.kind.name(), payload))
        })
        .collect()
}

/// The rows of the JSON array in `$1` as a table with columns `value` (an element) and `key`
/// (its position). `scalars`: the elements are numbers or strings, read as text on
/// PostgreSQL; otherwise they are arrays, read with `value ->> i`.
fn json_rows(d: Dialect, scalars: bool) -> &'static str {
    match (d, scalars) {
        (Dialect::Sqlite, _) => "json_each($1)",
        (Dialect::Postgres, false) => {
            "json_array_elements(CAST($1 AS json)) WITH ORDINALITY AS j(value, key)"
        }
        (Dialect::Postgres, true) => {
            "json_array_elements_text(CAST($1 AS json)) WITH ORDINALITY AS j(value, key)"
        }
    }
}

/// [`upsert_record_sql`](super::event_log::upsert_record_sql) for the rows of [`record_rows`] in `$1`; returns `id, generation`.
/// (`WHERE true` tells SQLite's parser that `ON CONFLICT` belongs to the insert.)
pub(super) fn upsert_records_batch_sql(d: Dialect, p: &str, n: &str) -> String {
    format!(
        "INSERT INTO {p}{n}_records AS r ({n}_id, generation, body)          SELECT CAST(value ->> 0 AS BIGINT), 1, value ->> 1 FROM {} WHERE true          ON CONFLICT ({n}_id) DO UPDATE SET generation = r.generation + 1,          body = excluded.body RETURNING {n}_id AS id, generation",
        json_rows(d, false)
    )
}

/// [`bump_generation_sql`](super::event_log::bump_generation_sql) for the ids of [`id_rows`] in `$1`; returns `id, generation`.
pub(super) fn bump_generations_batch_sql(d: Dialect, p: &str, n: &str) -> String {
    format!(
        "INSERT INTO {p}{n}_generations AS g ({n}_id, generation)          SELECT CAST(value AS BIGINT), 1 FROM {} WHERE true          ON CONFLICT ({n}_id) DO UPDATE SET generation = g.generation + 1          RETURNING {n}_id AS id, generation",
        json_rows(d, true)
    )
}

/// [`verification_pending_sql`](super::event_log::verification_pending_sql) for the ids of [`id_rows`] in `$1` (`$2 = 1` keeps succeeded
/// checksums).
pub(super) fn verification_pending_batch_sql(d: Dialect, p: &str, n: &str) -> String {
    format!(
        "INSERT INTO {p}{n}_verification AS v ({n}_id, verification_state)          SELECT CAST(value AS BIGINT), 0 FROM {} WHERE true          ON CONFLICT ({n}_id) DO UPDATE SET verification_state = 0,          verification_retry_at = NULL, verification_started_at = NULL,          version = v.version + 1          WHERE NOT ($2 = 1 AND v.verification_state = 2)",
        json_rows(d, true)
    )
}

/// Deletes the rows of `<n>_<kind>` whose ids [`id_rows`] lists in `$1`.
pub(super) fn delete_batch_sql(d: Dialect, p: &str, n: &str, kind: &str) -> String {
    format!(
        "DELETE FROM {p}{n}_{kind} WHERE {n}_id IN (SELECT CAST(value AS BIGINT) FROM {})",
        json_rows(d, true)
    )
}

/// Inserts the events `[[replicable_name, event_name, payload], ...]` of `$1`, in order, created
/// at `$2`; on PostgreSQL returns their ids.
pub(super) fn append_rows_sql(d: Dialect, p: &str) -> String {
    let returning = match d {
        Dialect::Sqlite => "",
        Dialect::Postgres => " RETURNING id",
    };
    format!(
        "INSERT INTO {p}replicable_events (replicable_name, event_name, payload, created_at)          SELECT value ->> 0, value ->> 1, value ->> 2, CAST($2 AS BIGINT) FROM {}          ORDER BY key{returning}",
        json_rows(d, false)
    )
}
