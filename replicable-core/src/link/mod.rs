//! The one interface through which a secondary reads its primary ([`PrimaryLink`]), its
//! in-process implementation ([`InProcessPrimary`], built from the primary's store handles),
//! and the HTTP one (`http::HttpPrimary`, feature `http`).

#[cfg(feature = "http")]
pub mod http;
mod remote;
mod report;

pub use remote::RepositoryRemote;
pub use report::SiteStatusReport;

use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::domain::error::LinkError;
use crate::domain::event::{EventId, LogEntry};
use crate::domain::verification::VerificationRecord;
use crate::storage::StoredRecord;

/// How many single reads the default [`PrimaryLink::records`] and
/// [`PrimaryLink::verifications`] have in flight at once: a claimed batch over a remote link
/// waits about one round trip, not one per record, before its syncs start.
pub const READS_AT_ONCE: usize = 8;

/// Reads each of `ids` with `read`, [`READS_AT_ONCE`] at a time; those that exist, in no
/// particular order.
async fn read_each<T, F, Fut>(ids: &[i64], read: F) -> Result<Vec<T>, LinkError>
where
    F: FnMut(i64) -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, LinkError>>,
{
    use futures::{StreamExt, TryStreamExt};
    let found: Vec<Option<T>> = futures::stream::iter(ids.iter().copied())
        .map(read)
        .buffer_unordered(READS_AT_ONCE)
        .try_collect()
        .await?;
    Ok(found.into_iter().flatten().collect())
}

mod in_process;

pub use in_process::{InProcessPrimary, PrimaryStores};

/// A blob being read from the primary, as a stream of chunks.
pub struct BlobDownload {
    /// The blob's size in bytes.
    pub size: u64,
    /// The blob's bytes, in order.
    pub stream: BoxStream<'static, Result<Bytes, LinkError>>,
}

impl std::fmt::Debug for BlobDownload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobDownload")
            .field("size", &self.size)
            .finish()
    }
}

/// What a secondary may ask of its primary: events after a cursor, records by id and by id
/// range, the primary's checksums, and resources (blob bytes, git remotes).
///
/// Requests for a resource name the replicable and record they are for, so that a networked
/// primary can scope its credentials to exactly that record.
#[async_trait]
pub trait PrimaryLink: Send + Sync + std::fmt::Debug {
    /// Event log entries with `id > after`, ascending, at most `limit`. A row the primary cannot
    /// read back comes as [`LogEntry::Damaged`] in its place.
    async fn events_after(&self, after: EventId, limit: usize) -> Result<Vec<LogEntry>, LinkError>;

    /// The newest event's id.
    async fn last_event_id(&self) -> Result<Option<EventId>, LinkError>;

    /// A record as the primary has it now; `None` if it does not exist.
    async fn record(&self, name: &str, model_id: i64) -> Result<Option<StoredRecord>, LinkError>;

    /// The records of `ids` as the primary has them now, those that exist, in no particular
    /// order: what a secondary syncs a claimed batch from. The default asks
    /// [`record`](Self::record) for each, [`READS_AT_ONCE`] at a time; a link that can read
    /// them together (the in-process link: one statement) overrides it.
    async fn records(&self, name: &str, ids: &[i64]) -> Result<Vec<StoredRecord>, LinkError> {
        read_each(ids, |id| self.record(name, id)).await
    }

    /// The primary's record ids in `range`, ascending, at most `limit`.
    async fn record_ids(
        &self,
        name: &str,
        range: Range<i64>,
        limit: usize,
    ) -> Result<Vec<i64>, LinkError>;

    /// The primary's verification row of a record.
    async fn verification(
        &self,
        name: &str,
        model_id: i64,
    ) -> Result<Option<VerificationRecord>, LinkError>;

    /// The primary's verification rows of `ids` that exist, in no particular order: what a
    /// secondary compares a claimed batch of copies with. The default asks
    /// [`verification`](Self::verification) for each, [`READS_AT_ONCE`] at a time; a link
    /// that can read them together (the in-process link: one statement) overrides it.
    async fn verifications(
        &self,
        name: &str,
        ids: &[i64],
    ) -> Result<Vec<VerificationRecord>, LinkError> {
        read_each(ids, |id| self.verification(name, id)).await
    }

    /// Opens a blob of a record for reading. A blob that does not exist is
    /// [`LinkError::NotFound`].
    async fn open_blob(
        &self,
        name: &str,
        model_id: i64,
        key: &str,
    ) -> Result<BlobDownload, LinkError>;

    /// Where `git fetch` reads a repository of a record from (a URL or a local path), with the
    /// git settings of that one command. A repository that does not exist is
    /// [`LinkError::NotFound`].
    async fn repository_remote(
        &self,
        name: &str,
        model_id: i64,
        path: &str,
    ) -> Result<RepositoryRemote, LinkError>;

    /// Reports the status of secondary `secondary` to the primary. A link with nowhere to
    /// report to does nothing (the default).
    async fn report_status(
        &self,
        secondary: &str,
        report: &SiteStatusReport,
    ) -> Result<(), LinkError> {
        let _ = (secondary, report);
        Ok(())
    }

    /// Waits until the primary's log holds an event with `id > after`, or `max_wait` passed,
    /// and returns the newest id it saw. The log cursor calls it when it has caught up, so that
    /// a new event is read as soon as it is published rather than after an idle backoff.
    ///
    /// The default asks [`last_event_id`](Self::last_event_id) every [`EVENT_POLL`]; a link
    /// whose primary can wait on its side (the HTTP link) overrides it.
    async fn wait_for_events(
        &self,
        after: EventId,
        max_wait: Duration,
    ) -> Result<Option<EventId>, LinkError> {
        poll_for_events(|| self.last_event_id(), after, max_wait, EVENT_POLL).await
    }
}

/// How often [`PrimaryLink::wait_for_events`] looks at the log by default: the longest a
/// caught-up cursor takes to notice a new event, for one cheap query (the log's largest id).
pub const EVENT_POLL: Duration = Duration::from_millis(50);

/// Asks `last` every `every` until it names an event after `after` or `max_wait` passed;
/// returns the last answer.
pub async fn poll_for_events<E, F, Fut>(
    last: F,
    after: EventId,
    max_wait: Duration,
    every: Duration,
) -> Result<Option<EventId>, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<EventId>, E>>,
{
    poll_for_events_woken(last, after, max_wait, every, None).await
}

/// [`poll_for_events`] on a log of this process: asks again `gather` after the log announces
/// an append (see [`EventLog::appends`](crate::storage::EventLog::appends)), not only every
/// `every`. The short gathering wait lets a stream of appends be read as one batch instead of
/// one wake (and its writes: a lease, a cursor, claims) per append.
pub(crate) async fn wait_on_log(
    log: &dyn crate::storage::EventLog,
    after: EventId,
    max_wait: Duration,
    every: Duration,
    gather: Duration,
) -> Result<Option<EventId>, crate::domain::error::StoreError> {
    let woken = log.appends().map(|signal| (signal, gather));
    poll_for_events_woken(|| log.last_event_id(), after, max_wait, every, woken).await
}

/// How long a waiter on a log of this process lets appends gather after the first one
/// announced, before it reads (see [`wait_on_log`]).
pub(crate) const APPENDS_GATHER: Duration = Duration::from_millis(10);

async fn poll_for_events_woken<E, F, Fut>(
    mut last: F,
    after: EventId,
    max_wait: Duration,
    every: Duration,
    mut woken: Option<(tokio::sync::watch::Receiver<u64>, Duration)>,
) -> Result<Option<EventId>, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<EventId>, E>>,
{
    let deadline = tokio::time::Instant::now() + max_wait;
    loop {
        // Seen before asking: an append after this point changes it again.
        if let Some((signal, _)) = woken.as_mut() {
            signal.mark_unchanged();
        }
        let newest = last().await?;
        if newest.is_some_and(|id| id > after) {
            return Ok(newest);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(newest);
        }
        let sleep = tokio::time::sleep(every.min(deadline - now));
        match woken.as_mut() {
            Some((signal, gather)) => {
                let gather = *gather;
                tokio::select! {
                    _ = sleep => {}
                    changed = signal.changed() => match changed {
                        Ok(()) => {
                            let until = (tokio::time::Instant::now() + gather).min(deadline);
                            tokio::time::sleep_until(until).await;
                        }
                        // The log is gone: looking every `every` is all that is left.
                        Err(_) => woken = None,
                    },
                }
            }
            None => sleep.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn single_reads_go_a_few_at_a_time_and_keep_what_exists() {
        let (now, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let ids: Vec<i64> = (1..=20).collect();
        let found = read_each(&ids, |id| {
            let (now, most) = (&now, &most);
            async move {
                let running = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(running, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                Ok((id % 2 == 0).then_some(id))
            }
        })
        .await
        .unwrap();
        let mut found = found;
        found.sort_unstable();
        assert_eq!(found, (2..=20).step_by(2).collect::<Vec<i64>>());
        assert_eq!(
            most.load(Ordering::SeqCst),
            READS_AT_ONCE,
            "reads overlap, at most READS_AT_ONCE at a time"
        );

        let failed = read_each(&ids, |id| async move {
            if id == 7 {
                Err(LinkError::Failed {
                    what: "record 7".into(),
                    reason: "connection refused".into(),
                })
            } else {
                Ok(Some(id))
            }
        })
        .await;
        assert!(matches!(failed, Err(LinkError::Failed { .. })));
    }
}
