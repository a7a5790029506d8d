//! The process-wide histograms of sync timings (feature `metrics`), recorded by the engine as
//! syncs finish and served by `metrics` (which re-exports [`record_sync`]).

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// The `replicable` label of the histograms.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicableLabel {
    /// The replicable's name.
    pub replicable: String,
}

type HistogramFamily = Family<ReplicableLabel, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    // 5 ms up to about 1.5 hours.
    Histogram::new(exponential_buckets(0.005, 2.0, 21))
}

/// The histograms, shared by every `Metrics` in the process so that [`record_sync`] needs
/// no handle.
pub(crate) struct Histograms {
    pub(crate) sync_delay: HistogramFamily,
    pub(crate) sync_duration: HistogramFamily,
    pub(crate) replication_lag: HistogramFamily,
}

pub(crate) static HISTOGRAMS: LazyLock<Histograms> = LazyLock::new(|| Histograms {
    sync_delay: Family::new_with_constructor(seconds_histogram),
    sync_duration: Family::new_with_constructor(seconds_histogram),
    replication_lag: Family::new_with_constructor(seconds_histogram),
});

fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from)
        .num_microseconds()
        .map_or(0.0, |us| us.max(0) as f64 / 1e6)
}

/// Records one finished sync of `replicable`: its duration (`started` -> `finished`) and, when
/// the event that caused it is known, the sync delay (`event_published_at` -> `started`) and
/// the end-to-end replication lag (`event_published_at` -> `finished`). Cheap: no I/O.
pub fn record_sync(
    replicable: &str,
    started: DateTime<Utc>,
    finished: DateTime<Utc>,
    event_published_at: Option<DateTime<Utc>>,
) {
    let label = ReplicableLabel {
        replicable: replicable.to_owned(),
    };
    let h = &*HISTOGRAMS;
    h.sync_duration
        .get_or_create(&label)
        .observe(seconds_between(started, finished));
    if let Some(published) = event_published_at {
        h.sync_delay
            .get_or_create(&label)
            .observe(seconds_between(published, started));
        h.replication_lag
            .get_or_create(&label)
            .observe(seconds_between(published, finished));
    }
}
