//! Replicates `PackageFile` blobs from a primary to a secondary in one process, on local
//! directories, and prints what happens at each step.
//!
//! ```text
//! cargo run -p replicable-examples --example blob_quickstart
//! cargo run --release -p replicable-examples --example blob_quickstart -- --large-mib 256
//! ```
//!
//! `--large-mib N` also replicates one N MiB blob and prints the process's peak memory, to show
//! that blobs are streamed, never held whole in memory.

use std::sync::Arc;
use std::time::Instant;

use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use replicable_core::blob_key::object_path;
use replicable_core::local_blobs::ConfinedLocalFileSystem;
use replicable_core::prelude::*;
use replicable_core::{find_replicable, log_cursor, status, workers};
use replicable_examples::PackageFile;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn local_store(dir: &std::path::Path) -> Result<Arc<dyn ObjectStore>, Error> {
    std::fs::create_dir_all(dir)?;
    Ok(Arc::new(ConfinedLocalFileSystem::new(dir)?))
}

/// Writes `mib` MiB of patterned bytes to the primary, one MiB at a time.
async fn write_large_blob(
    store: &Arc<dyn ObjectStore>,
    key: &str,
    mib: usize,
) -> Result<(), Error> {
    let mut writer = WriteMultipart::new(store.put_multipart(&object_path(key)?).await?);
    for i in 0..mib {
        writer.wait_for_capacity(2).await?;
        writer.put(vec![(i % 251) as u8; 1024 * 1024].into());
    }
    writer.finish().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().collect();
    let large_mib = args
        .iter()
        .position(|a| a == "--large-mib")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse::<usize>())
        .transpose()?;

    let dir = tempfile::tempdir()?;
    let primary = Site::primary("primary")
        .blob_store(local_store(&dir.path().join("primary"))?)
        .in_memory()
        .build()
        .expect("a site");
    let secondary = Site::secondary(
        "secondary",
        Arc::new(InProcessPrimary::new(primary.clone())),
    )
    .blob_store(local_store(&dir.path().join("secondary"))?)
    .in_memory()
    .build()
    .expect("a site");
    println!(
        "primary and secondary blob stores under {}",
        dir.path().display()
    );

    // 1. The app writes records and their files on the primary, then publishes.
    let files = [
        PackageFile::new(1, "left-pad-1.0.0.tgz"),
        PackageFile::new(2, "left-pad-1.0.1.tgz"),
        PackageFile::new(3, "is-even-2.0.0.tgz"),
    ];
    for file in &files {
        let body = format!("contents of {}\n", file.file_name).repeat(1000);
        primary
            .blob_store()
            .put(&object_path(&file.file_path)?, PutPayload::from(body))
            .await?;
        let event = file.replicator(&primary).publish_created_event().await?;
        println!(
            "primary: wrote {} and published created (event {event:?})",
            file.file_path
        );
    }

    // 2. The primary checksums its files.
    let descriptor = find_replicable("package_file")?.ok_or("package_file is not registered")?;
    let pass = workers::verify_due(&primary, descriptor, 100, 4).await?;
    println!("primary: checksummed {} files", pass.succeeded);

    // 3. The secondary's log cursor consumes the events: each created event syncs its file.
    let report = log_cursor::catch_up(&secondary, log_cursor::DEFAULT_BATCH_SIZE).await?;
    println!(
        "secondary: read {} events, consumed {}, skipped {}, cursor at {}",
        report.read, report.consumed, report.skipped, report.cursor
    );

    // 4. The secondary verifies its copies against the primary's checksums.
    let pass = workers::verify_due(&secondary, descriptor, 100, 4).await?;
    println!(
        "secondary: verified {} copies, {} failed",
        pass.succeeded, pass.failed
    );

    // 5. A file is deleted on the primary; the secondary removes its copy.
    files[2]
        .replicator(&primary)
        .publish_deleted_event()
        .await?;
    primary
        .blob_store()
        .delete(&object_path(&files[2].file_path)?)
        .await?;
    log_cursor::catch_up(&secondary, log_cursor::DEFAULT_BATCH_SIZE).await?;
    let gone = secondary
        .blob_store()
        .head(&object_path(&files[2].file_path)?)
        .await
        .is_err();
    println!(
        "secondary: consumed deleted for {}; copy removed: {gone}",
        files[2].file_path
    );

    if let Some(mib) = large_mib {
        let big = PackageFile::new(100, "large.bin");
        write_large_blob(primary.blob_store(), &big.file_path, mib).await?;
        big.replicator(&primary).publish_created_event().await?;
        big.replicator(&primary).verify().await?;
        let rss_before = peak_rss_mib();
        let started = Instant::now();
        log_cursor::catch_up(&secondary, log_cursor::DEFAULT_BATCH_SIZE).await?;
        let elapsed = started.elapsed();
        let outcome = big.replicator(&secondary).verify().await?;
        println!(
            "secondary: synced a {mib} MiB blob in {:.2?} ({:.0} MiB/s), verification: {outcome:?}",
            elapsed,
            mib as f64 / elapsed.as_secs_f64()
        );
        if let (Some(before), Some(after)) = (rss_before, peak_rss_mib()) {
            println!(
                "peak memory (VmHWM): {after:.1} MiB (before the large sync: {before:.1} MiB)"
            );
        }
    }

    // 6. Status on both sides.
    let p = status::primary_status(&primary, "package_file").await?;
    let s = status::secondary_status(&secondary, "package_file").await?;
    println!(
        "status: primary count={} checksummed={} | secondary registry={} synced={} failed={} verified={} ({:.0}% synced)",
        p.count,
        p.checksummed_count,
        s.registry_count,
        s.synced_count,
        s.failed_count,
        s.verified_count,
        s.synced_percent
    );
    Ok(())
}
