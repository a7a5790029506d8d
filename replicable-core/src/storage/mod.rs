//! Storage roles of a site, one trait each, and the in-memory backend.
//!
//! - [`EventLog`]: the primary's append-only event log;
//! - [`RecordStore`]: the primary's record catalogue (and the database strategy's copies);
//! - [`RecordSource`]: one replicable's records in the application's own table, which a
//!   site's [`RoutedRecords`] reads instead of the catalogue;
//! - [`VerificationStore`]: the primary's verification rows;
//! - [`RegistryStore`]: a secondary's tracking database (registries, log cursor, skipped events).
//!
//! Every mutation of a registry or verification row is a compare-and-set on the row's `version`,
//! and work is taken with `claim_*` calls that move due rows to `started` in one step, so that
//! several workers (or processes, on a shared database) never take the same row.

mod event_log;
pub mod local_blobs;
pub mod memory;
mod record_source;
mod record_store;
mod registry_store;
mod secondary_status;
#[cfg(feature = "sql")]
pub mod sql;
mod verification_store;

pub use event_log::{CompletedVerification, EventLog, Publication, Published};
pub use record_source::{RecordSource, RoutedRecords};
pub use record_store::{RecordStore, StoredRecord};
pub use registry_store::{NotedChange, RegistryCounts, RegistryFilter, RegistryStore, SITE_SWITCH};
pub use secondary_status::SecondaryStatusRow;
pub use verification_store::{VerificationCounts, VerificationStore};

use std::sync::Arc;

use crate::domain::error::StoreError;

/// A value that fills every storage role of a site: what [`open`] returns and
/// a site builder's `database` takes (`SiteBuilder::database`).
pub trait Backend: EventLog + RecordStore + VerificationStore + RegistryStore {}

impl<T: EventLog + RecordStore + VerificationStore + RegistryStore> Backend for T {}

/// Whether the three stores are one value (one database), so that
/// [`EventLog::publish`] may write a record, its verification row and its event in one
/// transaction.
pub fn same_database(
    events: &dyn EventLog,
    records: &dyn RecordStore,
    verification: &dyn VerificationStore,
) -> bool {
    let events = events as *const dyn EventLog as *const ();
    std::ptr::eq(events, records as *const dyn RecordStore as *const ())
        && std::ptr::eq(
            events,
            verification as *const dyn VerificationStore as *const (),
        )
}

/// Whether the event log and the verification store are one value (one database), so that
/// [`EventLog::complete_verifications`] may write verification rows and their events in one
/// transaction.
pub fn log_holds_verification(events: &dyn EventLog, verification: &dyn VerificationStore) -> bool {
    std::ptr::eq(
        events as *const dyn EventLog as *const (),
        verification as *const dyn VerificationStore as *const (),
    )
}

/// Opens the database a URL names, for every storage role:
/// - `sqlite://path/to/site.db`: a SQLite file (the embedded default; created if missing);
/// - `postgres://user@host:5432/database`: PostgreSQL (feature `postgres`);
/// - `memory:`: in-memory, for tests.
pub async fn open(url: &str) -> Result<Arc<dyn Backend>, StoreError> {
    if url == "memory:" || url.starts_with("memory://") {
        return Ok(Arc::new(memory::MemoryStore::new()));
    }
    let unavailable = |feature: &str| StoreError::Open {
        url: url.split('@').next_back().unwrap_or(url).to_owned(),
        reason: format!(
            "this build has no {feature} support: enable the `{feature}` feature of replicable-core"
        ),
    };
    if url.starts_with("sqlite:") {
        #[cfg(feature = "sqlite")]
        return Ok(sql::SqlStore::open(url).await?);
        #[cfg(not(feature = "sqlite"))]
        return Err(unavailable("sqlite"));
    }
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        #[cfg(feature = "postgres")]
        return Ok(sql::SqlStore::open(url).await?);
        #[cfg(not(feature = "postgres"))]
        return Err(unavailable("postgres"));
    }
    let _ = unavailable;
    Err(StoreError::Open {
        url: url.to_owned(),
        reason: "unknown engine: use sqlite://path, postgres://host/database or memory:".into(),
    })
}
