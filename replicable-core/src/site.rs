//! Sites: the primary, where records are written, and secondaries, which replicate it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::ObjectStore;
use object_store::memory::InMemory;

use crate::domain::clock::{Clock, SystemClock};
use crate::domain::retry::RetryPolicy;
use crate::domain::selective_sync::SelectiveSync;
use crate::link::{PrimaryLink, PrimaryStores};
use crate::observer::SyncObserver;
use crate::storage::memory::MemoryStore;
use crate::storage::{
    Backend, EventLog, RecordSource, RecordStore, RegistryStore, RoutedRecords, VerificationStore,
};
use crate::strategy::StrategyContext;

/// Whether a site is the primary or a secondary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SiteRole {
    /// Records are written here and events are published here.
    Primary,
    /// Replicates the primary.
    Secondary,
}

impl SiteRole {
    /// The lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Secondary => "secondary",
        }
    }
}

/// How long work may stay `started` before it is taken for dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A sync stuck in `started` longer than this is failed (default 8 hours).
    pub sync: Duration,
    /// A verification stuck in `started` longer than this is failed (default 8 hours).
    pub verification: Duration,
    /// How often a worker holding a claim says it is alive (default 5 seconds).
    pub heartbeat_interval: Duration,
    /// A claim with no heartbeat for this long lost its worker and is failed, to be retried
    /// (default 1 minute).
    pub claim_timeout: Duration,
    /// How long the log cursor's lease lasts without renewal (default 30 seconds).
    pub cursor_lease: Duration,
    /// How long one external command of a strategy (a `git clone`, a `git fetch`) may run
    /// before it is killed and the sync failed (default 1 hour).
    pub command: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            sync: Duration::from_secs(8 * 3600),
            verification: Duration::from_secs(8 * 3600),
            heartbeat_interval: Duration::from_secs(5),
            claim_timeout: Duration::from_secs(60),
            cursor_lease: Duration::from_secs(30),
            command: StrategyContext::DEFAULT_COMMAND_TIMEOUT,
        }
    }
}

impl Timeouts {
    /// The cutoffs for stuck work at `now`.
    pub fn cutoffs(&self, now: DateTime<Utc>) -> crate::domain::registry::StuckCutoffs {
        let before =
            |d: Duration| now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        crate::domain::registry::StuckCutoffs {
            sync_started_before: before(self.sync),
            verification_started_before: before(self.verification),
            heartbeat_before: before(self.claim_timeout),
        }
    }
}

struct Inner {
    name: String,
    role: SiteRole,
    event_log: Arc<dyn EventLog>,
    records: Arc<dyn RecordStore>,
    catalogue: Arc<dyn RecordStore>,
    sources: HashMap<String, Arc<dyn RecordSource>>,
    verification: Arc<dyn VerificationStore>,
    registry: Arc<dyn RegistryStore>,
    blobs: Arc<dyn ObjectStore>,
    blob_directory: Option<PathBuf>,
    repository_root: Option<PathBuf>,
    primary: Option<Arc<dyn PrimaryLink>>,
    selective_sync: SelectiveSync,
    clock: Arc<dyn Clock>,
    retry: RetryPolicy,
    timeouts: Timeouts,
    observer: Option<Arc<dyn SyncObserver>>,
    strategy: StrategyContext,
}

/// A site and its stores. Cheap to clone: clones share everything.
#[derive(Clone)]
pub struct Site {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site")
            .field("name", &self.inner.name)
            .field("role", &self.inner.role)
            .field("blobs", &self.inner.blobs.to_string())
            .field("repository_root", &self.inner.repository_root)
            .finish_non_exhaustive()
    }
}

impl Site {
    /// Starts building the primary site.
    pub fn primary(name: impl Into<String>) -> SiteBuilder {
        SiteBuilder::new(name.into(), SiteRole::Primary, None)
    }

    /// Starts building a secondary site that reads its primary through `primary`.
    pub fn secondary(name: impl Into<String>, primary: Arc<dyn PrimaryLink>) -> SiteBuilder {
        SiteBuilder::new(name.into(), SiteRole::Secondary, Some(primary))
    }

    /// The site's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Primary or secondary.
    pub fn role(&self) -> SiteRole {
        self.inner.role
    }

    /// Whether this is the primary.
    pub fn is_primary(&self) -> bool {
        self.inner.role == SiteRole::Primary
    }

    /// The event log (written on the primary).
    pub fn event_log(&self) -> &dyn EventLog {
        &*self.inner.event_log
    }

    /// The record store (the primary's catalogue; the database strategy's copies on a
    /// secondary), which sends the replicables given a [`RecordSource`] to it
    /// ([`SiteBuilder::record_source`]).
    pub fn records(&self) -> &dyn RecordStore {
        &*self.inner.records
    }

    /// The catalogue alone: the record store given to the builder, without the sources.
    pub fn catalogue(&self) -> &dyn RecordStore {
        &*self.inner.catalogue
    }

    /// The record source of replicable `name`, if it was given one.
    pub fn record_source(&self, name: &str) -> Option<&Arc<dyn RecordSource>> {
        self.inner.sources.get(name)
    }

    /// The primary's verification rows.
    pub fn verification_store(&self) -> &dyn VerificationStore {
        &*self.inner.verification
    }

    /// The secondary's tracking database.
    pub fn registry_store(&self) -> &dyn RegistryStore {
        &*self.inner.registry
    }

    /// The object store holding this site's blobs.
    pub fn blob_store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner.blobs
    }

    /// The local directory holding this site's blobs, when it was given with
    /// [`SiteBuilder::blob_directory`].
    pub fn blob_directory(&self) -> Option<&Path> {
        self.inner.blob_directory.as_deref()
    }

    /// The directory holding this site's git repositories, if it has one.
    pub fn repository_root(&self) -> Option<&Path> {
        self.inner.repository_root.as_deref()
    }

    /// How a secondary reads its primary (`None` on the primary).
    pub fn primary_link(&self) -> Option<&dyn PrimaryLink> {
        self.inner.primary.as_deref()
    }

    /// Which records this site replicates.
    pub fn selective_sync(&self) -> &SelectiveSync {
        &self.inner.selective_sync
    }

    /// The current time by the site's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    /// The retry schedule.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.inner.retry
    }

    /// The stuck-work timeouts.
    pub fn timeouts(&self) -> &Timeouts {
        &self.inner.timeouts
    }

    /// The observer of this site's syncs, if one was set.
    pub fn sync_observer(&self) -> Option<&dyn SyncObserver> {
        self.inner.observer.as_deref()
    }

    /// What strategies may use of this site: its name, record store, object store, repository
    /// root and command timeout.
    pub fn strategy_context(&self) -> &StrategyContext {
        &self.inner.strategy
    }
}

/// The stores an in-process link to this site reads (`InProcessPrimary::new(&primary)`).
impl From<&Site> for PrimaryStores {
    fn from(site: &Site) -> Self {
        let inner = &site.inner;
        PrimaryStores {
            event_log: inner.event_log.clone(),
            records: inner.records.clone(),
            verification: inner.verification.clone(),
            blobs: inner.blobs.clone(),
            repository_root: inner.repository_root.clone(),
            registry: inner.registry.clone(),
        }
    }
}

impl From<Site> for PrimaryStores {
    fn from(site: Site) -> Self {
        Self::from(&site)
    }
}

/// A site could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SiteError {
    /// No database was given for some storage roles. A site keeps its event log, registries and
    /// verification rows in a database (`SiteBuilder::database(storage::open(url)?)`); keeping
    /// them in memory, lost on restart, is something to ask for by name
    /// ([`SiteBuilder::in_memory`]).
    #[error(
        "site `{site}` has no database for its {roles}: give it one with \
         `.database(replicable_core::storage::open(\"sqlite://...\").await?)`, or ask for \
         `.in_memory()` (tests only: everything is lost on restart)"
    )]
    NoDatabase {
        /// The site.
        site: String,
        /// The storage roles without a store.
        roles: String,
    },
    /// The blob directory cannot be used.
    #[error("site `{site}`: the blob directory {} cannot be used: {reason}", dir.display())]
    BlobDirectory {
        /// The site.
        site: String,
        /// The directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Builds a [`Site`]. Every storage role needs a store: [`database`](Self::database) gives one
/// database to all of them; [`in_memory`](Self::in_memory) asks for memory stores (tests).
pub struct SiteBuilder {
    name: String,
    role: SiteRole,
    primary: Option<Arc<dyn PrimaryLink>>,
    event_log: Option<Arc<dyn EventLog>>,
    records: Option<Arc<dyn RecordStore>>,
    sources: HashMap<String, Arc<dyn RecordSource>>,
    verification: Option<Arc<dyn VerificationStore>>,
    registry: Option<Arc<dyn RegistryStore>>,
    blobs: Option<Arc<dyn ObjectStore>>,
    blob_directory: Option<PathBuf>,
    repository_root: Option<PathBuf>,
    selective_sync: SelectiveSync,
    clock: Arc<dyn Clock>,
    retry: RetryPolicy,
    timeouts: Timeouts,
    observer: Option<Arc<dyn SyncObserver>>,
}

impl SiteBuilder {
    fn new(name: String, role: SiteRole, primary: Option<Arc<dyn PrimaryLink>>) -> Self {
        Self {
            name,
            role,
            primary,
            event_log: None,
            records: None,
            sources: HashMap::new(),
            verification: None,
            registry: None,
            blobs: None,
            blob_directory: None,
            repository_root: None,
            selective_sync: SelectiveSync::all(),
            clock: Arc::new(SystemClock),
            retry: RetryPolicy::default(),
            timeouts: Timeouts::default(),
            observer: None,
        }
    }

    /// Uses one database for every storage role (event log, records, verification, registry),
    /// e.g. what [`storage::open`](crate::storage::open) returns for a URL.
    pub fn database(mut self, database: Arc<dyn Backend>) -> Self {
        self.event_log = Some(database.clone());
        self.records = Some(database.clone());
        self.verification = Some(database.clone());
        self.registry = Some(database);
        self
    }

    /// Keeps every storage role not given otherwise in memory, and blobs in an in-memory object
    /// store if none is given: for tests and examples only, since everything is lost when the
    /// process ends.
    pub fn in_memory(mut self) -> Self {
        let memory = Arc::new(MemoryStore::new());
        self.event_log.get_or_insert_with(|| memory.clone());
        self.records.get_or_insert_with(|| memory.clone());
        self.verification.get_or_insert_with(|| memory.clone());
        self.registry.get_or_insert_with(|| memory.clone());
        self.blobs.get_or_insert_with(|| Arc::new(InMemory::new()));
        self
    }

    /// The event log.
    pub fn event_log(mut self, store: Arc<dyn EventLog>) -> Self {
        self.event_log = Some(store);
        self
    }

    /// The record store.
    pub fn records(mut self, store: Arc<dyn RecordStore>) -> Self {
        self.records = Some(store);
        self
    }

    /// Reads (and on a secondary, writes) the records of replicable `name` in the application's
    /// own table instead of the catalogue: on a primary, the links, backfill and verification
    /// find every row of the table, published or not, and a publish bumps the row's generation
    /// rather than storing its body; on a secondary, synced copies land in the table. See
    /// [`RecordSource`] and the ready
    /// [`SqlTable`](crate::storage::sql::SqlTable) (feature `sqlite` or `postgres`).
    pub fn record_source(mut self, name: &str, source: impl Into<Arc<dyn RecordSource>>) -> Self {
        self.sources.insert(name.to_owned(), source.into());
        self
    }

    /// The verification store.
    pub fn verification_store(mut self, store: Arc<dyn VerificationStore>) -> Self {
        self.verification = Some(store);
        self
    }

    /// The registry store.
    pub fn registry_store(mut self, store: Arc<dyn RegistryStore>) -> Self {
        self.registry = Some(store);
        self
    }

    /// The object store for blobs.
    pub fn blob_store(mut self, store: Arc<dyn ObjectStore>) -> Self {
        self.blobs = Some(store);
        self
    }

    /// Keeps blobs in the local directory `dir` (created if missing), confined to it
    /// ([`ConfinedLocalFileSystem`](crate::storage::local_blobs::ConfinedLocalFileSystem)). Unlike
    /// [`blob_store`](Self::blob_store) with such a store, the site knows the directory, so the
    /// staging sweep also removes the part files an interrupted multipart write leaves there.
    pub fn blob_directory(mut self, dir: impl Into<PathBuf>) -> Self {
        self.blob_directory = Some(dir.into());
        self
    }

    /// The directory of git repositories.
    pub fn repository_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.repository_root = Some(root.into());
        self
    }

    /// Which records to replicate (secondaries).
    pub fn selective_sync(mut self, scope: SelectiveSync) -> Self {
        self.selective_sync = scope;
        self
    }

    /// The clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The retry schedule.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The stuck-work timeouts.
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Observes this site's syncs (see [`SyncObserver`]).
    pub fn sync_observer(mut self, observer: Arc<dyn SyncObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Builds the site. Refused when a storage role has no store (see [`SiteError`]). A site
    /// without a blob store gets an in-memory one (only blob replicables use it).
    pub fn build(self) -> Result<Site, SiteError> {
        let missing: Vec<&str> = [
            ("event log", self.event_log.is_none()),
            ("records", self.records.is_none()),
            ("verification rows", self.verification.is_none()),
            ("registry", self.registry.is_none()),
        ]
        .into_iter()
        .filter_map(|(role, missing)| missing.then_some(role))
        .collect();
        let (Some(event_log), Some(records), Some(verification), Some(registry)) = (
            self.event_log,
            self.records,
            self.verification,
            self.registry,
        ) else {
            return Err(SiteError::NoDatabase {
                site: self.name,
                roles: missing.join(", "),
            });
        };
        let mut blobs = self.blobs;
        if let Some(dir) = &self.blob_directory {
            let confined = std::fs::create_dir_all(dir)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    crate::storage::local_blobs::ConfinedLocalFileSystem::new(dir)
                        .map_err(|e| e.to_string())
                })
                .map_err(|reason| SiteError::BlobDirectory {
                    site: self.name.clone(),
                    dir: dir.clone(),
                    reason,
                })?;
            blobs = Some(Arc::new(confined));
        }
        let blobs = blobs.unwrap_or_else(|| Arc::new(InMemory::new()));
        let catalogue = records.clone();
        let records: Arc<dyn RecordStore> = if self.sources.is_empty() {
            records
        } else {
            Arc::new(RoutedRecords::new(records, self.sources.clone()))
        };
        let strategy = StrategyContext::new(self.name.clone(), records.clone(), blobs.clone())
            .with_repository_root(self.repository_root.clone())
            .with_command_timeout(self.timeouts.command);
        Ok(Site {
            inner: Arc::new(Inner {
                name: self.name,
                role: self.role,
                event_log,
                records,
                catalogue,
                sources: self.sources,
                verification,
                registry,
                blobs,
                blob_directory: self.blob_directory,
                repository_root: self.repository_root,
                primary: self.primary,
                selective_sync: self.selective_sync,
                clock: self.clock,
                retry: self.retry,
                timeouts: self.timeouts,
                observer: self.observer,
                strategy,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_without_a_database_is_refused() {
        let err = Site::primary("p").build().unwrap_err();
        let text = err.to_string();
        assert!(text.contains("site `p` has no database"), "{text}");
        assert!(
            text.contains("event log, records, verification rows, registry"),
            "{text}"
        );
        let partial = Site::primary("p")
            .event_log(Arc::new(MemoryStore::new()))
            .build()
            .unwrap_err();
        assert!(
            partial
                .to_string()
                .contains("records, verification rows, registry")
        );
    }

    #[test]
    fn in_memory_is_asked_for_by_name() {
        let site = Site::primary("p").in_memory().build().unwrap();
        assert!(site.is_primary());
    }
}
