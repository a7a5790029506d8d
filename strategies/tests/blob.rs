//! The blob strategy on a real local-filesystem object store: the shared suite, and the
//! blob-specific behaviour (refused keys, missing blobs, checksum checked before the copy is
//! visible, multipart streaming of large blobs).

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use replicable_core::blob_key::object_path;
use replicable_core::local_blobs::ConfinedLocalFileSystem;
use replicable_core::prelude::*;
use replicable_core::storage::StoredRecord;
use replicable_core::testing::Harness;
use replicable_core::verification::VerificationRecord;
use replicable_core::{
    AlwaysCurrent, Resource, ResourceTarget, Strategy, SyncFailure, SyncGuard, SyncRequest,
};
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

/// A local directory as a blob store, the documented way: confined to the directory.
fn local_store(dir: &std::path::Path) -> Arc<dyn ObjectStore> {
    Arc::new(ConfinedLocalFileSystem::new(dir).expect("a local object store"))
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
        strategy
            .remove(h.secondary.strategy_context(), &target)
            .await
            .unwrap();
        h.secondary
            .blob_store()
            .put(
                &Path::from("uploads/8/file.bin"),
                PutPayload::from_static(b"x"),
            )
            .await
            .unwrap();
        strategy
            .remove(h.secondary.strategy_context(), &target)
            .await
            .unwrap();
        assert!(
            strategy
                .checksum(h.secondary.strategy_context(), &target, None)
                .await
                .is_err()
        );
    });
}

/// A guard that says every sync was overtaken.
struct Overtaken;

#[async_trait::async_trait]
impl SyncGuard for Overtaken {
    async fn ensure_current(&self) -> Result<(), SyncFailure> {
        Err(SyncFailure::overtaken("test"))
    }
}

/// A primary and a secondary on local directories the test can reach.
struct Dirs {
    dir: tempfile::TempDir,
    primary: Site,
    secondary: Site,
}

impl Dirs {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for d in ["primary", "secondary", "outside"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let primary = Site::primary("primary")
            .blob_store(local_store(&dir.path().join("primary")))
            .in_memory()
            .build()
            .expect("a site");
        let secondary = Site::secondary(
            "secondary",
            Arc::new(InProcessPrimary::new(primary.clone())),
        )
        .blob_store(local_store(&dir.path().join("secondary")))
        .in_memory()
        .build()
        .expect("a site");
        Self {
            dir,
            primary,
            secondary,
        }
    }

    fn path(&self, sub: &str) -> std::path::PathBuf {
        self.dir.path().join(sub)
    }

    async fn put_on_primary(&self, key: &str, bytes: &'static [u8]) {
        self.primary
            .blob_store()
            .put(&object_path(key).unwrap(), PutPayload::from_static(bytes))
            .await
            .unwrap();
    }

    async fn sync(&self, key: &str, guard: &dyn SyncGuard) -> Result<(), SyncFailure> {
        let link = InProcessPrimary::new(self.primary.clone());
        let resource = Resource::Blob { key: key.into() };
        let record = StoredRecord {
            model_id: 1,
            generation: 1,
            body: serde_json::json!({ "id": 1, "path": key }),
        };
        BlobStrategy
            .sync(SyncRequest {
                context: self.secondary.strategy_context(),
                primary: &link,
                replicable_name: "upload",
                model_id: 1,
                resource: &resource,
                record: &record,
                primary_checksum: None,
                guard,
            })
            .await
    }
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn an_overtaken_blob_sync_leaves_nothing_at_the_key_and_nothing_under_tmp() {
    block_on(async {
        let d = Dirs::new();
        d.put_on_primary("pkg/a.bin", b"payload").await;
        let err = d.sync("pkg/a.bin", &Overtaken).await.unwrap_err();
        assert!(err.overtaken, "{err:?}");
        assert!(matches!(
            d.secondary
                .blob_store()
                .head(&object_path("pkg/a.bin").unwrap())
                .await,
            Err(object_store::Error::NotFound { .. })
        ));
        assert!(temporary_objects(d.secondary.blob_store()).await.is_empty());
        assert!(
            files_under(&d.path("secondary")).is_empty(),
            "{:?}",
            files_under(&d.path("secondary"))
        );
        // And with a guard that allows it, the copy appears.
        d.sync("pkg/a.bin", &AlwaysCurrent).await.unwrap();
        assert!(d.path("secondary/pkg/a.bin").is_file());
    });
}

#[test]
fn a_sync_waits_for_its_share_of_the_transfer_memory() {
    block_on(async {
        let d = Dirs::new();
        d.put_on_primary("pkg/a.bin", b"payload").await;
        let budget = replicable_strategies::blob::transfer_budget();
        // Another sync (here: the test) holds all of it: this one does not read the blob.
        let all = budget.reserve(u64::MAX).await;
        let sync = d.sync("pkg/a.bin", &AlwaysCurrent);
        tokio::pin!(sync);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(200), &mut sync)
                .await
                .is_err(),
            "the sync went on without memory"
        );
        assert!(files_under(&d.path("secondary")).is_empty());
        drop(all);
        tokio::time::timeout(std::time::Duration::from_secs(30), sync)
            .await
            .expect("freed memory lets the sync on")
            .unwrap();
        assert!(d.path("secondary/pkg/a.bin").is_file());
    });
}

#[test]
fn a_link_in_the_secondary_blob_directory_refuses_the_sync_and_writes_nothing_outside() {
    block_on(async {
        let d = Dirs::new();
        d.put_on_primary("pkg/a.bin", b"payload").await;
        std::os::unix::fs::symlink(d.path("outside"), d.path("secondary/pkg")).unwrap();
        let err = d.sync("pkg/a.bin", &AlwaysCurrent).await.unwrap_err();
        assert!(!err.missing_on_primary && !err.overtaken);
        assert!(
            err.message.contains("is refused") && err.message.contains("symbolic link"),
            "{}",
            err.message
        );
        assert!(files_under(&d.path("outside")).is_empty());
        assert!(temporary_objects(d.secondary.blob_store()).await.is_empty());
    });
}

#[test]
fn a_deleted_event_does_not_remove_a_file_behind_a_link() {
    block_on(async {
        let d = Dirs::new();
        std::fs::write(d.path("outside/a.bin"), "precious").unwrap();
        std::os::unix::fs::symlink(d.path("outside"), d.path("secondary/pkg")).unwrap();
        let record = Upload {
            id: 1,
            path: "pkg/a.bin".into(),
        };
        // Through the framework: the event is consumed, the outside file stays.
        record
            .replicator(&d.primary)
            .publish_deleted_event()
            .await
            .unwrap();
        let _ = replicable_core::log_cursor::catch_up(&d.secondary, 50).await;
        assert_eq!(
            std::fs::read_to_string(d.path("outside/a.bin")).unwrap(),
            "precious"
        );
        // And the strategy's removal itself is refused, naming the link.
        let resource = Resource::Blob {
            key: "pkg/a.bin".into(),
        };
        let target = ResourceTarget {
            replicable_name: "upload",
            model_id: 1,
            resource: &resource,
        };
        let err = BlobStrategy
            .remove(d.secondary.strategy_context(), &target)
            .await
            .unwrap_err();
        let ResourceError::Refused { reason, .. } = &err else {
            panic!("{err}");
        };
        assert!(
            reason.contains("pkg") && reason.contains("symbolic link"),
            "{reason}"
        );
        assert_eq!(
            std::fs::read_to_string(d.path("outside/a.bin")).unwrap(),
            "precious"
        );
    });
}

#[test]
fn the_primary_refuses_to_serve_a_blob_through_a_link() {
    block_on(async {
        let d = Dirs::new();
        std::fs::write(d.path("outside/secret"), "secret").unwrap();
        std::fs::create_dir_all(d.path("primary/pkg")).unwrap();
        std::os::unix::fs::symlink(d.path("outside/secret"), d.path("primary/pkg/a.bin")).unwrap();
        let link = InProcessPrimary::new(d.primary.clone());
        let err = replicable_core::PrimaryLink::open_blob(&link, "upload", 1, "pkg/a.bin")
            .await
            .unwrap_err();
        assert!(
            matches!(err, replicable_core::LinkError::Refused { .. }),
            "{err}"
        );
        let failure = d.sync("pkg/a.bin", &AlwaysCurrent).await.unwrap_err();
        assert!(!failure.missing_on_primary, "{failure:?}");
        assert!(files_under(&d.path("secondary")).is_empty());
    });
}

#[test]
fn an_unreadable_primary_blob_is_an_ordinary_failure_not_missing() {
    block_on(async {
        let d = Dirs::new();
        // Tests run as root, which reads any file: a directory where the file should be.
        std::fs::create_dir_all(d.path("primary/pkg/a.bin")).unwrap();
        let failure = d.sync("pkg/a.bin", &AlwaysCurrent).await.unwrap_err();
        assert!(!failure.missing_on_primary, "{failure:?}");
        assert!(
            failure.message.contains("not a regular file"),
            "{}",
            failure.message
        );
        // Really absent: missing on the primary.
        let failure = d.sync("pkg/none.bin", &AlwaysCurrent).await.unwrap_err();
        assert!(failure.missing_on_primary, "{failure:?}");
    });
}

#[test]
fn keys_longer_than_1024_bytes_are_refused_at_publish() {
    block_on(async {
        let h = on_disk(upload);
        let record = Upload {
            id: 1,
            path: format!("k/{}", "x".repeat(1023)),
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
            "{err}"
        );
        assert!(err.to_string().contains("longer than 1024"), "{err}");
        assert_eq!(h.primary.event_log().last_event_id().await.unwrap(), None);
    });
}
