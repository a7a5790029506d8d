//! The domain layer: ids, resources, events, the registry and verification state machines, the
//! retry formula, sync failures, blob keys and errors. Nothing here knows about storage, the
//! link to the primary, strategies, sites or the engine.

pub mod blob_key;
pub mod clock;
pub mod error;
pub mod event;
pub mod failure;
pub mod registry;
pub mod resource;
pub mod retry;
pub mod selective_sync;
pub mod transition;
pub mod verification;
