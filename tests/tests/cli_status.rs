//! The operator CLI against real SQLite files (and PostgreSQL schemas when the lane is set up):
//! every command run through `cli::execute` with its output captured, the numbers checked
//! against the stores; read paths never create tables.

use std::sync::Arc;

use object_store::ObjectStoreExt;
use replicable_core::cli::{self, Cli, CliError};
use replicable_core::local_blobs::ConfinedLocalFileSystem;
use replicable_core::prelude::*;
use replicable_core::storage::sql::SqlStore;
use replicable_core::{ReplicableDescriptor, find_replicable, log_cursor, workers};
use replicable_strategies::BlobStrategy;
use replicable_tests::{PostgresTarget, SqliteTarget};

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(BlobStrategy)]
pub struct Artifact {
    #[replicable(id)]
    pub id: i64,
    #[replicable(blob)]
    pub path: String,
}

#[derive(Clone, Copy, PartialEq)]
enum Lane {
    Sqlite,
    Postgres,
}

struct Sites {
    primary: Site,
    secondary: Site,
    secondary_store: Arc<SqlStore>,
    _dirs: Vec<tempfile::TempDir>,
}

fn blobs(dir: &std::path::Path) -> Arc<ConfinedLocalFileSystem> {
    std::fs::create_dir_all(dir).unwrap();
    Arc::new(ConfinedLocalFileSystem::new(dir).unwrap())
}

fn replicables() -> Vec<&'static ReplicableDescriptor> {
    vec![find_replicable("artifact").unwrap().expect("registered")]
}

/// A primary and a secondary, each on its own database; `None` when the lane is not set up.
async fn sites(lane: Lane) -> Option<Sites> {
    let dir = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    let (primary_store, secondary_store) = match lane {
        Lane::Sqlite => {
            let (p, s) = (SqliteTarget::new(), SqliteTarget::new());
            let stores = (
                SqlStore::open(&p.url).await.unwrap(),
                SqlStore::open(&s.url).await.unwrap(),
            );
            dirs.push(p.dir);
            dirs.push(s.dir);
            stores
        }
        Lane::Postgres => (
            PostgresTarget::new()?.open().await,
            PostgresTarget::new()?.open().await,
        ),
    };
    let primary = Site::primary("primary")
        .database(primary_store)
        .blob_store(blobs(&dir.path().join("primary")))
        .build()
        .unwrap();
    let secondary = Site::secondary(
        "secondary",
        Arc::new(InProcessPrimary::new(primary.clone())),
    )
    .database(secondary_store.clone())
    .blob_store(blobs(&dir.path().join("secondary")))
    .build()
    .unwrap();
    dirs.push(dir);
    Some(Sites {
        primary,
        secondary,
        secondary_store,
        _dirs: dirs,
    })
}

async fn publish(primary: &Site, id: i64, with_blob: bool) {
    let artifact = Artifact {
        id,
        path: format!("artifacts/{id}"),
    };
    if with_blob {
        primary
            .blob_store()
            .put(
                &object_store::path::Path::from(artifact.path.as_str()),
                format!("artifact {id}").into_bytes().into(),
            )
            .await
            .unwrap();
    }
    artifact
        .replicator(primary)
        .publish_created_event()
        .await
        .unwrap();
}

/// One round of replication by single passes: checksums on the primary, then the secondary's
/// cursor, syncs and verifications.
async fn replicate(s: &Sites) {
    let artifact = replicables()[0];
    workers::verify_due(&s.primary, artifact, 1000, 4)
        .await
        .unwrap();
    log_cursor::catch_up(&s.secondary, 100).await.unwrap();
    workers::sync_due(&s.secondary, artifact, 1000, 4)
        .await
        .unwrap();
    log_cursor::catch_up(&s.secondary, 100).await.unwrap();
    workers::verify_due(&s.secondary, artifact, 1000, 4)
        .await
        .unwrap();
}

/// Five artifacts, the fifth without its blob on the primary (its sync fails).
async fn seeded(lane: Lane) -> Option<Sites> {
    let s = sites(lane).await?;
    for id in 1..=5 {
        publish(&s.primary, id, id != 5).await;
    }
    replicate(&s).await;
    Some(s)
}

async fn run(site: &Site, args: &[&str]) -> Result<String, CliError> {
    let cli = <Cli as cli::clap::Parser>::try_parse_from(
        std::iter::once("replicable").chain(args.iter().copied()),
    )
    .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let mut out = Vec::new();
    cli::execute(&cli.command, site, &replicables(), &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

fn lanes(test: fn(Lane) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>) {
    for lane in [Lane::Sqlite, Lane::Postgres] {
        if lane == Lane::Postgres && replicable_tests::postgres_url().is_none() {
            continue;
        }
        replicable_core::testing::block_on(test(lane));
    }
}

#[test]
fn status_counts_match_the_stores_on_both_sites() {
    lanes(|lane| {
        Box::pin(async move {
            let Some(s) = seeded(lane).await else { return };
            let json: serde_json::Value =
                serde_json::from_str(&run(&s.secondary, &["status", "--json"]).await.unwrap())
                    .unwrap();
            let row = &json["replicables"][0];
            assert_eq!(row["replicable_name"], "artifact");
            assert_eq!(row["registry_count"], 5, "{json}");
            assert_eq!(row["synced_count"], 4, "{json}");
            assert_eq!(row["failed_count"], 1, "{json}");
            assert_eq!(row["pending_count"], 0, "{json}");
            assert_eq!(row["verified_count"], 4, "{json}");
            assert_eq!(row["synced_percent"], 80.0, "{json}");
            assert_eq!(row["queue_depth"], 0, "{json}");
            let last = s.primary.event_log().last_event_id().await.unwrap().unwrap();
            assert_eq!(json["events"]["last_event_id"], last);
            assert_eq!(json["events"]["cursor_event_id"], last);
            assert_eq!(json["events"]["events_behind"], 0);

            // Two more events: the cursor is two behind.
            publish(&s.primary, 6, true).await;
            publish(&s.primary, 7, true).await;
            let json: serde_json::Value =
                serde_json::from_str(&run(&s.secondary, &["status", "--json"]).await.unwrap())
                    .unwrap();
            assert_eq!(json["events"]["events_behind"], 2, "{json}");
            assert!(json["events"]["lag_seconds"].as_f64().unwrap() >= 0.0);

            let table = run(&s.secondary, &["status"]).await.unwrap();
            assert!(table.contains("2 events behind"), "{table}");
            let line = table
                .lines()
                .find(|l| l.starts_with("artifact"))
                .expect("a row for artifact");
            let numbers: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(&numbers[1..7], ["5", "0", "0", "4", "1", "4"], "{table}");

            let primary = run(&s.primary, &["status", "--json"]).await.unwrap();
            let json: serde_json::Value = serde_json::from_str(&primary).unwrap();
            let row = &json["replicables"][0];
            assert_eq!(row["role"], "primary");
            assert_eq!(row["count"], 7, "{json}");
            assert_eq!(row["checksummed_count"], 4, "{json}");
            assert_eq!(row["checksum_failed_count"], 1, "{json}");
        })
    });
}

async fn tables_named(store: &SqlStore, prefix: &str) -> Vec<String> {
    use sqlx::Row;
    let rows = sqlx::query(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE $1 ORDER BY name",
    )
    .bind(format!("{prefix}%"))
    .fetch_all(store.pool())
    .await
    .unwrap();
    rows.iter().map(|r| r.get::<String, _>("name")).collect()
}

#[test]
fn a_misspelt_name_is_refused_and_creates_no_table() {
    replicable_core::testing::block_on(async {
        let s = seeded(Lane::Sqlite).await.unwrap();
        let e = run(&s.secondary, &["status", "artifcat"]).await.unwrap_err();
        let message = e.to_string();
        assert!(
            message.contains("unknown replicable `artifcat`") && message.contains("artifact"),
            "{message}"
        );
        for args in [
            &["registry", "list", "artifcat"][..],
            &["registry", "show", "artifcat", "1"],
            &["resync", "artifcat", "--all"],
            &["dataloss", "artifcat"],
        ] {
            let e = run(&s.secondary, args).await.unwrap_err();
            assert!(matches!(e, CliError::UnknownReplicable { .. }), "{args:?}: {e}");
        }
        // The store's read paths themselves do no DDL for a name without tables.
        let store = s.secondary.registry_store();
        assert_eq!(store.counts("artifcat").await.unwrap(), Default::default());
        assert!(store.get("artifcat", 1).await.unwrap().is_none());
        assert!(store.ids("artifcat", 0..10, 10).await.unwrap().is_empty());
        assert!(
            store
                .list("artifcat", Default::default(), None, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(s.secondary.records().count("artifcat").await.unwrap(), 0);
        assert!(s.secondary.records().get("artifcat", 1).await.unwrap().is_none());
        assert_eq!(
            s.secondary.verification_store().counts("artifcat").await.unwrap(),
            Default::default()
        );
        assert!(
            tables_named(&s.secondary_store, "artifcat").await.is_empty(),
            "tables were created for a misspelt name"
        );
        // The real name's tables are there, and `create_tables` makes a new one's.
        assert_eq!(
            tables_named(&s.secondary_store, "artifact_").await,
            ["artifact_records", "artifact_registry", "artifact_verification"]
        );
        store.create_tables("newcomer").await.unwrap();
        assert_eq!(tables_named(&s.secondary_store, "newcomer").await.len(), 3);
    });
}
