//! [`HttpPrimary`]: a secondary's link to a primary on another machine, over the primary's HTTP
//! API (the `http` module on the primary's side).
//!
//! ```ignore
//! let link = HttpPrimary::new(
//!     HttpPrimaryConfig::new("https://primary.example/replicable/", "secondary-eu",
//!         SharedSecret::from_env("REPLICABLE_LINK_SECRET")?),
//! )?;
//! let site = Site::secondary("secondary-eu", Arc::new(link)).database(db).build()?;
//! ```
//!
//! - every request carries a fresh token ([`token`]) scoped to exactly that request;
//! - one connection pool for every request (connections are reused), a connect timeout, and a
//!   timeout per request (for a blob: per read, since a large blob takes as long as it takes);
//! - only reads (`GET`) are retried, on a transport failure or a 502 / 503 / 504, a few times
//!   with backoff;
//! - redirects are followed by hand, and never with the `Authorization` header (a primary may
//!   send a blob request to a presigned object-store URL, which must not see the token);
//! - a blob is streamed, never whole in memory; a transfer cut mid-way resumes where it stopped
//!   with an HTTP `Range` request (and `If-Match` on the first answer's `ETag`);
//! - `git fetch` reads repositories over git's smart HTTP protocol, with the token given to git
//!   through its configuration in the environment of that one command
//!   ([`RepositoryRemote`]), never in the URL or on disk.

pub mod token;
pub mod wire;

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};

use super::{BlobDownload, PrimaryLink, RepositoryRemote};
use crate::domain::error::LinkError;
use crate::domain::event::{EventId, LogEntry};
use crate::domain::failure::shorten_name;
use crate::domain::verification::VerificationRecord;
use crate::storage::StoredRecord;
use token::{Scope, SharedSecret};
use wire::{ErrorBody, encode_segment};

/// How many redirects one request follows.
const MAX_REDIRECTS: usize = 5;

/// How a secondary reaches its primary over HTTP.
#[derive(Clone)]
pub struct HttpPrimaryConfig {
    /// The base URL of the primary's API (where the application nested the router).
    pub base_url: String,
    /// This secondary's name, as the primary knows it.
    pub secondary: String,
    /// The secret this secondary shares with the primary.
    pub secret: SharedSecret,
    /// How long to wait for a connection (default 10 s).
    pub connect_timeout: Duration,
    /// How long one request may take; for a blob or a repository, how long one read may wait
    /// (default 30 s).
    pub request_timeout: Duration,
    /// How many times a failed read is tried again (default 3).
    pub retries: u32,
    /// How many times a blob transfer cut mid-way resumes (default 5).
    pub resumes: u32,
    /// A PEM file of the certificate authority that signed the primary's certificate, trusted
    /// instead of the system's (for a primary with a private CA; git is given it too).
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for HttpPrimaryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPrimaryConfig")
            .field("base_url", &self.base_url)
            .field("secondary", &self.secondary)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("retries", &self.retries)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl HttpPrimaryConfig {
    /// The settings for a primary at `base_url`, with the defaults.
    pub fn new(
        base_url: impl Into<String>,
        secondary: impl Into<String>,
        secret: SharedSecret,
    ) -> Self {
        Self {
            base_url: base_url.into(),
            secondary: secondary.into(),
            secret,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            retries: 3,
            resumes: 5,
            ca_file: None,
        }
    }
}

/// The link could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the link to the primary at {url}: {reason}")]
pub struct HttpLinkError {
    /// The primary's URL.
    pub url: String,
    /// Why.
    pub reason: String,
}

struct Inner {
    client: reqwest::Client,
    base: reqwest::Url,
    config: HttpPrimaryConfig,
    /// The primary answered a batch read with a refusal or a 404: it predates the batch
    /// endpoints, so reads go one record at a time from then on.
    no_batches: std::sync::atomic::AtomicBool,
}

/// A primary on another machine, read over its HTTP API. Cheap to clone: clones share the
/// connection pool.
#[derive(Clone)]
pub struct HttpPrimary {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HttpPrimary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPrimary")
            .field("base", &self.inner.base.as_str())
            .field("secondary", &self.inner.config.secondary)
            .finish()
    }
}

fn failed(what: &str, reason: impl std::fmt::Display) -> LinkError {
    LinkError::Failed {
        what: what.to_owned(),
        reason: reason.to_string(),
    }
}

/// A transport error, with its causes (reqwest's own message is only the outermost one).
fn transport(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl HttpPrimary {
    /// A link with `config`.
    pub fn new(config: HttpPrimaryConfig) -> Result<Self, HttpLinkError> {
        let refuse = |reason: String| HttpLinkError {
            url: config.base_url.clone(),
            reason,
        };
        let mut base = config.base_url.clone();
        if !base.ends_with('/') {
            base.push('/');
        }
        let base = reqwest::Url::parse(&base).map_err(|e| refuse(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(refuse("the URL must be http:// or https://".into()));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(refuse(
                "credentials do not belong in the URL: the link signs its own tokens".into(),
            ));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("replicable/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| refuse(format!("cannot read {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| refuse(format!("{}: {e}", ca.display())))?;
            builder = builder.tls_certs_only(certs);
        }
        let client = builder.build().map_err(|e| refuse(transport(&e)))?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                base,
                config,
                no_batches: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// The base URL of the primary's API.
    pub fn base_url(&self) -> &str {
        self.inner.base.as_str()
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, LinkError> {
        self.inner
            .base
            .join(path)
            .map_err(|e| failed(path, format!("bad URL: {e}")))
    }

    fn token(&self, scope: Scope, what: &str) -> Result<String, LinkError> {
        token::sign(
            &self.inner.config.secondary,
            &self.inner.config.secret,
            scope,
        )
        .map_err(|e| failed(what, format!("cannot sign a token: {e}")))
    }

    /// Sends a request, following redirects without the `Authorization` header, and retrying
    /// reads on transport failures and 502 / 503 / 504. Returns any answer that is not a
    /// redirect or a retried failure; the caller maps its status.
    async fn send(
        &self,
        method: Method,
        url: reqwest::Url,
        scope: Scope,
        headers: HeaderMap,
        body: Option<Vec<u8>>,
        what: &str,
    ) -> Result<reqwest::Response, LinkError> {
        // A blob's body streams for as long as it takes: only its reads time out.
        let whole_timeout = !matches!(scope, Scope::Blob { .. });
        let idempotent = method == Method::GET || method == Method::HEAD;
        let attempts = if idempotent {
            self.inner.config.retries + 1
        } else {
            1
        };
        let mut last = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                let backoff = Duration::from_millis(100 << attempt.min(6));
                tokio::time::sleep(backoff).await;
            }
            let token = self.token(scope.clone(), what)?;
            match self
                .send_once(&method, url.clone(), &token, &headers, &body, whole_timeout)
                .await
            {
                Ok(response) => {
                    let status = response.status();
                    let transient = matches!(
                        status,
                        StatusCode::BAD_GATEWAY
                            | StatusCode::SERVICE_UNAVAILABLE
                            | StatusCode::GATEWAY_TIMEOUT
                    );
                    if transient && attempt + 1 < attempts {
                        last = format!("HTTP {status}");
                        continue;
                    }
                    return Ok(response);
                }
                Err(Redirect::Loop(reason)) => return Err(failed(what, reason)),
                Err(Redirect::Transport(reason)) => last = reason,
            }
        }
        Err(failed(
            what,
            format!("{last} (after {attempts} attempt(s))"),
        ))
    }

    async fn send_once(
        &self,
        method: &Method,
        mut url: reqwest::Url,
        token: &str,
        headers: &HeaderMap,
        body: &Option<Vec<u8>>,
        whole_timeout: bool,
    ) -> Result<reqwest::Response, Redirect> {
        let mut authorized = true;
        for _ in 0..=MAX_REDIRECTS {
            let mut request = self
                .inner
                .client
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if authorized {
                request = request.bearer_auth(token);
            }
            if whole_timeout {
                request = request.timeout(self.inner.config.request_timeout);
            }
            if let Some(body) = body {
                request = request.body(body.clone());
            }
            let response = request
                .send()
                .await
                .map_err(|e| Redirect::Transport(transport(&e)))?;
            if !response.status().is_redirection() {
                return Ok(response);
            }
            let Some(location) = response
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
            else {
                return Ok(response);
            };
            url = url
                .join(location)
                .map_err(|e| Redirect::Loop(format!("bad redirect: {e}")))?;
            // The token is for the primary only: a redirect target (an object store's
            // presigned URL) never sees it.
            authorized = false;
        }
        Err(Redirect::Loop(format!(
            "more than {MAX_REDIRECTS} redirects"
        )))
    }

    /// A JSON read: `Ok(None)` for the primary's own "not found".
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        scope: Scope,
        what: &str,
    ) -> Result<Option<T>, LinkError> {
        let url = self.url(path)?;
        let response = self
            .send(Method::GET, url, scope, HeaderMap::new(), None, what)
            .await?;
        match check(response, what).await {
            Ok(response) => {
                let bytes = response
                    .bytes()
                    .await
                    .map_err(|e| failed(what, transport(&e)))?;
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| failed(what, format!("unreadable answer: {e}")))
            }
            Err(LinkError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads what `ids` name from `v1/{collection}/{name}/batch`, [`wire::MAX_BATCH_IDS`] per
    /// request. `None`: read them one at a time instead, because the primary has no batch
    /// endpoint (an older version: it refuses the path or answers 404, and is not asked again)
    /// or a batch request failed (the single reads then meet the same trouble and report it).
    async fn batch_read<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        ids: &[i64],
        collection: &str,
        scope: impl Fn(Vec<i64>) -> Scope,
    ) -> Option<Vec<T>> {
        use std::sync::atomic::Ordering;
        if ids.is_empty() {
            return Some(Vec::new());
        }
        if self.inner.no_batches.load(Ordering::Relaxed) {
            return None;
        }
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(wire::MAX_BATCH_IDS) {
            let scope = scope(chunk.to_vec());
            let what = scope.to_string();
            let query = wire::BatchQuery::of(chunk);
            let path = format!(
                "v1/{collection}/{}/batch?ids={}",
                encode_segment(name, false),
                query.ids
            );
            match self.get_json::<Vec<T>>(&path, scope, &what).await {
                Ok(Some(rows)) => found.extend(rows),
                // An older primary takes `batch` for a record id (400) or knows no such path.
                Ok(None) => {
                    self.inner.no_batches.store(true, Ordering::Relaxed);
                    return None;
                }
                Err(LinkError::Refused { reason, .. } | LinkError::Failed { reason, .. })
                    if ["HTTP 400", "HTTP 404", "HTTP 405"]
                        .iter()
                        .any(|status| reason.starts_with(status)) =>
                {
                    tracing::info!(
                        primary = %self.inner.base,
                        "the primary has no batch reads: reading records one at a time"
                    );
                    self.inner.no_batches.store(true, Ordering::Relaxed);
                    return None;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "a batch read failed: reading one at a time");
                    return None;
                }
            }
        }
        Some(found)
    }

    /// Reports this secondary's status to the primary (the token names the secondary).
    async fn post_status(&self, report: &wire::StatusReport) -> Result<(), LinkError> {
        let what = "the status report";
        let url = self.url("v1/status")?;
        let body = serde_json::to_vec(report).map_err(|e| failed(what, e))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let response = self
            .send(Method::POST, url, Scope::Status, headers, Some(body), what)
            .await?;
        check(response, what).await.map(|_| ())
    }

    /// One request for a blob's bytes from `offset`.
    async fn blob_request(
        &self,
        name: &str,
        model_id: i64,
        key: &str,
        offset: u64,
        etag: Option<&str>,
        what: &str,
    ) -> Result<reqwest::Response, LinkError> {
        let mut url = self.url(&format!(
            "v1/blobs/{}/{model_id}",
            encode_segment(name, false)
        ))?;
        url.query_pairs_mut().append_pair("key", key);
        let mut headers = HeaderMap::new();
        if offset > 0 {
            let range =
                HeaderValue::from_str(&format!("bytes={offset}-")).map_err(|e| failed(what, e))?;
            headers.insert(header::RANGE, range);
            if let Some(etag) = etag.and_then(|e| HeaderValue::from_str(e).ok()) {
                headers.insert(header::IF_MATCH, etag);
            }
        }
        let scope = Scope::Blob {
            replicable: name.to_owned(),
            id: model_id,
            key: key.to_owned(),
        };
        let response = self
            .send(Method::GET, url, scope, headers, None, what)
            .await?;
        check(response, what).await
    }
}

enum Redirect {
    Transport(String),
    Loop(String),
}

/// Maps an answer's status: 2xx passes; the primary's `not_found` is [`LinkError::NotFound`];
/// 401 / 403 / 400 / 422 / 412 are refusals; anything else is a failure.
async fn check(response: reqwest::Response, what: &str) -> Result<reqwest::Response, LinkError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.bytes().await.unwrap_or_default();
    let parsed: Option<ErrorBody> = serde_json::from_slice(&body).ok();
    let reason = match &parsed {
        Some(error) => format!("HTTP {status}: {}", error.message),
        None => format!(
            "HTTP {status}: {}",
            shorten_name(String::from_utf8_lossy(&body).trim())
        ),
    };
    match status {
        // Only the primary's own answer means "missing": a 404 from something else (a proxy,
        // a wrong base URL) is a failure to reach it.
        StatusCode::NOT_FOUND
            if parsed
                .as_ref()
                .is_some_and(|e| e.code == wire::CODE_NOT_FOUND) =>
        {
            Err(LinkError::NotFound {
                what: what.to_owned(),
            })
        }
        StatusCode::UNAUTHORIZED
        | StatusCode::FORBIDDEN
        | StatusCode::BAD_REQUEST
        | StatusCode::UNPROCESSABLE_ENTITY
        | StatusCode::PRECONDITION_FAILED => Err(LinkError::Refused {
            what: what.to_owned(),
            reason,
        }),
        _ => Err(failed(what, reason)),
    }
}

/// The size of the whole blob from an answer (`Content-Range` of a 206, else the length).
fn total_size(response: &reqwest::Response) -> Option<u64> {
    if response.status() == StatusCode::PARTIAL_CONTENT {
        let range = response
            .headers()
            .get(header::CONTENT_RANGE)?
            .to_str()
            .ok()?;
        return range.rsplit('/').next()?.parse().ok();
    }
    response.content_length()
}

/// The first byte of a 206 answer.
fn range_start(response: &reqwest::Response) -> Option<u64> {
    let range = response
        .headers()
        .get(header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    let spec = range.strip_prefix("bytes ")?;
    spec.split('-').next()?.parse().ok()
}

struct Transfer {
    link: HttpPrimary,
    name: String,
    model_id: i64,
    key: String,
    what: String,
    size: u64,
    received: u64,
    etag: Option<String>,
    resumes_left: u32,
    body: Option<BoxStream<'static, reqwest::Result<Bytes>>>,
    done: bool,
}

impl Transfer {
    /// The next chunk, resuming with a `Range` request when the connection breaks.
    async fn next_chunk(&mut self) -> Option<Result<Bytes, LinkError>> {
        loop {
            if self.done {
                return None;
            }
            if self.body.is_none() {
                match self.reopen().await {
                    Ok(()) => {}
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
            let body = self.body.as_mut().expect("opened above");
            let cut = match body.next().await {
                Some(Ok(chunk)) => {
                    self.received += chunk.len() as u64;
                    if self.received > self.size {
                        self.done = true;
                        return Some(Err(failed(
                            &self.what,
                            format!(
                                "the primary sent more than the {} bytes announced",
                                self.size
                            ),
                        )));
                    }
                    return Some(Ok(chunk));
                }
                Some(Err(e)) => transport(&e),
                None if self.received == self.size => {
                    self.done = true;
                    return None;
                }
                None => format!(
                    "the connection ended after {} of {} bytes",
                    self.received, self.size
                ),
            };
            self.body = None;
            if self.resumes_left == 0 {
                self.done = true;
                return Some(Err(failed(&self.what, cut)));
            }
            self.resumes_left -= 1;
            tracing::info!(
                what = %self.what,
                received = self.received,
                size = self.size,
                reason = %cut,
                "blob transfer cut; resuming"
            );
        }
    }

    async fn reopen(&mut self) -> Result<(), LinkError> {
        let response = self
            .link
            .blob_request(
                &self.name,
                self.model_id,
                &self.key,
                self.received,
                self.etag.as_deref(),
                &self.what,
            )
            .await?;
        if response.status() != StatusCode::PARTIAL_CONTENT
            || range_start(&response) != Some(self.received)
            || total_size(&response) != Some(self.size)
        {
            return Err(failed(
                &self.what,
                format!(
                    "resuming at byte {} got HTTP {} for another range",
                    self.received,
                    response.status()
                ),
            ));
        }
        self.body = Some(response.bytes_stream().boxed());
        Ok(())
    }
}

#[async_trait]
impl PrimaryLink for HttpPrimary {
    async fn events_after(&self, after: EventId, limit: usize) -> Result<Vec<LogEntry>, LinkError> {
        let what = format!("events after {after}");
        let limit = limit.min(wire::MAX_EVENTS_PER_REQUEST);
        self.get_json(
            &format!("v1/events?after={after}&limit={limit}"),
            Scope::Events,
            &what,
        )
        .await?
        .ok_or_else(|| failed(&what, "the primary answered 404"))
    }

    async fn last_event_id(&self) -> Result<Option<EventId>, LinkError> {
        let what = "the last event id";
        let last: wire::LastEvent = self
            .get_json("v1/events/last", Scope::Events, what)
            .await?
            .ok_or_else(|| failed(what, "the primary answered 404"))?;
        Ok(last.last)
    }

    async fn wait_for_events(
        &self,
        after: EventId,
        max_wait: Duration,
    ) -> Result<Option<EventId>, LinkError> {
        // The primary waits on its side (up to `wire::MAX_EVENT_WAIT` per request): one
        // request instead of a poll per `EVENT_POLL`.
        let what = "the last event id";
        let started = tokio::time::Instant::now();
        let wait_ms = max_wait.as_millis().min(u128::from(u64::MAX)) as u64;
        let last: wire::LastEvent = self
            .get_json(
                &format!("v1/events/last?after={after}&wait_ms={wait_ms}"),
                Scope::Events,
                what,
            )
            .await?
            .ok_or_else(|| failed(what, "the primary answered 404"))?;
        if last.last.is_none_or(|id| id <= after) {
            // A primary that answers at once (one that does not wait): wait here instead, so
            // that a caught-up cursor does not ask in a tight loop.
            let floor = max_wait.min(wire::MAX_EVENT_WAIT) / 2;
            let elapsed = started.elapsed();
            if elapsed < floor {
                tokio::time::sleep(floor - elapsed).await;
            }
        }
        Ok(last.last)
    }

    async fn record(&self, name: &str, model_id: i64) -> Result<Option<StoredRecord>, LinkError> {
        self.get_json(
            &format!("v1/records/{}/{model_id}", encode_segment(name, false)),
            Scope::Record {
                replicable: name.to_owned(),
                id: model_id,
            },
            &format!("{name} {model_id}"),
        )
        .await
    }

    async fn records(&self, name: &str, ids: &[i64]) -> Result<Vec<StoredRecord>, LinkError> {
        let batched = self
            .batch_read(name, ids, "records", |ids| Scope::Records {
                replicable: name.to_owned(),
                ids,
            })
            .await;
        match batched {
            Some(records) => Ok(records),
            None => super::read_each(ids, |id| self.record(name, id)).await,
        }
    }

    async fn verifications(
        &self,
        name: &str,
        ids: &[i64],
    ) -> Result<Vec<VerificationRecord>, LinkError> {
        let batched = self
            .batch_read(name, ids, "verification", |ids| Scope::Verifications {
                replicable: name.to_owned(),
                ids,
            })
            .await;
        match batched {
            Some(rows) => Ok(rows),
            None => super::read_each(ids, |id| self.verification(name, id)).await,
        }
    }

    async fn record_ids(
        &self,
        name: &str,
        range: Range<i64>,
        limit: usize,
    ) -> Result<Vec<i64>, LinkError> {
        let what = format!("{name} ids in {range:?}");
        let limit = limit.min(wire::MAX_IDS_PER_REQUEST);
        self.get_json(
            &format!(
                "v1/records/{}?from={}&to={}&limit={limit}",
                encode_segment(name, false),
                range.start,
                range.end
            ),
            Scope::Ids {
                replicable: name.to_owned(),
            },
            &what,
        )
        .await?
        .ok_or_else(|| failed(&what, "the primary answered 404"))
    }

    async fn report_status(
        &self,
        _secondary: &str,
        report: &super::SiteStatusReport,
    ) -> Result<(), LinkError> {
        self.post_status(report).await
    }

    async fn verification(
        &self,
        name: &str,
        model_id: i64,
    ) -> Result<Option<VerificationRecord>, LinkError> {
        self.get_json(
            &format!("v1/verification/{}/{model_id}", encode_segment(name, false)),
            Scope::Verification {
                replicable: name.to_owned(),
                id: model_id,
            },
            &format!("the checksum of {name} {model_id}"),
        )
        .await
    }

    async fn open_blob(
        &self,
        name: &str,
        model_id: i64,
        key: &str,
    ) -> Result<BlobDownload, LinkError> {
        let what = format!("blob `{}` of {name} {model_id}", shorten_name(key));
        let response = self
            .blob_request(name, model_id, key, 0, None, &what)
            .await?;
        let size = total_size(&response)
            .ok_or_else(|| failed(&what, "the answer has no Content-Length"))?;
        let etag = response
            .headers()
            .get(header::ETAG)
            .and_then(|e| e.to_str().ok())
            .map(str::to_owned);
        let transfer = Transfer {
            link: self.clone(),
            name: name.to_owned(),
            model_id,
            key: key.to_owned(),
            what,
            size,
            received: 0,
            etag,
            resumes_left: self.inner.config.resumes,
            body: Some(response.bytes_stream().boxed()),
            done: false,
        };
        let stream = futures::stream::unfold(transfer, |mut transfer| async move {
            let item = transfer.next_chunk().await?;
            Some((item, transfer))
        })
        .boxed();
        Ok(BlobDownload { size, stream })
    }

    async fn repository_remote(
        &self,
        name: &str,
        model_id: i64,
        path: &str,
    ) -> Result<RepositoryRemote, LinkError> {
        let what = format!("repository `{}` of {name} {model_id}", shorten_name(path));
        let scope = Scope::Repository {
            replicable: name.to_owned(),
            id: model_id,
            path: path.to_owned(),
        };
        let repository = format!(
            "v1/git/{}/{model_id}/{}",
            encode_segment(name, false),
            encode_segment(path, true)
        );
        let remote = self.url(&repository)?;
        // Whether the primary has it: `info/refs` without a service is the API's existence
        // check (git itself always names the service).
        let probe = self.url(&format!("{repository}/info/refs"))?;
        let response = self
            .send(
                Method::GET,
                probe,
                scope.clone(),
                HeaderMap::new(),
                None,
                &what,
            )
            .await?;
        check(response, &what).await?;
        let token = self.token(scope, &what)?;
        let mut git_config = vec![
            (
                "http.extraHeader".to_owned(),
                format!("Authorization: Bearer {token}"),
            ),
            // git would send the header to wherever a redirect points.
            ("http.followRedirects".to_owned(), "false".to_owned()),
            (
                "http.lowSpeedTime".to_owned(),
                self.inner
                    .config
                    .request_timeout
                    .as_secs()
                    .max(1)
                    .to_string(),
            ),
            ("http.lowSpeedLimit".to_owned(), "1".to_owned()),
        ];
        let mut env = Vec::new();
        if let Some(ca) = &self.inner.config.ca_file {
            let ca: String = std::path::absolute(ca)
                .unwrap_or_else(|_| ca.clone())
                .to_string_lossy()
                .into();
            git_config.push(("http.sslCAInfo".to_owned(), ca.clone()));
            // An inherited GIT_SSL_CAINFO would win over the setting.
            env.push(("GIT_SSL_CAINFO".to_owned(), ca));
        }
        Ok(RepositoryRemote {
            url: remote.to_string(),
            git_config,
            env,
        })
    }
}
