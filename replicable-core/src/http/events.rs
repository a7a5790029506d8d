//! The event log: events after a cursor (batched, the batch capped), and the newest id (at
//! once, or once there is an event after a cursor).

use axum::Json;
use axum::extract::State as Extract;

use super::error::extract::Query;
use axum::http::HeaderMap;

use super::auth::authorize;
use super::{ApiError, State};
use crate::domain::event::LogEntry;
use crate::link::http::token::Scope;
use crate::link::http::wire::{
    EventsQuery, LastEvent, LastEventQuery, MAX_EVENT_WAIT, MAX_EVENTS_PER_REQUEST,
};
use crate::link::{APPENDS_GATHER, EVENT_POLL, wait_on_log};

/// `GET v1/events?after=N&limit=M`.
pub(crate) async fn after(
    Extract(state): Extract<State>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Result<Json<Vec<LogEntry>>, ApiError> {
    authorize(&state, &headers, &Scope::Events)?;
    let limit = query.limit.clamp(1, MAX_EVENTS_PER_REQUEST);
    let entries = state
        .site
        .event_log()
        .read_after(query.after, limit)
        .await
        .map_err(ApiError::store(format!("events after {}", query.after)))?;
    Ok(Json(entries))
}

/// `GET v1/events/last[?after=N&wait_ms=M]`: at once, or as soon as the log holds an event
/// after `N` (at most `M` ms later, capped at [`MAX_EVENT_WAIT`]).
pub(crate) async fn last(
    Extract(state): Extract<State>,
    headers: HeaderMap,
    Query(query): Query<LastEventQuery>,
) -> Result<Json<LastEvent>, ApiError> {
    authorize(&state, &headers, &Scope::Events)?;
    let log = state.site.event_log();
    let last = match (query.after, query.wait_ms) {
        (Some(after), Some(wait_ms)) => {
            let wait = std::time::Duration::from_millis(wait_ms).min(MAX_EVENT_WAIT);
            wait_on_log(log, after, wait, EVENT_POLL, APPENDS_GATHER).await
        }
        _ => log.last_event_id().await,
    }
    .map_err(ApiError::store("the last event id"))?;
    Ok(Json(LastEvent { last }))
}
