//! A newcomer's fault tests: what a team running this in production for years would check
//! before trusting it (several engines on one database, abrupt stops and restarts, a primary
//! that goes away, things changed behind the framework's back, malformed events, hostile keys,
//! large and empty blobs, extreme ids). Written from README.md, DESIGN.md and SEMANTICS.md.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::ObjectStoreExt;
use replicable_core::engine::{Engine, EngineConfig, EngineHandle};
use replicable_core::http::{PrimaryApi, serve};
use replicable_core::link::http::token::SharedSecret;
use replicable_core::link::http::{HttpPrimary, HttpPrimaryConfig};
use replicable_core::prelude::*;
use replicable_core::site::Timeouts;
use replicable_core::strategy::{ResourceTarget, StrategyContext, SyncRequest};
use replicable_core::{ResourceError, SyncFailure};
use replicable_strategies::{BlobStrategy, DatabaseStrategy};
use replicable_tests::{descriptor as desc, get_blob, put_blob, wait_for};

type R = Result<(), Box<dyn std::error::Error>>;

// ---------------------------------------------------------------- models

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(BlobStrategy)]
pub struct PackageFile {
    #[replicable(id)]
    pub id: i64,
    #[replicable(blob)]
    pub file_path: String,
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

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(DatabaseStrategy)]
pub struct Label {
    #[replicable(id)]
    pub id: i64,
    pub name: String,
}

// A blob strategy that delegates to `BlobStrategy` and counts syncs per id: how many ran, and
// how many ran at once.
static ACTIVE: Mutex<Option<HashMap<i64, usize>>> = Mutex::new(None);
static SYNCS: Mutex<Option<HashMap<i64, usize>>> = Mutex::new(None);
static MAX_OVERLAP: Mutex<Option<HashMap<i64, usize>>> = Mutex::new(None);

/// (syncs per id, most syncs of one id at once) for the ids in `range`.
fn sync_counts(range: std::ops::RangeInclusive<i64>) -> (HashMap<i64, usize>, usize) {
    let syncs = SYNCS.lock().unwrap().clone().unwrap_or_default();
    let overlap = MAX_OVERLAP.lock().unwrap().clone().unwrap_or_default();
    (
        syncs
            .into_iter()
            .filter(|(id, _)| range.contains(id))
            .collect(),
        overlap
            .into_iter()
            .filter(|(id, _)| range.contains(id))
            .map(|(_, n)| n)
            .max()
            .unwrap_or(0),
    )
}

#[derive(Default)]
pub struct CountingBlob(BlobStrategy);

#[async_trait::async_trait]
impl replicable_core::Strategy for CountingBlob {
    const NAME: &'static str = "CountingBlob";
    const DATA_TYPE: DataType = DataType::Blob;
    const MUTABLE: bool = false;

    fn validate(resource: &replicable_core::Resource) -> Result<(), ResourceError> {
        <BlobStrategy as replicable_core::Strategy>::validate(resource)
    }

    async fn sync(&self, request: SyncRequest<'_>) -> Result<(), SyncFailure> {
        let id = request.model_id;
        {
            let mut a = ACTIVE.lock().unwrap();
            let n = a.get_or_insert_with(HashMap::new).entry(id).or_insert(0);
            *n += 1;
            let now = *n;
            let mut m = MAX_OVERLAP.lock().unwrap();
            let max = m.get_or_insert_with(HashMap::new).entry(id).or_insert(0);
            *max = (*max).max(now);
            *SYNCS
                .lock()
                .unwrap()
                .get_or_insert_with(HashMap::new)
                .entry(id)
                .or_insert(0) += 1;
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
        let r = self.0.sync(request).await;
        *ACTIVE
            .lock()
            .unwrap()
            .get_or_insert_with(HashMap::new)
            .get_mut(&id)
            .unwrap() -= 1;
        r
    }

    async fn remove(
        &self,
        context: &StrategyContext,
        target: &ResourceTarget<'_>,
    ) -> Result<(), ResourceError> {
        self.0.remove(context, target).await
    }

    async fn checksum(
        &self,
        context: &StrategyContext,
        target: &ResourceTarget<'_>,
        record: Option<&replicable_core::storage::StoredRecord>,
    ) -> Result<String, ResourceError> {
        self.0.checksum(context, target, record).await
    }

    async fn create_fixture(
        &self,
        context: &StrategyContext,
        target: &ResourceTarget<'_>,
        record: &serde_json::Value,
        seed: u64,
    ) -> Result<String, ResourceError> {
        self.0.create_fixture(context, target, record, seed).await
    }

    async fn corrupt(
        &self,
        context: &StrategyContext,
        target: &ResourceTarget<'_>,
    ) -> Result<(), ResourceError> {
        self.0.corrupt(context, target).await
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(CountingBlob)]
pub struct CountedFile {
    #[replicable(id)]
    pub id: i64,
    #[replicable(blob)]
    pub file_path: String,
}

// ---------------------------------------------------------------- helpers

fn pf(id: i64, key: &str) -> PackageFile {
    PackageFile {
        id,
        file_path: key.to_owned(),
    }
}

fn fast_config() -> EngineConfig {
    let mut config = EngineConfig::default();
    config.idle.min = Duration::from_millis(50);
    config.idle.max = Duration::from_millis(200);
    config.periods.backfill = Duration::from_secs(1);
    config.periods.verification_maintenance = Duration::from_secs(1);
    config.periods.stuck_sweep = Duration::from_millis(500);
    config.periods.status_report = Duration::from_secs(1);
    config.shutdown_deadline = Duration::from_secs(5);
    config
}

/// Short claim and lease times so that a dead process's work is taken over within the test.
fn fast_timeouts() -> Timeouts {
    Timeouts {
        heartbeat_interval: Duration::from_millis(200),
        claim_timeout: Duration::from_secs(2),
        cursor_lease: Duration::from_secs(2),
        ..Timeouts::default()
    }
}

fn sqlite_url(dir: &Path, file: &str) -> String {
    format!("sqlite://{}", dir.join(file).display())
}

fn secret() -> SharedSecret {
    SharedSecret::new(b"0123456789abcdef0123456789abcdef".to_vec(), "test").expect("32 bytes")
}

async fn sqlite_primary(dir: &Path) -> Site {
    let db = replicable_core::storage::open(&sqlite_url(dir, "primary.db"))
        .await
        .unwrap();
    Site::primary("primary")
        .database(db)
        .blob_directory(dir.join("p-blobs"))
        .build()
        .unwrap()
}

async fn sqlite_secondary(dir: &Path, primary: &Site) -> Site {
    let db = replicable_core::storage::open(&sqlite_url(dir, "secondary.db"))
        .await
        .unwrap();
    Site::secondary("secondary", Arc::new(InProcessPrimary::new(primary)))
        .database(db)
        .blob_directory(dir.join("s-blobs"))
        .timeouts(fast_timeouts())
        .build()
        .unwrap()
}

async fn start(site: &Site, names: &[&str], holder: &str) -> EngineHandle {
    Engine::new(site.clone(), names.iter().map(|n| desc(n)).collect())
        .config(fast_config())
        .holder(holder)
        .start()
        .await
        .expect("engine starts")
}

async fn counts(site: &Site, name: &str) -> replicable_core::storage::RegistryCounts {
    site.registry_store().counts(name).await.expect("counts")
}

/// Rows counted by scanning the registry (not the kept counts), for cross-checking.
async fn scan(site: &Site, name: &str) -> Vec<RegistryRecord> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = site
            .registry_store()
            .list(name, Default::default(), after, 500)
            .await
            .expect("list");
        if page.is_empty() {
            return all;
        }
        after = page.last().map(|r| r.model_id);
        all.extend(page);
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn blob_bytes(id: i64, len: usize) -> Vec<u8> {
    let mut x = id as u64 ^ 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

// ================================================================ several engines, one database

/// README: "Workers on many machines share one PostgreSQL: rows are claimed with `FOR UPDATE
/// SKIP LOCKED`"; SEMANTICS/README: "One sync per record at a time on a site"; "it holds an
/// exclusive lease (one cursor per site)". Two secondary engines of one site on ONE schema
/// replicate 300 blobs: each record synced exactly once, never two syncs of one id at once,
/// everything verified, the cursor lease held by one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_two_engines_on_one_schema_sync_each_record_once() -> R {
    let Some(pg) = replicable_tests::PostgresTarget::new() else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let primary = sqlite_primary(dir.path()).await;
    let n = 300i64;
    let mut files = Vec::new();
    for id in 1..=n {
        let key = format!("counted/{id}.bin");
        put_blob(&primary, &key, &blob_bytes(id, 2048 + id as usize)).await;
        files.push(CountedFile { id, file_path: key });
    }
    let link = Arc::new(InProcessPrimary::new(&primary));
    let mk = |db| {
        Site::secondary("secondary", link.clone())
            .database(db)
            .blob_directory(dir.path().join("s-blobs"))
            .build()
            .unwrap()
    };
    let a = mk(pg.open().await);
    let b = mk(pg.open().await);
    let pe = start(&primary, &["counted_file"], "primary").await;
    let ea = start(&a, &["counted_file"], "engine-a").await;
    let eb = start(&b, &["counted_file"], "engine-b").await;
    primary.publish_created_events(&files).await?;

    let done = wait_for(60, || async {
        let c = counts(&a, "counted_file").await;
        c.synced == n as u64 && c.verified == n as u64
    })
    .await;
    let c = counts(&a, "counted_file").await;
    // The lease row, read with plain SQL while both still run.
    let pool = sqlx::PgPool::connect(&pg.url).await?;
    let holders: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT holder FROM \"{}\".replicable_leases WHERE name = 'log_cursor'",
        pg.schema
    )))
    .fetch_all(&pool)
    .await?;
    eb.shutdown().await;
    ea.shutdown().await;
    pe.shutdown().await;
    assert!(done, "every record synced and verified: {c:?}");
    let (syncs, overlap) = sync_counts(1..=n);
    let twice: Vec<_> = syncs.iter().filter(|(_, n)| **n != 1).collect();
    assert_eq!(syncs.len(), n as usize, "every id synced");
    assert!(twice.is_empty(), "ids synced more than once: {twice:?}");
    assert_eq!(overlap, 1, "two syncs of one record ran at the same time");
    assert_eq!(holders.len(), 1, "one lease row: {holders:?}");
    assert!(
        holders[0].0 == "engine-a" || holders[0].0 == "engine-b",
        "{holders:?}"
    );
    let rows = scan(&b, "counted_file").await;
    assert_eq!(rows.len(), n as usize);
    for id in [1i64, 150, 300] {
        assert_eq!(
            std::fs::read(dir.path().join(format!("s-blobs/counted/{id}.bin")))?,
            blob_bytes(id, 2048 + id as usize)
        );
    }
    pool.close().await;
    Ok(())
}

// ================================================================ abrupt stop, restart

/// README: "every commit is atomic and survives the process crashing"; "a claim whose worker
/// stops heartbeating ... is failed and retried (the first time at once)"; "at start-up the
/// sweep of partial downloads ... no live sync owns". An engine's runtime is torn down in the
/// middle of many syncs (large blobs go through `.replicable/tmp`); a new engine on the same
/// SQLite files finishes: all synced and verified, no `started` rows, no temporaries left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_torn_down_mid_sync_then_restarted_finishes_and_leaves_no_temporaries() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path().to_path_buf();
    let primary = sqlite_primary(&root).await;
    let mut records = Vec::new();
    for id in 1..=120i64 {
        // A third above 1 MiB (streamed through a temporary object), the rest small.
        let len = if id % 3 == 0 {
            1_500_000 + id as usize
        } else {
            10_000
        };
        let key = format!("crash/{id}.bin");
        put_blob(&primary, &key, &blob_bytes(id, len)).await;
        records.push((pf(id, &key), len));
    }
    let models: Vec<PackageFile> = records.iter().map(|(r, _)| r.clone()).collect();
    primary.publish_created_events(&models).await?;
    let p_engine = start(&primary, &["package_file"], "primary").await;

    // Engine A on its own runtime, on its own thread: torn down without a shutdown.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (started_tx, started_rx) = std::sync::mpsc::channel::<u64>();
    let root_a = root.clone();
    let primary_a = primary.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let a = sqlite_secondary(&root_a, &primary_a).await;
            let engine = start(&a, &["package_file"], "engine-a").await;
            // Wait until some are synced and some are still running.
            let _ = wait_for(30, || async {
                let c = counts(&a, "package_file").await;
                c.synced >= 10 && c.started > 0
            })
            .await;
            let c = counts(&a, "package_file").await;
            started_tx.send(c.started).unwrap();
            std::mem::forget(engine);
            let _ = rx.recv();
        });
        rt.shutdown_background();
    });
    let started_at_kill = tokio::task::spawn_blocking(move || started_rx.recv()).await??;
    tx.send(()).unwrap();
    tokio::task::spawn_blocking(move || thread.join())
        .await?
        .unwrap();

    let b = sqlite_secondary(&root, &primary).await;
    let left_started = counts(&b, "package_file").await.started;
    let eb = start(&b, &["package_file"], "engine-b").await;
    let synced = wait_for(30, || async {
        let c = counts(&b, "package_file").await;
        c.synced == 120 && c.started == 0
    })
    .await;
    let c = counts(&b, "package_file").await;
    // Give the periodic sweep a moment to remove what the dead process left.
    let tmp = root.join("s-blobs/.replicable/tmp");
    let swept = wait_for(10, || async { files_under(&tmp).is_empty() }).await;
    let leftovers = files_under(&tmp);
    let verified = wait_for(10, || async {
        counts(&b, "package_file").await.verified == 120
    })
    .await;
    let cv = counts(&b, "package_file").await;
    let not_verified: Vec<_> = scan(&b, "package_file")
        .await
        .into_iter()
        .filter(|r| r.verification.verification_state != VerificationState::Succeeded)
        .map(|r| {
            (
                r.model_id,
                r.verification.verification_state,
                r.verification.verification_failure,
                r.verification.verification_retry_at,
            )
        })
        .take(3)
        .collect();
    eb.shutdown().await;
    p_engine.shutdown().await;
    eprintln!("started at kill: {started_at_kill}, started at restart: {left_started}");
    assert!(
        synced,
        "everything synced after the restart, no started rows: {c:?}"
    );
    for (r, len) in &records {
        let on_disk = std::fs::read(root.join("s-blobs").join(&r.file_path))?;
        assert!(
            on_disk == blob_bytes(r.id, *len),
            "copy of {} differs",
            r.id
        );
    }
    assert!(
        swept,
        "temporaries left under .replicable/tmp: {leftovers:?}"
    );
    assert!(
        verified,
        "every copy verified within moments of the restart (a dead worker's claims are \
         retried at once the first time): {cv:?}; e.g. {not_verified:#?}"
    );
    Ok(())
}

/// README: "a restarted process takes over at once after a graceful shutdown" and a crashed
/// one's lease expires (`Timeouts::cursor_lease`). An engine whose runtime dies holding the
/// lease: a second engine on the same files consumes new events once the lease expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_cursor_lease_expires_and_a_new_engine_consumes() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path().to_path_buf();
    let primary = sqlite_primary(&root).await;
    put_blob(&primary, "one", b"1").await;
    pf(1, "one")
        .replicator(&primary)
        .publish_created_event()
        .await?;
    let root_a = root.clone();
    let primary_a = primary.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let a = sqlite_secondary(&root_a, &primary_a).await;
            let engine = start(&a, &["package_file"], "engine-a").await;
            let ok = wait_for(30, || async {
                matches!(pf(1, "one").replicator(&a).registry().await,
                    Ok(Some(r)) if r.state == SyncState::Synced)
            })
            .await;
            assert!(ok, "A synced record 1");
            std::mem::forget(engine);
        });
        rt.shutdown_background();
    })
    .join()
    .unwrap();
    let b = sqlite_secondary(&root, &primary).await;
    let eb = start(&b, &["package_file"], "engine-b").await;
    put_blob(&primary, "two", b"2").await;
    pf(2, "two")
        .replicator(&primary)
        .publish_created_event()
        .await?;
    let ok = wait_for(20, || async {
        matches!(pf(2, "two").replicator(&b).registry().await,
            Ok(Some(r)) if r.state == SyncState::Synced)
    })
    .await;
    eb.shutdown().await;
    assert!(ok, "B consumed the new event after A's lease expired");
    Ok(())
}

// ================================================================ HTTP primary goes away

/// README: "Reads are retried (transport errors, 502 / 503 / 504) with backoff"; "A loop that
/// errors logs, backs off and goes on". The primary's API server stops for a few seconds while
/// records are published, then a new server comes up on the same port: the secondary catches up
/// without operator action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_primary_down_for_seconds_then_back_secondary_catches_up() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let primary = sqlite_primary(root).await;
    let p_engine = start(&primary, &["package_file"], "primary").await;
    let api = || {
        PrimaryApi::new(primary.clone())
            .secondary("eu", secret())
            .router()
    };
    let server = serve("127.0.0.1:0".parse()?, api(), None).await?;
    let addr: SocketAddr = server.local_addr();
    let link = HttpPrimary::new(HttpPrimaryConfig::new(
        format!("http://{addr}/"),
        "eu",
        secret(),
    ))?;
    let sdb = replicable_core::storage::open(&sqlite_url(root, "secondary.db")).await?;
    let secondary = Site::secondary("eu", Arc::new(link))
        .database(sdb)
        .blob_directory(root.join("s-blobs"))
        .build()?;
    let s_engine = start(&secondary, &["package_file"], "eu").await;

    put_blob(&primary, "before", b"before").await;
    pf(1, "before")
        .replicator(&primary)
        .publish_created_event()
        .await?;
    let first = wait_for(20, || async {
        matches!(pf(1, "before").replicator(&secondary).registry().await,
            Ok(Some(r)) if r.state == SyncState::Synced)
    })
    .await;
    assert!(first, "record 1 synced over HTTP");

    server.shutdown().await?;
    for id in 2..=21 {
        let key = format!("during/{id}");
        put_blob(&primary, &key, key.as_bytes()).await;
        pf(id, &key)
            .replicator(&primary)
            .publish_created_event()
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let server = serve(addr, api(), None).await?;
    let ok = wait_for(30, || async {
        let c = counts(&secondary, "package_file").await;
        c.synced == 21 && c.verified == 21
    })
    .await;
    let c = counts(&secondary, "package_file").await;
    s_engine.shutdown().await;
    p_engine.shutdown().await;
    server.shutdown().await?;
    assert!(ok, "caught up after the primary came back: {c:?}");
    for id in 2..=21 {
        let key = format!("during/{id}");
        assert_eq!(
            get_blob(&secondary, &key).await.as_deref(),
            Some(key.as_bytes())
        );
    }
    Ok(())
}

// ================================================================ changed behind its back

/// SEMANTICS: "Blob download: written to a temporary location, SHA-256 compared with the
/// primary's checksum before it replaces the real file; mismatch fails the sync". A primary
/// blob overwritten behind the framework's back after its checksum was recorded (both a small
/// and a > 1 MiB blob): the secondary's sync fails and no copy with the wrong bytes appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_blob_changed_behind_its_back_is_not_made_visible() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let primary = sqlite_primary(root).await;
    let secondary = sqlite_secondary(root, &primary).await;
    let small = pf(1, "tamper/small");
    let large = pf(2, "tamper/large");
    put_blob(&primary, &small.file_path, b"original small").await;
    put_blob(&primary, &large.file_path, &blob_bytes(2, 2_000_000)).await;
    small.replicator(&primary).publish_created_event().await?;
    large.replicator(&primary).publish_created_event().await?;
    // The primary checksums them.
    let p_engine = start(&primary, &["package_file"], "primary").await;
    let checksummed = wait_for(20, || async {
        let s = replicable_core::status::primary_status(&primary, "package_file").await;
        s.is_ok_and(|s| s.checksummed_count == 2)
    })
    .await;
    p_engine.shutdown().await;
    assert!(checksummed, "primary checksummed both");
    // Now change them behind the framework's back.
    put_blob(&primary, &small.file_path, b"tampered small").await;
    put_blob(&primary, &large.file_path, &blob_bytes(99, 2_000_000)).await;

    replicable_core::log_cursor::catch_up(&secondary, 50).await?;
    replicable_core::workers::sync_due(&secondary, desc("package_file"), 10, 2).await?;
    for r in [&small, &large] {
        let row = r.replicator(&secondary).registry().await?.expect("row");
        assert_eq!(
            row.state,
            SyncState::Failed,
            "sync of {} fails: {row:?}",
            r.id
        );
        let failure = row.last_sync_failure.clone().unwrap_or_default();
        assert!(
            failure.to_lowercase().contains("checksum"),
            "failure names the checksum: {failure}"
        );
        assert_eq!(
            get_blob(&secondary, &r.file_path).await,
            None,
            "no copy with bytes that do not match the primary's checksum"
        );
    }
    assert!(
        files_under(&root.join("s-blobs/.replicable/tmp")).is_empty(),
        "temporaries of the failed syncs left: {:?}",
        files_under(&root.join("s-blobs/.replicable/tmp"))
    );
    Ok(())
}

/// SEMANTICS: "Succeeded rows older than the re-verification interval are re-marked pending";
/// "A mismatch ... the registry is failed so the record is re-synced". A secondary copy deleted
/// behind the framework's back is noticed by re-verification and fetched again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_copy_deleted_behind_its_back_is_noticed_and_repaired() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let primary = sqlite_primary(root).await;
    let secondary = sqlite_secondary(root, &primary).await;
    let record = pf(1, "gone/soon.bin");
    put_blob(&primary, &record.file_path, b"precious bytes").await;
    record.replicator(&primary).publish_created_event().await?;
    let mut config = fast_config();
    config.verification.reverification_interval = Duration::from_secs(2);
    let p_engine = Engine::new(primary.clone(), vec![desc("package_file")])
        .config(config.clone())
        .start()
        .await?;
    let s_engine = Engine::new(secondary.clone(), vec![desc("package_file")])
        .config(config)
        .start()
        .await?;
    let verified = wait_for(20, || async {
        matches!(record.replicator(&secondary).registry().await,
            Ok(Some(r)) if r.state == SyncState::Synced
                && r.verification_state == VerificationState::Succeeded)
    })
    .await;
    assert!(verified, "synced and verified first");
    let on_disk = root.join("s-blobs/gone/soon.bin");
    std::fs::remove_file(&on_disk)?;
    // Noticed by re-verification: the row fails (or the copy is fetched again at once).
    let noticed = wait_for(20, || async {
        on_disk.exists()
            || matches!(record.replicator(&secondary).registry().await,
                Ok(Some(r)) if r.state == SyncState::Failed)
    })
    .await;
    let row = record.replicator(&secondary).registry().await?;
    assert!(noticed, "the deleted copy was noticed; row {row:?}");
    // As an operator would: resync it.
    secondary
        .registry_store()
        .resync_many("package_file", &[1])
        .await?;
    let repaired = wait_for(20, || async { on_disk.exists() }).await;
    let row = record.replicator(&secondary).registry().await?;
    s_engine.shutdown().await;
    p_engine.shutdown().await;
    assert!(repaired, "the deleted copy was fetched again; row {row:?}");
    assert_eq!(std::fs::read(&on_disk)?, b"precious bytes");
    Ok(())
}

// ================================================================ malformed events

/// SEMANTICS/README (the cursor notices, and `record_skipped_event`): a malformed event is
/// recorded and skipped without stopping the cursor. Rows written into the primary's
/// `replicable_events` with plain SQL: a payload that is not JSON, an unknown replicable, an
/// unknown event name, a payload of the wrong shape; the events after them are consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_event_rows_are_recorded_and_skipped() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let primary = sqlite_primary(root).await;
    put_blob(&primary, "a", b"a").await;
    pf(1, "a")
        .replicator(&primary)
        .publish_created_event()
        .await?;
    let pool = sqlx::SqlitePool::connect(&sqlite_url(root, "primary.db")).await?;
    let (good_payload,): (String,) =
        sqlx::query_as("SELECT payload FROM replicable_events ORDER BY id LIMIT 1")
            .fetch_one(&pool)
            .await?;
    let now = chrono::Utc::now().timestamp_micros();
    for (name, kind, payload) in [
        ("package_file", "created", "{not json"),
        ("no_such_replicable", "created", good_payload.as_str()),
        ("package_file", "exploded", good_payload.as_str()),
        ("package_file", "created", r#"{"model_id":"seven"}"#),
    ] {
        sqlx::query(
            "INSERT INTO replicable_events (replicable_name, event_name, payload, created_at) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(name)
        .bind(kind)
        .bind(payload)
        .bind(now)
        .execute(&pool)
        .await?;
    }
    pool.close().await;
    put_blob(&primary, "b", b"b").await;
    pf(2, "b")
        .replicator(&primary)
        .publish_created_event()
        .await?;

    let secondary = sqlite_secondary(root, &primary).await;
    let engine = start(&secondary, &["package_file"], "s").await;
    let ok = wait_for(20, || async {
        counts(&secondary, "package_file").await.synced == 2
    })
    .await;
    let skipped = secondary.registry_store().skipped_events(100).await?;
    let cursor = secondary.registry_store().cursor().await?;
    engine.shutdown().await;
    assert!(
        ok,
        "the events after the malformed ones were consumed; cursor {cursor}"
    );
    assert_eq!(cursor, 6, "cursor past every event");
    let ids: Vec<i64> = skipped.iter().map(|s| s.event_id).collect();
    assert_eq!(
        ids,
        vec![2, 3, 4, 5],
        "each malformed event recorded: {skipped:#?}"
    );
    assert!(skipped.iter().all(|s| !s.reason.is_empty()));
    Ok(())
}

// ================================================================ hostile keys

/// README: "a key that escapes its root is refused"; local blob stores refuse "any key whose path
/// goes through a symbolic link". Keys with `..` and absolute paths are refused at publish (or
/// at least never write outside), and a symlink planted in the secondary's blob directory
/// pointing outside it makes the sync fail without writing outside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaping_keys_and_planted_symlinks_never_write_outside() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let primary = sqlite_primary(root).await;
    let secondary = sqlite_secondary(root, &primary).await;
    let outside = root.join("outside");
    std::fs::create_dir_all(&outside)?;
    for (id, key) in [
        (1, "../outside/escape.bin"),
        (2, "/etc/passwd-copy"),
        (3, "a/../../outside/x"),
        (4, "a/./b/../../../outside/y"),
    ] {
        let refused = pf(id, key)
            .replicator(&primary)
            .publish_created_event()
            .await;
        assert!(
            refused.is_err(),
            "key {key:?} accepted at publish: {refused:?}"
        );
        assert!(
            replicable_core::blob_key::object_path(key).is_err(),
            "object_path accepts {key:?}"
        );
    }
    // A legitimate key on the primary, a link at the same place on the secondary.
    put_blob(&primary, "linked/file.bin", b"inside").await;
    std::fs::create_dir_all(root.join("s-blobs"))?;
    std::os::unix::fs::symlink(&outside, root.join("s-blobs/linked"))?;
    pf(10, "linked/file.bin")
        .replicator(&primary)
        .publish_created_event()
        .await?;
    // A link to a file outside, planted where a copy will land.
    put_blob(&primary, "direct.bin", b"direct").await;
    std::fs::write(outside.join("target.txt"), b"untouched")?;
    std::os::unix::fs::symlink(outside.join("target.txt"), root.join("s-blobs/direct.bin"))?;
    pf(11, "direct.bin")
        .replicator(&primary)
        .publish_created_event()
        .await?;

    replicable_core::log_cursor::catch_up(&secondary, 50).await?;
    replicable_core::workers::sync_due(&secondary, desc("package_file"), 10, 2).await?;
    let outside_files: Vec<_> = files_under(&outside);
    assert_eq!(
        outside_files,
        vec![outside.join("target.txt")],
        "nothing written outside the blob directory"
    );
    assert_eq!(std::fs::read(outside.join("target.txt"))?, b"untouched");
    let row = pf(10, "linked/file.bin")
        .replicator(&secondary)
        .registry()
        .await?
        .expect("row");
    assert_eq!(
        row.state,
        SyncState::Failed,
        "sync through a link refused: {row:?}"
    );
    let row11 = pf(11, "direct.bin")
        .replicator(&secondary)
        .registry()
        .await?
        .expect("row");
    // Either refused, or the link itself replaced by a real file inside the directory.
    if row11.state == SyncState::Synced {
        let meta = std::fs::symlink_metadata(root.join("s-blobs/direct.bin"))?;
        assert!(
            !meta.file_type().is_symlink(),
            "synced through a planted link"
        );
    }
    Ok(())
}

// ================================================================ sizes and ids

/// README: blobs stream through a temporary object and are hashed on the way. A 50 MiB blob and
/// an empty blob replicate and verify, byte for byte, through the engines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mib_blob_and_an_empty_blob_replicate_and_verify() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let primary = sqlite_primary(root).await;
    let secondary = sqlite_secondary(root, &primary).await;
    let big = blob_bytes(7, 50 * 1024 * 1024);
    put_blob(&primary, "big.bin", &big).await;
    put_blob(&primary, "empty.bin", b"").await;
    pf(1, "big.bin")
        .replicator(&primary)
        .publish_created_event()
        .await?;
    pf(2, "empty.bin")
        .replicator(&primary)
        .publish_created_event()
        .await?;
    let pe = start(&primary, &["package_file"], "p").await;
    let se = start(&secondary, &["package_file"], "s").await;
    let ok = wait_for(60, || async {
        let c = counts(&secondary, "package_file").await;
        c.synced == 2 && c.verified == 2
    })
    .await;
    let c = counts(&secondary, "package_file").await;
    let rows = scan(&secondary, "package_file").await;
    se.shutdown().await;
    pe.shutdown().await;
    assert!(ok, "both synced and verified: {c:?} {rows:#?}");
    assert!(
        std::fs::read(root.join("s-blobs/big.bin"))? == big,
        "big copy differs"
    );
    assert_eq!(std::fs::read(root.join("s-blobs/empty.bin"))?, b"");
    let empty_row = rows.iter().find(|r| r.model_id == 2).unwrap();
    assert_eq!(
        empty_row.verification.verification_checksum.as_deref(),
        Some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        "SHA-256 of nothing"
    );
    Ok(())
}

/// Ids near the ends of i64 and unicode keys: published, consumed, backfilled (its ranges walk
/// to i64::MAX) and synced; a record only backfill can find (its event lost) at i64::MAX.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_ids_and_unicode_keys_replicate_and_backfill() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let primary = sqlite_primary(root).await;
    let secondary = sqlite_secondary(root, &primary).await;
    let records = [
        pf(i64::MAX, "max/résumé 😀.pdf"),
        pf(i64::MAX - 1, "max/日本語/ファイル.bin"),
        pf(1, "one/with space & plus+.txt"),
        pf(0, "zero/ä.bin"),
        pf(i64::MIN, "min/ß.bin"),
    ];
    for r in &records {
        put_blob(&primary, &r.file_path, r.file_path.as_bytes()).await;
    }
    primary.publish_created_events(&records).await?;
    // Settings near i64::MAX too, for a second replicable.
    let settings = [
        CiSetting {
            id: i64::MAX,
            key: "k".into(),
            value: "ü".into(),
        },
        CiSetting {
            id: i64::MAX - 10_000,
            key: "k2".into(),
            value: "v".into(),
        },
    ];
    primary.publish_created_events(&settings).await?;

    let pe = start(&primary, &["package_file", "ci_setting"], "p").await;
    let se = start(&secondary, &["package_file", "ci_setting"], "s").await;
    let ok = wait_for(30, || async {
        counts(&secondary, "package_file").await.verified == 5
            && counts(&secondary, "ci_setting").await.synced == 2
    })
    .await;
    let rows = scan(&secondary, "package_file").await;
    se.shutdown().await;
    pe.shutdown().await;
    assert!(ok, "all synced and verified: {rows:#?}");
    for r in &records {
        assert_eq!(
            get_blob(&secondary, &r.file_path).await.as_deref(),
            Some(r.file_path.as_bytes()),
            "copy of {:?}",
            r.file_path
        );
    }

    // A second secondary that never saw the events: backfill alone must find them all.
    let fresh = Site::secondary("fresh", Arc::new(InProcessPrimary::new(&primary)))
        .in_memory()
        .build()?;
    for (name, expected) in [
        ("package_file", vec![i64::MIN, 0, 1, i64::MAX - 1, i64::MAX]),
        ("ci_setting", vec![i64::MAX - 10_000, i64::MAX]),
    ] {
        fresh.registry_store().create_tables(name).await?;
        let report = tokio::time::timeout(
            Duration::from_secs(20),
            replicable_core::backfill::backfill(&fresh, desc(name), 10_000),
        )
        .await
        .map_err(|_| "backfill near i64::MAX did not finish in 20 s")??;
        let ids: Vec<i64> = scan(&fresh, name)
            .await
            .iter()
            .map(|r| r.model_id)
            .collect();
        assert_eq!(
            ids, expected,
            "backfill of {name} found every id ({report:?})"
        );
    }
    Ok(())
}

/// Many replicables at once through one engine pair: blobs, rows of two models; then deletes of
/// half of each; the end state matches the primary and every copy is verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_replicables_at_once_create_and_delete() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let primary = sqlite_primary(root).await;
    let secondary = sqlite_secondary(root, &primary).await;
    let pe = start(&primary, &["package_file", "ci_setting", "label"], "p").await;
    let se = start(&secondary, &["package_file", "ci_setting", "label"], "s").await;
    let files: Vec<_> = (1..=60).map(|i| pf(i, &format!("many/{i}"))).collect();
    for f in &files {
        put_blob(&primary, &f.file_path, f.file_path.as_bytes()).await;
    }
    let settings: Vec<_> = (1..=60)
        .map(|i| CiSetting {
            id: i,
            key: format!("k{i}"),
            value: format!("v{i}"),
        })
        .collect();
    let labels: Vec<_> = (1..=60)
        .map(|i| Label {
            id: i,
            name: format!("l{i}"),
        })
        .collect();
    primary.publish_created_events(&files).await?;
    primary.publish_created_events(&settings).await?;
    primary.publish_created_events(&labels).await?;
    let ok = wait_for(30, || async {
        counts(&secondary, "package_file").await.verified == 60
            && counts(&secondary, "ci_setting").await.verified == 60
            && counts(&secondary, "label").await.verified == 60
    })
    .await;
    assert!(ok, "all three replicated and verified");
    primary.publish_deleted_events(&files[..30]).await?;
    primary.publish_deleted_events(&settings[..30]).await?;
    primary.publish_deleted_events(&labels[..30]).await?;
    let ok = wait_for(30, || async {
        counts(&secondary, "package_file").await.registry == 30
            && counts(&secondary, "ci_setting").await.registry == 30
            && counts(&secondary, "label").await.registry == 30
    })
    .await;
    let c = (
        counts(&secondary, "package_file").await,
        counts(&secondary, "label").await,
    );
    se.shutdown().await;
    pe.shutdown().await;
    assert!(ok, "deletes applied: {c:?}");
    for f in &files[..30] {
        assert_eq!(
            get_blob(&secondary, &f.file_path).await,
            None,
            "{} removed",
            f.id
        );
    }
    for f in &files[30..] {
        assert!(
            get_blob(&secondary, &f.file_path).await.is_some(),
            "{} kept",
            f.id
        );
    }
    // The kept counts agree with a scan of the registry.
    let scanned = scan(&secondary, "label").await;
    assert_eq!(scanned.len(), 30);
    assert!(scanned.iter().all(|r| r.model_id > 30));
    Ok(())
}

// ================================================================ late commits (gaps)

/// README: "A secondary's log cursor that reads an event before an earlier id has committed
/// keeps that id as an open gap and reads it again ... until it appears". On PostgreSQL, a
/// transaction publishes (takes id N) and commits only after a later publish (N+1) was consumed:
/// the secondary still syncs record N.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_event_committed_late_is_read_again_and_synced() -> R {
    let Some(pg) = replicable_tests::PostgresTarget::new() else {
        return Ok(());
    };
    let primary_db = replicable_core::storage::sql::SqlStore::open_with(
        &pg.url,
        replicable_core::storage::sql::SqlOptions {
            schema: Some(pg.schema.clone()),
            replicables: vec!["ci_setting".into()],
            ..Default::default()
        },
    )
    .await?;
    let primary = Site::primary("primary").database(primary_db).build()?;
    let secondary = Site::secondary("secondary", Arc::new(InProcessPrimary::new(&primary)))
        .in_memory()
        .build()?;
    // No backfill during the test: only the cursor's gap handling can find record 1.
    let mut config = fast_config();
    config.periods.backfill = Duration::from_secs(3600);
    let se = Engine::new(secondary.clone(), vec![desc("ci_setting")])
        .config(config)
        .start()
        .await?;

    // A first event, so the cursor is past the log's start.
    let first = CiSetting {
        id: 100,
        key: "first".into(),
        value: "v".into(),
    };
    first.replicator(&primary).publish_created_event().await?;
    let ok = wait_for(20, || async {
        matches!(first.replicator(&secondary).registry().await,
            Ok(Some(r)) if r.state == SyncState::Synced)
    })
    .await;
    assert!(ok, "the first event was consumed");

    let pool = sqlx::PgPool::connect(&pg.url).await?;
    let mut tx = pool.begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET LOCAL search_path TO \"{}\"",
        pg.schema
    )))
    .execute(&mut *tx)
    .await?;
    let late = CiSetting {
        id: 1,
        key: "late".into(),
        value: "v".into(),
    };
    let late_id = late
        .replicator(&primary)
        .publish_created_event_in(&mut *tx)
        .await?;
    let early = CiSetting {
        id: 2,
        key: "early".into(),
        value: "v".into(),
    };
    let early_id = early.replicator(&primary).publish_created_event().await?;
    assert!(late_id < early_id, "{late_id:?} < {early_id:?}");
    let ok = wait_for(20, || async {
        matches!(early.replicator(&secondary).registry().await,
            Ok(Some(r)) if r.state == SyncState::Synced)
    })
    .await;
    assert!(ok, "the later event was consumed first");
    tx.commit().await?;
    let ok = wait_for(20, || async {
        matches!(late.replicator(&secondary).registry().await,
            Ok(Some(r)) if r.state == SyncState::Synced)
    })
    .await;
    let row = late.replicator(&secondary).registry().await?;
    let state = secondary.registry_store().cursor_state().await?;
    let log: Vec<(i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, replicable_name FROM \"{}\".replicable_events ORDER BY id",
        pg.schema
    )))
    .fetch_all(&pool)
    .await?;
    eprintln!("ids {late_id:?} {early_id:?}; cursor state {state:?}; primary log {log:?}");
    se.shutdown().await;
    pool.close().await;
    assert!(
        ok,
        "the late-committed event was read again and synced: {row:?}"
    );
    Ok(())
}

// ================================================================ real processes, SIGKILL

/// The role of a child process (this test binary run again with `FAULTS_CHILD_ROLE`): a
/// secondary engine over the SQLite files in `FAULTS_DIR`, or a primary publishing batches in a
/// loop. Without the variable it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process_role() -> R {
    let Ok(role) = std::env::var("FAULTS_CHILD_ROLE") else {
        return Ok(());
    };
    let dir = PathBuf::from(std::env::var("FAULTS_DIR")?);
    let primary = sqlite_primary(&dir).await;
    match role.as_str() {
        "secondary" => {
            let secondary = sqlite_secondary(&dir, &primary).await;
            let _engine = start(&secondary, &["package_file"], "child").await;
            loop {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        }
        "publisher" => {
            let mut next = 1i64;
            loop {
                let batch: Vec<CiSetting> = (next..next + 100)
                    .map(|id| CiSetting {
                        id,
                        key: format!("k{id}"),
                        value: "v".into(),
                    })
                    .collect();
                primary.publish_created_events(&batch).await?;
                next += 100;
                // Single publishes from concurrent callers too (group commit).
                let singles: Vec<_> = (0..8)
                    .map(|i| {
                        let p = primary.clone();
                        let l = Label {
                            id: next * 10 + i,
                            name: "x".into(),
                        };
                        tokio::spawn(async move { l.replicator(&p).publish_created_event().await })
                    })
                    .collect();
                for s in singles {
                    s.await??;
                }
                std::fs::write(dir.join("published"), next.to_string())?;
            }
        }
        other => Err(format!("unknown role {other}").into()),
    }
}

/// A child process that is killed and reaped when dropped, so that a test failing before its
/// own kill leaves no process behind.
struct ChildGuard(std::process::Child);

impl std::ops::Deref for ChildGuard {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_child(role: &str, dir: &Path) -> ChildGuard {
    let child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child_process_role",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FAULTS_CHILD_ROLE", role)
        .env("FAULTS_DIR", dir)
        .env("RUST_BACKTRACE", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("child process starts");
    ChildGuard(child)
}

/// README: "every commit is atomic and survives the process crashing"; "a killed process's work
/// resumes without a backoff"; "at start-up the sweep of partial downloads ... no live sync
/// owns". A secondary engine in its own process is SIGKILLed in the middle of many syncs; an
/// engine in this process on the same SQLite files finishes them all; no `started` rows, no
/// temporaries; the kept counts agree with the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_process_sigkilled_mid_sync_then_restarted_finishes() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path().to_path_buf();
    let primary = sqlite_primary(&root).await;
    let mut records = Vec::new();
    for id in 1..=90i64 {
        let len = if id % 2 == 0 {
            1_200_000 + id as usize
        } else {
            5_000
        };
        let key = format!("kill/{id}.bin");
        put_blob(&primary, &key, &blob_bytes(id, len)).await;
        records.push((pf(id, &key), len));
    }
    let models: Vec<PackageFile> = records.iter().map(|(r, _)| r.clone()).collect();
    primary.publish_created_events(&models).await?;
    let pe = start(&primary, &["package_file"], "primary").await;

    let mut child = spawn_child("secondary", &root);
    let observer = sqlite_secondary(&root, &primary).await;
    let midway = wait_for(30, || async {
        observer
            .registry_store()
            .counts("package_file")
            .await
            .is_ok_and(|c| c.synced >= 5 && c.synced < 90)
    })
    .await;
    // SIGKILL, by this child's PID (an error: it already ended), then always reaped.
    let _ = child.kill();
    child.wait()?;
    let at_kill = observer.registry_store().counts("package_file").await.ok();
    assert!(
        midway,
        "the child synced some records before it was killed: {at_kill:?}"
    );

    let b = sqlite_secondary(&root, &primary).await;
    let eb = start(&b, &["package_file"], "after-kill").await;
    let done = wait_for(30, || async {
        let c = counts(&b, "package_file").await;
        c.synced == 90 && c.started == 0
    })
    .await;
    let tmp = root.join("s-blobs/.replicable/tmp");
    let swept = wait_for(10, || async { files_under(&tmp).is_empty() }).await;
    let c = counts(&b, "package_file").await;
    let rows = scan(&b, "package_file").await;
    eb.shutdown().await;
    pe.shutdown().await;
    eprintln!("at kill: {at_kill:?}");
    assert!(done, "all synced after the restart: {c:?}");
    let by_state = |s: SyncState| rows.iter().filter(|r| r.state == s).count() as u64;
    assert_eq!(
        (c.registry, c.synced, c.started, c.pending, c.failed),
        (
            rows.len() as u64,
            by_state(SyncState::Synced),
            by_state(SyncState::Started),
            by_state(SyncState::Pending),
            by_state(SyncState::Failed)
        ),
        "kept counts agree with the registry after a crash"
    );
    for (r, len) in &records {
        let on_disk = std::fs::read(root.join("s-blobs").join(&r.file_path))?;
        assert!(
            on_disk == blob_bytes(r.id, *len),
            "copy of {} differs",
            r.id
        );
    }
    assert!(swept, "temporaries left: {:?}", files_under(&tmp));
    Ok(())
}

/// README: "Every catalogue row, verification row and event of a batch is written, or none is";
/// "every commit is atomic and survives the process crashing". A primary process publishing
/// batches of 100 (and concurrent single publishes) is SIGKILLed; reopened, its log holds
/// whole batches only, and every event has its catalogue and verification rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_process_sigkilled_while_publishing_keeps_whole_batches() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path().to_path_buf();
    {
        // Create the schema first, so the child and this process agree on it.
        let p = sqlite_primary(&root).await;
        p.registry_store().create_tables("ci_setting").await?;
    }
    let mut child = spawn_child("publisher", &root);
    let published = wait_for(30, || async {
        std::fs::read_to_string(root.join("published"))
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .is_some_and(|n| n > 1000)
    })
    .await;
    // Kill at a moment that is not aligned with anything.
    tokio::time::sleep(Duration::from_millis(fastrand_ms())).await;
    let _ = child.kill();
    child.wait()?;
    assert!(published, "the child published some batches");

    let primary = sqlite_primary(&root).await;
    let pool = sqlx::SqlitePool::connect(&sqlite_url(&root, "primary.db")).await?;
    let (events,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM replicable_events WHERE replicable_name = 'ci_setting'",
    )
    .fetch_one(&pool)
    .await?;
    let (max_id,): (i64,) = sqlx::query_as(
        "SELECT COALESCE(MAX(CAST(json_extract(payload, '$.model_id') AS INTEGER)), 0) \
         FROM replicable_events WHERE replicable_name = 'ci_setting'",
    )
    .fetch_one(&pool)
    .await?;
    let (label_events,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM replicable_events WHERE replicable_name = 'label'")
            .fetch_one(&pool)
            .await?;
    pool.close().await;
    let catalogue = primary.records().count("ci_setting").await?;
    let verification = primary.verification_store().counts("ci_setting").await?;
    let label_catalogue = primary.records().count("label").await?;
    assert_eq!(
        events % 100,
        0,
        "only whole batches in the log: {events} events"
    );
    assert_eq!(max_id, events, "batches in order, none missing");
    assert_eq!(catalogue as i64, events, "a catalogue row per event");
    assert_eq!(
        verification.total as i64, events,
        "a verification row per event"
    );
    assert_eq!(
        label_catalogue as i64, label_events,
        "each single publish has its catalogue row"
    );
    // And the log is usable: a secondary consumes it all.
    let secondary = Site::secondary("s", Arc::new(InProcessPrimary::new(&primary)))
        .in_memory()
        .build()?;
    secondary
        .registry_store()
        .create_tables("ci_setting")
        .await?;
    secondary.registry_store().create_tables("label").await?;
    replicable_core::log_cursor::catch_up(&secondary, 500).await?;
    assert_eq!(
        counts(&secondary, "ci_setting").await.registry as i64,
        events
    );
    Ok(())
}

fn fastrand_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos() % 300))
}

// ================================================================ PostgreSQL: lease and updates

/// README: "releases the cursor lease so a restarted process takes over at once". Two engines of
/// one site on one schema (default 30 s lease): the lease holder shuts down gracefully; the
/// other, still running, takes over the cursor and consumes new events within moments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_lease_moves_to_the_running_engine_when_the_holder_shuts_down() -> R {
    let Some(pg) = replicable_tests::PostgresTarget::new() else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let primary = Site::primary("primary").in_memory().build()?;
    let link = Arc::new(InProcessPrimary::new(&primary));
    let mk = |db| {
        Site::secondary("s", link.clone())
            .database(db)
            .blob_directory(dir.path().join("blobs"))
            .build()
            .unwrap()
    };
    let a = mk(pg.open().await);
    let b = mk(pg.open().await);
    let ea = start(&a, &["ci_setting"], "engine-a").await;
    let eb = start(&b, &["ci_setting"], "engine-b").await;
    let setting = |id: i64| CiSetting {
        id,
        key: format!("k{id}"),
        value: "v".into(),
    };
    setting(1)
        .replicator(&primary)
        .publish_created_event()
        .await?;
    let ok = wait_for(20, || async { counts(&a, "ci_setting").await.synced == 1 }).await;
    assert!(ok, "first event consumed");
    let pool = sqlx::PgPool::connect(&pg.url).await?;
    let holder = || async {
        let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT holder FROM \"{}\".replicable_leases WHERE name = 'log_cursor'",
            pg.schema
        )))
        .fetch_all(&pool)
        .await
        .unwrap();
        rows.into_iter().map(|r| r.0).collect::<Vec<_>>()
    };
    let first = holder().await;
    assert_eq!(first.len(), 1, "{first:?}");
    let (stopping, running, running_site) = if first[0] == "engine-a" {
        (ea, eb, b.clone())
    } else {
        (eb, ea, a.clone())
    };
    stopping.shutdown().await;
    setting(2)
        .replicator(&primary)
        .publish_created_event()
        .await?;
    let ok = wait_for(12, || async {
        matches!(setting(2).replicator(&running_site).registry().await,
            Ok(Some(r)) if r.state == SyncState::Synced)
    })
    .await;
    let after = holder().await;
    running.shutdown().await;
    pool.close().await;
    assert!(
        ok,
        "the running engine took over the cursor at once (lease was {first:?}, now {after:?})"
    );
    Ok(())
}

/// SEMANTICS/README: "a secondary never goes back to an older" generation; "One sync per record
/// at a time"; `status::dataloss` lists records behind. Two engines on one PostgreSQL schema
/// while 20 rows are updated 15 times each, fast: in the end every copy holds the primary's
/// last generation and value, and dataloss is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_two_engines_under_a_stream_of_updates_end_at_the_latest_generation() -> R {
    let Some(pg) = replicable_tests::PostgresTarget::new() else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let primary = Site::primary("primary").in_memory().build()?;
    let link = Arc::new(InProcessPrimary::new(&primary));
    let mk = |db| {
        Site::secondary("s", link.clone())
            .database(db)
            .blob_directory(dir.path().join("blobs"))
            .build()
            .unwrap()
    };
    let a = mk(pg.open().await);
    let b = mk(pg.open().await);
    let pe = start(&primary, &["ci_setting"], "p").await;
    let ea = start(&a, &["ci_setting"], "engine-a").await;
    let eb = start(&b, &["ci_setting"], "engine-b").await;
    let rows: Vec<_> = (1..=20)
        .map(|id| CiSetting {
            id,
            key: format!("k{id}"),
            value: "v0".into(),
        })
        .collect();
    primary.publish_created_events(&rows).await?;
    for round in 1..=15 {
        let updated: Vec<_> = rows
            .iter()
            .map(|r| CiSetting {
                value: format!("v{round}"),
                ..r.clone()
            })
            .collect();
        primary.publish_updated_events(&updated).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ok = wait_for(30, || async {
        let c = counts(&a, "ci_setting").await;
        c.synced == 20
            && c.verified == 20
            && replicable_core::status::dataloss(&a, "ci_setting")
                .await
                .is_ok_and(|d| d.is_empty())
    })
    .await;
    let c = counts(&a, "ci_setting").await;
    let behind = replicable_core::status::dataloss(&a, "ci_setting").await?;
    eb.shutdown().await;
    ea.shutdown().await;
    pe.shutdown().await;
    assert!(
        ok,
        "all synced, verified, none behind: {c:?} behind {behind:?}"
    );
    for id in 1..=20 {
        let copy = a.records().get("ci_setting", id).await?.expect("copy");
        let original = primary
            .records()
            .get("ci_setting", id)
            .await?
            .expect("record");
        assert_eq!(copy.generation, original.generation, "generation of {id}");
        assert_eq!(copy.body["value"], "v15", "value of {id}: {copy:?}");
    }
    Ok(())
}

// ================================================================ more hostile file systems

/// README: the staging sweep removes "the part files an interrupted write leaves" under the
/// blob directory's `.replicable/tmp`; a local directory "refuses any key whose path goes through
/// a symbolic link". A `.replicable` planted as a link to a directory outside, holding files
/// named like temporaries: the start-up and periodic sweeps never delete outside the root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_sweep_never_follows_a_planted_link_out_of_the_blob_directory() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let primary = sqlite_primary(root).await;
    let outside = root.join("outside");
    std::fs::create_dir_all(outside.join("tmp"))?;
    for name in ["package_file-5-abc", "package_file-6-def#1", "junk"] {
        std::fs::write(outside.join("tmp").join(name), b"precious")?;
    }
    std::fs::create_dir_all(root.join("s-blobs"))?;
    std::os::unix::fs::symlink(&outside, root.join("s-blobs/.replicable"))?;
    // Old enough to count as abandoned by file time too.
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    for e in std::fs::read_dir(outside.join("tmp"))? {
        let f = std::fs::File::options().write(true).open(e?.path())?;
        f.set_modified(old)?;
    }
    let secondary = sqlite_secondary(root, &primary).await;
    let swept = replicable_core::staging::sweep_abandoned_staging(&secondary).await;
    let engine = start(&secondary, &["package_file"], "s").await;
    tokio::time::sleep(Duration::from_secs(2)).await; // a few periodic sweeps
    engine.shutdown().await;
    let mut left: Vec<_> = files_under(&outside.join("tmp"));
    left.sort();
    assert_eq!(
        left.len(),
        3,
        "files outside the root deleted by the sweep ({swept:?}): {left:?}"
    );
    Ok(())
}

/// README: a local directory blob store "refuses any key whose path goes through a symbolic
/// link (object_store's `LocalFileSystem` follows links out of the directory ...)". On the
/// primary, a link planted in its blob directory pointing at a directory outside: a record
/// whose key goes through it is never served, so the secondary gets no copy of outside data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_in_the_primary_blob_directory_never_leaks_outside_files() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let primary = sqlite_primary(root).await;
    let secondary = sqlite_secondary(root, &primary).await;
    let outside = root.join("secret-dir");
    std::fs::create_dir_all(&outside)?;
    std::fs::write(outside.join("key.pem"), b"SECRET")?;
    std::fs::create_dir_all(root.join("p-blobs"))?;
    std::os::unix::fs::symlink(&outside, root.join("p-blobs/leak"))?;
    std::os::unix::fs::symlink(outside.join("key.pem"), root.join("p-blobs/direct.pem"))?;
    let records = [pf(1, "leak/key.pem"), pf(2, "direct.pem")];
    for r in &records {
        // Refused at publish, or published and never served.
        let _ = r.replicator(&primary).publish_created_event().await;
    }
    replicable_core::log_cursor::catch_up(&secondary, 50).await?;
    replicable_core::workers::sync_due(&secondary, desc("package_file"), 10, 2).await?;
    for r in &records {
        assert_eq!(
            get_blob(&secondary, &r.file_path).await,
            None,
            "outside data replicated through a link at {:?}",
            r.file_path
        );
        if let Some(row) = r.replicator(&secondary).registry().await? {
            assert_ne!(row.state, SyncState::Synced, "{row:?}");
        }
    }
    Ok(())
}

/// README: "Blobs stream from the primary's object store to the secondary's ...; a transfer cut
/// mid-way resumes with `Range`"; "Reads are retried ... with backoff". The primary's API runs
/// on a runtime that is torn down in the middle of a 40 MiB transfer (connections cut, no
/// graceful end); a new server comes up on the same port; the secondary ends with the exact
/// bytes, synced and verified, and no temporaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_transfer_cut_mid_blob_then_primary_back_ends_synced() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path().to_path_buf();
    let primary = sqlite_primary(&root).await;
    let big = blob_bytes(3, 40 * 1024 * 1024);
    put_blob(&primary, "big/cut.bin", &big).await;
    pf(1, "big/cut.bin")
        .replicator(&primary)
        .publish_created_event()
        .await?;
    let pe = start(&primary, &["package_file"], "p").await;
    let ok = wait_for(30, || async {
        replicable_core::status::primary_status(&primary, "package_file")
            .await
            .is_ok_and(|s| s.checksummed_count == 1)
    })
    .await;
    assert!(ok, "primary checksummed the blob");

    // The API on its own runtime, torn down later.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let p2 = primary.clone();
    let server_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let router = PrimaryApi::new(p2).secondary("eu", secret()).router();
            let server = serve("127.0.0.1:0".parse().unwrap(), router, None)
                .await
                .unwrap();
            addr_tx.send(server.local_addr()).unwrap();
            std::mem::forget(server);
        });
        let _ = stop_rx.recv();
        rt.shutdown_background();
    });
    let addr: SocketAddr = addr_rx.recv()?;
    let link = HttpPrimary::new(HttpPrimaryConfig::new(
        format!("http://{addr}/"),
        "eu",
        secret(),
    ))?;
    let sdb = replicable_core::storage::open(&sqlite_url(&root, "secondary.db")).await?;
    let secondary = Site::secondary("eu", Arc::new(link))
        .database(sdb)
        .blob_directory(root.join("s-blobs"))
        .timeouts(fast_timeouts())
        .build()?;
    let se = start(&secondary, &["package_file"], "eu").await;
    let tmp = root.join("s-blobs/.replicable/tmp");
    let mid = wait_for(30, || async {
        files_under(&tmp)
            .iter()
            .any(|f| std::fs::metadata(f).is_ok_and(|m| m.len() > 0))
    })
    .await;
    stop_tx.send(())?;
    tokio::task::spawn_blocking(move || server_thread.join())
        .await?
        .unwrap();
    let copied_at_cut = files_under(&tmp)
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .max();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let server = serve(
        addr,
        PrimaryApi::new(primary.clone())
            .secondary("eu", secret())
            .router(),
        None,
    )
    .await?;
    let ok = wait_for(40, || async {
        let c = counts(&secondary, "package_file").await;
        c.synced == 1 && c.verified == 1
    })
    .await;
    let row = pf(1, "big/cut.bin")
        .replicator(&secondary)
        .registry()
        .await?;
    let swept = wait_for(5, || async { files_under(&tmp).is_empty() }).await;
    se.shutdown().await;
    pe.shutdown().await;
    server.shutdown().await?;
    eprintln!("cut mid-transfer: {mid}, bytes staged at the cut: {copied_at_cut:?}");
    assert!(
        ok,
        "synced and verified after the primary came back: {row:?}"
    );
    assert!(
        std::fs::read(root.join("s-blobs/big/cut.bin"))? == big,
        "copy differs"
    );
    assert!(swept, "temporaries left: {:?}", files_under(&tmp));
    Ok(())
}

// ================================================================ two engines on one SQLite file

/// README: one sync per record at a time on a site; one log cursor per site (its lease); "A
/// record deleted while its copy was in flight ends with nothing left behind". Two engines of
/// one site on ONE SQLite file and blob directory (two processes on one machine would do this):
/// 200 blobs created, then half deleted while the syncs run. Each created record synced at most
/// once at a time; the deleted ones leave no row and no file; the rest synced and verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_on_one_sqlite_file_with_deletes_in_flight() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let primary = sqlite_primary(root).await;
    let base = 10_000i64;
    let files: Vec<CountedFile> = (base + 1..=base + 200)
        .map(|id| CountedFile {
            id,
            file_path: format!("shared/{id}.bin"),
        })
        .collect();
    for f in &files {
        put_blob(&primary, &f.file_path, &blob_bytes(f.id, 3000)).await;
    }
    let pe = start(&primary, &["counted_file"], "p").await;
    let a = sqlite_secondary(root, &primary).await;
    let b = sqlite_secondary(root, &primary).await;
    let ea = start(&a, &["counted_file"], "engine-a").await;
    let eb = start(&b, &["counted_file"], "engine-b").await;
    primary.publish_created_events(&files).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let deleted: Vec<CountedFile> = files.iter().filter(|f| f.id % 2 == 0).cloned().collect();
    for f in &deleted {
        let path = replicable_core::blob_key::object_path(&f.file_path)?;
        primary.blob_store().delete(&path).await?;
    }
    primary.publish_deleted_events(&deleted).await?;
    let ok = wait_for(40, || async {
        let c = counts(&a, "counted_file").await;
        c.registry == 100 && c.synced == 100 && c.verified == 100
    })
    .await;
    let c = counts(&a, "counted_file").await;
    eb.shutdown().await;
    ea.shutdown().await;
    pe.shutdown().await;
    assert!(
        ok,
        "the 100 kept records synced and verified, the others gone: {c:?}"
    );
    let (syncs, overlap) = sync_counts(base + 1..=base + 200);
    assert_eq!(overlap, 1, "two syncs of one record at once");
    let odd_twice: Vec<_> = syncs
        .iter()
        .filter(|(id, n)| *id % 2 == 1 && **n > 1)
        .collect();
    assert!(
        odd_twice.is_empty(),
        "unchanged records synced twice: {odd_twice:?}"
    );
    for f in &files {
        let on_disk = root.join("s-blobs").join(&f.file_path);
        assert_eq!(on_disk.exists(), f.id % 2 == 1, "file of {}", f.id);
    }
    let left = files_under(&root.join("s-blobs/.replicable/tmp"));
    assert!(left.is_empty(), "temporaries left: {left:?}");
    Ok(())
}

// ================================================================ a live slow sync is not abandoned

/// A row strategy whose sync takes 3 s (longer than the claim timeout used here), counted like
/// `CountingBlob`.
#[derive(Default)]
pub struct SlowRow;

#[async_trait::async_trait]
impl replicable_core::Strategy for SlowRow {
    const NAME: &'static str = "SlowRow";
    const DATA_TYPE: DataType = DataType::Database;
    const MUTABLE: bool = true;
    const VERIFIABLE: bool = false;

    async fn sync(&self, request: SyncRequest<'_>) -> Result<(), SyncFailure> {
        let id = request.model_id;
        {
            let mut a = ACTIVE.lock().unwrap();
            let n = a.get_or_insert_with(HashMap::new).entry(id).or_insert(0);
            *n += 1;
            let now = *n;
            let mut m = MAX_OVERLAP.lock().unwrap();
            let max = m.get_or_insert_with(HashMap::new).entry(id).or_insert(0);
            *max = (*max).max(now);
            *SYNCS
                .lock()
                .unwrap()
                .get_or_insert_with(HashMap::new)
                .entry(id)
                .or_insert(0) += 1;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let r = request.ensure_current().await;
        *ACTIVE
            .lock()
            .unwrap()
            .get_or_insert_with(HashMap::new)
            .get_mut(&id)
            .unwrap() -= 1;
        r
    }

    async fn remove(
        &self,
        _: &StrategyContext,
        _: &ResourceTarget<'_>,
    ) -> Result<(), ResourceError> {
        Ok(())
    }

    async fn checksum(
        &self,
        _: &StrategyContext,
        _: &ResourceTarget<'_>,
        _: Option<&replicable_core::storage::StoredRecord>,
    ) -> Result<String, ResourceError> {
        Ok("0".repeat(64))
    }

    async fn create_fixture(
        &self,
        _: &StrategyContext,
        _: &ResourceTarget<'_>,
        _: &serde_json::Value,
        _: u64,
    ) -> Result<String, ResourceError> {
        Ok("0".repeat(64))
    }

    async fn corrupt(
        &self,
        _: &StrategyContext,
        _: &ResourceTarget<'_>,
    ) -> Result<(), ResourceError> {
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(SlowRow)]
pub struct SlowRecord {
    #[replicable(id)]
    pub id: i64,
    pub note: String,
}

/// README: "claims heartbeat, and a claim whose worker stops heartbeating ... is failed": a
/// worker that is alive but slow keeps its claim. Two engines on one SQLite file, claim timeout
/// 2 s, heartbeat every 200 ms, stuck sweep every 500 ms; syncs that take 3 s: each runs once,
/// never twice at once, and none is failed as abandoned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_live_sync_keeps_its_claim_across_two_engines() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let primary = sqlite_primary(root).await;
    let a = sqlite_secondary(root, &primary).await;
    let b = sqlite_secondary(root, &primary).await;
    let ea = start(&a, &["slow_record"], "engine-a").await;
    let eb = start(&b, &["slow_record"], "engine-b").await;
    let base = 20_000i64;
    let records: Vec<_> = (base + 1..=base + 6)
        .map(|id| SlowRecord {
            id,
            note: "n".into(),
        })
        .collect();
    primary.publish_created_events(&records).await?;
    let ok = wait_for(20, || async { counts(&a, "slow_record").await.synced == 6 }).await;
    let rows = scan(&a, "slow_record").await;
    eb.shutdown().await;
    ea.shutdown().await;
    assert!(ok, "all six synced: {rows:#?}");
    let (syncs, overlap) = sync_counts(base + 1..=base + 6);
    assert_eq!(overlap, 1, "two syncs of one record at once: {syncs:?}");
    assert!(
        syncs.values().all(|n| *n == 1),
        "a live sync was redone: {syncs:?}"
    );
    assert!(
        rows.iter().all(|r| r.retry_count == 0),
        "failed as abandoned: {rows:#?}"
    );
    Ok(())
}

// ================================================================ late commit, fresh cursor

/// README: "A secondary's log cursor that reads an event before an earlier id has committed
/// keeps that id as an open gap and reads it again ... until it appears". Here the secondary is
/// new (cursor 0) when the two publishes race; backfill is off, so only the cursor can find it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_late_commit_before_a_fresh_cursors_first_event_is_read_again() -> R {
    let Some(pg) = replicable_tests::PostgresTarget::new() else {
        return Ok(());
    };
    let primary_db = replicable_core::storage::sql::SqlStore::open_with(
        &pg.url,
        replicable_core::storage::sql::SqlOptions {
            schema: Some(pg.schema.clone()),
            replicables: vec!["ci_setting".into()],
            ..Default::default()
        },
    )
    .await?;
    let primary = Site::primary("primary").database(primary_db).build()?;
    let secondary = Site::secondary("secondary", Arc::new(InProcessPrimary::new(&primary)))
        .in_memory()
        .build()?;
    let mut config = fast_config();
    config.periods.backfill = Duration::from_secs(3600);
    let se = Engine::new(secondary.clone(), vec![desc("ci_setting")])
        .config(config)
        .start()
        .await?;
    let pool = sqlx::PgPool::connect(&pg.url).await?;
    let mut tx = pool.begin().await?;
    let late = CiSetting {
        id: 1,
        key: "late".into(),
        value: "v".into(),
    };
    late.replicator(&primary)
        .publish_created_event_in(&mut *tx)
        .await?;
    let early = CiSetting {
        id: 2,
        key: "early".into(),
        value: "v".into(),
    };
    early.replicator(&primary).publish_created_event().await?;
    let ok = wait_for(20, || async {
        matches!(early.replicator(&secondary).registry().await,
            Ok(Some(r)) if r.state == SyncState::Synced)
    })
    .await;
    assert!(ok, "the later event was consumed first");
    tx.commit().await?;
    let ok = wait_for(15, || async {
        matches!(late.replicator(&secondary).registry().await,
            Ok(Some(r)) if r.state == SyncState::Synced)
    })
    .await;
    let state = secondary.registry_store().cursor_state().await?;
    se.shutdown().await;
    pool.close().await;
    assert!(
        ok,
        "event 1, committed after event 2 was read, never consumed; cursor {state:?}"
    );
    Ok(())
}
