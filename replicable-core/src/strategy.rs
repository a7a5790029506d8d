//! The strategy trait: the data-type specific part of replication.
//!
//! The framework drives the registry, retries, events and verification; a strategy only knows how
//! to copy one resource from the primary, compute its checksum, remove it, and (for the shared
//! test suite) make a sample of it. The built-in strategies live in `replicable-strategies`;
//! users may write their own.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use object_store::ObjectStore;

use crate::domain::error::ResourceError;
use crate::domain::event::EventKind;
use crate::domain::failure::SyncFailure;
use crate::domain::resource::{DataType, Resource};
use crate::link::PrimaryLink;
use crate::storage::{RecordStore, StoredRecord};

/// The resource of one record, as strategies see it: which replicable and record it belongs to,
/// and where it lives.
#[derive(Debug, Clone, Copy)]
pub struct ResourceTarget<'a> {
    /// The replicable's name.
    pub replicable_name: &'a str,
    /// The record's id.
    pub model_id: i64,
    /// Where the resource lives.
    pub resource: &'a Resource,
}

impl std::fmt::Display for ResourceTarget<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} {}",
            self.resource, self.replicable_name, self.model_id
        )
    }
}

/// What a strategy may use of a site: its name, its record store, its object store, its
/// repository root and how long one external command may run. A site gives its own with
/// `Site::strategy_context`; tools and tests of a strategy on its own may build one.
///
/// Cheap to clone: the stores are shared handles.
#[derive(Clone)]
pub struct StrategyContext {
    site_name: Arc<str>,
    records: Arc<dyn RecordStore>,
    blobs: Arc<dyn ObjectStore>,
    repository_root: Option<PathBuf>,
    command_timeout: Duration,
}

impl std::fmt::Debug for StrategyContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StrategyContext")
            .field("site_name", &self.site_name)
            .field("blobs", &self.blobs.to_string())
            .field("repository_root", &self.repository_root)
            .field("command_timeout", &self.command_timeout)
            .finish_non_exhaustive()
    }
}

impl StrategyContext {
    /// How long one external command may run unless set otherwise (1 hour).
    pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(3600);

    /// The context of site `site_name` with its record store and object store, no repository
    /// root, and the default command timeout.
    pub fn new(
        site_name: impl Into<String>,
        records: Arc<dyn RecordStore>,
        blobs: Arc<dyn ObjectStore>,
    ) -> Self {
        Self {
            site_name: site_name.into().into(),
            records,
            blobs,
            repository_root: None,
            command_timeout: Self::DEFAULT_COMMAND_TIMEOUT,
        }
    }

    /// Sets the directory holding the site's git repositories.
    pub fn with_repository_root(mut self, root: Option<PathBuf>) -> Self {
        self.repository_root = root;
        self
    }

    /// Sets how long one external command (a `git clone`, a `git fetch`) may run before it is
    /// killed and the sync failed.
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// The site's name.
    pub fn site_name(&self) -> &str {
        &self.site_name
    }

    /// The site's record store (the primary's catalogue; the database strategy's copies on a
    /// secondary).
    pub fn records(&self) -> &dyn RecordStore {
        &*self.records
    }

    /// The object store holding the site's blobs.
    pub fn blob_store(&self) -> &Arc<dyn ObjectStore> {
        &self.blobs
    }

    /// The directory holding the site's git repositories, if it has one.
    pub fn repository_root(&self) -> Option<&Path> {
        self.repository_root.as_deref()
    }

    /// How long one external command of a strategy may run.
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }
}

/// What a strategy needs to copy one resource to a secondary.
pub struct SyncRequest<'a> {
    /// The secondary site the copy is made on, as strategies see it.
    pub context: &'a StrategyContext,
    /// How the secondary reads the primary.
    pub primary: &'a dyn PrimaryLink,
    /// The replicable's name.
    pub replicable_name: &'static str,
    /// The record's id.
    pub model_id: i64,
    /// Where the resource lives.
    pub resource: &'a Resource,
    /// The record as the primary has it now.
    pub record: &'a StoredRecord,
    /// The primary's checksum of the resource, if it has computed one.
    pub primary_checksum: Option<&'a str>,
    /// Decides whether the staged copy may still become visible.
    pub guard: &'a dyn SyncGuard,
}

/// Decides, right before a staged copy becomes visible, whether the sync that staged it is still
/// current: its registry row is still the one it started, no change or deletion arrived while it
/// ran, and the generation it copies is not older than the one recorded.
#[async_trait]
pub trait SyncGuard: Send + Sync {
    /// `Ok` if the copy may become visible now; a [`SyncFailure::overtaken`] otherwise.
    async fn ensure_current(&self) -> Result<(), SyncFailure>;
}

/// A guard that lets every copy through: for strategies driven outside a registry (tools,
/// tests of a strategy on its own).
#[derive(Debug, Default, Clone, Copy)]
pub struct AlwaysCurrent;

#[async_trait]
impl SyncGuard for AlwaysCurrent {
    async fn ensure_current(&self) -> Result<(), SyncFailure> {
        Ok(())
    }
}

impl SyncRequest<'_> {
    /// Call right before the step that makes the staged copy visible (a rename into place, a ref
    /// update, a row write, the one put of a small blob already checked in memory), and make it
    /// visible only on `Ok`. On `Err` the sync was overtaken: discard the staged copy and return
    /// the error. The step itself should be short (a rename or a put of bytes in hand, not a
    /// download), since a change that arrives between the check and the step is only caught by
    /// the registry write after it (the record is then synced again; a deleted one's copy is
    /// removed).
    pub async fn ensure_current(&self) -> Result<(), SyncFailure> {
        self.guard.ensure_current().await
    }

    /// The resource being synced.
    pub fn target(&self) -> ResourceTarget<'_> {
        ResourceTarget {
            replicable_name: self.replicable_name,
            model_id: self.model_id,
            resource: self.resource,
        }
    }
}

/// The data-type specific part of a replicator.
///
/// A strategy is a stateless value made with `Default`; everything it works on comes from the
/// site's [`StrategyContext`] and the request.
#[async_trait]
pub trait Strategy: Default + Send + Sync + 'static {
    /// The name shown in errors and status (`"BlobStrategy"`).
    const NAME: &'static str;

    /// The data type this strategy replicates.
    const DATA_TYPE: DataType;

    /// Whether a resource can change after it was created (whether `updated` events exist).
    const MUTABLE: bool;

    /// Whether resources are checksummed and verified.
    const VERIFIABLE: bool = true;

    /// Whether this strategy publishes and consumes events of `kind`.
    fn supports(kind: EventKind) -> bool {
        match kind {
            EventKind::Created | EventKind::Deleted => true,
            EventKind::Updated => Self::MUTABLE,
            EventKind::ChecksumSucceeded => Self::VERIFIABLE,
        }
    }

    /// Checks a resource's location before anything is published or removed (a blob key that
    /// would escape the store's root is refused here). The default accepts everything.
    fn validate(resource: &Resource) -> Result<(), ResourceError> {
        let _ = resource;
        Ok(())
    }

    /// Copies the resource from the primary onto the site of `request.context`.
    ///
    /// The copy must not become visible under its real location before it is complete and, when
    /// `primary_checksum` is given, before its checksum matches. Stage it first (a temporary
    /// object, a temporary repository or ref namespace), then call
    /// [`SyncRequest::ensure_current`] and make it visible only if that succeeds; an overtaken
    /// sync discards its staged copy and returns the guard's error. A resource that does not exist on
    /// the primary is a [`SyncFailure::missing_on_primary`]. After a successful copy the framework
    /// stores the primary's record in the site's record store, so strategies whose resource is
    /// the record have nothing to copy.
    async fn sync(&self, request: SyncRequest<'_>) -> Result<(), SyncFailure>;

    /// Removes the local copy of a resource. Removing one that does not exist succeeds.
    async fn remove(
        &self,
        context: &StrategyContext,
        target: &ResourceTarget<'_>,
    ) -> Result<(), ResourceError>;

    /// The checksum of the resource as the site of `context` holds it (lower-case hex).
    ///
    /// `record` is the record as that site stores it, for strategies whose resource is the record.
    async fn checksum(
        &self,
        context: &StrategyContext,
        target: &ResourceTarget<'_>,
        record: Option<&StoredRecord>,
    ) -> Result<String, ResourceError>;

    /// Makes a sample resource on the site of `context` for the shared test suite, derived from `seed`, for the
    /// record serialized as `record`, and returns its checksum computed independently of
    /// [`Strategy::checksum`].
    async fn create_fixture(
        &self,
        context: &StrategyContext,
        target: &ResourceTarget<'_>,
        record: &serde_json::Value,
        seed: u64,
    ) -> Result<String, ResourceError>;

    /// Damages the local copy of a resource behind the framework's back, for the shared test
    /// suite's corruption checks.
    async fn corrupt(
        &self,
        context: &StrategyContext,
        target: &ResourceTarget<'_>,
    ) -> Result<(), ResourceError>;
}

/// The strategy the derive puts in place when the model's attributes have errors, so that the
/// compile errors are not followed by a cascade. It cannot do anything.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct UnresolvedStrategy;

#[async_trait]
impl Strategy for UnresolvedStrategy {
    const NAME: &'static str = "UnresolvedStrategy";
    const DATA_TYPE: DataType = DataType::Database;
    const MUTABLE: bool = false;
    const VERIFIABLE: bool = false;

    async fn sync(&self, _: SyncRequest<'_>) -> Result<(), SyncFailure> {
        Err(SyncFailure::new(
            "the model's #[derive(Replicable)] did not compile",
        ))
    }

    async fn remove(
        &self,
        _: &StrategyContext,
        target: &ResourceTarget<'_>,
    ) -> Result<(), ResourceError> {
        Err(unresolved(target))
    }

    async fn checksum(
        &self,
        _: &StrategyContext,
        target: &ResourceTarget<'_>,
        _: Option<&StoredRecord>,
    ) -> Result<String, ResourceError> {
        Err(unresolved(target))
    }

    async fn create_fixture(
        &self,
        _: &StrategyContext,
        target: &ResourceTarget<'_>,
        _: &serde_json::Value,
        _: u64,
    ) -> Result<String, ResourceError> {
        Err(unresolved(target))
    }

    async fn corrupt(
        &self,
        _: &StrategyContext,
        target: &ResourceTarget<'_>,
    ) -> Result<(), ResourceError> {
        Err(unresolved(target))
    }
}

fn unresolved(target: &ResourceTarget<'_>) -> ResourceError {
    ResourceError::Io {
        resource: target.to_string(),
        reason: "the model's #[derive(Replicable)] did not compile".into(),
    }
}
