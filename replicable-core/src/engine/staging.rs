//! Sweeping what crashed syncs left behind: partial downloads under the blob store's reserved
//! prefix `.replicable/tmp/` and half-made clones under `<repository root>/.replicable/tmp/`.
//!
//! Every temporary a strategy makes is named `<replicable>-<id>-<anything>`. A temporary is
//! *live* while the registry row of that record is `started` and its worker heartbeats (its
//! `heartbeat_at`, or `last_synced_at` before the first heartbeat, is newer than
//! `now - claim_timeout`); everything else there is abandoned and removed. A name that does not
//! follow the pattern is removed once it is older than the claim timeout.
//!
//! Not swept here:
//! - staging ref namespaces (`refs/replicable-staging/*`) inside repositories: the next
//!   successful sync of that repository deletes them in its ref transaction;
//! - multipart uploads a crashed process never completed: object stores do not list them
//!   (S3 and GCS need a bucket lifecycle rule that aborts incomplete multipart uploads; a local
//!   directory store keeps them as hidden `<name>#<n>` files beside the temporary name).

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;

use crate::domain::blob_key::{RESERVED_PREFIX, resolve_beneath};
use crate::domain::error::{ResourceError, StoreError};
use crate::domain::registry::SyncState;
use crate::site::Site;

/// What one sweep removed and kept.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StagingSweep {
    /// Temporary objects removed from the blob store.
    pub objects_removed: Vec<String>,
    /// Temporary directories removed from the repository root.
    pub directories_removed: Vec<PathBuf>,
    /// Temporaries kept because a live sync owns them.
    pub kept: usize,
}

/// A sweep could not finish.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    /// The blob store could not be listed or a temporary object not deleted.
    #[error("sweeping the blob store's temporaries failed: {0}")]
    Blobs(#[from] object_store::Error),
    /// The registry could not be read.
    #[error("sweeping temporaries: {0}")]
    Registry(#[from] StoreError),
    /// The repository root's temporaries could not be read or removed.
    #[error("sweeping temporary clones: {0}")]
    Repositories(#[from] ResourceError),
}

/// The owner of a temporary named `<replicable>-<id>-<anything>`.
pub fn temporary_owner(file_name: &str) -> Option<(&str, i64)> {
    let (name, rest) = file_name.split_once('-')?;
    let (id, _) = rest.split_once('-')?;
    if name.is_empty() {
        return None;
    }
    Some((name, id.parse().ok()?))
}

/// Removes the temporaries under the reserved prefix of `site`'s blob store and repository root
/// that no live sync owns (see the module documentation). Safe to run at any time, from any
/// process sharing the site's registry.
pub async fn sweep_abandoned_staging(site: &Site) -> Result<StagingSweep, StagingError> {
    let claim =
        chrono::Duration::from_std(site.timeouts().claim_timeout).unwrap_or(chrono::Duration::MAX);
    // Heartbeats are written on the database's clock: compare them on it. File times are
    // this machine's.
    let alive_after = Alive {
        heartbeat_after: site.registry_store().now(site.now()).await? - claim,
        modified_after: Utc::now() - claim,
    };
    let mut sweep = StagingSweep::default();

    let store = site.blob_store();
    let prefix = Path::from(format!("{RESERVED_PREFIX}/tmp"));
    let objects: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
    for meta in objects {
        let Some(file_name) = meta.location.filename().map(str::to_owned) else {
            continue;
        };
        if is_live(site, &file_name, meta.last_modified, alive_after).await? {
            sweep.kept += 1;
            continue;
        }
        match store.delete(&meta.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        sweep.objects_removed.push(meta.location.to_string());
    }

    if let Some(dir) = site.blob_directory() {
        // An interrupted multipart write to a local directory leaves `<name>#<n>` part files,
        // which the object store's listing does not show.
        let tmp = resolve_beneath(
            dir,
            &std::path::Path::new(RESERVED_PREFIX).join("tmp"),
            "the blob staging directory",
        )?;
        sweep_part_files(site, &tmp, alive_after, &mut sweep).await?;
    }

    if let Some(root) = site.repository_root() {
        let tmp = resolve_beneath(
            root,
            &std::path::Path::new(RESERVED_PREFIX).join("tmp"),
            "the repository staging directory",
        )?;
        let io = |e: std::io::Error| ResourceError::Io {
            resource: tmp.display().to_string(),
            reason: e.to_string(),
        };
        let mut entries = match tokio::fs::read_dir(&tmp).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(sweep),
            Err(e) => return Err(io(e).into()),
        };
        while let Some(entry) = entries.next_entry().await.map_err(io)? {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let meta = match tokio::fs::symlink_metadata(entry.path()).await {
                Ok(meta) => meta,
                // Gone between the listing and now (a live sync renamed it): nothing to sweep.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(e).into()),
            };
            let modified: DateTime<Utc> =
                meta.modified().map_or_else(|_| Utc::now(), DateTime::from);
            if is_live(site, &file_name, modified, alive_after).await? {
                sweep.kept += 1;
                continue;
            }
            // A link is removed itself, never followed.
            let removed = if meta.is_dir() {
                tokio::fs::remove_dir_all(entry.path()).await
            } else {
                tokio::fs::remove_file(entry.path()).await
            };
            match removed {
                Ok(()) => sweep.directories_removed.push(entry.path()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e).into()),
            }
        }
    }
    Ok(sweep)
}

async fn sweep_part_files(
    site: &Site,
    tmp: &std::path::Path,
    alive: Alive,
    sweep: &mut StagingSweep,
) -> Result<(), StagingError> {
    let io = |e: std::io::Error| ResourceError::Io {
        resource: tmp.display().to_string(),
        reason: e.to_string(),
    };
    let mut entries = match tokio::fs::read_dir(tmp).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e).into()),
    };
    while let Some(entry) = entries.next_entry().await.map_err(io)? {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some((object, _part)) = file_name.rsplit_once('#') else {
            continue;
        };
        let meta = match tokio::fs::symlink_metadata(entry.path()).await {
            Ok(meta) => meta,
            // Gone between the listing and now (a live sync renamed it): nothing to sweep.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(e).into()),
        };
        if !meta.is_file() {
            continue;
        }
        let modified: DateTime<Utc> = meta.modified().map_or_else(|_| Utc::now(), DateTime::from);
        if is_live(site, object, modified, alive).await? {
            sweep.kept += 1;
            continue;
        }
        match tokio::fs::remove_file(entry.path()).await {
            Ok(()) => sweep
                .objects_removed
                .push(entry.path().display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e).into()),
        }
    }
    Ok(())
}

/// The cutoffs of liveness: a heartbeat (database clock) or a file time (local clock) after
/// these is alive.
#[derive(Debug, Clone, Copy)]
struct Alive {
    heartbeat_after: DateTime<Utc>,
    modified_after: DateTime<Utc>,
}

async fn is_live(
    site: &Site,
    file_name: &str,
    modified: DateTime<Utc>,
    alive: Alive,
) -> Result<bool, StoreError> {
    let Some((name, id)) = temporary_owner(file_name) else {
        return Ok(modified >= alive.modified_after);
    };
    // Reading a registry never creates tables; a name no store knows (a stray file) falls back
    // to the age rule instead of stopping the sweep.
    let row = match site.registry_store().get(name, id).await {
        Ok(Some(row)) => row,
        Ok(None) => return Ok(false),
        Err(_) => return Ok(modified >= alive.modified_after),
    };
    Ok(row.state == SyncState::Started
        && row
            .heartbeat_at
            .or(row.last_synced_at)
            .is_some_and(|at| at > alive.heartbeat_after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_read_from_temporary_names() {
        assert_eq!(
            temporary_owner("package_file-42-1700000000-00ff"),
            Some(("package_file", 42))
        );
        assert_eq!(temporary_owner("repo-7-abc"), Some(("repo", 7)));
        assert_eq!(temporary_owner("junk"), None);
        assert_eq!(temporary_owner("x-notanumber-1"), None);
        assert_eq!(temporary_owner("-1-2"), None);
    }
}
