//! The log cursor: reads the primary's new events on a secondary and dispatches each to its
//! replicator by name.

use serde::{Deserialize, Serialize};
use tracing::warn;

use std::collections::HashMap;

use crate::descriptor::{ReplicableDescriptor, registered_replicables};
use crate::domain::error::ReplicatorError;
use crate::domain::event::{
    CursorGap, Event, EventId, EventKind, LogEntry, SkippedEvent, StoredEvent,
};
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

/// When a cursor took or renewed its lease.
#[derive(Debug, Clone, Copy)]
struct Renewal {
    monotonic: std::time::Instant,
    site: chrono::DateTime<chrono::Utc>,
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

/// The log cursor of one secondary. Only one cursor per site runs at a time: it holds the site's
/// cursor lease, which expires if its holder dies. A batch takes the lease, or renews it once a
/// third of it has passed since this cursor (or a clone of it) last did, and saves its position
/// only while no other cursor holds the lease.
#[derive(Debug, Clone)]
pub struct LogCursor {
    site: Site,
    holder: String,
    batch_size: usize,
    intent_only: bool,
    /// When the open gaps are read again; shared by the clones of this cursor.
    gaps: std::sync::Arc<GapSchedule>,
    /// When this cursor (or a clone) last took or renewed the lease, on this process's
    /// monotonic clock and on the site's clock; `None` until it does, and again once it gave
    /// the lease up or found it lost.
    renewed: std::sync::Arc<std::sync::Mutex<Option<Renewal>>>,
    /// How many batch sizes the next read takes (see [`MAX_BURST`]); shared by the clones.
    burst: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// While every read comes back full (a burst of events waits), a cursor that records intent
/// only reads twice as many events the next time, up to this many batch sizes; a read that
/// comes back short returns it to one batch. Recording intent costs little per event and
/// much per batch (the reads, the save), so a burst of thousands of events is taken in
/// hundreds instead of fifties; a trickle is still read a batch at a time.
pub const MAX_BURST: usize = 10;

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
            gaps: std::sync::Arc::default(),
            renewed: std::sync::Arc::default(),
            burst: std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(1)),
        }
    }

    /// Events per batch (default 50). A cursor that records intent only reads up to
    /// [`MAX_BURST`] times as many at once while full batches keep coming.
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

    /// How long until the open id gaps of the last batch are due to be read again (`None`:
    /// there were none). A caught-up engine waits no longer than this for new events.
    pub(crate) fn gaps_due_in(&self) -> Option<std::time::Duration> {
        self.gaps.next_in(self.site.now())
    }

    /// Takes the lease (or renews it once a third of it has passed), then processes one batch.
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
        // While the lease is young by both clocks it has not expired (unless the database's
        // clock jumped or the lease was removed behind this cursor's back), so a batch skips
        // the renewal (a write) and goes straight to the events. Either way the save checks
        // the lease: a cursor that lost it saves nothing.
        if self.lease_due() {
            match self.renew().await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(fail(
                        "another log cursor holds this site's lease".into(),
                        true,
                    ));
                }
                Err(e) => return Err(fail(e.to_string(), false)),
            }
        }
        self.run_batch().await
    }

    /// Whether the lease is due for renewal: never taken, given up, or a third of it passed
    /// since the last renewal by the monotonic clock or the site's (a suspended machine, a
    /// clock the tests move), or the site's clock went back.
    fn lease_due(&self) -> bool {
        let renewed = *self.renewed.lock().unwrap_or_else(|e| e.into_inner());
        let third = self.site.timeouts().cursor_lease / 3;
        renewed.is_none_or(|at| {
            let now = self.site.now();
            at.monotonic.elapsed() >= third
                || now < at.site
                || (now - at.site).to_std().is_ok_and(|passed| passed >= third)
        })
    }

    /// Events the next read takes: the batch size, times the burst while the cursor records
    /// intent only (see [`MAX_BURST`]).
    fn read_limit(&self) -> usize {
        if !self.intent_only {
            return self.batch_size;
        }
        let burst = self.burst.load(std::sync::atomic::Ordering::Relaxed);
        self.batch_size.saturating_mul(burst)
    }

    /// After a read: a full one doubles the next (up to [`MAX_BURST`] batch sizes), a short
    /// one returns it to one batch.
    fn next_burst(&self, full: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let next = if full {
            (self.burst.load(Relaxed) * 2).min(MAX_BURST)
        } else {
            1
        };
        self.burst.store(next, Relaxed);
    }

    fn note_renewal(&self, renewed: Option<Renewal>) {
        *self.renewed.lock().unwrap_or_else(|e| e.into_inner()) = renewed;
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
        // The time is taken before the write: the lease runs from no earlier than this.
        let asked = Renewal {
            monotonic: std::time::Instant::now(),
            site: site.now(),
        };
        let renewed = site
            .registry_store()
            .acquire_lease(
                CURSOR_LEASE,
                &self.holder,
                site.now(),
                site.timeouts().cursor_lease,
            )
            .await;
        match renewed {
            Ok(true) => self.note_renewal(Some(asked)),
            _ => self.note_renewal(None),
        }
        renewed
    }

    /// Gives up the lease so that another cursor can take over at once.
    pub async fn release(&self) -> Result<(), crate::domain::error::StoreError> {
        self.note_renewal(None);
        let released = self
            .site
            .registry_store()
            .release_lease(CURSOR_LEASE, &self.holder)
            .await;
        // A clone that renewed meanwhile noted a lease that is now gone.
        self.note_renewal(None);
        released
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
    /// One batch under the lease: the open id gaps that are due are read again (see
    /// [`CursorGap`]), then the events after the cursor. The lease is renewed while the batch
    /// runs (consuming an event may sync a large resource), and the cursor is saved only while
    /// no other cursor holds the lease: a cursor that lost its lease saves nothing, and its
    /// events are consumed again by the new holder (consuming is idempotent).
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
        let (start, stored_gaps) = registry
            .cursor_state()
            .await
            .map_err(|e| fail(0, e.to_string(), false))?;
        let mut gaps = Gaps(stored_gaps.clone());
        for gap in gaps.expire(site.now()) {
            warn!(
                first = gap.first,
                last = gap.last,
                "gave up waiting for event ids the cursor stepped over; backfill finds their records"
            );
        }
        // The catalogue once per batch, not once per event.
        let catalogue: HashMap<&'static str, &'static ReplicableDescriptor> =
            registered_replicables()
                .map_err(|e| fail(start, e.to_string(), false))?
                .into_iter()
                .map(|d| (d.name, d))
                .collect();
        let mut batch = Batch {
            cursor: self,
            catalogue,
            report: CursorReport {
                cursor: start,
                ..CursorReport::default()
            },
            touched: Vec::new(),
        };
        let lost = || fail(start, "the lease passed to another log cursor".into(), true);
        let limit = self.read_limit();
        let mut stop = None;
        // The gaps first: an event that committed late is consumed before newer ones.
        if !gaps.0.is_empty() && self.gaps.due(&gaps.0, site.now()) {
            'gaps: for gap in gaps.0.clone() {
                let span = usize::try_from(gap.last - gap.first + 1).unwrap_or(usize::MAX);
                let entries = match link.events_after(gap.first - 1, span.min(limit)).await {
                    Ok(entries) => entries,
                    Err(e) => {
                        stop = Some(e.to_string());
                        break;
                    }
                };
                for entry in entries {
                    let id = entry.id();
                    if id > gap.last {
                        break;
                    }
                    match batch.consume(entry).await {
                        Ok(()) => {
                            batch.report.read += 1;
                            gaps.fill(id);
                        }
                        Err(Halt::Lost) => return Err(lost()),
                        Err(Halt::Stop(reason)) => {
                            stop = Some(reason);
                            break 'gaps;
                        }
                    }
                }
            }
            self.gaps.checked();
        }
        if stop.is_none() {
            match link.events_after(start, limit).await {
                Ok(events) => {
                    self.next_burst(events.len() >= limit);
                    batch.report.read += events.len();
                    let mut events = events.into_iter().peekable();
                    'events: while let Some(entry) = events.next() {
                        // Consecutive `checksum_succeeded` events of one replicable (the
                        // primary appends a verified group together) are consumed together,
                        // and so are consecutive `created` / `updated` events of one
                        // replicable while the cursor records intent only (a run ends before
                        // a record it already names).
                        let mut run = vec![entry];
                        let of_run = batch.run_of(&run[0]);
                        if let Some((descriptor, kind)) = of_run {
                            let mut named: std::collections::HashSet<i64> =
                                run_model_id(&run[0]).into_iter().collect();
                            while let Some(next) = events.next_if(|e| {
                                batch.run_of(e).map(|(d, k)| (d.name, k))
                                    == Some((descriptor.name, kind))
                                    && (kind == RunKind::Checksums
                                        || run_model_id(e).is_some_and(|id| !named.contains(&id)))
                            }) {
                                named.extend(run_model_id(&next));
                                run.push(next);
                            }
                        }
                        if let Some((descriptor, kind)) = of_run
                            && run.len() > 1
                        {
                            let ids: Vec<EventId> = run.iter().map(LogEntry::id).collect();
                            match batch.consume_run(descriptor, kind, run).await {
                                Ok(None) => {
                                    for id in ids {
                                        batch.advance(&mut gaps, id);
                                    }
                                    continue;
                                }
                                // Not taken together: one event at a time, below.
                                Ok(Some(back)) => run = back,
                                Err(Halt::Lost) => return Err(lost()),
                                Err(Halt::Stop(reason)) => {
                                    stop = Some(reason);
                                    break;
                                }
                            }
                        }
                        for entry in run {
                            let id = entry.id();
                            match batch.consume(entry).await {
                                Ok(()) => {}
                                Err(Halt::Lost) => return Err(lost()),
                                Err(Halt::Stop(reason)) => {
                                    stop = Some(reason);
                                    break 'events;
                                }
                            }
                            batch.advance(&mut gaps, id);
                        }
                    }
                }
                // Nothing read, nothing consumed past the gaps: save what the gaps did.
                Err(e) if batch.report.read == 0 => {
                    return Err(fail(start, e.to_string(), false));
                }
                Err(e) => stop = Some(e.to_string()),
            }
        }
        for dropped in gaps.cap() {
            warn!(
                first = dropped.first,
                last = dropped.last,
                "too many open id gaps; gave up the oldest"
            );
        }
        self.gaps.remember(&gaps.0);
        if batch.report.cursor != start || gaps.0 != stored_gaps {
            // Saved only while no other cursor holds the lease: one that lost it (it expired and
            // another cursor took it) leaves the position to the new holder.
            let saved = registry
                .save_cursor_and_gaps_holding(
                    batch.report.cursor,
                    &gaps.0,
                    CURSOR_LEASE,
                    &self.holder,
                    site.now(),
                    site.timeouts().cursor_lease,
                )
                .await
                .map_err(|e| fail(start, e.to_string(), false))?;
            if !saved {
                self.note_renewal(None);
                return Err(lost());
            }
        }
        let Batch {
            report, touched, ..
        } = batch;
        match stop {
            Some(reason) => Err(fail(report.cursor, reason, false)),
            None => Ok((report, touched)),
        }
    }
}

/// One batch's consumption: the catalogue, the lease's renewal, what was done.
struct Batch<'a> {
    cursor: &'a LogCursor,
    catalogue: HashMap<&'static str, &'static ReplicableDescriptor>,
    report: CursorReport,
    touched: Vec<&'static str>,
}

/// What a run of events consumed together is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunKind {
    /// `checksum_succeeded` events.
    Checksums,
    /// `created` / `updated` events, recorded as intent.
    Changes,
}

/// The record an event names, read from its payload without decoding the rest (`None`: no
/// readable id; the event is then consumed alone).
fn run_model_id(entry: &LogEntry) -> Option<i64> {
    match entry {
        LogEntry::Event(raw) => raw.payload.get("model_id")?.as_i64(),
        LogEntry::Damaged(_) => None,
    }
}

/// Why a batch ends before its last entry.
enum Halt {
    /// The lease passed to another cursor: save nothing.
    Lost,
    /// The primary or the tracking database failed: save what was done, stop.
    Stop(String),
}

impl Batch<'_> {
    /// Renews the lease when a third of it has passed since the last renewal.
    async fn keep_lease(&mut self) -> Result<(), Halt> {
        if self.cursor.lease_due() {
            match self.cursor.renew().await {
                Ok(true) => {}
                Ok(false) => return Err(Halt::Lost),
                Err(e) => return Err(Halt::Stop(e.to_string())),
            }
        }
        Ok(())
    }

    /// The replicable of `entry` and the kind of run it may join, when it is an event of a
    /// replicable this binary knows that may be consumed with its neighbours:
    /// `checksum_succeeded`, or (recording intent only) `created` / `updated`.
    fn run_of(&self, entry: &LogEntry) -> Option<(&'static ReplicableDescriptor, RunKind)> {
        let LogEntry::Event(raw) = entry else {
            return None;
        };
        let kind = match EventKind::from_name(&raw.event_name)? {
            EventKind::ChecksumSucceeded => RunKind::Checksums,
            EventKind::Created | EventKind::Updated if self.cursor.intent_only => RunKind::Changes,
            _ => return None,
        };
        let descriptor = self.catalogue.get(raw.replicable_name.as_str()).copied()?;
        Some((descriptor, kind))
    }

    /// Moves the batch's cursor to `id`, first opening a gap for the ids it steps over.
    fn advance(&mut self, gaps: &mut Gaps, id: EventId) {
        let previous = self.report.cursor;
        // From a fresh cursor (0) too: the ids below the first event read may be retention's
        // (they never appear, and the gap expires) or an append that has not committed yet (a
        // new secondary reading a busy PostgreSQL log), which must not be passed over. A gap
        // is one range however many ids it spans, and reading it again is one read.
        if id > previous + 1 {
            gaps.open(previous + 1, id - 1, self.cursor.site.now());
        }
        self.report.cursor = id;
    }

    /// Consumes a run of events of `descriptor`'s replicable (see [`run_of`](Self::run_of)) in
    /// one write: `None` when done. A run that cannot be taken together (an event that does
    /// not decode, or a refusal) comes back, to be consumed one event at a time, so that each
    /// event is consumed or skipped (and the cursor moves) exactly as alone.
    async fn consume_run(
        &mut self,
        descriptor: &'static ReplicableDescriptor,
        kind: RunKind,
        run: Vec<LogEntry>,
    ) -> Result<Option<Vec<LogEntry>>, Halt> {
        self.keep_lease().await?;
        let site = &self.cursor.site;
        let events: Option<Vec<Event>> = run
            .iter()
            .map(|entry| Event::try_from(entry.clone()).ok())
            .collect();
        let Some(events) = events else {
            return Ok(Some(run));
        };
        let consumed = match kind {
            RunKind::Checksums => {
                let ids: Vec<i64> = events.iter().map(|e| e.payload.model_id).collect();
                descriptor.consume_checksums(site, &ids).await
            }
            RunKind::Changes => descriptor.record_changes(site, &events).await,
        };
        match consumed {
            Ok(_) => {
                self.report.consumed += run.len();
                if !self.touched.contains(&descriptor.name) {
                    self.touched.push(descriptor.name);
                }
                Ok(None)
            }
            Err(e) if is_transient(&e) => Err(Halt::Stop(e.to_string())),
            // Refused: each event alone, to be skipped with its own record.
            Err(_) => Ok(Some(run)),
        }
    }

    /// Consumes one entry, or records it as skipped.
    async fn consume(&mut self, entry: LogEntry) -> Result<(), Halt> {
        self.keep_lease().await?;
        let site = &self.cursor.site;
        let event_id = entry.id();
        let outcome = match entry {
            LogEntry::Event(raw) => {
                dispatch(site, &self.catalogue, raw.clone(), self.cursor.intent_only)
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
                    })
            }
            // A row the primary cannot read is skipped like a malformed event: it would
            // otherwise stop the cursor for good.
            LogEntry::Damaged(damaged) => Err(Dispatch::Skip(damaged.skipped(site.now()))),
        };
        match outcome {
            Ok(name) => {
                self.report.consumed += 1;
                if !self.touched.contains(&name) {
                    self.touched.push(name);
                }
                Ok(())
            }
            Err(Dispatch::Skip(skipped)) => {
                warn!(event_id, reason = %skipped.reason, "skipping event");
                site.registry_store()
                    .record_skipped_event(&skipped)
                    .await
                    .map_err(|e| Halt::Stop(e.to_string()))?;
                self.report.skipped += 1;
                Ok(())
            }
            Err(Dispatch::Stop(reason)) => Err(Halt::Stop(reason)),
        }
    }
}

/// How long the cursor reads an open id gap again before it gives up on it: an append that
/// has not committed an hour after it drew its id is taken to have rolled back. (A
/// transaction that stays open longer after publishing has its event missed by the cursor,
/// and its record found by backfill.)
pub const GAP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// At most this many gaps are kept open; beyond it the oldest are given up. Appends that are
/// in flight at once leave at most one gap each, and a rolled-back batch one for all its ids.
const MAX_GAPS: usize = 256;

/// The open gaps of one batch, ascending and disjoint.
#[derive(Debug, Clone, Default, PartialEq)]
struct Gaps(Vec<CursorGap>);

impl Gaps {
    /// Removes and returns the gaps open for longer than [`GAP_TIMEOUT`].
    fn expire(&mut self, now: chrono::DateTime<chrono::Utc>) -> Vec<CursorGap> {
        let timeout = chrono::Duration::from_std(GAP_TIMEOUT).unwrap_or(chrono::Duration::MAX);
        let (expired, open) = self
            .0
            .iter()
            .partition(|g| now.signed_duration_since(g.noticed_at) > timeout);
        self.0 = open;
        expired
    }

    /// `id` appeared: it is no longer missing.
    fn fill(&mut self, id: EventId) {
        let Some(at) = self.0.iter().position(|g| g.first <= id && id <= g.last) else {
            return;
        };
        let gap = self.0.remove(at);
        let mut parts = Vec::with_capacity(2);
        if gap.first < id {
            parts.push(CursorGap {
                last: id - 1,
                ..gap
            });
        }
        if id < gap.last {
            parts.push(CursorGap {
                first: id + 1,
                ..gap
            });
        }
        self.0.splice(at..at, parts);
    }

    /// Ids `first..=last` were stepped over at `now`.
    fn open(&mut self, first: EventId, last: EventId, now: chrono::DateTime<chrono::Utc>) {
        let gap = CursorGap {
            first,
            last,
            noticed_at: now,
        };
        let at = self.0.partition_point(|g| g.last < first);
        self.0.insert(at, gap);
    }

    /// Gives up the oldest gaps beyond [`MAX_GAPS`], returning them.
    fn cap(&mut self) -> Vec<CursorGap> {
        if self.0.len() <= MAX_GAPS {
            return Vec::new();
        }
        let mut by_age: Vec<usize> = (0..self.0.len()).collect();
        by_age.sort_by_key(|&i| (self.0[i].noticed_at, self.0[i].first));
        let drop: std::collections::HashSet<usize> =
            by_age[..self.0.len() - MAX_GAPS].iter().copied().collect();
        let mut dropped = Vec::new();
        let mut kept = Vec::with_capacity(MAX_GAPS);
        for (i, gap) in self.0.iter().enumerate() {
            if drop.contains(&i) {
                dropped.push(*gap);
            } else {
                kept.push(*gap);
            }
        }
        self.0 = kept;
        dropped
    }
}

/// When the open gaps are read again: at every batch while the youngest is under 2 s old (a
/// transaction that commits late usually does so within milliseconds), and a caught-up
/// engine's wait ends in time for the next reading (every 20 ms at first); later less and less
/// often (a tenth of its age, at most every 10 s), so that gaps that will never fill (rolled
/// back appends) cost little.
#[derive(Debug, Default)]
pub(crate) struct GapSchedule {
    inner: std::sync::Mutex<ScheduleState>,
}

#[derive(Debug, Default)]
struct ScheduleState {
    youngest: Option<chrono::DateTime<chrono::Utc>>,
    checked_at: Option<std::time::Instant>,
}

impl GapSchedule {
    fn state(&self) -> std::sync::MutexGuard<'_, ScheduleState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pause between two readings of gaps whose youngest is `age` old.
    fn interval(age: chrono::Duration) -> std::time::Duration {
        let age = age.to_std().unwrap_or_default();
        (age / 10).clamp(
            std::time::Duration::from_millis(20),
            std::time::Duration::from_secs(10),
        )
    }

    fn due(&self, gaps: &[CursorGap], now: chrono::DateTime<chrono::Utc>) -> bool {
        let Some(youngest) = gaps.iter().map(|g| g.noticed_at).max() else {
            return false;
        };
        // Young gaps at every batch: the engine's waits are bounded by the interval instead.
        let age = now - youngest;
        age < chrono::Duration::seconds(2)
            || self
                .state()
                .checked_at
                .is_none_or(|at| at.elapsed() >= Self::interval(age))
    }

    fn checked(&self) {
        self.state().checked_at = Some(std::time::Instant::now());
    }

    fn remember(&self, gaps: &[CursorGap]) {
        self.state().youngest = gaps.iter().map(|g| g.noticed_at).max();
    }

    /// How long until the open gaps are due again, if there are any.
    pub(crate) fn next_in(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<std::time::Duration> {
        let state = self.state();
        let youngest = state.youngest?;
        let interval = Self::interval(now - youngest);
        Some(match state.checked_at {
            None => std::time::Duration::ZERO,
            Some(at) => interval.saturating_sub(at.elapsed()),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    fn spans(gaps: &Gaps) -> Vec<(EventId, EventId)> {
        gaps.0.iter().map(|g| (g.first, g.last)).collect()
    }

    #[test]
    fn gaps_open_in_order_and_split_as_ids_appear() {
        let mut gaps = Gaps::default();
        gaps.open(10, 14, at(0));
        gaps.open(3, 3, at(1));
        gaps.open(20, 20, at(2));
        assert_eq!(spans(&gaps), vec![(3, 3), (10, 14), (20, 20)]);
        gaps.fill(12);
        assert_eq!(spans(&gaps), vec![(3, 3), (10, 11), (13, 14), (20, 20)]);
        gaps.fill(10);
        gaps.fill(14);
        gaps.fill(3);
        assert_eq!(spans(&gaps), vec![(11, 11), (13, 13), (20, 20)]);
        // An id outside every gap changes nothing.
        gaps.fill(15);
        assert_eq!(spans(&gaps), vec![(11, 11), (13, 13), (20, 20)]);
        // The pieces keep the time their gap was noticed.
        assert_eq!(gaps.0[0].noticed_at, at(0));
    }

    #[test]
    fn gaps_expire_after_the_timeout() {
        let mut gaps = Gaps::default();
        gaps.open(1, 1, at(0));
        gaps.open(5, 6, at(100));
        let timeout = GAP_TIMEOUT.as_secs() as i64;
        assert!(gaps.expire(at(timeout)).is_empty());
        let expired = gaps.expire(at(timeout + 1));
        assert_eq!(
            expired
                .iter()
                .map(|g| (g.first, g.last))
                .collect::<Vec<_>>(),
            vec![(1, 1)]
        );
        assert_eq!(spans(&gaps), vec![(5, 6)]);
    }

    #[test]
    fn the_oldest_gaps_beyond_the_cap_are_given_up() {
        let mut gaps = Gaps::default();
        // Noticed newest first: the gaps with the smallest ids are the youngest.
        for i in 0..(MAX_GAPS as i64 + 3) {
            gaps.open(1_000 - 2 * i, 1_000 - 2 * i, at(i));
        }
        let dropped = gaps.cap();
        assert_eq!(
            dropped.iter().map(|g| g.first).collect::<Vec<_>>(),
            vec![996, 998, 1_000]
        );
        assert_eq!(gaps.0.len(), MAX_GAPS);
        assert!(gaps.0.windows(2).all(|w| w[0].last < w[1].first));
    }

    #[test]
    fn young_gaps_are_read_at_every_batch_old_ones_seldom() {
        let ms = std::time::Duration::from_millis;
        assert_eq!(GapSchedule::interval(chrono::Duration::zero()), ms(20));
        assert_eq!(GapSchedule::interval(chrono::Duration::seconds(5)), ms(500));
        assert_eq!(
            GapSchedule::interval(chrono::Duration::hours(1)),
            std::time::Duration::from_secs(10)
        );
        let schedule = GapSchedule::default();
        let gaps = [CursorGap {
            first: 4,
            last: 4,
            noticed_at: at(0),
        }];
        assert!(schedule.due(&gaps, at(600)), "never read: due");
        assert!(!schedule.due(&[], at(600)), "no gaps: nothing due");
        schedule.checked();
        schedule.remember(&gaps);
        assert!(!schedule.due(&gaps, at(600)), "read just now, 10 min old");
        assert!(schedule.due(&gaps, at(1)), "read just now, but 1 s old");
        let next = schedule.next_in(at(600)).unwrap();
        assert!(next > ms(9_000) && next <= ms(10_000), "{next:?}");
        schedule.remember(&[]);
        assert_eq!(schedule.next_in(at(600)), None);
    }
}
