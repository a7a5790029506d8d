//! The event log role, and the one-transaction publication of a record's write with its event.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::error::StoreError;
use crate::domain::event::{EventId, LogEntry, NewEvent};
use crate::domain::verification::VerificationRecord;

/// A record's write on the primary and the event announcing it, to be stored together.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    /// The event. For `created` and `updated`, its payload's `record` is the body written to the
    /// catalogue, and its `generation` is set by the store to the record's new generation.
    pub event: NewEvent,
    /// Whether the replicable keeps verification rows on the primary.
    pub verifiable: bool,
    /// Whether the replicable's resource may change after it was created. Re-publishing
    /// `created` for an immutable resource whose checksum succeeded keeps that checksum.
    pub mutable: bool,
    /// Whether the record's body goes into the catalogue (`<name>_records`). `false` for a
    /// replicable read from the application's own table (a
    /// [`RecordSource`](crate::storage::RecordSource)): the row is the application's, and only
    /// its generation is kept (`<name>_generations`, bumped on `created` / `updated`, kept on
    /// `deleted` so that a re-used id never starts below what a secondary may hold).
    pub in_catalogue: bool,
}

/// What a [`Publication`] stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The event's id.
    pub event_id: EventId,
    /// The record's generation after the write (`created` / `updated`).
    pub generation: Option<i64>,
}

/// A primary verification to record: its row, moved by the verifier to succeeded or failed, and
/// for a succeeded checksum the `checksum_succeeded` event announcing it.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletedVerification {
    /// The row as the verifier leaves it; written only if the stored row still has
    /// `row.version` (see [`VerificationStore::update`](crate::storage::VerificationStore::update)).
    pub row: VerificationRecord,
    /// The event to append if, and only if, the row is written.
    pub event: Option<NewEvent>,
}

/// The primary's append-only log of replication events.
#[async_trait]
pub trait EventLog: Send + Sync + std::fmt::Debug {
    /// Appends events in order, durably, before returning their ids (strictly increasing).
    /// All or none are appended. `now` is stored as each event's creation time.
    ///
    /// Appends that run at the same time may commit out of id order (an id becomes readable
    /// after a greater one): readers must not assume that an id below the greatest they have
    /// read will never appear. The log cursor tracks such gaps.
    async fn append(
        &self,
        events: &[NewEvent],
        now: DateTime<Utc>,
    ) -> Result<Vec<EventId>, StoreError>;

    /// Entries with `id > after`, ascending, at most `limit`. A row that cannot be read back
    /// is returned as [`LogEntry::Damaged`] in its place: one damaged row never fails the read.
    async fn read_after(&self, after: EventId, limit: usize) -> Result<Vec<LogEntry>, StoreError>;

    /// The newest event's id, if any.
    async fn last_event_id(&self) -> Result<Option<EventId>, StoreError>;

    /// Retention: deletes up to `limit` of the oldest events created before `before`. Returns
    /// how many were deleted. Ids are never reused, so a cursor past them is unaffected.
    async fn delete_older_than(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, StoreError>;

    /// Retention by consumption: deletes up to `limit` of the oldest events with
    /// `id <= up_to` (every secondary has processed them). Returns how many were deleted. A log
    /// that cannot do it deletes nothing (the default), which is always safe.
    async fn delete_up_to(&self, up_to: EventId, limit: usize) -> Result<u64, StoreError> {
        let _ = (up_to, limit);
        Ok(0)
    }

    /// Stores a record's write, its verification row and its event in one transaction, for a
    /// log that shares its database with the site's record and verification stores (see
    /// [`same_database`](crate::storage::same_database)):
    /// - `created` / `updated`: the record is upserted into the catalogue (its generation
    ///   bumped, and written into the event's payload); if the replicable is verifiable, its
    ///   verification row goes to pending, except when `created` is re-published for an
    ///   immutable resource whose checksum succeeded: that row is kept as it is;
    /// - `deleted`: the record and its verification row are removed.
    ///
    /// If the event cannot be written, nothing is. Returns `None` when this log cannot do it
    /// (the default): the caller then writes the three one after the other.
    async fn publish(
        &self,
        publication: &Publication,
        now: DateTime<Utc>,
    ) -> Result<Option<Published>, StoreError> {
        let _ = (publication, now);
        Ok(None)
    }

    /// Stores many publications in one transaction, in order, as [`publish`](Self::publish)
    /// stores one: all of them or none. Their events get ascending ids, in the order given
    /// (consecutive unless other appends run at the same time);
    /// a record published twice in one batch is written twice (its generation bumped each
    /// time), as two single publishes would. The publications may be of several replicables
    /// and kinds. Returns `None` when this log cannot do it (the default), or cannot do it for
    /// these publications (the in-memory log for a record source's rows): nothing was written
    /// then.
    async fn publish_batch(
        &self,
        publications: &[Publication],
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<Published>>, StoreError> {
        let _ = (publications, now);
        Ok(None)
    }

    /// Records finished primary verifications of replicable `name` in one transaction, for a
    /// log that shares its database with the site's verification store: each row is written
    /// if the stored row still has its version (a compare-and-set, as
    /// [`VerificationStore::update`](crate::storage::VerificationStore::update)), and the
    /// events of the rows written are appended, in the order given, with ascending ids. An
    /// event is therefore stored exactly when the checksum it announces is; when there is an
    /// event the commit waits for the disk, as every append does. Returns, for each row,
    /// whether it was written, or `None` when this log cannot do it (the default): the caller
    /// then writes the rows one by one and appends the events of those written.
    async fn complete_verifications(
        &self,
        name: &str,
        completed: &[CompletedVerification],
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<bool>>, StoreError> {
        let _ = (name, completed, now);
        Ok(None)
    }

    /// A signal that changes after each append this handle committed, in this process (single
    /// and batch publishes, appends, recorded verifications), so that a waiter beside it (the
    /// primary's engine, an in-process link, the HTTP API's long-poll) reads a new event at
    /// once instead of at its next look. Appends made elsewhere (another process, an
    /// application's own transaction) do not change it: waiters still look every so often.
    /// `None` (the default): the log cannot tell, and waiters only look.
    fn appends(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// The SQL store behind this log, if it is one: what publishing in the application's own
    /// transaction needs (its engine, schema and tables).
    #[cfg(feature = "sql")]
    fn sql_store(&self) -> Option<&crate::storage::sql::SqlStore> {
        None
    }
}
