//! Counts kept as rows change: the table `<name>_counts` of each replicable and the triggers
//! that keep it, so that status and metrics read a few rows instead of scanning registries.
//!
//! # How the counts stay exact
//! Triggers on `<name>_registry`, `<name>_verification` and `<name>_records` add each change to
//! the counters in the same transaction as the change, whoever writes it (the framework's own
//! statements, a publish in the application's transaction, an operator's SQL): a counter is
//! always the count of its rows as of the reader's snapshot, never an estimate. The migration
//! that creates the table seeds it with a one-time count, under a lock that keeps writers out
//! until the triggers are in place.
//!
//! # SQLite
//! One row (`slot = 0`), updated by a row-level trigger per changed row: SQLite has one writer
//! at a time, so a single row costs no concurrency. Updates that leave the counted columns as
//! they were (heartbeats, retry times, checksums) do not fire the triggers.
//!
//! # PostgreSQL
//! Many workers write at once, so no row may be one that every transaction locks. Each database
//! session adds its changes to its own row (`slot = pg_backend_pid()`), and a reader sums the
//! rows. Two transactions running at the same time are on different sessions, hence different
//! rows: counting makes no transaction wait for another, and cannot add a deadlock. (Rows keyed
//! by `model_id % 16` would not do: one claim of a hundred rows touches all sixteen, and two
//! claims locking them in different orders deadlock.) The triggers are statement-level with
//! transition tables, so a statement that changes a thousand rows updates the session's row
//! once, and one that changes no counted column does not touch it. Sessions come and go, so a
//! reader that finds many rows folds the unlocked ones into `slot = 0` (see
//! [`SqlStore::fold_counts`]). `TRUNCATE` of a counted table resets its counters.
//!
//! What is counted is the same as the grouped counts the stores used to run: see
//! [`REGISTRY`], [`VERIFICATION`] and [`RECORDS`].

use sqlx::AssertSqlSafe;
use sqlx::any::AnyRow;
use tracing::debug;

use super::{Dialect, SqlStore, Tables};
use crate::domain::error::StoreError;

/// One table whose rows are counted: its suffix (`<name>_<table>`), a short tag for trigger and
/// function names, the columns whose change can move a row from one counter to another, and
/// the counters: a column of `<name>_counts` and the condition on a row (`R.` stands for the
/// row) that it counts.
pub(super) struct Counted {
    pub table: &'static str,
    tag: &'static str,
    watched: &'static [&'static str],
    pub counters: &'static [(&'static str, &'static str)],
}

/// A secondary's registry rows, as [`crate::storage::RegistryCounts`] reports them.
pub(super) const REGISTRY: Counted = Counted {
    table: "registry",
    tag: "reg",
    watched: &["state", "verification_state", "checksum_mismatch"],
    counters: &[
        ("registry_rows", "1 = 1"),
        ("registry_pending", "R.state = 0"),
        ("registry_started", "R.state = 1"),
        ("registry_synced", "R.state = 2"),
        ("registry_failed", "R.state = 3"),
        (
            "registry_verification_total",
            "R.state = 2 AND R.verification_state <> 4",
        ),
        ("registry_verified", "R.verification_state = 2"),
        ("registry_verification_failed", "R.verification_state = 3"),
        ("registry_checksum_mismatch", "R.checksum_mismatch <> 0"),
    ],
};

/// The primary's verification rows, as [`crate::storage::VerificationCounts`] reports them.
pub(super) const VERIFICATION: Counted = Counted {
    table: "verification",
    tag: "ver",
    watched: &["verification_state"],
    counters: &[
        ("verification_rows", "1 = 1"),
        ("verification_succeeded", "R.verification_state = 2"),
        ("verification_failed", "R.verification_state = 3"),
    ],
};

/// The catalogue's records (the primary's, or a secondary's copies).
pub(super) const RECORDS: Counted = Counted {
    table: "records",
    tag: "rec",
    watched: &[],
    counters: &[("records", "1 = 1")],
};

const COUNTED: [&Counted; 3] = [&REGISTRY, &VERIFICATION, &RECORDS];

/// PostgreSQL: a reader that finds more rows than this in `<name>_counts` folds them.
pub(super) const FOLD_ABOVE: i64 = 64;

/// `condition` about the row `row` (`NEW`, `OLD`, or `""` for a bare column).
fn about(condition: &str, row: &str) -> String {
    if row.is_empty() {
        condition.replace("R.", "")
    } else {
        condition.replace("R.", &format!("{row}."))
    }
}

/// `1` when `condition` holds for `row`, else `0`.
fn one_if(condition: &str, row: &str) -> String {
    format!("(CASE WHEN {} THEN 1 ELSE 0 END)", about(condition, row))
}

/// The statements that create `<n>_counts`, seed it from a one-time count of the existing
/// rows, and install the triggers that keep it. `q` qualifies the framework's tables inside
/// PostgreSQL trigger functions (`"schema."`, or empty where the search path finds them), so
/// that a change written on the application's connection, whose search path is its own, is
/// counted too.
pub(super) fn migration(dialect: Dialect, n: &str, q: &str) -> Vec<String> {
    let columns: Vec<&str> = COUNTED
        .iter()
        .flat_map(|c| c.counters.iter().map(|(column, _)| *column))
        .collect();
    let mut steps = vec![format!(
        "CREATE TABLE {n}_counts (slot INTEGER PRIMARY KEY, {})",
        columns
            .iter()
            .map(|c| format!("{c} BIGINT NOT NULL DEFAULT 0"))
            .collect::<Vec<_>>()
            .join(", ")
    )];
    if dialect == Dialect::Postgres {
        // No writer may change a counted table between the count below and the triggers'
        // creation (SQLite's migration holds the one write lock already).
        steps.push(format!(
            "LOCK TABLE {n}_registry, {n}_verification, {n}_records IN SHARE ROW EXCLUSIVE MODE"
        ));
    }
    let seeds: Vec<String> = COUNTED
        .iter()
        .map(|c| {
            let sums = c
                .counters
                .iter()
                .map(|(column, condition)| {
                    format!("COALESCE(SUM({}), 0) AS {column}", one_if(condition, ""))
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!("(SELECT {sums} FROM {n}_{}) {}", c.table, c.tag)
        })
        .collect();
    steps.push(format!(
        "INSERT INTO {n}_counts (slot, {}) SELECT 0, {} FROM {}",
        columns.join(", "),
        columns.join(", "),
        seeds.join(", ")
    ));
    for counted in COUNTED {
        match dialect {
            Dialect::Sqlite => steps.extend(sqlite_triggers(n, counted)),
            Dialect::Postgres => steps.extend(postgres_triggers(n, q, counted)),
        }
    }
    steps
}

/// SQLite: row-level triggers adding each inserted, deleted or recounted row to `slot = 0`.
fn sqlite_triggers(n: &str, c: &Counted) -> Vec<String> {
    let (table, tag) = (c.table, c.tag);
    let set = |rows: &[(&str, &str)]| {
        c.counters
            .iter()
            .map(|(column, condition)| {
                let delta = rows
                    .iter()
                    .map(|(sign, row)| format!(" {sign} {}", one_if(condition, row)))
                    .collect::<String>();
                format!("{column} = {column}{delta}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut steps = vec![
        format!(
            "CREATE TRIGGER {n}_counts_{tag}_ins AFTER INSERT ON {n}_{table} BEGIN \
             UPDATE {n}_counts SET {} WHERE slot = 0; END",
            set(&[("+", "NEW")])
        ),
        format!(
            "CREATE TRIGGER {n}_counts_{tag}_del AFTER DELETE ON {n}_{table} BEGIN \
             UPDATE {n}_counts SET {} WHERE slot = 0; END",
            set(&[("-", "OLD")])
        ),
    ];
    if !c.watched.is_empty() {
        let changed = c
            .watched
            .iter()
            .map(|w| format!("OLD.{w} IS NOT NEW.{w}"))
            .collect::<Vec<_>>()
            .join(" OR ");
        steps.push(format!(
            "CREATE TRIGGER {n}_counts_{tag}_upd AFTER UPDATE OF {} ON {n}_{table} \
             WHEN {changed} BEGIN UPDATE {n}_counts SET {} WHERE slot = 0; END",
            c.watched.join(", "),
            set(&[("+", "NEW"), ("-", "OLD")])
        ));
    }
    steps
}

/// PostgreSQL: a function adding a statement's changed rows (its transition tables) to the
/// session's row, and the statement-level triggers that call it.
fn postgres_triggers(n: &str, q: &str, c: &Counted) -> Vec<String> {
    let (table, tag) = (c.table, c.tag);
    let columns: Vec<&str> = c.counters.iter().map(|(column, _)| *column).collect();
    // Adds the rows of `rows` (each with its `sign`) to the session's row, unless no counter
    // moves (an update of columns that are not counted).
    let add = |rows: &str| {
        let sums = c
            .counters
            .iter()
            .map(|(column, condition)| {
                format!(
                    "COALESCE(SUM(CASE WHEN {} THEN sign ELSE 0 END), 0) AS {column}",
                    about(condition, "")
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let moved = columns
            .iter()
            .map(|c| format!("d.{c} <> 0"))
            .collect::<Vec<_>>()
            .join(" OR ");
        let added = columns
            .iter()
            .map(|c| format!("{c} = c.{c} + excluded.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "INSERT INTO {q}{n}_counts AS c (slot, {list}) \
             SELECT pg_backend_pid(), {list} FROM (SELECT {sums} FROM ({rows}) x) d \
             WHERE {moved} \
             ON CONFLICT (slot) DO UPDATE SET {added};",
            list = columns.join(", "),
        )
    };
    let reset = columns
        .iter()
        .map(|c| format!("{c} = 0"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut steps = vec![format!(
        "CREATE OR REPLACE FUNCTION {q}{n}_counts_{tag}() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
           IF TG_OP = 'INSERT' THEN {} \
           ELSIF TG_OP = 'DELETE' THEN {} \
           ELSIF TG_OP = 'UPDATE' THEN {} \
           ELSE UPDATE {q}{n}_counts SET {reset}; \
           END IF; \
           RETURN NULL; \
         END $$",
        add("SELECT 1 AS sign, * FROM new_rows"),
        add("SELECT -1 AS sign, * FROM old_rows"),
        add("SELECT 1 AS sign, * FROM new_rows UNION ALL SELECT -1 AS sign, * FROM old_rows"),
    )];
    let trigger = |op: &str, event: &str, referencing: &str| {
        format!(
            "CREATE TRIGGER {n}_counts_{tag}_{op} AFTER {event} ON {n}_{table} {referencing} \
             FOR EACH STATEMENT EXECUTE FUNCTION {q}{n}_counts_{tag}()"
        )
    };
    steps.push(trigger(
        "ins",
        "INSERT",
        "REFERENCING NEW TABLE AS new_rows",
    ));
    steps.push(trigger(
        "del",
        "DELETE",
        "REFERENCING OLD TABLE AS old_rows",
    ));
    if !c.watched.is_empty() {
        steps.push(trigger(
            "upd",
            "UPDATE",
            "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
        ));
    }
    // TRUNCATE removes every row without firing the delete triggers.
    steps.push(trigger("trn", "TRUNCATE", ""));
    steps
}

/// Sums every counter of `<n>_counts` over its rows, with the number of rows (`slots`).
pub(super) fn read_sql(n: &str) -> String {
    let sums = COUNTED
        .iter()
        .flat_map(|c| c.counters.iter())
        .map(|(column, _)| format!("CAST(COALESCE(SUM({column}), 0) AS BIGINT) AS {column}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("SELECT COUNT(*) AS slots, {sums} FROM {n}_counts")
}

/// PostgreSQL: moves the rows of sessions not in a transaction that counts (the rows no one
/// holds locked) into `slot = 0`, in one statement. A session whose row was folded starts a new
/// one at its next change. The sums are the same before and after, in every snapshot.
pub(super) fn fold_sql(n: &str) -> String {
    let columns: Vec<&str> = COUNTED
        .iter()
        .flat_map(|c| c.counters.iter().map(|(column, _)| *column))
        .collect();
    format!(
        "WITH folded AS (DELETE FROM {n}_counts WHERE slot IN \
           (SELECT slot FROM {n}_counts WHERE slot <> 0 FOR UPDATE SKIP LOCKED) \
           RETURNING *) \
         INSERT INTO {n}_counts AS c (slot, {}) SELECT 0, {} FROM folded \
         ON CONFLICT (slot) DO UPDATE SET {}",
        columns.join(", "),
        columns
            .iter()
            .map(|c| format!("COALESCE(SUM({c}), 0)"))
            .collect::<Vec<_>>()
            .join(", "),
        columns
            .iter()
            .map(|c| format!("{c} = c.{c} + excluded.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

impl SqlStore {
    /// The prefix that qualifies the framework's tables from any connection (the counts'
    /// triggers, a publish on the application's connection, whose search path is the
    /// application's): `"schema."` when the store keeps them in a PostgreSQL schema of its own.
    pub(super) fn framework_prefix(&self) -> String {
        match (&self.schema, self.dialect) {
            (Some(schema), Dialect::Postgres) => format!("{schema}."),
            _ => String::new(),
        }
    }

    /// Every counter of replicable `t`, summed: one row with a column per counter (see
    /// [`REGISTRY`], [`VERIFICATION`], [`RECORDS`]). On PostgreSQL a table with more than
    /// [`FOLD_ABOVE`] rows is folded afterwards.
    pub(super) async fn counters(&self, t: &Tables) -> Result<AnyRow, StoreError> {
        let row = sqlx::query(AssertSqlSafe(read_sql(&t.name)))
            .fetch_one(&mut *self.reader().await?)
            .await
            .map_err(self.backend("read counts"))?;
        if self.dialect == Dialect::Postgres && self.get::<i64>(&row, "slots")? > FOLD_ABOVE {
            self.fold_counts(t).await;
        }
        Ok(row)
    }

    /// One counter of a row read by [`counters`](Self::counters).
    pub(super) fn counter(&self, row: &AnyRow, column: &str) -> Result<u64, StoreError> {
        Ok(self.get::<i64>(row, column)?.max(0) as u64)
    }

    /// PostgreSQL: folds the rows of sessions that hold none locked into `slot = 0` (see
    /// [`fold_sql`]). Best effort: the counts read are exact either way, and a fold that
    /// fails (a read-only connection) is tried again by the next reader.
    async fn fold_counts(&self, t: &Tables) {
        if let Err(e) = sqlx::query(AssertSqlSafe(fold_sql(&t.name)))
            .execute(&self.pool)
            .await
        {
            debug!(replicable = %t.name, error = %e, "folding the count rows failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_has_a_distinct_column() {
        let mut columns: Vec<&str> = COUNTED
            .iter()
            .flat_map(|c| c.counters.iter().map(|(column, _)| *column))
            .collect();
        let n = columns.len();
        columns.sort_unstable();
        columns.dedup();
        assert_eq!(columns.len(), n);
    }

    #[test]
    fn conditions_are_written_about_the_row_given() {
        assert_eq!(
            one_if("R.state = 2 AND R.verification_state <> 4", "NEW"),
            "(CASE WHEN NEW.state = 2 AND NEW.verification_state <> 4 THEN 1 ELSE 0 END)"
        );
        assert_eq!(about("R.state = 0", ""), "state = 0");
    }

    #[test]
    fn names_fit_postgres_identifiers_for_the_longest_replicable_name() {
        let n = "a".repeat(48);
        for c in COUNTED {
            for op in ["ins", "upd", "del", "trn"] {
                assert!(format!("{n}_counts_{}_{op}", c.tag).len() <= 63);
            }
        }
    }
}
