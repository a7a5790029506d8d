//! Replication events: what the primary publishes and secondaries consume.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::resource::Resource;

/// An event's position in the event log. Ids strictly increase.
pub type EventId = i64;

/// What happened to a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The record and its resource were created.
    Created,
    /// The record or its resource changed (mutable data types only).
    Updated,
    /// The record was deleted.
    Deleted,
    /// The primary computed the record's checksum.
    ChecksumSucceeded,
}

impl EventKind {
    /// All kinds.
    pub const ALL: [EventKind; 4] = [
        Self::Created,
        Self::Updated,
        Self::Deleted,
        Self::ChecksumSucceeded,
    ];

    /// The stored name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
            Self::ChecksumSucceeded => "checksum_succeeded",
        }
    }

    /// The kind of a stored name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What an event carries: enough for a consumer to act after the record is gone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventPayload {
    /// The record's id.
    pub model_id: i64,
    /// Where the record's resource lives.
    pub resource: Resource,
    /// The record's generation on the primary after the write (created / updated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The serialized record (created / updated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<serde_json::Value>,
    /// The primary's checksum (checksum_succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

/// An event to append to the log.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The replicable the event is about.
    pub replicable_name: String,
    /// What happened.
    pub kind: EventKind,
    /// The details.
    pub payload: EventPayload,
}

impl NewEvent {
    /// The event as the log stores it.
    pub fn payload_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.payload).expect("event payloads always serialize")
    }
}

/// An event as the log stores it: the kind and payload are kept raw so that an event this build
/// cannot read is still delivered, reported and skipped instead of stopping the cursor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Position in the log.
    pub id: EventId,
    /// The replicable the event is about.
    pub replicable_name: String,
    /// The event kind's name.
    pub event_name: String,
    /// The payload as written.
    pub payload: serde_json::Value,
    /// When it was appended.
    pub created_at: DateTime<Utc>,
}

/// A row of the event log that cannot be read back as an event: a column holds a value of the
/// wrong type, bytes that are not UTF-8, a `NULL`, or a timestamp out of range. The log returns
/// it in its place instead of failing the whole read, so that the log cursor records it as
/// skipped and moves on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DamagedEvent {
    /// Position in the log.
    pub id: EventId,
    /// The replicable name, as far as it could be read.
    pub replicable_name: Option<String>,
    /// The kind name, as far as it could be read.
    pub event_name: Option<String>,
    /// What is wrong with the row.
    pub reason: String,
}

impl DamagedEvent {
    /// The skipped-event record of this row.
    pub fn skipped(&self, skipped_at: DateTime<Utc>) -> SkippedEvent {
        SkippedEvent {
            event_id: self.id,
            replicable_name: self.replicable_name.clone().unwrap_or_default(),
            event_name: self.event_name.clone().unwrap_or_default(),
            reason: format!("event {} is damaged: {}", self.id, self.reason),
            skipped_at,
        }
    }
}

/// One entry of the event log as read back: an event, or a row that cannot be read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "entry", rename_all = "snake_case")]
pub enum LogEntry {
    /// A readable event (its payload may still fail to decode: see [`Event`]'s `TryFrom`).
    Event(StoredEvent),
    /// A row that cannot be read.
    Damaged(DamagedEvent),
}

impl LogEntry {
    /// The entry's position in the log.
    pub fn id(&self) -> EventId {
        match self {
            Self::Event(e) => e.id,
            Self::Damaged(d) => d.id,
        }
    }

    /// The event, if the row could be read.
    pub fn event(&self) -> Option<&StoredEvent> {
        match self {
            Self::Event(e) => Some(e),
            Self::Damaged(_) => None,
        }
    }

    /// The event, or `None` for a damaged row.
    pub fn into_event(self) -> Option<StoredEvent> {
        match self {
            Self::Event(e) => Some(e),
            Self::Damaged(_) => None,
        }
    }
}

impl From<StoredEvent> for LogEntry {
    fn from(event: StoredEvent) -> Self {
        Self::Event(event)
    }
}

impl From<DamagedEvent> for LogEntry {
    fn from(damaged: DamagedEvent) -> Self {
        Self::Damaged(damaged)
    }
}

/// A decoded event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Position in the log.
    pub id: EventId,
    /// The replicable the event is about.
    pub replicable_name: String,
    /// What happened.
    pub kind: EventKind,
    /// The details.
    pub payload: EventPayload,
    /// When it was appended.
    pub created_at: DateTime<Utc>,
}

/// An event that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {event_id} ({replicable_name}/{event_name}) is malformed: {reason}")]
pub struct MalformedEvent {
    /// Position in the log.
    pub event_id: EventId,
    /// The replicable name it carries.
    pub replicable_name: String,
    /// The kind name it carries.
    pub event_name: String,
    /// What is wrong with it.
    pub reason: String,
}

impl TryFrom<StoredEvent> for Event {
    type Error = MalformedEvent;

    fn try_from(raw: StoredEvent) -> Result<Self, Self::Error> {
        let malformed = |reason: String| MalformedEvent {
            event_id: raw.id,
            replicable_name: raw.replicable_name.clone(),
            event_name: raw.event_name.clone(),
            reason,
        };
        let kind = EventKind::from_name(&raw.event_name)
            .ok_or_else(|| malformed(format!("unknown event kind `{}`", raw.event_name)))?;
        let payload: EventPayload = serde_json::from_value(raw.payload.clone())
            .map_err(|e| malformed(format!("payload does not decode: {e}")))?;
        Ok(Event {
            id: raw.id,
            replicable_name: raw.replicable_name,
            kind,
            payload,
            created_at: raw.created_at,
        })
    }
}

impl TryFrom<LogEntry> for Event {
    type Error = MalformedEvent;

    fn try_from(entry: LogEntry) -> Result<Self, Self::Error> {
        match entry {
            LogEntry::Event(raw) => Event::try_from(raw),
            LogEntry::Damaged(d) => Err(MalformedEvent {
                event_id: d.id,
                replicable_name: d.replicable_name.unwrap_or_default(),
                event_name: d.event_name.unwrap_or_default(),
                reason: format!("the stored row is damaged: {}", d.reason),
            }),
        }
    }
}

/// A malformed event the log cursor skipped, kept for an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedEvent {
    /// Position in the log.
    pub event_id: EventId,
    /// The replicable name it carries.
    pub replicable_name: String,
    /// The kind name it carries.
    pub event_name: String,
    /// Why it was skipped.
    pub reason: String,
    /// When it was skipped.
    pub skipped_at: DateTime<Utc>,
}

/// Event ids the log cursor stepped over: `first..=last` could not be read when an event after
/// them could. On PostgreSQL, transactions that publish at once commit in any order, so such an
/// id is usually an event whose transaction had not committed yet (or one that rolled back).
/// The cursor reads the ids of an open gap again, and consumes any that appear, until
/// `log_cursor::GAP_TIMEOUT` after `noticed_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorGap {
    /// The first id of the gap.
    pub first: EventId,
    /// The last id of the gap (`>= first`).
    pub last: EventId,
    /// When the cursor noticed it.
    pub noticed_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(event_name: &str, payload: serde_json::Value) -> StoredEvent {
        StoredEvent {
            id: 3,
            replicable_name: "package_file".into(),
            event_name: event_name.into(),
            payload,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn payload_round_trips_through_the_stored_form() {
        let new = NewEvent {
            replicable_name: "package_file".into(),
            kind: EventKind::Deleted,
            payload: EventPayload {
                model_id: 4,
                resource: Resource::Blob { key: "a/b".into() },
                generation: None,
                record: None,
                checksum: None,
            },
        };
        let event = Event::try_from(raw("deleted", new.payload_json())).unwrap();
        assert_eq!(event.kind, EventKind::Deleted);
        assert_eq!(event.payload, new.payload);
        assert_eq!(
            new.payload_json(),
            serde_json::json!({"model_id": 4, "resource": {"type": "blob", "key": "a/b"}})
        );
    }

    #[test]
    fn unknown_kind_is_malformed_and_named() {
        let err = Event::try_from(raw("exploded", serde_json::json!({}))).unwrap_err();
        assert_eq!(err.event_id, 3);
        assert!(
            err.reason.contains("unknown event kind `exploded`"),
            "{err}"
        );
    }

    #[test]
    fn bad_payload_is_malformed() {
        let err =
            Event::try_from(raw("created", serde_json::json!({"model_id": "x"}))).unwrap_err();
        assert!(
            err.to_string()
                .contains("event 3 (package_file/created) is malformed"),
            "{err}"
        );
    }

    #[test]
    fn log_entries_round_trip_through_serde_and_name_their_id() {
        let entries = vec![
            LogEntry::from(raw("created", serde_json::json!({}))),
            LogEntry::from(DamagedEvent {
                id: 4,
                replicable_name: Some("package_file".into()),
                event_name: None,
                reason: "column `event_name`: NULL".into(),
            }),
        ];
        assert_eq!(entries.iter().map(LogEntry::id).collect::<Vec<_>>(), [3, 4]);
        let json = serde_json::to_string(&entries).unwrap();
        let back: Vec<LogEntry> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, entries);
        let LogEntry::Damaged(damaged) = &entries[1] else {
            unreachable!()
        };
        let skipped = damaged.skipped(Utc::now());
        assert_eq!(skipped.event_id, 4);
        assert_eq!(skipped.event_name, "");
        assert!(
            skipped
                .reason
                .contains("event 4 is damaged: column `event_name`")
        );
    }

    #[test]
    fn kind_names_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::from_name(k.name()), Some(k));
        }
    }
}
