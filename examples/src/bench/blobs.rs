//! Blob replication end to end (`blobs-1mib`, `blobs-4kib`, `blob-1gib`): the application's
//! files are on the primary's disk; the framework publishes one `created` event per file (in
//! batches of 1,000) and
//! the engines of a primary and a secondary (default settings) copy and verify them; the clock
//! stops when the secondary's status shows every file synced and verified. Compared with
//! `cp -r`, `rsync -a`, `rclone copy --checksum` and `cp` with `sha256sum` on both sides, on the
//! same files, alternating, each run into a fresh directory.

use std::path::Path;
use std::time::{Duration, Instant};

use super::env::{self, Bench, Error, Sites};
use super::report::{Report, Timings, Work, duration};
use crate::geo_demo::seed::package_file;

/// What to replicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobSet {
    /// Files.
    pub count: u64,
    /// Bytes each.
    pub size: u64,
    /// Whether to report the framework's peak memory.
    pub peak_memory: bool,
}

impl BlobSet {
    /// 1,000 files of 1 MiB.
    pub const MIB: Self = Self {
        count: 1_000,
        size: 1024 * 1024,
        peak_memory: false,
    };
    /// 20,000 files of 4 KiB.
    pub const KIB: Self = Self {
        count: 20_000,
        size: 4 * 1024,
        peak_memory: false,
    };
    /// One file of 1 GiB.
    pub const GIB: Self = Self {
        count: 1,
        size: 1024 * 1024 * 1024,
        peak_memory: true,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contender {
    Framework,
    Cp,
    Rsync,
    Rclone,
    CpSha256,
}

impl Contender {
    fn label(self) -> &'static str {
        match self {
            Contender::Framework => "framework",
            Contender::Cp => "cp -r",
            Contender::Rsync => "rsync -a",
            Contender::Rclone => "rclone copy --checksum",
            Contender::CpSha256 => "cp + sha256sum both sides",
        }
    }

    fn tools(self) -> &'static [&'static str] {
        match self {
            Contender::Framework => &[],
            Contender::Cp => &["cp"],
            Contender::Rsync => &["rsync"],
            Contender::Rclone => &["rclone"],
            Contender::CpSha256 => &["cp", "sha256sum", "find", "xargs"],
        }
    }
}

/// What one framework run measured besides its duration.
#[derive(Debug, Clone, Copy)]
struct FrameworkRun {
    took: Duration,
    publishing: Duration,
    /// The CPU time the bench process (both sites, every thread) used during the run.
    cpu: Option<env::CpuTime>,
    /// The process's resident memory before the run, and its peak during it.
    rss: Option<(u64, u64)>,
}

/// Runs the scenario `name` on `set`.
pub async fn run(bench: &Bench, name: &str, set: BlobSet) -> Result<Report, Error> {
    let set = BlobSet {
        count: bench.scaled(set.count, 1),
        size: if set.count == 1 {
            bench.scaled(set.size, 1)
        } else {
            set.size
        },
        ..set
    };
    let mut report = Report::new(
        name,
        format!(
            "{} x {} from events published to the secondary synced and verified ({} tracking databases, local directories)",
            super::report::thousands(set.count as f64),
            size_label(set.size),
            bench.database_kind()
        ),
    );
    let source = bench.work().join(format!("source-{name}"));
    let prepared = Instant::now();
    for id in 1..=set.count as i64 {
        let file = package_file(id);
        env::write_random_file(
            &source.join("blobs").join(&file.file_path),
            id as u64,
            set.size,
        )?;
    }
    env::flush_disks().await;
    report.note(format!(
        "prepared {} files in {} (not measured)",
        set.count,
        duration(prepared.elapsed())
    ));

    // Large files are a matter of bytes a second, small ones of files a second.
    let work = Some(if set.size >= 1024 * 1024 {
        Work::Bytes(set.count * set.size)
    } else {
        Work::Items(set.count, "files")
    });
    let all = [
        Contender::Framework,
        Contender::Cp,
        Contender::Rsync,
        Contender::Rclone,
        Contender::CpSha256,
    ];
    let mut contenders = Vec::new();
    for c in all {
        let missing = bench.tools.missing(c.tools());
        if !missing.is_empty() {
            report.note(format!(
                "skipped {}: {} not found",
                c.label(),
                missing.join(", ")
            ));
            continue;
        }
        contenders.push(c);
    }
    let mut timings: Vec<Timings> = contenders
        .iter()
        .map(|&c| match c {
            Contender::Framework => Timings::framework(
                format!("framework (engine, {})", bench.database_kind()),
                work,
            ),
            _ => Timings::tool(c.label(), work),
        })
        .collect();
    let mut runs = Vec::new();
    for rep in 0..bench.settings.reps {
        // Alternate: each repetition starts with a different contender.
        for k in 0..contenders.len() {
            let i = (k + rep) % contenders.len();
            let took = match contenders[i] {
                Contender::Framework => {
                    let run = framework_run(bench, &source, set).await?;
                    runs.push(run);
                    run.took
                }
                tool => tool_run(bench, &source, tool, set).await?,
            };
            timings[i].samples.push(took);
        }
    }
    report.timings(&timings);
    if let Some(publishing) =
        super::report::median(&runs.iter().map(|r| r.publishing).collect::<Vec<_>>())
    {
        report.note(format!(
            "framework: publishing the {} events (batches of 1,000, engines running) took {} of it (median)",
            set.count,
            duration(publishing)
        ));
    }
    let mut cpu: Vec<env::CpuTime> = runs.iter().filter_map(|r| r.cpu).collect();
    cpu.sort_by_key(|c| c.total());
    if let Some(cpu) = cpu.get(cpu.len() / 2) {
        report.note(format!(
            "framework: CPU time of the bench process during a run (both sites, all threads): \
             {} user + {} system (median run), {} per file; it moves less than the wall time \
             when the disk is slow or the machine busy",
            duration(cpu.user),
            duration(cpu.system),
            duration(cpu.total() / u32::try_from(set.count).unwrap_or(u32::MAX).max(1))
        ));
    }
    if set.peak_memory {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        match runs.iter().filter_map(|r| r.rss).max_by_key(|(peak, _)| *peak) {
            Some((peak, baseline)) => report.note(format!(
                "framework: peak resident memory of the bench process during a run: {:.1} MiB \
                 (max over runs), {:.1} MiB of it there before the run (sites open, engines started)",
                mib(peak),
                mib(baseline)
            )),
            None => report.note("framework: peak memory not available (/proc/self/clear_refs refused)"),
        }
    }
    Ok(report)
}

fn size_label(size: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    const GIB: u64 = 1024 * MIB;
    match size {
        s if s >= GIB && s.is_multiple_of(GIB) => format!("{} GiB", s / GIB),
        s if s >= MIB && s.is_multiple_of(MIB) => format!("{} MiB", s / MIB),
        s if s >= KIB && s.is_multiple_of(KIB) => format!("{} KiB", s / KIB),
        s => format!("{s} B"),
    }
}

/// How many `created` events the framework run publishes per batch.
const PUBLISH_BATCH: usize = 1_000;

/// One framework run: fresh tracking databases and a fresh secondary; the engines run; the
/// application publishes one event per file, in batches of [`PUBLISH_BATCH`]; the clock stops when the secondary is synced and
/// verified. The copies are then counted.
async fn framework_run(bench: &Bench, source: &Path, set: BlobSet) -> Result<FrameworkRun, Error> {
    let dir = bench.fresh_dir("framework")?;
    let sites = Sites::open(
        bench.location_with_db(source, &dir, "primary"),
        bench.location(&dir.join("secondary"), "secondary"),
        None,
    )
    .await?;
    let engines = sites.start_engines().await?;
    let baseline = env::current_rss();
    let peak_reset = set.peak_memory && env::reset_peak_rss();
    let cpu_before = env::process_cpu();
    let started = Instant::now();
    // As an application registering many files does: batch publishes (one transaction, one
    // wait for the disk, per batch).
    let ids: Vec<i64> = (1..=set.count as i64).collect();
    for chunk in ids.chunks(PUBLISH_BATCH) {
        let files: Vec<_> = chunk.iter().map(|&id| package_file(id)).collect();
        sites.primary.publish_created_events(&files).await?;
    }
    let publishing = started.elapsed();
    let waited = env::wait_until_synced(
        &sites.secondary,
        "package_file",
        set.count,
        true,
        bench.settings.timeout,
    )
    .await;
    let took = started.elapsed();
    let cpu = env::process_cpu()
        .zip(cpu_before)
        .map(|(after, before)| after.since(before));
    let rss = peak_reset.then(env::peak_rss).flatten().zip(baseline);
    engines.shutdown().await;
    waited?;
    let copies = env::count_files(&sites.secondary_location.blobs())?;
    if copies != set.count {
        return Err(format!("the secondary holds {copies} files, {} expected", set.count).into());
    }
    sites.drop_databases(bench).await?;
    drop(sites);
    put_away(bench, &dir, set).await?;
    Ok(FrameworkRun {
        took,
        publishing,
        cpu,
        rss,
    })
}

/// One run of a reference tool into a fresh directory.
async fn tool_run(
    bench: &Bench,
    source: &Path,
    tool: Contender,
    set: BlobSet,
) -> Result<Duration, Error> {
    let dir = bench.fresh_dir("tool")?;
    let from = source.join("blobs");
    let to = dir.join("copy");
    let (from_s, to_s) = (from.display().to_string(), to.display().to_string());
    let took = match tool {
        Contender::Cp => bench.time_command("cp", &["-r", &from_s, &to_s]).await?,
        Contender::Rsync => {
            bench
                .time_command("rsync", &["-a", &format!("{from_s}/"), &format!("{to_s}/")])
                .await?
        }
        Contender::Rclone => {
            bench
                .time_command("rclone", &["copy", "--checksum", &from_s, &to_s])
                .await?
        }
        Contender::CpSha256 => {
            let sums = dir.join("sums").display().to_string();
            bench
                .time_script(&format!(
                    "set -e; cd '{from_s}'; find . -type f -print0 | xargs -0 sha256sum > '{sums}'; \
                     cp -r '{from_s}' '{to_s}'; cd '{to_s}'; sha256sum --quiet -c '{sums}'"
                ))
                .await?
        }
        Contender::Framework => unreachable!("not a tool"),
    };
    put_away(bench, &dir, set).await?;
    Ok(took)
}

/// Ends a run: a run of many small files is set aside until the bench ends (see
/// [`Bench::set_aside`]), any other is deleted now (its few inodes do not slow the next run,
/// and its gigabytes would add up).
async fn put_away(bench: &Bench, dir: &Path, set: BlobSet) -> Result<(), Error> {
    if set.count >= 1_000 && set.size < 1024 * 1024 {
        bench.set_aside(dir).await
    } else {
        bench.discard(dir).await
    }
}
