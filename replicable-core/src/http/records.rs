//! Records: one by id, ids in a range, a record's verification row, and both for a batch of
//! ids (what a secondary reads for each batch of syncs or verifications it claims).

use axum::Json;
use axum::extract::State as Extract;

use super::error::extract::{Path, Query};
use axum::http::HeaderMap;

use super::auth::authorize;
use super::{ApiError, State};
use crate::domain::resource::Resource;
use crate::domain::verification::VerificationRecord;
use crate::link::http::token::Scope;
use crate::link::http::wire::{BatchQuery, IdsQuery, MAX_IDS_PER_REQUEST};
use crate::storage::StoredRecord;

/// `GET v1/records/{name}/{id}`.
pub(crate) async fn record(
    Extract(state): Extract<State>,
    headers: HeaderMap,
    Path((name, id)): Path<(String, i64)>,
) -> Result<Json<StoredRecord>, ApiError> {
    let scope = Scope::Record {
        replicable: name.clone(),
        id,
    };
    authorize(&state, &headers, &scope)?;
    let what = format!("{name} {id}");
    state
        .site
        .records()
        .get(&name, id)
        .await
        .map_err(ApiError::store(&what))?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(what))
}

/// `GET v1/records/{name}?from=A&to=B&limit=M`.
pub(crate) async fn ids(
    Extract(state): Extract<State>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(query): Query<IdsQuery>,
) -> Result<Json<Vec<i64>>, ApiError> {
    let scope = Scope::Ids {
        replicable: name.clone(),
    };
    authorize(&state, &headers, &scope)?;
    let limit = query.limit.clamp(1, MAX_IDS_PER_REQUEST);
    let range = query.from..query.to;
    let ids = state
        .site
        .records()
        .ids(&name, range.clone(), limit)
        .await
        .map_err(ApiError::store(format!("{name} ids in {range:?}")))?;
    Ok(Json(ids))
}

/// `GET v1/verification/{name}/{id}`.
pub(crate) async fn verification(
    Extract(state): Extract<State>,
    headers: HeaderMap,
    Path((name, id)): Path<(String, i64)>,
) -> Result<Json<VerificationRecord>, ApiError> {
    let scope = Scope::Verification {
        replicable: name.clone(),
        id,
    };
    authorize(&state, &headers, &scope)?;
    let what = format!("the verification row of {name} {id}");
    state
        .site
        .verification_store()
        .get(&name, id)
        .await
        .map_err(ApiError::store(&what))?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(what))
}

/// `GET v1/records/{name}/batch?ids=1,2,3`: the records of those ids that exist (at most
/// [`MAX_BATCH_IDS`](crate::link::http::wire::MAX_BATCH_IDS) per request).
pub(crate) async fn records_batch(
    Extract(state): Extract<State>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(query): Query<BatchQuery>,
) -> Result<Json<Vec<StoredRecord>>, ApiError> {
    let ids = query.parse().map_err(ApiError::bad_request)?;
    let scope = Scope::Records {
        replicable: name.clone(),
        ids: ids.clone(),
    };
    authorize(&state, &headers, &scope)?;
    let records = state
        .site
        .records()
        .get_many(&name, &ids)
        .await
        .map_err(ApiError::store(format!("{} {name} records", ids.len())))?;
    Ok(Json(records))
}

/// `GET v1/verification/{name}/batch?ids=1,2,3`: the verification rows of those ids that
/// exist.
pub(crate) async fn verifications_batch(
    Extract(state): Extract<State>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(query): Query<BatchQuery>,
) -> Result<Json<Vec<VerificationRecord>>, ApiError> {
    let ids = query.parse().map_err(ApiError::bad_request)?;
    let scope = Scope::Verifications {
        replicable: name.clone(),
        ids: ids.clone(),
    };
    authorize(&state, &headers, &scope)?;
    let rows = state
        .site
        .verification_store()
        .get_many(&name, &ids)
        .await
        .map_err(ApiError::store(format!(
            "the checksums of {} {name} records",
            ids.len()
        )))?;
    Ok(Json(rows))
}

/// Refuses a resource request for anything but the record's own resource: the blob key or
/// repository path a secondary asks for must be the one the record names (a token scoped to
/// one record cannot read another record's files). A record that does not exist is the API's
/// 404, so the secondary records it as missing on the primary.
pub(crate) async fn ensure_record_owns(
    state: &State,
    name: &str,
    id: i64,
    requested: &Resource,
) -> Result<(), ApiError> {
    let descriptor = match crate::descriptor::find_replicable(name) {
        Ok(Some(descriptor)) => descriptor,
        Ok(None) => return Err(ApiError::not_found(format!("replicable `{name}`"))),
        Err(e) => return Err(ApiError::failed(format!("replicable `{name}`"), e)),
    };
    let what = format!("{name} {id}");
    let record = state
        .site
        .records()
        .get(name, id)
        .await
        .map_err(ApiError::store(&what))?
        .ok_or_else(|| ApiError::not_found(&what))?;
    let own = descriptor
        .resource_of(&record.body)
        .map_err(|reason| ApiError::failed(&what, reason))?;
    if &own != requested {
        tracing::warn!(
            asked = %requested,
            reason = %format_args!("not the resource of {what}"),
            "refused a request to the primary's API"
        );
        return Err(ApiError {
            status: axum::http::StatusCode::FORBIDDEN,
            code: crate::link::http::wire::CODE_FORBIDDEN,
            message: format!("{requested} is not the resource of {what}"),
        });
    }
    Ok(())
}
