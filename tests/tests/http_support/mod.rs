//! Servers and a proxy the HTTP link tests put beside a primary: a server that records the
//! headers of every request it answers (standing in for an object store's presigned URLs), a
//! TCP proxy that cuts one transfer mid-way, and a raw GET with a chosen bearer token.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The headers a recording server saw, request by request.
pub type Seen = Arc<Mutex<Vec<axum::http::HeaderMap>>>;

async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// A server that records the headers of every request and answers `bytes`.
pub async fn recording_server(bytes: Vec<u8>) -> (String, Seen) {
    let seen = Seen::default();
    let recorded = seen.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let recorded = recorded.clone();
        let bytes = bytes.clone();
        async move {
            recorded.lock().unwrap().push(headers);
            bytes
        }
    });
    (serve(app).await, seen)
}

/// A server that records the headers of every request and answers `GET /signed/<key>` with
/// the file `<root>/<key>` (404 when there is none).
pub async fn recording_file_server(root: PathBuf) -> (String, Seen) {
    let seen = Seen::default();
    let recorded = seen.clone();
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap| {
            let recorded = recorded.clone();
            let root = root.clone();
            async move {
                recorded.lock().unwrap().push(headers);
                let key = uri.path().trim_start_matches("/signed/");
                let mut file = root.clone();
                for part in key.split('/') {
                    let part = percent_decode(part);
                    assert!(part != ".." && !part.is_empty(), "a bad key: {key}");
                    file.push(part);
                }
                match std::fs::read(&file) {
                    Ok(bytes) => Ok(bytes),
                    Err(_) => Err(axum::http::StatusCode::NOT_FOUND),
                }
            }
        },
    );
    (serve(app).await, seen)
}

fn percent_decode(part: &str) -> String {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&part[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// A TCP proxy to `upstream` that cuts one answer mid-way: once `cut_after` bytes went down
/// a connection after a request whose head contains `marker` (`None`: the first connection,
/// from its start), that connection is closed, once in the proxy's life. It records the heads
/// of the requests (as the bytes that went up).
pub async fn cutting_proxy(
    upstream: std::net::SocketAddr,
    cut_after: usize,
    marker: Option<&'static str>,
) -> (String, Arc<Mutex<Vec<String>>>) {
    let heads = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let recorded = heads.clone();
    let cut_done = Arc::new(AtomicBool::new(false));
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            // Armed: counting the bytes that went down since the marked request.
            let armed = Arc::new(AtomicBool::new(first && marker.is_none()));
            first = false;
            let recorded = recorded.clone();
            let cut_done = cut_done.clone();
            tokio::spawn(async move {
                let mut server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let (mut client_read, mut client_write) = client.split();
                let (mut server_read, mut server_write) = server.split();
                let sent = AtomicUsize::new(0);
                let up = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = client_read.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                        if let Some(marker) = marker
                            && head.contains(marker)
                            && !armed.swap(true, Ordering::SeqCst)
                        {
                            sent.store(0, Ordering::SeqCst);
                        }
                        recorded.lock().unwrap().push(head);
                        if server_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                let down = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = server_read.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        if armed.load(Ordering::SeqCst) && !cut_done.load(Ordering::SeqCst) {
                            let so_far = sent.load(Ordering::SeqCst);
                            if so_far + n >= cut_after && !cut_done.swap(true, Ordering::SeqCst) {
                                let _ = client_write.write_all(&buf[..cut_after - so_far]).await;
                                return;
                            }
                            sent.fetch_add(n, Ordering::SeqCst);
                        }
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                // The cut side ends the connection: dropping both halves closes it.
                tokio::select! {
                    () = down => {}
                    () = async { up.await; std::future::pending::<()>().await } => {}
                }
            });
        }
    });
    (format!("http://localhost:{}/", addr.port()), heads)
}

/// The request heads that asked for a range, and the first byte each asked for.
pub fn range_requests(heads: &[String]) -> Vec<(u64, bool)> {
    heads
        .iter()
        .filter_map(|h| {
            let lower = h.to_ascii_lowercase();
            let offset = lower
                .split("range: bytes=")
                .nth(1)?
                .split('-')
                .next()?
                .parse()
                .ok()?;
            Some((offset, lower.contains("if-match:")))
        })
        .collect()
}

/// Raw GET with an optional bearer token: (status, error code).
pub async fn raw_get(url: &str, bearer: Option<&str>) -> (u16, Option<String>) {
    let client = reqwest::Client::new();
    let mut request = client.get(url);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body: Option<serde_json::Value> =
        serde_json::from_slice(&response.bytes().await.unwrap()).ok();
    (
        status,
        body.and_then(|b| b.get("code").and_then(|c| c.as_str()).map(str::to_owned)),
    )
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
