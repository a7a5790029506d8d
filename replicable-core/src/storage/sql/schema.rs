//! The schema the framework manages: versioned migrations of the shared tables, and the tables
//! of each replicable (`<name>_registry`, `<name>_verification`, `<name>_records`,
//! `<name>_generations`, `<name>_counts`), created on
//! first write, by `RegistryStore::create_tables` (the engine, for its list), or at open for the
//! names in `SqlOptions::replicables`.

use super::Dialect;

/// The newest version of the shared tables this build knows.
pub const CORE_VERSION: i64 = 4;

/// The newest version of a replicable's tables this build knows.
pub const REPLICABLE_VERSION: i64 = 6;

/// The component name of the shared tables in `replicable_schema`.
pub const CORE_COMPONENT: &str = "core";

/// The component name of a replicable's tables in `replicable_schema`.
pub fn replicable_component(name: &str) -> String {
    format!("replicable:{name}")
}

/// Creates the version table itself (idempotent, outside any migration).
pub const SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS replicable_schema (\
    component TEXT PRIMARY KEY, \
    version BIGINT NOT NULL)";

/// The statements that bring the shared tables from `from` to [`CORE_VERSION`].
pub fn core_migrations(dialect: Dialect, from: i64) -> Vec<String> {
    let mut steps = Vec::new();
    if from < 1 {
        let event_id = match dialect {
            Dialect::Sqlite => "id INTEGER PRIMARY KEY AUTOINCREMENT",
            Dialect::Postgres => "id BIGSERIAL PRIMARY KEY",
        };
        steps.push(format!(
            "CREATE TABLE replicable_events ({event_id}, \
             replicable_name TEXT NOT NULL, \
             event_name TEXT NOT NULL, \
             payload TEXT NOT NULL, \
             created_at BIGINT NOT NULL)"
        ));
        steps.push(
            "CREATE TABLE replicable_cursor (\
             id SMALLINT PRIMARY KEY, \
             last_event_id BIGINT NOT NULL)"
                .into(),
        );
        steps.push(
            "CREATE TABLE replicable_skipped_events (\
             event_id BIGINT PRIMARY KEY, \
             replicable_name TEXT NOT NULL, \
             event_name TEXT NOT NULL, \
             reason TEXT NOT NULL, \
             skipped_at BIGINT NOT NULL)"
                .into(),
        );
        steps.push(
            "CREATE TABLE replicable_leases (\
             name TEXT PRIMARY KEY, \
             holder TEXT NOT NULL, \
             expires_at BIGINT NOT NULL)"
                .into(),
        );
    }
    if from < 2 {
        // Settings of each replicable on this site: the persisted replication switch.
        steps.push(
            "CREATE TABLE replicable_settings (\
             replicable_name TEXT PRIMARY KEY, \
             replication_enabled SMALLINT NOT NULL DEFAULT 1)"
                .into(),
        );
    }
    if from < 3 {
        // The primary's record of its secondaries: the last status report of each.
        steps.push(
            "CREATE TABLE replicable_secondary_status (\
             secondary TEXT PRIMARY KEY, \
             cursor BIGINT, \
             report TEXT NOT NULL, \
             received_at BIGINT NOT NULL)"
                .into(),
        );
    }
    if from < 4 {
        // The log cursor's open id gaps (JSON), saved with its position.
        steps.push("ALTER TABLE replicable_cursor ADD COLUMN gaps TEXT".into());
    }
    steps
}

/// The statements that bring replicable `name`'s tables from version `from` to version `to`
/// ([`REPLICABLE_VERSION`] when a store opens them; an older `to` builds the tables an earlier
/// release made, for upgrade tests). `name` must have passed [`valid_name`]. `qualifier`
/// qualifies the framework's tables inside PostgreSQL trigger functions: `"schema."` when the
/// store keeps its tables in a schema of its own (`SqlOptions::schema`), else empty.
pub fn replicable_migrations(
    dialect: Dialect,
    name: &str,
    qualifier: &str,
    from: i64,
    to: i64,
) -> Vec<String> {
    let mut steps = Vec::new();
    let step = |version: i64| from < version && version <= to;
    if step(1) {
        let verification_columns = "verification_state SMALLINT NOT NULL DEFAULT 0, \
             verification_checksum TEXT, \
             verified_at BIGINT, \
             verification_started_at BIGINT, \
             verification_retry_at BIGINT, \
             verification_retry_count BIGINT NOT NULL DEFAULT 0, \
             verification_failure TEXT, \
             checksum_mismatch SMALLINT NOT NULL DEFAULT 0, \
             verification_checksum_mismatched TEXT, \
             heartbeat_at BIGINT, \
             version BIGINT NOT NULL DEFAULT 0";
        steps.push(format!(
            "CREATE TABLE {name}_registry (\
             {name}_id BIGINT PRIMARY KEY, \
             state SMALLINT NOT NULL DEFAULT 0, \
             retry_count BIGINT NOT NULL DEFAULT 0, \
             retry_at BIGINT, \
             last_sync_failure TEXT, \
             last_synced_at BIGINT, \
             created_at BIGINT NOT NULL, \
             missing_on_primary SMALLINT NOT NULL DEFAULT 0, \
             synced_generation BIGINT, \
             {verification_columns})"
        ));
        // Scheduling: due syncs by state and retry time; due verifications among synced rows;
        // stuck work among started rows; the failure list operators look at.
        steps.push(format!(
            "CREATE INDEX {name}_registry_sync_due ON {name}_registry (state, retry_at)"
        ));
        steps.push(format!(
            "CREATE INDEX {name}_registry_verification_due ON {name}_registry \
             (verification_state, verification_retry_at) WHERE state = 2"
        ));
        steps.push(format!(
            "CREATE INDEX {name}_registry_started ON {name}_registry (heartbeat_at) \
             WHERE state = 1 OR verification_state = 1"
        ));
        steps.push(format!(
            "CREATE INDEX {name}_registry_failures ON {name}_registry (retry_at) \
             WHERE state = 3"
        ));
        steps.push(format!(
            "CREATE TABLE {name}_verification (\
             {name}_id BIGINT PRIMARY KEY, \
             {verification_columns})"
        ));
        steps.push(format!(
            "CREATE INDEX {name}_verification_due ON {name}_verification \
             (verification_state, verification_retry_at)"
        ));
        steps.push(format!(
            "CREATE INDEX {name}_verification_failures ON {name}_verification \
             (verification_failure) WHERE verification_failure IS NOT NULL"
        ));
        steps.push(format!(
            "CREATE TABLE {name}_records (\
             {name}_id BIGINT PRIMARY KEY, \
             generation BIGINT NOT NULL, \
             body TEXT NOT NULL)"
        ));
    }
    if step(2) {
        // A change (or a resync, or a deletion) that arrived while the row's sync was running:
        // the sync in flight may not make its copy visible, and the row goes pending after it.
        steps.push(format!(
            "ALTER TABLE {name}_registry ADD COLUMN change_pending SMALLINT NOT NULL DEFAULT 0"
        ));
    }
    if step(3) {
        // When the primary published the oldest change the copy does not hold (microseconds),
        // for the replication lag.
        steps.push(format!(
            "ALTER TABLE {name}_registry ADD COLUMN changed_at BIGINT"
        ));
    }
    if step(4) {
        // The generation of each record read from (or copied into) a user's own table
        // (`SqlTable`): the primary's publish bumps it in the application's transaction, a
        // secondary's copy notes the generation it holds. A row without one is generation 0.
        steps.push(format!(
            "CREATE TABLE {name}_generations (\
             {name}_id BIGINT PRIMARY KEY, \
             generation BIGINT NOT NULL)"
        ));
    }
    if step(5) {
        // Counts kept as rows change (status and metrics read them instead of scanning).
        steps.extend(super::counts::migration(dialect, name, qualifier));
    }
    if step(6) {
        // The claims' scheduling orders over the due rows only, so that a claim walks an index
        // and stops at its limit rather than sorting every due row. (PostgreSQL sorts NULLs
        // last unless told; SQLite sorts them first and takes no NULLS clause in an index.)
        let nulls_first = match dialect {
            Dialect::Postgres => " NULLS FIRST",
            Dialect::Sqlite => "",
        };
        steps.push(format!(
            "CREATE INDEX {name}_registry_sync_order ON {name}_registry \
             (({}), retry_at{nulls_first}, {name}_id) WHERE state IN (0, 3)",
            super::registry::SYNC_ORDER_KEY
        ));
        steps.push(format!(
            "CREATE INDEX {name}_registry_verification_order ON {name}_registry \
             (verified_at{nulls_first}, {name}_id) WHERE state = 2 AND verification_state IN (0, 3)"
        ));
        steps.push(format!(
            "CREATE INDEX {name}_verification_order ON {name}_verification \
             (verified_at{nulls_first}, {name}_id) WHERE verification_state IN (0, 3)"
        ));
    }
    steps
}

/// Whether `name` can be spliced into table names: what the derive accepts.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 48
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_table_safe_names_are_valid() {
        assert!(valid_name("package_file"));
        assert!(valid_name("lfs2_object"));
        for bad in [
            "",
            "1a",
            "a-b",
            "a;drop table x",
            "A",
            "a b",
            &"a".repeat(49),
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn migrations_are_empty_when_up_to_date() {
        assert!(core_migrations(Dialect::Sqlite, CORE_VERSION).is_empty());
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            assert!(
                replicable_migrations(dialect, "x", "", REPLICABLE_VERSION, REPLICABLE_VERSION)
                    .is_empty()
            );
            // Each version's steps, run one after the other, are the steps of all of them.
            let mut stepwise = Vec::new();
            for version in 0..REPLICABLE_VERSION {
                stepwise.extend(replicable_migrations(
                    dialect,
                    "x",
                    "",
                    version,
                    version + 1,
                ));
            }
            assert_eq!(
                stepwise,
                replicable_migrations(dialect, "x", "", 0, REPLICABLE_VERSION)
            );
        }
        assert_eq!(core_migrations(Dialect::Postgres, 0).len(), 7);
    }
}
