//! Group commit of single publishes on SQLite: publications that arrive while a commit is
//! waiting for the disk are written together in the next transaction, so that concurrent
//! publishers share one sync instead of queueing for one each (SQLite has one writer, and a
//! durable commit is one `fsync` of the log). Every caller still gets its answer only after the
//! transaction holding its event committed, so the promise of a single publish is unchanged:
//! an error when the event is not stored, `Ok` once it survives a power loss.
//!
//! A publication that finds no commit running is written by its caller at once, as before
//! grouping existed. Those arriving meanwhile queue; when the writing caller is done (or its
//! future is dropped midway) a task of their own writes them, a group per transaction, until
//! none waits: a caller that stops waiting never leaves the others without an answer. A group
//! that fails is written again one publication per transaction, so that a publication the
//! database refuses fails only its own caller.

use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use super::SqlStore;
use crate::domain::error::StoreError;
use crate::storage::{Publication, Published};

/// A publication waiting for the next group.
#[derive(Debug)]
struct Waiting {
    publication: Publication,
    now: DateTime<Utc>,
    done: oneshot::Sender<Result<Published, StoreError>>,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: Vec<Waiting>,
    /// Whether a task is writing groups.
    running: bool,
}

/// The publications waiting for a group commit.
#[derive(Debug, Default)]
pub(super) struct GroupCommit {
    queue: Mutex<Queue>,
}

impl GroupCommit {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SqlStore {
    /// Publishes through the group commit. A publication that finds no commit running is
    /// written at once, by its caller, in a transaction of its own (a lone publisher pays
    /// nothing for the grouping); one that arrives while a commit runs waits for the next
    /// group, written by a task of its own (see [`WriterGuard`]).
    pub(super) async fn publish_in_group(
        &self,
        publication: &Publication,
        now: DateTime<Utc>,
    ) -> Result<Published, StoreError> {
        let (done, answer) = oneshot::channel();
        let write_now = {
            let mut queue = self.group.queue();
            if queue.running {
                queue.waiting.push(Waiting {
                    publication: publication.clone(),
                    now,
                    done,
                });
                false
            } else {
                queue.running = true;
                true
            }
        };
        if write_now {
            let writer = WriterGuard { store: self };
            let published = self.publish_now(publication, now).await;
            drop(writer);
            return published;
        }
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Backend {
                store: self.url.clone(),
                operation: "publish",
                reason: "the group commit stopped before answering (the runtime is shutting \
                         down); the event may or may not have been stored"
                    .into(),
            })
        })
    }

    /// Writes the waiting publications, group after group, until none waits.
    async fn write_groups(&self) {
        loop {
            let group = {
                let mut queue = self.group.queue();
                if queue.waiting.is_empty() {
                    queue.running = false;
                    return;
                }
                std::mem::take(&mut queue.waiting)
            };
            self.write_group(group).await;
        }
    }

    async fn write_group(&self, group: Vec<Waiting>) {
        tracing::trace!(publications = group.len(), "group commit");
        if group.len() > 1 {
            let publications: Vec<Publication> =
                group.iter().map(|w| w.publication.clone()).collect();
            let now = group.iter().map(|w| w.now).max().unwrap_or_else(Utc::now);
            if let Ok(published) = self.publish_batch_now(&publications, now).await {
                for (waiting, published) in group.into_iter().zip(published) {
                    let _ = waiting.done.send(Ok(published));
                }
                return;
            }
            // Some publication of the group was refused: each on its own, so that only its
            // caller hears of it.
        }
        for waiting in group {
            let result = self.publish_now(&waiting.publication, waiting.now).await;
            let _ = waiting.done.send(result);
        }
    }
}

/// Held by a caller writing its own publication: when it is done (or its future is dropped
/// midway), the publications that queued meanwhile go to a task that writes them in groups,
/// or, with none queued, the next publication is written by its caller again.
struct WriterGuard<'a> {
    store: &'a SqlStore,
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        let mut queue = self.store.group.queue();
        if queue.waiting.is_empty() {
            queue.running = false;
            return;
        }
        let runtime = tokio::runtime::Handle::try_current();
        match (self.store.me.upgrade(), runtime) {
            (Some(store), Ok(runtime)) => {
                drop(queue);
                runtime.spawn(async move { store.write_groups().await });
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
