//! `sha256`: the framework's checksum path (what verification runs on a blob:
//! `Replicator::calculate_checksum`) on a 1 GiB file, against `openssl dgst -sha256` and
//! `sha256sum` on the same file, alternating. The checksums must agree.

use std::time::Instant;

use super::env::{self, Bench, Error, Sites};
use super::report::{Report, Timings, Work};
use crate::geo_demo::seed::package_file;

/// The file's size at scale 1.
pub const SIZE: u64 = 1024 * 1024 * 1024;

/// Runs the scenario.
pub async fn run(bench: &Bench) -> Result<Report, Error> {
    let size = bench.scaled(SIZE, 1);
    let mut report = Report::new(
        "sha256",
        format!(
            "SHA-256 of one {:.0} MiB file (in the page cache)",
            size as f64 / (1024.0 * 1024.0)
        ),
    );
    let dir = bench.fresh_dir("sha256")?;
    let record = package_file(1);
    let sites = Sites::open(
        bench.location(&dir.join("primary"), "primary"),
        bench.location(&dir.join("secondary"), "secondary"),
        None,
    )
    .await?;
    let file = sites.primary_location.blob_file(&record.file_path);
    env::write_random_file(&file, 1, size)?;
    env::flush_disks().await;
    let file_s = file.display().to_string();

    let work = Some(Work::Bytes(size));
    let mut framework = Timings::framework("framework checksum (calculate_checksum)", work);
    let mut openssl = Timings::tool("openssl dgst -sha256", work);
    let mut sha256sum = Timings::tool("sha256sum", work);
    for tool in ["openssl", "sha256sum"] {
        if !bench.tools.have(&[tool]) {
            report.note(format!("skipped {tool}: not found"));
        }
    }
    let mut expected = None;
    for rep in 0..bench.settings.reps {
        for k in 0..3 {
            match (k + rep) % 3 {
                0 => {
                    let started = Instant::now();
                    let sum = record
                        .replicator(&sites.primary)
                        .calculate_checksum()
                        .await?;
                    framework.samples.push(started.elapsed());
                    expected = Some(sum);
                }
                1 if bench.tools.have(&["openssl"]) => {
                    openssl.samples.push(
                        bench
                            .time_command("openssl", &["dgst", "-sha256", &file_s])
                            .await?,
                    );
                }
                2 if bench.tools.have(&["sha256sum"]) => {
                    sha256sum
                        .samples
                        .push(bench.time_command("sha256sum", &[&file_s]).await?);
                }
                _ => {}
            }
        }
    }
    if bench.tools.have(&["sha256sum"]) {
        let out = tokio::process::Command::new("sha256sum")
            .arg(&file)
            .output()
            .await?;
        let theirs = String::from_utf8_lossy(&out.stdout);
        let theirs = theirs.split_whitespace().next().unwrap_or_default();
        if expected.as_deref() != Some(theirs) {
            return Err(format!(
                "the framework's checksum {expected:?} differs from sha256sum's {theirs}"
            )
            .into());
        }
        report.note("the framework's checksum equals sha256sum's");
    }
    report.timings(&[framework, openssl, sha256sum]);
    sites.drop_databases(bench).await?;
    drop(sites);
    bench.discard(&dir).await?;
    Ok(report)
}
