//! Checking a request's token: HS256, signed with the secret of the secondary it names, not
//! expired beyond the leeway, scoped to exactly this request. Refusals are logged with the
//! reason and the secondary, never with the token.

use axum::http::{HeaderMap, StatusCode, header};

use super::{ApiError, State};
use crate::link::http::token::{self, Scope, TokenRefusal};
use crate::link::http::wire;

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
