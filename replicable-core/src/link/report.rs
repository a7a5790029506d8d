//! What a secondary reports of itself to its primary, on a period.

use serde::{Deserialize, Serialize};

use crate::domain::event::EventId;

/// A secondary's status, as it reports it to its primary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteStatusReport {
    /// The last event up to which the secondary's log cursor processed every event: its
    /// position, or just below its oldest open id gap (an id it stepped over that may still
    /// appear), so that the primary's retention never deletes an event the cursor may still
    /// read.
    pub cursor: Option<EventId>,
    /// Registry rows `pending`, all replicables together.
    pub pending: u64,
    /// Rows `started`.
    pub started: u64,
    /// Rows `synced`.
    pub synced: u64,
    /// Rows `failed`.
    pub failed: u64,
    /// Rows verified.
    pub verified: u64,
    /// How many events the cursor is behind the primary's newest, if known.
    pub events_behind: Option<u64>,
    /// Seconds between the primary's newest event and the cursor's, if known.
    pub lag_seconds: Option<f64>,
    /// The secondary's software version.
    pub version: String,
}
