//! Consuming events on a secondary: recording the intent in the registry, removing local copies
//! of deleted records and orphans.

use tracing::{Instrument, debug, info_span};

use super::{ConsumeOutcome, ReplicationTarget};
use crate::domain::error::ReplicatorError;
use crate::domain::event::{Event, EventKind, EventPayload};
use crate::domain::registry::{RegistryRecord, SyncState};
use crate::domain::resource::Resource;
use crate::model::Replicable;
use crate::site::Site;
use crate::storage::NotedChange;
use crate::strategy::Strategy;

impl<'a, M: Replicable> ReplicationTarget<'a, M> {
    /// Marks the registry row pending (creating it if needed), as a `created` / `updated` event
    /// does.
    pub async fn mark_pending(&self) -> Result<RegistryRecord, ReplicatorError> {
        self.site
            .registry_store()
            .mark_pending(M::REPLICABLE_NAME, self.id, self.site.now())
            .await
            .map_err(|e| self.store_error(e))
    }

    /// Consumes an event about this record on a secondary.
    ///
    /// - `created` / `updated`: out-of-scope records are skipped (and a copy that was there is
    ///   removed), stale generations are ignored, otherwise the row is marked pending and synced;
    /// - `deleted`: the local copy and the registry row are removed, whether or not the record
    ///   still exists anywhere;
    /// - `checksum_succeeded`: a verified copy goes back to verification pending.
    pub async fn consume(&self, event: &Event) -> Result<ConsumeOutcome, ReplicatorError> {
        self.consume_with(event, true).await
    }

    /// Consumes an event as the engine's log cursor does: it records intent only. A `created`
    /// / `updated` event marks the registry row pending ([`ConsumeOutcome::Pending`]) for the
    /// sync workers, and never copies anything itself, so that one slow resource does not hold
    /// up the events behind it. Other events act as in [`consume`](Self::consume).
    pub async fn record_intent(&self, event: &Event) -> Result<ConsumeOutcome, ReplicatorError> {
        self.consume_with(event, false).await
    }

    pub(super) async fn consume_with(
        &self,
        event: &Event,
        sync_now: bool,
    ) -> Result<ConsumeOutcome, ReplicatorError> {
        if event.replicable_name != M::REPLICABLE_NAME || event.payload.model_id != self.id {
            return Err(ReplicatorError::WrongEvent {
                event_id: event.id,
                event_replicable: event.replicable_name.clone(),
                event_id_of: event.payload.model_id,
                replicable: M::REPLICABLE_NAME,
                id: self.id,
            });
        }
        self.ensure_supported(event.kind)?;
        self.secondary_link("consume")?;
        let span = info_span!("consume", replicable = M::REPLICABLE_NAME, id = self.id, event_id = event.id, kind = %event.kind);
        async {
            match event.kind {
                EventKind::Created | EventKind::Updated => {
                    self.consume_change(&event.payload, event.created_at, sync_now)
                        .await
                }
                EventKind::Deleted => {
                    self.remove_local(&event.payload.resource).await?;
                    Ok(ConsumeOutcome::Removed)
                }
                EventKind::ChecksumSucceeded => self.consume_checksum_succeeded().await,
            }
        }
        .instrument(span)
        .await
    }

    pub(super) async fn consume_change(
        &self,
        payload: &EventPayload,
        published_at: chrono::DateTime<chrono::Utc>,
        sync_now: bool,
    ) -> Result<ConsumeOutcome, ReplicatorError> {
        let name = M::REPLICABLE_NAME;
        if let Some(body) = &payload.record
            && !self.site.selective_sync().includes(name, body)
        {
            self.remove_if_registered(&payload.resource).await?;
            return Ok(ConsumeOutcome::OutOfScope);
        }
        let store = self.site.registry_store();
        let now = self.site.now();
        let marked = match payload.generation {
            Some(generation) => {
                store
                    .mark_changed_unless_held(name, self.id, now, published_at, generation)
                    .await
            }
            None => store
                .mark_changed(name, self.id, now, published_at)
                .await
                .map(Some),
        };
        let Some(row) = marked.map_err(|e| self.store_error(e))? else {
            debug!(
                name,
                id = self.id,
                generation = payload.generation,
                "stale event: a newer generation is held"
            );
            return Ok(ConsumeOutcome::AlreadyCurrent);
        };
        if !sync_now {
            // Intent only: the sync workers read the replication switch before they claim.
            return Ok(ConsumeOutcome::Pending);
        }
        let enabled = self
            .site
            .registry_store()
            .replication_enabled_all(&[crate::storage::SITE_SWITCH, name])
            .await
            .map_err(|e| self.store_error(e))?;
        if !enabled {
            debug!(
                name,
                id = self.id,
                "replication is paused: the change is recorded"
            );
            return Ok(ConsumeOutcome::Pending);
        }
        if row.state == SyncState::Started {
            debug!(
                name,
                id = self.id,
                "a sync is in flight: the change waits for it"
            );
            return Ok(ConsumeOutcome::Pending);
        }
        match self.try_start_sync().await? {
            Some(attempt) => Ok(ConsumeOutcome::Synced(attempt.run().await?)),
            // A worker took the row between the two steps: its sync carries the change.
            None => Ok(ConsumeOutcome::Pending),
        }
    }

    /// `created` / `updated` events of records of this replicable recorded as intent together,
    /// as [`record_intent`](Self::record_intent) records each (the log cursor's run of them):
    /// the registry rows are marked in one write. No record may be named twice. An event out
    /// of the selective sync's scope is consumed alone. Fails as the first event that cannot
    /// be consumed would fail alone (the caller then consumes them one at a time). Returns how
    /// many rows were marked.
    pub(crate) async fn record_changes(
        site: &Site,
        events: &[Event],
    ) -> Result<u64, ReplicatorError> {
        let Some(first) = events.first() else {
            return Ok(0);
        };
        let name = M::REPLICABLE_NAME;
        let mut changes = Vec::with_capacity(events.len());
        let mut alone = Vec::new();
        for event in events {
            let target = ReplicationTarget::<M>::new(site, event.payload.model_id);
            if event.replicable_name != name
                || !matches!(event.kind, EventKind::Created | EventKind::Updated)
            {
                return Err(ReplicatorError::WrongEvent {
                    event_id: event.id,
                    event_replicable: event.replicable_name.clone(),
                    event_id_of: event.payload.model_id,
                    replicable: name,
                    id: event.payload.model_id,
                });
            }
            target.ensure_supported(event.kind)?;
            target.secondary_link("consume")?;
            match &event.payload.record {
                Some(body) if !site.selective_sync().includes(name, body) => alone.push(event),
                _ => changes.push(NotedChange {
                    model_id: event.payload.model_id,
                    published_at: event.created_at,
                    generation: event.payload.generation,
                }),
            }
        }
        for event in alone {
            ReplicationTarget::<M>::new(site, event.payload.model_id)
                .record_intent(event)
                .await?;
        }
        let target = ReplicationTarget::<M>::new(site, first.payload.model_id);
        let marked = site
            .registry_store()
            .mark_changes(name, &changes, site.now())
            .await
            .map_err(|e| target.store_error(e))?;
        debug!(
            name,
            events = events.len(),
            marked,
            "changes recorded together"
        );
        Ok(marked)
    }

    pub(super) async fn consume_checksum_succeeded(
        &self,
    ) -> Result<ConsumeOutcome, ReplicatorError> {
        Ok(if self.consume_checksums_succeeded(&[]).await? > 0 {
            ConsumeOutcome::VerificationReset
        } else {
            ConsumeOutcome::Ignored
        })
    }

    /// `checksum_succeeded` for this record and the others of `more` (records of the same
    /// replicable), consumed together as [`consume`](Self::consume) consumes each: one
    /// statement for all of them. A synced copy waiting for the primary's checksum (disabled)
    /// or verified against an older one (succeeded) is verified again (see
    /// `RegistryStore::reverify`). Returns how many copies went back to verification pending.
    pub(crate) async fn consume_checksums_succeeded(
        &self,
        more: &[i64],
    ) -> Result<u64, ReplicatorError> {
        self.ensure_supported(EventKind::ChecksumSucceeded)?;
        self.secondary_link("consume")?;
        let ids: Vec<i64> = std::iter::once(self.id)
            .chain(more.iter().copied())
            .collect();
        self.site
            .registry_store()
            .reverify(M::REPLICABLE_NAME, &ids)
            .await
            .map_err(|e| self.store_error(e))
    }

    pub(super) async fn remove_local(&self, resource: &Resource) -> Result<(), ReplicatorError> {
        // The copy first and the registry row last: if removing the copy fails, the row and
        // the stored record still name it, so backfill can remove it later. A sync in flight
        // that makes its copy visible after this removal finds the row gone when it completes
        // and removes its copy itself.
        M::Strategy::default()
            .remove(
                self.site.strategy_context(),
                &self.resource_target(resource),
            )
            .await
            .map_err(|e| self.resource_error(e))?;
        self.site
            .records()
            .delete(M::REPLICABLE_NAME, self.id)
            .await
            .map_err(|e| self.store_error(e))?;
        self.site
            .registry_store()
            .delete(M::REPLICABLE_NAME, self.id)
            .await
            .map_err(|e| self.store_error(e))?;
        Ok(())
    }

    /// Removes the local copy and registry row of a record that no longer exists on the primary
    /// (or left the selective sync), using the copy of the record kept at sync time to find the
    /// resource. Returns whether there was anything to remove.
    pub async fn remove_orphan(&self) -> Result<bool, ReplicatorError> {
        let resource = match self.local_record().await? {
            Some(stored) => Some(self.decode(&stored)?.resource()),
            None => None,
        };
        match resource {
            Some(resource) => self.remove_local(&resource).await?,
            None => {
                self.site
                    .registry_store()
                    .delete(M::REPLICABLE_NAME, self.id)
                    .await
                    .map_err(|e| self.store_error(e))?;
            }
        }
        Ok(true)
    }

    pub(super) async fn remove_if_registered(
        &self,
        resource: &Resource,
    ) -> Result<(), ReplicatorError> {
        if self.registry_record().await?.is_some() {
            self.remove_local(resource).await?;
        }
        Ok(())
    }
}
