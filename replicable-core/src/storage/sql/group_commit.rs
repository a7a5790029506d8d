//! Group commit of single publishes on SQLite: publications that arrive while a commit is
//! waiting for the disk are written together in the next transaction, so that concurrent
//! publishers share one sync instead of queueing for one each (SQLite has one writer, and a
//! durable commit is one `fsync` of the log). Every caller still gets its answer only after the
//! transaction holding its event committed, so the promise of a single publish is unchanged:
//! an error when the event is not stored, `Ok` once it survives a power loss.
//!
//! The writes run in a task of their own, started by the first publication that finds none
//! running and ending when no publication waits: a caller that stops waiting (its future
//! dropped) never leaves the others without an answer. A group that fails is written again one
//! publication per transaction, so that one publication the database refuses fails only its
//! own caller.

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
    /// Publishes through the group commit: waits until the group holding `publication`
    /// committed.
    pub(super) async fn publish_in_group(
        &self,
        publication: &Publication,
        now: DateTime<Utc>,
    ) -> Result<Published, StoreError> {
        let (done, answer) = oneshot::channel();
        let start = {
            let mut queue = self.group.queue();
            queue.waiting.push(Waiting {
                publication: publication.clone(),
                now,
                done,
            });
            !std::mem::replace(&mut queue.running, true)
        };
        if start {
            match self.me.upgrade() {
                Some(store) => {
                    tokio::spawn(async move { store.write_groups().await });
                }
                // Not behind an `Arc` (never the case for a store from `open`): write here.
                None => self.write_groups().await,
            }
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
