//! The engine's settings: one struct with defaults, loadable from a TOML file and from
//! `REPLICABLE_*` environment variables (nested keys joined by `__`, e.g.
//! `REPLICABLE_SYNC__CONCURRENCY=16`).
//!
//! ```toml
//! [sync]
//! concurrency = 24
//! blob_capacity = 16
//! repository_capacity = 4
//!
//! [verification]
//! concurrency = 4
//! reverification_interval = "7days"
//!
//! [periods]
//! stuck_sweep = "30s"
//! ```

use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::domain::resource::DataType;

/// Every setting of an engine, with defaults for a production site (`geo-demo` shortens the
/// idle backoff and the periods so that its proofs finish in seconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Syncing on secondaries.
    pub sync: SyncSettings,
    /// Verification on both sides.
    pub verification: VerificationSettings,
    /// The log cursor (secondaries).
    pub cursor: CursorSettings,
    /// How often the periodic passes run.
    pub periods: Periods,
    /// Event-log retention (primary).
    pub retention: Retention,
    /// Idle loops back off from `min` to `max` between polls, and wake at once on new work in the
    /// same process (Praefect: 1 s to 5 s).
    pub idle: IdleBackoff,
    /// How long a graceful shutdown lets in-flight work finish before it is released back to
    /// pending (default 30 s).
    #[serde(with = "humantime_serde")]
    pub shutdown_deadline: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            sync: SyncSettings::default(),
            verification: VerificationSettings::default(),
            cursor: CursorSettings::default(),
            periods: Periods::default(),
            retention: Retention::default(),
            idle: IdleBackoff::default(),
            shutdown_deadline: Duration::from_secs(30),
        }
    }
}

/// Sync concurrency on a secondary.
///
/// Geo's defaults (files 10, repositories 25) assume a large machine whose database is
/// elsewhere. A site here may run its database, its object store and git on the same few cores:
/// git fetches are CPU-heavy processes (4 at once on a small machine) and row copies are cheap
/// (16). Blobs are I/O-bound streams, and most of a small blob's sync is waiting (for the
/// primary, the store, the registry), so 32 run at once: with more syncs in flight, claims take
/// more rows per statement and the registry writes of finished syncs are grouped more (10,000
/// blobs of 4 KiB on a 2-core machine synced in 4.5 s instead of 6.2 s with 8). What they hold
/// in memory is bounded apart from this count (the blob strategy's `TRANSFER_MEMORY`). The
/// total caps all of them together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncSettings {
    /// Syncs running at once, all data types together (default 48).
    pub concurrency: usize,
    /// Blob syncs at once (default 32).
    pub blob_capacity: usize,
    /// Repository syncs at once (default 4).
    pub repository_capacity: usize,
    /// Row syncs at once (default 16).
    pub database_capacity: usize,
    /// Rows claimed per pass and replicable at most (default 100).
    pub batch: usize,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            concurrency: 48,
            blob_capacity: 32,
            repository_capacity: 4,
            database_capacity: 16,
            batch: 100,
        }
    }
}

impl SyncSettings {
    /// The capacity of one data type.
    pub fn capacity(&self, data_type: DataType) -> usize {
        match data_type {
            DataType::Blob => self.blob_capacity,
            DataType::Repository => self.repository_capacity,
            DataType::Database => self.database_capacity,
        }
        .max(1)
    }
}

/// Verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerificationSettings {
    /// Checksums computed at once per replicable (default 4: hashing is CPU-bound; Geo's 100
    /// assumes many cores).
    pub concurrency: usize,
    /// Rows held per replicable at most, running and claimed (default 50; Geo claims 10 per
    /// job and runs many jobs). The engine claims more as checks end, never more than its
    /// workers start within a quarter of the claim timeout at the measured pace: a claimed
    /// row waiting for a worker sends no heartbeat.
    pub batch: usize,
    /// Succeeded checksums older than this are verified again (default 7 days).
    #[serde(with = "humantime_serde")]
    pub reverification_interval: Duration,
}

impl Default for VerificationSettings {
    fn default() -> Self {
        Self {
            concurrency: 4,
            batch: 50,
            reverification_interval: crate::engine::workers::DEFAULT_REVERIFICATION_INTERVAL,
        }
    }
}

/// The log cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CursorSettings {
    /// Events per batch (default 50, as Geo). While full batches keep coming (a burst of
    /// events), the engine's cursor, which only records intent, reads up to
    /// [`MAX_BURST`](crate::engine::cursor::MAX_BURST) times as many at once.
    pub batch_size: usize,
}

impl Default for CursorSettings {
    fn default() -> Self {
        Self {
            batch_size: crate::engine::cursor::DEFAULT_BATCH_SIZE,
        }
    }
}

/// How often each periodic pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Periods {
    /// Failing abandoned or timed-out work (default 30 s: claims go stale after a minute).
    #[serde(with = "humantime_serde")]
    pub stuck_sweep: Duration,
    /// Registry consistency on secondaries (default 1 minute, as Geo).
    #[serde(with = "humantime_serde")]
    pub backfill: Duration,
    /// Re-verification and the primary's verification backfill (default 1 minute).
    #[serde(with = "humantime_serde")]
    pub verification_maintenance: Duration,
    /// Event-log retention (default 5 minutes, as Geo).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// A secondary's status report to its primary (default 30 s).
    #[serde(with = "humantime_serde")]
    pub status_report: Duration,
}

impl Default for Periods {
    fn default() -> Self {
        Self {
            stuck_sweep: Duration::from_secs(30),
            backfill: Duration::from_secs(60),
            verification_maintenance: Duration::from_secs(60),
            retention: Duration::from_secs(300),
            status_report: Duration::from_secs(30),
        }
    }
}

/// Event-log retention on the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Events older than this are deleted whether or not every secondary consumed them: a
    /// secondary that far behind catches up through backfill (default 30 days). Younger events
    /// are deleted once every secondary that reports its status has processed them.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Events per delete statement (default 10,000).
    pub batch: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(30 * 24 * 3600),
            batch: 10_000,
        }
    }
}

/// Idle backoff of the engine's loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdleBackoff {
    /// The first wait after an idle pass (default 1 s).
    #[serde(with = "humantime_serde")]
    pub min: Duration,
    /// The longest wait (default 5 s).
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

impl Default for IdleBackoff {
    fn default() -> Self {
        Self {
            min: Duration::from_secs(1),
            max: Duration::from_secs(5),
        }
    }
}

/// The top-level settings, as environment variables name them after `REPLICABLE_`.
const SETTINGS: [&str; 7] = [
    "sync",
    "verification",
    "cursor",
    "periods",
    "retention",
    "idle",
    "shutdown_deadline",
];

/// The configuration could not be read.
#[derive(Debug, thiserror::Error)]
#[error("engine configuration: {0}")]
pub struct ConfigError(#[from] Box<figment::Error>);

impl EngineConfig {
    /// The defaults, overridden by the TOML file at `path` (if given; a missing file is an
    /// error), then by `REPLICABLE_*` environment variables.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Self::default()));
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError(Box::new(figment::Error::from(format!(
                    "the file {} does not exist",
                    path.display()
                )))));
            }
            figment = figment.merge(Toml::file(path));
        }
        // Only variables that name a setting: others under the same prefix (a test's database
        // URL, an application's own) are not the engine's.
        let env = Env::prefixed("REPLICABLE_").split("__").filter(|key| {
            let top = key.as_str().split('.').next().unwrap_or_default();
            SETTINGS.iter().any(|s| s.eq_ignore_ascii_case(top))
        });
        figment
            .merge(env)
            .extract()
            .map_err(|e| ConfigError(Box::new(e)))
    }

    /// Parses a TOML text over the defaults (no environment).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Figment::from(Serialized::defaults(Self::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_the_defaults_and_keeps_the_rest() {
        let config = EngineConfig::from_toml(
            "shutdown_deadline = \"5s\"\n[sync]\nconcurrency = 3\n[periods]\nbackfill = \"2m\"\n",
        )
        .unwrap();
        assert_eq!(config.sync.concurrency, 3);
        assert_eq!(config.sync.blob_capacity, 32);
        assert_eq!(config.periods.backfill, Duration::from_secs(120));
        assert_eq!(config.shutdown_deadline, Duration::from_secs(5));
        assert_eq!(config.idle, IdleBackoff::default());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = EngineConfig::from_toml("[sync]\nconcurency = 3\n").unwrap_err();
        assert!(err.to_string().contains("concurency"), "{err}");
    }

    #[test]
    // figment's test jail returns its own (large) error type.
    #[allow(clippy::result_large_err)]
    fn the_environment_overrides_settings_and_other_variables_are_ignored() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("REPLICABLE_SYNC__CONCURRENCY", "3");
            jail.set_env("REPLICABLE_SHUTDOWN_DEADLINE", "7s");
            jail.set_env("REPLICABLE_TEST_POSTGRES_URL", "postgres://elsewhere");
            let config = EngineConfig::load(None).expect("unrelated variables are ignored");
            assert_eq!(config.sync.concurrency, 3);
            assert_eq!(config.shutdown_deadline, Duration::from_secs(7));
            Ok(())
        });
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let err = EngineConfig::load(Some(Path::new("/nonexistent/replicable.toml"))).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
