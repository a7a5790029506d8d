//! The whole replicator suite on sites whose stores are SQLite files and PostgreSQL schemas,
//! with blobs in local directories: what the embedded default and a scale-out deployment run.

use std::sync::Arc;

use object_store::ObjectStoreExt;
use replicable_core::local_blobs::ConfinedLocalFileSystem;
use replicable_core::prelude::*;
use replicable_core::storage::sql::SqlStore;
use replicable_core::testing::Harness;
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

fn artifact(id: i64) -> Artifact {
    Artifact {
        id,
        path: format!("artifacts/{id}.zip"),
    }
}

fn blobs(dir: &std::path::Path) -> Arc<ConfinedLocalFileSystem> {
    std::fs::create_dir_all(dir).unwrap();
    Arc::new(ConfinedLocalFileSystem::new(dir).unwrap())
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

fn counter() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Primary and secondaries each on their own SQLite file.
fn sqlite_sites(factory: fn(i64) -> Artifact) -> Harness<Artifact> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let db = |name: &str| {
        let url = format!("sqlite://{}", root.join(format!("{name}.db")).display());
        block(SqlStore::open(&url)).unwrap()
    };
    let primary = Site::primary("primary")
        .database(db("primary"))
        .blob_store(blobs(&root.join("primary-blobs")))
        .build()
        .expect("a site");
    let link = Arc::new(InProcessPrimary::new(primary.clone()));
    let secondary = Site::secondary("secondary", link)
        .database(db("secondary"))
        .blob_store(blobs(&root.join("secondary-blobs")))
        .build()
        .expect("a site");
    Harness::with_sites(
        primary,
        secondary,
        move |builder| {
            let n = counter();
            let url = format!("sqlite://{}", root.join(format!("scoped-{n}.db")).display());
            builder
                .database(block(SqlStore::open(&url)).unwrap())
                .blob_store(blobs(&root.join(format!("scoped-{n}-blobs"))))
                .build()
                .expect("a site")
        },
        factory,
    )
    .holding(dir)
}

/// Primary and secondaries each in their own PostgreSQL schema.
fn postgres_sites(factory: fn(i64) -> Artifact) -> Option<Harness<Artifact>> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let db = || {
        let target = PostgresTarget::new()?;
        Some(block(target.open()))
    };
    let primary = Site::primary("primary")
        .database(db()?)
        .blob_store(blobs(&root.join("primary-blobs")))
        .build()
        .expect("a site");
    let link = Arc::new(InProcessPrimary::new(primary.clone()));
    let secondary = Site::secondary("secondary", link)
        .database(db()?)
        .blob_store(blobs(&root.join("secondary-blobs")))
        .build()
        .expect("a site");
    Some(
        Harness::with_sites(
            primary,
            secondary,
            move |builder| {
                let n = counter();
                builder
                    .database(db().expect("the lane is set up"))
                    .blob_store(blobs(&root.join(format!("scoped-{n}-blobs"))))
                    .build()
                    .expect("a site")
            },
            factory,
        )
        .holding(dir),
    )
}

replicable_core::replicator_test_suite!(on_sqlite: Artifact, artifact, harness = sqlite_sites);
replicable_core::replicator_test_suite!(on_postgres: Artifact, artifact, harness = postgres_sites);

#[test]
fn a_sqlite_site_survives_a_restart_with_its_registry_and_cursor() {
    replicable_core::testing::block_on(async {
        let target = SqliteTarget::new();
        let primary = Site::primary("primary")
            .in_memory()
            .build()
            .expect("a site");
        let open_secondary = async || {
            Site::secondary(
                "secondary",
                Arc::new(InProcessPrimary::new(primary.clone())),
            )
            .database(SqlStore::open(&target.url).await.unwrap())
            .build()
            .expect("a site")
        };
        let record = artifact(1);
        primary
            .blob_store()
            .put(
                &replicable_core::blob_key::object_path(&record.path).unwrap(),
                object_store::PutPayload::from_static(b"zip"),
            )
            .await
            .unwrap();
        record
            .replicator(&primary)
            .publish_created_event()
            .await
            .unwrap();
        {
            let secondary = open_secondary().await;
            let report = replicable_core::log_cursor::catch_up(&secondary, 50)
                .await
                .unwrap();
            assert_eq!(report.cursor, 1);
        }
        let reopened = open_secondary().await;
        assert_eq!(reopened.registry_store().cursor().await.unwrap(), 1);
        let row = record
            .replicator(&reopened)
            .registry()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.state, SyncState::Synced);
        assert_eq!(row.synced_generation, Some(1));
    });
}
