//! [`SqlTable`]: a replicable's records in the application's own table, in the site's SQL
//! database.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::AssertSqlSafe;
use tokio::sync::OnceCell;

use super::{Dialect, SqlStore};
use crate::domain::error::StoreError;
use crate::storage::{RecordSource, StoredRecord};

/// One column of the application's table.
#[derive(Debug, Clone)]
struct Column {
    name: String,
    /// The declared type, lower case.
    kind: String,
}

/// The records of replicable `name` in the application's table `table` (keyed by the integer
/// column `id_column`), in the same database as the site's [`SqlStore`]; their generations in
/// the framework's side table `<name>_generations`. The columns are the model's serde fields,
/// by name:
///
/// - a record is read as its row turned into JSON by the database (`row_to_json` on
///   PostgreSQL; on SQLite a `json_object` of the table's columns, where columns declared
///   `BOOLEAN` become JSON booleans and columns declared `JSON` are embedded as JSON), so the
///   model deserializes from it, and both sites checksum the same JSON;
/// - a copy is written on a secondary from the record's JSON (`json_populate_record` on
///   PostgreSQL, `json_extract` per column on SQLite), with its generation, in one transaction,
///   unless the row held has a newer generation.
///
/// `table` may be schema-qualified (`app.notes`) on PostgreSQL, where the store's search path
/// is the framework's schema; a view works for reading on a primary.
pub struct SqlTable {
    store: Arc<SqlStore>,
    name: String,
    table: String,
    id: String,
    columns: OnceCell<Vec<Column>>,
}

impl std::fmt::Debug for SqlTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "table `{}` of {} in {}",
            self.table, self.name, self.store.url
        )
    }
}

fn identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 63
}

impl SqlTable {
    /// The records of replicable `name` in `table`, keyed by `id_column`. `store` must be the
    /// site's own store (the database its event log is in): publishing bumps generations there.
    /// Names must be plain lower-case SQL identifiers (`table` may be `schema.table` on
    /// PostgreSQL). The table's columns are read once, at first use.
    pub fn new(
        store: &Arc<SqlStore>,
        name: &str,
        table: &str,
        id_column: &str,
    ) -> Result<Self, StoreError> {
        let refuse = |reason: String| StoreError::Backend {
            store: store.url.clone(),
            operation: "use the application's table",
            reason,
        };
        if !super::schema::valid_name(name) {
            return Err(refuse(format!("`{name}` is not a valid replicable name")));
        }
        let parts: Vec<&str> = table.split('.').collect();
        let qualified_ok = store.dialect == Dialect::Postgres && parts.len() == 2;
        if !(parts.len() == 1 || qualified_ok) || !parts.iter().all(|p| identifier(p)) {
            return Err(refuse(format!(
                "table `{table}` of {name} is not a plain lower-case identifier{}",
                if store.dialect == Dialect::Postgres {
                    " (or schema.table)"
                } else {
                    ""
                }
            )));
        }
        if !identifier(id_column) {
            return Err(refuse(format!(
                "id column `{id_column}` of {name} is not a plain lower-case identifier"
            )));
        }
        Ok(Self {
            store: store.clone(),
            name: name.to_owned(),
            table: table.to_owned(),
            id: id_column.to_owned(),
            columns: OnceCell::new(),
        })
    }

    /// The replicable whose records these are.
    pub fn replicable_name(&self) -> &str {
        &self.name
    }

    /// The table.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn error(&self, operation: &'static str) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        move |e| StoreError::Backend {
            store: self.store.url.clone(),
            operation,
            reason: format!("{} (table `{}`): {e}", self.name, self.table),
        }
    }

    /// The table's columns, read once; the framework's tables of the replicable are created
    /// with them if missing.
    async fn columns(&self) -> Result<&[Column], StoreError> {
        self.columns
            .get_or_try_init(|| async {
                self.store.create_replicable_tables(&self.name).await?;
                let sql = match self.store.dialect {
                    Dialect::Sqlite => {
                        "SELECT name, lower(type) AS kind \
                                        FROM pragma_table_info($1) ORDER BY cid"
                    }
                    Dialect::Postgres => {
                        "SELECT CAST(attname AS TEXT) AS name, \
                         lower(format_type(atttypid, atttypmod)) AS kind FROM pg_attribute \
                         WHERE attrelid = CAST(CAST($1 AS TEXT) AS regclass) AND attnum > 0 \
                         AND NOT attisdropped ORDER BY attnum"
                    }
                };
                let rows = sqlx::query(sql)
                    .bind(self.table.clone())
                    .fetch_all(&self.store.pool)
                    .await
                    .map_err(self.error("read the table's columns"))?;
                let columns = rows
                    .iter()
                    .map(|row| {
                        Ok(Column {
                            name: self.store.get(row, "name")?,
                            kind: self.store.get(row, "kind")?,
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                let refuse = |reason: String| StoreError::Backend {
                    store: self.store.url.clone(),
                    operation: "use the application's table",
                    reason,
                };
                if columns.is_empty() {
                    return Err(refuse(format!(
                        "table `{}` of {} does not exist or has no columns",
                        self.table, self.name
                    )));
                }
                if !columns.iter().any(|c| c.name == self.id) {
                    return Err(refuse(format!(
                        "table `{}` of {} has no id column `{}`",
                        self.table, self.name, self.id
                    )));
                }
                if let Some(bad) = columns.iter().find(|c| !identifier(&c.name)) {
                    return Err(refuse(format!(
                        "column `{}` of table `{}` is not a plain lower-case identifier",
                        bad.name, self.table
                    )));
                }
                Ok(columns)
            })
            .await
            .map(Vec::as_slice)
    }

    /// The expression that reads row `t` as JSON text.
    async fn body_expression(&self) -> Result<String, StoreError> {
        // Also makes sure the side table exists (a registered source may create it).
        self.columns().await?;
        Ok(match self.store.dialect {
            Dialect::Postgres => "CAST(row_to_json(t) AS TEXT)".to_owned(),
            Dialect::Sqlite => {
                let pairs = self
                    .columns()
                    .await?
                    .iter()
                    .map(|c| {
                        let n = &c.name;
                        let value = if c.kind.contains("bool") {
                            format!(
                                "CASE WHEN t.{n} IS NULL THEN NULL WHEN t.{n} \
                                 THEN json('true') ELSE json('false') END"
                            )
                        } else if c.kind.contains("json") {
                            format!("CASE WHEN json_valid(t.{n}) THEN json(t.{n}) ELSE t.{n} END")
                        } else {
                            format!("t.{n}")
                        };
                        format!("'{n}', {value}")
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("json_object({pairs})")
            }
        })
    }

    /// The statement that writes a row from its JSON (`$1`), replacing the row with its id.
    async fn write_sql(&self) -> Result<String, StoreError> {
        let columns = self.columns().await?;
        let (q, id) = (&self.table, &self.id);
        let assignments = columns
            .iter()
            .filter(|c| c.name != *id)
            .map(|c| format!("{0} = excluded.{0}", c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let conflict = if assignments.is_empty() {
            "DO NOTHING".to_owned()
        } else {
            format!("DO UPDATE SET {assignments}")
        };
        Ok(match self.store.dialect {
            Dialect::Postgres => format!(
                "INSERT INTO {q} SELECT * FROM json_populate_record(NULL::{q}, CAST($1 AS JSON)) \
                 ON CONFLICT ({id}) {conflict}"
            ),
            Dialect::Sqlite => {
                let names = columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                let values = columns
                    .iter()
                    .map(|c| format!("json_extract($1, '$.\"{}\"')", c.name))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!(
                    "INSERT INTO {q} ({names}) SELECT {values} WHERE true \
                     ON CONFLICT ({id}) {conflict}"
                )
            }
        })
    }

    /// The record's JSON with its id set to `model_id`, as text.
    fn row_json(&self, model_id: i64, body: &serde_json::Value) -> Result<String, StoreError> {
        let mut body = body.clone();
        match &mut body {
            serde_json::Value::Object(map) => {
                map.insert(self.id.clone(), model_id.into());
            }
            _ => {
                return Err(StoreError::Backend {
                    store: self.store.url.clone(),
                    operation: "write a row",
                    reason: format!(
                        "{} {model_id}: the record is not a JSON object, it has no fields to put \
                         in the columns of `{}`",
                        self.name, self.table
                    ),
                });
            }
        }
        Ok(body.to_string())
    }
}

#[async_trait]
impl RecordSource for SqlTable {
    async fn get(&self, model_id: i64) -> Result<Option<StoredRecord>, StoreError> {
        let body = self.body_expression().await?;
        let (q, id, n) = (&self.table, &self.id, &self.name);
        let sql = format!(
            "SELECT {body} AS body, COALESCE(g.generation, 0) AS generation FROM {q} t \
             LEFT JOIN {n}_generations g ON g.{n}_id = t.{id} WHERE t.{id} = $1"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(model_id)
            .fetch_optional(&self.store.pool)
            .await
            .map_err(self.error("read a row"))?;
        row.map(|row| {
            let text: String = self.store.get(&row, "body")?;
            Ok(StoredRecord {
                model_id,
                generation: self.store.get(&row, "generation")?,
                body: serde_json::from_str(&text).map_err(|e| {
                    self.store
                        .corrupt(format!("{n} {model_id}: the row is not JSON: {e}"))
                })?,
            })
        })
        .transpose()
    }

    async fn ids(&self, range: Range<i64>, limit: usize) -> Result<Vec<i64>, StoreError> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        self.columns().await?;
        let (q, id) = (&self.table, &self.id);
        let sql = format!(
            "SELECT CAST({id} AS BIGINT) AS id FROM {q} WHERE {id} >= $1 AND {id} < $2 \
             ORDER BY {id} LIMIT $3 + 0"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(range.start)
            .bind(range.end)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.store.pool)
            .await
            .map_err(self.error("list ids"))?;
        rows.iter().map(|row| self.store.get(row, "id")).collect()
    }

    async fn count(&self) -> Result<u64, StoreError> {
        self.columns().await?;
        // A scan of the application's table: the framework keeps counts as rows change only
        // in its own tables (it puts no trigger on a table it does not own).
        let sql = format!("SELECT COUNT(*) AS n FROM {}", self.table);
        let row = sqlx::query(AssertSqlSafe(sql))
            .fetch_one(&self.store.pool)
            .await
            .map_err(self.error("count rows"))?;
        Ok(self.store.get::<i64>(&row, "n")?.max(0) as u64)
    }

    async fn put_unless_older(&self, record: &StoredRecord) -> Result<bool, StoreError> {
        let write = self.write_sql().await?;
        let json = self.row_json(record.model_id, &record.body)?;
        let n = &self.name;
        let err = self.error("write a copy");
        let mut tx = self.store.begin_write().await.map_err(&err)?;
        // The generation first: the row it locks (or inserts) keeps a concurrent writer of the
        // same record waiting until this one commits, and an older copy writes nothing.
        let sql = format!(
            "INSERT INTO {n}_generations AS g ({n}_id, generation) VALUES ($1, $2) \
             ON CONFLICT ({n}_id) DO UPDATE SET generation = excluded.generation \
             WHERE g.generation <= excluded.generation RETURNING generation"
        );
        let won = sqlx::query(AssertSqlSafe(sql))
            .bind(record.model_id)
            .bind(record.generation)
            .fetch_optional(&mut *tx)
            .await
            .map_err(&err)?
            .is_some();
        if !won {
            return Ok(false);
        }
        sqlx::query(AssertSqlSafe(write))
            .bind(json)
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        Ok(true)
    }

    async fn delete(&self, model_id: i64) -> Result<bool, StoreError> {
        self.columns().await?;
        let (q, id, n) = (&self.table, &self.id, &self.name);
        let err = self.error("delete a row");
        let mut tx = self.store.begin_write().await.map_err(&err)?;
        let done = sqlx::query(AssertSqlSafe(format!("DELETE FROM {q} WHERE {id} = $1")))
            .bind(model_id)
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {n}_generations WHERE {n}_id = $1"
        )))
        .bind(model_id)
        .execute(&mut *tx)
        .await
        .map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn write(&self, model_id: i64, body: &serde_json::Value) -> Result<(), StoreError> {
        let write = self.write_sql().await?;
        let json = self.row_json(model_id, body)?;
        let mut w = self.store.writer().await?;
        sqlx::query(AssertSqlSafe(write))
            .bind(json)
            .execute(&mut *w)
            .await
            .map_err(self.error("write a row"))?;
        Ok(())
    }
}

impl From<SqlTable> for Arc<dyn RecordSource> {
    fn from(table: SqlTable) -> Self {
        Arc::new(table)
    }
}
