//! # replicable-core
//!
//! The runtime of the replicable framework: a model annotated with `#[derive(Replicable)]` and a
//! strategy gets events on the primary, consumption, sync with retries and backoff, a registry,
//! verification on both sides, backfill and status on secondaries.
//!
//! ```ignore
//! use replicable_core::prelude::*;
//! use replicable_strategies::BlobStrategy;
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Replicable)]
//! #[replicator(BlobStrategy)]
//! pub struct PackageFile {
//!     #[replicable(id)]   pub id: i64,
//!     #[replicable(blob)] pub file_path: String,
//! }
//!
//! let replicator = package_file.replicator(&primary);
//! replicator.publish_created_event().await?;
//! ```
//!
//! An application that keeps its records in its own sqlx database publishes in its own
//! transaction (`replicator.publish_created_event_in(&mut *tx)`, features `postgres` /
//! `sqlite`), and gives each such model a record source (`SiteBuilder::record_source` with a
//! [`storage::sql::SqlTable`] over its table) so that the primary reads, backfills and checksums
//! the rows where they are and a secondary writes its copies into a table of the same shape.
//!
//! # Where things live: layers
//!
//! The modules form layers; each imports only its own layer and those before it (the test
//! `tests/layers.rs` keeps it so):
//!
//! 1. [`domain`]: ids, [`resource`](domain::resource)s and [`event`]s, the [`registry`] and
//!    [`verification`] state machines, [`retry`] (the backoff formula), sync [`failure`]s,
//!    [`blob_key`]s, [`selective_sync`], the [`clock`] and the [`error`]s;
//! 2. [`storage`]: one trait per storage role, the SQL and memory backends, and
//!    [`local_blobs`] (confined local blob directories);
//! 3. [`link`]: how a secondary reads its primary ([`PrimaryLink`]; [`InProcessPrimary`],
//!    built from the primary's store handles; `link::http::HttpPrimary` over HTTP, feature
//!    `http`);
//! 4. [`strategy`] (with the [`StrategyContext`] a strategy works in), [`model`] (the
//!    [`Replicable`] trait, which binds a model to its strategy) and [`observer`];
//! 5. [`site`], [`descriptor`] (the catalogue of replicables) and [`replicator`] (publish,
//!    consume, sync, verify; `record.replicator(&site)` is an inherent method of every derived
//!    model, and [`ReplicatorExt`] serves generic code);
//! 6. [`engine`] (runs a site by itself: the [`log_cursor`], [`workers`], [`backfill`],
//!    [`staging`] sweeps) and [`status`];
//! 7. `cli`, `metrics` and `http` (the primary's API), behind the features of those names;
//!
//! and `testing` (the shared suite, behind the `testing` feature) uses them all. The paths the
//! modules had before the layers got folders (`replicable_core::event`, `::primary_link`,
//! `::log_cursor`, ...) stay as re-exports.

#![deny(missing_docs)]

pub mod descriptor;
pub mod domain;
pub mod engine;
pub mod link;
pub mod model;
pub mod observer;
pub mod replicator;
pub mod site;
pub mod status;
pub mod storage;
pub mod strategy;

#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "metrics")]
pub mod metrics;

// The paths modules had before the layers got folders; kept so existing imports go on working.
pub use domain::{
    blob_key, clock, error, event, failure, registry, retry, selective_sync, transition,
    verification,
};
pub use engine::cursor as log_cursor;
pub use engine::{backfill, staging, workers};
pub use link as primary_link;
pub use storage::local_blobs;

#[cfg(feature = "testing")]
pub mod testing;

pub use descriptor::{
    DuplicateReplicable, ReplicableDescriptor, find_replicable, register, registered_replicables,
};
pub use domain::error::{LinkError, ReplicatorError, ResourceError, StoreError};
pub use domain::event::{Event, EventId, EventKind, EventPayload};
pub use domain::failure::SyncFailure;
pub use domain::registry::{RegistryRecord, SyncState};
pub use domain::resource::{DataType, Resource};
pub use domain::selective_sync::SelectiveSync;
pub use domain::verification::{Verification, VerificationRecord, VerificationState};
pub use link::{InProcessPrimary, PrimaryLink, PrimaryStores, RepositoryRemote};
pub use model::Replicable;
pub use replicator::{
    ConsumeOutcome, ReplicationTarget, Replicator, ReplicatorExt, SyncAttempt, SyncOutcome,
    VerifyOutcome,
};
pub use site::{Site, SiteError, SiteRole};
pub use strategy::{
    AlwaysCurrent, ResourceTarget, Strategy, StrategyContext, SyncGuard, SyncRequest,
};

/// `#[derive(Replicable)]`.
pub use replicable_derive::Replicable;

/// What a model file needs: `use replicable_core::prelude::*;`.
pub mod prelude {
    pub use crate::model::Replicable as _;
    pub use crate::{
        ConsumeOutcome, DataType, Event, EventKind, InProcessPrimary, RegistryRecord, Replicable,
        Replicator, ReplicatorError, ReplicatorExt, SelectiveSync, Site, SiteError, SiteRole,
        SyncOutcome, SyncState, VerificationState, VerifyOutcome,
    };
    pub use serde::{Deserialize, Serialize};
}

/// Paths the derive's generated code uses. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::descriptor::ReplicableDescriptor;
    pub use crate::domain::registry::{RegistryRecord, SyncState};
    pub use crate::domain::resource::{DataType, Resource};
    pub use crate::domain::verification::{VerificationRecord, VerificationState};
    pub use crate::model::Replicable;
    pub use crate::replicator::Replicator;
    pub use crate::site::Site;
    pub use crate::strategy::Strategy;
    pub use chrono::{DateTime, Utc};
    pub use inventory;
    pub use std::convert::{AsRef, From, Into};
    pub use std::option::Option;
    pub use std::string::String;

    pub use crate::strategy::UnresolvedStrategy;
}
