//! Error answers: a status and a JSON [`ErrorBody`] with a machine-readable code.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::domain::error::StoreError;
use crate::link::http::wire::{self, ErrorBody};

/// An error answer of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The machine-readable code (`wire::CODE_*`).
    pub code: &'static str,
    /// For people.
    pub message: String,
}

impl ApiError {
    /// 404 `not_found`.
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: wire::CODE_NOT_FOUND,
            message: format!("{what} does not exist on the primary"),
        }
    }

    /// 422 `refused`.
    pub fn refused(message: impl std::fmt::Display) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: wire::CODE_REFUSED,
            message: message.to_string(),
        }
    }

    /// 400 `refused`.
    pub fn bad_request(message: impl std::fmt::Display) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: wire::CODE_REFUSED,
            message: message.to_string(),
        }
    }

    /// 500 `failed`.
    pub fn failed(what: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: wire::CODE_FAILED,
            message: format!("reading {what} failed: {reason}"),
        }
    }

    /// A store failure reading `what`.
    pub fn store(what: impl std::fmt::Display) -> impl FnOnce(StoreError) -> Self {
        let what = what.to_string();
        move |e| {
            tracing::warn!(what = %what, error = %e, "the primary's API could not read its store");
            Self::failed(what, e)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                code: self.code.to_owned(),
                message: self.message,
            }),
        )
            .into_response()
    }
}

/// Any path the API does not have: 404 without the `not_found` code (that code means "the
/// primary has no such resource").
pub(crate) async fn no_route() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "no_route",
        message: "no such path in the primary's API".into(),
    }
}
