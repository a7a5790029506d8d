//! The HTTP link between a secondary and its primary, over real loopback sockets: the tokens
//! the primary refuses (each kind), "missing on primary" as a machine-readable 404, a redirect
//! to an object store that must not carry the token (a server records the headers it saw), a
//! blob transfer cut mid-way that resumes, TLS on a certificate made here (blobs and git), and
//! a redirect to presigned S3 URLs (moto lane).

mod http_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use object_store::ObjectStoreExt;
use replicable_core::http::{PresignGet, PrimaryApi, TlsFiles};
use replicable_core::link::http::token::{self, Scope, SharedSecret, TOKEN_LIFETIME};
use replicable_core::link::http::{HttpPrimary, HttpPrimaryConfig};
use replicable_core::prelude::*;
use replicable_core::testing::Harness;
use replicable_core::{LinkError, PrimaryLink};
use replicable_strategies::{BlobStrategy, GitRepositoryStrategy};

use http_support::{cutting_proxy, now, range_requests, raw_get, recording_server};

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(BlobStrategy)]
#[replicable(name = "http_upload")]
pub struct Upload {
    #[replicable(id)]
    pub id: i64,
    #[replicable(blob)]
    pub key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(GitRepositoryStrategy)]
#[replicable(name = "http_repo")]
pub struct Repo {
    #[replicable(id)]
    pub id: i64,
    #[replicable(repository)]
    pub path: String,
}

fn upload(id: i64) -> Upload {
    Upload {
        id,
        key: format!("uploads/{id}/file name é.bin"),
    }
}

fn repo(id: i64) -> Repo {
    Repo {
        id,
        path: format!("group/{id}.git"),
    }
}

fn secret(c: char) -> SharedSecret {
    SharedSecret::new(
        std::iter::repeat_n(c as u8, 40).collect::<Vec<u8>>(),
        "test",
    )
    .unwrap()
}

/// A primary on in-memory stores with a blob directory and a repository root, and its API on
/// a loopback port.
struct Primary {
    site: Site,
    dir: tempfile::TempDir,
    url: String,
    _server: replicable_core::http::ApiServer,
}

async fn primary_with(
    configure: impl FnOnce(PrimaryApi) -> PrimaryApi,
    tls: Option<&TlsFiles>,
) -> Primary {
    let dir = tempfile::tempdir().unwrap();
    let site = Site::primary("primary")
        .blob_directory(dir.path().join("blobs"))
        .repository_root(dir.path().join("repos"))
        .in_memory()
        .build()
        .unwrap();
    let api = configure(PrimaryApi::new(site.clone()).secondary("eu", secret('a')));
    let server = replicable_core::http::serve("127.0.0.1:0".parse().unwrap(), api.router(), tls)
        .await
        .unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://localhost:{}/", server.local_addr().port());
    Primary {
        site,
        dir,
        url,
        _server: server,
    }
}

async fn primary() -> Primary {
    primary_with(|api| api, None).await
}

fn link(url: &str, secret: SharedSecret) -> HttpPrimary {
    HttpPrimary::new(HttpPrimaryConfig::new(url, "eu", secret)).unwrap()
}

/// Puts a blob and publishes record `id` of `http_upload` naming it (the API serves a record's
/// own blob only).
async fn put_upload(site: &Site, id: i64, key: &str, bytes: Vec<u8>) {
    put_blob(site, key, bytes).await;
    Upload {
        id,
        key: key.into(),
    }
    .replicator(site)
    .publish_created_event()
    .await
    .unwrap();
}

async fn put_blob(site: &Site, key: &str, bytes: Vec<u8>) {
    let path = replicable_core::blob_key::object_path(key).unwrap();
    site.blob_store().put(&path, bytes.into()).await.unwrap();
}

async fn read_all(
    download: replicable_core::primary_link::BlobDownload,
) -> Result<Vec<u8>, LinkError> {
    let mut out = Vec::new();
    let mut stream = download.stream;
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_token_is_refused() {
    let p = primary().await;
    put_blob(&p.site, "a/b.bin", b"hello".to_vec()).await;
    put_blob(&p.site, "a/c.bin", b"another record's".to_vec()).await;
    let own = Upload {
        id: 1,
        key: "a/b.bin".into(),
    };
    own.replicator(&p.site)
        .publish_created_event()
        .await
        .unwrap();
    let url = format!("{}v1/blobs/http_upload/1?key=a%2Fb.bin", p.url);
    let scope = Scope::Blob {
        replicable: "http_upload".into(),
        id: 1,
        key: "a/b.bin".into(),
    };
    let good = token::sign("eu", &secret('a'), scope.clone()).unwrap();
    assert_eq!(
        raw_get(&url, Some(&good)).await.0,
        200,
        "a good token passes"
    );

    let missing = raw_get(&url, None).await;
    assert_eq!(missing, (401, Some("unauthorized".into())), "no token");
    let garbage = raw_get(&url, Some("not-a-token")).await;
    assert_eq!(garbage, (401, Some("unauthorized".into())), "not a token");
    let wrong_secret = token::sign("eu", &secret('b'), scope.clone()).unwrap();
    assert_eq!(
        raw_get(&url, Some(&wrong_secret)).await,
        (401, Some("unauthorized".into())),
        "wrong secret"
    );
    let unknown = token::sign("mars", &secret('a'), scope.clone()).unwrap();
    assert_eq!(
        raw_get(&url, Some(&unknown)).await,
        (401, Some("unauthorized".into())),
        "unknown secondary"
    );
    // The API's leeway is 30 s: a token that expired 5 minutes ago is refused.
    let expired = token::sign_at(
        "eu",
        &secret('a'),
        scope.clone(),
        now() - 360,
        TOKEN_LIFETIME,
    )
    .unwrap();
    assert_eq!(
        raw_get(&url, Some(&expired)).await,
        (401, Some("unauthorized".into())),
        "expired"
    );
    let other_record = token::sign(
        "eu",
        &secret('a'),
        Scope::Blob {
            replicable: "http_upload".into(),
            id: 2,
            key: "a/b.bin".into(),
        },
    )
    .unwrap();
    assert_eq!(
        raw_get(&url, Some(&other_record)).await,
        (403, Some("forbidden".into())),
        "another record"
    );
    let other_key = token::sign(
        "eu",
        &secret('a'),
        Scope::Blob {
            replicable: "http_upload".into(),
            id: 1,
            key: "a/c.bin".into(),
        },
    )
    .unwrap();
    assert_eq!(
        raw_get(&url, Some(&other_key)).await,
        (403, Some("forbidden".into())),
        "another key"
    );
    // A token scoped exactly to a key that is not the record's own is refused too.
    let not_its_own = token::sign(
        "eu",
        &secret('a'),
        Scope::Blob {
            replicable: "http_upload".into(),
            id: 1,
            key: "a/c.bin".into(),
        },
    )
    .unwrap();
    assert_eq!(
        raw_get(
            &format!("{}v1/blobs/http_upload/1?key=a%2Fc.bin", p.url),
            Some(&not_its_own)
        )
        .await,
        (403, Some("forbidden".into())),
        "a key the record does not name"
    );
    let events = token::sign("eu", &secret('a'), Scope::Events).unwrap();
    assert_eq!(
        raw_get(&url, Some(&events)).await,
        (403, Some("forbidden".into())),
        "the log's scope"
    );
    // And the log refuses a resource's token.
    let log = format!("{}v1/events?after=0&limit=10", p.url);
    assert_eq!(
        raw_get(&log, Some(&good)).await,
        (403, Some("forbidden".into()))
    );
    assert_eq!(raw_get(&log, Some(&events)).await.0, 200);

    // Through the link: a wrong secret is a refusal, not "missing".
    let wrong = link(&p.url, secret('b'));
    let err = wrong
        .open_blob("http_upload", 1, "a/b.bin")
        .await
        .unwrap_err();
    assert!(matches!(err, LinkError::Refused { .. }), "{err}");
    let err = wrong.events_after(0, 10).await.unwrap_err();
    assert!(matches!(err, LinkError::Refused { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_primary_lacks_is_not_found_and_bad_keys_are_refused() {
    let p = primary().await;
    let link = link(&p.url, secret('a'));
    let err = link
        .open_blob("http_upload", 1, "nope.bin")
        .await
        .unwrap_err();
    assert!(matches!(err, LinkError::NotFound { .. }), "{err}");
    let err = link
        .repository_remote("http_repo", 1, "group/nope.git")
        .await
        .unwrap_err();
    assert!(matches!(err, LinkError::NotFound { .. }), "{err}");
    assert_eq!(link.record("http_upload", 1).await.unwrap(), None);
    assert_eq!(link.verification("http_upload", 1).await.unwrap(), None);
    let err = link
        .open_blob("http_upload", 1, "../escape")
        .await
        .unwrap_err();
    assert!(matches!(err, LinkError::Refused { .. }), "{err}");
    let err = link
        .repository_remote("http_repo", 1, "../escape.git")
        .await
        .unwrap_err();
    assert!(matches!(err, LinkError::Refused { .. }), "{err}");
    // A 404 that is not the API's own (a wrong base URL) is a failure, not "missing".
    let astray = HttpPrimary::new(HttpPrimaryConfig::new(
        format!("{}elsewhere/", p.url),
        "eu",
        secret('a'),
    ))
    .unwrap();
    let err = astray
        .open_blob("http_upload", 1, "nope.bin")
        .await
        .unwrap_err();
    assert!(matches!(err, LinkError::Failed { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_records_ids_and_checksums_cross_the_link() {
    let p = primary().await;
    for id in 1..=5 {
        put_blob(&p.site, &upload(id).key, pattern(100 + id as usize)).await;
        upload(id)
            .replicator(&p.site)
            .publish_created_event()
            .await
            .unwrap();
    }
    let link = link(&p.url, secret('a'));
    let all = link.events_after(0, 100).await.unwrap();
    assert_eq!(all.len(), 5);
    let some = link.events_after(all[1].id(), 2).await.unwrap();
    assert_eq!(
        some.iter().map(|e| e.id()).collect::<Vec<_>>(),
        vec![all[2].id(), all[3].id()]
    );
    assert_eq!(link.last_event_id().await.unwrap(), Some(all[4].id()));
    assert_eq!(
        link.record_ids("http_upload", 2..5, 2).await.unwrap(),
        vec![2, 3]
    );
    let record = link.record("http_upload", 3).await.unwrap().unwrap();
    assert_eq!(record.body["key"], upload(3).key);
    assert!(link.verification("http_upload", 3).await.unwrap().is_some());
    let bytes = read_all(
        link.open_blob("http_upload", 3, &upload(3).key)
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(bytes, pattern(103));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_never_carries_the_token() {
    let bytes = pattern(70_000);
    let (store_url, seen) = recording_server(bytes.clone()).await;
    let p = primary_with(
        |api| {
            api.redirect_blobs(
                Arc::new(replicable_tests::PointAt(store_url.clone())),
                Duration::from_secs(60),
            )
        },
        None,
    )
    .await;
    put_upload(&p.site, 1, "a/b.bin", bytes.clone()).await;
    let link = link(&p.url, secret('a'));
    let got = read_all(link.open_blob("http_upload", 1, "a/b.bin").await.unwrap())
        .await
        .unwrap();
    assert_eq!(got, bytes, "the bytes came from the redirect target");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "the redirect target was asked once");
    assert!(
        seen[0].get("authorization").is_none(),
        "the redirect target saw the token: {:?}",
        seen[0]
    );
    assert!(seen.iter().all(|h| !format!("{h:?}").contains("Bearer")));
    // A missing blob is the API's own 404, not a redirect to a missing object.
    Upload {
        id: 2,
        key: "missing.bin".into(),
    }
    .replicator(&p.site)
    .publish_created_event()
    .await
    .unwrap();
    let err = link
        .open_blob("http_upload", 2, "missing.bin")
        .await
        .unwrap_err();
    assert!(matches!(err, LinkError::NotFound { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_cut_mid_way_resumes_where_it_stopped() {
    let p = primary().await;
    let bytes = pattern(3 * 1024 * 1024 + 17);
    put_upload(&p.site, 1, "big/blob.bin", bytes.clone()).await;
    let upstream: std::net::SocketAddr = p
        .url
        .trim_start_matches("http://localhost:")
        .trim_end_matches('/')
        .parse::<u16>()
        .map(|port| std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .unwrap();
    let (proxy, heads) = cutting_proxy(upstream, 1024 * 1024, None).await;
    let link = link(&proxy, secret('a'));
    let download = link
        .open_blob("http_upload", 1, "big/blob.bin")
        .await
        .unwrap();
    assert_eq!(download.size, bytes.len() as u64);
    let got = read_all(download).await.unwrap();
    assert_eq!(got.len(), bytes.len());
    assert!(got == bytes, "the resumed transfer has the primary's bytes");
    let resumed = range_requests(&heads.lock().unwrap());
    assert_eq!(resumed.len(), 1, "one resumed request: {resumed:?}");
    let (offset, conditional) = resumed[0];
    assert!(
        offset > 0 && offset < 1024 * 1024,
        "resumed at byte {offset}, not from the start"
    );
    assert!(conditional, "the resume is conditional");
}

/// A CA and a certificate for `localhost` signed by it, as PEM files in `dir`.
fn certificates(dir: &Path) -> (TlsFiles, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let chain = dir.join("chain.pem");
    std::fs::write(&chain, cert.pem()).unwrap();
    let private_key = dir.join("key.pem");
    std::fs::write(&private_key, key.serialize_pem()).unwrap();
    (
        TlsFiles {
            certificate_chain: chain,
            private_key,
        },
        ca_file,
    )
}

fn contains_token(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .is_ok_and(|b| String::from_utf8_lossy(&b).contains("Bearer"))
            {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_and_repositories_cross_tls_on_a_certificate_made_here() {
    let certs = tempfile::tempdir().unwrap();
    let (tls, ca_file) = certificates(certs.path());
    let p = primary_with(|api| api, Some(&tls)).await;
    assert!(p.url.starts_with("https://"));

    // Without the CA the link does not trust the primary.
    let untrusting = link(&p.url, secret('a'));
    let err = untrusting.last_event_id().await.unwrap_err();
    assert!(matches!(err, LinkError::Failed { .. }), "{err}");

    let mut config = HttpPrimaryConfig::new(&p.url, "eu", secret('a'));
    config.ca_file = Some(ca_file);
    let link: Arc<dyn PrimaryLink> = Arc::new(HttpPrimary::new(config).unwrap());
    let secondary_dir = tempfile::tempdir().unwrap();
    let secondary = Site::secondary("eu", link.clone())
        .blob_directory(secondary_dir.path().join("blobs"))
        .repository_root(secondary_dir.path().join("repos"))
        .in_memory()
        .build()
        .unwrap();

    let uploads = Harness::<Upload>::with_sites(
        p.site.clone(),
        secondary.clone(),
        |b| b.in_memory().build().unwrap(),
        upload,
    );
    let (fixture, _) = uploads.create_and_publish(1).await;
    let outcome = upload(1).replicator(&secondary).sync().await.unwrap();
    assert!(matches!(outcome, SyncOutcome::Synced { .. }), "{outcome:?}");
    let copied = replicable_strategies::blob::object_sha256(
        &**secondary.blob_store(),
        &replicable_core::blob_key::object_path(&upload(1).key).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(copied, fixture.checksum);

    let repos = Harness::<Repo>::with_sites(
        p.site.clone(),
        secondary.clone(),
        |b| b.in_memory().build().unwrap(),
        repo,
    );
    repos.create_and_publish(7).await;
    let outcome = repo(7).replicator(&secondary).sync().await.unwrap();
    assert!(matches!(outcome, SyncOutcome::Synced { .. }), "{outcome:?}");
    // A second sync fetches into the existing copy (refs and HEAD in one fetch over HTTPS).
    repos.change_and_publish(7, 99).await;
    let outcome = repo(7).replicator(&secondary).sync().await.unwrap();
    assert!(matches!(outcome, SyncOutcome::Synced { .. }), "{outcome:?}");
    let primary_checksum = repo(7).replicator(&p.site).verify().await.unwrap();
    assert!(
        matches!(primary_checksum, VerifyOutcome::Succeeded { .. }),
        "{primary_checksum:?}"
    );
    let verified = repo(7).replicator(&secondary).verify().await.unwrap();
    assert!(
        matches!(verified, VerifyOutcome::Succeeded { .. }),
        "{verified:?}"
    );
    assert!(secondary_dir.path().join("repos/group/7.git").is_dir());
    // The token reached git through its environment only.
    assert_eq!(contains_token(secondary_dir.path()), Vec::<PathBuf>::new());
    let _ = p.dir;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_is_refused_without_a_token_and_push_is_not_served() {
    let p = primary().await;
    let repos = Harness::<Repo>::with_sites(
        p.site.clone(),
        p.site.clone(),
        |b| b.in_memory().build().unwrap(),
        repo,
    );
    repos.create_and_publish(3).await;
    let base = format!("{}v1/git/http_repo/3/group/3.git", p.url);
    let (status, code) = raw_get(&format!("{base}/info/refs?service=git-upload-pack"), None).await;
    assert_eq!((status, code.as_deref()), (401, Some("unauthorized")));
    let scope = Scope::Repository {
        replicable: "http_repo".into(),
        id: 3,
        path: "group/3.git".into(),
    };
    let good = token::sign("eu", &secret('a'), scope).unwrap();
    let (status, _) = raw_get(
        &format!("{base}/info/refs?service=git-receive-pack"),
        Some(&good),
    )
    .await;
    assert_eq!(status, 403);
    // git itself, without the header, is refused.
    let out = std::process::Command::new("git")
        .args(["ls-remote", "--", &base])
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    // With it, it lists the refs.
    let out = std::process::Command::new("git")
        .args([
            "-c",
            &format!("http.extraHeader=Authorization: Bearer {good}"),
            "ls-remote",
            "--",
            &base,
        ])
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("refs/heads/"));
}

/// Presigned GET URLs of an S3 bucket under a prefix (the primary's blob store is that prefix).
#[derive(Debug)]
struct S3Urls {
    s3: Arc<object_store::aws::AmazonS3>,
    prefix: String,
    signed: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl PresignGet for S3Urls {
    async fn presigned_get(
        &self,
        path: &object_store::path::Path,
        expires_in: Duration,
    ) -> Result<String, String> {
        use object_store::signer::Signer;
        self.signed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let full = object_store::path::Path::parse(format!("{}/{}", self.prefix, path.as_ref()))
            .map_err(|e| e.to_string())?;
        self.s3
            .signed_url(object_store::signer::Method::GET, &full, expires_in)
            .await
            .map(|url| url.to_string())
            .map_err(|e| e.to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_in_s3_are_fetched_from_presigned_urls() {
    let Some((endpoint, bucket)) = replicable_tests::s3_lane() else {
        return;
    };
    let s3 = Arc::new(
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("replicable")
            .with_secret_access_key("replicable")
            .build()
            .unwrap(),
    );
    let prefix = format!("http-link-{}-{}", std::process::id(), now());
    let urls = Arc::new(S3Urls {
        s3: s3.clone(),
        prefix: prefix.clone(),
        signed: Default::default(),
    });
    let site = Site::primary("primary")
        .blob_store(Arc::new(object_store::prefix::PrefixStore::new(
            s3.clone(),
            prefix.as_str(),
        )))
        .in_memory()
        .build()
        .unwrap();
    let api = PrimaryApi::new(site.clone())
        .secondary("eu", secret('a'))
        .redirect_blobs(urls.clone(), Duration::from_secs(300));
    let server = replicable_core::http::serve("127.0.0.1:0".parse().unwrap(), api.router(), None)
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{}/", server.local_addr().port());
    let link: Arc<dyn PrimaryLink> = Arc::new(link(&url, secret('a')));
    let dir = tempfile::tempdir().unwrap();
    let secondary = Site::secondary("eu", link.clone())
        .blob_directory(dir.path())
        .in_memory()
        .build()
        .unwrap();
    let bytes = pattern(6 * 1024 * 1024 + 3);
    put_blob(&site, &upload(4).key, bytes.clone()).await;
    upload(4)
        .replicator(&site)
        .publish_created_event()
        .await
        .unwrap();
    upload(4).replicator(&site).verify().await.unwrap();
    let outcome = upload(4).replicator(&secondary).sync().await.unwrap();
    assert!(matches!(outcome, SyncOutcome::Synced { .. }), "{outcome:?}");
    assert!(
        urls.signed.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the primary redirected to the object store"
    );
    let copy = std::fs::read(
        secondary
            .blob_directory()
            .unwrap()
            .join("uploads/4/file name é.bin"),
    );
    assert!(
        copy.is_ok_and(|c| c == bytes),
        "the copy has the primary's bytes"
    );
    let verified = upload(4).replicator(&secondary).verify().await.unwrap();
    assert!(
        matches!(verified, VerifyOutcome::Succeeded { .. }),
        "{verified:?}"
    );
    // A blob missing from the bucket is "missing on primary", not a failed redirect.
    let err = link
        .open_blob("http_upload", 5, "missing/blob")
        .await
        .unwrap_err();
    assert!(matches!(err, LinkError::NotFound { .. }), "{err}");
}

fn report(cursor: i64) -> replicable_core::link::SiteStatusReport {
    replicable_core::link::SiteStatusReport {
        cursor: Some(cursor),
        pending: 1,
        started: 0,
        synced: 7,
        failed: 2,
        verified: 6,
        events_behind: Some(0),
        lag_seconds: Some(0.5),
        version: "test".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_are_stored_under_the_token_name_and_age() {
    let p = primary().await;
    let link = link(&p.url, secret('a'));
    // The name in the call is ignored: the token names the secondary.
    link.report_status("someone-else", &report(42))
        .await
        .unwrap();
    let rows = p.site.registry_store().secondary_statuses().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].secondary, "eu");
    assert_eq!(rows[0].cursor, Some(42));
    assert_eq!(rows[0].report["synced"], 7);
    let silent = replicable_core::status::DEFAULT_SILENT_AFTER;
    let now = replicable_core::status::secondaries(&p.site, p.site.now(), silent)
        .await
        .unwrap();
    assert!(now[0].healthy, "{now:?}");
    let later = p.site.now() + chrono::Duration::from_std(silent * 2).unwrap();
    let then = replicable_core::status::secondaries(&p.site, later, silent)
        .await
        .unwrap();
    assert!(
        !then[0].healthy,
        "a secondary silent past the threshold is unhealthy"
    );
    assert!(then[0].age_seconds >= (silent * 2).as_secs_f64() - 1.0);
    // A wrong secret reports nothing.
    let err = self::link(&p.url, secret('z'))
        .report_status("eu", &report(99))
        .await
        .unwrap_err();
    assert!(matches!(err, LinkError::Refused { .. }), "{err}");
    let rows = p.site.registry_store().secondary_statuses().await.unwrap();
    assert_eq!(rows[0].cursor, Some(42));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_what_every_reporting_secondary_processed() {
    let p = primary().await;
    for id in 1..=6 {
        put_blob(&p.site, &upload(id).key, pattern(10)).await;
        upload(id)
            .replicator(&p.site)
            .publish_created_event()
            .await
            .unwrap();
    }
    let ids: Vec<i64> = p
        .site
        .event_log()
        .read_after(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id())
        .collect();
    assert_eq!(ids.len(), 6);
    let store = p.site.registry_store();
    for (name, cursor) in [("eu", ids[4]), ("us", ids[2])] {
        store
            .put_secondary_status(&replicable_core::storage::SecondaryStatusRow {
                secondary: name.into(),
                cursor: Some(cursor),
                report: serde_json::json!({}),
                received_at: p.site.now(),
            })
            .await
            .unwrap();
    }
    let mut config = replicable_core::engine::EngineConfig::default();
    config.periods.retention = Duration::from_millis(50);
    let engine = replicable_core::engine::Engine::new(
        p.site.clone(),
        vec![
            replicable_core::find_replicable("http_upload")
                .unwrap()
                .unwrap(),
        ],
    )
    .config(config)
    .start()
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let left = loop {
        let left: Vec<i64> = p
            .site
            .event_log()
            .read_after(0, 100)
            .await
            .unwrap()
            .iter()
            .map(|e| e.id())
            .collect();
        if left.first().is_some_and(|&first| first > ids[0]) || std::time::Instant::now() > deadline
        {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    engine.shutdown().await;
    // The slowest secondary ("us") processed up to the third event: that far is deleted, the
    // rest kept (the primary's verification may have appended events meanwhile).
    assert!(left.iter().all(|&id| id > ids[2]), "{left:?}");
    assert!(ids[3..].iter().all(|id| left.contains(id)), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_upload_pack_past_its_timeout_is_killed() {
    let p = primary_with(|api| api.git_timeout(Duration::from_millis(300)), None).await;
    let repos = Harness::<Repo>::with_sites(
        p.site.clone(),
        p.site.clone(),
        |b| b.in_memory().build().unwrap(),
        repo,
    );
    repos.create_and_publish(4).await;
    let scope = Scope::Repository {
        replicable: "http_repo".into(),
        id: 4,
        path: "group/4.git".into(),
    };
    let token = token::sign("eu", &secret('a'), scope).unwrap();
    // A request that never ends: upload-pack waits for it until the API kills it.
    let (_sender, never) =
        futures::channel::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    let response = reqwest::Client::new()
        .post(format!(
            "{}v1/git/http_repo/4/group/4.git/git-upload-pack",
            p.url
        ))
        .bearer_auth(token)
        .header("content-type", "application/x-git-upload-pack-request")
        .body(reqwest::Body::wrap_stream(never))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The answer ends (git was killed) although the request never did; the generous outer
    // limit only turns a hang into a failure.
    let ended = tokio::time::timeout(Duration::from_secs(120), response.bytes()).await;
    assert!(
        ended.is_ok(),
        "upload-pack was not killed after its timeout"
    );
}

/// A caught-up secondary's wait for the next event ends when one is published, over HTTP (the
/// primary waits on its side) and in-process (polling the log); with nothing new it runs out
/// and answers the newest id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_events_ends_when_one_is_published() {
    let p = primary().await;
    put_upload(&p.site, 1, "w/1.bin", b"one".to_vec()).await;
    let http: Arc<dyn PrimaryLink> = Arc::new(link(&p.url, secret('a')));
    let local: Arc<dyn PrimaryLink> =
        Arc::new(replicable_core::InProcessPrimary::new(p.site.clone()));
    for (kind, link) in [("http", http), ("in-process", local)] {
        let last = link.last_event_id().await.unwrap().unwrap();
        let ran_out = link
            .wait_for_events(last, Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(ran_out, Some(last), "{kind}: nothing new");
        let site = p.site.clone();
        let id = last + 100;
        let publisher = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            put_upload(&site, id, &format!("w/{id}.bin"), b"new".to_vec()).await;
        });
        // The wait would run for a minute (the primary caps it at a few seconds); it ends with
        // the new event.
        let woke = link
            .wait_for_events(last, Duration::from_secs(60))
            .await
            .unwrap();
        publisher.await.unwrap();
        assert!(
            woke.is_some_and(|id| id > last),
            "{kind}: the wait saw the new event: {woke:?} after {last}"
        );
    }
}

/// A primary whose API counts the batch reads and the single record and checksum reads it is
/// asked for; when `old`, it answers every batch read as a primary without the batch endpoints
/// does (the path's `batch` is not a record id: 400).
async fn counted_primary(old: bool) -> (Primary, Arc<[std::sync::atomic::AtomicUsize; 2]>) {
    use axum::response::IntoResponse;
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let site = Site::primary("primary")
        .blob_directory(dir.path().join("blobs"))
        .repository_root(dir.path().join("repos"))
        .in_memory()
        .build()
        .unwrap();
    let counts: Arc<[std::sync::atomic::AtomicUsize; 2]> = Arc::default();
    let seen = counts.clone();
    let router = PrimaryApi::new(site.clone())
        .secondary("eu", secret('a'))
        .router()
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let seen = seen.clone();
                async move {
                    let path = request.uri().path().to_owned();
                    if path.ends_with("/batch") {
                        seen[0].fetch_add(1, SeqCst);
                        if old {
                            return (
                                axum::http::StatusCode::BAD_REQUEST,
                                "Invalid URL: Cannot parse `batch` to a `i64`",
                            )
                                .into_response();
                        }
                    } else if path.starts_with("/v1/records/")
                        || path.starts_with("/v1/verification/")
                    {
                        seen[1].fetch_add(1, SeqCst);
                    }
                    next.run(request).await
                }
            },
        ));
    let server = replicable_core::http::serve("127.0.0.1:0".parse().unwrap(), router, None)
        .await
        .unwrap();
    let url = format!("http://localhost:{}/", server.local_addr().port());
    (
        Primary {
            site,
            dir,
            url,
            _server: server,
        },
        counts,
    )
}

/// What a claimed batch needs (its records and the primary's checksums) crosses in one request
/// per hundred ids; ids the primary lacks are left out; a token names the ids it was made for.
/// A primary without the batch endpoints is read one record at a time, and asked for a batch
/// only once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_records_and_checksums_crosses_in_one_request() {
    use std::sync::atomic::Ordering::SeqCst;
    for old in [false, true] {
        let (p, counts) = counted_primary(old).await;
        for id in 1..=5 {
            put_blob(&p.site, &upload(id).key, pattern(10 + id as usize)).await;
            upload(id)
                .replicator(&p.site)
                .publish_created_event()
                .await
                .unwrap();
        }
        let link = link(&p.url, secret('a'));
        let records = link.records("http_upload", &[5, 1, 99, 3]).await.unwrap();
        let mut ids: Vec<i64> = records.iter().map(|r| r.model_id).collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![1, 3, 5], "old primary: {old}");
        assert_eq!(
            records.iter().find(|r| r.model_id == 3).unwrap().body["key"],
            upload(3).key
        );
        let rows = link
            .verifications("http_upload", &[2, 4, 99])
            .await
            .unwrap();
        let mut ids: Vec<i64> = rows.iter().map(|r| r.model_id).collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![2, 4], "old primary: {old}");
        // More ids than one request carries.
        let many: Vec<i64> = (1..=250).collect();
        assert_eq!(link.records("http_upload", &many).await.unwrap().len(), 5);
        let (batches, singles) = (counts[0].load(SeqCst), counts[1].load(SeqCst));
        if old {
            assert_eq!(batches, 1, "an old primary is asked for a batch once");
            assert_eq!(singles, 4 + 3 + 250, "then everything is read one by one");
        } else {
            assert_eq!(batches, 1 + 1 + 3, "one request per hundred ids");
            assert_eq!(singles, 0, "nothing is read one by one");
            // The token names the ids: one made for other ids is refused.
            let other = token::sign(
                "eu",
                &secret('a'),
                Scope::Records {
                    replicable: "http_upload".into(),
                    ids: vec![1, 2],
                },
            )
            .unwrap();
            let url = format!("{}v1/records/http_upload/batch?ids=1,3", p.url);
            let (status, _) = raw_get(&url, Some(&other)).await;
            assert_eq!(status, 403, "a token for other ids");
            let own = token::sign(
                "eu",
                &secret('a'),
                Scope::Records {
                    replicable: "http_upload".into(),
                    ids: vec![1, 3],
                },
            )
            .unwrap();
            assert_eq!(raw_get(&url, Some(&own)).await.0, 200);
            let too_many = (1..=101)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",");
            let url = format!("{}v1/records/http_upload/batch?ids={too_many}", p.url);
            assert_eq!(raw_get(&url, Some(&own)).await.0, 400, "over a hundred ids");
        }
    }
}
