//! The event log: events after a cursor (batched, the batch capped), and the newest id.

use axum::Json;
use axum::extract::{Query, State as Extract};
use axum::http::HeaderMap;

use super::auth::authorize;
use super::{ApiError, State};
use crate::domain::event::LogEntry;
use crate::link::http::token::Scope;
use crate::link::http::wire::{EventsQuery, LastEvent, MAX_EVENTS_PER_REQUEST};

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

/// `GET v1/events/last`.
pub(crate) async fn last(
    Extract(state): Extract<State>,
    headers: HeaderMap,
) -> Result<Json<LastEvent>, ApiError> {
    authorize(&state, &headers, &Scope::Events)?;
    let last = state
        .site
        .event_log()
        .last_event_id()
        .await
        .map_err(ApiError::store("the last event id"))?;
    Ok(Json(LastEvent { last }))
}
