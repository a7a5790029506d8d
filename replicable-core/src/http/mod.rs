//! The primary's HTTP API (feature `http`): everything a secondary's
//! [`HttpPrimary`](crate::link::http::HttpPrimary) asks of it, as an axum [`Router`] that the
//! application nests where it likes, or serves by itself with [`serve`] (plain or TLS).
//!
//! ```ignore
//! let api = PrimaryApi::new(primary_site.clone())
//!     .secondary("secondary-eu", SharedSecret::from_env("REPLICABLE_SECRET_EU")?);
//! let app = axum::Router::new().nest("/replicable", api.router());   // or: http::serve(addr, api.router(), tls)
//! ```
//!
//! The routes and their token scopes are listed in [`crate::link::http::wire`]. Every request
//! carries a token of a configured secondary, scoped to exactly that request
//! ([`auth`]); anything else is refused with 401 / 403 and logged without the token. What the
//! primary does not have answers 404 with the code `not_found`, which the secondary records as
//! *missing on primary*. Blob bytes are streamed, honour `Range`, and may be answered with a
//! redirect to a presigned object-store URL ([`PrimaryApi::redirect_blobs`]); repositories are
//! served over git's smart HTTP protocol by `git upload-pack --stateless-rpc`.

pub mod auth;
mod blobs;
mod error;
mod events;
mod git;
mod records;
pub mod server;
mod status;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};

use crate::link::http::token::SharedSecret;
use crate::site::Site;

pub use error::ApiError;
pub use server::{ApiServer, TlsFiles, serve, serve_on};

/// Presigns URLs of the primary's object store. For S3, wrap the store's
/// `object_store::signer::Signer` (feature `aws` of object_store):
///
/// ```ignore
/// #[derive(Debug)]
/// struct S3Urls(object_store::aws::AmazonS3);
/// #[async_trait::async_trait]
/// impl PresignGet for S3Urls {
///     async fn presigned_get(&self, path: &Path, expires_in: Duration) -> Result<String, String> {
///         use object_store::signer::Signer;
///         self.0.signed_url(Method::GET, path, expires_in).await
///             .map(|url| url.to_string()).map_err(|e| e.to_string())
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait PresignGet: Send + Sync + std::fmt::Debug {
    /// A URL that reads the object at `path` without further credentials, for `expires_in`.
    async fn presigned_get(
        &self,
        path: &object_store::path::Path,
        expires_in: Duration,
    ) -> Result<String, String>;
}

/// Blobs answered with a redirect to a presigned URL of the object store.
#[derive(Debug, Clone)]
pub struct BlobRedirect {
    /// Signs URLs of the primary's object store.
    pub signer: Arc<dyn PresignGet>,
    /// How long a presigned URL is valid.
    pub expires_in: Duration,
}

/// The primary's API: the site it serves, the secondaries allowed to read it, and its limits.
#[derive(Debug, Clone)]
pub struct PrimaryApi {
    site: Site,
    secondaries: HashMap<String, SharedSecret>,
    leeway: Duration,
    git_timeout: Duration,
    redirect: Option<BlobRedirect>,
}

pub(crate) type State = Arc<PrimaryApi>;

impl PrimaryApi {
    /// The API of `site` (a primary), with no secondary allowed yet.
    pub fn new(site: Site) -> Self {
        Self {
            site,
            secondaries: HashMap::new(),
            leeway: Duration::from_secs(30),
            git_timeout: Duration::from_secs(3600),
            redirect: None,
        }
    }

    /// Allows the secondary `name`, whose tokens are signed with `secret`.
    pub fn secondary(mut self, name: impl Into<String>, secret: SharedSecret) -> Self {
        self.secondaries.insert(name.into(), secret);
        self
    }

    /// How far the clocks of the primary and a secondary may disagree: a token is accepted up to
    /// this long after it expired, and this long before it was issued (default 30 s).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// How long one `git upload-pack` may run before it is killed (default 1 hour).
    pub fn git_timeout(mut self, timeout: Duration) -> Self {
        self.git_timeout = timeout;
        self
    }

    /// Answers blob requests with a redirect to a URL `signer` presigns for `expires_in`, so
    /// that the bytes go from the object store to the secondary directly.
    pub fn redirect_blobs(mut self, signer: Arc<dyn PresignGet>, expires_in: Duration) -> Self {
        self.redirect = Some(BlobRedirect { signer, expires_in });
        self
    }

    /// The site served.
    pub fn site(&self) -> &Site {
        &self.site
    }

    pub(crate) fn secret_of(&self, secondary: &str) -> Option<SharedSecret> {
        self.secondaries.get(secondary).cloned()
    }

    /// The router: nest it under any prefix, or serve it with [`serve`].
    pub fn router(self) -> Router {
        let state: State = Arc::new(self);
        Router::new()
            .route("/v1/events", get(events::after))
            .route("/v1/events/last", get(events::last))
            .route("/v1/records/{name}", get(records::ids))
            .route("/v1/records/{name}/batch", get(records::records_batch))
            .route("/v1/records/{name}/{id}", get(records::record))
            .route(
                "/v1/verification/{name}/batch",
                get(records::verifications_batch),
            )
            .route("/v1/verification/{name}/{id}", get(records::verification))
            .route("/v1/blobs/{name}/{id}", get(blobs::blob))
            .route(
                "/v1/git/{name}/{id}/{*rest}",
                get(git::info_refs).post(git::upload_pack),
            )
            .route("/v1/status", post(status::report))
            // Every route (not the fallback: an unknown path is 404 for anyone).
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                auth::authenticate,
            ))
            .fallback(error::no_route)
            .with_state(state)
    }
}

/// The router of `site`'s API with `secondaries` (name, secret) allowed and the defaults.
pub fn router(site: Site, secondaries: impl IntoIterator<Item = (String, SharedSecret)>) -> Router {
    let mut api = PrimaryApi::new(site);
    for (name, secret) in secondaries {
        api = api.secondary(name, secret);
    }
    api.router()
}
