//! SQLite (the embedded default) and PostgreSQL (scale-out) behind every storage role, in one
//! implementation over sqlx's `Any` driver. The engines differ only in a few SQL fragments
//! ([`Dialect`]): PostgreSQL claims rows with `FOR UPDATE SKIP LOCKED`, and its event appends
//! take no lock: transactions that publish at once commit in any order, so an event id may
//! become visible after a greater one, and the log cursor tracks such gaps and reads them
//! again until they fill (see `log_cursor::LogCursor`). SQLite has a single
//! writer: its ids become visible in order.
//!
//! Timestamps are stored as microseconds since the Unix epoch (`BIGINT`), flags as `SMALLINT`.
//!
//! A bound `LIMIT` is written `LIMIT $n + 0`. SQLite plans a `LIMIT $n` with the bound value and
//! marks the statement to be compiled again whenever `$n` is bound anew, so a cached claim
//! statement was recompiled (with its triggers) on every run: about 5% of the CPU time of a
//! small-blob sync. An expression is evaluated when the statement runs instead.
//!
//! The store may live in the application's own database: [`SqlTable`] reads (and on a
//! secondary writes) one replicable's records in the application's table, and
//! [`AppConnection`] lets a publication be written in the application's transaction.

mod batch;
mod counts;
mod event_log;
mod group_commit;
mod in_transaction;
mod readers;
mod records;
mod registry;
pub mod schema;
mod table;
mod verification;

pub use in_transaction::AppConnection;
pub use table::SqlTable;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, AssertSqlSafe, Connection, Executor, Row};

use crate::domain::error::StoreError;
use schema::{
    CORE_COMPONENT, CORE_VERSION, REPLICABLE_VERSION, SCHEMA_TABLE, core_migrations,
    replicable_component, replicable_migrations, valid_name,
};

/// Which SQL engine a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite: one file, one writer at a time.
    Sqlite,
    /// PostgreSQL: many processes share the work.
    Postgres,
}

impl Dialect {
    fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Some(Self::Postgres)
        } else {
            None
        }
    }

    /// The row-locking clause of a claim's inner select.
    fn skip_locked(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// The clause that makes SQLite walk `index` for a claim (` INDEXED BY index`; nothing on
    /// PostgreSQL, whose planner has statistics). Without it SQLite, which has no statistics
    /// unless `ANALYZE` ran, picks the index on the state alone and sorts every due row: a
    /// claim among 20,000 due rows took a millisecond, under the write lock.
    fn indexed_by(self, index: &str) -> String {
        match self {
            Self::Sqlite => format!(" INDEXED BY {index}"),
            Self::Postgres => String::new(),
        }
    }

    /// The database's current time in microseconds since the Unix epoch, as an SQL expression
    /// with the same value wherever it appears in one statement. Leases, claims and heartbeats
    /// are measured on this clock, not on the clocks of the machines sharing the database.
    pub fn now_micros(self) -> &'static str {
        match self {
            Self::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)",
            Self::Postgres => "CAST(EXTRACT(EPOCH FROM statement_timestamp()) * 1000000 AS BIGINT)",
        }
    }

    /// A text column, selected so that any stored value (on SQLite, bytes that are not UTF-8
    /// text) reaches Rust, where it is checked, instead of failing the whole row.
    fn raw_text(self, column: &str) -> String {
        match self {
            Self::Sqlite => format!("CAST({column} AS BLOB) AS {column}"),
            Self::Postgres => column.to_owned(),
        }
    }
}

/// How to open a SQL store.
#[derive(Debug, Clone)]
pub struct SqlOptions {
    /// Most connections in the pool (default: 4 for SQLite, 8 for PostgreSQL). On SQLite the
    /// store also keeps up to this many connections of its own that read, and two that write
    /// (one writer at a time); the pool then serves only tools that ask for it
    /// ([`SqlStore::pool`]).
    pub max_connections: Option<u32>,
    /// PostgreSQL only: the schema (namespace) to keep the tables in; created if missing.
    pub schema: Option<String>,
    /// How long to wait for a connection (default 10 seconds).
    pub acquire_timeout: Duration,
    /// Replicables whose tables are created (or migrated) when the store opens (default none).
    /// Tables are otherwise created on a replicable's first write or by
    /// [`RegistryStore::create_tables`](crate::storage::RegistryStore::create_tables), which is
    /// what the engine does for its list when it starts; read paths never create them.
    pub replicables: Vec<String>,
    /// SQLite only: create the database file when it does not exist (default `true`). Tools
    /// that only look at a site (status, an operator CLI) open with `false`, so that a misspelt
    /// path is an error naming it instead of a new, empty site.
    pub create_if_missing: bool,
    /// Wait for the disk on every commit (default `false`: only on the event log's appends).
    /// See [`SqlStore`] for what each setting keeps across a power loss.
    pub sync_every_commit: bool,
}

impl Default for SqlOptions {
    fn default() -> Self {
        Self {
            max_connections: None,
            schema: None,
            acquire_timeout: Duration::from_secs(10),
            replicables: Vec::new(),
            create_if_missing: true,
            sync_every_commit: false,
        }
    }
}

/// Statements of one replicable's tables, built once.
#[derive(Debug)]
struct Tables {
    name: String,
    registry_columns: String,
    verification_columns: String,
}

/// A SQLite or PostgreSQL database holding every storage role of a site.
///
/// # Durability
///
/// Every commit is atomic and survives the process crashing (a `kill -9`, a panic). What
/// survives the *machine* crashing or losing power depends on what was written:
/// - appends to the event log (a publish, with the record and verification rows it writes in
///   the same transaction; `checksum_succeeded` events) wait for the disk before the caller is
///   told they happened: SQLite commits them on a connection with `synchronous = FULL`,
///   PostgreSQL with `synchronous_commit` on;
/// - everything else (registry rows, verification progress, the cursor, status reports) commits
///   without waiting for the disk (SQLite `synchronous = NORMAL` in WAL mode, PostgreSQL
///   `synchronous_commit = off`): a power loss can take back the last moments of it, never
///   partly and never out of order. That work is redone: a registry row that goes back to
///   `pending` or `started` is synced again (a copy is never visible before it is complete), a
///   cursor that goes back consumes its events again, a verification runs again.
///
/// [`SqlOptions::sync_every_commit`] makes every commit wait for the disk (slower: one sync per
/// commit).
///
/// On SQLite (one writer, one sync per durable commit) single publishes that arrive while
/// another is being committed are written together in the next transaction (group commit):
/// concurrent publishers share one sync, each told only once its own event is stored. A batch
/// publish ([`EventLog::publish_batch`](crate::storage::EventLog::publish_batch)) is one
/// transaction, and so are the rows and `checksum_succeeded` events of the primary's
/// verifications that finish together
/// ([`EventLog::complete_verifications`](crate::storage::EventLog::complete_verifications)).
#[derive(Debug)]
pub struct SqlStore {
    pool: AnyPool,
    /// SQLite: how the writing connections (see [`Writers`]) are opened.
    connect_options: AnyConnectOptions,
    /// Whether every commit of the main pool waits for the disk.
    sync_every_commit: bool,
    /// PostgreSQL: a native pool for `COPY`, which the `Any` driver cannot do.
    #[cfg(feature = "postgres")]
    copy_pool: Option<sqlx::PgPool>,
    dialect: Dialect,
    url: String,
    /// PostgreSQL: the schema the tables live in, created by the first migration.
    schema: Option<String>,
    tables: Mutex<HashMap<String, Arc<Tables>>>,
    /// SQLite: single publishes waiting to share a commit (see `group_commit.rs`).
    group: group_commit::GroupCommit,
    /// SQLite: the queue of this store's writers and the connections they write on (see
    /// [`SqlStore::writer`]).
    write_gate: Arc<tokio::sync::Mutex<Writers>>,
    /// SQLite: the connections this store reads on (see [`SqlStore::reader`]).
    readers: Arc<readers::Readers>,
    /// Bumped after each append this store committed (see [`EventLog::appends`]).
    appended: tokio::sync::watch::Sender<u64>,
    /// The store itself, for the group commit's task.
    me: std::sync::Weak<SqlStore>,
}

/// Advisory lock key for migrations (PostgreSQL).
const MIGRATION_LOCK: i64 = 0x7265_706c_6963_0001;

/// The URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_once('/').map_or((rest, ""), |(a, t)| (a, t));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    if tail.is_empty() && !rest.contains('/') {
        format!("{scheme}://{authority}")
    } else {
        format!("{scheme}://{authority}/{tail}")
    }
}

pub(crate) fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

pub(crate) fn opt_micros(at: Option<DateTime<Utc>>) -> Option<i64> {
    at.map(micros)
}

fn from_micros(store: &str, v: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(v).ok_or_else(|| StoreError::Corrupt {
        store: store.to_owned(),
        reason: format!("timestamp {v} is out of range"),
    })
}

/// Per-connection settings: WAL, a busy timeout and the commit durability (`sync_commits`:
/// wait for the disk on every commit, or only at checkpoints) on SQLite; the search path and
/// the commit durability on PostgreSQL.
async fn prepare_connection(
    conn: &mut AnyConnection,
    dialect: Dialect,
    schema: Option<&str>,
    sync_commits: bool,
) -> Result<(), sqlx::Error> {
    match dialect {
        Dialect::Sqlite => {
            // The busy timeout first: switching a fresh file to WAL takes a lock that another
            // process opening it at the same moment may hold.
            conn.execute("PRAGMA busy_timeout = 10000").await?;
            // Switching to WAL does not always wait on the busy handler: retry a few times.
            let mut attempt = 0;
            loop {
                match conn.execute("PRAGMA journal_mode = WAL").await {
                    Ok(_) => break,
                    Err(sqlx::Error::Database(e))
                        if attempt < 50 && e.message().contains("locked") =>
                    {
                        attempt += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(20 * attempt)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
            // In WAL mode NORMAL syncs at checkpoints only: a commit survives the process
            // crashing, not the machine losing power. A FULL connection's commit syncs the log
            // up to itself, earlier NORMAL commits included.
            let synchronous = if sync_commits { "FULL" } else { "NORMAL" };
            conn.execute(AssertSqlSafe(format!("PRAGMA synchronous = {synchronous}")))
                .await?;
        }
        Dialect::Postgres => {
            // The schema itself is created by the first migration, under the migration lock:
            // a search path naming a schema that does not exist yet is accepted, and takes
            // effect once the schema is created.
            if let Some(schema) = schema {
                conn.execute(AssertSqlSafe(format!("SET search_path TO {schema}")))
                    .await?;
            }
            // A commit returns before the server flushed it (it survives this process, not a
            // server crash); appends to the event log turn it back on for their transaction.
            if !sync_commits {
                conn.execute("SET synchronous_commit TO off").await?;
            }
        }
    }
    Ok(())
}

/// The file of a SQLite URL (`sqlite://path`, `sqlite:path`, with or without `?options`);
/// `None` for an in-memory database.
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && !path.starts_with(":memory:")).then(|| std::path::PathBuf::from(path))
}

/// SQLite: the two connections a store writes on, owned by its write gate (whoever holds the
/// gate holds them), opened on first use.
///
/// Written here rather than taken from the pool because a pooled connection costs a round trip
/// to its worker thread each time it goes back (the pool pings it), on top of the statement's
/// own: with one writer at a time that ping was paid inside the queue of every write. A
/// connection of its own also keeps its page cache, which other connections' writes would
/// invalidate.
#[derive(Debug, Default)]
pub(crate) struct Writers {
    /// Commits without waiting for the disk (unless `sync_every_commit`).
    normal: Option<AnyConnection>,
    /// Commits wait for the disk (`synchronous = FULL`): the event log's appends.
    durable: Option<AnyConnection>,
    /// A transaction on that connection (0 normal, 1 durable) ended without its commit and
    /// its rollback has not run (no runtime to run it, or it was stopped midway): the next
    /// writer rolls it back before it writes.
    unfinished: [bool; 2],
}

impl Writers {
    fn slot(&mut self, durable: bool) -> &mut Option<AnyConnection> {
        if durable {
            &mut self.durable
        } else {
            &mut self.normal
        }
    }

    fn conn(&mut self, durable: bool) -> &mut AnyConnection {
        self.slot(durable).as_mut().expect(OPENED)
    }

    fn conn_ref(&self, durable: bool) -> &AnyConnection {
        if durable { &self.durable } else { &self.normal }
            .as_ref()
            .expect(OPENED)
    }

    /// Rolls back what the connection named by `durable` left open (a transaction that had
    /// already ended is no error) and clears its mark. A connection that fails even that is
    /// dropped (closing it ends its transaction), to be opened again when next needed.
    async fn roll_back(&mut self, durable: bool) {
        if let Some(conn) = self.slot(durable) {
            match conn.execute("ROLLBACK").await {
                Ok(_) | Err(sqlx::Error::Database(_)) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "dropping a failed writing connection");
                    *self.slot(durable) = None;
                }
            }
        }
        self.unfinished[usize::from(durable)] = false;
    }
}

const OPENED: &str = "the writer opens its connection before handing it out";

/// The right to write one statement, with the connection to write it on: on SQLite the
/// store's writing connection, held with the write gate; on PostgreSQL a pooled connection.
pub(crate) enum Writer {
    Sqlite(tokio::sync::OwnedMutexGuard<Writers>),
    Pool(sqlx::pool::PoolConnection<sqlx::Any>),
}

impl std::ops::Deref for Writer {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        match self {
            Self::Sqlite(writers) => writers.conn_ref(false),
            Self::Pool(conn) => conn,
        }
    }
}

impl std::ops::DerefMut for Writer {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            Self::Sqlite(writers) => writers.conn(false),
            Self::Pool(conn) => conn,
        }
    }
}

/// A write transaction that holds its store's write gate until it commits or is dropped.
/// Dereferences to the connection, like a transaction. On SQLite a transaction dropped before
/// it commits is rolled back at once by a task that holds the gate until it is done (or, with
/// no runtime left, by the next writer before it writes).
pub(crate) enum WriteTx {
    Sqlite {
        /// Held from before `BEGIN` until the commit succeeds (then `None`), or handed to the
        /// rollback.
        writers: Option<tokio::sync::OwnedMutexGuard<Writers>>,
        durable: bool,
    },
    /// Taken by `commit`.
    Pool(Option<sqlx::Transaction<'static, sqlx::Any>>),
}

/// Used only until it commits (or is dropped).
const TAKEN: &str = "a write transaction is used only until it commits";

impl WriteTx {
    /// Commits, then lets the next writer in.
    pub(crate) async fn commit(mut self) -> Result<(), sqlx::Error> {
        match &mut self {
            Self::Sqlite { writers, durable } => {
                let conn = writers.as_mut().expect(TAKEN).conn(*durable);
                conn.execute("COMMIT").await?;
                // Committed: nothing for `drop` to roll back.
                *writers = None;
                Ok(())
            }
            Self::Pool(tx) => tx.take().expect(TAKEN).commit().await,
        }
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        let Self::Sqlite { writers, durable } = self else {
            return;
        };
        let (Some(mut writers), durable) = (writers.take(), *durable) else {
            return;
        };
        // Marked first: if the rollback below never runs, the next writer does it.
        writers.unfinished[usize::from(durable)] = true;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // Rolled back now, not at the next write: until then the transaction would hold
            // SQLite's write lock against every other connection and process. The gate is
            // held until it is done.
            runtime.spawn(async move { writers.roll_back(durable).await });
        }
    }
}

impl std::ops::Deref for WriteTx {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        match self {
            Self::Sqlite { writers, durable } => writers.as_ref().expect(TAKEN).conn_ref(*durable),
            Self::Pool(tx) => tx.as_ref().expect(TAKEN),
        }
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            Self::Sqlite { writers, durable } => writers.as_mut().expect(TAKEN).conn(*durable),
            Self::Pool(tx) => tx.as_mut().expect(TAKEN),
        }
    }
}

impl SqlStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://path` or `postgres://...`)
    /// and brings its schema up to date. A schema newer than this build is refused.
    pub async fn open(url: &str) -> Result<Arc<Self>, StoreError> {
        Self::open_with(url, SqlOptions::default()).await
    }

    /// [`SqlStore::open`] with options.
    pub async fn open_with(url: &str, options: SqlOptions) -> Result<Arc<Self>, StoreError> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let redacted = redact_url(url);
        let open_error = |reason: String| StoreError::Open {
            url: redacted.clone(),
            reason,
        };
        let dialect = Dialect::of_url(url).ok_or_else(|| {
            open_error("unknown engine: use sqlite://path or postgres://host/database".into())
        })?;
        let connect_url = match dialect {
            Dialect::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                let mode = if options.create_if_missing {
                    "rwc"
                } else {
                    "rw"
                };
                format!("{url}{sep}mode={mode}")
            }
            _ => url.to_owned(),
        };
        if dialect == Dialect::Sqlite
            && !options.create_if_missing
            && let Some(file) = sqlite_file(url)
            && !file.exists()
        {
            return Err(open_error(format!(
                "no database file at `{}` (it is created only by a site that runs)",
                file.display()
            )));
        }
        if let Some(schema) = &options.schema
            && !valid_name(schema)
        {
            return Err(open_error(format!(
                "schema name `{schema}` is not a plain lower-case identifier"
            )));
        }
        let connect_options: AnyConnectOptions = connect_url
            .parse()
            .map_err(|e: sqlx::Error| open_error(e.to_string()))?;
        // One connection first, outside the pool: the pool retries a failing connection until
        // its timeout and reports only that, while this reports the cause (a corrupt file, a
        // refused connection, bad credentials).
        let mut probe = AnyConnection::connect_with(&connect_options)
            .await
            .map_err(|e| open_error(e.to_string()))?;
        prepare_connection(&mut probe, dialect, options.schema.as_deref(), true)
            .await
            .map_err(|e| open_error(e.to_string()))?;
        let _ = probe.close().await;
        let pool_options = |sync_commits: bool| {
            let schema = options.schema.clone();
            AnyPoolOptions::new()
                .acquire_timeout(options.acquire_timeout)
                // A SQLite connection is a file handle in this process: pinging it before each
                // use (a round trip to its worker thread) finds nothing a statement would not.
                .test_before_acquire(dialect == Dialect::Postgres)
                .after_connect(move |conn, _meta| {
                    let schema = schema.clone();
                    Box::pin(async move {
                        prepare_connection(conn, dialect, schema.as_deref(), sync_commits).await
                    })
                })
        };
        let sync_every_commit = options.sync_every_commit;
        let max_connections = options.max_connections.unwrap_or(match dialect {
            Dialect::Sqlite => 4,
            Dialect::Postgres => 8,
        });
        let pool = pool_options(sync_every_commit)
            .max_connections(max_connections)
            .connect_with(connect_options.clone())
            .await
            .map_err(|e| open_error(e.to_string()))?;
        #[cfg(feature = "postgres")]
        let copy_pool = match dialect {
            Dialect::Postgres => {
                let schema = options.schema.clone();
                let pg_options: sqlx::postgres::PgConnectOptions = url
                    .parse()
                    .map_err(|e: sqlx::Error| open_error(e.to_string()))?;
                Some(
                    sqlx::postgres::PgPoolOptions::new()
                        .max_connections(2)
                        .acquire_timeout(options.acquire_timeout)
                        .after_connect(move |conn, _meta| {
                            let schema = schema.clone();
                            Box::pin(async move {
                                if let Some(schema) = schema {
                                    let set = format!("SET search_path TO {schema}");
                                    conn.execute(AssertSqlSafe(set)).await?;
                                }
                                Ok(())
                            })
                        })
                        .connect_lazy_with(pg_options),
                )
            }
            Dialect::Sqlite => None,
        };
        let readers = readers::Readers::new(
            usize::try_from(max_connections).unwrap_or(usize::MAX),
            connect_options.clone(),
        );
        let store = Arc::new_cyclic(|me| Self {
            pool,
            connect_options,
            sync_every_commit,
            #[cfg(feature = "postgres")]
            copy_pool,
            dialect,
            url: redacted,
            schema: options.schema.clone(),
            tables: Mutex::new(HashMap::new()),
            group: group_commit::GroupCommit::default(),
            write_gate: Arc::new(tokio::sync::Mutex::new(Writers::default())),
            readers,
            appended: tokio::sync::watch::Sender::new(0),
            me: me.clone(),
        });
        store.migrate_core().await?;
        for name in &options.replicables {
            store.tables(name).await?;
        }
        Ok(store)
    }

    /// The engine.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The URL, without its password.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The connection pool, for tools and benchmarks.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Waits for this store's turn to write one statement and returns the connection to write
    /// it on (SQLite: the store's writing connection; PostgreSQL: a pooled one, since its
    /// writers lock rows, not the database).
    ///
    /// SQLite has one writer at a time, and a writer that finds the lock taken waits in
    /// SQLite's busy handler, which sleeps between tries (1, 2, 5, ... up to 100 ms): under a
    /// steady stream of small writes from one process most of the time goes to those sleeps.
    /// So the writers of one store queue here, in arrival order (tokio's mutex is fair), and
    /// each takes the lock the moment the previous one is done. Writers of other processes
    /// still meet the busy handler. Hold the writer for the whole write.
    pub(crate) async fn writer(&self) -> Result<Writer, StoreError> {
        match self.dialect {
            Dialect::Sqlite => self
                .sqlite_writers(false)
                .await
                .map(Writer::Sqlite)
                .map_err(self.backend("open the writing connection")),
            Dialect::Postgres => self
                .pool
                .acquire()
                .await
                .map(Writer::Pool)
                .map_err(self.backend("acquire a connection")),
        }
    }

    /// A connection to read one statement on: on SQLite one of the store's reading
    /// connections (see [`readers`]), on PostgreSQL a pooled one. Drop it when the read is
    /// done.
    pub(crate) async fn reader(&self) -> Result<readers::Reader, StoreError> {
        match self.dialect {
            Dialect::Sqlite => self
                .readers
                .take()
                .await
                .map_err(self.backend("open a reading connection")),
            Dialect::Postgres => self
                .pool
                .acquire()
                .await
                .map(readers::Reader::Pool)
                .map_err(self.backend("acquire a connection")),
        }
    }

    /// SQLite: takes the write gate, with the connection named by `durable` open and no
    /// transaction left on it.
    async fn sqlite_writers(
        &self,
        durable: bool,
    ) -> Result<tokio::sync::OwnedMutexGuard<Writers>, sqlx::Error> {
        let mut writers = self.write_gate.clone().lock_owned().await;
        // Either connection's unfinished transaction holds SQLite's write lock, whichever
        // connection this writer takes.
        for left in [false, true] {
            if writers.unfinished[usize::from(left)] {
                writers.roll_back(left).await;
            }
        }
        if writers.slot(durable).is_none() {
            let mut conn = AnyConnection::connect_with(&self.connect_options).await?;
            prepare_connection(
                &mut conn,
                self.dialect,
                None,
                durable || self.sync_every_commit,
            )
            .await?;
            *writers.slot(durable) = Some(conn);
        }
        Ok(writers)
    }

    /// Begins a transaction that writes: on SQLite it takes the write lock at once, so that
    /// what it reads stays true until it commits.
    async fn begin_write(&self) -> Result<WriteTx, sqlx::Error> {
        self.begin(false).await
    }

    /// Begins a transaction that appends to the event log: its commit waits for the disk
    /// (SQLite: on a connection with `synchronous = FULL`; PostgreSQL: `synchronous_commit`
    /// on for this transaction), so an event the caller was told about survives a power loss.
    async fn begin_durable_write(&self) -> Result<WriteTx, sqlx::Error> {
        self.begin(true).await
    }

    async fn begin(&self, durable: bool) -> Result<WriteTx, sqlx::Error> {
        match self.dialect {
            Dialect::Sqlite => {
                // With every commit synced, the normal connection is as durable.
                let durable = durable && !self.sync_every_commit;
                let writers = self.sqlite_writers(durable).await?;
                // Open from before `BEGIN` runs: however it ends short of its commit (an
                // error, or the caller's future dropped at any await, `BEGIN`'s included), it
                // is rolled back.
                let mut tx = WriteTx::Sqlite {
                    writers: Some(writers),
                    durable,
                };
                tx.execute("BEGIN IMMEDIATE").await?;
                Ok(tx)
            }
            Dialect::Postgres => {
                let mut tx = self.pool.begin().await?;
                if durable && !self.sync_every_commit {
                    tx.execute("SET LOCAL synchronous_commit TO on").await?;
                }
                Ok(WriteTx::Pool(Some(tx)))
            }
        }
    }

    /// The database's current time.
    pub async fn database_now(&self) -> Result<DateTime<Utc>, StoreError> {
        let sql = format!("SELECT {} AS now", self.dialect.now_micros());
        let row = sqlx::query(AssertSqlSafe(sql))
            .fetch_one(&mut *self.reader().await?)
            .await
            .map_err(self.backend("read the database clock"))?;
        self.time(self.get(&row, "now")?)
    }

    /// Closes every connection.
    pub async fn close(&self) {
        let (normal, durable) = {
            let mut writers = self.write_gate.lock().await;
            (writers.normal.take(), writers.durable.take())
        };
        for conn in [normal, durable].into_iter().flatten() {
            let _ = conn.close().await;
        }
        self.readers.close().await;
        self.pool.close().await;
    }

    fn backend(&self, operation: &'static str) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        move |e| {
            // The database's code names the kind of failure (and lets a deadlock be told apart
            // from other failures, see `retrying_deadlocks`).
            let code = e
                .as_database_error()
                .and_then(|db| db.code())
                .map(|code| format!(" (SQLSTATE {code})"))
                .unwrap_or_default();
            StoreError::Backend {
                store: self.url.clone(),
                operation,
                reason: format!("{e}{code}"),
            }
        }
    }

    /// Runs the transaction `attempt` (from its `BEGIN` to its commit) again when PostgreSQL
    /// aborted it as one side of a deadlock (SQLSTATE 40P01): rolled back whole, it wrote
    /// nothing, and the other side has gone on by then. Transactions that take the same rows
    /// in different orders (a batch written in several parts, each ordered on its own) can
    /// deadlock however each statement orders its rows. A few tries, after a short random
    /// pause; then the error goes to the caller.
    ///
    /// Written here rather than taken from a retry crate: the decision (this SQLSTATE, on
    /// this dialect, for a whole transaction) is the store's, and the loop is a few lines.
    pub(super) async fn retrying_deadlocks<T, F, Fut>(&self, attempt: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        const TRIES: u32 = 5;
        let mut tries = 1;
        loop {
            match attempt().await {
                Err(StoreError::Backend { reason, .. })
                    if self.dialect == Dialect::Postgres
                        && tries < TRIES
                        && reason.ends_with("(SQLSTATE 40P01)") =>
                {
                    tracing::debug!(tries, "deadlock: writing the transaction again");
                    tries += 1;
                    let pause = std::time::Duration::from_millis(fastrand::u64(5..50));
                    tokio::time::sleep(pause).await;
                }
                done => return done,
            }
        }
    }

    fn corrupt(&self, reason: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            store: self.url.clone(),
            reason: reason.into(),
        }
    }

    pub(crate) fn time(&self, v: i64) -> Result<DateTime<Utc>, StoreError> {
        from_micros(&self.url, v)
    }

    pub(crate) fn opt_time(&self, v: Option<i64>) -> Result<Option<DateTime<Utc>>, StoreError> {
        v.map(|v| self.time(v)).transpose()
    }

    pub(crate) fn get<'r, T>(&self, row: &'r AnyRow, column: &str) -> Result<T, StoreError>
    where
        T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
    {
        row.try_get(column)
            .map_err(|e| self.corrupt(format!("column `{column}`: {e}")))
    }

    /// Runs `statements` in one transaction that holds the schema lock, after checking that the
    /// component's stored version is not newer than `supported`.
    async fn migrate(
        &self,
        component: &str,
        supported: i64,
        steps: impl FnOnce(i64) -> Vec<String>,
    ) -> Result<(), StoreError> {
        let open = |reason: String| StoreError::Open {
            url: self.url.clone(),
            reason,
        };
        // Every statement, from the schema's creation on, runs under the migration lock (the
        // write lock on SQLite): processes opening a fresh database at once would otherwise
        // race on creating the same catalogue entries, and all but one would fail.
        // Not through the write gate: a store method may meet a replicable's tables for the
        // first time inside its own write, and the gate does not nest.
        let begun = match self.dialect {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Dialect::Postgres => self.pool.begin().await,
        };
        let mut tx = begun.map_err(|e| open(e.to_string()))?;
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *tx)
                .await
                .map_err(|e| open(e.to_string()))?;
            if let Some(schema) = &self.schema {
                tx.execute(AssertSqlSafe(format!(
                    "CREATE SCHEMA IF NOT EXISTS {schema}"
                )))
                .await
                .map_err(|e| open(e.to_string()))?;
            }
        }
        tx.execute(SCHEMA_TABLE)
            .await
            .map_err(|e| open(e.to_string()))?;
        let found: Option<i64> =
            sqlx::query("SELECT version FROM replicable_schema WHERE component = $1")
                .bind(component.to_owned())
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| open(e.to_string()))?
                .map(|row| self.get(&row, "version"))
                .transpose()?;
        let current = found.unwrap_or(0);
        if current > supported {
            return Err(StoreError::SchemaTooNew {
                url: self.url.clone(),
                found: current,
                supported,
            });
        }
        if current < supported {
            for statement in steps(current) {
                tx.execute(AssertSqlSafe(statement))
                    .await
                    .map_err(|e| open(format!("migrating {component}: {e}")))?;
            }
            sqlx::query(
                "INSERT INTO replicable_schema (component, version) VALUES ($1, $2) \
                 ON CONFLICT (component) DO UPDATE SET version = excluded.version",
            )
            .bind(component.to_owned())
            .bind(supported)
            .execute(&mut *tx)
            .await
            .map_err(|e| open(e.to_string()))?;
        }
        tx.commit().await.map_err(|e| open(e.to_string()))
    }

    async fn migrate_core(&self) -> Result<(), StoreError> {
        let dialect = self.dialect;
        self.migrate(CORE_COMPONENT, CORE_VERSION, |from| {
            core_migrations(dialect, from)
        })
        .await
    }

    /// The tables of replicable `name`, created (or migrated) on first use.
    async fn tables(&self, name: &str) -> Result<Arc<Tables>, StoreError> {
        if let Some(tables) = self
            .tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(tables.clone());
        }
        if !valid_name(name) {
            return Err(StoreError::Backend {
                store: self.url.clone(),
                operation: "open replicable tables",
                reason: format!("`{name}` is not a valid replicable name"),
            });
        }
        let dialect = self.dialect;
        let qualifier = self.framework_prefix();
        self.migrate(&replicable_component(name), REPLICABLE_VERSION, |from| {
            replicable_migrations(dialect, name, &qualifier, from, REPLICABLE_VERSION)
        })
        .await?;
        let verification_columns = "verification_state, verification_checksum, verified_at, \
             verification_started_at, verification_retry_at, verification_retry_count, \
             verification_failure, checksum_mismatch, verification_checksum_mismatched, \
             heartbeat_at, version";
        let tables = Arc::new(Tables {
            name: name.to_owned(),
            registry_columns: format!(
                "{name}_id AS model_id, state, retry_count, retry_at, last_sync_failure, \
                 last_synced_at, created_at, missing_on_primary, synced_generation, \
                 change_pending, changed_at, {verification_columns}"
            ),
            verification_columns: format!("{name}_id AS model_id, {verification_columns}"),
        });
        self.tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), tables.clone());
        Ok(tables)
    }

    /// The tables of replicable `name` if they exist, for read paths: `None` (and no DDL) when
    /// they were never created, so that reading an unknown or misspelt name never creates
    /// tables. Tables of an older version are migrated (an upgrade, not a creation).
    async fn existing_tables(&self, name: &str) -> Result<Option<Arc<Tables>>, StoreError> {
        if let Some(tables) = self
            .tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(Some(tables.clone()));
        }
        if !valid_name(name) {
            return Ok(None);
        }
        match self.schema_version(&replicable_component(name)).await? {
            None => Ok(None),
            Some(_) => self.tables(name).await.map(Some),
        }
    }

    /// Creates (or migrates) the tables of replicable `name`: what
    /// [`RegistryStore::create_tables`](crate::storage::RegistryStore::create_tables) does.
    pub async fn create_replicable_tables(&self, name: &str) -> Result<(), StoreError> {
        self.tables(name).await.map(|_| ())
    }

    /// The schema version stored for `component` (tests and tools).
    pub async fn schema_version(&self, component: &str) -> Result<Option<i64>, StoreError> {
        sqlx::query("SELECT version FROM replicable_schema WHERE component = $1")
            .bind(component.to_owned())
            .fetch_optional(&mut *self.reader().await?)
            .await
            .map_err(self.backend("read schema version"))?
            .map(|row| self.get(&row, "version"))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    /// Every bound `LIMIT` is an expression (see the module's documentation), so that SQLite
    /// does not compile its statement again each time it runs.
    #[test]
    fn no_statement_binds_a_bare_limit() {
        let sources = [
            ("event_log.rs", include_str!("event_log.rs")),
            ("records.rs", include_str!("records.rs")),
            ("registry.rs", include_str!("registry.rs")),
            ("table.rs", include_str!("table.rs")),
            ("verification.rs", include_str!("verification.rs")),
            ("group_commit.rs", include_str!("group_commit.rs")),
            ("batch.rs", include_str!("batch.rs")),
            ("counts.rs", include_str!("counts.rs")),
            ("in_transaction.rs", include_str!("in_transaction.rs")),
            ("readers.rs", include_str!("readers.rs")),
            ("schema.rs", include_str!("schema.rs")),
        ];
        let mut bare = Vec::new();
        for (file, text) in sources {
            for (n, line) in text.lines().enumerate() {
                let mut rest = line;
                while let Some(at) = rest.find("LIMIT $") {
                    let after = &rest[at + "LIMIT $".len()..];
                    let end = after
                        .find(|c: char| !(c.is_ascii_digit() || c == '{' || c == '}'))
                        .unwrap_or(after.len());
                    if !after[end..].starts_with(" + 0") {
                        bare.push(format!("{file}:{}: {}", n + 1, line.trim()));
                    }
                    rest = &after[end..];
                }
            }
        }
        assert!(bare.is_empty(), "bound LIMITs without `+ 0`: {bare:#?}");
    }

    use super::*;

    #[test]
    fn passwords_are_removed_from_urls() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db.internal:5432/geo"),
            "postgres://app:***@db.internal:5432/geo"
        );
        assert_eq!(redact_url("postgres://app@db/geo"), "postgres://app@db/geo");
        assert_eq!(
            redact_url("sqlite:///var/lib/site.db"),
            "sqlite:///var/lib/site.db"
        );
        assert_eq!(redact_url("sqlite:site.db"), "sqlite:site.db");
    }

    async fn lease_holders(store: &SqlStore) -> Vec<String> {
        lease_holders_on(&mut store.pool.acquire().await.unwrap()).await
    }

    /// Writes a lease row named `holder` on `conn`.
    async fn insert_lease(conn: &mut AnyConnection, holder: &str) {
        sqlx::query("INSERT INTO replicable_leases (name, holder, expires_at) VALUES ($1, $1, 0)")
            .bind(holder.to_owned())
            .execute(conn)
            .await
            .unwrap();
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn reading_connections_are_reused_bounded_and_see_every_commit() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("site.db").display());
        let options = SqlOptions {
            max_connections: Some(2),
            ..SqlOptions::default()
        };
        let store = SqlStore::open_with(&url, options).await.unwrap();
        let (mut first, second) = (store.reader().await.unwrap(), store.reader().await.unwrap());
        // Both held: a third waits for one to come back.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), store.reader())
                .await
                .is_err(),
            "no more than max_connections reading connections at once"
        );
        // A reader that was idle sees what the writer committed since.
        assert!(lease_holders_on(&mut first).await.is_empty());
        drop(second);
        assert_eq!(
            store.readers.idle(),
            1,
            "a connection goes back when its read is done"
        );
        insert_lease(&mut store.writer().await.unwrap(), "written").await;
        assert_eq!(lease_holders_on(&mut first).await, ["written"]);
        drop(first);
        assert_eq!(store.readers.idle(), 2);
        let mut again = store.reader().await.unwrap();
        assert_eq!(store.readers.idle(), 1, "an idle connection is reused");
        assert_eq!(lease_holders_on(&mut again).await, ["written"]);
        drop(again);
        store.close().await;
        assert!(
            store.reader().await.is_err(),
            "a closed store reads no more"
        );
    }

    async fn lease_holders_on(conn: &mut AnyConnection) -> Vec<String> {
        sqlx::query_scalar("SELECT holder FROM replicable_leases ORDER BY holder")
            .fetch_all(conn)
            .await
            .unwrap()
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn a_write_transaction_that_ends_without_commit_leaves_nothing_and_blocks_no_one() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("site.db").display());
        let store = SqlStore::open(&url).await.unwrap();
        for durable in [false, true] {
            let mut tx = store.begin(durable).await.unwrap();
            insert_lease(&mut tx, &format!("dropped-{durable}")).await;
            drop(tx);
            // Rolled back at once: another connection (another process) writes meanwhile.
            insert_lease(
                &mut store.pool.acquire().await.unwrap(),
                &format!("pool-{durable}"),
            )
            .await;
            // The next writer on either connection writes for good, outside the dropped one.
            let mut w = store.writer().await.unwrap();
            insert_lease(&mut w, &format!("single-{durable}")).await;
            drop(w);
            let mut tx = store.begin(durable).await.unwrap();
            insert_lease(&mut tx, &format!("committed-{durable}")).await;
            tx.commit().await.unwrap();
        }
        // A transaction whose future is dropped midway (here: before it even began) leaves
        // nothing open either.
        let begun = store.begin(true);
        drop(begun);
        let cancelled = tokio::time::timeout(std::time::Duration::ZERO, async {
            let mut tx = store.begin(false).await.unwrap();
            insert_lease(&mut tx, "cancelled").await;
            std::future::pending::<()>().await;
        })
        .await;
        assert!(cancelled.is_err());
        let expected = [
            "committed-false",
            "committed-true",
            "pool-false",
            "pool-true",
            "single-false",
            "single-true",
        ];
        // Read on another connection: only what was committed is there.
        assert_eq!(lease_holders(&store).await, expected);
        store.close().await;
        let reopened = SqlStore::open(&url).await.unwrap();
        assert_eq!(lease_holders(&reopened).await, expected);
        reopened.close().await;
    }
}
