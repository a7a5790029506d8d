//! A newcomer's tests of the deployment side of the README: the HTTP link between sites on
//! different machines, adopting the framework in an existing sqlx application, running a site
//! with the engine (shutdown, lease, retention, verification backfill, idle wake-ups), and the
//! operator CLI and metrics. Written from README.md, DESIGN.md, SEMANTICS.md and the rustdoc.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use replicable_core::http::{PrimaryApi, serve};
use replicable_core::link::http::token::{self, Scope, SharedSecret};
use replicable_core::link::http::{HttpPrimary, HttpPrimaryConfig};
use replicable_core::prelude::*;
use replicable_core::{ResourceError, SyncFailure};
use replicable_strategies::{BlobStrategy, DatabaseStrategy, GitRepositoryStrategy};
use replicable_tests::{descriptor as desc, get_blob, put_blob, wait_for};

type R = Result<(), Box<dyn std::error::Error>>;

// ---------------------------------------------------------------- models (from the README)

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(BlobStrategy)]
pub struct PackageFile {
    #[replicable(id)]
    pub id: i64,
    #[replicable(blob)]
    pub file_path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(GitRepositoryStrategy)]
pub struct Project {
    #[replicable(id)]
    pub id: i64,
    #[replicable(repository)]
    pub disk_path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(DatabaseStrategy)]
#[replicable(name = "ci_setting")]
pub struct CiSetting {
    #[replicable(id)]
    pub id: i64,
    pub key: String,
    pub value: String,
}

// README "Adopting in an existing sqlx application": the model is the row.
#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(DatabaseStrategy)]
pub struct Note {
    #[replicable(id)]
    pub id: i64,
    pub title: String,
    pub pinned: bool,
}

// README "Writing a strategy": a strategy whose sync never ends in time (to catch a shutdown
// with a sync in flight).
#[derive(Default)]
pub struct SlowStrategy;

#[async_trait::async_trait]
impl replicable_core::strategy::Strategy for SlowStrategy {
    const NAME: &'static str = "SlowStrategy";
    const DATA_TYPE: DataType = DataType::Database;
    const MUTABLE: bool = true;
    const VERIFIABLE: bool = false;

    async fn sync(
        &self,
        _request: replicable_core::strategy::SyncRequest<'_>,
    ) -> Result<(), SyncFailure> {
        tokio::time::sleep(Duration::from_secs(120)).await;
        Ok(())
    }

    async fn remove(
        &self,
        _context: &replicable_core::strategy::StrategyContext,
        _target: &replicable_core::strategy::ResourceTarget<'_>,
    ) -> Result<(), ResourceError> {
        Ok(())
    }

    async fn checksum(
        &self,
        _context: &replicable_core::strategy::StrategyContext,
        _target: &replicable_core::strategy::ResourceTarget<'_>,
        _record: Option<&replicable_core::storage::StoredRecord>,
    ) -> Result<String, ResourceError> {
        Ok("0".repeat(64))
    }

    async fn create_fixture(
        &self,
        _context: &replicable_core::strategy::StrategyContext,
        _target: &replicable_core::strategy::ResourceTarget<'_>,
        _record: &serde_json::Value,
        _seed: u64,
    ) -> Result<String, ResourceError> {
        Ok("0".repeat(64))
    }

    async fn corrupt(
        &self,
        _context: &replicable_core::strategy::StrategyContext,
        _target: &replicable_core::strategy::ResourceTarget<'_>,
    ) -> Result<(), ResourceError> {
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(SlowStrategy)]
pub struct SlowThing {
    #[replicable(id)]
    pub id: i64,
    pub label: String,
}

// ---------------------------------------------------------------- helpers

/// The README models without the test-only slow one.
fn readme_replicables() -> Vec<&'static replicable_core::ReplicableDescriptor> {
    vec![desc("package_file"), desc("project"), desc("ci_setting")]
}

fn pf(id: i64, key: &str) -> PackageFile {
    PackageFile {
        id,
        file_path: key.to_owned(),
    }
}

fn fast_config() -> replicable_core::engine::EngineConfig {
    let mut config = replicable_core::engine::EngineConfig::default();
    config.idle.min = Duration::from_millis(50);
    config.idle.max = Duration::from_millis(200);
    config.periods.backfill = Duration::from_secs(1);
    config.periods.verification_maintenance = Duration::from_secs(1);
    config.periods.status_report = Duration::from_millis(300);
    config.shutdown_deadline = Duration::from_secs(5);
    config
}

fn secret() -> SharedSecret {
    SharedSecret::new(b"0123456789abcdef0123456789abcdef".to_vec(), "test").expect("32 bytes")
}

fn sqlite_url(dir: &std::path::Path, file: &str) -> String {
    format!("sqlite://{}", dir.join(file).display())
}

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A bare repository `rel` under `root` with one commit; returns its work tree.
fn make_repo(tmp: &std::path::Path, root: &std::path::Path, rel: &str) -> std::path::PathBuf {
    let work = tmp.join(format!("work-{}", rel.replace('/', "-")));
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("README"), "hello").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "first"]);
    let target = root.join(rel);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    git(
        tmp,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            target.to_str().unwrap(),
        ],
    );
    work
}

/// A primary on SQLite files serving its API on 127.0.0.1:0 (nested under `/replicable` in an
/// application's Router when `nested`), and a secondary "eu" reading it over HTTP.
struct HttpSites {
    dir: tempfile::TempDir,
    primary: Site,
    secondary: Site,
    server: Option<replicable_core::http::ApiServer>,
    base: String,
}

async fn http_sites(nested: bool) -> HttpSites {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("p-repos")).unwrap();
    std::fs::create_dir_all(p.join("s-repos")).unwrap();
    let pdb = replicable_core::storage::open(&sqlite_url(p, "primary.db"))
        .await
        .unwrap();
    let primary = Site::primary("primary")
        .database(pdb)
        .blob_directory(p.join("p-blobs"))
        .repository_root(p.join("p-repos"))
        .build()
        .unwrap();
    let api = PrimaryApi::new(primary.clone()).secondary("eu", secret());
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (server, base) = if nested {
        let app = axum::Router::new().nest("/replicable", api.router());
        let server = serve(addr, app, None).await.unwrap();
        let base = format!("http://{}/replicable/", server.local_addr());
        (server, base)
    } else {
        let server = serve(addr, api.router(), None).await.unwrap();
        let base = format!("http://{}/", server.local_addr());
        (server, base)
    };
    let link = HttpPrimary::new(HttpPrimaryConfig::new(base.clone(), "eu", secret())).unwrap();
    let sdb = replicable_core::storage::open(&sqlite_url(p, "secondary.db"))
        .await
        .unwrap();
    let secondary = Site::secondary("eu", Arc::new(link))
        .database(sdb)
        .blob_directory(p.join("s-blobs"))
        .repository_root(p.join("s-repos"))
        .build()
        .unwrap();
    HttpSites {
        dir,
        primary,
        secondary,
        server: Some(server),
        base,
    }
}

/// A raw request to the primary's API: (status, body as JSON or the text as a JSON string).
async fn raw(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value, reqwest::header::HeaderMap, Vec<u8>) {
    let client = reqwest::Client::new();
    let mut req = client.request(method, url);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("body").to_vec();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, json, headers, bytes)
}

async fn get(url: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let (s, j, _, _) = raw(reqwest::Method::GET, url, token, &[]).await;
    (s, j)
}

fn tok(scope: Scope) -> String {
    token::sign("eu", &secret(), scope).expect("signed")
}

fn assert_error_body(body: &serde_json::Value, code: &str, ctx: &str) {
    assert_eq!(
        body.get("code").and_then(|c| c.as_str()),
        Some(code),
        "{ctx}: body {body}"
    );
    assert!(
        body.get("message")
            .and_then(|m| m.as_str())
            .is_some_and(|m| !m.is_empty()),
        "{ctx}: a message for people; body {body}"
    );
}

// ================================================================ 1. the HTTP link

/// README "Sites on different machines": the API nested in an application's Router, a
/// secondary with `HttpPrimary`, and the documented single passes (`log_cursor::catch_up`,
/// `workers::sync_due`, `verify_due`) replicate a blob, a git repository (smart HTTP) and a row
/// over real loopback HTTP, synced and verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_nested_router_replicates_blob_repository_and_row_with_single_passes() -> R {
    let s = http_sites(true).await;
    let (primary, secondary) = (&s.primary, &s.secondary);
    let tmp = s.dir.path();
    let work = make_repo(tmp, &tmp.join("p-repos"), "group/p1.git");

    put_blob(primary, "pkg/1.bin", b"blob over http").await;
    pf(1, "pkg/1.bin")
        .replicator(primary)
        .publish_created_event()
        .await?;
    let p1 = Project {
        id: 1,
        disk_path: "group/p1.git".into(),
    };
    p1.replicator(primary).publish_created_event().await?;
    let mut setting = CiSetting {
        id: 1,
        key: "k".into(),
        value: "v1".into(),
    };
    setting.replicator(primary).publish_created_event().await?;
    for name in ["package_file", "project", "ci_setting"] {
        replicable_core::workers::verify_due(primary, desc(name), 100, 2).await?;
    }

    replicable_core::log_cursor::catch_up(secondary, 50).await?;
    for name in ["package_file", "project", "ci_setting"] {
        replicable_core::workers::sync_due(secondary, desc(name), 100, 2).await?;
    }
    assert_eq!(
        get_blob(secondary, "pkg/1.bin").await.as_deref(),
        Some(&b"blob over http"[..]),
        "blob copied over HTTP"
    );
    let srepo = tmp.join("s-repos/group/p1.git");
    assert!(srepo.exists(), "repository cloned over smart HTTP");
    assert_eq!(
        git(&tmp.join("p-repos/group/p1.git"), &["rev-parse", "main"]),
        git(&srepo, &["rev-parse", "main"])
    );
    let copy = secondary.records().get("ci_setting", 1).await?;
    assert_eq!(
        copy.map(|r| r.body["value"].clone()),
        Some(serde_json::json!("v1")),
        "row copied over HTTP"
    );

    for name in ["package_file", "project", "ci_setting"] {
        replicable_core::workers::verify_due(secondary, desc(name), 100, 2).await?;
    }
    let b = pf(1, "pkg/1.bin")
        .replicator(secondary)
        .registry()
        .await?
        .expect("row");
    assert_eq!(
        (b.state, b.verification_state),
        (SyncState::Synced, VerificationState::Succeeded),
        "{b:?}"
    );
    let r = p1.replicator(secondary).registry().await?.expect("row");
    assert_eq!(
        (r.state, r.verification_state),
        (SyncState::Synced, VerificationState::Succeeded),
        "{r:?}"
    );
    let c = setting
        .replicator(secondary)
        .registry()
        .await?
        .expect("row");
    assert_eq!(
        (c.state, c.verification_state),
        (SyncState::Synced, VerificationState::Succeeded),
        "{c:?}"
    );

    // An update of the repository and the row, then a delete of the blob, over HTTP.
    std::fs::write(work.join("README"), "again")?;
    git(&work, &["commit", "-q", "-am", "second"]);
    git(
        &work,
        &[
            "push",
            "-q",
            tmp.join("p-repos/group/p1.git").to_str().unwrap(),
            "main",
        ],
    );
    p1.replicator(primary).publish_updated_event().await?;
    setting.value = "v2".into();
    setting.replicator(primary).publish_updated_event().await?;
    pf(1, "pkg/1.bin")
        .replicator(primary)
        .publish_deleted_event()
        .await?;
    replicable_core::log_cursor::catch_up(secondary, 50).await?;
    for name in ["package_file", "project", "ci_setting"] {
        replicable_core::workers::sync_due(secondary, desc(name), 100, 2).await?;
    }
    assert_eq!(
        git(&tmp.join("p-repos/group/p1.git"), &["rev-parse", "main"]),
        git(&srepo, &["rev-parse", "main"]),
        "new commit fetched"
    );
    assert_eq!(
        secondary
            .records()
            .get("ci_setting", 1)
            .await?
            .map(|r| r.body["value"].clone()),
        Some(serde_json::json!("v2"))
    );
    assert_eq!(
        get_blob(secondary, "pkg/1.bin").await,
        None,
        "deleted blob removed"
    );
    if let Some(server) = s.server {
        server.shutdown().await?;
    }
    Ok(())
}

/// README: `serve(addr, api.router(), None)` by itself on 127.0.0.1:0, engines on both sites:
/// the secondary replicates, and reports its status to the primary over HTTP (`POST v1/status`);
/// the primary's status then lists "eu".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_served_by_itself_engines_replicate_and_report_status() -> R {
    let s = http_sites(false).await;
    let (primary, secondary) = (&s.primary, &s.secondary);
    for id in 1..=5 {
        let key = format!("pkg/{id}");
        put_blob(primary, &key, format!("bytes {id}").as_bytes()).await;
        pf(id, &key)
            .replicator(primary)
            .publish_created_event()
            .await?;
    }
    let pe = replicable_core::engine::Engine::new(primary.clone(), readme_replicables())
        .config(fast_config())
        .start()
        .await?;
    let se = replicable_core::engine::Engine::new(secondary.clone(), readme_replicables())
        .config(fast_config())
        .start()
        .await?;
    let ok = wait_for(60, || async {
        let st = replicable_core::status::secondary_status(secondary, "package_file").await;
        st.is_ok_and(|st| st.synced_count == 5 && st.verified_count == 5)
    })
    .await;
    let st = replicable_core::status::secondary_status(secondary, "package_file").await?;
    assert!(ok, "5 blobs synced and verified over HTTP: {st:?}");
    let reps = readme_replicables();
    let last = primary.event_log().last_event_id().await?;
    let reported = wait_for(20, || async {
        replicable_core::status::site_status(primary, &reps)
            .await
            .is_ok_and(|st| {
                st.secondaries
                    .iter()
                    .any(|h| h.name == "eu" && h.healthy && h.cursor == last)
            })
    })
    .await;
    let pst = replicable_core::status::site_status(primary, &reps).await?;
    se.shutdown().await;
    pe.shutdown().await;
    assert!(
        reported,
        "the primary lists secondary eu, healthy: {:?}",
        pst.secondaries
    );
    let eu = pst.secondaries.iter().find(|h| h.name == "eu").unwrap();
    assert_eq!(eu.cursor, last, "reported cursor");
    s.server.unwrap().shutdown().await?;
    Ok(())
}

/// README: a secondary reports "every `periods.status_report` (30 s; at start, and again 5 s
/// later)": with the default period, the primary sees the caught-up cursor within seconds of the
/// start, not half a minute later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_reports_again_soon_after_its_start() -> R {
    let s = http_sites(false).await;
    let (primary, secondary) = (&s.primary, &s.secondary);
    for id in 1..=3 {
        let key = format!("soon/{id}");
        put_blob(primary, &key, format!("soon {id}").as_bytes()).await;
        pf(id, &key)
            .replicator(primary)
            .publish_created_event()
            .await?;
    }
    let mut config = fast_config();
    config.periods.status_report = replicable_core::engine::EngineConfig::default()
        .periods
        .status_report;
    assert_eq!(config.periods.status_report, Duration::from_secs(30));
    let started = std::time::Instant::now();
    let se = replicable_core::engine::Engine::new(secondary.clone(), readme_replicables())
        .config(config)
        .start()
        .await?;
    let reps = readme_replicables();
    let last = primary.event_log().last_event_id().await?;
    let reported = wait_for(20, || async {
        replicable_core::status::site_status(primary, &reps)
            .await
            .is_ok_and(|st| {
                st.secondaries
                    .iter()
                    .any(|h| h.name == "eu" && h.cursor == last)
            })
    })
    .await;
    let took = started.elapsed();
    se.shutdown().await;
    s.server.unwrap().shutdown().await?;
    assert!(
        reported,
        "the primary saw the secondary's cursor at {last:?}"
    );
    // Well before the 30 s period (the second report is due 5 s after the start).
    assert!(took < Duration::from_secs(20), "{took:?}");
    Ok(())
}

/// README: "A missing, invalid, expired or foreign token is refused with 401, a token for
/// something else with 403 ... What the primary does not have answers 404 with the code
/// `not_found` (JSON `{code, message}`)".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_refusals_are_401_403_404_with_code_and_message() -> R {
    let s = http_sites(true).await;
    let primary = &s.primary;
    put_blob(primary, "pkg/1", b"one").await;
    pf(1, "pkg/1")
        .replicator(primary)
        .publish_created_event()
        .await?;
    pf(2, "pkg/missing")
        .replicator(primary)
        .publish_created_event()
        .await?;
    let base = &s.base;

    // Missing token.
    let (st, body) = get(&format!("{base}v1/events/last"), None).await;
    assert_eq!(st, 401, "missing token: {body}");
    assert_error_body(&body, "unauthorized", "missing token");
    // Not a token.
    let (st, body) = get(&format!("{base}v1/events/last"), Some("not-a-jwt")).await;
    assert_eq!(st, 401, "garbage token: {body}");
    assert_error_body(&body, "unauthorized", "garbage token");
    // Wrong secret, right name.
    let wrong = SharedSecret::new(vec![b'x'; 32], "wrong")?;
    let t = token::sign("eu", &wrong, Scope::Events)?;
    let (st, body) = get(&format!("{base}v1/events/last"), Some(&t)).await;
    assert_eq!(st, 401, "wrong secret: {body}");
    assert_error_body(&body, "unauthorized", "wrong secret");
    // A foreign secondary (not configured).
    let t = token::sign("us", &secret(), Scope::Events)?;
    let (st, body) = get(&format!("{base}v1/events/last"), Some(&t)).await;
    assert_eq!(st, 401, "foreign secondary: {body}");
    // Expired (issued 10 minutes ago, valid 60 s).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let t = token::sign_at(
        "eu",
        &secret(),
        Scope::Events,
        now - 600,
        Duration::from_secs(60),
    )?;
    let (st, body) = get(&format!("{base}v1/events/last"), Some(&t)).await;
    assert_eq!(st, 401, "expired: {body}");
    assert_error_body(&body, "unauthorized", "expired token");
    // Valid events token.
    let (st, body) = get(&format!("{base}v1/events/last"), Some(&tok(Scope::Events))).await;
    assert_eq!(st, 200, "events token on the events route: {body}");

    // A token for something else: 403.
    let (st, body) = get(
        &format!("{base}v1/records/package_file/1"),
        Some(&tok(Scope::Events)),
    )
    .await;
    assert_eq!(st, 403, "events token on a record: {body}");
    assert_error_body(&body, "forbidden", "events token on a record");
    let t = tok(Scope::Record {
        replicable: "package_file".into(),
        id: 2,
    });
    let (st, body) = get(&format!("{base}v1/records/package_file/1"), Some(&t)).await;
    assert_eq!(st, 403, "token of record 2 on record 1: {body}");
    let t = tok(Scope::Blob {
        replicable: "package_file".into(),
        id: 1,
        key: "pkg/other".into(),
    });
    let (st, body) = get(
        &format!("{base}v1/blobs/package_file/1?key=pkg%2F1"),
        Some(&t),
    )
    .await;
    assert_eq!(st, 403, "token of another key: {body}");

    // What the primary does not have: 404 not_found.
    let t = tok(Scope::Record {
        replicable: "package_file".into(),
        id: 999,
    });
    let (st, body) = get(&format!("{base}v1/records/package_file/999"), Some(&t)).await;
    assert_eq!(st, 404, "absent record: {body}");
    assert_error_body(&body, "not_found", "absent record");
    let t = tok(Scope::Blob {
        replicable: "package_file".into(),
        id: 2,
        key: "pkg/missing".into(),
    });
    let (st, body) = get(
        &format!("{base}v1/blobs/package_file/2?key=pkg%2Fmissing"),
        Some(&t),
    )
    .await;
    assert_eq!(st, 404, "absent blob: {body}");
    assert_error_body(&body, "not_found", "absent blob");
    // A route that does not exist is a 404, but not `not_found` (that would be data loss).
    let (st, body) = get(&format!("{base}v1/nothing-here"), Some(&tok(Scope::Events))).await;
    assert_eq!(st, 404, "unknown route: {body}");
    assert_ne!(
        body.get("code").and_then(|c| c.as_str()),
        Some("not_found"),
        "an unknown route must not read as a missing record: {body}"
    );
    // git receive-pack is refused.
    let t = tok(Scope::Repository {
        replicable: "project".into(),
        id: 1,
        path: "group/p1.git".into(),
    });
    let (st, body) = get(
        &format!("{base}v1/git/project/1/group/p1.git/info/refs?service=git-receive-pack"),
        Some(&t),
    )
    .await;
    assert!(st >= 400, "receive-pack refused, got {st}: {body}");
    s.server.unwrap().shutdown().await?;
    Ok(())
}

/// README: "A missing ... token is refused with 401"; wire.rs: `ErrorBody` is "The body of
/// every error answer". A request without a token is refused as such even when its query, path
/// or body is malformed, and every error answer is `{code, message}` JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_malformed_requests_without_token_are_401_and_errors_are_json() -> R {
    let s = http_sites(true).await;
    let base = s.base.clone();
    let mut problems = Vec::new();
    for (method, path) in [
        (reqwest::Method::GET, "v1/events"),
        (reqwest::Method::GET, "v1/events?after=abc&limit=1"),
        (reqwest::Method::GET, "v1/records/package_file/not-a-number"),
        (reqwest::Method::GET, "v1/records/package_file?from=x"),
        (
            reqwest::Method::GET,
            "v1/records/package_file/batch?ids=1,x",
        ),
        (reqwest::Method::GET, "v1/blobs/package_file/1"),
        (reqwest::Method::POST, "v1/status"),
    ] {
        let (st, body, _, _) = raw(method.clone(), &format!("{base}{path}"), None, &[]).await;
        if st != 401 {
            problems.push(format!("{method} {path} without a token: {st} {body}"));
        }
    }
    // With a valid token, a malformed query is a 400 with `{code: "refused", message}`.
    let (st, body) = get(
        &format!("{base}v1/events?after=abc&limit=1"),
        Some(&tok(Scope::Events)),
    )
    .await;
    if !(st == 400 && body.get("code").and_then(|c| c.as_str()) == Some("refused")) {
        problems.push(format!(
            "malformed query with a token: {st} {body} (expected 400 {{code: refused}})"
        ));
    }
    s.server.unwrap().shutdown().await?;
    assert!(
        problems.is_empty(),
        "not as documented:\n{}",
        problems.join("\n")
    );
    Ok(())
}

/// README: "Secrets come from a file or the environment (at least 32 bytes)."
#[test]
fn http_secrets_shorter_than_32_bytes_are_refused() -> R {
    assert!(
        SharedSecret::new(vec![b'a'; 31], "short").is_err(),
        "31 bytes refused"
    );
    assert!(
        SharedSecret::new(vec![b'a'; 32], "ok").is_ok(),
        "32 bytes accepted"
    );
    let dir = tempfile::tempdir()?;
    let short = dir.path().join("short");
    std::fs::write(&short, "too short\n")?;
    let e = SharedSecret::from_file(&short).expect_err("short file refused");
    assert!(e.to_string().contains("32"), "error names the minimum: {e}");
    // Whitespace around is not counted: 31 bytes plus a newline is still too short.
    std::fs::write(&short, format!("{}\n", "b".repeat(31)))?;
    assert!(
        SharedSecret::from_file(&short).is_err(),
        "31 + newline refused"
    );
    let ok = dir.path().join("ok");
    std::fs::write(&ok, format!("{}\n", "c".repeat(32)))?;
    assert!(SharedSecret::from_file(&ok).is_ok());
    // README's `geo-demo` recipe: `head -c 32 /dev/urandom | base64` gives 44 characters.
    assert!(SharedSecret::from_env("REPLICABLE_DOC_TEST_SURELY_UNSET_VAR").is_err());
    Ok(())
}

/// README: "the secondary records the record *missing on primary*" for a 404 `not_found`;
/// "Any other 404 is a failure to reach it": a secondary pointed at a wrong prefix fails the
/// sync without taking the record for missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_blob_missing_on_primary_is_recorded_and_a_wrong_url_is_not() -> R {
    let s = http_sites(true).await;
    let (primary, secondary) = (&s.primary, &s.secondary);
    pf(7, "pkg/never-written")
        .replicator(primary)
        .publish_created_event()
        .await?;
    replicable_core::log_cursor::catch_up(secondary, 50).await?;
    replicable_core::workers::sync_due(secondary, desc("package_file"), 100, 2).await?;
    let row = pf(7, "pkg/never-written")
        .replicator(secondary)
        .registry()
        .await?
        .expect("row");
    assert_eq!(row.state, SyncState::Failed, "{row:?}");
    assert!(
        row.missing_on_primary,
        "missing on primary over HTTP: {row:?}"
    );
    assert_eq!(row.retry_count, 1);

    // Another record, its intent recorded while paused; then the same secondary database
    // opened with a link pointed at a wrong prefix: the 404 there is not `not_found`.
    put_blob(primary, "pkg/8", b"eight").await;
    replicable_core::engine::set_site_replication_enabled(secondary, false).await?;
    pf(8, "pkg/8")
        .replicator(primary)
        .publish_created_event()
        .await?;
    replicable_core::log_cursor::catch_up(secondary, 50).await?;
    let row = pf(8, "pkg/8")
        .replicator(secondary)
        .registry()
        .await?
        .expect("intent recorded");
    assert_eq!(
        row.state,
        SyncState::Pending,
        "paused: pending only: {row:?}"
    );
    let wrong_base = s.base.replace("/replicable/", "/not-the-api/");
    let link = HttpPrimary::new(HttpPrimaryConfig::new(wrong_base, "eu", secret()))?;
    let sdb = replicable_core::storage::open(&sqlite_url(s.dir.path(), "secondary.db")).await?;
    let other = Site::secondary("eu", Arc::new(link))
        .database(sdb)
        .blob_directory(s.dir.path().join("s-blobs"))
        .build()?;
    replicable_core::engine::set_site_replication_enabled(&other, true).await?;
    replicable_core::workers::sync_due(&other, desc("package_file"), 100, 2).await?;
    let row = pf(8, "pkg/8")
        .replicator(&other)
        .registry()
        .await?
        .expect("row");
    assert_eq!(row.state, SyncState::Failed, "{row:?}");
    assert!(
        !row.missing_on_primary,
        "a 404 of a wrong URL must not be taken for missing on primary: {row:?}"
    );
    s.server.unwrap().shutdown().await?;
    Ok(())
}

/// README: "A caught-up secondary long-polls the log (`GET v1/events/last?after=N&wait_ms=M`):
/// the primary answers as soon as an event after N exists (capped at 5 s)."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_long_poll_answers_on_publish_and_caps_at_five_seconds() -> R {
    let s = http_sites(true).await;
    let primary = s.primary.clone();
    put_blob(&primary, "pkg/1", b"1").await;
    let first = pf(1, "pkg/1")
        .replicator(&primary)
        .publish_created_event()
        .await?
        .expect("id");
    let base = s.base.clone();
    let (st, body) = get(&format!("{base}v1/events/last"), Some(&tok(Scope::Events))).await;
    assert_eq!(st, 200);
    assert_eq!(body["last"].as_i64(), Some(first), "last event id: {body}");

    // A publish during the wait answers it.
    let url = format!("{base}v1/events/last?after={first}&wait_ms=4500");
    let started = Instant::now();
    let waiter = tokio::spawn(async move { get(&url, Some(&tok(Scope::Events))).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    put_blob(&primary, "pkg/2", b"2").await;
    let second = pf(2, "pkg/2")
        .replicator(&primary)
        .publish_created_event()
        .await?
        .expect("id");
    let (st, body) = waiter.await?;
    let took = started.elapsed();
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        body["last"].as_i64(),
        Some(second),
        "answered with the new event: {body}"
    );
    assert!(
        took < Duration::from_millis(4000),
        "answered when the event appeared, not at the end of the wait: {took:?}"
    );

    // Nothing new: the wait is capped at 5 s whatever wait_ms says.
    let started = Instant::now();
    let (st, body) = get(
        &format!("{base}v1/events/last?after={second}&wait_ms=60000"),
        Some(&tok(Scope::Events)),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["last"].as_i64(), Some(second), "{body}");
    assert!(
        took >= Duration::from_millis(4000) && took < Duration::from_secs(10),
        "held about 5 s (the cap), took {took:?}"
    );
    // A short wait is honoured.
    let started = Instant::now();
    let (st, _) = get(
        &format!("{base}v1/events/last?after={second}&wait_ms=200"),
        Some(&tok(Scope::Events)),
    )
    .await;
    assert_eq!(st, 200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    s.server.unwrap().shutdown().await?;
    Ok(())
}

/// The routes of `replicable_core::link::http::wire`, each with its documented token scope,
/// including the batch reads and `Range` on blobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_wire_routes_and_batch_reads() -> R {
    let s = http_sites(true).await;
    let primary = &s.primary;
    let tmp = s.dir.path();
    make_repo(tmp, &tmp.join("p-repos"), "group/p1.git");
    for id in 1..=3 {
        let key = format!("pkg/{id}");
        put_blob(primary, &key, format!("content number {id}").as_bytes()).await;
        pf(id, &key)
            .replicator(primary)
            .publish_created_event()
            .await?;
    }
    Project {
        id: 1,
        disk_path: "group/p1.git".into(),
    }
    .replicator(primary)
    .publish_created_event()
    .await?;
    replicable_core::workers::verify_due(primary, desc("package_file"), 100, 2).await?;
    let base = &s.base;

    // GET v1/events?after=N&limit=M
    let (st, body) = get(
        &format!("{base}v1/events?after=0&limit=2"),
        Some(&tok(Scope::Events)),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let n = body
        .as_array()
        .or_else(|| body.get("events").and_then(|e| e.as_array()))
        .map(Vec::len);
    assert_eq!(n, Some(2), "two events with limit=2: {body}");

    // GET v1/records/{name}?from=A&to=B&limit=M
    let t = tok(Scope::Ids {
        replicable: "package_file".into(),
    });
    let (st, body) = get(
        &format!("{base}v1/records/package_file?from=0&to=100&limit=10"),
        Some(&t),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert!(body.to_string().contains('3'), "ids listed: {body}");

    // GET v1/records/{name}/{id}
    let t = tok(Scope::Record {
        replicable: "package_file".into(),
        id: 2,
    });
    let (st, body) = get(&format!("{base}v1/records/package_file/2"), Some(&t)).await;
    assert_eq!(st, 200, "{body}");
    assert!(body.to_string().contains("pkg/2"), "{body}");

    // GET v1/verification/{name}/{id}: the primary's SHA-256.
    let t = tok(Scope::Verification {
        replicable: "package_file".into(),
        id: 2,
    });
    let (st, body) = get(&format!("{base}v1/verification/package_file/2"), Some(&t)).await;
    assert_eq!(st, 200, "{body}");
    let sha = {
        use sha2_free::sha256_hex;
        sha256_hex(b"content number 2")
    };
    assert!(body.to_string().contains(&sha), "checksum {sha} in {body}");

    // Batch reads: the records of the ids that exist.
    let t = tok(Scope::Records {
        replicable: "package_file".into(),
        ids: vec![1, 3, 999],
    });
    let (st, body) = get(
        &format!("{base}v1/records/package_file/batch?ids=1,3,999"),
        Some(&t),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("pkg/1") && text.contains("pkg/3") && !text.contains("pkg/2"),
        "{body}"
    );
    // A token naming other ids: 403.
    let t = tok(Scope::Records {
        replicable: "package_file".into(),
        ids: vec![1, 2],
    });
    let (st, body) = get(
        &format!("{base}v1/records/package_file/batch?ids=1,3"),
        Some(&t),
    )
    .await;
    assert_eq!(st, 403, "{body}");
    // More than 100 ids: refused.
    let ids: Vec<i64> = (1..=101).collect();
    let t = tok(Scope::Records {
        replicable: "package_file".into(),
        ids: ids.clone(),
    });
    let q = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let (st, body) = get(
        &format!("{base}v1/records/package_file/batch?ids={q}"),
        Some(&t),
    )
    .await;
    assert!(st == 400 || st == 422, "101 ids refused, got {st}: {body}");
    let t = tok(Scope::Verifications {
        replicable: "package_file".into(),
        ids: vec![1, 2],
    });
    let (st, body) = get(
        &format!("{base}v1/verification/package_file/batch?ids=1,2"),
        Some(&t),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert!(body.to_string().contains(&sha), "{body}");

    // GET v1/blobs/{name}/{id}?key=K, whole and with Range.
    let t = tok(Scope::Blob {
        replicable: "package_file".into(),
        id: 3,
        key: "pkg/3".into(),
    });
    let (st, _, _, bytes) = raw(
        reqwest::Method::GET,
        &format!("{base}v1/blobs/package_file/3?key=pkg%2F3"),
        Some(&t),
        &[],
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(bytes, b"content number 3");
    let (st, _, headers, bytes) = raw(
        reqwest::Method::GET,
        &format!("{base}v1/blobs/package_file/3?key=pkg%2F3"),
        Some(&t),
        &[("Range", "bytes=8-13")],
    )
    .await;
    assert_eq!(st, 206, "Range honoured");
    assert_eq!(bytes, b"number", "bytes 8-13");
    assert!(
        headers.get("etag").is_some(),
        "an ETag to resume with If-Match"
    );

    // git smart HTTP: info/refs of upload-pack.
    let t = tok(Scope::Repository {
        replicable: "project".into(),
        id: 1,
        path: "group/p1.git".into(),
    });
    let (st, _, headers, bytes) = raw(
        reqwest::Method::GET,
        &format!("{base}v1/git/project/1/group/p1.git/info/refs?service=git-upload-pack"),
        Some(&t),
        &[],
    )
    .await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/x-git-upload-pack-advertisement")
    );
    assert!(String::from_utf8_lossy(&bytes).contains("refs/heads/main"));

    // POST v1/status (a well-formed report) with a non-status token: 403; with its own: 204.
    let report = serde_json::to_vec(&replicable_tests::status_report(0))?;
    let post = |t: String| {
        let report = report.clone();
        let url = format!("{base}v1/status");
        async move {
            reqwest::Client::new()
                .post(url)
                .header("Authorization", format!("Bearer {t}"))
                .header("content-type", "application/json")
                .body(report)
                .send()
                .await
                .expect("sent")
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        post(tok(Scope::Events)).await,
        403,
        "events token on the status route"
    );
    assert_eq!(post(tok(Scope::Status)).await, 204, "status token");
    s.server.unwrap().shutdown().await?;
    Ok(())
}

/// Minimal SHA-256 (the tests crate has no sha2 dependency; FIPS 180-4).
mod sha2_free {
    pub fn sha256_hex(data: &[u8]) -> String {
        const K: [u32; 64] = [
            0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
            0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
            0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
            0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
            0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
            0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
            0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
            0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
            0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
            0xc67178f2,
        ];
        let mut h: [u32; 8] = [
            0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
            0x5be0cd19,
        ];
        let mut msg = data.to_vec();
        let bits = (data.len() as u64) * 8;
        msg.push(0x80);
        while msg.len() % 64 != 56 {
            msg.push(0);
        }
        msg.extend_from_slice(&bits.to_be_bytes());
        for chunk in msg.chunks(64) {
            let mut w = [0u32; 64];
            for i in 0..16 {
                w[i] = u32::from_be_bytes([
                    chunk[4 * i],
                    chunk[4 * i + 1],
                    chunk[4 * i + 2],
                    chunk[4 * i + 3],
                ]);
            }
            for i in 16..64 {
                let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
                let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
                w[i] = w[i - 16]
                    .wrapping_add(s0)
                    .wrapping_add(w[i - 7])
                    .wrapping_add(s1);
            }
            let mut v = h;
            for i in 0..64 {
                let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
                let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
                let t1 = v[7]
                    .wrapping_add(s1)
                    .wrapping_add(ch)
                    .wrapping_add(K[i])
                    .wrapping_add(w[i]);
                let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
                let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
                let t2 = s0.wrapping_add(maj);
                v = [
                    t1.wrapping_add(t2),
                    v[0],
                    v[1],
                    v[2],
                    v[3].wrapping_add(t1),
                    v[4],
                    v[5],
                    v[6],
                ];
            }
            for i in 0..8 {
                h[i] = h[i].wrapping_add(v[i]);
            }
        }
        h.iter().map(|x| format!("{x:08x}")).collect()
    }

    #[test]
    fn known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

// ================================================================ 2. the application's own sqlx tables

async fn app_sqlite_pool(path: &std::path::Path) -> sqlx::SqlitePool {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(2)
        .connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .expect("application pool");
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, title TEXT NOT NULL, pinned BOOLEAN NOT NULL)",
    )
    .execute(&pool)
    .await
    .expect("application table");
    pool
}

async fn generation(site: &Site, id: i64) -> Option<i64> {
    site.record_source("note")
        .expect("note has a record source")
        .get(id)
        .await
        .expect("read")
        .map(|r| r.generation)
}

/// README "Adopting in an existing sqlx application", its six lines on SQLite (schema given as
/// in the snippet): publishing in the application's transaction, a rollback publishing nothing,
/// generations 0 / 1 / +1, bulk rows found by backfill and by the primary's verification
/// backfill, copies landing in the secondary's own `notes` table, deleted ids keeping their
/// generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_sqlite_table_readme_lines_end_to_end() -> R {
    use replicable_core::storage::sql::{SqlOptions, SqlStore, SqlTable};
    use sqlx::Row;
    let dir = tempfile::tempdir()?;
    let app = app_sqlite_pool(&dir.path().join("primary.db")).await;

    let url = sqlite_url(dir.path(), "primary.db");
    let db = SqlStore::open_with(
        &url,
        SqlOptions {
            schema: Some("replication".into()),
            replicables: vec!["note".into()],
            ..Default::default()
        },
    )
    .await?; // 3
    let notes = SqlTable::new(&db, "note", "notes", "id")?; // 4
    let primary = Site::primary("primary")
        .database(db)
        .record_source("note", notes)
        .build()?; // 5

    // 6: in the application's transaction.
    let before = primary.event_log().last_event_id().await?;
    let mut tx = app.begin().await?;
    sqlx::query("INSERT INTO notes (id, title, pinned) VALUES (1, 'first', 1)")
        .execute(&mut *tx)
        .await?;
    let note1 = Note {
        id: 1,
        title: "first".into(),
        pinned: true,
    };
    let ev = note1
        .replicator(&primary)
        .publish_created_event_in(&mut *tx)
        .await?;
    tx.commit().await?;
    assert!(ev.is_some(), "an event id");
    assert_eq!(primary.event_log().last_event_id().await?, ev);
    assert_ne!(ev, before);
    assert_eq!(
        generation(&primary, 1).await,
        Some(1),
        "first publish makes generation 1"
    );

    // A rolled-back transaction publishes nothing.
    let mut tx = app.begin().await?;
    sqlx::query("INSERT INTO notes (id, title, pinned) VALUES (2, 'never', 0)")
        .execute(&mut *tx)
        .await?;
    Note {
        id: 2,
        title: "never".into(),
        pinned: false,
    }
    .replicator(&primary)
    .publish_created_event_in(&mut *tx)
    .await?;
    tx.rollback().await?;
    assert_eq!(
        primary.event_log().last_event_id().await?,
        ev,
        "rollback: no event"
    );
    assert_eq!(
        generation(&primary, 2).await,
        None,
        "rollback: no row, no generation"
    );
    let ver = primary.verification_store().get("note", 2).await?;
    assert!(ver.is_none(), "rollback: no verification row: {ver:?}");

    // Update: +1.
    let mut tx = app.begin().await?;
    sqlx::query("UPDATE notes SET title = 'second' WHERE id = 1")
        .execute(&mut *tx)
        .await?;
    let note1 = Note {
        title: "second".into(),
        ..note1
    };
    note1
        .replicator(&primary)
        .publish_updated_event_in(&mut *tx)
        .await?;
    tx.commit().await?;
    assert_eq!(generation(&primary, 1).await, Some(2), "+1 per publish");

    // A row written without a publish: generation 0.
    sqlx::query("INSERT INTO notes (id, title, pinned) VALUES (3, 'bulk', 0)")
        .execute(&app)
        .await?;
    assert_eq!(
        generation(&primary, 3).await,
        Some(0),
        "no publish yet: generation 0"
    );

    // The secondary: its own database file, its own `notes` table.
    let sapp = app_sqlite_pool(&dir.path().join("secondary.db")).await;
    let sdb = SqlStore::open_with(
        &sqlite_url(dir.path(), "secondary.db"),
        SqlOptions {
            replicables: vec!["note".into()],
            ..Default::default()
        },
    )
    .await?;
    let snotes = SqlTable::new(&sdb, "note", "notes", "id")?;
    let secondary = Site::secondary("secondary", Arc::new(InProcessPrimary::new(&primary)))
        .database(sdb)
        .record_source("note", snotes)
        .build()?;
    replicable_core::log_cursor::catch_up(&secondary, 50).await?;
    replicable_core::backfill::backfill(&secondary, desc("note"), 10_000).await?;
    replicable_core::workers::sync_due(&secondary, desc("note"), 100, 2).await?;
    let rows: Vec<(i64, String, bool)> =
        sqlx::query("SELECT id, title, pinned FROM notes ORDER BY id")
            .fetch_all(&sapp)
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
    assert_eq!(
        rows,
        vec![
            (1, "second".to_owned(), true),
            (3, "bulk".to_owned(), false)
        ],
        "copies are rows of the secondary's notes table, the bulk row found by backfill"
    );

    // The primary's verification backfill gives the bulk row a verification row.
    let made =
        replicable_core::backfill::backfill_primary_verification(&primary, desc("note"), 1000)
            .await?;
    assert!(made >= 1, "row 3 had no verification row; made {made}");
    replicable_core::workers::verify_due(&primary, desc("note"), 100, 2).await?;
    let pst = replicable_core::status::primary_status(&primary, "note").await?;
    assert_eq!((pst.count, pst.checksummed_count), (2, 2), "{pst:?}");
    replicable_core::log_cursor::catch_up(&secondary, 50).await?;
    replicable_core::workers::verify_due(&secondary, desc("note"), 100, 2).await?;
    let sst = replicable_core::status::secondary_status(&secondary, "note").await?;
    assert_eq!((sst.synced_count, sst.verified_count), (2, 2), "{sst:?}");

    // The bulk row's first publish: 0 -> 1.
    let mut tx = app.begin().await?;
    Note {
        id: 3,
        title: "bulk".into(),
        pinned: false,
    }
    .replicator(&primary)
    .publish_updated_event_in(&mut *tx)
    .await?;
    tx.commit().await?;
    assert_eq!(
        generation(&primary, 3).await,
        Some(1),
        "first publish of a bulk row: 1"
    );

    // Delete in the transaction; the id re-used later does not go back.
    let mut tx = app.begin().await?;
    sqlx::query("DELETE FROM notes WHERE id = 1")
        .execute(&mut *tx)
        .await?;
    note1
        .replicator(&primary)
        .publish_deleted_event_in(&mut *tx)
        .await?;
    tx.commit().await?;
    replicable_core::log_cursor::catch_up(&secondary, 50).await?;
    let n: i64 = sqlx::query("SELECT COUNT(*) FROM notes WHERE id = 1")
        .fetch_one(&sapp)
        .await?
        .get(0);
    assert_eq!(n, 0, "the delete removed the secondary's row");
    let mut tx = app.begin().await?;
    sqlx::query("INSERT INTO notes (id, title, pinned) VALUES (1, 'reborn', 0)")
        .execute(&mut *tx)
        .await?;
    Note {
        id: 1,
        title: "reborn".into(),
        pinned: false,
    }
    .replicator(&primary)
    .publish_created_event_in(&mut *tx)
    .await?;
    tx.commit().await?;
    assert_eq!(
        generation(&primary, 1).await,
        Some(3),
        "a re-used id continues from the kept generation"
    );
    replicable_core::log_cursor::catch_up(&secondary, 50).await?;
    let title: String = sqlx::query("SELECT title FROM notes WHERE id = 1")
        .fetch_one(&sapp)
        .await?
        .get(0);
    assert_eq!(title, "reborn");
    Ok(())
}

/// The same on PostgreSQL, as the README writes it (`public.notes`, a schema for the
/// framework), in fresh schemas dropped at the end. Skipped when the lane is not set up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_postgres_table_readme_lines() -> R {
    use replicable_core::storage::sql::{SqlOptions, SqlStore, SqlTable};
    use sqlx::Row;
    let Some(target) = replicable_tests::PostgresTarget::new() else {
        eprintln!("skipped: no PostgreSQL lane");
        return Ok(());
    };
    let app_schema = format!("{}_app", target.schema);
    let fw_schema = format!("{}_fw", target.schema);
    let sapp_schema = format!("{}_sapp", target.schema);
    let sfw_schema = format!("{}_sfw", target.schema);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&target.url)
        .await?;
    for s in [&app_schema, &sapp_schema] {
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {s}")))
            .execute(&pool)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {s}.notes (id BIGINT PRIMARY KEY, title TEXT NOT NULL, pinned BOOLEAN NOT NULL)"
        )))
        .execute(&pool)
        .await?;
    }
    let result: R = async {
        let db = SqlStore::open_with(
            &target.url,
            SqlOptions {
                schema: Some(fw_schema.clone()),
                replicables: vec!["note".into()],
                ..Default::default()
            },
        )
        .await?;
        let notes = SqlTable::new(&db, "note", &format!("{app_schema}.notes"), "id")?;
        let primary = Site::primary("primary")
            .database(db)
            .record_source("note", notes)
            .build()?;
        let mut tx = pool.begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {app_schema}.notes VALUES (1, 'pg', true)"
        )))
        .execute(&mut *tx)
        .await?;
        Note {
            id: 1,
            title: "pg".into(),
            pinned: true,
        }
        .replicator(&primary)
        .publish_created_event_in(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut tx = pool.begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {app_schema}.notes VALUES (2, 'rolled back', false)"
        )))
        .execute(&mut *tx)
        .await?;
        let ev = Note {
            id: 2,
            title: "rolled back".into(),
            pinned: false,
        }
        .replicator(&primary)
        .publish_created_event_in(&mut *tx)
        .await?;
        tx.rollback().await?;
        assert!(ev.is_some());
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {app_schema}.notes VALUES (3, 'bulk', false)"
        )))
        .execute(&pool)
        .await?;
        assert_eq!(generation(&primary, 1).await, Some(1));
        assert_eq!(generation(&primary, 2).await, None);
        assert_eq!(generation(&primary, 3).await, Some(0));

        let sdb = SqlStore::open_with(
            &target.url,
            SqlOptions {
                schema: Some(sfw_schema.clone()),
                replicables: vec!["note".into()],
                ..Default::default()
            },
        )
        .await?;
        let snotes = SqlTable::new(&sdb, "note", &format!("{sapp_schema}.notes"), "id")?;
        let secondary = Site::secondary("secondary", Arc::new(InProcessPrimary::new(&primary)))
            .database(sdb)
            .record_source("note", snotes)
            .build()?;
        replicable_core::log_cursor::catch_up(&secondary, 50).await?;
        // The rolled-back event id is a gap the cursor keeps; the row never comes.
        replicable_core::backfill::backfill(&secondary, desc("note"), 10_000).await?;
        replicable_core::workers::sync_due(&secondary, desc("note"), 100, 2).await?;
        let rows: Vec<(i64, String, bool)> = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id, title, pinned FROM {sapp_schema}.notes ORDER BY id"
        )))
        .fetch_all(&pool)
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
        assert_eq!(
            rows,
            vec![(1, "pg".to_owned(), true), (3, "bulk".to_owned(), false)]
        );
        Ok(())
    }
    .await;
    for s in [&app_schema, &sapp_schema, &fw_schema, &sfw_schema] {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {s} CASCADE"
        )))
        .execute(&pool)
        .await;
    }
    result
}

// ================================================================ 3. the engine

fn mem_pair() -> (Site, Site) {
    let primary = Site::primary("primary")
        .in_memory()
        .build()
        .expect("primary");
    let secondary = Site::secondary("secondary", Arc::new(InProcessPrimary::new(&primary)))
        .in_memory()
        .build()
        .expect("secondary");
    (primary, secondary)
}

/// README: "`handle.shutdown()` ... lets in-flight syncs finish within `shutdown_deadline`,
/// hands back what did not (to pending, never left `started`)".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_shutdown_hands_back_an_in_flight_sync_to_pending() -> R {
    let (primary, secondary) = mem_pair();
    let thing = SlowThing {
        id: 1,
        label: "slow".into(),
    };
    thing.replicator(&primary).publish_created_event().await?;
    let mut config = fast_config();
    config.shutdown_deadline = Duration::from_secs(1);
    let engine = replicable_core::engine::Engine::new(secondary.clone(), vec![desc("slow_thing")])
        .config(config)
        .start()
        .await?;
    let running = wait_for(30, || async {
        matches!(thing.replicator(&secondary).registry().await, Ok(Some(r)) if r.state == SyncState::Started)
    })
    .await;
    assert!(running, "the slow sync started");
    assert_eq!(engine.in_flight(), 1);
    let t0 = Instant::now();
    let report = engine.shutdown().await;
    let took = t0.elapsed();
    let row = thing
        .replicator(&secondary)
        .registry()
        .await?
        .expect("row kept");
    assert_eq!(report.released, 1, "{report:?}");
    assert_eq!(
        row.state,
        SyncState::Pending,
        "handed back to pending, not left started: {row:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "shutdown bounded by the deadline: {took:?}"
    );
    Ok(())
}

/// README: shutdown "releases the cursor lease so a restarted process takes over at once"
/// (the lease lasts 30 s otherwise). Two engines, one after the other, on the same SQLite file;
/// and `engine::set_site_replication_enabled` persisted across a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_shutdown_releases_the_cursor_lease_to_the_next_engine() -> R {
    let dir = tempfile::tempdir()?;
    let primary = Site::primary("primary").in_memory().build()?;
    let open_secondary = || async {
        let db = replicable_core::storage::open(&sqlite_url(dir.path(), "secondary.db"))
            .await
            .unwrap();
        Site::secondary("secondary", Arc::new(InProcessPrimary::new(&primary)))
            .database(db)
            .blob_directory(dir.path().join("blobs"))
            .build()
            .unwrap()
    };
    let first = open_secondary().await;
    put_blob(&primary, "a", b"a").await;
    pf(1, "a")
        .replicator(&primary)
        .publish_created_event()
        .await?;
    let a = replicable_core::engine::Engine::new(first.clone(), readme_replicables())
        .config(fast_config())
        .holder("process-a")
        .start()
        .await?;
    let ok = wait_for(30, || async {
        matches!(pf(1, "a").replicator(&first).registry().await, Ok(Some(r)) if r.state == SyncState::Synced)
    })
    .await;
    assert!(ok, "engine A synced record 1 (so it held the lease)");
    a.shutdown().await;

    let second = open_secondary().await;
    let b = replicable_core::engine::Engine::new(second.clone(), readme_replicables())
        .config(fast_config())
        .holder("process-b")
        .start()
        .await?;
    put_blob(&primary, "b", b"b").await;
    pf(2, "b")
        .replicator(&primary)
        .publish_created_event()
        .await?;
    let t0 = Instant::now();
    let ok = wait_for(60, || async {
        matches!(pf(2, "b").replicator(&second).registry().await, Ok(Some(r)) if r.state == SyncState::Synced)
    })
    .await;
    let took = t0.elapsed();
    b.shutdown().await;
    assert!(ok, "engine B consumed the next event");
    assert!(
        took < Duration::from_secs(15),
        "B took over at once, not after the 30 s lease expired: {took:?}"
    );

    replicable_core::engine::set_site_replication_enabled(&second, false).await?;
    let third = open_secondary().await;
    assert!(
        !third
            .registry_store()
            .replication_enabled(replicable_core::engine::SITE_SWITCH)
            .await?,
        "the site pause is persisted"
    );
    Ok(())
}

/// README: retention removes "anything older than `retention.max_age`"; ids are never reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_retention_max_age_prunes_the_primary_log() -> R {
    let dir = tempfile::tempdir()?;
    let db = replicable_core::storage::open(&sqlite_url(dir.path(), "primary.db")).await?;
    let primary = Site::primary("primary").database(db).build()?;
    let mut last = 0;
    for id in 1..=3 {
        last = CiSetting {
            id,
            key: "k".into(),
            value: "v".into(),
        }
        .replicator(&primary)
        .publish_created_event()
        .await?
        .expect("id");
    }
    let mut config = fast_config();
    config.retention.max_age = Duration::from_secs(1);
    config.periods.retention = Duration::from_millis(200);
    let engine = replicable_core::engine::Engine::new(primary.clone(), readme_replicables())
        .config(config)
        .start()
        .await?;
    let pruned = wait_for(30, || async {
        primary.event_log().read_after(0, 100).await.is_ok_and(|e| {
            e.iter().all(|entry| match entry {
                replicable_core::event::LogEntry::Event(ev) => ev.id > last,
                _ => true,
            })
        })
    })
    .await;
    let left = primary.event_log().read_after(0, 100).await?.len();
    engine.shutdown().await;
    assert!(pruned, "events older than max_age deleted; {left} left");
    let next = CiSetting {
        id: 9,
        key: "k".into(),
        value: "v".into(),
    }
    .replicator(&primary)
    .publish_created_event()
    .await?
    .expect("id");
    assert!(next > last, "ids never reused: {next} after {last}");
    Ok(())
}

/// README: retention deletes "events every secondary that reports its status has processed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_retention_prunes_events_every_reporting_secondary_processed() -> R {
    let dir = tempfile::tempdir()?;
    let db = replicable_core::storage::open(&sqlite_url(dir.path(), "primary.db")).await?;
    let primary = Site::primary("primary").database(db).build()?;
    let secondary = Site::secondary("secondary", Arc::new(InProcessPrimary::new(&primary)))
        .in_memory()
        .build()?;
    for id in 1..=3 {
        CiSetting {
            id,
            key: "k".into(),
            value: "v".into(),
        }
        .replicator(&primary)
        .publish_created_event()
        .await?;
    }
    let mut config = fast_config();
    config.periods.retention = Duration::from_millis(200);
    let pe = replicable_core::engine::Engine::new(primary.clone(), readme_replicables())
        .config(config.clone())
        .start()
        .await?;
    let se = replicable_core::engine::Engine::new(secondary.clone(), readme_replicables())
        .config(config)
        .start()
        .await?;
    let synced = wait_for(30, || async {
        replicable_core::status::secondary_status(&secondary, "ci_setting")
            .await
            .is_ok_and(|s| s.synced_count == 3 && s.verified_count == 3)
    })
    .await;
    assert!(synced, "3 rows synced and verified");
    let emptied = wait_for(30, || async {
        primary
            .event_log()
            .read_after(0, 100)
            .await
            .is_ok_and(|e| e.is_empty())
    })
    .await;
    let left = primary.event_log().read_after(0, 100).await?.len();
    se.shutdown().await;
    pe.shutdown().await;
    assert!(
        emptied,
        "the log pruned of what the only secondary processed; {left} left"
    );
    Ok(())
}

/// README: the primary's engine runs "the verification backfill (records without a
/// verification row get one)": a row bulk-inserted into the application's table gets
/// checksummed by the engine alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_primary_verification_backfill_checksums_bulk_rows() -> R {
    use replicable_core::storage::sql::{SqlOptions, SqlStore, SqlTable};
    let dir = tempfile::tempdir()?;
    let app = app_sqlite_pool(&dir.path().join("primary.db")).await;
    let db = SqlStore::open_with(
        &sqlite_url(dir.path(), "primary.db"),
        SqlOptions {
            replicables: vec!["note".into()],
            ..Default::default()
        },
    )
    .await?;
    let notes = SqlTable::new(&db, "note", "notes", "id")?;
    let primary = Site::primary("primary")
        .database(db)
        .record_source("note", notes)
        .build()?;
    for id in 1..=4 {
        sqlx::query("INSERT INTO notes (id, title, pinned) VALUES (?, 'bulk', 0)")
            .bind(id)
            .execute(&app)
            .await?;
    }
    let engine = replicable_core::engine::Engine::new(primary.clone(), vec![desc("note")])
        .config(fast_config())
        .start()
        .await?;
    let ok = wait_for(30, || async {
        replicable_core::status::primary_status(&primary, "note")
            .await
            .is_ok_and(|s| s.checksummed_count == 4)
    })
    .await;
    let st = replicable_core::status::primary_status(&primary, "note").await?;
    engine.shutdown().await;
    assert!(
        ok,
        "4 bulk rows checksummed by the primary's engine: {st:?}"
    );
    Ok(())
}

/// README: "a published record is copied within moments even on idle sites" (idle loops back
/// off to 5 s; a caught-up cursor waits on the link). Default settings, sites idle first.
async fn idle_publish_is_copied_quickly(primary: Site, secondary: Site) -> R {
    let pe = replicable_core::engine::Engine::new(primary.clone(), readme_replicables())
        .start()
        .await?;
    let se = replicable_core::engine::Engine::new(secondary.clone(), readme_replicables())
        .start()
        .await?;
    // Let every loop back off to its longest idle wait.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let setting = CiSetting {
        id: 42,
        key: "idle".into(),
        value: "v".into(),
    };
    let t0 = Instant::now();
    setting.replicator(&primary).publish_created_event().await?;
    let ok = wait_for(30, || async {
        matches!(setting.replicator(&secondary).registry().await, Ok(Some(r)) if r.state == SyncState::Synced)
    })
    .await;
    let synced_after = t0.elapsed();
    let verified = wait_for(30, || async {
        matches!(setting.replicator(&secondary).registry().await,
            Ok(Some(r)) if r.verification_state == VerificationState::Succeeded)
    })
    .await;
    let verified_after = t0.elapsed();
    se.shutdown().await;
    pe.shutdown().await;
    assert!(ok, "synced at all");
    assert!(
        synced_after < Duration::from_millis(2500),
        "copied within moments on an idle site (idle max is 5 s): {synced_after:?}"
    );
    assert!(verified, "verified at all");
    assert!(
        verified_after < Duration::from_millis(4000),
        "verified within moments (primary woken by its log, then checksum_succeeded): {verified_after:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_idle_sites_copy_a_publish_within_moments_in_process() -> R {
    let (primary, secondary) = mem_pair();
    idle_publish_is_copied_quickly(primary, secondary).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_idle_sites_copy_a_publish_within_moments_over_http() -> R {
    let s = http_sites(false).await;
    let r = idle_publish_is_copied_quickly(s.primary.clone(), s.secondary.clone()).await;
    s.server.unwrap().shutdown().await?;
    r
}

// ================================================================ 4. metrics and the CLI

async fn scrape(addr: SocketAddr) -> (String, String) {
    let resp = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("scrape");
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (ct, resp.text().await.expect("text"))
}

fn value_of(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// README "Operator CLI and metrics": `replicable_core::metrics` served over HTTP, scraped for
/// the documented gauges and histograms of a secondary and of a primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_served_over_http_for_secondary_and_primary() -> R {
    use replicable_core::metrics::{Metrics, serve as serve_metrics, spawn_refresh};
    let (primary, secondary) = mem_pair();
    let reps = readme_replicables();
    let pe = replicable_core::engine::Engine::new(primary.clone(), reps.clone())
        .config(fast_config())
        .start()
        .await?;
    let se = replicable_core::engine::Engine::new(secondary.clone(), reps.clone())
        .config(fast_config())
        .start()
        .await?;
    let sm = Arc::new(Metrics::new(secondary.role(), &reps));
    let pm = Arc::new(Metrics::new(primary.role(), &reps));
    let sr = spawn_refresh(sm.clone(), secondary.clone(), Duration::from_millis(100));
    let pr = spawn_refresh(pm.clone(), primary.clone(), Duration::from_millis(100));
    let local: SocketAddr = "127.0.0.1:0".parse()?;
    let ss = serve_metrics(local, sm).await?;
    let ps = serve_metrics(local, pm).await?;

    put_blob(&primary, "m/1", b"metric me").await;
    pf(1, "m/1")
        .replicator(&primary)
        .publish_created_event()
        .await?;
    let ok = wait_for(30, || async {
        let (_, text) = scrape(ss.local_addr()).await;
        value_of(&text, "replicable_package_files_verified") == Some(1.0)
    })
    .await;
    let (ct, text) = scrape(ss.local_addr()).await;
    assert!(ok, "secondary's verified gauge reached 1:\n{text}");
    assert_eq!(ct, replicable_core::metrics::CONTENT_TYPE);
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    for name in [
        "replicable_package_files_registry",
        "replicable_package_files_pending",
        "replicable_package_files_started",
        "replicable_package_files_synced",
        "replicable_package_files_failed",
        "replicable_package_files_verification_total",
        "replicable_package_files_verified",
        "replicable_package_files_verification_failed",
        "replicable_package_files_queue_depth",
        "replicable_projects_registry",
        "replicable_ci_settings_synced",
        "replicable_last_event_id",
        "replicable_last_event_timestamp_seconds",
        "replicable_cursor_event_id",
        "replicable_cursor_event_timestamp_seconds",
        "replicable_cursor_events_behind",
        "replicable_cursor_lag_seconds",
        "replicable_metrics_refreshed_timestamp_seconds",
    ] {
        assert!(
            value_of(&text, name).is_some(),
            "secondary scrape lacks a sample of {name}:\n{text}"
        );
    }
    assert_eq!(
        value_of(&text, "replicable_package_files_synced"),
        Some(1.0)
    );
    let last = primary.event_log().last_event_id().await?.unwrap() as f64;
    let cursor_ok = wait_for(10, || async {
        let (_, t) = scrape(ss.local_addr()).await;
        value_of(&t, "replicable_cursor_event_id") == Some(last)
    })
    .await;
    assert!(
        cursor_ok,
        "cursor gauge reaches the log's last id {last}:\n{text}"
    );
    for hist in [
        "replicable_sync_delay_seconds_count{replicable=\"package_file\"}",
        "replicable_sync_duration_seconds_count{replicable=\"package_file\"}",
        "replicable_replication_lag_seconds_count{replicable=\"package_file\"}",
    ] {
        let v = value_of(&text, hist);
        assert!(
            v.is_some_and(|v| v >= 1.0),
            "histogram {hist} counted the sync ({v:?}):\n{text}"
        );
    }

    let reported = wait_for(20, || async {
        let (_, t) = scrape(ps.local_addr()).await;
        value_of(&t, "replicable_secondary_healthy{secondary=\"secondary\"}") == Some(1.0)
    })
    .await;
    let (_, ptext) = scrape(ps.local_addr()).await;
    assert!(
        reported,
        "primary's scrape shows the secondary healthy:\n{ptext}"
    );
    for name in [
        "replicable_package_files_count",
        "replicable_package_files_checksum_total",
        "replicable_package_files_checksummed",
        "replicable_package_files_checksum_failed",
        "replicable_last_event_id",
        "replicable_last_event_timestamp_seconds",
        "replicable_secondary_report_age_seconds{secondary=\"secondary\"}",
        "replicable_secondary_cursor_event_id{secondary=\"secondary\"}",
    ] {
        assert!(
            value_of(&ptext, name).is_some(),
            "primary scrape lacks {name}:\n{ptext}"
        );
    }
    assert_eq!(
        value_of(&ptext, "replicable_package_files_checksummed"),
        Some(1.0)
    );
    sr.abort();
    pr.abort();
    ss.shutdown().await?;
    ps.shutdown().await?;
    se.shutdown().await;
    pe.shutdown().await;
    Ok(())
}

/// README: `status [--json]` "per replicable: counts, synced / verified %, cursor, lag; on a
/// primary its secondaries (SILENT past D)". The rustdoc's way to capture output:
/// `cli::execute` with a `Vec<u8>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_status_json_shape_on_secondary_and_primary() -> R {
    use replicable_core::cli::{Command, StatusArgs, execute};
    let (primary, secondary) = mem_pair();
    let reps = readme_replicables();
    put_blob(&primary, "s/1", b"x").await;
    pf(1, "s/1")
        .replicator(&primary)
        .publish_created_event()
        .await?;
    pf(1, "s/1").replicator(&primary).verify().await?;
    let se = replicable_core::engine::Engine::new(secondary.clone(), reps.clone())
        .config(fast_config())
        .start()
        .await?;
    let ok = wait_for(30, || async {
        replicable_core::status::site_status(&primary, &reps)
            .await
            .is_ok_and(|s| !s.secondaries.is_empty())
            && matches!(pf(1, "s/1").replicator(&secondary).registry().await,
                Ok(Some(r)) if r.verification_state == VerificationState::Succeeded)
    })
    .await;
    se.shutdown().await;
    assert!(ok, "synced, verified and reported");

    let json_of = |site: Site, args: StatusArgs| {
        let reps = reps.clone();
        async move {
            let mut out = Vec::new();
            execute(&Command::Status(args), &site, &reps, &mut out)
                .await
                .expect("status runs");
            serde_json::from_slice::<serde_json::Value>(&out).unwrap_or_else(|e| {
                panic!(
                    "status --json is JSON ({e}): {}",
                    String::from_utf8_lossy(&out)
                )
            })
        }
    };
    let s = json_of(
        secondary.clone(),
        StatusArgs {
            json: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(s["site"], "secondary", "{s:#}");
    assert_eq!(s["role"], "secondary", "{s:#}");
    assert_eq!(s["replication_enabled"], true, "{s:#}");
    let last = primary.event_log().last_event_id().await?;
    assert_eq!(
        s["events"]["cursor_event_id"].as_i64(),
        last,
        "cursor: {s:#}"
    );
    assert!(s["events"].get("lag_seconds").is_some(), "lag: {s:#}");
    let pkg = s["replicables"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["replicable_name"] == "package_file"))
        .unwrap_or_else(|| panic!("package_file listed: {s:#}"));
    assert_eq!(pkg["synced_count"], 1, "{pkg:#}");
    assert_eq!(pkg["verified_count"], 1, "{pkg:#}");
    assert_eq!(pkg["synced_percent"].as_f64(), Some(100.0), "{pkg:#}");
    assert_eq!(pkg["verified_percent"].as_f64(), Some(100.0), "{pkg:#}");

    let p = json_of(
        primary.clone(),
        StatusArgs {
            json: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(p["role"], "primary", "{p:#}");
    let ppkg = p["replicables"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["replicable_name"] == "package_file"))
        .unwrap_or_else(|| panic!("package_file listed: {p:#}"));
    assert_eq!(ppkg["count"], 1, "{ppkg:#}");
    assert_eq!(ppkg["checksummed_count"], 1, "{ppkg:#}");
    let sec = p["secondaries"]
        .as_array()
        .and_then(|a| a.iter().find(|h| h["name"] == "secondary"))
        .unwrap_or_else(|| panic!("secondary listed: {p:#}"));
    assert_eq!(sec["healthy"], true, "{sec:#}");
    assert!(sec["age_seconds"].as_f64().is_some(), "{sec:#}");
    // --silent-after shorter than the report's age: SILENT (healthy false).
    tokio::time::sleep(Duration::from_millis(50)).await;
    let p = json_of(
        primary.clone(),
        StatusArgs {
            json: true,
            silent_after: Duration::from_millis(1),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(p["secondaries"][0]["healthy"], false, "{p:#}");
    Ok(())
}

/// README: "a primary of an older version, without these [batch routes], is read one record at
/// a time". A primary whose router answers the batch routes with a plain 404 (as an older
/// version would) is still replicated from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_primary_without_batch_routes_is_read_one_record_at_a_time() -> R {
    let dir = tempfile::tempdir()?;
    let primary = Site::primary("primary")
        .database(replicable_core::storage::open(&sqlite_url(dir.path(), "p.db")).await?)
        .blob_directory(dir.path().join("p-blobs"))
        .build()?;
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    let old = PrimaryApi::new(primary.clone())
        .secondary("eu", secret())
        .router()
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let h = h.clone();
                async move {
                    if req.uri().path().ends_with("/batch") {
                        h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return axum::response::IntoResponse::into_response((
                            axum::http::StatusCode::NOT_FOUND,
                            "404 page not found",
                        ));
                    }
                    next.run(req).await
                }
            },
        ));
    let server = serve("127.0.0.1:0".parse()?, old, None).await?;
    let base = format!("http://{}/", server.local_addr());
    let link = HttpPrimary::new(HttpPrimaryConfig::new(base, "eu", secret()))?;
    let secondary = Site::secondary("eu", Arc::new(link))
        .database(replicable_core::storage::open(&sqlite_url(dir.path(), "s.db")).await?)
        .blob_directory(dir.path().join("s-blobs"))
        .build()?;
    for id in 1..=3 {
        let key = format!("old/{id}");
        put_blob(&primary, &key, key.as_bytes()).await;
        pf(id, &key)
            .replicator(&primary)
            .publish_created_event()
            .await?;
    }
    replicable_core::workers::verify_due(&primary, desc("package_file"), 100, 2).await?;
    replicable_core::log_cursor::catch_up(&secondary, 50).await?;
    replicable_core::workers::sync_due(&secondary, desc("package_file"), 100, 2).await?;
    replicable_core::log_cursor::catch_up(&secondary, 50).await?;
    replicable_core::workers::verify_due(&secondary, desc("package_file"), 100, 2).await?;
    let st = replicable_core::status::secondary_status(&secondary, "package_file").await?;
    server.shutdown().await?;
    assert!(
        hits.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the batch route was tried"
    );
    assert_eq!(
        (st.synced_count, st.verified_count, st.failed_count),
        (3, 3, 0),
        "{st:?}"
    );
    for id in 1..=3 {
        let row = pf(id, "x")
            .replicator(&secondary)
            .registry()
            .await?
            .expect("row");
        assert!(
            !row.missing_on_primary,
            "a plain 404 of a batch route is not `missing`: {row:?}"
        );
    }
    Ok(())
}

/// README: the six lines "on SQLite or PostgreSQL"; the snippet names the table `public.notes`
/// and passes `schema`. On SQLite, the schema is ignored and a qualified table name is refused
/// with an error that says why.
#[tokio::test]
async fn own_table_readme_snippet_names_on_sqlite() -> R {
    use replicable_core::storage::sql::{SqlOptions, SqlStore, SqlTable};
    let dir = tempfile::tempdir()?;
    let _app = app_sqlite_pool(&dir.path().join("app.db")).await;
    let db = SqlStore::open_with(
        &sqlite_url(dir.path(), "app.db"),
        SqlOptions {
            schema: Some("replication".into()),
            replicables: vec!["note".into()],
            ..Default::default()
        },
    )
    .await?;
    let e = SqlTable::new(&db, "note", "public.notes", "id").expect_err("qualified name on SQLite");
    assert!(e.to_string().contains("public.notes"), "{e}");
    assert!(SqlTable::new(&db, "note", "notes", "id").is_ok());
    Ok(())
}

/// README: "Reads are retried (transport errors, 502 / 503 / 504) with backoff". A primary
/// behind a proxy that answers the first two reads of each path with 503 is still read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_reads_are_retried_on_503() -> R {
    let dir = tempfile::tempdir()?;
    let primary = Site::primary("primary")
        .database(replicable_core::storage::open(&sqlite_url(dir.path(), "p.db")).await?)
        .blob_directory(dir.path().join("p-blobs"))
        .build()?;
    let seen = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        String,
        usize,
    >::new()));
    let s2 = seen.clone();
    let flaky = PrimaryApi::new(primary.clone())
        .secondary("eu", secret())
        .router()
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let seen = s2.clone();
                async move {
                    let n = {
                        let mut m = seen.lock().unwrap();
                        let n = m.entry(req.uri().path().to_owned()).or_default();
                        *n += 1;
                        *n
                    };
                    if n <= 2 {
                        return axum::response::IntoResponse::into_response((
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "busy",
                        ));
                    }
                    next.run(req).await
                }
            },
        ));
    let server = serve("127.0.0.1:0".parse()?, flaky, None).await?;
    let link = HttpPrimary::new(HttpPrimaryConfig::new(
        format!("http://{}/", server.local_addr()),
        "eu",
        secret(),
    ))?;
    let secondary = Site::secondary("eu", Arc::new(link))
        .database(replicable_core::storage::open(&sqlite_url(dir.path(), "s.db")).await?)
        .blob_directory(dir.path().join("s-blobs"))
        .build()?;
    put_blob(&primary, "flaky/1", b"still arrives").await;
    pf(1, "flaky/1")
        .replicator(&primary)
        .publish_created_event()
        .await?;
    replicable_core::log_cursor::catch_up(&secondary, 50).await?;
    replicable_core::workers::sync_due(&secondary, desc("package_file"), 100, 2).await?;
    server.shutdown().await?;
    let row = pf(1, "flaky/1")
        .replicator(&secondary)
        .registry()
        .await?
        .expect("row");
    assert_eq!(row.state, SyncState::Synced, "{row:?}");
    assert_eq!(
        get_blob(&secondary, "flaky/1").await.as_deref(),
        Some(&b"still arrives"[..])
    );
    Ok(())
}

/// README: `serve(addr, api.router(), Some(&TlsFiles { .. }))`, and the secondary's CA file
/// (`HttpPrimaryConfig::ca_file`, "git is given it too"): a blob and a repository over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_tls_with_private_ca_replicates_blob_and_repository() -> R {
    let dir = tempfile::tempdir()?;
    let p = dir.path();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    std::fs::write(p.join("cert.pem"), ck.cert.pem())?;
    std::fs::write(p.join("key.pem"), ck.signing_key.serialize_pem())?;
    std::fs::create_dir_all(p.join("p-repos"))?;
    std::fs::create_dir_all(p.join("s-repos"))?;
    make_repo(p, &p.join("p-repos"), "g/r.git");
    let primary = Site::primary("primary")
        .database(replicable_core::storage::open(&sqlite_url(p, "p.db")).await?)
        .blob_directory(p.join("p-blobs"))
        .repository_root(p.join("p-repos"))
        .build()?;
    let tls = replicable_core::http::TlsFiles {
        certificate_chain: p.join("cert.pem"),
        private_key: p.join("key.pem"),
    };
    let server = serve(
        "127.0.0.1:0".parse()?,
        PrimaryApi::new(primary.clone())
            .secondary("eu", secret())
            .router(),
        Some(&tls),
    )
    .await?;
    let mut config = HttpPrimaryConfig::new(
        format!("https://localhost:{}/", server.local_addr().port()),
        "eu",
        secret(),
    );
    config.ca_file = Some(p.join("cert.pem"));
    let secondary = Site::secondary("eu", Arc::new(HttpPrimary::new(config)?))
        .database(replicable_core::storage::open(&sqlite_url(p, "s.db")).await?)
        .blob_directory(p.join("s-blobs"))
        .repository_root(p.join("s-repos"))
        .build()?;
    put_blob(&primary, "tls/1", b"over tls").await;
    pf(1, "tls/1")
        .replicator(&primary)
        .publish_created_event()
        .await?;
    let project = Project {
        id: 1,
        disk_path: "g/r.git".into(),
    };
    project.replicator(&primary).publish_created_event().await?;
    replicable_core::log_cursor::catch_up(&secondary, 50).await?;
    replicable_core::workers::sync_due(&secondary, desc("package_file"), 100, 2).await?;
    replicable_core::workers::sync_due(&secondary, desc("project"), 100, 2).await?;
    let b = pf(1, "tls/1")
        .replicator(&secondary)
        .registry()
        .await?
        .expect("row");
    let r = project
        .replicator(&secondary)
        .registry()
        .await?
        .expect("row");
    server.shutdown().await?;
    assert_eq!(b.state, SyncState::Synced, "{b:?}");
    assert_eq!(
        r.state,
        SyncState::Synced,
        "repository over TLS with the private CA: {r:?}"
    );
    assert_eq!(
        git(&p.join("p-repos/g/r.git"), &["rev-parse", "main"]),
        git(&p.join("s-repos/g/r.git"), &["rev-parse", "main"])
    );
    Ok(())
}
