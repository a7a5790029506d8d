//! Status reports of the secondaries (`POST v1/status`), stored in the primary's tracking
//! database.

use axum::extract::State as Extract;

use super::error::extract::Json;
use axum::http::{HeaderMap, StatusCode};

use super::auth::authorize;
use super::{ApiError, State};
use crate::link::http::token::Scope;
use crate::link::http::wire::StatusReport;
use crate::storage::SecondaryStatusRow;

/// `POST v1/status`: a secondary's report, stored under the name its token carries.
pub(crate) async fn report(
    Extract(state): Extract<State>,
    headers: HeaderMap,
    Json(report): Json<StatusReport>,
) -> Result<StatusCode, ApiError> {
    let secondary = authorize(&state, &headers, &Scope::Status)?;
    let row = SecondaryStatusRow {
        secondary: secondary.clone(),
        cursor: report.cursor,
        report: serde_json::to_value(&report).map_err(|e| ApiError::failed("the report", e))?,
        received_at: state.site.now(),
    };
    state
        .site
        .registry_store()
        .put_secondary_status(&row)
        .await
        .map_err(ApiError::store(format!(
            "the status of secondary `{secondary}`"
        )))?;
    Ok(StatusCode::NO_CONTENT)
}
