//! A primary and a secondary wired together in one process, with a model factory.

use std::sync::Arc;

use crate::event::EventId;
use crate::model::Replicable;
use crate::primary_link::InProcessPrimary;
use crate::selective_sync::SelectiveSync;
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

/// A primary and a secondary reading it in process.
pub struct Harness<M: Replicable> {
    /// The primary site.
    pub primary: Site,
    /// The secondary site.
    pub secondary: Site,
    factory: Factory<M>,
    make_secondary: Arc<dyn Fn(SelectiveSync) -> Site + Send + Sync>,
    _dirs: Arc<Vec<tempfile::TempDir>>,
}

impl<M: Replicable> Harness<M> {
    /// Sites on in-memory stores, in-memory object stores, and temporary repository roots.
    pub fn in_memory(factory: impl Fn(i64) -> M + Send + Sync + 'static) -> Self {
        let dir = |label: &str| {
            tempfile::Builder::new()
                .prefix(&format!("replicable-{label}-"))
                .tempdir()
                .expect("a temporary directory")
        };
        let primary_dir = dir("primary");
        let primary = Site::primary("primary")
            .repository_root(primary_dir.path())
            .build();
        let link = Arc::new(InProcessPrimary::new(primary.clone()));
        let secondary_dir = dir("secondary");
        let secondary_root = secondary_dir.path().to_path_buf();
        let make_secondary = move |scope: SelectiveSync| {
            let root = secondary_root.join(format!("scoped-{}", fastrand::u64(..)));
            Site::secondary("secondary", link.clone())
                .repository_root(root)
                .selective_sync(scope)
                .build()
        };
        let secondary = Site::secondary(
            "secondary",
            Arc::new(InProcessPrimary::new(primary.clone())),
        )
        .repository_root(secondary_dir.path())
        .build();
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
            make_secondary: Arc::new(move |scope| {
                make_secondary(Site::secondary("secondary", link.clone()).selective_sync(scope))
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
                &self.primary,
                &target.resource_target(&resource),
                &body,
                seed,
            )
            .await
            .unwrap_or_else(|e| panic!("changing the fixture of {} {id}: {e}", M::REPLICABLE_NAME));
        Fixture { record, checksum }
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
        (self.make_secondary)(scope)
    }
}
