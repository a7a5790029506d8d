//! The one interface through which a secondary reads its primary, and its in-process
//! implementation (the HTTP one is [`http::HttpPrimary`], feature `http`).

#[cfg(feature = "http")]
pub mod http;
mod remote;
mod report;

pub use remote::RepositoryRemote;
pub use report::SiteStatusReport;

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::ObjectStoreExt;

use crate::blob_key::{object_path, parse_repository_path, resolve_beneath};
use crate::error::{LinkError, StoreError};
use crate::event::{EventId, LogEntry};
use crate::failure::shorten_name;
use crate::site::Site;
use crate::storage::StoredRecord;
use crate::verification::VerificationRecord;

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
}

/// A primary in the same process: reads its stores directly. Serves tests, examples and the
/// embedded single-machine setup.
#[derive(Debug, Clone)]
pub struct InProcessPrimary {
    primary: Site,
}

impl InProcessPrimary {
    /// A link to `primary`.
    pub fn new(primary: Site) -> Self {
        Self { primary }
    }

    /// The primary site.
    pub fn site(&self) -> &Site {
        &self.primary
    }
}

fn failed(what: impl Into<String>) -> impl FnOnce(StoreError) -> LinkError {
    let what = what.into();
    move |e| LinkError::Failed {
        what,
        reason: e.to_string(),
    }
}

#[async_trait]
impl PrimaryLink for InProcessPrimary {
    async fn events_after(&self, after: EventId, limit: usize) -> Result<Vec<LogEntry>, LinkError> {
        self.primary
            .event_log()
            .read_after(after, limit)
            .await
            .map_err(failed(format!("events after {after}")))
    }

    async fn last_event_id(&self) -> Result<Option<EventId>, LinkError> {
        self.primary
            .event_log()
            .last_event_id()
            .await
            .map_err(failed("the last event id"))
    }

    async fn record(&self, name: &str, model_id: i64) -> Result<Option<StoredRecord>, LinkError> {
        self.primary
            .records()
            .get(name, model_id)
            .await
            .map_err(failed(format!("{name} {model_id}")))
    }

    async fn record_ids(
        &self,
        name: &str,
        range: Range<i64>,
        limit: usize,
    ) -> Result<Vec<i64>, LinkError> {
        self.primary
            .records()
            .ids(name, range.clone(), limit)
            .await
            .map_err(failed(format!("{name} ids in {range:?}")))
    }

    async fn verification(
        &self,
        name: &str,
        model_id: i64,
    ) -> Result<Option<VerificationRecord>, LinkError> {
        self.primary
            .verification_store()
            .get(name, model_id)
            .await
            .map_err(failed(format!("the checksum of {name} {model_id}")))
    }

    async fn open_blob(
        &self,
        name: &str,
        model_id: i64,
        key: &str,
    ) -> Result<BlobDownload, LinkError> {
        let what = format!("blob `{}` of {name} {model_id}", shorten_name(key));
        let path = object_path(key).map_err(|e| LinkError::Refused {
            what: what.clone(),
            reason: e.to_string(),
        })?;
        // Only "not found" is missing; an unreadable store, a refused path or an I/O error is
        // a failure to read the primary.
        let result = match self.primary.blob_store().get(&path).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Err(LinkError::NotFound { what }),
            Err(e) => {
                if let Some(refused) = crate::local_blobs::refusal(&e) {
                    return Err(LinkError::Refused {
                        what,
                        reason: refused.to_string(),
                    });
                }
                return Err(LinkError::Failed {
                    what,
                    reason: e.to_string(),
                });
            }
        };
        let size = result.meta.size;
        let stream_what = what.clone();
        let stream = result
            .into_stream()
            .map(move |chunk| {
                chunk.map_err(|e| LinkError::Failed {
                    what: stream_what.clone(),
                    reason: e.to_string(),
                })
            })
            .boxed();
        Ok(BlobDownload { size, stream })
    }

    async fn repository_remote(
        &self,
        name: &str,
        model_id: i64,
        path: &str,
    ) -> Result<RepositoryRemote, LinkError> {
        let what = format!("repository `{}` of {name} {model_id}", shorten_name(path));
        let relative = parse_repository_path(path).map_err(|e| LinkError::Refused {
            what: what.clone(),
            reason: e.to_string(),
        })?;
        let root = self
            .primary
            .repository_root()
            .ok_or_else(|| LinkError::Failed {
                what: what.clone(),
                reason: "the primary has no repository root".into(),
            })?;
        // Never serve a repository through a symbolic link below the root.
        let full = resolve_beneath(
            root,
            &relative,
            &format!("repository `{}`", shorten_name(path)),
        )
        .map_err(|e| LinkError::Refused {
            what: what.clone(),
            reason: e.to_string(),
        })?;
        match std::fs::symlink_metadata(&full) {
            // git runs the fetch inside the secondary's repository: a relative root must not
            // be read relative to that.
            Ok(_) => Ok(RepositoryRemote::plain(
                std::path::absolute(&full).unwrap_or(full).to_string_lossy(),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(LinkError::NotFound { what }),
            // Exists or not, it cannot be looked at: not "missing".
            Err(e) => Err(LinkError::Failed {
                what,
                reason: e.to_string(),
            }),
        }
    }

    /// Stores the report in the primary's tracking database, as the HTTP API does.
    async fn report_status(
        &self,
        secondary: &str,
        report: &SiteStatusReport,
    ) -> Result<(), LinkError> {
        let row = crate::storage::SecondaryStatusRow {
            secondary: secondary.to_owned(),
            cursor: report.cursor,
            report: serde_json::to_value(report).map_err(|e| LinkError::Failed {
                what: "the status report".into(),
                reason: e.to_string(),
            })?,
            received_at: self.primary.now(),
        };
        self.primary
            .registry_store()
            .put_secondary_status(&row)
            .await
            .map_err(failed("the status report"))
    }
}
