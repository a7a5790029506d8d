//! Publishing in the application's own transaction: the framework's writes of a publication
//! (the generation or catalogue row, the verification row, the event) on the connection the
//! application's change is written on, so that both commit together or not at all.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;

use super::batch::{
    append_on, append_rows_sql, batch_names, batch_segments, bump_generations_batch_sql,
    delete_batch_sql, event_rows, event_runs, id_rows, publish_batch_on, record_rows, table_of,
    upsert_records_batch_sql, verification_pending_batch_sql,
};
use super::event_log::{
    bump_generation_sql, publish_on, serialize_error, upsert_record_sql, verification_pending_sql,
};
use super::{Dialect, SqlStore, Tables, micros};
use crate::domain::error::StoreError;
use crate::domain::event::{EventId, EventKind};
use crate::storage::{Publication, Published};

mod sealed {
    pub trait Sealed {}
    #[cfg(feature = "postgres")]
    impl Sealed for sqlx::PgConnection {}
    #[cfg(feature = "sqlite")]
    impl Sealed for sqlx::SqliteConnection {}
    impl Sealed for sqlx::AnyConnection {}
}

/// A connection of the application's own sqlx pool that a publication can be written on:
/// `sqlx::PgConnection` (feature `postgres`), `sqlx::SqliteConnection` (feature `sqlite`), or
/// `sqlx::AnyConnection` on either engine.
/// Pass `&mut *tx` for a transaction `tx`, or a plain connection (then each statement commits
/// by itself: only a transaction makes the application's change and the event one).
#[async_trait]
pub trait AppConnection: Send + sealed::Sealed {
    /// Writes `publication` on this connection for the site whose event log is `store`.
    #[doc(hidden)]
    async fn write_publication(
        &mut self,
        store: &SqlStore,
        publication: &Publication,
        now: DateTime<Utc>,
    ) -> Result<Published, StoreError>;

    /// Writes `publications`, in order, on this connection for the site whose event log is
    /// `store` (see [`EventLog::publish_batch`](crate::storage::EventLog::publish_batch)).
    #[doc(hidden)]
    async fn write_publications(
        &mut self,
        store: &SqlStore,
        publications: &[Publication],
        now: DateTime<Utc>,
    ) -> Result<Vec<Published>, StoreError>;
}

impl SqlStore {
    /// The tables of a replicable for a write on an application's connection: they must exist
    /// already (creating them there would take the schema lock inside the application's
    /// transaction, behind its own writes).
    async fn tables_for_app(
        &self,
        name: &str,
        expected: Dialect,
    ) -> Result<std::sync::Arc<Tables>, StoreError> {
        if self.dialect != expected {
            return Err(StoreError::Backend {
                store: self.url.clone(),
                operation: "publish in the application's transaction",
                reason: format!(
                    "the site's database is {:?} but the application's connection is {expected:?}",
                    self.dialect
                ),
            });
        }
        self.existing_tables(name)
            .await?
            .ok_or_else(|| StoreError::Backend {
                store: self.url.clone(),
                operation: "publish in the application's transaction",
                reason: format!(
                    "the tables of replicable `{name}` do not exist yet: name it in \
                 `SqlOptions::replicables` when opening the site's database"
                ),
            })
    }

    /// The tables of every replicable a batch names (see [`SqlStore::tables_for_app`]).
    async fn batch_tables_for_app(
        &self,
        publications: &[Publication],
        expected: Dialect,
    ) -> Result<Vec<std::sync::Arc<Tables>>, StoreError> {
        let mut tables = Vec::new();
        for name in batch_names(publications) {
            tables.push(self.tables_for_app(name, expected).await?);
        }
        Ok(tables)
    }
}

#[cfg(feature = "postgres")]
#[async_trait]
impl AppConnection for sqlx::PgConnection {
    async fn write_publication(
        &mut self,
        store: &SqlStore,
        publication: &Publication,
        now: DateTime<Utc>,
    ) -> Result<Published, StoreError> {
        let t = store
            .tables_for_app(&publication.event.replicable_name, Dialect::Postgres)
            .await?;
        let prefix = store.framework_prefix();
        publish_on!(store, &mut *self, &prefix, &t, publication, now)
    }

    async fn write_publications(
        &mut self,
        store: &SqlStore,
        publications: &[Publication],
        now: DateTime<Utc>,
    ) -> Result<Vec<Published>, StoreError> {
        let tables = store
            .batch_tables_for_app(publications, Dialect::Postgres)
            .await?;
        let prefix = store.framework_prefix();
        publish_batch_on!(store, &mut *self, &prefix, &tables, publications, now)
    }
}

#[cfg(feature = "sqlite")]
#[async_trait]
impl AppConnection for sqlx::SqliteConnection {
    async fn write_publication(
        &mut self,
        store: &SqlStore,
        publication: &Publication,
        now: DateTime<Utc>,
    ) -> Result<Published, StoreError> {
        let t = store
            .tables_for_app(&publication.event.replicable_name, Dialect::Sqlite)
            .await?;
        publish_on!(store, &mut *self, "", &t, publication, now)
    }

    async fn write_publications(
        &mut self,
        store: &SqlStore,
        publications: &[Publication],
        now: DateTime<Utc>,
    ) -> Result<Vec<Published>, StoreError> {
        let tables = store
            .batch_tables_for_app(publications, Dialect::Sqlite)
            .await?;
        publish_batch_on!(store, &mut *self, "", &tables, publications, now)
    }
}

#[async_trait]
impl AppConnection for sqlx::AnyConnection {
    async fn write_publication(
        &mut self,
        store: &SqlStore,
        publication: &Publication,
        now: DateTime<Utc>,
    ) -> Result<Published, StoreError> {
        let dialect = match self.backend_name() {
            "PostgreSQL" => Dialect::Postgres,
            _ => Dialect::Sqlite,
        };
        let t = store
            .tables_for_app(&publication.event.replicable_name, dialect)
            .await?;
        let prefix = store.framework_prefix();
        publish_on!(store, &mut *self, &prefix, &t, publication, now)
    }

    async fn write_publications(
        &mut self,
        store: &SqlStore,
        publications: &[Publication],
        now: DateTime<Utc>,
    ) -> Result<Vec<Published>, StoreError> {
        let dialect = match self.backend_name() {
            "PostgreSQL" => Dialect::Postgres,
            _ => Dialect::Sqlite,
        };
        let tables = store.batch_tables_for_app(publications, dialect).await?;
        let prefix = store.framework_prefix();
        publish_batch_on!(store, &mut *self, &prefix, &tables, publications, now)
    }
}
