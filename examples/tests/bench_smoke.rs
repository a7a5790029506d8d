//! The benchmark's scenarios at tiny sizes, through the same code as `replicable-bench`, so that
//! the bench cannot rot: each must produce its table, and a framework run fails unless the
//! secondary ends with every record synced and verified and every copy on disk.

use std::time::Duration;

use replicable_examples::bench::{Bench, Scenario, Settings, run_scenario};

fn tiny_bench(scale: f64) -> (tempfile::TempDir, Bench) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let bench = Bench::new(Settings {
        reps: 1,
        postgres: None,
        scale,
        dir: dir.path().to_path_buf(),
        timeout: Duration::from_secs(120),
    })
    .expect("bench");
    (dir, bench)
}

fn row<'a>(report: &'a replicable_examples::bench::Report, label: &str) -> &'a [String] {
    report
        .rows
        .iter()
        .find(|r| r[0].starts_with(label))
        .unwrap_or_else(|| panic!("no row {label:?} in\n{}", report.render()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_blobs_replicate_end_to_end_and_the_table_compares_them_with_cp() {
    // 100 files of 4 KiB.
    let (_dir, bench) = tiny_bench(0.005);
    let report = run_scenario(&bench, Scenario::Blobs4Kib)
        .await
        .expect("the scenario runs and the secondary ends synced and verified");
    let framework = row(&report, "framework (engine, SQLite)");
    assert_eq!(framework[4], "1.00x");
    assert!(framework[3].ends_with("files/s"), "{framework:?}");
    let cp = row(&report, "cp -r");
    assert!(cp[4].ends_with('x') && cp[4] != "-", "{cp:?}");
    assert!(report.render().contains("== blobs-4kib"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_are_compared_with_plain_sql_and_status_with_a_plain_count() {
    // 100 publishes; 1,000 registry rows.
    let (_dir, bench) = tiny_bench(0.005);
    let report = run_scenario(&bench, Scenario::Publish)
        .await
        .expect("publish");
    assert!(row(&report, "framework publish_created_event")[3].ends_with("events/s"));
    row(&report, "plain SQL");
    assert!(report.notes.iter().any(|n| n.starts_with("batch publish")));

    let (_dir, bench) = tiny_bench(0.001);
    let report = run_scenario(&bench, Scenario::Status)
        .await
        .expect("status");
    row(&report, "framework status::site_status");
    row(&report, "framework GET /metrics");
}
