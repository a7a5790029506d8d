//! Publishing a record's events on the primary: the event, the catalogue row and the
//! verification row in one transaction.

use tracing::debug;

use super::{ReplicationTarget, Replicator};
use crate::domain::error::{ReplicatorError, StoreError};
use crate::domain::event::{EventId, EventKind, EventPayload, NewEvent};
use crate::model::Replicable;
use crate::strategy::Strategy;

impl<'a, M: Replicable> Replicator<'a, M> {
    pub(super) async fn publish(
        &self,
        kind: EventKind,
    ) -> Result<Option<EventId>, ReplicatorError> {
        let target = &self.target;
        target.ensure_supported(kind)?;
        if !target.site.is_primary() {
            debug!(replicable = M::REPLICABLE_NAME, id = target.id, %kind, "not publishing on a secondary");
            return Ok(None);
        }
        let (name, id, site) = (M::REPLICABLE_NAME, target.id, target.site);
        let resource = self.record.resource();
        M::Strategy::validate(&resource).map_err(|e| target.resource_error(e))?;
        let mut payload = EventPayload {
            model_id: id,
            resource,
            generation: None,
            record: None,
            checksum: None,
        };
        if matches!(kind, EventKind::Created | EventKind::Updated) {
            payload.record =
                Some(
                    serde_json::to_value(self.record).map_err(|e| ReplicatorError::Decode {
                        replicable: name,
                        id,
                        reason: format!("record does not serialize: {e}"),
                    })?,
                );
        }
        // One database for the log, the catalogue and the verification rows: the three writes
        // are one transaction, and an event that cannot be written leaves nothing behind.
        let publication = crate::storage::Publication {
            event: NewEvent {
                replicable_name: name.to_owned(),
                kind,
                payload,
            },
            verifiable: M::Strategy::VERIFIABLE,
            mutable: M::Strategy::MUTABLE,
        };
        if crate::storage::same_database(
            site.event_log(),
            site.records(),
            site.verification_store(),
        ) && let Some(published) = site
            .event_log()
            .publish(&publication, site.now())
            .await
            .map_err(|e| target.store_error(e))?
        {
            debug!(replicable = name, id, %kind, event_id = published.event_id, "published");
            return Ok(Some(published.event_id));
        }
        let mut payload = publication.event.payload;
        match kind {
            EventKind::Created | EventKind::Updated => {
                let body = payload.record.as_ref().expect("set above");
                let generation = site
                    .records()
                    .upsert(name, id, body)
                    .await
                    .map_err(|e| target.store_error(e))?;
                // Re-publishing `created` for an immutable resource keeps a succeeded checksum.
                let keep = kind == EventKind::Created
                    && !M::Strategy::MUTABLE
                    && site
                        .verification_store()
                        .get(name, id)
                        .await
                        .map_err(|e| target.store_error(e))?
                        .is_some_and(|row| row.succeeded_checksum().is_some());
                if M::Strategy::VERIFIABLE && !keep {
                    site.verification_store()
                        .mark_pending(name, id)
                        .await
                        .map_err(|e| target.store_error(e))?;
                }
                payload.generation = Some(generation);
            }
            EventKind::Deleted => {
                site.records()
                    .delete(name, id)
                    .await
                    .map_err(|e| target.store_error(e))?;
                site.verification_store()
                    .delete(name, id)
                    .await
                    .map_err(|e| target.store_error(e))?;
            }
            EventKind::ChecksumSucceeded => unreachable!("published by verification only"),
        }
        target.append(kind, payload).await.map(Some)
    }
}

impl<'a, M: Replicable> ReplicationTarget<'a, M> {
    pub(super) async fn append(
        &self,
        kind: EventKind,
        payload: EventPayload,
    ) -> Result<EventId, ReplicatorError> {
        let event = NewEvent {
            replicable_name: M::REPLICABLE_NAME.to_owned(),
            kind,
            payload,
        };
        let ids = self
            .site
            .event_log()
            .append(std::slice::from_ref(&event), self.site.now())
            .await
            .map_err(|e| self.store_error(e))?;
        let id = ids.first().copied().ok_or_else(|| {
            self.store_error(StoreError::Backend {
                store: "event log".into(),
                operation: "append",
                reason: "no event id returned".into(),
            })
        })?;
        debug!(replicable = M::REPLICABLE_NAME, id = self.id, %kind, event_id = id, "published");
        Ok(id)
    }
}
