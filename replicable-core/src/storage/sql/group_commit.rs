//! Grouped writes on SQLite: writes of one kind that arrive while another of that kind is
//! being written are written together next, in one transaction (and, where the kind allows,
//! one statement), so that concurrent writers share one commit instead of queueing for one
//! each. SQLite has one writer; each commit appends every page it changed to the log (and a
//! durable one waits for the disk), so a commit shared by many rows costs little more than one.
//! Every caller still gets its own answer, and only once the transaction holding its write
//! committed: the promise of a single write is unchanged.
//!
//! Three kinds of write are grouped: single publishes
//! ([`EventLog::publish`](crate::storage::EventLog)), sharing one durable commit; registry
//! updates ([`RegistryStore::update`](crate::storage::RegistryStore::update)), a group of them
//! one multi-row compare-and-set statement per replicable (the sync and verification workers of
//! a secondary each end with one); and the record copies a secondary keeps at sync time
//! ([`RecordStore::put_unless_older`](crate::storage::RecordStore::put_unless_older)), a group
//! one multi-row upsert per replicable. A group of more than one statement is one transaction.
//!
//! One kind of read goes the same way: registry reads by id
//! ([`RegistryStore::get`](crate::storage::RegistryStore::get), the sync guard's last look), a
//! group of them one statement per replicable on a reading connection. A read has no commit to
//! share; grouping it saves the statements and their thread hand-offs.
//!
//! A write that finds none of its kind running is written by its caller at once, as before
//! grouping existed. Those arriving meanwhile queue; when the writing caller is done (or its
//! future is dropped midway) a task of their own writes them, a group at a time, until none
//! waits: a caller that stops waiting never leaves the others without an answer. A group that
//! fails is written again one write at a time, so that a write the database refuses fails only
//! its own caller.
//!
//! Written here rather than taken from a crate: the grouping is the store's (one writer, the
//! write gate, the fallback to single writes), and a few dozen lines.

use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;
use tokio::sync::oneshot;

use super::SqlStore;
use crate::domain::error::StoreError;
use crate::domain::registry::RegistryRecord;
use crate::storage::{Publication, Published, StoredRecord};

/// A kind of write that can be grouped.
#[async_trait]
pub(super) trait GroupWrite: Send + Sync + Sized + 'static {
    /// What a caller hears.
    type Output: Send + 'static;
    /// The operation named when a group stopped before answering.
    const OPERATION: &'static str;
    /// The store's queue of this kind.
    fn queue(store: &SqlStore) -> &Grouped<Self>;
    /// Writes one, alone.
    async fn write_one(&self, store: &SqlStore) -> Result<Self::Output, StoreError>;
    /// Writes a group together, the answers in the order of `group`. An error sends each
    /// write of the group back to [`write_one`](Self::write_one).
    async fn write_group(store: &SqlStore, group: &[Self])
    -> Result<Vec<Self::Output>, StoreError>;
}

/// A write waiting for the next group.
struct Waiting<W: GroupWrite> {
    write: W,
    done: oneshot::Sender<Result<W::Output, StoreError>>,
}

struct Queue<W: GroupWrite> {
    waiting: Vec<Waiting<W>>,
    /// Whether a write of this kind (its caller's, or a task's group) is running.
    running: bool,
}

/// The writes of one kind waiting for a group.
pub(super) struct Grouped<W: GroupWrite> {
    queue: Mutex<Queue<W>>,
}

impl<W: GroupWrite> Default for Grouped<W> {
    fn default() -> Self {
        Self {
            queue: Mutex::new(Queue {
                waiting: Vec::new(),
                running: false,
            }),
        }
    }
}

impl<W: GroupWrite> std::fmt::Debug for Grouped<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grouped")
            .field("operation", &W::OPERATION)
            .finish_non_exhaustive()
    }
}

impl<W: GroupWrite> Grouped<W> {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue<W>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SqlStore {
    /// Writes `write` through its kind's group. One that finds none of its kind running is
    /// written at once, by its caller (a lone writer pays nothing for the grouping); one that
    /// arrives while another runs waits for the next group, written by a task of its own (see
    /// [`WriterGuard`]).
    pub(super) async fn write_grouped<W: GroupWrite>(
        &self,
        write: W,
    ) -> Result<W::Output, StoreError> {
        let (done, answer) = oneshot::channel();
        let write = {
            let mut queue = W::queue(self).queue();
            if queue.running {
                queue.waiting.push(Waiting { write, done });
                None
            } else {
                queue.running = true;
                Some(write)
            }
        };
        if let Some(write) = write {
            let writer = WriterGuard::<W> {
                store: self,
                kind: std::marker::PhantomData,
            };
            let written = write.write_one(self).await;
            drop(writer);
            return written;
        }
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Backend {
                store: self.url.clone(),
                operation: W::OPERATION,
                reason: "the group commit stopped before answering (the runtime is shutting \
                         down); the write may or may not have been stored"
                    .into(),
            })
        })
    }

    /// Writes the waiting writes of kind `W`, group after group, until none waits.
    async fn write_groups<W: GroupWrite>(&self) {
        loop {
            let group = {
                let mut queue = W::queue(self).queue();
                if queue.waiting.is_empty() {
                    queue.running = false;
                    return;
                }
                std::mem::take(&mut queue.waiting)
            };
            tracing::trace!(
                operation = W::OPERATION,
                writes = group.len(),
                "group commit"
            );
            let (writes, answers): (Vec<W>, Vec<_>) =
                group.into_iter().map(|w| (w.write, w.done)).unzip();
            if writes.len() > 1
                && let Ok(written) = W::write_group(self, &writes).await
            {
                for (done, written) in answers.into_iter().zip(written) {
                    let _ = done.send(Ok(written));
                }
                continue;
            }
            // Alone, or the group was refused: each on its own, so that only the caller of a
            // refused write hears of it.
            for (write, done) in writes.iter().zip(answers) {
                let _ = done.send(write.write_one(self).await);
            }
        }
    }
}

/// Held by a caller writing its own write of kind `W`: when it is done (or its future is
/// dropped midway), the writes that queued meanwhile go to a task that writes them in groups,
/// or, with none queued, the next write is written by its caller again.
struct WriterGuard<'a, W: GroupWrite> {
    store: &'a SqlStore,
    kind: std::marker::PhantomData<W>,
}

impl<W: GroupWrite> Drop for WriterGuard<'_, W> {
    fn drop(&mut self) {
        let mut queue = W::queue(self.store).queue();
        if queue.waiting.is_empty() {
            queue.running = false;
            return;
        }
        let runtime = tokio::runtime::Handle::try_current();
        match (self.store.me.upgrade(), runtime) {
            (Some(store), Ok(runtime)) => {
                drop(queue);
                runtime.spawn(async move { store.write_groups::<W>().await });
            }
            // The store is being dropped, or the runtime is gone: nobody can write them (the
            // dropped senders answer their callers with an error).
            _ => {
                queue.waiting.clear();
                queue.running = false;
            }
        }
    }
}

/// A single publish: a group is one transaction.
pub(super) struct PublishWrite {
    pub(super) publication: Publication,
    pub(super) now: DateTime<Utc>,
}

#[async_trait]
impl GroupWrite for PublishWrite {
    type Output = Published;
    const OPERATION: &'static str = "publish";

    fn queue(store: &SqlStore) -> &Grouped<Self> {
        &store.group.publishes
    }

    async fn write_one(&self, store: &SqlStore) -> Result<Published, StoreError> {
        store.publish_now(&self.publication, self.now).await
    }

    async fn write_group(store: &SqlStore, group: &[Self]) -> Result<Vec<Published>, StoreError> {
        let publications: Vec<Publication> = group.iter().map(|w| w.publication.clone()).collect();
        let now = group.iter().map(|w| w.now).max().unwrap_or_else(Utc::now);
        store.publish_batch_now(&publications, now).await
    }
}

/// A compare-and-set of one registry row: a group is one statement per replicable.
pub(super) struct RegistryWrite {
    pub(super) name: String,
    pub(super) row: RegistryRecord,
}

#[async_trait]
impl GroupWrite for RegistryWrite {
    type Output = bool;
    const OPERATION: &'static str = "update registry row";

    fn queue(store: &SqlStore) -> &Grouped<Self> {
        &store.group.registry_updates
    }

    async fn write_one(&self, store: &SqlStore) -> Result<bool, StoreError> {
        store.update_registry_now(&self.name, &self.row).await
    }

    async fn write_group(store: &SqlStore, group: &[Self]) -> Result<Vec<bool>, StoreError> {
        store.update_registries_now(group).await
    }
}

/// A read of one registry row (a sync's last look before its copy becomes visible, a worker's
/// compare-and-set loop): reads arriving while one runs are read together, one statement per
/// replicable. Each is answered with the row as it was at some moment after its caller asked.
pub(super) struct RegistryRead {
    pub(super) name: String,
    pub(super) id: i64,
}

#[async_trait]
impl GroupWrite for RegistryRead {
    type Output = Option<RegistryRecord>;
    const OPERATION: &'static str = "read registry row";

    fn queue(store: &SqlStore) -> &Grouped<Self> {
        &store.group.registry_reads
    }

    async fn write_one(&self, store: &SqlStore) -> Result<Self::Output, StoreError> {
        store.get_registry_now(&self.name, self.id).await
    }

    async fn write_group(
        store: &SqlStore,
        group: &[Self],
    ) -> Result<Vec<Self::Output>, StoreError> {
        store.get_registries_now(group).await
    }
}

/// The writes of `group` by statement: by replicable, in rounds, each write's index in the
/// order of `group`; `key` names a write's replicable and row. A row written again in the same
/// group goes to the next round (a later statement): a statement naming one row twice would
/// write it from either. Rounds of one replicable come in order.
pub(super) fn statement_rounds<'a, W>(
    group: &'a [W],
    key: impl Fn(&'a W) -> (&'a str, i64),
) -> Vec<(&'a str, Vec<usize>)> {
    let mut rounds: Vec<((&str, usize), Vec<usize>)> = Vec::new();
    let mut named: std::collections::HashMap<(&str, i64), usize> = std::collections::HashMap::new();
    for (i, write) in group.iter().enumerate() {
        let (name, id) = key(write);
        let round = named.entry((name, id)).or_insert(0);
        let at = (name, *round);
        *round += 1;
        match rounds.iter_mut().find(|(k, _)| *k == at) {
            Some((_, writes)) => writes.push(i),
            None => rounds.push((at, vec![i])),
        }
    }
    rounds
        .into_iter()
        .map(|((name, _), writes)| (name, writes))
        .collect()
}

/// One statement of a grouped write: its SQL (rows as one JSON array in `$1`, returning the id
/// of each row written `AS id`), its rows `(id, row)` (no id twice), and each row's index in the
/// group.
pub(super) struct GroupStatement {
    pub(super) sql: String,
    pub(super) rows: Vec<(i64, serde_json::Value)>,
    pub(super) writes: Vec<usize>,
}

impl SqlStore {
    /// Runs the statements of a group of `len` writes and returns whether each write was
    /// written, in the order of the group. One statement runs alone (it is atomic by itself);
    /// more run in one transaction, so a group that fails partway has written nothing. That
    /// matters because a failed group is written again one write at a time: a compare-and-set
    /// a failed group had already applied would fail then ("changed meanwhile") and its caller
    /// would apply its change a second time.
    pub(super) async fn write_group_statements(
        &self,
        len: usize,
        statements: &[GroupStatement],
        operation: &'static str,
    ) -> Result<Vec<bool>, StoreError> {
        let alone = statements.len() == 1 && statements[0].rows.len() <= super::batch::APPEND_CHUNK;
        if alone {
            let mut written = vec![false; len];
            let mut w = self.writer().await?;
            self.write_statements(&mut w, statements, &mut written, operation)
                .await?;
            return Ok(written);
        }
        // Several statements in one transaction: written again after a deadlock.
        self.retrying_deadlocks(|| async {
            let mut written = vec![false; len];
            let mut tx = self.begin_write().await.map_err(self.backend(operation))?;
            self.write_statements(&mut tx, statements, &mut written, operation)
                .await?;
            tx.commit().await.map_err(self.backend(operation))?;
            Ok(written)
        })
        .await
    }

    async fn write_statements(
        &self,
        conn: &mut sqlx::AnyConnection,
        statements: &[GroupStatement],
        written: &mut [bool],
        operation: &'static str,
    ) -> Result<(), StoreError> {
        for statement in statements {
            let done = self
                .write_json_rows(conn, &statement.sql, &statement.rows, operation)
                .await?;
            for (&i, done) in statement.writes.iter().zip(done) {
                written[i] = done;
            }
        }
        Ok(())
    }

    /// Runs `sql` over `rows` on `conn`, in chunks: `sql` takes its rows as one JSON array in
    /// `$1` and returns the id of each row it wrote (`AS id`); `rows` are `(id, row)`, no id
    /// twice (see [`statement_rounds`]). Returns whether each was written, in order.
    pub(super) async fn write_json_rows(
        &self,
        conn: &mut sqlx::AnyConnection,
        sql: &str,
        rows: &[(i64, serde_json::Value)],
        operation: &'static str,
    ) -> Result<Vec<bool>, StoreError> {
        let mut written = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(super::batch::APPEND_CHUNK) {
            let batch =
                serde_json::Value::Array(chunk.iter().map(|(_, row)| row.clone()).collect());
            let returned = sqlx::query(AssertSqlSafe(sql.to_owned()))
                .bind(batch.to_string())
                .fetch_all(&mut *conn)
                .await
                .map_err(self.backend(operation))?;
            let mut ids = std::collections::HashSet::with_capacity(returned.len());
            for row in &returned {
                ids.insert(self.get::<i64>(row, "id")?);
            }
            written.extend(chunk.iter().map(|(id, _)| ids.contains(id)));
        }
        Ok(written)
    }
}

/// A copy of a record kept on a secondary, unless an older one: a group is one statement
/// per replicable.
pub(super) struct RecordWrite {
    pub(super) name: String,
    pub(super) record: StoredRecord,
}

#[async_trait]
impl GroupWrite for RecordWrite {
    type Output = bool;
    const OPERATION: &'static str = "write record copy";

    fn queue(store: &SqlStore) -> &Grouped<Self> {
        &store.group.record_copies
    }

    async fn write_one(&self, store: &SqlStore) -> Result<bool, StoreError> {
        store.put_unless_older_now(&self.name, &self.record).await
    }

    async fn write_group(store: &SqlStore, group: &[Self]) -> Result<Vec<bool>, StoreError> {
        store.put_many_unless_older_now(group).await
    }
}

/// The store's queues of grouped writes.
#[derive(Debug, Default)]
pub(super) struct GroupCommit {
    publishes: Grouped<PublishWrite>,
    registry_updates: Grouped<RegistryWrite>,
    record_copies: Grouped<RecordWrite>,
    registry_reads: Grouped<RegistryRead>,
}
