//! What the primary's HTTP API and [`HttpPrimary`](super::HttpPrimary) agree on: paths, query
//! parameters, error bodies and headers.
//!
//! Every path is relative to the API's base URL (where the application nested
//! [`replicable_core::http::router`](../../../http/fn.router.html)):
//!
//! | request | path | token scope |
//! |---|---|---|
//! | events after a cursor | `GET v1/events?after=N&limit=M` | `events` |
//! | the newest event id | `GET v1/events/last` | `events` |
//! | ... once the log holds an event after N | `GET v1/events/last?after=N&wait_ms=M` | `events` |
//! | a record | `GET v1/records/{name}/{id}` | `record` |
//! | record ids in a range | `GET v1/records/{name}?from=A&to=B&limit=M` | `ids` |
//! | a verification row | `GET v1/verification/{name}/{id}` | `verification` |
//! | the records of up to 100 ids (those that exist) | `GET v1/records/{name}/batch?ids=1,2,3` | `records` (naming the ids) |
//! | their verification rows | `GET v1/verification/{name}/batch?ids=1,2,3` | `verifications` (naming the ids) |
//! | a blob's bytes (`Range` honoured) | `GET v1/blobs/{name}/{id}?key=K` | `blob` |
//! | a repository (git smart HTTP) | `v1/git/{name}/{id}/{path}/info/refs`, `.../git-upload-pack` | `repository` |
//! | a secondary's status | `POST v1/status` | `status` |

use serde::{Deserialize, Serialize};

use crate::domain::event::EventId;

/// The most events one request returns (a larger `limit` is capped).
pub const MAX_EVENTS_PER_REQUEST: usize = 1000;

/// The most ids one request returns (a larger `limit` is capped).
pub const MAX_IDS_PER_REQUEST: usize = 10_000;

/// Ids in one `GET v1/records/{name}/batch` or `v1/verification/{name}/batch` request (the
/// token names each, and the query carries them: a hundred keep both well under the header and
/// URL sizes proxies accept).
pub const MAX_BATCH_IDS: usize = 100;

/// `GET v1/records/{name}/batch` and `v1/verification/{name}/batch` query: `ids=1,2,3`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchQuery {
    /// The ids, comma-separated.
    pub ids: String,
}

impl BatchQuery {
    /// The query of `ids`.
    pub fn of(ids: &[i64]) -> Self {
        Self {
            ids: ids.iter().map(i64::to_string).collect::<Vec<_>>().join(","),
        }
    }

    /// The ids asked for, or why they cannot be read.
    pub fn parse(&self) -> Result<Vec<i64>, String> {
        let ids = self
            .ids
            .split(',')
            .filter(|part| !part.is_empty())
            .map(|part| {
                part.trim()
                    .parse::<i64>()
                    .map_err(|e| format!("`{part}` is not an id: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if ids.len() > MAX_BATCH_IDS {
            return Err(format!(
                "{} ids asked for; at most {MAX_BATCH_IDS} per request",
                ids.len()
            ));
        }
        Ok(ids)
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable: one of the `CODE_*` constants.
    pub code: String,
    /// For people.
    pub message: String,
}

/// 404: the primary has no such record, row, blob or repository.
pub const CODE_NOT_FOUND: &str = "not_found";
/// 401: no token, an invalid one, or an expired one.
pub const CODE_UNAUTHORIZED: &str = "unauthorized";
/// 403: a valid token for something else.
pub const CODE_FORBIDDEN: &str = "forbidden";
/// 400 / 422: the request names something the primary refuses (a key escaping its root...).
pub const CODE_REFUSED: &str = "refused";
/// 500 / 503: the primary failed reading its stores.
pub const CODE_FAILED: &str = "failed";
/// 412: the blob changed since the transfer began (resuming with `If-Match`).
pub const CODE_CHANGED: &str = "changed";

/// `GET v1/events` query.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventsQuery {
    /// Events with ids greater than this.
    pub after: EventId,
    /// At most this many (capped at [`MAX_EVENTS_PER_REQUEST`]).
    pub limit: usize,
}

/// `GET v1/events/last` query: with both fields, the primary answers as soon as its log holds
/// an event with `id > after`, or after `wait_ms` milliseconds (capped at [`MAX_EVENT_WAIT`]);
/// without them, at once.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LastEventQuery {
    /// Wait for an event after this id.
    pub after: Option<EventId>,
    /// For at most this many milliseconds.
    pub wait_ms: Option<u64>,
}

/// The longest the primary holds a `GET v1/events/last` waiting for an event: short enough
/// that a stopping server's graceful shutdown does not wait long for it.
pub const MAX_EVENT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// `GET v1/events/last` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastEvent {
    /// The newest event's id.
    pub last: Option<EventId>,
}

/// `GET v1/records/{name}` query.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdsQuery {
    /// First id of the range (inclusive).
    pub from: i64,
    /// End of the range (exclusive).
    pub to: i64,
    /// At most this many (capped at [`MAX_IDS_PER_REQUEST`]).
    pub limit: usize,
}

/// `GET v1/blobs/{name}/{id}` query.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobQuery {
    /// The blob's key.
    pub key: String,
}

/// A secondary's status report (`POST v1/status`).
pub use crate::link::SiteStatusReport as StatusReport;

/// Path segments percent-encoded so that any name, key or path stays one segment (a
/// repository path keeps its `/`s).
pub(crate) fn encode_segment(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/');
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
