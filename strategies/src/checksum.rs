//! Checksum helpers.
//!
//! SHA-256 of a large resource is seconds of CPU. [`StreamHasher`] keeps it off the async
//! worker threads: the first [`INLINE_LIMIT`] bytes are hashed in place (a small blob costs no
//! thread hand-off), the rest on one blocking task fed through a short queue, so hashing runs
//! beside the reads and writes instead of between them.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Bytes hashed on the calling task before the hash moves to a blocking task.
pub const INLINE_LIMIT: usize = 256 * 1024;

/// Chunks queued for the hashing task before a sender waits.
const QUEUE: usize = 4;

/// The lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A SHA-256 fed chunk by chunk, computed off the async threads once the input is large.
#[derive(Debug)]
pub struct StreamHasher {
    state: State,
    len: u64,
}

#[derive(Debug)]
enum State {
    Inline(Sha256),
    Background {
        chunks: mpsc::Sender<Bytes>,
        task: JoinHandle<Sha256>,
    },
}

impl Default for StreamHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamHasher {
    /// An empty hash.
    pub fn new() -> Self {
        Self {
            state: State::Inline(Sha256::new()),
            len: 0,
        }
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was hashed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `chunk` (a cheap clone of the caller's `Bytes`: nothing is copied).
    pub async fn update(&mut self, chunk: Bytes) {
        self.len += chunk.len() as u64;
        if let State::Inline(hasher) = &mut self.state {
            if self.len <= INLINE_LIMIT as u64 {
                hasher.update(&chunk);
                return;
            }
            let hasher = std::mem::take(hasher);
            let (chunks, mut queue) = mpsc::channel::<Bytes>(QUEUE);
            let task = tokio::task::spawn_blocking(move || {
                let mut hasher = hasher;
                while let Some(chunk) = queue.blocking_recv() {
                    hasher.update(&chunk);
                }
                hasher
            });
            self.state = State::Background { chunks, task };
        }
        if let State::Background { chunks, .. } = &self.state {
            // The task ends only when the sender is dropped (in `finish`), so a send fails
            // only if the task panicked; `finish` reports that.
            let _ = chunks.send(chunk).await;
        }
    }

    /// The lower-case hex digest of everything added.
    pub async fn finish(self) -> String {
        let hasher = match self.state {
            State::Inline(hasher) => hasher,
            State::Background { chunks, task } => {
                drop(chunks);
                task.await.expect("the hashing task never panics")
            }
        };
        hex::encode(hasher.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn matches_the_one_shot_digest_below_and_above_the_inline_limit() {
        for len in [0, 10, INLINE_LIMIT, INLINE_LIMIT + 1, 3 * INLINE_LIMIT + 77] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut hasher = StreamHasher::new();
            for chunk in data.chunks(64 * 1024 + 3) {
                hasher.update(Bytes::copy_from_slice(chunk)).await;
            }
            assert_eq!(hasher.len(), len as u64);
            assert_eq!(hasher.finish().await, sha256_hex(&data), "length {len}");
        }
    }
}
