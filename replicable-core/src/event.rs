//! Replication events: what the primary publishes and secondaries consume.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::Resource;

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
    fn kind_names_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::from_name(k.name()), Some(k));
        }
    }
}
