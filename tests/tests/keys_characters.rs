//! A blob key is the same object on the primary and on a secondary whatever characters it holds
//! (`~ # % [ ] ?`, non-ASCII): written on the primary with `object_path`, published, synced,
//! checksummed on both sides and deleted, on a local directory and on S3 (when the lane runs).

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use replicable_core::blob_key::object_path;
use replicable_core::local_blobs::ConfinedLocalFileSystem;
use replicable_core::prelude::*;
use replicable_strategies::BlobStrategy;
use replicable_strategies::blob::object_sha256;

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(BlobStrategy)]
pub struct Attachment {
    #[replicable(id)]
    pub id: i64,
    #[replicable(blob)]
    pub key: String,
}

const KEYS: [&str; 6] = [
    "debs/libfoo_1.0~rc1.deb",
    "docs/résumé.pdf",
    "odd/issue#42 [draft]?.txt",
    "odd/100%/done.bin",
    "漢字/ファイル.dat",
    "mixed/a~b#c%d[e]f?g é.bin",
];

/// Sites whose blobs are in the given stores. The tables are in memory: this test is about
/// object paths (the SQLite stores are covered by `durable_sites`).
async fn sites(
    primary_blobs: Arc<dyn ObjectStore>,
    secondary_blobs: Arc<dyn ObjectStore>,
) -> (Site, Site) {
    let primary = Site::primary("primary")
        .blob_store(primary_blobs)
        .in_memory()
        .build()
        .expect("a site");
    let secondary = Site::secondary(
        "secondary",
        Arc::new(InProcessPrimary::new(primary.clone())),
    )
    .blob_store(secondary_blobs)
    .in_memory()
    .build()
    .expect("a site");
    (primary, secondary)
}

async fn round_trip(primary: &Site, secondary: &Site) {
    for (i, key) in KEYS.iter().enumerate() {
        let record = Attachment {
            id: i as i64 + 1,
            key: (*key).to_owned(),
        };
        let path = object_path(key).unwrap();
        let body = format!("content of {key}");
        primary
            .blob_store()
            .put(&path, PutPayload::from(body.clone().into_bytes()))
            .await
            .unwrap();
        let on_primary = record.replicator(primary);
        on_primary.publish_created_event().await.unwrap();
        on_primary.verify().await.unwrap();
        replicable_core::log_cursor::catch_up(secondary, 50)
            .await
            .unwrap();
        let row = record
            .replicator(secondary)
            .registry()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            row.state,
            SyncState::Synced,
            "{key}: {:?}",
            row.last_sync_failure
        );
        let bytes = secondary
            .blob_store()
            .get(&path)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(bytes.as_ref(), body.as_bytes(), "{key}");
        assert_eq!(
            object_sha256(&**secondary.blob_store(), &path)
                .await
                .unwrap(),
            object_sha256(&**primary.blob_store(), &path).await.unwrap(),
        );
        let verified = record.replicator(secondary).verify().await.unwrap();
        assert!(
            matches!(verified, VerifyOutcome::Succeeded { .. }),
            "{key}: {verified:?}"
        );

        on_primary.publish_deleted_event().await.unwrap();
        replicable_core::log_cursor::catch_up(secondary, 50)
            .await
            .unwrap();
        assert!(
            matches!(
                secondary.blob_store().head(&path).await,
                Err(object_store::Error::NotFound { .. })
            ),
            "{key} is deleted on the secondary"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_any_characters_are_the_same_object_on_both_local_sides() {
    let dir = tempfile::tempdir().unwrap();
    for d in ["primary", "secondary"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let (primary, secondary) = sites(
        Arc::new(ConfinedLocalFileSystem::new(dir.path().join("primary")).unwrap()),
        Arc::new(ConfinedLocalFileSystem::new(dir.path().join("secondary")).unwrap()),
    )
    .await;
    round_trip(&primary, &secondary).await;
    // A file of a local store is named by its key.
    assert!(dir.path().join("primary/debs/libfoo_1.0~rc1.deb").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_any_characters_are_the_same_object_on_both_s3_sides() {
    let Some((endpoint, bucket)) = replicable_tests::s3_lane() else {
        return;
    };
    let s3: Arc<dyn ObjectStore> = Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("replicable")
            .with_secret_access_key("replicable")
            .build()
            .expect("an S3 client"),
    );
    let run = format!(
        "keys-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let (primary, secondary) = sites(
        Arc::new(PrefixStore::new(s3.clone(), format!("{run}/primary"))),
        Arc::new(PrefixStore::new(s3, format!("{run}/secondary"))),
    )
    .await;
    round_trip(&primary, &secondary).await;
}
