//! Record sources: where one replicable's records are read from (and, on a secondary, written
//! to) when they live in the application's own table rather than in the framework's catalogue,
//! and [`RoutedRecords`], the site's record store that sends each replicable's reads and writes
//! to its source, the catalogue serving every other replicable.
//!
//! Everything that reads a site's records goes through its record store: the links (the
//! in-process one and the HTTP server), backfill, verification, the operator CLI. Routing there
//! makes a source visible to all of them.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;

use super::{RecordStore, StoredRecord};
use crate::domain::error::StoreError;

/// The records of one replicable in the application's own table.
///
/// The primary reads through the three required methods: a record by id (its row as JSON, with
/// its generation), ids in a range, and the count. A row no publish has touched (written by
/// bulk SQL, a migration, another service) has generation 0; publishing bumps it to 1, then on
/// by one each time, so a published change is always newer than any copy a secondary may hold.
///
/// A source a secondary writes its copies into also implements
/// [`put_unless_older`](Self::put_unless_older) and [`delete`](Self::delete); by default they
/// are refused. [`SqlTable`](crate::storage::sql::SqlTable) is a ready implementation for a
/// table in the site's SQL database.
#[async_trait]
pub trait RecordSource: Send + Sync + std::fmt::Debug {
    /// The record's row and generation; `None` if there is no row.
    async fn get(&self, model_id: i64) -> Result<Option<StoredRecord>, StoreError>;

    /// Ids in `range`, ascending, at most `limit`.
    async fn ids(&self, range: Range<i64>, limit: usize) -> Result<Vec<i64>, StoreError>;

    /// How many rows there are: the primary's status and metrics read it on a period. Counting
    /// the application's table is the source's business: [`SqlTable`](crate::storage::sql::SqlTable)
    /// runs `COUNT(*)` on it, a scan of the table (the framework keeps counts as rows change for
    /// its own tables only: it adds no trigger to a table it does not own).
    async fn count(&self) -> Result<u64, StoreError>;

    /// Writes a copy received from the primary (its row and generation) unless the copy held
    /// has a newer generation (an equal one is rewritten, which repairs a damaged row). Returns
    /// whether it was written.
    async fn put_unless_older(&self, record: &StoredRecord) -> Result<bool, StoreError> {
        Err(self.refused("write a copy", record.model_id))
    }

    /// Removes the row (and its generation). Returns whether it existed.
    async fn delete(&self, model_id: i64) -> Result<bool, StoreError> {
        Err(self.refused("delete", model_id))
    }

    /// Writes the row from a record's serialized fields as the application would, leaving its
    /// generation alone: what the shared test suite does for "the app writes a record".
    async fn write(&self, model_id: i64, body: &serde_json::Value) -> Result<(), StoreError> {
        let _ = body;
        Err(self.refused("write", model_id))
    }

    /// The error of an operation this source does not do.
    fn refused(&self, operation: &'static str, model_id: i64) -> StoreError {
        StoreError::Backend {
            store: format!("{self:?}"),
            operation,
            reason: format!("record {model_id}: this record source is read-only"),
        }
    }
}

/// A site's record store with some replicables read from (and written to) their own
/// [`RecordSource`], every other one from the catalogue.
#[derive(Debug, Clone)]
pub struct RoutedRecords {
    catalogue: Arc<dyn RecordStore>,
    sources: HashMap<String, Arc<dyn RecordSource>>,
}

impl RoutedRecords {
    /// The catalogue with `sources` by replicable name.
    pub fn new(
        catalogue: Arc<dyn RecordStore>,
        sources: HashMap<String, Arc<dyn RecordSource>>,
    ) -> Self {
        Self { catalogue, sources }
    }

    /// The source of replicable `name`, if it has one.
    pub fn source(&self, name: &str) -> Option<&Arc<dyn RecordSource>> {
        self.sources.get(name)
    }

    /// The catalogue every other replicable uses.
    pub fn catalogue(&self) -> &Arc<dyn RecordStore> {
        &self.catalogue
    }
}

#[async_trait]
impl RecordStore for RoutedRecords {
    async fn upsert(
        &self,
        name: &str,
        model_id: i64,
        body: &serde_json::Value,
    ) -> Result<i64, StoreError> {
        match self.sources.get(name) {
            // The row is the application's; only a publication bumps its generation, in the
            // site's SQL database.
            Some(source) => Err(StoreError::Backend {
                store: format!("{source:?}"),
                operation: "upsert record",
                reason: format!(
                    "{name} {model_id} lives in the application's table: publish it on a site \
                     whose event log is the SQL database that holds the table"
                ),
            }),
            None => self.catalogue.upsert(name, model_id, body).await,
        }
    }

    async fn put_unless_older(
        &self,
        name: &str,
        record: &StoredRecord,
    ) -> Result<bool, StoreError> {
        match self.sources.get(name) {
            Some(source) => source.put_unless_older(record).await,
            None => self.catalogue.put_unless_older(name, record).await,
        }
    }

    async fn get(&self, name: &str, model_id: i64) -> Result<Option<StoredRecord>, StoreError> {
        match self.sources.get(name) {
            Some(source) => source.get(model_id).await,
            None => self.catalogue.get(name, model_id).await,
        }
    }

    async fn get_many(&self, name: &str, ids: &[i64]) -> Result<Vec<StoredRecord>, StoreError> {
        match self.sources.get(name) {
            Some(source) => {
                let mut found = Vec::with_capacity(ids.len());
                for &id in ids {
                    found.extend(source.get(id).await?);
                }
                Ok(found)
            }
            None => self.catalogue.get_many(name, ids).await,
        }
    }

    async fn delete(&self, name: &str, model_id: i64) -> Result<bool, StoreError> {
        match self.sources.get(name) {
            Some(source) => source.delete(model_id).await,
            None => self.catalogue.delete(name, model_id).await,
        }
    }

    async fn ids(
        &self,
        name: &str,
        range: Range<i64>,
        limit: usize,
    ) -> Result<Vec<i64>, StoreError> {
        match self.sources.get(name) {
            Some(source) => source.ids(range, limit).await,
            None => self.catalogue.ids(name, range, limit).await,
        }
    }

    async fn count(&self, name: &str) -> Result<u64, StoreError> {
        match self.sources.get(name) {
            Some(source) => source.count().await,
            None => self.catalogue.count(name).await,
        }
    }
}
