//! Blob throughput over the HTTP link on loopback, against `curl` fetching the same files from a
//! plain static HTTP server (`python3 -m http.server`) with the same concurrency, in the same
//! run. Printed as a ratio (link time / curl time; under 1 is faster than curl).
//!
//! ```text
//! cargo bench -p replicable-examples --bench link
//! REPLICABLE_BENCH_FILES=64 REPLICABLE_BENCH_FILE_MIB=16 REPLICABLE_BENCH_CONCURRENCY=8 cargo bench -p replicable-examples --bench link
//! ```

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use replicable_core::PrimaryLink;
use replicable_core::http::PrimaryApi;
use replicable_core::link::http::token::SharedSecret;
use replicable_core::link::http::{HttpPrimary, HttpPrimaryConfig};
use replicable_core::prelude::*;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The records whose blobs the link reads (the API serves a record's own blob only).
#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(replicable_strategies::BlobStrategy)]
#[replicable(name = "bench_file")]
struct BenchFile {
    #[replicable(id)]
    id: i64,
    #[replicable(blob)]
    key: String,
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let files = setting("REPLICABLE_BENCH_FILES", 32);
    let mib = setting("REPLICABLE_BENCH_FILE_MIB", 8);
    let concurrency = setting("REPLICABLE_BENCH_CONCURRENCY", 8).max(1);
    let dir = tempfile::tempdir()?;
    let blobs = dir.path().join("blobs");
    std::fs::create_dir_all(blobs.join("bench"))?;
    let chunk: Vec<u8> = (0..1024 * 1024).map(|i| (i * 31 % 251) as u8).collect();
    for i in 0..files {
        let mut bytes = Vec::with_capacity(mib * chunk.len());
        for _ in 0..mib {
            bytes.extend_from_slice(&chunk);
        }
        bytes[0] = i as u8;
        std::fs::write(blobs.join("bench").join(format!("f{i}.bin")), bytes)?;
    }
    let total = (files * mib) as f64;

    // The link: the primary's API served on loopback, HttpPrimary reading every file.
    let primary = Site::primary("primary")
        .blob_directory(&blobs)
        .in_memory()
        .build()?;
    let secret = SharedSecret::new(
        (0..32).map(|_| fastrand_byte()).collect::<Vec<u8>>(),
        "the bench",
    )?;
    for i in 0..files {
        let file = BenchFile {
            id: i as i64,
            key: format!("bench/f{i}.bin"),
        };
        file.replicator(&primary).publish_created_event().await?;
    }
    let api = PrimaryApi::new(primary).secondary("bench", secret.clone());
    let server = replicable_core::http::serve("127.0.0.1:0".parse()?, api.router(), None).await?;
    let link = Arc::new(HttpPrimary::new(HttpPrimaryConfig::new(
        format!("http://{}/", server.local_addr()),
        "bench",
        secret,
    ))?);
    let started = Instant::now();
    let read = futures::stream::iter(0..files)
        .map(|i| {
            let link = link.clone();
            async move {
                let download = link
                    .open_blob("bench_file", i as i64, &format!("bench/f{i}.bin"))
                    .await?;
                let mut stream = download.stream;
                let mut n = 0u64;
                while let Some(chunk) = stream.next().await {
                    n += chunk?.len() as u64;
                }
                Ok::<u64, Error>(n)
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    let link_time = started.elapsed();
    let link_bytes: u64 = read.into_iter().sum::<Result<u64, Error>>()?;
    assert_eq!(link_bytes, (files * mib * 1024 * 1024) as u64);
    server.shutdown().await?;

    // The reference: a static file server and curl, same files, same concurrency.
    let port = free_port()?;
    let mut static_server = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(&blobs)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let base = format!("http://127.0.0.1:{port}/bench");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            let _ = static_server.kill();
            return Err("the static server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut curl = Command::new("curl");
    curl.args([
        "--silent",
        "--no-progress-meter",
        "--fail",
        "--parallel",
        "--parallel-max",
        &concurrency.to_string(),
    ]);
    for i in 0..files {
        curl.arg(format!("{base}/f{i}.bin"))
            .args(["-o", "/dev/null"]);
    }
    let started = Instant::now();
    let status = curl.status();
    let curl_time = started.elapsed();
    let _ = static_server.kill();
    let _ = static_server.wait();
    if !status?.success() {
        return Err("curl failed".into());
    }

    println!(
        "{files} files x {mib} MiB, concurrency {concurrency}: link {:.2?} ({:.0} MiB/s), curl + static server {:.2?} ({:.0} MiB/s); link / curl time = {:.2}",
        link_time,
        total / link_time.as_secs_f64(),
        curl_time,
        total / curl_time.as_secs_f64(),
        link_time.as_secs_f64() / curl_time.as_secs_f64()
    );
    Ok(())
}

fn fastrand_byte() -> u8 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0x2545_F491_4F6C_DD1D);
    let mut x = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b'a' + (x % 26) as u8
}
