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

/// axum's extractors, answering a malformed request as the API answers every error: its
/// status (400, or 415 / 422 for a body) with a JSON body coded `refused`, instead of axum's
/// plain-text rejection.
pub(crate) mod extract {
    use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
    use axum::extract::{FromRequest, FromRequestParts, Request};
    use axum::http::request::Parts;
    use serde::de::DeserializeOwned;

    use super::ApiError;
    use crate::link::http::wire;

    fn refused(status: axum::http::StatusCode, text: String) -> ApiError {
        ApiError {
            status,
            code: wire::CODE_REFUSED,
            message: text,
        }
    }

    /// [`axum::extract::Query`].
    pub(crate) struct Query<T>(pub T);

    impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
        type Rejection = ApiError;

        async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
            axum::extract::Query::<T>::from_request_parts(parts, state)
                .await
                .map(|axum::extract::Query(value)| Self(value))
                .map_err(|e: QueryRejection| refused(e.status(), e.body_text()))
        }
    }

    /// [`axum::extract::Path`].
    pub(crate) struct Path<T>(pub T);

    impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
        type Rejection = ApiError;

        async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
            axum::extract::Path::<T>::from_request_parts(parts, state)
                .await
                .map(|axum::extract::Path(value)| Self(value))
                .map_err(|e: PathRejection| refused(e.status(), e.body_text()))
        }
    }

    /// [`axum::Json`].
    pub(crate) struct Json<T>(pub T);

    impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
        type Rejection = ApiError;

        async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
            axum::Json::<T>::from_request(request, state)
                .await
                .map(|axum::Json(value)| Self(value))
                .map_err(|e: JsonRejection| refused(e.status(), e.body_text()))
        }
    }
}
