//! The event log role.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::StoreError;
use crate::event::{EventId, NewEvent, StoredEvent};

/// The primary's append-only log of replication events.
#[async_trait]
pub trait EventLog: Send + Sync + std::fmt::Debug {
    /// Appends events in order, durably, before returning their ids (strictly increasing).
    /// All or none are appended.
    async fn append(
        &self,
        events: &[NewEvent],
        now: DateTime<Utc>,
    ) -> Result<Vec<EventId>, StoreError>;

    /// Events with `id > after`, ascending, at most `limit`.
    async fn read_after(
        &self,
        after: EventId,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// The newest event's id, if any.
    async fn last_event_id(&self) -> Result<Option<EventId>, StoreError>;
}
