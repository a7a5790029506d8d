//! End to end over the HTTP link, with the primary and the secondary as separate OS processes
//! (`e2e_site primary --listen`, `e2e_site secondary --primary-url`) sharing nothing but a
//! loopback URL and a secret, on SQLite files and on PostgreSQL schemas, all three data types:
//! - everything replicates and verifies;
//! - the primary goes away (SIGTERM) while new records are published, and comes back on the
//!   same address: the secondary rides it out and catches up;
//! - a secondary with the wrong secret gets nothing, and the primary logs the refusal without
//!   the token; every other kind of bad token (missing, garbage, unknown secondary, expired,
//!   scoped to another record, key or the log) is refused by the primary's process;
//! - a primary that redirects blob requests to another server (standing in for presigned object
//!   store URLs): the secondary's process follows without its token (the server records the
//!   headers it saw);
//! - a blob transfer cut mid-way (a proxy between the processes closes the connection) resumes
//!   from where it stopped;
//! - a 1 GiB blob streams with the secondary's peak memory under 64 MiB.

mod e2e_support;
mod http_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e_support::{Lane, locations};
use replicable_core::prelude::*;
use replicable_examples::geo_demo::seed::{self, SeedPlan};
use replicable_examples::geo_demo::sites::{SecondaryOptions, SiteLocation};

fn new_secret() -> String {
    (0..40).map(|_| fastrand_char()).collect()
}

fn fastrand_char() -> char {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut x = nanos ^ STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[(x % 62) as usize] as char
}

/// A site process, killed if the test ends without stopping it (a failed assertion must not
/// leave it running).
struct Process(Child);

impl std::ops::Deref for Process {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn site_args(command: &mut Command, at: &SiteLocation) {
    command.arg("--data").arg(&at.data);
    if let Some(url) = &at.database {
        command.arg("--database").arg(url);
    }
    if let Some(schema) = &at.schema {
        command.arg("--schema").arg(schema);
    }
}

fn clean_env(command: &mut Command) {
    for (key, _) in std::env::vars() {
        if key.starts_with("REPLICABLE_TEST_") || key.starts_with("REPLICABLE_BENCH_") {
            command.env_remove(key);
        }
    }
    command
        .env("REPLICABLE_IDLE__MIN", "50ms")
        .env("REPLICABLE_IDLE__MAX", "500ms")
        .env("REPLICABLE_PERIODS__STUCK_SWEEP", "1s")
        .env("REPLICABLE_PERIODS__BACKFILL", "5s")
        .env("REPLICABLE_PERIODS__VERIFICATION_MAINTENANCE", "5s")
        .env("REPLICABLE_SHUTDOWN_DEADLINE", "2s")
        .env("REPLICABLE_PERIODS__STATUS_REPORT", "500ms")
        .stdin(Stdio::null());
}

/// A primary process serving its API on `listen`; returns it and its API's URL. Its stderr
/// goes to `log`.
fn spawn_primary(
    at: &SiteLocation,
    listen: &str,
    secret: &str,
    log: &std::path::Path,
) -> (Process, String) {
    spawn_primary_with(at, listen, secret, log, &[])
}

/// [`spawn_primary`] with more environment variables.
fn spawn_primary_with(
    at: &SiteLocation,
    listen: &str,
    secret: &str,
    log: &std::path::Path,
    env: &[(&str, &str)],
) -> (Process, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_e2e_site"));
    command.arg("primary");
    site_args(&mut command, at);
    command.args([
        "--listen",
        listen,
        "--cursor-lease",
        "2",
        "--claim-timeout",
        "2",
    ]);
    clean_env(&mut command);
    command
        .env("GEO_DEMO_LINK_SECRET", secret)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap());
    let mut child = Process(command.spawn().expect("spawning the primary"));
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("the primary exited before serving its API")
            .unwrap();
        if let Some(url) = line.strip_prefix("api: ") {
            break url.to_owned();
        }
    };
    // Keep draining its output so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, url)
}

fn spawn_secondary(at: &SiteLocation, url: &str, secret: &str, log: &std::path::Path) -> Process {
    spawn_secondary_with(at, url, secret, log, "2")
}

/// A secondary process whose claims go stale after `claim_timeout` seconds.
fn spawn_secondary_with(
    at: &SiteLocation,
    url: &str,
    secret: &str,
    log: &std::path::Path,
    claim_timeout: &str,
) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_e2e_site"));
    command.arg("secondary");
    site_args(&mut command, at);
    command.args([
        "--primary-url",
        url,
        "--cursor-lease",
        "2",
        "--claim-timeout",
        claim_timeout,
        "--progress",
        "0",
    ]);
    clean_env(&mut command);
    command
        .env("GEO_DEMO_LINK_SECRET", secret)
        .env("E2E_LINK_DELAY_MS", "0")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    Process(command.spawn().expect("spawning the secondary"))
}

fn stop(child: &mut Process) {
    e2e_support::terminate(child);
    assert!(
        e2e_support::wait_exit(child, Duration::from_secs(15)).is_some(),
        "a site process did not exit on SIGTERM"
    );
}

async fn replicate_over_http(lane: Lane) {
    let dir = tempfile::tempdir().unwrap();
    let Some((primary_at, secondary_at)) = locations(dir.path(), lane) else {
        return;
    };
    // The primary's data, seeded here; from now on only its process serves it.
    let primary = e2e_support::seeded_primary(&primary_at, SeedPlan::records(120)).await;
    let secret = new_secret();
    let primary_log = dir.path().join("primary.log");
    let (mut primary_process, url) =
        spawn_primary(&primary_at, "127.0.0.1:0", &secret, &primary_log);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let secondary_log = dir.path().join("secondary.log");
    let mut secondary_process = spawn_secondary(&secondary_at, &url, &secret, &secondary_log);
    // Views of both databases (no engine) to watch the processes.
    let view = e2e_support::secondary(
        &secondary_at,
        &primary,
        SecondaryOptions::new(e2e_support::timeouts()),
    )
    .await;
    let started = Instant::now();
    let rows = e2e_support::wait_settled(&primary, &view, Duration::from_secs(180)).await;
    eprintln!("{lane:?}: settled over HTTP in {:.1?}", started.elapsed());
    for row in &rows {
        assert!(row.synced > 0, "{}: nothing synced", row.name);
    }
    assert_eq!(rows.len(), 3, "blobs, repositories and rows");
    e2e_support::assert_running(&mut secondary_process);
    // The secondary reports its status to the primary, which shows it healthy.
    let last = primary.event_log().last_event_id().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reported = primary.registry_store().secondary_statuses().await.unwrap();
        if reported
            .iter()
            .any(|r| r.secondary == "secondary" && r.cursor == last)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no status report reached the primary: {reported:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = replicable_core::status::site_status(&primary, &e2e_support::replicables())
        .await
        .unwrap();
    assert_eq!(status.secondaries.len(), 1);
    assert!(status.secondaries[0].healthy, "{:?}", status.secondaries);
    assert!(status.secondaries[0].report["synced"].as_u64().unwrap() > 0);

    // The primary goes away; records are published meanwhile (its database is still there).
    stop(&mut primary_process);
    for id in 0..3 {
        seed::ci_setting(800_000 + id, 1)
            .replicator(&primary)
            .publish_created_event()
            .await
            .unwrap();
    }
    let new_blob = replicable_examples::PackageFile::new(800_100, "late.tgz");
    std::fs::create_dir_all(primary_at.blob_file(&new_blob.file_path).parent().unwrap()).unwrap();
    std::fs::write(
        primary_at.blob_file(&new_blob.file_path),
        b"published while the primary was away",
    )
    .unwrap();
    new_blob
        .replicator(&primary)
        .publish_created_event()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    e2e_support::assert_running(&mut secondary_process);
    // It comes back on the same address.
    let listen = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let (mut primary_process, url_again) = spawn_primary(
        &primary_at,
        &listen,
        &secret,
        &primary_log.with_extension("2.log"),
    );
    assert_eq!(url_again, url);
    let back = Instant::now();
    e2e_support::wait_settled(&primary, &view, Duration::from_secs(120)).await;
    eprintln!(
        "{lane:?}: caught up {:.1?} after the primary came back",
        back.elapsed()
    );
    let row = view
        .registry_store()
        .get("package_file", 800_100)
        .await
        .unwrap()
        .expect("the late blob is registered");
    assert_eq!(row.state, SyncState::Synced);
    assert_eq!(
        std::fs::read(secondary_at.blob_file(&new_blob.file_path)).unwrap(),
        b"published while the primary was away"
    );

    // A secondary with the wrong secret gets nothing.
    let intruder_at = SiteLocation::embedded(dir.path().join("intruder"));
    let intruder_log = dir.path().join("intruder.log");
    let mut intruder = spawn_secondary(&intruder_at, &url, &new_secret(), &intruder_log);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop(&mut intruder);
    let intruder_view = e2e_support::secondary(
        &intruder_at,
        &primary,
        SecondaryOptions::new(e2e_support::timeouts()),
    )
    .await;
    for name in ["package_file", "project", "ci_setting"] {
        let counts = intruder_view.registry_store().counts(name).await.unwrap();
        assert_eq!(counts.synced, 0, "{name}: a wrong secret synced something");
    }
    stop(&mut secondary_process);
    stop(&mut primary_process);
    let log = std::fs::read_to_string(primary_log.with_extension("2.log")).unwrap();
    assert!(
        log.contains("refused a request"),
        "the refusal is logged: {log}"
    );
    assert!(
        !log.contains("Bearer") && !log.contains("eyJ"),
        "a token reached the log: {log}"
    );
    e2e_support::assert_complete(&primary, &view, &secondary_at).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_http_processes_sqlite() {
    replicate_over_http(Lane::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_http_processes_postgres() {
    replicate_over_http(Lane::Postgres).await;
}

/// Writes `bytes` as the blob of package file `id` on the primary and publishes it.
async fn publish_blob(primary: &Site, at: &SiteLocation, id: i64, name: &str, bytes: &[u8]) {
    let record = replicable_examples::PackageFile::new(id, name);
    let file = at.blob_file(&record.file_path);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, bytes).unwrap();
    record
        .replicator(primary)
        .publish_created_event()
        .await
        .unwrap();
}

/// The primary's process refuses every kind of bad token, answering 401 (who is asking is
/// unknown) or 403 (a known secondary asking beyond its token's scope), and logs each refusal
/// without the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_http_every_kind_of_bad_token_is_refused_by_the_primary_process() {
    use http_support::{now, raw_get};
    use replicable_core::link::http::token::{self, Scope, SharedSecret, TOKEN_LIFETIME};

    let dir = tempfile::tempdir().unwrap();
    let primary_at = SiteLocation::embedded(dir.path().join("primary"));
    let primary =
        replicable_examples::geo_demo::sites::open_primary(&primary_at, e2e_support::timeouts())
            .await
            .unwrap();
    publish_blob(
        &primary,
        &primary_at,
        1,
        "own.bin",
        b"the record's own blob",
    )
    .await;
    publish_blob(
        &primary,
        &primary_at,
        2,
        "other.bin",
        b"another record's blob",
    )
    .await;
    let own_key = replicable_examples::PackageFile::new(1, "own.bin").file_path;
    let other_key = replicable_examples::PackageFile::new(2, "other.bin").file_path;
    let secret = new_secret();
    let log_file = dir.path().join("primary.log");
    let (mut process, url) = spawn_primary(&primary_at, "127.0.0.1:0", &secret, &log_file);
    let shared = |s: &str| SharedSecret::new(s.as_bytes().to_vec(), "test").unwrap();
    let blob_url = |id: i64, key: &str| {
        let mut url = reqwest::Url::parse(&format!("{url}v1/blobs/package_file/{id}")).unwrap();
        url.query_pairs_mut().append_pair("key", key);
        url.to_string()
    };
    let own_url = blob_url(1, &own_key);
    let scope = |id: i64, key: &str| Scope::Blob {
        replicable: "package_file".into(),
        id,
        key: key.into(),
    };
    let good = token::sign("secondary", &shared(&secret), scope(1, &own_key)).unwrap();
    assert_eq!(
        raw_get(&own_url, Some(&good)).await.0,
        200,
        "a good token passes"
    );

    let unauthorized = (401, Some("unauthorized".to_owned()));
    let forbidden = (403, Some("forbidden".to_owned()));
    // (what, URL, bearer token, expected status and code)
    type Refusal<'a> = (&'a str, String, Option<String>, (u16, Option<String>));
    let refusals: Vec<Refusal<'_>> = vec![
        ("no token", own_url.clone(), None, unauthorized.clone()),
        (
            "not a token",
            own_url.clone(),
            Some("not-a-token".into()),
            unauthorized.clone(),
        ),
        (
            "wrong secret",
            own_url.clone(),
            Some(token::sign("secondary", &shared(&new_secret()), scope(1, &own_key)).unwrap()),
            unauthorized.clone(),
        ),
        (
            "unknown secondary",
            own_url.clone(),
            Some(token::sign("intruder", &shared(&secret), scope(1, &own_key)).unwrap()),
            unauthorized.clone(),
        ),
        (
            // Past the API's 30 s leeway.
            "expired",
            own_url.clone(),
            Some(
                token::sign_at(
                    "secondary",
                    &shared(&secret),
                    scope(1, &own_key),
                    now() - 360,
                    TOKEN_LIFETIME,
                )
                .unwrap(),
            ),
            unauthorized.clone(),
        ),
        (
            "lives too long",
            own_url.clone(),
            Some(
                token::sign_at(
                    "secondary",
                    &shared(&secret),
                    scope(1, &own_key),
                    now(),
                    Duration::from_secs(3600),
                )
                .unwrap(),
            ),
            unauthorized.clone(),
        ),
        (
            "scoped to another record",
            own_url.clone(),
            Some(token::sign("secondary", &shared(&secret), scope(2, &own_key)).unwrap()),
            forbidden.clone(),
        ),
        (
            "scoped to another key",
            own_url.clone(),
            Some(token::sign("secondary", &shared(&secret), scope(1, &other_key)).unwrap()),
            forbidden.clone(),
        ),
        (
            "a key the record does not name",
            blob_url(1, &other_key),
            Some(token::sign("secondary", &shared(&secret), scope(1, &other_key)).unwrap()),
            forbidden.clone(),
        ),
        (
            "the log's scope on a blob",
            own_url.clone(),
            Some(token::sign("secondary", &shared(&secret), Scope::Events).unwrap()),
            forbidden.clone(),
        ),
        (
            "a blob's scope on the log",
            format!("{url}v1/events?after=0&limit=10"),
            Some(good.clone()),
            forbidden.clone(),
        ),
    ];
    let mut tokens = vec![good.clone()];
    for (what, url, bearer, expected) in &refusals {
        assert_eq!(&raw_get(url, bearer.as_deref()).await, expected, "{what}");
        tokens.extend(bearer.clone());
    }
    stop(&mut process);
    let log = std::fs::read_to_string(&log_file).unwrap();
    let logged = log.matches("refused a request").count();
    assert!(
        logged >= refusals.len(),
        "{logged} refusals logged for {} refused requests: {log}",
        refusals.len()
    );
    for token in tokens.iter().filter(|t| t.len() > 20) {
        assert!(
            !log.contains(token.as_str()),
            "a token reached the log: {log}"
        );
    }
    assert!(!log.contains("Bearer"), "a token reached the log: {log}");
}

/// A primary process (with `env`) and a secondary process reading it at `url_of(primary's URL)`,
/// run until everything is synced and verified; then both are stopped and the secondary is
/// checked complete. Returns the rows of the last count.
async fn run_pair_until_settled(
    dir: &std::path::Path,
    primary: &Site,
    primary_at: &SiteLocation,
    secondary_at: &SiteLocation,
    env: &[(&str, &str)],
    url_of: impl AsyncFnOnce(&str) -> String,
) -> Vec<replicable_examples::geo_demo::report::Row> {
    let secret = new_secret();
    let (mut primary_process, url) = spawn_primary_with(
        primary_at,
        "127.0.0.1:0",
        &secret,
        &dir.join("primary.log"),
        env,
    );
    let secondary_url = url_of(&url).await;
    let mut secondary_process = spawn_secondary(
        secondary_at,
        &secondary_url,
        &secret,
        &dir.join("secondary.log"),
    );
    let view = e2e_support::secondary(
        secondary_at,
        primary,
        SecondaryOptions::new(e2e_support::timeouts()),
    )
    .await;
    let rows = e2e_support::wait_settled(primary, &view, Duration::from_secs(180)).await;
    e2e_support::assert_running(&mut secondary_process);
    stop(&mut secondary_process);
    stop(&mut primary_process);
    e2e_support::assert_complete(primary, &view, secondary_at).await;
    rows
}

/// A primary whose API redirects blob requests to another server (as to an object store's
/// presigned URLs): the secondary's process follows each redirect without its token, and
/// everything replicates and verifies.
async fn redirect_without_the_token(lane: Lane) {
    let dir = tempfile::tempdir().unwrap();
    let Some((primary_at, secondary_at)) = locations(dir.path(), lane) else {
        return;
    };
    let primary = e2e_support::seeded_primary(&primary_at, SeedPlan::records(60)).await;
    let (store_url, seen) = http_support::recording_file_server(primary_at.blobs()).await;
    let rows = run_pair_until_settled(
        dir.path(),
        &primary,
        &primary_at,
        &secondary_at,
        &[("E2E_REDIRECT_BLOBS_TO", &store_url)],
        async |url| url.to_owned(),
    )
    .await;
    let blobs = rows
        .iter()
        .find(|r| r.name == "package_file")
        .expect("blobs")
        .synced;
    assert!(blobs > 0, "no blob synced");
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.len() as u64 >= blobs,
        "{} requests reached the redirect target for {blobs} blobs",
        seen.len()
    );
    for headers in &seen {
        assert!(
            headers.get("authorization").is_none(),
            "the redirect target saw the token: {headers:?}"
        );
        assert!(!format!("{headers:?}").contains("Bearer"), "{headers:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_http_redirect_never_carries_the_token_sqlite() {
    redirect_without_the_token(Lane::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_http_redirect_never_carries_the_token_postgres() {
    redirect_without_the_token(Lane::Postgres).await;
}

/// A proxy between the two processes closes the connection 1 MiB into a 3 MiB blob's
/// transfer: the secondary resumes from where it stopped (a conditional `Range` request), and
/// the copy is the primary's, verified.
async fn cut_transfer_resumes(lane: Lane) {
    let dir = tempfile::tempdir().unwrap();
    let Some((primary_at, secondary_at)) = locations(dir.path(), lane) else {
        return;
    };
    let primary = e2e_support::seeded_primary(&primary_at, SeedPlan::records(20)).await;
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 17)
        .map(|i: usize| (i * 7 % 251) as u8)
        .collect();
    publish_blob(&primary, &primary_at, 900_001, "big.bin", &big).await;
    // Cut in the transfer of the big blob (its URL names its id), 1 MiB in.
    let heads = std::sync::Arc::new(std::sync::Mutex::new(None));
    let recorded = heads.clone();
    run_pair_until_settled(
        dir.path(),
        &primary,
        &primary_at,
        &secondary_at,
        &[],
        async move |url| {
            let port: u16 = url
                .trim_start_matches("http://127.0.0.1:")
                .trim_end_matches('/')
                .parse()
                .unwrap();
            let (proxy, heads) = http_support::cutting_proxy(
                std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                1024 * 1024,
                Some("/v1/blobs/package_file/900001"),
            )
            .await;
            *recorded.lock().unwrap() = Some(heads);
            proxy
        },
    )
    .await;
    let copy = std::fs::read(
        secondary_at
            .blob_file(&replicable_examples::PackageFile::new(900_001, "big.bin").file_path),
    )
    .unwrap();
    assert!(copy == big, "the copy is the primary's bytes");
    let heads = heads.lock().unwrap().clone().expect("the proxy ran");
    let resumed = http_support::range_requests(&heads.lock().unwrap());
    assert_eq!(resumed.len(), 1, "one resumed request: {resumed:?}");
    let (offset, conditional) = resumed[0];
    assert!(
        offset > 0 && offset <= 1024 * 1024,
        "resumed at byte {offset}, not from the start"
    );
    assert!(conditional, "the resume is conditional (If-Match)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_http_cut_transfer_resumes_sqlite() {
    cut_transfer_resumes(Lane::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_http_cut_transfer_resumes_postgres() {
    cut_transfer_resumes(Lane::Postgres).await;
}

/// Peak resident memory of a process (`VmHWM`), in bytes.
fn peak_memory(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/PID/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

/// A 1 GiB blob crosses the link with the secondary's peak memory under 64 MiB: the bytes
/// stream from the primary's store through HTTP into the secondary's store, never whole in
/// memory. (About 11 s in a debug build: SHA-256 is optimised in debug builds, see the
/// workspace's `Cargo.toml`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_http_one_gib_blob_streams_in_bounded_memory() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let primary_at = SiteLocation::embedded(dir.path().join("primary"));
    let secondary_at = SiteLocation::embedded(dir.path().join("secondary"));
    let primary =
        replicable_examples::geo_demo::sites::open_primary(&primary_at, e2e_support::timeouts())
            .await
            .unwrap();
    let record = replicable_examples::PackageFile::new(1, "huge.bin");
    let file = primary_at.blob_file(&record.file_path);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let mut out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    let chunk: Vec<u8> = (0..1024 * 1024).map(|i| (i * 31 % 251) as u8).collect();
    for i in 0..1024u32 {
        out.write_all(&i.to_le_bytes()).unwrap();
        out.write_all(&chunk[4..]).unwrap();
    }
    out.flush().unwrap();
    drop(out);
    record
        .replicator(&primary)
        .publish_created_event()
        .await
        .unwrap();

    let secret = new_secret();
    let (mut primary_process, url) = spawn_primary(
        &primary_at,
        "127.0.0.1:0",
        &secret,
        &dir.path().join("primary.log"),
    );
    // A claim timeout of a minute: a loaded machine must not take a long transfer for dead.
    let mut secondary_process = spawn_secondary_with(
        &secondary_at,
        &url,
        &secret,
        &dir.path().join("secondary.log"),
        "60",
    );
    let view = e2e_support::secondary(
        &secondary_at,
        &primary,
        SecondaryOptions::new(e2e_support::timeouts()),
    )
    .await;
    let started = Instant::now();
    loop {
        e2e_support::assert_running(&mut secondary_process);
        let row = view.registry_store().get("package_file", 1).await.unwrap();
        if row.as_ref().is_some_and(|r| {
            r.state == SyncState::Synced
                && r.verification.verification_state == VerificationState::Succeeded
        }) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "1 GiB did not sync: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let took = started.elapsed();
    let peak = peak_memory(secondary_process.id());
    eprintln!(
        "1 GiB synced and verified over HTTP in {took:.1?}; secondary peak memory {:.1} MiB",
        peak as f64 / (1024.0 * 1024.0)
    );
    assert_eq!(
        std::fs::metadata(secondary_at.blob_file(&record.file_path))
            .unwrap()
            .len(),
        1024 * 1024 * 1024
    );
    assert!(
        peak < 64 * 1024 * 1024,
        "the secondary's peak memory was {peak} bytes"
    );
    stop(&mut secondary_process);
    stop(&mut primary_process);
}
