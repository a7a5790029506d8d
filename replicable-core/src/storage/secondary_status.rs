//! The primary's record of its secondaries: the last status report of each, kept in its
//! tracking database.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::event::EventId;

/// A secondary's last status report, as the primary stored it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecondaryStatusRow {
    /// The secondary's name.
    pub secondary: String,
    /// The event its log cursor was at (what event-log retention keeps after).
    pub cursor: Option<EventId>,
    /// The report as it was sent (counts, lag, version).
    pub report: serde_json::Value,
    /// When the primary received it.
    pub received_at: DateTime<Utc>,
}
