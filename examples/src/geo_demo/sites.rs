//! Opening the demo's sites: a data directory per site holding its SQLite file (unless a
//! database URL is given), its blobs and its bare git repositories.
//!
//! ```text
//! DIR/site.db          the site's database (event log, catalogue, verification, registry)
//! DIR/blobs/           the blob store (`ConfinedLocalFileSystem`)
//! DIR/repositories/    bare git repositories
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use replicable_core::descriptor::ReplicableDescriptor;
use replicable_core::engine::EngineConfig;
use replicable_core::local_blobs::ConfinedLocalFileSystem;
use replicable_core::observer::SyncObserver;
use replicable_core::site::Timeouts;
use replicable_core::storage::Backend;
use replicable_core::storage::sql::{SqlOptions, SqlStore};
use replicable_core::{InProcessPrimary, PrimaryLink, Site, find_replicable};

use crate::{CiSetting, PackageFile, Project};

/// The error type of the demo.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Where one site keeps its data.
#[derive(Debug, Clone)]
pub struct SiteLocation {
    /// The site's data directory (blobs, repositories, and the SQLite file by default).
    pub data: PathBuf,
    /// A database URL (`sqlite://...` or `postgres://...`) instead of `DIR/site.db`.
    pub database: Option<String>,
    /// PostgreSQL only: the schema holding the site's tables.
    pub schema: Option<String>,
    /// Only open a site that exists (for commands that look at it: `status`, `admin`): a
    /// misspelt data directory is an error, not a new empty site.
    pub existing_only: bool,
}

impl SiteLocation {
    /// A site kept entirely under `data` (SQLite file, blobs, repositories).
    pub fn embedded(data: impl Into<PathBuf>) -> Self {
        Self::new(data, None, None)
    }

    /// A site with its data under `data` and its database at `database` (if given). The data
    /// directory is made absolute: git fetches run in the secondary's repository, where a
    /// relative path to the primary's would not resolve.
    pub fn new(data: impl Into<PathBuf>, database: Option<String>, schema: Option<String>) -> Self {
        let data = data.into();
        Self {
            data: std::path::absolute(&data).unwrap_or(data),
            database,
            schema,
            existing_only: false,
        }
    }

    /// The same location, opened only if its database exists.
    pub fn existing(mut self) -> Self {
        self.existing_only = true;
        self
    }

    /// The blob directory.
    pub fn blobs(&self) -> PathBuf {
        self.data.join("blobs")
    }

    /// The repository root.
    pub fn repositories(&self) -> PathBuf {
        self.data.join("repositories")
    }

    /// The database URL: the one given, or the SQLite file in the data directory.
    pub fn database_url(&self) -> String {
        self.database
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data.join("site.db").display()))
    }

    /// Opens (creating, unless [`existing_only`](Self::existing_only), and migrating) the
    /// site's database.
    pub async fn open_database(&self) -> Result<Arc<dyn Backend>, Error> {
        if !self.existing_only {
            std::fs::create_dir_all(&self.data)?;
        }
        let options = SqlOptions {
            schema: self.schema.clone(),
            create_if_missing: !self.existing_only,
            ..SqlOptions::default()
        };
        Ok(SqlStore::open_with(&self.database_url(), options).await?)
    }

    /// The blob store (created if missing).
    pub fn blob_store(&self) -> Result<Arc<dyn ObjectStore>, Error> {
        let dir = self.blobs();
        std::fs::create_dir_all(&dir)?;
        Ok(Arc::new(ConfinedLocalFileSystem::new(&dir)?))
    }

    /// Where the blob stored under `key` lives on disk.
    pub fn blob_file(&self, key: &str) -> PathBuf {
        self.blobs().join(key)
    }

    /// Where the repository at `disk_path` lives on disk.
    pub fn repository_dir(&self, disk_path: &str) -> PathBuf {
        self.repositories().join(disk_path)
    }
}

/// The three replicables of the example application, in the order they are shown.
pub fn replicables() -> Result<Vec<&'static ReplicableDescriptor>, Error> {
    // Registered by hand too: inventory sees nothing in a crate that is linked but not
    // referenced (registering twice is harmless).
    replicable_core::descriptor::register::<PackageFile>();
    replicable_core::descriptor::register::<Project>();
    replicable_core::descriptor::register::<CiSetting>();
    ["package_file", "project", "ci_setting"]
        .into_iter()
        .map(|name| {
            find_replicable(name)?.ok_or_else(|| Error::from(format!("{name} is not registered")))
        })
        .collect()
}

/// Timeouts for the demo and the tests: a cursor lease of `cursor_lease` and claims that go
/// stale after `claim_timeout` (heartbeats at a fifth of it), the rest as default.
pub fn short_timeouts(cursor_lease: Duration, claim_timeout: Duration) -> Timeouts {
    Timeouts {
        cursor_lease,
        claim_timeout,
        heartbeat_interval: (claim_timeout / 5).max(Duration::from_millis(100)),
        ..Timeouts::default()
    }
}

/// The engine settings `geo-demo run` uses: loops that poll often and periodic passes every few
/// seconds, so that the demo shows each behaviour within a minute.
pub fn demo_config() -> EngineConfig {
    let mut config = EngineConfig::default();
    config.idle.min = Duration::from_millis(50);
    config.idle.max = Duration::from_millis(500);
    config.periods.stuck_sweep = Duration::from_secs(2);
    config.periods.backfill = Duration::from_secs(5);
    config.periods.verification_maintenance = Duration::from_secs(5);
    config.shutdown_deadline = Duration::from_secs(10);
    config
}

/// Opens the primary site at `location`.
pub async fn open_primary(location: &SiteLocation, timeouts: Timeouts) -> Result<Site, Error> {
    let database = location.open_database().await?;
    std::fs::create_dir_all(location.repositories())?;
    Ok(Site::primary("primary")
        .database(database)
        .blob_directory(location.blobs())
        .repository_root(location.repositories())
        .timeouts(timeouts)
        .build()?)
}

/// Wraps a secondary's link to its primary.
pub type WrapLink = Box<dyn FnOnce(Arc<dyn PrimaryLink>) -> Arc<dyn PrimaryLink> + Send>;

/// How a secondary is opened.
pub struct SecondaryOptions {
    /// The stuck-work timeouts and the cursor lease.
    pub timeouts: Timeouts,
    /// Wraps the link to the primary (tests put faults or delays in it).
    pub wrap_link: WrapLink,
    /// Observes the secondary's syncs.
    pub observer: Option<Arc<dyn SyncObserver>>,
}

impl std::fmt::Debug for SecondaryOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecondaryOptions")
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl SecondaryOptions {
    /// Plain options: the link as it is, no observer.
    pub fn new(timeouts: Timeouts) -> Self {
        Self {
            timeouts,
            wrap_link: Box::new(|link| link),
            observer: None,
        }
    }
}

/// Opens a secondary at `location` that reads `primary` through an [`InProcessPrimary`] (its
/// stores, directly).
pub async fn open_secondary(
    location: &SiteLocation,
    primary: &Site,
    options: SecondaryOptions,
) -> Result<Site, Error> {
    open_linked_secondary(
        location,
        Arc::new(InProcessPrimary::new(primary.clone())),
        options,
    )
    .await
}

/// Opens a secondary at `location` that reads its primary through `link` (the HTTP link of a
/// primary on another machine, for example).
pub async fn open_linked_secondary(
    location: &SiteLocation,
    link: Arc<dyn PrimaryLink>,
    options: SecondaryOptions,
) -> Result<Site, Error> {
    let database = location.open_database().await?;
    std::fs::create_dir_all(location.repositories())?;
    let link = (options.wrap_link)(link);
    let mut builder = Site::secondary("secondary", link)
        .database(database)
        .blob_directory(location.blobs())
        .repository_root(location.repositories())
        .timeouts(options.timeouts);
    if let Some(observer) = options.observer {
        builder = builder.sync_observer(observer);
    }
    Ok(builder.build()?)
}

/// Files left under a site's temporary locations (`.replicable/tmp` of its blob directory and
/// of its repository root).
pub fn leftover_temporaries(location: &SiteLocation) -> Vec<PathBuf> {
    let mut left = Vec::new();
    for root in [location.blobs(), location.repositories()] {
        let tmp = root.join(".replicable").join("tmp");
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            left.extend(entries.flatten().map(|e| e.path()));
        }
    }
    left
}
