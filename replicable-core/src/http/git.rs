//! Repositories over git's smart HTTP protocol, read-only: `info/refs?service=git-upload-pack`
//! and `POST git-upload-pack`, each answered by `git upload-pack --stateless-rpc` spawned
//! without a shell, killed after the API's git timeout, streaming the request into it and its
//! output back. `info/refs` without a service is the API's existence check (git always names
//! the service).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State as Extract;

use super::error::extract::{Path, Query};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};
use tokio_util::io::ReaderStream;

use super::auth::authorize;
use super::{ApiError, State};
use crate::domain::blob_key::{parse_repository_path, resolve_beneath};
use crate::domain::failure::shorten_name;
use crate::domain::resource::Resource;
use crate::link::http::token::Scope;

const INFO_REFS: &str = "/info/refs";
const UPLOAD_PACK: &str = "/git-upload-pack";

#[derive(Debug, Deserialize)]
pub(crate) struct InfoRefsQuery {
    service: Option<String>,
}

/// Checks the token and finds the repository beneath the root.
fn repository(
    state: &State,
    headers: &HeaderMap,
    name: &str,
    id: i64,
    path: &str,
) -> Result<PathBuf, ApiError> {
    let scope = Scope::Repository {
        replicable: name.to_owned(),
        id,
        path: path.to_owned(),
    };
    authorize(state, headers, &scope)?;
    let what = format!("repository `{}` of {name} {id}", shorten_name(path));
    let relative = parse_repository_path(path).map_err(ApiError::refused)?;
    let root = state
        .site
        .repository_root()
        .ok_or_else(|| ApiError::failed(&what, "the primary has no repository root"))?;
    // Never through a symbolic link below the root.
    let full = resolve_beneath(
        root,
        &relative,
        &format!("repository `{}`", shorten_name(path)),
    )
    .map_err(ApiError::refused)?;
    match std::fs::symlink_metadata(&full) {
        Ok(meta) if meta.is_dir() => Ok(full),
        Ok(_) => Err(ApiError::refused(format!("{what} is not a directory"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ApiError::not_found(what)),
        Err(e) => Err(ApiError::failed(what, e)),
    }
}

/// The protocol version the client asked for (`Git-Protocol: version=2`), passed to
/// upload-pack as `GIT_PROTOCOL` when it is one git knows.
fn protocol(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("git-protocol")?.to_str().ok()?;
    let safe = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b':' | b'.' | b'-' | b'_'));
    (safe && value.len() < 256).then(|| value.to_owned())
}

fn upload_pack_command(dir: &std::path::Path, advertise: bool, protocol: Option<&str>) -> Command {
    let mut command = Command::new("git");
    command
        .arg("upload-pack")
        .arg("--stateless-rpc")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .env_remove("GIT_PROTOCOL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if advertise {
        command.arg("--advertise-refs");
    }
    if let Some(protocol) = protocol {
        command.env("GIT_PROTOCOL", protocol);
    }
    command.arg("--").arg(dir);
    command
}

/// Waits for `child` (its stdout already taken) at most `timeout`, killing it past that, and
/// logs its stderr when it fails.
fn watch(mut child: Child, timeout: Duration, what: String) {
    let stderr = child.stderr.take();
    // Read concurrently: a git that fills its stderr pipe would otherwise block.
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        if let Some(stderr) = stderr {
            use tokio::io::AsyncReadExt;
            let _ = stderr.take(64 * 1024).read_to_string(&mut text).await;
        }
        text
    });
    tokio::spawn(async move {
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => {
                let errors = errors.await.unwrap_or_default();
                tracing::warn!(what = %what, %status, stderr = %errors.trim(), "git upload-pack failed");
            }
            Ok(Err(e)) => tracing::warn!(what = %what, error = %e, "waiting for git upload-pack"),
            Err(_) => {
                tracing::warn!(what = %what, timeout_s = timeout.as_secs_f64(), "git upload-pack timed out; killed");
                let _ = child.kill().await;
            }
        }
    });
}

fn git_response(content_type: &'static str, body: Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn split<'a>(rest: &'a str, suffix: &str) -> Result<&'a str, ApiError> {
    rest.strip_suffix(suffix)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError {
            status: StatusCode::NOT_FOUND,
            code: "no_route",
            message: format!("only `{INFO_REFS}` and `{UPLOAD_PACK}` are served"),
        })
}

/// `GET v1/git/{name}/{id}/{path}/info/refs[?service=git-upload-pack]`.
pub(crate) async fn info_refs(
    Extract(state): Extract<State>,
    headers: HeaderMap,
    Path((name, id, rest)): Path<(String, i64, String)>,
    Query(query): Query<InfoRefsQuery>,
) -> Result<Response, ApiError> {
    let path = split(&rest, INFO_REFS)?;
    let dir = repository(&state, &headers, &name, id, path)?;
    let resource = Resource::Repository {
        path: path.to_owned(),
    };
    super::records::ensure_record_owns(&state, &name, id, &resource).await?;
    match query.service.as_deref() {
        None => return Ok(StatusCode::NO_CONTENT.into_response()),
        Some("git-upload-pack") => {}
        Some(other) => {
            return Err(ApiError {
                status: StatusCode::FORBIDDEN,
                code: crate::link::http::wire::CODE_FORBIDDEN,
                message: format!(
                    "`{}` is not served: the API is read-only",
                    shorten_name(other)
                ),
            });
        }
    }
    let protocol = protocol(&headers);
    let version_2 = protocol.as_deref().is_some_and(|p| p.contains("version=2"));
    let what = format!("repository `{}` of {name} {id}", shorten_name(path));
    let mut child = upload_pack_command(&dir, true, protocol.as_deref())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| ApiError::failed(&what, format!("cannot run git: {e}")))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    watch(child, state.git_timeout, what);
    // Protocol v0 answers start with the service line; v2's capability advertisement does not.
    let head: &'static [u8] = if version_2 {
        b""
    } else {
        b"001e# service=git-upload-pack\n0000"
    };
    let body = futures::stream::once(async move { Ok(bytes::Bytes::from_static(head)) })
        .chain(ReaderStream::new(stdout));
    Ok(git_response(
        "application/x-git-upload-pack-advertisement",
        Body::from_stream(body),
    ))
}

/// `POST v1/git/{name}/{id}/{path}/git-upload-pack`.
pub(crate) async fn upload_pack_rpc(
    state: State,
    headers: HeaderMap,
    name: String,
    id: i64,
    rest: String,
    body: Body,
) -> Result<Response, ApiError> {
    let path = split(&rest, UPLOAD_PACK)?;
    let dir = repository(&state, &headers, &name, id, path)?;
    let resource = Resource::Repository {
        path: path.to_owned(),
    };
    super::records::ensure_record_owns(&state, &name, id, &resource).await?;
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        None | Some("identity") => false,
        Some("gzip" | "x-gzip") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unsupported Content-Encoding `{}`",
                shorten_name(other)
            )));
        }
    };
    let what = format!("repository `{}` of {name} {id}", shorten_name(path));
    let mut child = upload_pack_command(&dir, false, protocol(&headers).as_deref())
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| ApiError::failed(&what, format!("cannot run git: {e}")))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    watch(child, state.git_timeout, what.clone());
    // The request streams into git while its answer streams out.
    tokio::spawn(async move {
        let mut input = body.into_data_stream();
        let mut inflate = gzip.then(|| flate2::write::GzDecoder::new(Vec::new()));
        while let Some(chunk) = input.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    tracing::warn!(what = %what, error = %e, "reading a git request failed");
                    return;
                }
            };
            let written = match inflate.as_mut() {
                Some(decoder) => {
                    use std::io::Write;
                    if let Err(e) = decoder.write_all(&chunk) {
                        tracing::warn!(what = %what, error = %e, "a gzip git request is corrupt");
                        return;
                    }
                    let out = std::mem::take(decoder.get_mut());
                    stdin.write_all(&out).await
                }
                None => stdin.write_all(&chunk).await,
            };
            if written.is_err() {
                // git stopped reading; its own exit says why.
                return;
            }
        }
        if let Some(decoder) = inflate {
            match decoder.finish() {
                Ok(rest) => {
                    let _ = stdin.write_all(&rest).await;
                }
                Err(e) => {
                    tracing::warn!(what = %what, error = %e, "a gzip git request is truncated");
                    return;
                }
            }
        }
        let _ = stdin.shutdown().await;
    });
    Ok(git_response(
        "application/x-git-upload-pack-result",
        Body::from_stream(ReaderStream::new(stdout)),
    ))
}

/// `POST` to the repository routes (only `git-upload-pack`).
pub(crate) async fn upload_pack(
    Extract(state): Extract<State>,
    headers: HeaderMap,
    Path((name, id, rest)): Path<(String, i64, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    upload_pack_rpc(state, headers, name, id, rest, body).await
}
