//! SQLite: the connections a store reads on, kept by the store itself.
//!
//! Written here rather than taken from the pool for the reason the writing connections are
//! (see [`Writers`](super::Writers)): a pooled connection goes back through a task that pings
//! it, a second round trip to its worker thread for every read, and a site reads several rows
//! for each record it replicates. A read in autocommit mode leaves nothing behind on its
//! connection, even when its future is dropped midway (the driver resets the statement on its
//! own thread), so a connection goes back to the idle list however its read ended.

use std::sync::{Arc, Mutex, PoisonError};

use sqlx::AnyConnection;
use sqlx::any::AnyConnectOptions;
use sqlx::{Connection, pool::PoolConnection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Dialect, prepare_connection};

/// The reading connections of a SQLite store: at most `limit` open at once, the idle ones kept
/// for the next read.
#[derive(Debug)]
pub(crate) struct Readers {
    idle: Mutex<Vec<AnyConnection>>,
    /// One permit per connection in use; closed when the store closes.
    permits: Arc<Semaphore>,
    connect_options: AnyConnectOptions,
}

impl Readers {
    pub(crate) fn new(limit: usize, connect_options: AnyConnectOptions) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(limit.max(1))),
            connect_options,
        })
    }

    /// A connection to read on: an idle one, or a new one while fewer than the limit are open
    /// (otherwise it waits for one to come back).
    pub(crate) async fn take(self: &Arc<Self>) -> Result<Reader, sqlx::Error> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let idle = self.lock().pop();
        let conn = match idle {
            Some(conn) => conn,
            None => {
                let mut conn = AnyConnection::connect_with(&self.connect_options).await?;
                // It commits nothing: how commits wait for the disk does not matter here.
                prepare_connection(&mut conn, Dialect::Sqlite, None, false).await?;
                conn
            }
        };
        Ok(Reader::Sqlite {
            conn: Some(conn),
            home: self.clone(),
            _permit: permit,
        })
    }

    /// Closes the idle connections and refuses new reads; a connection in use is closed when
    /// it comes back.
    pub(crate) async fn close(&self) {
        self.permits.close();
        let idle = std::mem::take(&mut *self.lock());
        for conn in idle {
            let _ = conn.close().await;
        }
    }

    /// How many connections are idle.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<AnyConnection>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connection to read on: on SQLite one of the store's reading connections, on PostgreSQL a
/// pooled one.
pub(crate) enum Reader {
    Sqlite {
        /// Taken only by `drop`.
        conn: Option<AnyConnection>,
        home: Arc<Readers>,
        _permit: OwnedSemaphorePermit,
    },
    Pool(PoolConnection<sqlx::Any>),
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Self::Sqlite { conn, home, .. } = self
            && let Some(conn) = conn.take()
            && !home.permits.is_closed()
        {
            // A closed store drops the connection here instead, which closes it.
            home.lock().push(conn);
        }
    }
}

const HELD: &str = "a reader holds its connection until it is dropped";

impl std::ops::Deref for Reader {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        match self {
            Self::Sqlite { conn, .. } => conn.as_ref().expect(HELD),
            Self::Pool(conn) => conn,
        }
    }
}

impl std::ops::DerefMut for Reader {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            Self::Sqlite { conn, .. } => conn.as_mut().expect(HELD),
            Self::Pool(conn) => conn,
        }
    }
}
