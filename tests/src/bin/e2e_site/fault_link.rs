//! A link to the primary with faults put in by a test: while `down` is set every request fails
//! as if the primary were unreachable, and each resource transfer waits `delay` first (so that
//! a sync is in flight when a test kills the process).

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use replicable_core::event::{EventId, LogEntry};
use replicable_core::primary_link::BlobDownload;
use replicable_core::storage::StoredRecord;
use replicable_core::{LinkError, PrimaryLink, VerificationRecord};

/// A primary link with a switch and a delay.
#[derive(Debug)]
pub struct FaultLink {
    inner: Arc<dyn PrimaryLink>,
    /// While set, every request fails.
    pub down: Arc<AtomicBool>,
    /// Requests refused while down.
    pub refused: Arc<AtomicU64>,
    delay: Duration,
}

impl FaultLink {
    /// Wraps `inner`: up, transfers delayed by `delay`.
    pub fn new(inner: Arc<dyn PrimaryLink>, delay: Duration) -> Self {
        Self {
            inner,
            down: Arc::new(AtomicBool::new(false)),
            refused: Arc::new(AtomicU64::new(0)),
            delay,
        }
    }

    fn check(&self, what: &str) -> Result<(), LinkError> {
        if self.down.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(LinkError::Failed {
                what: what.to_owned(),
                reason: "connection refused (the primary is unreachable)".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl PrimaryLink for FaultLink {
    async fn events_after(&self, after: EventId, limit: usize) -> Result<Vec<LogEntry>, LinkError> {
        self.check("events")?;
        self.inner.events_after(after, limit).await
    }
    async fn last_event_id(&self) -> Result<Option<EventId>, LinkError> {
        self.check("the last event id")?;
        self.inner.last_event_id().await
    }
    async fn record(&self, name: &str, id: i64) -> Result<Option<StoredRecord>, LinkError> {
        self.check("a record")?;
        self.inner.record(name, id).await
    }
    async fn record_ids(
        &self,
        name: &str,
        range: Range<i64>,
        limit: usize,
    ) -> Result<Vec<i64>, LinkError> {
        self.check("record ids")?;
        self.inner.record_ids(name, range, limit).await
    }
    async fn verification(
        &self,
        name: &str,
        id: i64,
    ) -> Result<Option<VerificationRecord>, LinkError> {
        self.check("a checksum")?;
        self.inner.verification(name, id).await
    }
    async fn open_blob(&self, name: &str, id: i64, key: &str) -> Result<BlobDownload, LinkError> {
        tokio::time::sleep(self.delay).await;
        self.check("a blob")?;
        self.inner.open_blob(name, id, key).await
    }
    async fn repository_remote(
        &self,
        name: &str,
        id: i64,
        path: &str,
    ) -> Result<replicable_core::RepositoryRemote, LinkError> {
        tokio::time::sleep(self.delay).await;
        self.check("a repository")?;
        self.inner.repository_remote(name, id, path).await
    }
    async fn report_status(
        &self,
        secondary: &str,
        report: &replicable_core::link::SiteStatusReport,
    ) -> Result<(), LinkError> {
        self.inner.report_status(secondary, report).await
    }
}
