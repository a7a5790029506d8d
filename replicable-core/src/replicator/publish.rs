//! Publishing a record's events on the primary: the event, the catalogue row (or the generation
//! of the application's own row) and the verification row in one transaction: the site's own,
//! or the application's (`publish_*_event_in`). A batch publish (`Site::publish_*_events`)
//! writes those of many records of one model in one transaction.

use tracing::debug;

use super::{ReplicationTarget, Replicator};
use crate::domain::error::{ReplicatorError, StoreError};
use crate::domain::event::{EventId, EventKind, EventPayload, NewEvent};
use crate::model::Replicable;
use crate::site::Site;
use crate::storage::{Publication, Published};
use crate::strategy::Strategy;

impl<'a, M: Replicable> Replicator<'a, M> {
    /// What publishing `kind` writes, or `None` on a secondary (which publishes nothing).
    fn publication(&self, kind: EventKind) -> Result<Option<Publication>, ReplicatorError> {
        let target = &self.target;
        target.ensure_supported(kind)?;
        if !target.site.is_primary() {
            debug!(replicable = M::REPLICABLE_NAME, id = target.id, %kind, "not publishing on a secondary");
            return Ok(None);
        }
        let (name, id) = (M::REPLICABLE_NAME, target.id);
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
        Ok(Some(Publication {
            event: NewEvent {
                replicable_name: name.to_owned(),
                kind,
                payload,
            },
            verifiable: M::Strategy::VERIFIABLE,
            mutable: M::Strategy::MUTABLE,
            in_catalogue: target.site.record_source(name).is_none(),
        }))
    }

    pub(super) async fn publish(
        &self,
        kind: EventKind,
    ) -> Result<Option<EventId>, ReplicatorError> {
        let Some(publication) = self.publication(kind)? else {
            return Ok(None);
        };
        let target = &self.target;
        let (name, id, site) = (M::REPLICABLE_NAME, target.id, target.site);
        // One database for the log, the catalogue (or the generations of the application's
        // table) and the verification rows: the writes are one transaction, and an event that
        // cannot be written leaves nothing behind.
        if crate::storage::same_database(
            site.event_log(),
            site.catalogue(),
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
        if !publication.in_catalogue {
            // The generation of a row in the application's table is kept next to the event log.
            return Err(target.store_error(StoreError::Backend {
                store: "event log".into(),
                operation: "publish",
                reason: format!(
                    "{name} {id} lives in the application's table (a record source): its site \
                     needs one SQL database for the event log, catalogue and verification rows, \
                     the one holding the table"
                ),
            }));
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

    /// Publishes `created` in the application's own transaction: the event, the record's
    /// generation (or its catalogue row) and its verification row are written on `conn`, so
    /// they commit with the application's change or not at all. Pass `&mut *tx` for a sqlx
    /// transaction `tx` on the site's database (a `PgConnection` with feature `postgres`, a
    /// `SqliteConnection` with feature `sqlite`, or an `AnyConnection`; see
    /// [`AppConnection`](crate::storage::sql::AppConnection)).
    ///
    /// The framework's tables must live in the application's database (the site's
    /// [`SqlStore`](crate::storage::sql::SqlStore) opened on the same database, its tables in
    /// the schema named by `SqlOptions::schema` on PostgreSQL, in the same file on SQLite) and
    /// exist already (name the replicable in `SqlOptions::replicables`). Returns `None` on a
    /// secondary, which publishes nothing. Any failed write is an error, and the caller's
    /// transaction should then be rolled back.
    ///
    /// The event is written last. On PostgreSQL no lock is taken: transactions that publish at
    /// once do not wait for each other, and one that commits after a later event's transaction
    /// leaves an id gap for a while, which the secondaries' log cursors track and read again
    /// until it fills (see `log_cursor::LogCursor`). A transaction that stays
    /// open longer than the cursor's gap timeout after publishing (an hour) may have its event
    /// missed by the cursor; its record is then found by backfill. On SQLite the application's
    /// transaction holds the database's write lock from its first write to its end, as any
    /// SQLite writer does.
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub async fn publish_created_event_in<C>(
        &self,
        conn: &mut C,
    ) -> Result<Option<EventId>, ReplicatorError>
    where
        C: crate::storage::sql::AppConnection,
    {
        self.publish_in(EventKind::Created, conn).await
    }

    /// Publishes `updated` in the application's own transaction: see
    /// [`publish_created_event_in`](Self::publish_created_event_in).
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub async fn publish_updated_event_in<C>(
        &self,
        conn: &mut C,
    ) -> Result<Option<EventId>, ReplicatorError>
    where
        C: crate::storage::sql::AppConnection,
    {
        self.publish_in(EventKind::Updated, conn).await
    }

    /// Publishes `deleted` in the application's own transaction (the one deleting the row):
    /// see [`publish_created_event_in`](Self::publish_created_event_in).
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub async fn publish_deleted_event_in<C>(
        &self,
        conn: &mut C,
    ) -> Result<Option<EventId>, ReplicatorError>
    where
        C: crate::storage::sql::AppConnection,
    {
        self.publish_in(EventKind::Deleted, conn).await
    }

    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    async fn publish_in<C>(
        &self,
        kind: EventKind,
        conn: &mut C,
    ) -> Result<Option<EventId>, ReplicatorError>
    where
        C: crate::storage::sql::AppConnection,
    {
        let Some(publication) = self.publication(kind)? else {
            return Ok(None);
        };
        let target = &self.target;
        let site = target.site;
        let store = site.event_log().sql_store().ok_or_else(|| {
            target.store_error(StoreError::Backend {
                store: "event log".into(),
                operation: "publish in the application's transaction",
                reason: "the site's event log is not a SQL database: open it with \
                         `storage::sql::SqlStore` on the application's database"
                    .into(),
            })
        })?;
        let published = conn
            .write_publication(store, &publication, site.now())
            .await
            .map_err(|e| target.store_error(e))?;
        debug!(replicable = M::REPLICABLE_NAME, id = target.id, %kind, event_id = published.event_id, "published in the application's transaction");
        Ok(Some(published.event_id))
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

/// Batch publish: the events of many records of one model, written with their catalogue rows
/// (or generations) and verification rows in one transaction.
impl Site {
    /// Publishes `created` for each of `records` on the primary, in one transaction: every
    /// catalogue row (or generation of the application's row), verification row and event is
    /// written, or nothing is. The events get ascending ids, in the order of `records`
    /// (consecutive unless other publishes run at the same time on PostgreSQL), and the ids are
    /// returned in that order; once this returns `Ok` they survive a power loss,
    /// as a single publish's. Secondaries consume them as they consume single publishes.
    ///
    /// Every record is checked before anything is written: one that cannot be published (its
    /// resource refused by the strategy, a body that does not serialize) fails the whole batch
    /// with the error naming that record. A batch that cannot be stored fails with
    /// [`ReplicatorError::Batch`]. A record given twice is published twice, as two single
    /// publishes would be. On a secondary nothing is written and no ids are returned.
    ///
    /// One transaction holds the whole batch (its statements write up to 5,000 rows each): a
    /// site that publishes a few thousand records at a time pays one wait for the disk instead
    /// of one per record. The sites of [`storage::open`](crate::storage::open) and
    /// [`SqlStore`](crate::storage::sql::SqlStore) keep the log, catalogue and verification
    /// rows in one database; a site assembled from stores in different databases publishes
    /// the records one by one instead (each one atomic, the batch not).
    ///
    /// ```ignore
    /// let ids = primary.publish_created_events(&package_files).await?;
    /// assert_eq!(ids.len(), package_files.len());
    /// ```
    pub async fn publish_created_events<M: Replicable>(
        &self,
        records: &[M],
    ) -> Result<Vec<EventId>, ReplicatorError> {
        publish_batch(self, EventKind::Created, records).await
    }

    /// Publishes `updated` for each of `records` (mutable data types only): see
    /// [`publish_created_events`](Self::publish_created_events).
    pub async fn publish_updated_events<M: Replicable>(
        &self,
        records: &[M],
    ) -> Result<Vec<EventId>, ReplicatorError> {
        publish_batch(self, EventKind::Updated, records).await
    }

    /// Publishes `deleted` for each of `records`, removing their catalogue and verification
    /// rows: see [`publish_created_events`](Self::publish_created_events).
    pub async fn publish_deleted_events<M: Replicable>(
        &self,
        records: &[M],
    ) -> Result<Vec<EventId>, ReplicatorError> {
        publish_batch(self, EventKind::Deleted, records).await
    }

    /// Publishes `created` for each of `records` in the application's own transaction: the
    /// batch of [`publish_created_events`](Self::publish_created_events) written on `conn`
    /// (`&mut *tx`), so that it commits with the application's change or not at all. The
    /// requirements are those of [`Replicator::publish_created_event_in`]: the tables exist
    /// beforehand, and roll back on an error.
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub async fn publish_created_events_in<M, C>(
        &self,
        conn: &mut C,
        records: &[M],
    ) -> Result<Vec<EventId>, ReplicatorError>
    where
        M: Replicable,
        C: crate::storage::sql::AppConnection,
    {
        publish_batch_in(self, EventKind::Created, conn, records).await
    }

    /// Publishes `updated` for each of `records` in the application's own transaction: see
    /// [`publish_created_events_in`](Self::publish_created_events_in).
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub async fn publish_updated_events_in<M, C>(
        &self,
        conn: &mut C,
        records: &[M],
    ) -> Result<Vec<EventId>, ReplicatorError>
    where
        M: Replicable,
        C: crate::storage::sql::AppConnection,
    {
        publish_batch_in(self, EventKind::Updated, conn, records).await
    }

    /// Publishes `deleted` for each of `records` in the application's own transaction (the one
    /// deleting the rows): see [`publish_created_events_in`](Self::publish_created_events_in).
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub async fn publish_deleted_events_in<M, C>(
        &self,
        conn: &mut C,
        records: &[M],
    ) -> Result<Vec<EventId>, ReplicatorError>
    where
        M: Replicable,
        C: crate::storage::sql::AppConnection,
    {
        publish_batch_in(self, EventKind::Deleted, conn, records).await
    }
}

/// What publishing `kind` writes for each of `records`, in order, every record checked; `None`
/// when nothing is to be written (no records, or a secondary).
fn publications<M: Replicable>(
    site: &Site,
    kind: EventKind,
    records: &[M],
) -> Result<Option<Vec<Publication>>, ReplicatorError> {
    let Some(first) = records.first() else {
        return Ok(None);
    };
    Replicator::new(site, first).target.ensure_supported(kind)?;
    if !site.is_primary() {
        debug!(replicable = M::REPLICABLE_NAME, records = records.len(), %kind, "not publishing a batch on a secondary");
        return Ok(None);
    }
    let mut publications = Vec::with_capacity(records.len());
    for record in records {
        let publication = Replicator::new(site, record)
            .publication(kind)?
            .expect("checked to be the primary");
        publications.push(publication);
    }
    Ok(Some(publications))
}

/// The error of a batch that could not be stored.
fn batch_error<M: Replicable>(records: &[M], source: StoreError) -> ReplicatorError {
    ReplicatorError::Batch {
        replicable: M::REPLICABLE_NAME,
        count: records.len(),
        first_id: records.first().map_or(0, Replicable::replicable_id),
        source,
    }
}

fn event_ids<M: Replicable>(kind: EventKind, published: Vec<Published>) -> Vec<EventId> {
    let ids: Vec<EventId> = published.into_iter().map(|p| p.event_id).collect();
    debug!(
        replicable = M::REPLICABLE_NAME,
        %kind,
        events = ids.len(),
        first = ids.first(),
        last = ids.last(),
        "published a batch"
    );
    ids
}

async fn publish_batch<M: Replicable>(
    site: &Site,
    kind: EventKind,
    records: &[M],
) -> Result<Vec<EventId>, ReplicatorError> {
    let Some(publications) = publications(site, kind, records)? else {
        return Ok(Vec::new());
    };
    if crate::storage::same_database(
        site.event_log(),
        site.catalogue(),
        site.verification_store(),
    ) && let Some(published) = site
        .event_log()
        .publish_batch(&publications, site.now())
        .await
        .map_err(|e| batch_error(records, e))?
    {
        return Ok(event_ids::<M>(kind, published));
    }
    // Stores in different databases share no transaction: one publish after the other, each
    // as a single publish writes it.
    let mut ids = Vec::with_capacity(records.len());
    for record in records {
        if let Some(id) = Replicator::new(site, record).publish(kind).await? {
            ids.push(id);
        }
    }
    Ok(ids)
}

#[cfg(any(feature = "postgres", feature = "sqlite"))]
async fn publish_batch_in<M, C>(
    site: &Site,
    kind: EventKind,
    conn: &mut C,
    records: &[M],
) -> Result<Vec<EventId>, ReplicatorError>
where
    M: Replicable,
    C: crate::storage::sql::AppConnection,
{
    let Some(publications) = publications(site, kind, records)? else {
        return Ok(Vec::new());
    };
    let store = site.event_log().sql_store().ok_or_else(|| {
        batch_error(
            records,
            StoreError::Backend {
                store: "event log".into(),
                operation: "publish in the application's transaction",
                reason: "the site's event log is not a SQL database: open it with \
                         `storage::sql::SqlStore` on the application's database"
                    .into(),
            },
        )
    })?;
    let published = conn
        .write_publications(store, &publications, site.now())
        .await
        .map_err(|e| batch_error(records, e))?;
    Ok(event_ids::<M>(kind, published))
}
