//! Checking a request's token: HS256, signed with the secret of the secondary it names, not
//! expired beyond the leeway, scoped to exactly this request. Refusals are logged with the
//! reason and the secondary, never with the token.
//!
//! The check comes in two steps. Before a request's path parameters, query or body are parsed,
//! [`authenticate`] (a layer over every route) refuses one without a valid token of a known
//! secondary with 401: a client without one gets no parse errors, and no body is read for it.
//! The handler then checks the token's scope against what it parsed ([`authorize`]).

use axum::extract::{Request, State as Extract};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, State};
use crate::link::http::token::{self, Scope, TokenRefusal};
use crate::link::http::wire;

/// The layer of every route: a request goes on only with a token a known secondary signed
/// that has not expired (its scope is the handler's to check).
pub(crate) async fn authenticate(
    Extract(state): Extract<State>,
    request: Request,
    next: Next,
) -> Response {
    let checked = bearer(request.headers()).and_then(|token| {
        token::verify_identity_now(token, |name| state.secret_of(name), state.leeway)
    });
    match checked {
        Ok(_) => next.run(request).await,
        Err(refusal) => {
            tracing::warn!(path = %request.uri().path(), reason = %refusal, "refused a request to the primary's API");
            refused(&refusal).into_response()
        }
    }
}

/// The secondary a request comes from, if its token allows `scope`.
pub(crate) fn authorize(
    state: &State,
    headers: &HeaderMap,
    scope: &Scope,
) -> Result<String, ApiError> {
    let checked = bearer(headers).and_then(|token| {
        token::verify_now(token, |name| state.secret_of(name), scope, state.leeway)
    });
    checked.map_err(|refusal| {
        tracing::warn!(asked = %scope, reason = %refusal, "refused a request to the primary's API");
        refused(&refusal)
    })
}

fn bearer(headers: &HeaderMap) -> Result<&str, TokenRefusal> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(TokenRefusal::Missing)?
        .to_str()
        .map_err(|_| TokenRefusal::Invalid("the Authorization header is not text".into()))?;
    let (kind, token) = value.split_once(' ').ok_or(TokenRefusal::Missing)?;
    if !kind.eq_ignore_ascii_case("bearer") {
        return Err(TokenRefusal::Missing);
    }
    Ok(token.trim())
}

/// The answer to a refused token: 401 or 403.
pub fn refused(refusal: &TokenRefusal) -> ApiError {
    if refusal.status() == 403 {
        ApiError {
            status: StatusCode::FORBIDDEN,
            code: wire::CODE_FORBIDDEN,
            message: refusal.to_string(),
        }
    } else {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: wire::CODE_UNAUTHORIZED,
            message: refusal.to_string(),
        }
    }
}
