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
//! Where things live: [`model`] (the trait), [`event`], [`registry`] and [`verification`] (the
//! state machines), [`retry`] (the backoff formula), [`strategy`], [`site`], [`primary_link`]
//! (how a secondary reads the primary), [`storage`] (one trait per storage role), [`replicator`],
//! [`log_cursor`], [`workers`], [`backfill`], [`status`], [`engine`] (runs a site by itself),
//! [`local_blobs`] and [`blob_key`] (local blob directories and keys), [`staging`] (sweeping
//! what crashed syncs left), [`observer`], `cli` and `metrics` (behind the features of those
//! names), `http` (the primary's API) and `link::http` (`HttpPrimary`, the secondary's link over
//! HTTP), behind the `http` feature, and `testing` (the shared suite, behind the `testing`
//! feature).

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
pub use error::{LinkError, ReplicatorError, ResourceError, StoreError};
pub use event::{Event, EventId, EventKind, EventPayload};
pub use failure::SyncFailure;
pub use model::{DataType, Replicable, Resource};
pub use primary_link::{InProcessPrimary, PrimaryLink, RepositoryRemote};
pub use registry::{RegistryRecord, SyncState};
pub use replicator::{
    ConsumeOutcome, ReplicationTarget, Replicator, SyncAttempt, SyncOutcome, VerifyOutcome,
};
pub use selective_sync::SelectiveSync;
pub use site::{Site, SiteError, SiteRole};
pub use strategy::{AlwaysCurrent, ResourceTarget, Strategy, SyncGuard, SyncRequest};
pub use verification::{Verification, VerificationRecord, VerificationState};

/// `#[derive(Replicable)]`.
pub use replicable_derive::Replicable;

/// What a model file needs: `use replicable_core::prelude::*;`.
pub mod prelude {
    pub use crate::model::Replicable as _;
    pub use crate::{
        ConsumeOutcome, DataType, Event, EventKind, InProcessPrimary, RegistryRecord, Replicable,
        Replicator, ReplicatorError, SelectiveSync, Site, SiteRole, SyncOutcome, SyncState,
        VerificationState, VerifyOutcome,
    };
    pub use serde::{Deserialize, Serialize};
}

/// Paths the derive's generated code uses. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::descriptor::ReplicableDescriptor;
    pub use crate::model::DataType;
    pub use crate::model::{Replicable, Resource};
    pub use crate::registry::{RegistryRecord, SyncState};
    pub use crate::replicator::Replicator;
    pub use crate::strategy::Strategy;
    pub use crate::verification::{VerificationRecord, VerificationState};
    pub use chrono::{DateTime, Utc};
    pub use inventory;
    pub use std::convert::{AsRef, From, Into};
    pub use std::option::Option;
    pub use std::string::String;

    pub use crate::strategy::UnresolvedStrategy;
}
