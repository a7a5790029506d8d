//! The log cursor: reads the primary's new events on a secondary and dispatches each to its
//! replicator by name.

use serde::{Deserialize, Serialize};
use tracing::warn;

use std::collections::HashMap;

use crate::descriptor::{ReplicableDescriptor, registered_replicables};
use crate::domain::error::ReplicatorError;
use crate::domain::event::{Event, EventId, LogEntry, SkippedEvent, StoredEvent};
use crate::site::Site;

/// How many events one batch reads.
pub const DEFAULT_BATCH_SIZE: usize = 50;

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorReport {
    /// Events read.
    pub read: usize,
    /// Events consumed.
    pub consumed: usize,
    /// Events recorded as skipped (malformed, unknown replicable, or refused).
    pub skipped: usize,
    /// The cursor after the batch.
    pub cursor: EventId,
}

/// The name of the log cursor's lease in the tracking database.
pub const CURSOR_LEASE: &str = "log_cursor";

/// The batch could not be processed (the primary or the tracking database is unreachable, or
/// another cursor holds the lease). The cursor stays before the event that failed, so nothing is
/// lost.
#[derive(Debug, thiserror::Error)]
#[error("log cursor of site `{site}` stopped at event {cursor}: {reason}")]
pub struct CursorError {
    /// The site.
    pub site: String,
    /// The position saved.
    pub cursor: EventId,
    /// Why.
    pub reason: String,
    /// Another cursor holds this site's lease; this one did nothing.
    pub lease_held: bool,
}

/// The log cursor of one secondary. Only one cursor per site runs at a time: each batch takes or
/// renews the site's cursor lease, which expires if its holder dies.
#[derive(Debug, Clone)]
pub struct LogCursor {
    site: Site,
    holder: String,
    batch_size: usize,
    intent_only: bool,
}

impl LogCursor {
    /// A cursor for `site` with a holder name unique to this process and call.
    pub fn new(site: &Site) -> Self {
        Self::with_holder(
            site,
            format!(
                "{}-{}-{:08x}",
                site.name(),
                std::process::id(),
                fastrand::u32(..)
            ),
        )
    }

    /// A cursor with a chosen holder name.
    pub fn with_holder(site: &Site, holder: impl Into<String>) -> Self {
        Self {
            site: site.clone(),
            holder: holder.into(),
            batch_size: DEFAULT_BATCH_SIZE,
            intent_only: false,
        }
    }

    /// Events per batch (default 50).
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Records intent only (what the engine's cursor does): `created` / `updated` events mark
    /// their registry rows pending for the sync workers instead of syncing inline, so one slow
    /// resource never holds up the events behind it. Off by default, where consuming an event
    /// also syncs its record (the single-pass API tests and small tools use).
    pub fn intent_only(mut self, intent_only: bool) -> Self {
        self.intent_only = intent_only;
        self
    }

    /// This cursor's holder name.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Takes or renews the lease, then processes one batch.
    pub async fn process_batch(&self) -> Result<CursorReport, CursorError> {
        self.process_batch_touching()
            .await
            .map(|(report, _)| report)
    }

    /// [`process_batch`](Self::process_batch), also naming the replicables whose events were
    /// consumed (each once), so that the engine wakes their loops only.
    pub(crate) async fn process_batch_touching(
        &self,
    ) -> Result<(CursorReport, Vec<&'static str>), CursorError> {
        let fail = |reason: String, lease_held| CursorError {
            site: self.site.name().to_owned(),
            cursor: 0,
            reason,
            lease_held,
        };
        match self.renew().await {
            Ok(true) => self.run_batch().await,
            Ok(false) => Err(fail(
                "another log cursor holds this site's lease".into(),
                true,
            )),
            Err(e) => Err(fail(e.to_string(), false)),
        }
    }

    /// Processes batches until the cursor has caught up with the primary.
    pub async fn catch_up(&self) -> Result<CursorReport, CursorError> {
        let mut total = CursorReport::default();
        loop {
            let report = self.process_batch().await?;
            total.read += report.read;
            total.consumed += report.consumed;
            total.skipped += report.skipped;
            total.cursor = report.cursor;
            if report.read < self.batch_size {
                return Ok(total);
            }
        }
    }

    /// Takes or renews the site's cursor lease for this holder.
    async fn renew(&self) -> Result<bool, crate::domain::error::StoreError> {
        let site = &self.site;
        site.registry_store()
            .acquire_lease(
                CURSOR_LEASE,
                &self.holder,
                site.now(),
                site.timeouts().cursor_lease,
            )
            .await
    }

    /// Gives up the lease so that another cursor can take over at once.
    pub async fn release(&self) -> Result<(), crate::domain::error::StoreError> {
        self.site
            .registry_store()
            .release_lease(CURSOR_LEASE, &self.holder)
            .await
    }
}

fn process_holder(site: &Site) -> LogCursor {
    static PROCESS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let id = PROCESS.get_or_init(|| format!("{}-{:08x}", std::process::id(), fastrand::u32(..)));
    LogCursor::with_holder(site, format!("{}-{id}", site.name()))
}

/// Whether a consume failure is about this one event (record it and go on) or about the
/// infrastructure (stop, retry later).
fn is_transient(error: &ReplicatorError) -> bool {
    matches!(
        error,
        ReplicatorError::Store { .. } | ReplicatorError::Link { .. }
    )
}

/// Processes one batch of up to `batch_size` events after the saved cursor, and saves the
/// cursor, holding the site's cursor lease under this process's holder name (see [`LogCursor`]).
/// Malformed events, damaged rows of the event log, events of replicables this binary does not
/// know, and events whose consumption is refused are recorded as skipped and do not stop the
/// cursor.
pub async fn process_batch(site: &Site, batch_size: usize) -> Result<CursorReport, CursorError> {
    process_holder(site)
        .batch_size(batch_size)
        .process_batch()
        .await
}

/// Processes batches until the cursor has caught up with the primary (see [`process_batch`]).
pub async fn catch_up(site: &Site, batch_size: usize) -> Result<CursorReport, CursorError> {
    process_holder(site).batch_size(batch_size).catch_up().await
}

impl LogCursor {
    /// One batch under the lease. The lease is renewed while the batch runs (consuming an event
    /// may sync a large resource) and once more before the cursor is saved: a cursor that lost
    /// its lease saves nothing, and its events are consumed again by the new holder (consuming
    /// is idempotent).
    async fn run_batch(&self) -> Result<(CursorReport, Vec<&'static str>), CursorError> {
        let site = &self.site;
        let fail = |cursor: EventId, reason: String, lease_held: bool| CursorError {
            site: site.name().to_owned(),
            cursor,
            reason,
            lease_held,
        };
        let link = site
            .primary_link()
            .filter(|_| !site.is_primary())
            .ok_or_else(|| fail(0, "the log cursor runs on secondaries only".into(), false))?;
        let registry = site.registry_store();
        let start = registry
            .cursor()
            .await
            .map_err(|e| fail(0, e.to_string(), false))?;
        let events = link
            .events_after(start, self.batch_size)
            .await
            .map_err(|e| fail(start, e.to_string(), false))?;
        let mut report = CursorReport {
            read: events.len(),
            cursor: start,
            ..CursorReport::default()
        };
        // The catalogue once per batch, not once per event.
        let catalogue: HashMap<&'static str, &'static ReplicableDescriptor> =
            registered_replicables()
                .map_err(|e| fail(start, e.to_string(), false))?
                .into_iter()
                .map(|d| (d.name, d))
                .collect();
        let renew_every = chrono::Duration::from_std(site.timeouts().cursor_lease / 3)
            .unwrap_or(chrono::Duration::MAX);
        let mut renewed_at = site.now();
        let lost = || fail(start, "the lease passed to another log cursor".into(), true);
        let mut stop = None;
        let mut touched: Vec<&'static str> = Vec::new();
        for entry in events {
            if site.now() - renewed_at >= renew_every {
                match self.renew().await {
                    Ok(true) => renewed_at = site.now(),
                    Ok(false) => return Err(lost()),
                    Err(e) => {
                        stop = Some(e.to_string());
                        break;
                    }
                }
            }
            let event_id = entry.id();
            let outcome = match entry {
                LogEntry::Event(raw) => dispatch(site, &catalogue, raw.clone(), self.intent_only)
                    .await
                    .map_err(|e| match e {
                        Dispatch::Skip(reason) => Dispatch::Skip(SkippedEvent {
                            event_id,
                            replicable_name: raw.replicable_name,
                            event_name: raw.event_name,
                            reason,
                            skipped_at: site.now(),
                        }),
                        Dispatch::Stop(reason) => Dispatch::Stop(reason),
                    }),
                // A row the primary cannot read is skipped like a malformed event: it would
                // otherwise stop the cursor for good.
                LogEntry::Damaged(damaged) => Err(Dispatch::Skip(damaged.skipped(site.now()))),
            };
            match outcome {
                Ok(name) => {
                    report.consumed += 1;
                    if !touched.contains(&name) {
                        touched.push(name);
                    }
                }
                Err(Dispatch::Skip(skipped)) => {
                    warn!(event_id, reason = %skipped.reason, "skipping event");
                    if let Err(e) = registry.record_skipped_event(&skipped).await {
                        stop = Some(e.to_string());
                        break;
                    }
                    report.skipped += 1;
                }
                Err(Dispatch::Stop(reason)) => {
                    stop = Some(reason);
                    break;
                }
            }
            report.cursor = event_id;
        }
        if report.cursor != start {
            match self.renew().await {
                Ok(true) => {}
                Ok(false) => return Err(lost()),
                Err(e) => return Err(fail(start, e.to_string(), false)),
            }
            registry
                .save_cursor(report.cursor)
                .await
                .map_err(|e| fail(start, e.to_string(), false))?;
        }
        match stop {
            Some(reason) => Err(fail(report.cursor, reason, false)),
            None => Ok((report, touched)),
        }
    }
}

/// Why an entry was not consumed: skip it (recorded as `S`), or stop the batch.
enum Dispatch<S = String> {
    Skip(S),
    Stop(String),
}

async fn dispatch(
    site: &Site,
    catalogue: &HashMap<&'static str, &'static ReplicableDescriptor>,
    raw: StoredEvent,
    intent_only: bool,
) -> Result<&'static str, Dispatch> {
    let descriptor = catalogue
        .get(raw.replicable_name.as_str())
        .copied()
        .ok_or_else(|| {
            Dispatch::Skip(format!(
                "no replicable named `{}` is registered in this binary",
                raw.replicable_name
            ))
        })?;
    let event = Event::try_from(raw).map_err(|e| Dispatch::Skip(e.to_string()))?;
    let consumed = if intent_only {
        descriptor.record_intent(site, &event).await
    } else {
        descriptor.consume(site, &event).await
    };
    match consumed {
        Ok(_) => Ok(descriptor.name),
        Err(e) if is_transient(&e) => Err(Dispatch::Stop(e.to_string())),
        Err(e) => Err(Dispatch::Skip(e.to_string())),
    }
}
