//! A primary and a secondary wired together in one process, with a model factory.

use std::sync::Arc;

use crate::domain::event::EventId;
use crate::domain::selective_sync::SelectiveSync;
use crate::link::InProcessPrimary;
use crate::model::Replicable;
use crate::observer::SyncObserver;
use crate::replicator::ReplicatorExt;
use crate::site::{Site, SiteBuilder};
use crate::strategy::Strategy;

/// A record made on the primary by [`Harness::create`].
#[derive(Debug, Clone)]
pub struct Fixture<M> {
    /// The record.
    pub record: M,
    /// The checksum of its resource, computed by the strategy independently of
    /// `Strategy::checksum`.
    pub checksum: String,
}

type Factory<M> = Arc<dyn Fn(i64) -> M + Send + Sync>;
type MakeSecondary =
    Arc<dyn Fn(SelectiveSync, Option<Arc<dyn SyncObserver>>) -> Site + Send + Sync>;

/// A primary and a secondary reading it in process.
pub struct Harness<M: Replicable> {
    /// The primary site.
    pub primary: Site,
    /// The secondary site.
    pub secondary: Site,
    factory: Factory<M>,
    make_secondary: MakeSecondary,
    _dirs: Arc<Vec<tempfile::TempDir>>,
}

/// A [`SyncObserver`] that holds the next sync that reaches the point before its copy becomes
/// visible, until released: the shared suite uses it to let a newer change overtake an older
/// sync. It also counts the transfers it sees.
#[derive(Debug, Default)]
pub struct HoldBeforeVisible {
    armed: std::sync::atomic::AtomicBool,
    reached: tokio::sync::Notify,
    release: tokio::sync::Notify,
    transfers: std::sync::atomic::AtomicUsize,
}

impl HoldBeforeVisible {
    /// Holds the next sync that reaches the visibility check.
    pub fn arm(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Waits until the armed sync is held.
    pub async fn reached(&self) {
        self.reached.notified().await;
    }

    /// Lets the held sync go on.
    pub fn release(&self) {
        self.release.notify_one();
    }

    /// How many times a strategy was asked to transfer a resource.
    pub fn transfers(&self) -> usize {
        self.transfers.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl SyncObserver for HoldBeforeVisible {
    async fn before_transfer(&self, _: &str, _: i64) {
        self.transfers
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    async fn before_visible(&self, _: &str, _: i64) {
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.reached.notify_one();
            self.release.notified().await;
        }
    }
}

impl<M: Replicable> Harness<M> {
    /// Sites on in-memory stores, in-memory object stores, and temporary repository roots.
    pub fn in_memory(factory: impl Fn(i64) -> M + Send + Sync + 'static) -> Self {
        Self::in_memory_linked(factory, |primary| {
            Arc::new(InProcessPrimary::new(primary.clone()))
        })
    }

    /// [`Harness::in_memory`], with the secondaries reading the primary over the HTTP link: the
    /// primary's API served on a loopback port of the current tokio runtime, and
    /// [`HttpPrimary`](crate::link::http::HttpPrimary) with a secret made for the run (feature
    /// `http`). Call it inside a runtime.
    #[cfg(feature = "http")]
    pub fn over_http(factory: impl Fn(i64) -> M + Send + Sync + 'static) -> Self {
        use crate::link::http::token::SharedSecret;
        use crate::link::http::{HttpPrimary, HttpPrimaryConfig};
        Self::in_memory_linked(factory, |primary| {
            let secret: Vec<u8> = (0..32).map(|_| fastrand::alphanumeric() as u8).collect();
            let secret = SharedSecret::new(secret, "the harness").expect("32 bytes");
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
            listener
                .set_nonblocking(true)
                .expect("a non-blocking socket");
            let listener =
                tokio::net::TcpListener::from_std(listener).expect("inside a tokio runtime");
            let router = crate::http::PrimaryApi::new(primary.clone())
                .secondary("secondary", secret.clone())
                .router();
            let server = crate::http::serve_on(listener, router, None).expect("serving the API");
            let url = format!("http://{}/", server.local_addr());
            // The server runs as long as the runtime.
            std::mem::forget(server);
            let link = HttpPrimary::new(HttpPrimaryConfig::new(url, "secondary", secret))
                .expect("an HTTP link");
            Arc::new(link)
        })
    }

    fn in_memory_linked(
        factory: impl Fn(i64) -> M + Send + Sync + 'static,
        make_link: impl FnOnce(&Site) -> Arc<dyn crate::link::PrimaryLink>,
    ) -> Self {
        let dir = |label: &str| {
            tempfile::Builder::new()
                .prefix(&format!("replicable-{label}-"))
                .tempdir()
                .expect("a temporary directory")
        };
        let primary_dir = dir("primary");
        let primary = Site::primary("primary")
            .repository_root(primary_dir.path())
            .in_memory()
            .build()
            .expect("an in-memory site");
        let link = make_link(&primary);
        let secondary_dir = dir("secondary");
        let secondary = Site::secondary("secondary", link.clone())
            .repository_root(secondary_dir.path())
            .in_memory()
            .build()
            .expect("an in-memory site");
        let secondary_root = secondary_dir.path().to_path_buf();
        let make_secondary =
            move |scope: SelectiveSync, observer: Option<Arc<dyn SyncObserver>>| {
                let root = secondary_root.join(format!("scoped-{}", fastrand::u64(..)));
                let builder = Site::secondary("secondary", link.clone())
                    .repository_root(root)
                    .selective_sync(scope);
                match observer {
                    Some(observer) => builder.sync_observer(observer),
                    None => builder,
                }
                .in_memory()
                .build()
                .expect("an in-memory site")
            };
        Self {
            primary,
            secondary,
            factory: Arc::new(factory),
            make_secondary: Arc::new(make_secondary),
            _dirs: Arc::new(vec![primary_dir, secondary_dir]),
        }
    }

    /// Sites the caller built (durable backends, other object stores). `make_secondary` builds a
    /// further secondary of the same primary with a given selective sync.
    pub fn with_sites(
        primary: Site,
        secondary: Site,
        make_secondary: impl Fn(SiteBuilder) -> Site + Send + Sync + 'static,
        factory: impl Fn(i64) -> M + Send + Sync + 'static,
    ) -> Self {
        let link = Arc::new(InProcessPrimary::new(primary.clone()));
        Self {
            primary,
            secondary,
            factory: Arc::new(factory),
            make_secondary: Arc::new(move |scope, observer| {
                let builder = Site::secondary("secondary", link.clone()).selective_sync(scope);
                make_secondary(match observer {
                    Some(observer) => builder.sync_observer(observer),
                    None => builder,
                })
            }),
            _dirs: Arc::new(Vec::new()),
        }
    }

    /// Keeps `dir` alive as long as the harness (directories the sites live in).
    pub fn holding(mut self, dir: tempfile::TempDir) -> Self {
        let mut dirs = Arc::try_unwrap(self._dirs).unwrap_or_else(|_| Vec::new());
        dirs.push(dir);
        self._dirs = Arc::new(dirs);
        self
    }

    /// The record the factory makes for `id` (nothing is written).
    pub fn build(&self, id: i64) -> M {
        (self.factory)(id)
    }

    /// Makes the record's resource on the primary (the app's write), from seed `id`. Nothing
    /// is published.
    pub async fn create(&self, id: i64) -> Fixture<M> {
        self.change(id, id as u64).await
    }

    /// Changes the record's resource on the primary (a new fixture from `seed`), as a write of
    /// the app would. Nothing is published.
    pub async fn change(&self, id: i64, seed: u64) -> Fixture<M> {
        let record = self.build(id);
        let resource = record.resource();
        let body = serde_json::to_value(&record).expect("records serialize");
        let target = crate::replicator::ReplicationTarget::<M>::new(&self.primary, id);
        let checksum = M::Strategy::default()
            .create_fixture(
                self.primary.strategy_context(),
                &target.resource_target(&resource),
                &body,
                seed,
            )
            .await
            .unwrap_or_else(|e| panic!("changing the fixture of {} {id}: {e}", M::REPLICABLE_NAME));
        // A model read from the application's own table: the app's write is the row.
        if let Some(source) = self.primary.record_source(M::REPLICABLE_NAME) {
            source
                .write(id, &body)
                .await
                .unwrap_or_else(|e| panic!("writing the row of {} {id}: {e}", M::REPLICABLE_NAME));
        }
        Fixture { record, checksum }
    }

    /// Deletes the record's row on the primary as the application would, when `M` has a record
    /// source there (its own table); for a model in the catalogue it does nothing, since
    /// publishing `deleted` removes the catalogue's row.
    pub async fn delete_row(&self, id: i64) {
        if let Some(source) = self.primary.record_source(M::REPLICABLE_NAME) {
            source
                .delete(id)
                .await
                .unwrap_or_else(|e| panic!("deleting the row of {} {id}: {e}", M::REPLICABLE_NAME));
        }
    }

    /// Makes the record's resource on the primary and publishes `created`.
    pub async fn create_and_publish(&self, id: i64) -> (Fixture<M>, EventId) {
        let fixture = self.create(id).await;
        let event = fixture
            .record
            .replicator(&self.primary)
            .publish_created_event()
            .await
            .expect("publishing created")
            .expect("the primary publishes");
        (fixture, event)
    }

    /// A further secondary of the same primary, with its own stores and a selective sync.
    pub fn secondary_with_scope(&self, scope: SelectiveSync) -> Site {
        (self.make_secondary)(scope, None)
    }

    /// A further secondary of the same primary, with its own stores, whose syncs `observer`
    /// watches (and may hold).
    pub fn secondary_observed(&self, observer: Arc<dyn SyncObserver>) -> Site {
        (self.make_secondary)(SelectiveSync::all(), Some(observer))
    }

    /// Changes the record's resource on the primary from `seed` and publishes the change:
    /// `updated` for a mutable data type, `created` again for an immutable one (new bytes under
    /// the same key).
    pub async fn change_and_publish(&self, id: i64, seed: u64) -> Fixture<M> {
        let fixture = self.change(id, seed).await;
        let replicator = fixture.record.replicator(&self.primary);
        let published = if M::Strategy::MUTABLE {
            replicator.publish_updated_event().await
        } else {
            replicator.publish_created_event().await
        };
        published
            .expect("publishing the change")
            .expect("the primary publishes");
        fixture
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl<M: Replicable> Harness<M> {
    /// Sites on SQLite files in a temporary directory where the records of `M` live in the
    /// application's own table rather than the catalogue: see [`Harness::with_own_table`].
    /// Call it inside a multi-threaded runtime (the suite's tests are).
    ///
    /// ```ignore
    /// replicable_core::replicator_test_suite!(own_table: Note, note, harness = |f| {
    ///     Harness::in_own_table("CREATE TABLE notes (id BIGINT PRIMARY KEY, title TEXT)", "notes", "id", f)
    /// });
    /// ```
    #[cfg(feature = "sqlite")]
    pub fn in_own_table(
        create_table: &str,
        table: &str,
        id_column: &str,
        factory: impl Fn(i64) -> M + Send + Sync + 'static,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("replicable-own-table-")
            .tempdir()
            .expect("a temporary directory");
        let root = dir.path().to_path_buf();
        let counter = std::sync::atomic::AtomicU64::new(0);
        let databases = move || {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let url = format!("sqlite://{}", root.join(format!("site-{n}.db")).display());
            async move {
                crate::storage::sql::SqlStore::open(&url)
                    .await
                    .expect("a SQLite site database")
            }
        };
        Self::with_own_table(databases, create_table, table, id_column, factory).holding(dir)
    }

    /// Sites where the records of `M` live in the application's own table rather than the
    /// catalogue: `databases` opens a fresh empty database for each site (the primary, the
    /// secondary, and each further secondary), where the table `table` (keyed by `id_column`) is
    /// made with the statement `create_table`, and a
    /// [`SqlTable`](crate::storage::sql::SqlTable) over it is the record source of `M`. The
    /// primary reads it ([`Harness::create`] writes the row, as the application would), the
    /// secondaries write their copies into it. Call it inside a multi-threaded runtime.
    pub fn with_own_table<F, Fut>(
        databases: F,
        create_table: &str,
        table: &str,
        id_column: &str,
        factory: impl Fn(i64) -> M + Send + Sync + 'static,
    ) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Arc<crate::storage::sql::SqlStore>>,
    {
        use crate::storage::sql::SqlTable;
        use sqlx::Executor;

        fn block<F: std::future::Future>(f: F) -> F::Output {
            tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
        }
        let (create_table, table, id_column) = (
            create_table.to_owned(),
            table.to_owned(),
            id_column.to_owned(),
        );
        let open = move || {
            block(async {
                let store = databases().await;
                store
                    .pool()
                    .execute(sqlx::AssertSqlSafe(create_table.clone()))
                    .await
                    .expect("creating the application's table");
                let source = SqlTable::new(&store, M::REPLICABLE_NAME, &table, &id_column)
                    .expect("the application's table");
                (store, source)
            })
        };
        let (store, source) = open();
        let primary = Site::primary("primary")
            .database(store)
            .record_source(M::REPLICABLE_NAME, source)
            .build()
            .expect("a site");
        let (store, source) = open();
        let secondary = Site::secondary(
            "secondary",
            Arc::new(InProcessPrimary::new(primary.clone())),
        )
        .database(store)
        .record_source(M::REPLICABLE_NAME, source)
        .build()
        .expect("a site");
        Self::with_sites(
            primary,
            secondary,
            move |builder| {
                let (store, source) = open();
                builder
                    .database(store)
                    .record_source(M::REPLICABLE_NAME, source)
                    .build()
                    .expect("a site")
            },
            factory,
        )
    }
}
