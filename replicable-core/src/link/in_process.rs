//! [`InProcessPrimary`]: the link to a primary in the same process, reading its stores.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};

use super::{BlobDownload, PrimaryLink, RepositoryRemote, SiteStatusReport};
use crate::domain::blob_key::{object_path, parse_repository_path, resolve_beneath};
use crate::domain::error::{LinkError, StoreError};
use crate::domain::event::{EventId, LogEntry};
use crate::domain::failure::shorten_name;
use crate::domain::verification::VerificationRecord;
use crate::storage::local_blobs;
use crate::storage::{
    EventLog, RecordStore, RegistryStore, SecondaryStatusRow, StoredRecord, VerificationStore,
};

/// The stores of a primary that an [`InProcessPrimary`] reads: shared handles, cheap to clone.
/// A `Site` converts into them (`PrimaryStores::from(&primary)`).
#[derive(Clone)]
pub struct PrimaryStores {
    /// The primary's event log.
    pub event_log: Arc<dyn EventLog>,
    /// The primary's records.
    pub records: Arc<dyn RecordStore>,
    /// The primary's verification rows.
    pub verification: Arc<dyn VerificationStore>,
    /// The object store holding the primary's blobs.
    pub blobs: Arc<dyn ObjectStore>,
    /// The directory holding the primary's git repositories, if it has one.
    pub repository_root: Option<PathBuf>,
    /// The primary's tracking database, where secondaries' status reports are kept.
    pub registry: Arc<dyn RegistryStore>,
}

impl std::fmt::Debug for PrimaryStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrimaryStores")
            .field("blobs", &self.blobs.to_string())
            .field("repository_root", &self.repository_root)
            .finish_non_exhaustive()
    }
}

/// A primary in the same process: reads its stores directly. Serves tests, examples and the
/// embedded single-machine setup.
#[derive(Debug, Clone)]
pub struct InProcessPrimary {
    primary: PrimaryStores,
}

impl InProcessPrimary {
    /// A link to the primary whose stores are `primary` (a `Site`, or its [`PrimaryStores`]).
    pub fn new(primary: impl Into<PrimaryStores>) -> Self {
        Self {
            primary: primary.into(),
        }
    }

    /// The stores this link reads.
    pub fn stores(&self) -> &PrimaryStores {
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
            .event_log
            .read_after(after, limit)
            .await
            .map_err(failed(format!("events after {after}")))
    }

    async fn last_event_id(&self) -> Result<Option<EventId>, LinkError> {
        self.primary
            .event_log
            .last_event_id()
            .await
            .map_err(failed("the last event id"))
    }

    /// Woken by the primary's appends in this process, besides looking every
    /// [`EVENT_POLL`](super::EVENT_POLL).
    async fn wait_for_events(
        &self,
        after: EventId,
        max_wait: std::time::Duration,
    ) -> Result<Option<EventId>, LinkError> {
        super::wait_on_log(
            &*self.primary.event_log,
            after,
            max_wait,
            super::EVENT_POLL,
            super::APPENDS_GATHER,
        )
        .await
        .map_err(failed("the last event id"))
    }

    async fn record(&self, name: &str, model_id: i64) -> Result<Option<StoredRecord>, LinkError> {
        self.primary
            .records
            .get(name, model_id)
            .await
            .map_err(failed(format!("{name} {model_id}")))
    }

    async fn records(&self, name: &str, ids: &[i64]) -> Result<Vec<StoredRecord>, LinkError> {
        self.primary
            .records
            .get_many(name, ids)
            .await
            .map_err(failed(format!("{} {name} records", ids.len())))
    }

    async fn record_ids(
        &self,
        name: &str,
        range: Range<i64>,
        limit: usize,
    ) -> Result<Vec<i64>, LinkError> {
        self.primary
            .records
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
            .verification
            .get(name, model_id)
            .await
            .map_err(failed(format!("the checksum of {name} {model_id}")))
    }

    async fn verifications(
        &self,
        name: &str,
        ids: &[i64],
    ) -> Result<Vec<VerificationRecord>, LinkError> {
        self.primary
            .verification
            .get_many(name, ids)
            .await
            .map_err(failed(format!(
                "the checksums of {} {name} records",
                ids.len()
            )))
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
        let result = match self.primary.blobs.get(&path).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Err(LinkError::NotFound { what }),
            Err(e) => {
                if let Some(refused) = local_blobs::refusal(&e) {
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
            .repository_root
            .as_deref()
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
        let registry = &self.primary.registry;
        let received_at = registry
            .now(chrono::Utc::now())
            .await
            .map_err(failed("the primary's clock"))?;
        let row = SecondaryStatusRow {
            secondary: secondary.to_owned(),
            cursor: report.cursor,
            report: serde_json::to_value(report).map_err(|e| LinkError::Failed {
                what: "the status report".into(),
                reason: e.to_string(),
            })?,
            received_at,
        };
        registry
            .put_secondary_status(&row)
            .await
            .map_err(failed("the status report"))
    }
}
