//! The in-memory backend of every storage role: for unit tests and examples. Nothing survives
//! the process.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    CompletedVerification, EventLog, Publication, Published, RecordStore, RegistryCounts,
    RegistryFilter, RegistryStore, StoredRecord, VerificationCounts, VerificationStore,
};
use crate::domain::error::StoreError;
use crate::domain::event::{
    CursorGap, EventId, EventKind, LogEntry, NewEvent, SkippedEvent, StoredEvent,
};
use crate::domain::registry::{RegistryRecord, StuckCutoffs, SyncState};
use crate::domain::verification::{VerificationRecord, VerificationState};

type Key = (String, i64);

#[derive(Debug, Default)]
struct State {
    events: Vec<StoredEvent>,
    records: BTreeMap<Key, StoredRecord>,
    verification: BTreeMap<Key, VerificationRecord>,
    registry: BTreeMap<Key, RegistryRecord>,
    cursor: EventId,
    cursor_gaps: Vec<CursorGap>,
    skipped: Vec<SkippedEvent>,
    leases: std::collections::HashMap<String, (String, DateTime<Utc>)>,
    replication_disabled: std::collections::HashSet<String>,
    secondaries: BTreeMap<String, crate::storage::SecondaryStatusRow>,
}

impl State {
    fn append(&mut self, event: &NewEvent, now: DateTime<Utc>) -> EventId {
        let id = self.events.last().map_or(1, |e| e.id + 1);
        self.events.push(StoredEvent {
            id,
            replicable_name: event.replicable_name.clone(),
            event_name: event.kind.name().to_owned(),
            payload: event.payload_json(),
            created_at: now,
        });
        id
    }

    fn upsert(&mut self, name: &str, model_id: i64, body: &serde_json::Value) -> i64 {
        let entry = self
            .records
            .entry(key(name, model_id))
            .or_insert_with(|| StoredRecord {
                model_id,
                generation: 0,
                body: serde_json::Value::Null,
            });
        entry.generation += 1;
        entry.body = body.clone();
        entry.generation
    }

    /// The writes of one publication and its event (see [`EventLog::publish`]).
    fn publish(&mut self, publication: &Publication, now: DateTime<Utc>) -> Published {
        let mut event = publication.event.clone();
        let (name, id) = (event.replicable_name.clone(), event.payload.model_id);
        let mut generation = None;
        match event.kind {
            EventKind::Created | EventKind::Updated => {
                let body = event
                    .payload
                    .record
                    .clone()
                    .unwrap_or(serde_json::Value::Null);
                let g = self.upsert(&name, id, &body);
                event.payload.generation = Some(g);
                generation = Some(g);
                if publication.verifiable {
                    let keep = event.kind == EventKind::Created
                        && !publication.mutable
                        && self.verification.get(&key(&name, id)).is_some_and(|row| {
                            row.verification.verification_state == VerificationState::Succeeded
                        });
                    if !keep {
                        self.mark_verification_pending(&name, id);
                    }
                }
            }
            EventKind::Deleted => {
                self.records.remove(&key(&name, id));
                self.verification.remove(&key(&name, id));
            }
            EventKind::ChecksumSucceeded => {}
        }
        let event_id = self.append(&event, now);
        Published {
            event_id,
            generation,
        }
    }

    /// Writes `row` if the stored row still has its version (see
    /// [`VerificationStore::update`]).
    fn update_verification(&mut self, name: &str, row: &VerificationRecord) -> bool {
        match self.verification.get_mut(&key(name, row.model_id)) {
            Some(stored) if stored.version == row.version => {
                *stored = row.clone();
                stored.version += 1;
                true
            }
            _ => false,
        }
    }

    fn mark_verification_pending(&mut self, name: &str, model_id: i64) -> VerificationRecord {
        self.verification
            .entry(key(name, model_id))
            .and_modify(|row| {
                row.verification.mark_pending();
                row.version += 1;
            })
            .or_insert_with(|| VerificationRecord::new(model_id))
            .clone()
    }
}

/// All storage roles in one process-local value.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn key(name: &str, id: i64) -> Key {
    (name.to_owned(), id)
}

fn of_name<'a, V>(
    map: &'a BTreeMap<Key, V>,
    name: &'a str,
) -> impl Iterator<Item = (&'a Key, &'a V)> + 'a {
    map.range(key(name, i64::MIN)..=key(name, i64::MAX))
}

fn ids_in<V>(map: &BTreeMap<Key, V>, name: &str, range: Range<i64>, limit: usize) -> Vec<i64> {
    if range.is_empty() {
        return Vec::new();
    }
    map.range(key(name, range.start)..key(name, range.end))
        .map(|((_, id), _)| *id)
        .take(limit)
        .collect()
}

#[async_trait]
impl EventLog for MemoryStore {
    async fn append(
        &self,
        events: &[NewEvent],
        now: DateTime<Utc>,
    ) -> Result<Vec<EventId>, StoreError> {
        let mut state = self.lock();
        Ok(events
            .iter()
            .map(|event| state.append(event, now))
            .collect())
    }

    async fn read_after(&self, after: EventId, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        let state = self.lock();
        let start = state.events.partition_point(|e| e.id <= after);
        Ok(state.events[start..]
            .iter()
            .take(limit)
            .cloned()
            .map(LogEntry::Event)
            .collect())
    }

    async fn last_event_id(&self) -> Result<Option<EventId>, StoreError> {
        Ok(self.lock().events.last().map(|e| e.id))
    }

    async fn delete_older_than(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let mut state = self.lock();
        let old = state
            .events
            .iter()
            .take(limit)
            .take_while(|e| e.created_at < before)
            .count();
        state.events.drain(..old);
        Ok(old as u64)
    }

    async fn delete_up_to(&self, up_to: EventId, limit: usize) -> Result<u64, StoreError> {
        let mut state = self.lock();
        let old = state
            .events
            .iter()
            .take(limit)
            .take_while(|e| e.id <= up_to)
            .count();
        state.events.drain(..old);
        Ok(old as u64)
    }

    async fn publish(
        &self,
        publication: &Publication,
        now: DateTime<Utc>,
    ) -> Result<Option<Published>, StoreError> {
        if !publication.in_catalogue {
            // Generations of rows in an application's own table live with that table's SQL
            // database (`SqlTable`), not here.
            return Ok(None);
        }
        // One lock held throughout: nobody sees the record without its event.
        Ok(Some(self.lock().publish(publication, now)))
    }

    async fn publish_batch(
        &self,
        publications: &[Publication],
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<Published>>, StoreError> {
        if publications.iter().any(|p| !p.in_catalogue) {
            return Ok(None);
        }
        let mut state = self.lock();
        Ok(Some(
            publications
                .iter()
                .map(|publication| state.publish(publication, now))
                .collect(),
        ))
    }

    async fn complete_verifications(
        &self,
        name: &str,
        completed: &[CompletedVerification],
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<bool>>, StoreError> {
        let mut state = self.lock();
        let written = completed
            .iter()
            .map(|c| {
                let written = state.update_verification(name, &c.row);
                if written && let Some(event) = &c.event {
                    state.append(event, now);
                }
                written
            })
            .collect();
        Ok(Some(written))
    }
}

#[async_trait]
impl RecordStore for MemoryStore {
    async fn upsert(
        &self,
        name: &str,
        model_id: i64,
        body: &serde_json::Value,
    ) -> Result<i64, StoreError> {
        Ok(self.lock().upsert(name, model_id, body))
    }

    async fn put_unless_older(
        &self,
        name: &str,
        record: &StoredRecord,
    ) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let k = key(name, record.model_id);
        match state.records.get(&k) {
            Some(existing) if existing.generation > record.generation => Ok(false),
            _ => {
                state.records.insert(k, record.clone());
                Ok(true)
            }
        }
    }

    async fn get(&self, name: &str, model_id: i64) -> Result<Option<StoredRecord>, StoreError> {
        Ok(self.lock().records.get(&key(name, model_id)).cloned())
    }

    async fn delete(&self, name: &str, model_id: i64) -> Result<bool, StoreError> {
        Ok(self.lock().records.remove(&key(name, model_id)).is_some())
    }

    async fn ids(
        &self,
        name: &str,
        range: Range<i64>,
        limit: usize,
    ) -> Result<Vec<i64>, StoreError> {
        Ok(ids_in(&self.lock().records, name, range, limit))
    }

    async fn count(&self, name: &str) -> Result<u64, StoreError> {
        Ok(of_name(&self.lock().records, name).count() as u64)
    }
}

#[async_trait]
impl VerificationStore for MemoryStore {
    async fn get(
        &self,
        name: &str,
        model_id: i64,
    ) -> Result<Option<VerificationRecord>, StoreError> {
        Ok(self.lock().verification.get(&key(name, model_id)).cloned())
    }

    async fn mark_pending(
        &self,
        name: &str,
        model_id: i64,
    ) -> Result<VerificationRecord, StoreError> {
        Ok(self.lock().mark_verification_pending(name, model_id))
    }

    async fn update(&self, name: &str, row: &VerificationRecord) -> Result<bool, StoreError> {
        Ok(self.lock().update_verification(name, row))
    }

    async fn claim(
        &self,
        name: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<VerificationRecord>, StoreError> {
        let mut state = self.lock();
        let mut due: Vec<(Option<DateTime<Utc>>, i64)> = of_name(&state.verification, name)
            .filter(|(_, row)| row.verification.is_due(now))
            .map(|((_, id), row)| (row.verification.verified_at, *id))
            .collect();
        due.sort();
        let mut claimed = Vec::new();
        for (_, id) in due.into_iter().take(limit) {
            let row = state
                .verification
                .get_mut(&key(name, id))
                .expect("row listed above");
            if row.start(now).is_ok() {
                row.version += 1;
                claimed.push(row.clone());
            }
        }
        Ok(claimed)
    }

    async fn stuck(
        &self,
        name: &str,
        cutoffs: &StuckCutoffs,
        limit: usize,
    ) -> Result<Vec<VerificationRecord>, StoreError> {
        Ok(of_name(&self.lock().verification, name)
            .map(|(_, row)| row)
            .filter(|row| {
                let v = &row.verification;
                v.verification_state == VerificationState::Started
                    && (v
                        .verification_started_at
                        .is_none_or(|at| at < cutoffs.verification_started_before)
                        || row
                            .heartbeat_at
                            .or(v.verification_started_at)
                            .is_none_or(|at| at < cutoffs.heartbeat_before))
            })
            .take(limit)
            .cloned()
            .collect())
    }

    async fn heartbeat(
        &self,
        name: &str,
        model_id: i64,
        version: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut state = self.lock();
        match state.verification.get_mut(&key(name, model_id)) {
            Some(row) if row.version == version => {
                row.heartbeat_at = Some(now);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn delete(&self, name: &str, model_id: i64) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .verification
            .remove(&key(name, model_id))
            .is_some())
    }

    async fn counts(&self, name: &str) -> Result<VerificationCounts, StoreError> {
        let state = self.lock();
        let mut counts = VerificationCounts::default();
        for (_, row) in of_name(&state.verification, name) {
            counts.total += 1;
            match row.verification.verification_state {
                VerificationState::Succeeded => counts.succeeded += 1,
                VerificationState::Failed => counts.failed += 1,
                _ => {}
            }
        }
        Ok(counts)
    }

    async fn reverify_older_than(
        &self,
        name: &str,
        verified_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let mut state = self.lock();
        Ok(reverify_oldest(
            &mut state.verification,
            name,
            verified_before,
            limit,
            |row| (&mut row.verification, &mut row.version),
            |_| true,
        ))
    }

    async fn backfill_missing(&self, name: &str, limit: usize) -> Result<u64, StoreError> {
        let mut state = self.lock();
        let missing: Vec<i64> = of_name(&state.records, name)
            .map(|((_, id), _)| *id)
            .filter(|id| !state.verification.contains_key(&key(name, *id)))
            .take(limit)
            .collect();
        for id in &missing {
            state
                .verification
                .insert(key(name, *id), VerificationRecord::new(*id));
        }
        Ok(missing.len() as u64)
    }
}

/// Whether a verification succeeded before `before`.
fn succeeded_before(v: &crate::domain::verification::Verification, before: DateTime<Utc>) -> bool {
    v.verification_state == VerificationState::Succeeded
        && v.verified_at.is_some_and(|at| at < before)
}

/// Re-verification in one map: up to `limit` eligible rows whose checksum succeeded before
/// `before`, oldest first, go back to verification pending (their version bumped).
fn reverify_oldest<V>(
    map: &mut BTreeMap<Key, V>,
    name: &str,
    before: DateTime<Utc>,
    limit: usize,
    columns: impl Fn(&mut V) -> (&mut crate::domain::verification::Verification, &mut i64),
    eligible: impl Fn(&V) -> bool,
) -> u64 {
    let mut due: Vec<(Option<DateTime<Utc>>, Key)> = map
        .range_mut(key(name, i64::MIN)..=key(name, i64::MAX))
        .filter(|(_, row)| eligible(row))
        .filter_map(|(key, row)| {
            let (verification, _) = columns(row);
            succeeded_before(verification, before).then(|| (verification.verified_at, key.clone()))
        })
        .collect();
    due.sort();
    due.truncate(limit);
    for (_, key) in &due {
        if let Some(row) = map.get_mut(key) {
            let (verification, version) = columns(row);
            verification.verification_state = VerificationState::Pending;
            *version += 1;
        }
    }
    due.len() as u64
}

impl MemoryStore {
    /// Creates the row in `pending` or puts it back there, noting `changed_at` if given.
    fn upsert_pending(
        &self,
        name: &str,
        model_id: i64,
        now: DateTime<Utc>,
        changed_at: Option<DateTime<Utc>>,
    ) -> RegistryRecord {
        let mut state = self.lock();
        let row = state
            .registry
            .entry(key(name, model_id))
            .and_modify(|row| {
                row.mark_pending();
                row.version += 1;
            })
            .or_insert_with(|| RegistryRecord::new_pending(model_id, now));
        if let Some(at) = changed_at {
            row.note_change(at);
        }
        row.clone()
    }
}

#[async_trait]
impl RegistryStore for MemoryStore {
    async fn get(&self, name: &str, model_id: i64) -> Result<Option<RegistryRecord>, StoreError> {
        Ok(self.lock().registry.get(&key(name, model_id)).cloned())
    }

    async fn mark_pending(
        &self,
        name: &str,
        model_id: i64,
        now: DateTime<Utc>,
    ) -> Result<RegistryRecord, StoreError> {
        Ok(self.upsert_pending(name, model_id, now, None))
    }

    async fn mark_changed(
        &self,
        name: &str,
        model_id: i64,
        now: DateTime<Utc>,
        published_at: DateTime<Utc>,
    ) -> Result<RegistryRecord, StoreError> {
        Ok(self.upsert_pending(name, model_id, now, Some(published_at)))
    }

    async fn insert_pending(
        &self,
        name: &str,
        model_ids: &[i64],
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut state = self.lock();
        let mut inserted = 0;
        for &id in model_ids {
            if let std::collections::btree_map::Entry::Vacant(slot) =
                state.registry.entry(key(name, id))
            {
                slot.insert(RegistryRecord::new_pending(id, now));
                inserted += 1;
            }
        }
        Ok(inserted)
    }

    async fn update(&self, name: &str, row: &RegistryRecord) -> Result<bool, StoreError> {
        let mut state = self.lock();
        match state.registry.get_mut(&key(name, row.model_id)) {
            Some(stored) if stored.version == row.version => {
                *stored = row.clone();
                stored.version += 1;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn claim_for_sync(
        &self,
        name: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<RegistryRecord>, StoreError> {
        let mut state = self.lock();
        let mut due: Vec<_> = of_name(&state.registry, name)
            .filter(|(_, row)| row.is_due(now))
            .map(|(_, row)| row.schedule_key())
            .collect();
        due.sort();
        let mut claimed = Vec::new();
        for (_, _, id) in due.into_iter().take(limit) {
            let row = state
                .registry
                .get_mut(&key(name, id))
                .expect("row listed above");
            if row.start(now).is_ok() {
                row.version += 1;
                claimed.push(row.clone());
            }
        }
        Ok(claimed)
    }

    async fn claim_for_verification(
        &self,
        name: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<RegistryRecord>, StoreError> {
        let mut state = self.lock();
        let mut due: Vec<(Option<DateTime<Utc>>, i64)> = of_name(&state.registry, name)
            .filter(|(_, row)| row.state == SyncState::Synced && row.verification.is_due(now))
            .map(|((_, id), row)| (row.verification.verified_at, *id))
            .collect();
        due.sort();
        let mut claimed = Vec::new();
        for (_, id) in due.into_iter().take(limit) {
            let row = state
                .registry
                .get_mut(&key(name, id))
                .expect("row listed above");
            if row.verification.start(now).is_ok() {
                row.heartbeat_at = Some(now);
                row.version += 1;
                claimed.push(row.clone());
            }
        }
        Ok(claimed)
    }

    async fn stuck(
        &self,
        name: &str,
        cutoffs: &StuckCutoffs,
        limit: usize,
    ) -> Result<Vec<RegistryRecord>, StoreError> {
        let older =
            |at: Option<DateTime<Utc>>, cutoff: DateTime<Utc>| at.is_none_or(|at| at < cutoff);
        Ok(of_name(&self.lock().registry, name)
            .map(|(_, row)| row)
            .filter(|row| {
                let v = &row.verification;
                let sync_stuck = row.state == SyncState::Started
                    && (older(row.last_synced_at, cutoffs.sync_started_before)
                        || older(
                            row.heartbeat_at.or(row.last_synced_at),
                            cutoffs.heartbeat_before,
                        ));
                let verification_stuck = v.verification_state == VerificationState::Started
                    && (older(
                        v.verification_started_at,
                        cutoffs.verification_started_before,
                    ) || older(
                        row.heartbeat_at.or(v.verification_started_at),
                        cutoffs.heartbeat_before,
                    ));
                sync_stuck || verification_stuck
            })
            .take(limit)
            .cloned()
            .collect())
    }

    async fn heartbeat(
        &self,
        name: &str,
        model_id: i64,
        version: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut state = self.lock();
        match state.registry.get_mut(&key(name, model_id)) {
            Some(row)
                if row.version == version
                    || (row.state == SyncState::Started
                        && row.change_pending
                        && row.version > version) =>
            {
                row.heartbeat_at = Some(now);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn delete(&self, name: &str, model_id: i64) -> Result<bool, StoreError> {
        Ok(self.lock().registry.remove(&key(name, model_id)).is_some())
    }

    async fn ids(
        &self,
        name: &str,
        range: Range<i64>,
        limit: usize,
    ) -> Result<Vec<i64>, StoreError> {
        Ok(ids_in(&self.lock().registry, name, range, limit))
    }

    async fn counts(&self, name: &str) -> Result<RegistryCounts, StoreError> {
        let state = self.lock();
        let mut counts = RegistryCounts::default();
        for (_, row) in of_name(&state.registry, name) {
            counts.registry += 1;
            match row.state {
                SyncState::Pending => counts.pending += 1,
                SyncState::Started => counts.started += 1,
                SyncState::Synced => counts.synced += 1,
                SyncState::Failed => counts.failed += 1,
            }
            let v = &row.verification;
            if row.state == SyncState::Synced && v.verification_state != VerificationState::Disabled
            {
                counts.verification_total += 1;
            }
            match v.verification_state {
                VerificationState::Succeeded => counts.verified += 1,
                VerificationState::Failed => counts.verification_failed += 1,
                _ => {}
            }
            if v.checksum_mismatch {
                counts.checksum_mismatch += 1;
            }
        }
        Ok(counts)
    }

    async fn list(
        &self,
        name: &str,
        filter: RegistryFilter,
        after_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<RegistryRecord>, StoreError> {
        let state = self.lock();
        let Some(from) = after_id.map_or(Some(i64::MIN), |id| id.checked_add(1)) else {
            return Ok(Vec::new());
        };
        Ok(state
            .registry
            .range(key(name, from)..=key(name, i64::MAX))
            .map(|(_, row)| row)
            .filter(|row| filter.matches(row))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn resync_many(&self, name: &str, model_ids: &[i64]) -> Result<u64, StoreError> {
        let mut state = self.lock();
        let mut changed = 0;
        for id in model_ids {
            if let Some(row) = state.registry.get_mut(&key(name, *id)) {
                row.mark_pending();
                if row.state == SyncState::Pending {
                    // Behind fresh changes in the scheduling order (see `resync_many`).
                    row.retry_at = Some(Utc::now());
                }
                row.version += 1;
                changed += 1;
            }
        }
        Ok(changed)
    }

    async fn reverify_many(&self, name: &str, model_ids: &[i64]) -> Result<u64, StoreError> {
        let mut state = self.lock();
        let mut changed = 0;
        for id in model_ids {
            if let Some(row) = state.registry.get_mut(&key(name, *id))
                && row.state == SyncState::Synced
                && !matches!(
                    row.verification.verification_state,
                    VerificationState::Pending
                        | VerificationState::Started
                        | VerificationState::Disabled
                )
            {
                row.verification.mark_pending();
                row.version += 1;
                changed += 1;
            }
        }
        Ok(changed)
    }

    async fn queue_depth(&self, name: &str, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let state = self.lock();
        Ok(of_name(&state.registry, name)
            .filter(|(_, row)| match row.state {
                SyncState::Pending => true,
                SyncState::Failed => row.retry_at.is_none_or(|at| at <= now),
                _ => false,
            })
            .count() as u64)
    }

    async fn reverify_older_than(
        &self,
        name: &str,
        verified_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let mut state = self.lock();
        Ok(reverify_oldest(
            &mut state.registry,
            name,
            verified_before,
            limit,
            |row| (&mut row.verification, &mut row.version),
            |row| row.state == SyncState::Synced,
        ))
    }

    async fn waiting_for_primary_checksum(
        &self,
        name: &str,
        range: Range<i64>,
        limit: usize,
    ) -> Result<Vec<i64>, StoreError> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let state = self.lock();
        Ok(state
            .registry
            .range(key(name, range.start)..key(name, range.end))
            .filter(|(_, row)| {
                row.state == SyncState::Synced
                    && row.verification.verification_state == VerificationState::Disabled
            })
            .map(|((_, id), _)| *id)
            .take(limit)
            .collect())
    }

    async fn enable_verification(&self, name: &str, model_ids: &[i64]) -> Result<u64, StoreError> {
        let mut state = self.lock();
        let mut changed = 0;
        for id in model_ids {
            if let Some(row) = state.registry.get_mut(&key(name, *id))
                && row.state == SyncState::Synced
                && row.verification.verification_state == VerificationState::Disabled
            {
                row.verification.verification_state = VerificationState::Pending;
                row.version += 1;
                changed += 1;
            }
        }
        Ok(changed)
    }

    async fn set_replication_enabled(&self, name: &str, enabled: bool) -> Result<(), StoreError> {
        let mut state = self.lock();
        if enabled {
            state.replication_disabled.remove(name);
        } else {
            state.replication_disabled.insert(name.to_owned());
        }
        Ok(())
    }

    async fn replication_enabled(&self, name: &str) -> Result<bool, StoreError> {
        Ok(!self.lock().replication_disabled.contains(name))
    }

    async fn cursor(&self) -> Result<EventId, StoreError> {
        Ok(self.lock().cursor)
    }

    async fn save_cursor(&self, event_id: EventId) -> Result<(), StoreError> {
        self.lock().cursor = event_id;
        Ok(())
    }

    async fn cursor_gaps(&self) -> Result<Vec<CursorGap>, StoreError> {
        Ok(self.lock().cursor_gaps.clone())
    }

    async fn save_cursor_and_gaps(
        &self,
        event_id: EventId,
        gaps: &[CursorGap],
    ) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.cursor = event_id;
        state.cursor_gaps = gaps.to_vec();
        Ok(())
    }

    async fn put_secondary_status(
        &self,
        status: &crate::storage::SecondaryStatusRow,
    ) -> Result<(), StoreError> {
        self.lock()
            .secondaries
            .insert(status.secondary.clone(), status.clone());
        Ok(())
    }

    async fn secondary_statuses(
        &self,
    ) -> Result<Vec<crate::storage::SecondaryStatusRow>, StoreError> {
        Ok(self.lock().secondaries.values().cloned().collect())
    }

    async fn acquire_lease(
        &self,
        lease: &str,
        holder: &str,
        now: DateTime<Utc>,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let until = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        match state.leases.get(lease) {
            Some((current, expires)) if current != holder && *expires > now => Ok(false),
            _ => {
                state
                    .leases
                    .insert(lease.to_owned(), (holder.to_owned(), until));
                Ok(true)
            }
        }
    }

    async fn release_lease(&self, lease: &str, holder: &str) -> Result<(), StoreError> {
        let mut state = self.lock();
        if state
            .leases
            .get(lease)
            .is_some_and(|(current, _)| current == holder)
        {
            state.leases.remove(lease);
        }
        Ok(())
    }

    async fn record_skipped_event(&self, event: &SkippedEvent) -> Result<(), StoreError> {
        let mut state = self.lock();
        if !state.skipped.iter().any(|e| e.event_id == event.event_id) {
            state.skipped.push(event.clone());
        }
        Ok(())
    }

    async fn skipped_events(&self, limit: usize) -> Result<Vec<SkippedEvent>, StoreError> {
        Ok(self.lock().skipped.iter().take(limit).cloned().collect())
    }
}
