//! The blob strategy on a real local-filesystem object store: the shared suite, and the
//! blob-specific behaviour (refused keys, missing blobs, checksum checked before the copy is
//! visible, multipart streaming of large blobs).

use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use replicable_core::prelude::*;
use replicable_core::testing::Harness;
use replicable_core::verification::VerificationRecord;
use replicable_core::{ReplicatorError, ResourceError};
use replicable_strategies::BlobStrategy;
use replicable_strategies::blob::object_sha256;

#[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
#[replicator(BlobStrategy)]
pub struct Upload {
    #[replicable(id)]
    pub id: i64,
    #[replicable(blob)]
    pub path: String,
}

fn upload(id: i64) -> Upload {
    Upload {
        id,
        path: format!("uploads/{id}/file.bin"),
    }
}

fn local_store(dir: &std::path::Path) -> Arc<dyn ObjectStore> {
    Arc::new(LocalFileSystem::new_with_prefix(dir).expect("a local object store"))
}

/// Primary and secondaries on local directories.
fn on_disk(factory: fn(i64) -> Upload) -> Harness<Upload> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let primary_dir = dir.path().join("primary");
    let secondary_dir = dir.path().join("secondary");
    for d in [&primary_dir, &secondary_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    let primary = Site::primary("primary")
        .blob_store(local_store(&primary_dir))
        .in_memory()
        .build()
        .expect("a site");
    let secondary = Site::secondary(
        "secondary",
        Arc::new(InProcessPrimary::new(primary.clone())),
    )
    .blob_store(local_store(&secondary_dir))
    .in_memory()
    .build()
    .expect("a site");
    let scoped_root = dir.path().to_path_buf();
    Harness::with_sites(
        primary,
        secondary,
        move |builder| {
            let d = scoped_root.join(format!("scoped-{}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            let d = tempfile::tempdir_in(&d).unwrap().keep();
            builder
                .blob_store(local_store(&d))
                .in_memory()
                .build()
                .expect("a site")
        },
        factory,
    )
    .holding(dir)
}

replicable_core::replicator_test_suite!(local_fs_suite: Upload, upload, harness = on_disk);

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    replicable_core::testing::block_on(f)
}

#[test]
fn keys_escaping_the_root_are_refused_at_publish() {
    block_on(async {
        let h = on_disk(upload);
        for key in [
            "../outside",
            "/etc/passwd",
            "",
            "a/../../b",
            ".replicable/tmp/x",
        ] {
            let record = Upload {
                id: 1,
                path: key.into(),
            };
            let err = record
                .replicator(&h.primary)
                .publish_created_event()
                .await
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    ReplicatorError::Resource {
                        source: ResourceError::Refused { .. },
                        ..
                    }
                ),
                "{key:?}: {err}"
            );
            assert!(
                err.to_string().contains("upload 1"),
                "the error names the record: {err}"
            );
        }
        assert_eq!(h.primary.event_log().last_event_id().await.unwrap(), None);
    });
}

#[test]
fn a_blob_missing_on_the_primary_fails_as_missing_with_the_long_cap() {
    block_on(async {
        let h = on_disk(upload);
        let record = upload(5);
        // Published without writing the blob.
        record
            .replicator(&h.primary)
            .publish_created_event()
            .await
            .unwrap();
        let outcome = record.replicator(&h.secondary).sync().await.unwrap();
        let SyncOutcome::Failed(failure) = outcome else {
            panic!("expected a failure, got {outcome:?}");
        };
        assert!(failure.missing_on_primary);
        assert_eq!(
            failure.message,
            "blob `uploads/5/file.bin` is missing on the primary"
        );
        let row = record
            .replicator(&h.secondary)
            .registry()
            .await
            .unwrap()
            .unwrap();
        assert!(row.missing_on_primary);
        assert_eq!(row.state, SyncState::Failed);
    });
}

async fn temporary_objects(store: &Arc<dyn ObjectStore>) -> Vec<Path> {
    use futures::TryStreamExt;
    store
        .list(Some(&Path::from(".replicable")))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .unwrap()
}

#[test]
fn a_download_whose_checksum_differs_never_becomes_visible() {
    block_on(async {
        let h = on_disk(upload);
        let record = upload(6);
        h.create_and_publish(6).await;
        // The primary claims a checksum the bytes do not have.
        let mut row = h
            .primary
            .verification_store()
            .get("upload", 6)
            .await
            .unwrap()
            .unwrap_or_else(|| VerificationRecord::new(6));
        row.verification.start(h.primary.now()).unwrap();
        row.verification
            .succeed("00".repeat(32), h.primary.now())
            .unwrap();
        assert!(
            h.primary
                .verification_store()
                .update("upload", &row)
                .await
                .unwrap()
        );

        let outcome = record.replicator(&h.secondary).sync().await.unwrap();
        let SyncOutcome::Failed(failure) = outcome else {
            panic!("expected a failure, got {outcome:?}");
        };
        assert!(
            failure
                .message
                .starts_with("Downloaded file checksum mismatch"),
            "{}",
            failure.message
        );
        let real = Path::from("uploads/6/file.bin");
        assert!(matches!(
            h.secondary.blob_store().head(&real).await,
            Err(object_store::Error::NotFound { .. })
        ));
        assert!(temporary_objects(h.secondary.blob_store()).await.is_empty());
    });
}

#[test]
fn a_multipart_sized_blob_streams_through_and_matches() {
    block_on(async {
        let h = on_disk(upload);
        let record = upload(7);
        // 13 MiB: three parts of the multipart upload.
        let path = Path::from(record.path.as_str());
        let mut writer =
            WriteMultipart::new(h.primary.blob_store().put_multipart(&path).await.unwrap());
        for i in 0..13u8 {
            writer.put(vec![i; 1024 * 1024].into());
        }
        writer.finish().await.unwrap();
        record
            .replicator(&h.primary)
            .publish_created_event()
            .await
            .unwrap();
        record.replicator(&h.primary).verify().await.unwrap();
        let outcome = record.replicator(&h.secondary).sync().await.unwrap();
        assert!(matches!(outcome, SyncOutcome::Synced { .. }), "{outcome:?}");
        let primary = object_sha256(&**h.primary.blob_store(), &path)
            .await
            .unwrap();
        let secondary = object_sha256(&**h.secondary.blob_store(), &path)
            .await
            .unwrap();
        assert_eq!(primary, secondary);
        assert_eq!(
            h.secondary.blob_store().head(&path).await.unwrap().size,
            13 * 1024 * 1024
        );
        assert!(temporary_objects(h.secondary.blob_store()).await.is_empty());
    });
}

#[test]
fn removing_a_blob_that_is_already_gone_succeeds() {
    block_on(async {
        let h = on_disk(upload);
        let strategy = BlobStrategy;
        use replicable_core::Strategy as _;
        let resource = upload(8).resource();
        let target = replicable_core::ResourceTarget {
            replicable_name: "upload",
            model_id: 8,
            resource: &resource,
        };
        strategy.remove(&h.secondary, &target).await.unwrap();
        h.secondary
            .blob_store()
            .put(
                &Path::from("uploads/8/file.bin"),
                PutPayload::from_static(b"x"),
            )
            .await
            .unwrap();
        strategy.remove(&h.secondary, &target).await.unwrap();
        assert!(
            strategy
                .checksum(&h.secondary, &target, None)
                .await
                .is_err()
        );
    });
}
