//! A secondary's tracking database.

use std::ops::Range;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::error::StoreError;
use crate::domain::event::{CursorGap, EventId, SkippedEvent};
use crate::domain::registry::{RegistryRecord, StuckCutoffs, SyncState};
use crate::domain::verification::VerificationState;

/// The name the replication switch of a whole site is stored under (per-replicable switches use
/// the replicable's name).
pub const SITE_SWITCH: &str = "*";

/// A `created` / `updated` event as the registry notes it (see
/// [`RegistryStore::mark_changes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotedChange {
    /// The record.
    pub model_id: i64,
    /// When the primary published the change.
    pub published_at: DateTime<Utc>,
    /// The generation the change brought the record to, where the model has one.
    pub generation: Option<i64>,
}

/// Registry counts of one replicable on a secondary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryCounts {
    /// Rows.
    pub registry: u64,
    /// Rows pending.
    pub pending: u64,
    /// Rows started.
    pub started: u64,
    /// Rows synced.
    pub synced: u64,
    /// Rows failed.
    pub failed: u64,
    /// Synced rows whose verification is not disabled.
    pub verification_total: u64,
    /// Rows whose verification succeeded.
    pub verified: u64,
    /// Rows whose verification failed.
    pub verification_failed: u64,
    /// Rows whose last verification found a checksum mismatch.
    pub checksum_mismatch: u64,
}

/// Which registry rows [`RegistryStore::list`] returns: every row, or those in a sync state
/// and / or a verification state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryFilter {
    /// Only rows in this sync state.
    pub state: Option<SyncState>,
    /// Only rows in this verification state.
    pub verification: Option<VerificationState>,
}

impl RegistryFilter {
    /// Whether `row` passes the filter.
    pub fn matches(&self, row: &RegistryRecord) -> bool {
        self.state.is_none_or(|s| s == row.state)
            && self
                .verification
                .is_none_or(|v| v == row.verification.verification_state)
    }
}

/// Registries (one row per replicated record), the log cursor and the skipped-event record of a
/// secondary.
///
/// # Whose clock
/// Workers on several machines may share one database, and their clocks disagree. A store
/// backed by a database measures leases, claims and heartbeats on the database's clock: the
/// `now` its methods take is then only the caller's guess, and is ignored where a method says
/// so. Stuck cutoffs are computed by the caller from [`RegistryStore::now`]. The in-memory
/// store has no other clock and uses the `now` it is given.
#[async_trait]
pub trait RegistryStore: Send + Sync + std::fmt::Debug {
    /// The store's current time: the time leases, claims, heartbeats and stuck cutoffs are
    /// measured against. A SQL store reads the database's clock; the default (and the in-memory
    /// store) returns `local_now`, the caller's clock.
    async fn now(&self, local_now: DateTime<Utc>) -> Result<DateTime<Utc>, StoreError> {
        Ok(local_now)
    }

    /// One row.
    async fn get(&self, name: &str, model_id: i64) -> Result<Option<RegistryRecord>, StoreError>;

    /// Creates the row in `pending`, or puts an existing row back to `pending`
    /// ([`RegistryRecord::mark_pending`]). Returns the row as written.
    async fn mark_pending(
        &self,
        name: &str,
        model_id: i64,
        now: DateTime<Utc>,
    ) -> Result<RegistryRecord, StoreError>;

    /// [`mark_pending`](Self::mark_pending) for a change the primary published at
    /// `published_at`: also notes that time ([`RegistryRecord::note_change`]), from which the
    /// replication lag of the next sync is measured.
    async fn mark_changed(
        &self,
        name: &str,
        model_id: i64,
        now: DateTime<Utc>,
        published_at: DateTime<Utc>,
    ) -> Result<RegistryRecord, StoreError>;

    /// [`mark_changed`](Self::mark_changed) for a change that brought the record to
    /// `generation`, unless the row already holds that generation or a newer one, synced (a
    /// stale event): then nothing is written and `None` comes back. The default reads the row
    /// first; a SQL store decides in the statement that writes it.
    async fn mark_changed_unless_held(
        &self,
        name: &str,
        model_id: i64,
        now: DateTime<Utc>,
        published_at: DateTime<Utc>,
        generation: i64,
    ) -> Result<Option<RegistryRecord>, StoreError> {
        if let Some(row) = self.get(name, model_id).await?
            && row.state == SyncState::Synced
            && row.synced_generation.is_some_and(|held| held >= generation)
        {
            return Ok(None);
        }
        self.mark_changed(name, model_id, now, published_at)
            .await
            .map(Some)
    }

    /// Notes a run of changes the log cursor read together, each as
    /// [`mark_changed`](Self::mark_changed) (no generation) or
    /// [`mark_changed_unless_held`](Self::mark_changed_unless_held) would alone. No record is
    /// named twice. Returns how many rows were marked (stale changes mark nothing). The default
    /// marks them one at a time; a SQL store writes them in one transaction, one upsert per
    /// round on PostgreSQL and two statements per round on SQLite.
    async fn mark_changes(
        &self,
        name: &str,
        changes: &[NotedChange],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut marked = 0;
        for change in changes {
            let row = match change.generation {
                Some(generation) => {
                    self.mark_changed_unless_held(
                        name,
                        change.model_id,
                        now,
                        change.published_at,
                        generation,
                    )
                    .await?
                }
                None => Some(
                    self.mark_changed(name, change.model_id, now, change.published_at)
                        .await?,
                ),
            };
            marked += u64::from(row.is_some());
        }
        Ok(marked)
    }

    /// Creates pending rows for the ids that have none. Returns how many were created.
    async fn insert_pending(
        &self,
        name: &str,
        model_ids: &[i64],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    /// Writes `row` if the stored row still has `row.version`; the stored version is bumped.
    /// Returns whether it was written.
    async fn update(&self, name: &str, row: &RegistryRecord) -> Result<bool, StoreError>;

    /// Moves up to `limit` rows due for a sync to `started` and returns them, in scheduling order
    /// (never attempted pending rows first, then by `retry_at`, missing first, then by id). No
    /// two callers get the same row. Due-ness and the `last_synced_at` / `heartbeat_at` the
    /// claim sets are on the store's clock ([`RegistryStore::now`]); `now` is used only by a
    /// store without a clock of its own.
    async fn claim_for_sync(
        &self,
        name: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<RegistryRecord>, StoreError>;

    /// [`claim_for_sync`](Self::claim_for_sync) unless one of the replication switches
    /// `switches` is off (see [`replication_enabled_all`](Self::replication_enabled_all)):
    /// then nothing is claimed. What the engine's sync workers call. The default reads the
    /// switches, then claims; a SQL store reads them in the claiming statement, so that a
    /// pause holds from the next claim on, with one statement instead of two.
    async fn claim_for_sync_while_enabled(
        &self,
        name: &str,
        switches: &[&str],
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<RegistryRecord>, StoreError> {
        if !self.replication_enabled_all(switches).await? {
            return Ok(Vec::new());
        }
        self.claim_for_sync(name, now, limit).await
    }

    /// Moves up to `limit` synced rows whose verification is due to verification `started` and
    /// returns them, never verified first, then least recently verified (`verified_at`), then
    /// by id. No two callers get the same row. Due-ness and the `verification_started_at` /
    /// `heartbeat_at` the claim sets are on the store's clock ([`RegistryStore::now`]).
    async fn claim_for_verification(
        &self,
        name: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<RegistryRecord>, StoreError>;

    /// Rows whose sync or verification is `started` and ran past its timeout or lost its
    /// worker (see [`StuckCutoffs`]), at most `limit`. The cutoffs are compared with the times
    /// the store wrote (its own clock): compute them from [`RegistryStore::now`].
    async fn stuck(
        &self,
        name: &str,
        cutoffs: &StuckCutoffs,
        limit: usize,
    ) -> Result<Vec<RegistryRecord>, StoreError>;

    /// Records that the worker holding the row at `version` is alive, at the store's current
    /// time ([`RegistryStore::now`]; `now` is used only by a store without a clock of its own).
    /// The version is not bumped. A change noted on a `started` row while its sync runs (`change_pending`, which
    /// bumps the version) does not stop the sync's heartbeats: that sync is still alive, and
    /// must not be failed as abandoned. Returns whether the heartbeat was recorded.
    async fn heartbeat(
        &self,
        name: &str,
        model_id: i64,
        version: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Removes a row. Returns whether it existed.
    async fn delete(&self, name: &str, model_id: i64) -> Result<bool, StoreError>;

    /// Registry ids in `range`, ascending, at most `limit`.
    async fn ids(
        &self,
        name: &str,
        range: Range<i64>,
        limit: usize,
    ) -> Result<Vec<i64>, StoreError>;

    /// Counts by state. Status and metrics read them on a period: a SQL store keeps them as the
    /// rows change (in the same transaction), so reading them costs the same at any size.
    async fn counts(&self, name: &str) -> Result<RegistryCounts, StoreError>;

    /// Rows passing `filter` with an id greater than `after_id` (all when `None`), ascending by
    /// id, at most `limit`: one page of an operator's listing. Never creates tables.
    async fn list(
        &self,
        name: &str,
        filter: RegistryFilter,
        after_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<RegistryRecord>, StoreError>;

    /// An operator's resync of the existing rows among `model_ids`, in one statement: each goes
    /// back to pending as by [`RegistryRecord::mark_pending`] (a row whose sync is running stays
    /// `started` with `change_pending` set), with `retry_at` set to now, so that a large resync
    /// is scheduled behind changes that arrive meanwhile instead of stalling them. Ids without a
    /// row are ignored. Returns how many rows changed.
    async fn resync_many(&self, name: &str, model_ids: &[i64]) -> Result<u64, StoreError>;

    /// An operator's re-verification of the rows among `model_ids` that are synced and whose
    /// verification is succeeded or failed (not already pending, running or disabled): their
    /// verification goes back to pending
    /// (keeping its retry count, as [`crate::domain::verification::Verification::mark_pending`]).
    /// Returns how many rows changed.
    async fn reverify_many(&self, name: &str, model_ids: &[i64]) -> Result<u64, StoreError>;

    /// The sync queue's depth: rows pending plus failed rows whose retry is due (on the store's
    /// clock; `now` is used only by a store without a clock of its own). A SQL store takes the
    /// pending rows from its kept counts and counts the due failed rows through their index.
    async fn queue_depth(&self, name: &str, now: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Creates (or migrates) the tables of replicable `name` where the store has tables per
    /// replicable. Read paths never create tables; the engine calls this at start. The default
    /// does nothing.
    async fn create_tables(&self, name: &str) -> Result<(), StoreError> {
        let _ = name;
        Ok(())
    }

    /// Sends up to `limit` synced rows whose verification succeeded before `verified_before`
    /// back to verification pending (re-verification, in batches), oldest first. Their
    /// checksum is kept until it is recomputed. Returns how many rows changed.
    async fn reverify_older_than(
        &self,
        name: &str,
        verified_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, StoreError>;

    /// Ids in `range` of synced rows whose verification is disabled (copies waiting for the
    /// primary's checksum), ascending, at most `limit`.
    async fn waiting_for_primary_checksum(
        &self,
        name: &str,
        range: Range<i64>,
        limit: usize,
    ) -> Result<Vec<i64>, StoreError>;

    /// Turns verification on for the synced rows among `model_ids` whose verification is
    /// disabled (the primary's checksum turned out to exist): they go to verification pending.
    /// Returns how many rows changed.
    async fn enable_verification(&self, name: &str, model_ids: &[i64]) -> Result<u64, StoreError>;

    /// The primary has a new checksum for the records of `model_ids` (`checksum_succeeded`):
    /// their synced rows whose verification succeeded (against an older checksum) or is
    /// disabled (waiting for one) go to verification pending. Rows in other states are left:
    /// a copy being synced reads the checksum when it completes, one being verified compares
    /// with the checksum it read. Returns how many rows changed.
    ///
    /// The default reads each row and writes it back with a compare-and-set; a SQL store
    /// changes them in one statement.
    async fn reverify(&self, name: &str, model_ids: &[i64]) -> Result<u64, StoreError> {
        let mut changed = 0;
        for &id in model_ids {
            for attempt in 0.. {
                let Some(mut row) = self.get(name, id).await? else {
                    break;
                };
                let waiting = matches!(
                    row.verification.verification_state,
                    VerificationState::Succeeded | VerificationState::Disabled
                );
                if row.state != SyncState::Synced || !waiting {
                    break;
                }
                row.verification.mark_pending();
                if self.update(name, &row).await? {
                    changed += 1;
                    break;
                }
                if attempt >= 8 {
                    return Err(StoreError::Backend {
                        store: format!("{self:?}"),
                        operation: "reverify",
                        reason: format!("{name} {id}: the row kept changing under the write"),
                    });
                }
            }
        }
        Ok(changed)
    }

    /// Switches the replication of replicable `name` on this site on or off, persistently.
    async fn set_replication_enabled(&self, name: &str, enabled: bool) -> Result<(), StoreError>;

    /// Whether the replication of replicable `name` is on (the default).
    async fn replication_enabled(&self, name: &str) -> Result<bool, StoreError>;

    /// Whether every switch of `names` is on (a switch never set is on): what a sync claim
    /// reads, the site's switch and its replicable's. The default asks
    /// [`replication_enabled`](Self::replication_enabled) for each; a SQL store reads them in
    /// one statement.
    async fn replication_enabled_all(&self, names: &[&str]) -> Result<bool, StoreError> {
        for name in names {
            if !self.replication_enabled(name).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The id of the last event the log cursor processed (0 before the first).
    async fn cursor(&self) -> Result<EventId, StoreError>;

    /// Saves the log cursor's position.
    async fn save_cursor(&self, event_id: EventId) -> Result<(), StoreError>;

    /// The log cursor's open gaps (ids it stepped over that may still appear), ascending. A
    /// store that cannot keep them has none (the default).
    async fn cursor_gaps(&self) -> Result<Vec<CursorGap>, StoreError> {
        Ok(Vec::new())
    }

    /// Saves the log cursor's position and its open gaps in one write. The default saves the
    /// position only: the gaps are then forgotten, and an event that commits late is found
    /// by backfill instead of by the cursor.
    async fn save_cursor_and_gaps(
        &self,
        event_id: EventId,
        gaps: &[CursorGap],
    ) -> Result<(), StoreError> {
        let _ = gaps;
        self.save_cursor(event_id).await
    }

    /// The log cursor's position and open gaps, read together (a SQL store reads them in one
    /// statement).
    async fn cursor_state(&self) -> Result<(EventId, Vec<CursorGap>), StoreError> {
        Ok((self.cursor().await?, self.cursor_gaps().await?))
    }

    /// Saves the log cursor's position and open gaps unless another holder holds `lease` (a
    /// live lease, on the store's clock); returns whether it saved. A cursor that lost its
    /// lease (it expired and another cursor took it) must not move the position the other one
    /// now owns. The default takes or renews the lease, then saves; a SQL store saves in one
    /// statement that checks the lease.
    async fn save_cursor_and_gaps_holding(
        &self,
        event_id: EventId,
        gaps: &[CursorGap],
        lease: &str,
        holder: &str,
        now: DateTime<Utc>,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        if !self.acquire_lease(lease, holder, now, ttl).await? {
            return Ok(false);
        }
        self.save_cursor_and_gaps(event_id, gaps).await?;
        Ok(true)
    }

    /// Takes or renews the lease `lease` for `holder` for `ttl`. Succeeds if the lease is free,
    /// expired, or already held by `holder`. Expiry is measured on the store's clock
    /// ([`RegistryStore::now`]): a holder whose clock runs ahead cannot take a live lease. `now`
    /// is used only by a store without a clock of its own.
    async fn acquire_lease(
        &self,
        lease: &str,
        holder: &str,
        now: DateTime<Utc>,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError>;

    /// Gives up the lease if `holder` holds it.
    async fn release_lease(&self, lease: &str, holder: &str) -> Result<(), StoreError>;

    /// Records an event the cursor could not process and skipped.
    async fn record_skipped_event(&self, event: &SkippedEvent) -> Result<(), StoreError>;

    /// The skipped events, oldest first, at most `limit`.
    async fn skipped_events(&self, limit: usize) -> Result<Vec<SkippedEvent>, StoreError>;

    /// Primary: stores the last status report of a secondary, replacing its previous one.
    async fn put_secondary_status(
        &self,
        status: &crate::storage::SecondaryStatusRow,
    ) -> Result<(), StoreError>;

    /// Primary: the last status report of every secondary that reported, by name.
    async fn secondary_statuses(
        &self,
    ) -> Result<Vec<crate::storage::SecondaryStatusRow>, StoreError>;
}
