//! Shared set-up of the CLI tests: a primary and a secondary on real databases, a blob
//! replicable, replication by single passes, and running a command with its output captured.

#![allow(dead_code)]

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
pub enum Lane {
    Sqlite,
    Postgres,
}

pub struct Sites {
    pub primary: Site,
    pub secondary: Site,
    pub secondary_store: Arc<SqlStore>,
    _dirs: Vec<tempfile::TempDir>,
}

pub fn blobs(dir: &std::path::Path) -> Arc<ConfinedLocalFileSystem> {
    std::fs::create_dir_all(dir).unwrap();
    Arc::new(ConfinedLocalFileSystem::new(dir).unwrap())
}

pub fn replicables() -> Vec<&'static ReplicableDescriptor> {
    vec![find_replicable("artifact").unwrap().expect("registered")]
}

/// A primary and a secondary, each on its own database; `None` when the lane is not set up.
pub async fn sites(lane: Lane) -> Option<Sites> {
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

pub async fn publish(primary: &Site, id: i64, with_blob: bool) {
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
pub async fn replicate(s: &Sites) {
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
pub async fn seeded(lane: Lane) -> Option<Sites> {
    let s = sites(lane).await?;
    for id in 1..=5 {
        publish(&s.primary, id, id != 5).await;
    }
    replicate(&s).await;
    Some(s)
}

pub async fn run(site: &Site, args: &[&str]) -> Result<String, CliError> {
    let cli = <Cli as cli::clap::Parser>::try_parse_from(
        std::iter::once("replicable").chain(args.iter().copied()),
    )
    .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let mut out = Vec::new();
    cli::execute(&cli.command, site, &replicables(), &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

pub fn lanes(test: fn(Lane) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>) {
    for lane in [Lane::Sqlite, Lane::Postgres] {
        if lane == Lane::Postgres && replicable_tests::postgres_url().is_none() {
            continue;
        }
        replicable_core::testing::block_on(test(lane));
    }
}
