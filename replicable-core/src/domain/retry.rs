//! When a failed sync or verification is tried again.
//!
//! The delay after the `n`-th failure is `n^4 + 15 + jitter * (n + 1)` seconds, with `jitter` drawn
//! uniformly from `0..30`, so early retries come quickly and spread out, and later ones back off
//! steeply. The delay is capped: a retry is never scheduled later than `cap + delay(1)` from now,
//! where the cap is one hour normally and four hours for a resource that is missing on the primary
//! (such a record can only heal when the primary gets the resource back, so it must not spin).

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Upper bound (exclusive) of the random jitter factor.
pub const JITTER_RANGE: u32 = 30;

/// The retry schedule of a site. [`RetryPolicy::default`] is the standard schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Longest wait before retrying an ordinary failure (default one hour).
    pub cap: Duration,
    /// Longest wait before retrying a record whose resource is missing on the primary
    /// (default four hours).
    pub missing_on_primary_cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            cap: Duration::from_secs(60 * 60),
            missing_on_primary_cap: Duration::from_secs(4 * 60 * 60),
        }
    }
}

/// The uncapped delay after the `retry_count`-th failure, for a given jitter factor in `0..30`.
pub fn retry_delay(retry_count: u32, jitter: u32) -> Duration {
    let n = u64::from(retry_count);
    let jitter = u64::from(jitter.min(JITTER_RANGE - 1));
    let secs = n
        .saturating_pow(4)
        .saturating_add(15)
        .saturating_add(jitter.saturating_mul(n + 1));
    Duration::from_secs(secs)
}

impl RetryPolicy {
    /// The cap that applies to a failure.
    pub fn cap_for(&self, missing_on_primary: bool) -> Duration {
        if missing_on_primary {
            self.missing_on_primary_cap
        } else {
            self.cap
        }
    }

    /// The delay after the `retry_count`-th failure with the given jitter factor, capped.
    pub fn delay(&self, retry_count: u32, missing_on_primary: bool, jitter: u32) -> Duration {
        let capped = self.cap_for(missing_on_primary) + retry_delay(1, jitter);
        retry_delay(retry_count, jitter).min(capped)
    }

    /// When to retry after the `retry_count`-th failure, drawing a fresh random jitter.
    pub fn next_retry_time(
        &self,
        retry_count: u32,
        missing_on_primary: bool,
        now: DateTime<Utc>,
    ) -> DateTime<Utc> {
        self.next_retry_time_with_jitter(
            retry_count,
            missing_on_primary,
            now,
            fastrand::u32(0..JITTER_RANGE),
        )
    }

    /// [`RetryPolicy::next_retry_time`] with a chosen jitter factor (for tests and replays).
    pub fn next_retry_time_with_jitter(
        &self,
        retry_count: u32,
        missing_on_primary: bool,
        now: DateTime<Utc>,
        jitter: u32,
    ) -> DateTime<Utc> {
        let delay = self.delay(retry_count, missing_on_primary, jitter);
        now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX)
    }

    /// The earliest and latest delay the schedule can pick after the `retry_count`-th failure.
    pub fn window(&self, retry_count: u32, missing_on_primary: bool) -> (Duration, Duration) {
        (
            self.delay(retry_count, missing_on_primary, 0),
            self.delay(retry_count, missing_on_primary, JITTER_RANGE - 1),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_retry_waits_between_15_and_73_seconds() {
        let policy = RetryPolicy::default();
        // n = 1: 1 + 15 + j * 2 for j in 0..30
        assert_eq!(
            policy.window(1, false),
            (Duration::from_secs(16), Duration::from_secs(74))
        );
    }

    #[test]
    fn delay_follows_the_quartic_formula() {
        assert_eq!(retry_delay(0, 0), Duration::from_secs(15));
        assert_eq!(retry_delay(2, 0), Duration::from_secs(16 + 15));
        assert_eq!(retry_delay(3, 10), Duration::from_secs(81 + 15 + 10 * 4));
        assert_eq!(retry_delay(5, 29), Duration::from_secs(625 + 15 + 29 * 6));
    }

    #[test]
    fn jitter_outside_its_range_is_clamped() {
        assert_eq!(retry_delay(1, 1000), retry_delay(1, 29));
    }

    #[test]
    fn delay_is_capped_at_one_hour_plus_first_delay() {
        let policy = RetryPolicy::default();
        // 8^4 = 4096 s > 3600 s
        for jitter in [0, 7, 29] {
            let d = policy.delay(8, false, jitter);
            assert_eq!(d, Duration::from_secs(3600) + retry_delay(1, jitter));
        }
        // 7^4 + 15 = 2416 s stays under the cap with no jitter
        assert_eq!(policy.delay(7, false, 0), Duration::from_secs(2416));
    }

    #[test]
    fn missing_on_primary_caps_at_four_hours() {
        let policy = RetryPolicy::default();
        let (lo, hi) = policy.window(50, true);
        assert_eq!(lo, Duration::from_secs(4 * 3600 + 16));
        assert_eq!(hi, Duration::from_secs(4 * 3600 + 16 + 58));
        // 10^4 = 10000 s > 1 h but < 4 h: the missing cap lets it through uncapped
        assert_eq!(policy.delay(10, true, 0), Duration::from_secs(10_015));
        assert_eq!(policy.delay(10, false, 0), Duration::from_secs(3616));
    }

    #[test]
    fn huge_retry_counts_do_not_overflow() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.delay(u32::MAX, false, 29),
            Duration::from_secs(3600 + 16 + 58)
        );
        let now = Utc::now();
        assert!(policy.next_retry_time(u32::MAX, true, now) > now);
    }

    #[test]
    fn random_jitter_stays_inside_the_window() {
        let policy = RetryPolicy::default();
        let now = Utc::now();
        for n in 0..12 {
            let (lo, hi) = policy.window(n, false);
            for _ in 0..200 {
                let at = policy.next_retry_time(n, false, now);
                let d = (at - now).to_std().unwrap();
                assert!(d >= lo && d <= hi, "n={n}: {d:?} outside {lo:?}..={hi:?}");
            }
        }
    }
}
