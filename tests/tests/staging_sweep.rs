//! What a crashed sync left under `.replicable/tmp/` (a partial download in the blob store, a
//! half-made clone under the repository root) is removed by `sweep_abandoned_staging` unless a
//! live sync owns it: its registry row (SQLite) is `started` with a fresh heartbeat.

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use replicable_core::prelude::*;
use replicable_core::staging::sweep_abandoned_staging;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_temporaries_are_removed_and_live_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs");
    let repos = dir.path().join("repos");
    std::fs::create_dir_all(&blobs).unwrap();
    let primary = Site::primary("primary")
        .in_memory()
        .build()
        .expect("a site");
    let url = format!("sqlite://{}", dir.path().join("secondary.db").display());
    let secondary = Site::secondary("secondary", Arc::new(InProcessPrimary::new(primary)))
        .database(replicable_core::storage::open(&url).await.unwrap())
        .blob_directory(&blobs)
        .repository_root(&repos)
        .build()
        .expect("a site");
    let registry = secondary.registry_store();
    let now = secondary.now();

    // Record 1: failed long ago (not started). Record 2: started, heartbeating now.
    // Record 3: started, but its worker stopped heartbeating long ago. Record 4: no row.
    for id in [1, 2, 3] {
        registry.mark_pending("upload", id, now).await.unwrap();
    }
    let mut live = registry.get("upload", 2).await.unwrap().unwrap();
    live.start(now).unwrap();
    live.heartbeat_at = Some(now);
    assert!(registry.update("upload", &live).await.unwrap());
    let mut dead = registry.get("upload", 3).await.unwrap().unwrap();
    let long_ago = now - chrono::Duration::minutes(30);
    dead.start(long_ago).unwrap();
    dead.heartbeat_at = Some(long_ago);
    assert!(registry.update("upload", &dead).await.unwrap());

    let store = secondary.blob_store();
    for id in 1..=4 {
        store
            .put(
                &Path::from(format!(".replicable/tmp/upload-{id}-123-00ab")),
                PutPayload::from_static(b"partial"),
            )
            .await
            .unwrap();
        let clone = repos.join(format!(".replicable/tmp/upload-{id}-00cd"));
        std::fs::create_dir_all(clone.join("objects")).unwrap();
        std::fs::write(clone.join("HEAD"), "ref: refs/heads/main\n").unwrap();
    }

    // The part files an interrupted multipart write leaves in a local directory, which the
    // object store's listing does not show: one of a dead sync, one of the live one.
    for id in [2, 3] {
        std::fs::write(
            blobs.join(format!(".replicable/tmp/upload-{id}-456-00ef#1")),
            b"part",
        )
        .unwrap();
    }

    let sweep = sweep_abandoned_staging(&secondary).await.unwrap();
    assert_eq!(sweep.kept, 3, "{sweep:?}");
    let mut removed = sweep.objects_removed.clone();
    removed.sort();
    let mut expected: Vec<String> = [1, 3, 4]
        .iter()
        .map(|id| format!(".replicable/tmp/upload-{id}-123-00ab"))
        .collect();
    expected.push(
        blobs
            .join(".replicable/tmp/upload-3-456-00ef#1")
            .display()
            .to_string(),
    );
    expected.sort();
    assert_eq!(removed, expected);
    assert_eq!(sweep.directories_removed.len(), 3, "{sweep:?}");

    let left: Vec<String> = std::fs::read_dir(blobs.join(".replicable/tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut left = left;
    left.sort();
    assert_eq!(left, ["upload-2-123-00ab", "upload-2-456-00ef#1"]);
    let left: Vec<String> = std::fs::read_dir(repos.join(".replicable/tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["upload-2-00cd"]);

    // Nothing to do the second time.
    let again = sweep_abandoned_staging(&secondary).await.unwrap();
    assert!(again.objects_removed.is_empty() && again.directories_removed.is_empty());
    assert_eq!(again.kept, 3);
}
