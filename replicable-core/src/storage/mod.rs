//! Storage roles of a site, one trait each, and the in-memory backend.
//!
//! - [`EventLog`]: the primary's append-only event log;
//! - [`RecordStore`]: the primary's record catalogue (and the database strategy's copies);
//! - [`VerificationStore`]: the primary's verification rows;
//! - [`RegistryStore`]: a secondary's tracking database (registries, log cursor, skipped events).
//!
//! Every mutation of a registry or verification row is a compare-and-set on the row's `version`,
//! and work is taken with `claim_*` calls that move due rows to `started` in one step, so that
//! several workers (or processes, on a shared database) never take the same row.

mod event_log;
pub mod memory;
mod record_store;
mod registry_store;
mod verification_store;

pub use event_log::EventLog;
pub use record_store::{RecordStore, StoredRecord};
pub use registry_store::{RegistryCounts, RegistryStore};
pub use verification_store::{VerificationCounts, VerificationStore};
