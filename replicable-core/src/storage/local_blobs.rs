//! A local directory as a site's blob store, confined to that directory.
//!
//! [`ConfinedLocalFileSystem`] is THE way to use a local directory as a blob store:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use replicable_core::local_blobs::ConfinedLocalFileSystem;
//! # use replicable_core::Site;
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let blobs = ConfinedLocalFileSystem::new("/var/lib/app/blobs")?;
//! let db = replicable_core::storage::open("sqlite:///var/lib/app/primary.db").await?;
//! let site = Site::primary("primary").database(db).blob_store(Arc::new(blobs)).build()?;
//! # Ok(()) }
//! ```
//!
//! object_store's own `LocalFileSystem` follows symbolic links: a link `pkg -> /elsewhere`
//! planted inside the directory lets a sync write, and a `deleted` event remove, files outside
//! it, and lets a primary serve them. The wrapper refuses every key one of whose path
//! components below the root is a symbolic link before it delegates to `LocalFileSystem`
//! (reads, writes, multipart writes, deletes, renames, copies, listings); a listing leaves out
//! what lies behind a link. Keys are mapped to files by
//! [`object_path`](crate::domain::blob_key::object_path): a file's name is its key.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

use crate::domain::blob_key::resolve_beneath;
use crate::domain::error::ResourceError;

/// A local directory as a blob store that never reaches outside the directory: any key whose
/// path goes through a symbolic link below the root is refused with an error that
/// [`refusal`] turns back into the [`ResourceError::Refused`] naming the link.
#[derive(Debug, Clone)]
pub struct ConfinedLocalFileSystem {
    root: PathBuf,
    inner: Arc<LocalFileSystem>,
}

impl ConfinedLocalFileSystem {
    /// A store over the existing directory `root` (the root itself may be reached through a
    /// link; what lies below it may not).
    pub fn new(root: impl AsRef<FsPath>) -> Result<Self> {
        let inner = LocalFileSystem::new_with_prefix(root.as_ref())?;
        let root =
            std::fs::canonicalize(root.as_ref()).map_err(|e| object_store::Error::Generic {
                store: STORE,
                source: Box::new(e),
            })?;
        Ok(Self {
            root,
            inner: Arc::new(inner),
        })
    }

    /// The (canonical) directory the store is confined to.
    pub fn root(&self) -> &FsPath {
        &self.root
    }

    /// The file of `location`, once checked: no component below the root is a symbolic link.
    pub fn confined_path(&self, location: &Path) -> Result<PathBuf> {
        let full = self.inner.path_to_filesystem(location)?;
        let relative = full.strip_prefix(&self.root).map_err(|_| {
            refused_error(
                location,
                ResourceError::Refused {
                    resource: format!("blob `{location}`"),
                    reason: format!("it lies outside `{}`", self.root.display()),
                },
            )
        })?;
        resolve_beneath(&self.root, relative, &format!("blob `{location}`"))
            .map_err(|e| refused_error(location, e))
    }

    fn check(&self, location: &Path) -> Result<()> {
        self.confined_path(location).map(|_| ())
    }
}

const STORE: &str = "ConfinedLocalFileSystem";

fn refused_error(location: &Path, error: ResourceError) -> object_store::Error {
    object_store::Error::PermissionDenied {
        path: location.to_string(),
        source: Box::new(error),
    }
}

/// The refusal inside an object store error, if the error is a [`ConfinedLocalFileSystem`]
/// refusing a path through a symbolic link.
pub fn refusal(error: &object_store::Error) -> Option<&ResourceError> {
    match error {
        object_store::Error::PermissionDenied { source, .. } => source.downcast_ref(),
        _ => None,
    }
}

impl std::fmt::Display for ConfinedLocalFileSystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConfinedLocalFileSystem({})", self.root.display())
    }
}

#[async_trait]
impl ObjectStore for ConfinedLocalFileSystem {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.check(location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.check(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let file = self.confined_path(location)?;
        match self.inner.get_opts(location, options).await {
            // `LocalFileSystem` calls a directory "not found"; it is there, and unreadable.
            Err(object_store::Error::NotFound { .. })
                if std::fs::symlink_metadata(&file).is_ok_and(|m| !m.is_file()) =>
            {
                Err(object_store::Error::Generic {
                    store: STORE,
                    source: format!("`{}` exists but is not a regular file", file.display()).into(),
                })
            }
            other => other,
        }
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<bytes::Bytes>> {
        self.check(location)?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let this = self.clone();
        let checked = locations
            .map(move |location| {
                let location = location?;
                this.check(&location)?;
                Ok(location)
            })
            .boxed();
        self.inner.delete_stream(checked)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let this = self.clone();
        self.inner
            .list(prefix)
            .filter(move |meta| {
                let keep = match meta {
                    Ok(meta) => this.check(&meta.location).is_ok(),
                    Err(_) => true,
                };
                futures::future::ready(keep)
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        if let Some(prefix) = prefix {
            self.check(prefix)?;
        }
        let mut result = self.inner.list_with_delimiter(prefix).await?;
        result
            .objects
            .retain(|meta| self.check(&meta.location).is_ok());
        result.common_prefixes.retain(|p| self.check(p).is_ok());
        Ok(result)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.check(from)?;
        self.check(to)?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.check(from)?;
        self.check(to)?;
        self.inner.rename_opts(from, to, options).await
    }
}
