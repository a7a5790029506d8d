//! A blob's bytes: streamed from the object store (never whole in memory), with `Range` so an
//! interrupted transfer resumes, `ETag` / `If-Match` so a resumed transfer is of the same
//! object, or a redirect to a presigned URL of the object store.

use axum::body::Body;
use axum::extract::State as Extract;

use super::error::extract::{Path, Query};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use object_store::{GetOptions, GetRange, ObjectStoreExt};

use super::auth::authorize;
use super::{ApiError, State};
use crate::domain::blob_key::object_path;
use crate::domain::failure::shorten_name;
use crate::domain::resource::Resource;
use crate::link::http::token::Scope;
use crate::link::http::wire::{self, BlobQuery};

/// `bytes=N-` or `bytes=N-M` (inclusive). Anything else is not served.
fn parse_range(value: &str) -> Option<GetRange> {
    let spec = value.trim().strip_prefix("bytes=")?;
    let (start, end) = spec.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end = end.trim();
    if end.is_empty() {
        return Some(GetRange::Offset(start));
    }
    let end: u64 = end.parse().ok()?;
    (end >= start).then(|| GetRange::Bounded(start..end + 1))
}

fn store_error(what: &str, e: object_store::Error) -> ApiError {
    match e {
        object_store::Error::NotFound { .. } => ApiError::not_found(what),
        object_store::Error::Precondition { .. } => ApiError {
            status: StatusCode::PRECONDITION_FAILED,
            code: wire::CODE_CHANGED,
            message: format!("{what} changed since the transfer began"),
        },
        e => {
            if let Some(refused) = crate::storage::local_blobs::refusal(&e) {
                return ApiError::refused(refused);
            }
            let text = e.to_string();
            if text.contains("Range") || text.contains("range") {
                return ApiError {
                    status: StatusCode::RANGE_NOT_SATISFIABLE,
                    code: wire::CODE_REFUSED,
                    message: format!("{what}: {text}"),
                };
            }
            tracing::warn!(what = %what, error = %text, "the primary's API could not read a blob");
            ApiError::failed(what, text)
        }
    }
}

/// `GET v1/blobs/{name}/{id}?key=K`.
pub(crate) async fn blob(
    Extract(state): Extract<State>,
    headers: HeaderMap,
    Path((name, id)): Path<(String, i64)>,
    Query(query): Query<BlobQuery>,
) -> Result<Response, ApiError> {
    let scope = Scope::Blob {
        replicable: name.clone(),
        id,
        key: query.key.clone(),
    };
    authorize(&state, &headers, &scope)?;
    let what = format!("blob `{}` of {name} {id}", shorten_name(&query.key));
    let path = object_path(&query.key).map_err(ApiError::refused)?;
    let resource = Resource::Blob {
        key: query.key.clone(),
    };
    super::records::ensure_record_owns(&state, &name, id, &resource).await?;
    let store = state.site.blob_store();

    if let Some(redirect) = &state.redirect {
        // Only what exists is redirected: a missing blob answers the API's own 404.
        store.head(&path).await.map_err(|e| store_error(&what, e))?;
        let url = redirect
            .signer
            .presigned_get(&path, redirect.expires_in)
            .await
            .map_err(|e| ApiError::failed(&what, e))?;
        let location = HeaderValue::from_str(&url).map_err(|e| ApiError::failed(&what, e))?;
        return Ok((
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, location)],
        )
            .into_response());
    }

    let range = match headers.get(header::RANGE) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(parse_range)
                .ok_or_else(|| ApiError {
                    status: StatusCode::RANGE_NOT_SATISFIABLE,
                    code: wire::CODE_REFUSED,
                    message: "only `Range: bytes=N-` and `bytes=N-M` are served".into(),
                })?,
        ),
    };
    let if_match = headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let partial = range.is_some();
    let options = GetOptions {
        range,
        if_match,
        ..GetOptions::default()
    };
    let result = store
        .get_opts(&path, options)
        .await
        .map_err(|e| store_error(&what, e))?;
    let size = result.meta.size;
    let served = result.range.clone();
    let etag = result.meta.e_tag.clone();
    let stream_what = what.clone();
    let body = Body::from_stream(result.into_stream().map(move |chunk| {
        chunk.map_err(|e| {
            tracing::warn!(what = %stream_what, error = %e, "a blob stream broke");
            std::io::Error::other(e.to_string())
        })
    }));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(served.end - served.start),
    );
    if let Some(etag) = etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        headers.insert(header::ETAG, etag);
    }
    if partial {
        let content_range = format!(
            "bytes {}-{}/{size}",
            served.start,
            served.end.saturating_sub(1)
        );
        headers.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&content_range).map_err(|e| ApiError::failed(&what, e))?,
        );
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=10-"), Some(GetRange::Offset(10)));
        assert_eq!(parse_range("bytes=10-19"), Some(GetRange::Bounded(10..20)));
        assert_eq!(parse_range("bytes=-5"), None);
        assert_eq!(parse_range("bytes=9-3"), None);
        assert_eq!(parse_range("items=1-2"), None);
    }
}
