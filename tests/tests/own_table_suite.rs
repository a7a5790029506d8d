//! The shared replicator suite for a model whose records live in the application's own table
//! (a `SqlTable` record source on every site), on SQLite files and PostgreSQL schemas.

use replicable_core::prelude::*;
use replicable_core::testing::Harness;
use replicable_strategies::DatabaseStrategy;
use replicable_tests::PostgresTarget;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Replicable)]
#[replicator(DatabaseStrategy)]
pub struct Bookmark {
    #[replicable(id)]
    pub id: i64,
    pub url: String,
    pub starred: bool,
}

fn bookmark(id: i64) -> Bookmark {
    Bookmark {
        id,
        url: format!("https://example.test/{id}"),
        starred: id % 2 == 0,
    }
}

const CREATE_TABLE: &str = "CREATE TABLE bookmarks (id BIGINT PRIMARY KEY, url TEXT NOT NULL, \
                            starred BOOLEAN NOT NULL)";

replicable_core::replicator_test_suite!(own_table: Bookmark, bookmark, harness = |f| {
    Harness::in_own_table(CREATE_TABLE, "bookmarks", "id", f)
});

fn postgres_sites(factory: fn(i64) -> Bookmark) -> Option<Harness<Bookmark>> {
    PostgresTarget::new()?;
    Some(Harness::with_own_table(
        || async {
            PostgresTarget::new()
                .expect("the lane is set up")
                .open()
                .await
        },
        CREATE_TABLE,
        "bookmarks",
        "id",
        factory,
    ))
}

replicable_core::replicator_test_suite!(own_table_on_postgres: Bookmark, bookmark, harness = postgres_sites);
