//! Hooks into the milestones of a sync, for instrumentation and for tests that need to hold a
//! sync at a precise point (the shared suite holds an old sync open while a newer one runs).

use async_trait::async_trait;

/// Observes syncs on a site. Every method has a default that does nothing; a slow method delays
/// the sync that called it, which is what tests use it for.
#[async_trait]
pub trait SyncObserver: Send + Sync + std::fmt::Debug {
    /// A sync of record `id` of `replicable` is about to ask its strategy to transfer the
    /// resource (it is not called when the local copy already matches the primary).
    async fn before_transfer(&self, replicable: &str, id: i64) {
        let _ = (replicable, id);
    }

    /// A sync of record `id` of `replicable` has staged its copy and is about to check that it
    /// is still current before making the copy visible.
    async fn before_visible(&self, replicable: &str, id: i64) {
        let _ = (replicable, id);
    }
}
