//! Opening a fresh database from many processes at once: every open succeeds, because every
//! statement of the schema's creation (the PostgreSQL schema itself, the version table, the
//! tables) runs under the migration lock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use replicable_core::storage::sql::{SqlOptions, SqlStore};
use replicable_core::testing::block_on;
use replicable_tests::{SqliteTarget, postgres_url};

/// Set in a child process: `<url>|<schema or empty>|<start at, ms since the epoch>`.
const CHILD: &str = "REPLICABLE_TEST_CONCURRENT_OPEN";

/// Opens `url` (in `schema`) once `start_ms` has come, with a pool of its own.
async fn open_at(url: String, schema: Option<String>, start_ms: u128) -> Result<(), String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    if start_ms > now {
        tokio::time::sleep(Duration::from_millis((start_ms - now) as u64)).await;
    }
    let store = SqlStore::open_with(
        &url,
        SqlOptions {
            schema,
            max_connections: Some(1),
            ..SqlOptions::default()
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    store.close().await;
    Ok(())
}

/// The child side: does nothing unless started by [`open_everywhere_at_once`], so it is
/// ignored as an ordinary test and run only by name.
#[test]
#[ignore = "a child process of the concurrent open tests"]
fn concurrent_open_child() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let mut parts = spec.splitn(3, '|');
    let url = parts.next().unwrap().to_owned();
    let schema = Some(parts.next().unwrap().to_owned()).filter(|s| !s.is_empty());
    let start: u128 = parts.next().unwrap().parse().unwrap();
    block_on(open_at(url, schema, start)).expect("the child's open");
}

/// Opens one fresh database 20 times at once: 15 pools in this process and 5 child processes.
fn open_everywhere_at_once(url: &str, schema: Option<&str>) {
    const IN_PROCESS: usize = 15;
    const CHILDREN: usize = 5;
    let start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 2_000;
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..CHILDREN)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "concurrent_open_child",
                    "--ignored",
                    "--test-threads=1",
                ])
                .env(CHILD, format!("{url}|{}|{start}", schema.unwrap_or("")))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("starting a child process")
        })
        .collect();
    let results = block_on(async {
        let opens = (0..IN_PROCESS)
            .map(|_| tokio::spawn(open_at(url.to_owned(), schema.map(str::to_owned), start)));
        futures::future::join_all(opens).await
    });
    let failures: Vec<String> = results
        .into_iter()
        .map(|r| r.expect("the open task"))
        .filter_map(Result::err)
        .collect();
    assert!(
        failures.is_empty(),
        "in-process opens failed: {failures:#?}"
    );
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a child's open failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // And the result is one good database.
    block_on(async {
        let store = SqlStore::open_with(
            url,
            SqlOptions {
                schema: schema.map(str::to_owned),
                ..SqlOptions::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(
            store.schema_version("core").await.unwrap(),
            Some(replicable_core::storage::sql::schema::CORE_VERSION)
        );
    });
}

#[test]
fn twenty_concurrent_opens_of_a_fresh_postgres_schema_all_succeed() {
    let Some(url) = postgres_url() else { return };
    let schema = format!(
        "rt_{}_open_{:x}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    open_everywhere_at_once(&url, Some(&schema));
}

#[test]
fn twenty_concurrent_opens_of_a_fresh_sqlite_file_all_succeed() {
    let target = SqliteTarget::new();
    open_everywhere_at_once(&target.url, None);
}
