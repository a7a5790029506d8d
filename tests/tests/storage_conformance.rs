//! The storage conformance suite against every backend: in-memory, SQLite, PostgreSQL.

use replicable_core::testing::storage::MemoryTarget;
use replicable_tests::{PostgresTarget, SqliteTarget};

replicable_core::storage_conformance_suite!(memory, || async { Some(MemoryTarget::default()) });
replicable_core::storage_conformance_suite!(sqlite, || async { Some(SqliteTarget::new()) });
replicable_core::storage_conformance_suite!(postgres, || async { PostgresTarget::new() });
