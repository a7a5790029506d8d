//! Records as the framework stores them: the primary's catalogue of replicated records, and the
//! database strategy's local copies on a secondary.

use std::ops::Range;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::error::StoreError;

/// A serialized record with its generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRecord {
    /// The record's id.
    pub model_id: i64,
    /// Bumped on every write on the primary; a secondary's copy is up to date when equal.
    pub generation: i64,
    /// The record, serialized with serde.
    pub body: serde_json::Value,
}

/// Where a site keeps records.
///
/// On a primary this is the catalogue that `publish_created_event` / `publish_updated_event`
/// write and secondaries read by id and by id range (backfill). A user may plug in an
/// implementation over their own table.
#[async_trait]
pub trait RecordStore: Send + Sync + std::fmt::Debug {
    /// Inserts or replaces a record on the primary, bumping its generation. Returns the new
    /// generation (1 for a new record).
    async fn upsert(
        &self,
        name: &str,
        model_id: i64,
        body: &serde_json::Value,
    ) -> Result<i64, StoreError>;

    /// Writes a copy received from the primary unless the stored copy has a newer generation
    /// (an equal generation is rewritten, which repairs a damaged copy). Returns whether it was
    /// written.
    async fn put_unless_older(&self, name: &str, record: &StoredRecord)
    -> Result<bool, StoreError>;

    /// One record.
    async fn get(&self, name: &str, model_id: i64) -> Result<Option<StoredRecord>, StoreError>;

    /// The records of `ids` that exist, in no particular order. The default reads them one by
    /// one; a SQL store reads them in one statement (the engine reads the inputs of a claimed
    /// batch this way).
    async fn get_many(&self, name: &str, ids: &[i64]) -> Result<Vec<StoredRecord>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        for &id in ids {
            found.extend(self.get(name, id).await?);
        }
        Ok(found)
    }

    /// Removes a record. Returns whether it existed.
    async fn delete(&self, name: &str, model_id: i64) -> Result<bool, StoreError>;

    /// Ids in `range`, ascending, at most `limit`.
    async fn ids(
        &self,
        name: &str,
        range: Range<i64>,
        limit: usize,
    ) -> Result<Vec<i64>, StoreError>;

    /// How many records there are (the primary's status). A SQL store keeps the count of its
    /// catalogue as rows change, so reading it costs the same at any size.
    async fn count(&self, name: &str) -> Result<u64, StoreError>;
}
