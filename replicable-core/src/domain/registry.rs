//! The registry: one row per replicated record on a secondary, tracking its sync and its
//! verification.
//!
//! ```text
//!            ┌──────────── mark_pending (from any state) ─────────────┐
//!            ▼                                                         │
//!   pending ──start──▶ started ──mark_synced──▶ synced ──resync──▶ pending
//!                        │  ▲                     │
//!                        │  └──────start──────────┤
//!                        └──mark_failed──▶ failed ◀┘ (mark_failed: verification mismatch)
//!                                           │
//!                                           └──start / resync
//! ```
//!
//! Every write is guarded by the row's `version`: a sync that started at version `v` can only be
//! completed while the row is still at `v`. If an event marked the row pending while the copy ran
//! (the record changed), completing it is refused and the row is synced again.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::failure::{SyncFailure, truncate_failure};
use crate::domain::retry::RetryPolicy;
use crate::domain::transition::IllegalTransition;
use crate::domain::verification::{Verification, humanize};

/// Where a record's sync stands. The numeric values are the ones stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(i16)]
pub enum SyncState {
    /// Waiting to be synced.
    Pending = 0,
    /// A sync is running.
    Started = 1,
    /// The local copy matches the primary as of the last sync.
    Synced = 2,
    /// The last sync failed; retried at `retry_at`.
    Failed = 3,
}

impl SyncState {
    /// All states, in value order.
    pub const ALL: [SyncState; 4] = [Self::Pending, Self::Started, Self::Synced, Self::Failed];

    /// The stored value.
    pub fn value(self) -> i16 {
        self as i16
    }

    /// The state of a stored value.
    pub fn from_value(value: i16) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.value() == value)
    }

    /// The lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Started => "started",
            Self::Synced => "synced",
            Self::Failed => "failed",
        }
    }
}

impl std::fmt::Display for SyncState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One registry row: a secondary's knowledge of one record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryRecord {
    /// The replicated record's id.
    pub model_id: i64,
    /// Where the sync stands.
    pub state: SyncState,
    /// Failed syncs in a row.
    pub retry_count: u32,
    /// When a failed sync is tried again.
    pub retry_at: Option<DateTime<Utc>>,
    /// Why the last sync failed (at most 255 characters).
    pub last_sync_failure: Option<String>,
    /// When the last sync started.
    pub last_synced_at: Option<DateTime<Utc>>,
    /// When the row was made.
    pub created_at: DateTime<Utc>,
    /// The last failure was because the resource is missing on the primary.
    pub missing_on_primary: bool,
    /// The primary's generation of the record that the local copy holds.
    pub synced_generation: Option<i64>,
    /// A change (new event, resync or deletion) arrived while the row was `started`: the sync in
    /// flight may not make its copy visible, and the row goes back to pending when it ends.
    pub change_pending: bool,
    /// When the primary published the oldest change the local copy does not hold yet (the
    /// event's time), for the replication lag; `None` when the copy is current or the row was
    /// queued without an event (backfill, an operator's resync).
    pub changed_at: Option<DateTime<Utc>>,
    /// The verification columns of the local copy.
    pub verification: Verification,
    /// When the worker holding the row's sync or verification last said it is alive.
    pub heartbeat_at: Option<DateTime<Utc>>,
    /// Bumped by every write; writes that expect an older version are refused.
    pub version: i64,
}

/// When work left in `started` counts as abandoned or hung.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StuckCutoffs {
    /// Syncs started before this have run too long (the 8 hour sync timeout).
    pub sync_started_before: DateTime<Utc>,
    /// Verifications started before this have run too long.
    pub verification_started_before: DateTime<Utc>,
    /// Work whose last heartbeat is older than this lost its worker.
    pub heartbeat_before: DateTime<Utc>,
}

impl RegistryRecord {
    /// A new pending row.
    pub fn new_pending(model_id: i64, now: DateTime<Utc>) -> Self {
        Self {
            model_id,
            state: SyncState::Pending,
            retry_count: 0,
            retry_at: None,
            last_sync_failure: None,
            last_synced_at: None,
            created_at: now,
            missing_on_primary: false,
            synced_generation: None,
            change_pending: false,
            changed_at: None,
            verification: Verification::disabled(),
            heartbeat_at: None,
            version: 0,
        }
    }

    fn illegal(&self, event: &'static str) -> IllegalTransition {
        IllegalTransition {
            machine: "registry",
            from: self.state.name(),
            event,
        }
    }

    /// Back to pending, from any state (the record changed, or an operator asked for a resync):
    /// clears the retry schedule and `last_synced_at`, and turns verification off until the
    /// next sync (a copy waiting to be synced again is not counted as verified).
    ///
    /// A row whose sync is running (`started`) is not restarted under it: it stays `started`
    /// with [`change_pending`](Self::change_pending) set, so that the sync in flight discards its
    /// copy and the row goes pending when that sync ends. One sync per record at a time.
    pub fn mark_pending(&mut self) {
        if self.state == SyncState::Started {
            self.change_pending = true;
            return;
        }
        self.state = SyncState::Pending;
        self.retry_at = None;
        self.retry_count = 0;
        self.last_synced_at = None;
        self.change_pending = false;
        self.verification.disable();
    }

    /// Begins a sync: from pending, synced or failed. Sets `last_synced_at`.
    pub fn start(&mut self, now: DateTime<Utc>) -> Result<(), IllegalTransition> {
        match self.state {
            SyncState::Pending | SyncState::Synced | SyncState::Failed => {
                self.state = SyncState::Started;
                self.last_synced_at = Some(now);
                self.heartbeat_at = Some(now);
                self.change_pending = false;
                Ok(())
            }
            SyncState::Started => Err(self.illegal("start")),
        }
    }

    /// Notes a change the primary published at `published_at` (with [`mark_pending`]): kept
    /// unless an older change the copy does not hold is already noted.
    ///
    /// [`mark_pending`]: Self::mark_pending
    pub fn note_change(&mut self, published_at: DateTime<Utc>) {
        self.changed_at = Some(
            self.changed_at
                .map_or(published_at, |at| at.min(published_at)),
        );
    }

    /// Completes a sync: only from started. Clears the failure, the missing-on-primary flag and
    /// the retry schedule, and records the generation copied. The copy is new, so its
    /// verification starts over: `pending` when the primary has a checksum to compare with
    /// (`primary_checksum_known`), `disabled` until it has one otherwise.
    pub fn mark_synced(
        &mut self,
        generation: Option<i64>,
        primary_checksum_known: bool,
    ) -> Result<(), IllegalTransition> {
        if self.state != SyncState::Started {
            return Err(self.illegal("mark synced"));
        }
        self.state = SyncState::Synced;
        self.retry_count = 0;
        self.retry_at = None;
        self.last_sync_failure = None;
        self.missing_on_primary = false;
        self.change_pending = false;
        self.changed_at = None;
        if generation.is_some() {
            self.synced_generation = generation;
        }
        self.verification.restart();
        if primary_checksum_known {
            self.verification.mark_pending();
        } else {
            self.verification.disable();
        }
        Ok(())
    }

    /// Ends a sync that was overtaken (a change, a resync or another attempt arrived while it
    /// ran; its copy was discarded): from started back to pending, to be synced again at once.
    pub fn requeue(&mut self) -> Result<(), IllegalTransition> {
        if self.state != SyncState::Started {
            return Err(self.illegal("requeue"));
        }
        self.state = SyncState::Pending;
        self.change_pending = false;
        self.mark_pending();
        Ok(())
    }

    /// Whether the row is `started` by the attempt that started it at `started_at` (an attempt
    /// is known by its start time; stores keep microseconds).
    pub fn held_by_attempt(&self, started_at: Option<DateTime<Utc>>) -> bool {
        self.state == SyncState::Started
            && self.last_synced_at.map(|t| t.timestamp_micros())
                == started_at.map(|t| t.timestamp_micros())
    }

    /// Hands back a claim that was never worked on (the engine stopping, or a claim beyond the
    /// free capacity): from started back to what the row was, a failed row keeping its retry
    /// count and retry time (its backoff), a pending one pending.
    pub fn release_claim(&mut self) -> Result<(), IllegalTransition> {
        if self.state != SyncState::Started {
            return Err(self.illegal("release claim"));
        }
        if self.change_pending || self.retry_count == 0 {
            return self.requeue();
        }
        self.state = SyncState::Failed;
        Ok(())
    }

    /// Records a failed sync, from any state (a failed copy, a verification that found the
    /// copy bad, an operator's decision). Increments `retry_count` and schedules the retry.
    pub fn mark_failed(
        &mut self,
        failure: &SyncFailure,
        now: DateTime<Utc>,
        policy: &RetryPolicy,
        jitter: u32,
    ) -> Result<(), IllegalTransition> {
        self.change_pending = false;
        self.state = SyncState::Failed;
        self.retry_count = self.retry_count.saturating_add(1);
        self.retry_at = Some(policy.next_retry_time_with_jitter(
            self.retry_count,
            failure.missing_on_primary,
            now,
            jitter,
        ));
        self.last_sync_failure = Some(truncate_failure(&failure.message));
        self.missing_on_primary = failure.missing_on_primary;
        Ok(())
    }

    /// Asks for a new sync of a synced or failed row.
    pub fn resync(&mut self) -> Result<(), IllegalTransition> {
        match self.state {
            SyncState::Synced | SyncState::Failed => {
                self.mark_pending();
                Ok(())
            }
            _ => Err(self.illegal("resync")),
        }
    }

    /// A sync that has been `started` since before `started_before` is failed with a timeout
    /// (its worker died or hung). Returns whether it was.
    pub fn fail_if_stuck(
        &mut self,
        started_before: DateTime<Utc>,
        timeout: std::time::Duration,
        now: DateTime<Utc>,
        policy: &RetryPolicy,
        jitter: u32,
    ) -> bool {
        let stuck = self.state == SyncState::Started
            && self.last_synced_at.is_none_or(|at| at < started_before);
        if stuck {
            let failure = SyncFailure::new(format!("Sync timed out after {}", humanize(timeout)));
            // Started was checked above, so `mark_failed` cannot refuse.
            let _ = self.mark_failed(&failure, now, policy, jitter);
        }
        stuck
    }

    /// Fails the row's sync or verification if it is `started` and either ran past its timeout
    /// or lost its worker (no heartbeat since `cutoffs.heartbeat_before`). Returns whether it
    /// changed the row.
    pub fn fail_stuck_work(
        &mut self,
        cutoffs: &StuckCutoffs,
        timeouts: (std::time::Duration, std::time::Duration),
        now: DateTime<Utc>,
        policy: &RetryPolicy,
        jitter: u32,
    ) -> bool {
        let (sync_timeout, verification_timeout) = timeouts;
        let mut changed = false;
        // A sync past its timeout timed out, heartbeats or not ("Sync timed out after 8
        // hours", as Geo says); one within it that lost its worker was abandoned.
        if self.state == SyncState::Started {
            let last_sign = self.heartbeat_at.or(self.last_synced_at);
            let abandoned = last_sign.is_none_or(|at| at < cutoffs.heartbeat_before);
            let failed = if self.fail_if_stuck(
                cutoffs.sync_started_before,
                sync_timeout,
                now,
                policy,
                jitter,
            ) {
                true
            } else if abandoned {
                let failure = SyncFailure::new(abandoned_message("Sync", last_sign));
                self.mark_failed(&failure, now, policy, jitter).is_ok()
            } else {
                false
            };
            // A claim lost with its worker (a killed process) says nothing about the record:
            // the first time, it is due again at once, so a restarted secondary resumes
            // without waiting out a backoff. A record that keeps losing its worker (one that
            // crashes the process) backs off as usual from the second time on.
            if failed && abandoned && self.retry_count == 1 {
                self.retry_at = Some(now);
            }
            changed |= failed;
        }
        let v = &mut self.verification;
        if v.verification_state == crate::domain::verification::VerificationState::Started {
            let last_sign = self.heartbeat_at.or(v.verification_started_at);
            if v.fail_if_stuck(
                cutoffs.verification_started_before,
                verification_timeout,
                now,
                policy,
                jitter,
            ) {
                // A verification that hangs past its timeout says the copy cannot be read back:
                // fetch it again.
                let failure = SyncFailure::new(format!(
                    "Verification timed out after {}",
                    humanize(verification_timeout)
                ));
                let _ = self.mark_failed(&failure, now, policy, jitter);
                changed = true;
            } else if last_sign.is_none_or(|at| at < cutoffs.heartbeat_before) {
                changed |= v.fail_abandoned(last_sign, now, policy, jitter);
            }
        }
        changed
    }

    /// Whether the row is due for a sync at `now`: pending, or failed with its retry time passed.
    pub fn is_due(&self, now: DateTime<Utc>) -> bool {
        match self.state {
            SyncState::Pending => true,
            SyncState::Failed => self.retry_at.is_none_or(|at| at <= now),
            _ => false,
        }
    }

    /// Orders due rows for scheduling: rows never attempted first, then failed rows by
    /// `retry_at` (missing first), then by id.
    pub fn schedule_key(&self) -> (u8, Option<DateTime<Utc>>, i64) {
        // Never attempted and not an operator's resync (which carries a `retry_at`).
        let never_attempted = self.state == SyncState::Pending
            && self.last_synced_at.is_none()
            && self.retry_at.is_none();
        (u8::from(!never_attempted), self.retry_at, self.model_id)
    }
}

/// The failure text of work whose worker stopped heartbeating.
pub(crate) fn abandoned_message(work: &str, last_sign: Option<DateTime<Utc>>) -> String {
    match last_sign {
        Some(at) => format!(
            "{work} worker stopped responding: no heartbeat since {}",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        None => format!("{work} worker stopped responding"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn now() -> DateTime<Utc> {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn in_state(state: SyncState) -> RegistryRecord {
        RegistryRecord {
            state,
            verification: Verification::pending(),
            ..RegistryRecord::new_pending(7, now())
        }
    }

    #[test]
    fn stored_values_match_the_reference_numbering() {
        let values: Vec<i16> = SyncState::ALL.iter().map(|s| s.value()).collect();
        assert_eq!(values, vec![0, 1, 2, 3]);
        for s in SyncState::ALL {
            assert_eq!(SyncState::from_value(s.value()), Some(s));
        }
        assert_eq!(SyncState::from_value(-1), None);
    }

    #[test]
    fn pending_is_allowed_from_any_state_and_clears_the_schedule() {
        for s in [SyncState::Pending, SyncState::Synced, SyncState::Failed] {
            let mut r = in_state(s);
            r.retry_count = 4;
            r.retry_at = Some(now());
            r.last_synced_at = Some(now());
            r.mark_pending();
            assert_eq!(r.state, SyncState::Pending);
            assert_eq!(
                (r.retry_count, r.retry_at, r.last_synced_at),
                (0, None, None)
            );
        }
    }

    #[test]
    fn a_row_sent_back_to_pending_has_verification_disabled() {
        let mut r = in_state(SyncState::Synced);
        r.verification.start(now()).unwrap();
        r.verification.succeed("abc".into(), now()).unwrap();
        r.mark_pending();
        assert_eq!(
            r.verification.verification_state,
            crate::domain::verification::VerificationState::Disabled
        );
        assert_eq!(
            RegistryRecord::new_pending(1, now())
                .verification
                .verification_state,
            crate::domain::verification::VerificationState::Disabled
        );
    }

    #[test]
    fn a_change_during_a_sync_is_flagged_not_restarted() {
        let mut r = in_state(SyncState::Pending);
        r.start(now()).unwrap();
        r.mark_pending();
        assert_eq!(r.state, SyncState::Started, "one sync per record at a time");
        assert!(r.change_pending);
        assert!(r.start(now()).is_err());
        r.requeue().unwrap();
        assert_eq!(r.state, SyncState::Pending);
        assert!(!r.change_pending);
        r.start(now()).unwrap();
        assert!(!r.change_pending);
        assert!(in_state(SyncState::Synced).requeue().is_err());
    }

    #[test]
    fn start_is_allowed_from_pending_synced_and_failed_only() {
        for s in SyncState::ALL {
            let mut r = in_state(s);
            let result = r.start(now());
            if s == SyncState::Started {
                let err = result.unwrap_err();
                assert_eq!(
                    (err.machine, err.from, err.event),
                    ("registry", "started", "start")
                );
            } else {
                result.unwrap();
                assert_eq!(r.state, SyncState::Started);
                assert_eq!(r.last_synced_at, Some(now()));
            }
        }
    }

    #[test]
    fn synced_only_from_started() {
        for s in SyncState::ALL {
            let mut r = in_state(s);
            r.retry_count = 3;
            r.last_sync_failure = Some("x".into());
            r.missing_on_primary = true;
            let result = r.mark_synced(Some(5), true);
            if s == SyncState::Started {
                result.unwrap();
                assert_eq!(r.state, SyncState::Synced);
                assert_eq!(r.retry_count, 0);
                assert_eq!(r.last_sync_failure, None);
                assert!(!r.missing_on_primary);
                assert_eq!(r.synced_generation, Some(5));
            } else {
                assert!(result.is_err(), "synced from {s} must be refused");
            }
        }
    }

    #[test]
    fn synced_puts_verification_back_to_pending_or_disabled_without_a_primary_checksum() {
        use crate::domain::verification::VerificationState;
        for (known, expected) in [
            (true, VerificationState::Pending),
            (false, VerificationState::Disabled),
        ] {
            let mut r = in_state(SyncState::Started);
            r.verification.start(now()).unwrap();
            r.verification
                .fail_mismatch("bad".into(), now(), &RetryPolicy::default(), 0)
                .unwrap();
            r.mark_synced(None, known).unwrap();
            assert_eq!(r.verification.verification_state, expected);
            assert!(!r.verification.checksum_mismatch);
            assert_eq!(r.verification.verification_retry_count, 0);
        }
    }

    #[test]
    fn a_released_claim_keeps_the_backoff_of_a_failed_row() {
        let policy = RetryPolicy::default();
        let mut failed = in_state(SyncState::Pending);
        failed.start(now()).unwrap();
        failed
            .mark_failed(&SyncFailure::missing_on_primary("gone"), now(), &policy, 0)
            .unwrap();
        let retry_at = failed.retry_at;
        failed.start(now()).unwrap();
        failed.release_claim().unwrap();
        assert_eq!(
            (failed.state, failed.retry_count, failed.retry_at),
            (SyncState::Failed, 1, retry_at)
        );
        let mut fresh = in_state(SyncState::Pending);
        fresh.start(now()).unwrap();
        fresh.release_claim().unwrap();
        assert_eq!(
            (fresh.state, fresh.last_synced_at),
            (SyncState::Pending, None)
        );
        assert!(in_state(SyncState::Synced).release_claim().is_err());
    }

    #[test]
    fn failed_from_any_state_counts_retries_and_schedules() {
        let policy = RetryPolicy::default();
        for s in SyncState::ALL {
            let mut r = in_state(s);
            r.mark_failed(&SyncFailure::new("nope"), now(), &policy, 0)
                .unwrap();
            assert_eq!(r.state, SyncState::Failed);
            assert_eq!(r.retry_count, 1);
            assert_eq!(r.retry_at, Some(now() + chrono::Duration::seconds(16)));
            assert_eq!(r.last_sync_failure.as_deref(), Some("nope"));
        }
    }

    #[test]
    fn a_verification_past_its_timeout_fails_the_sync_too() {
        let policy = RetryPolicy::default();
        let mut r = in_state(SyncState::Synced);
        r.verification.start(now()).unwrap();
        let at = now() + chrono::Duration::hours(9);
        r.heartbeat_at = Some(at);
        assert!(r.fail_stuck_work(&cutoffs(at), TIMEOUTS, at, &policy, 0));
        assert_eq!(r.state, SyncState::Failed);
        assert_eq!(
            r.verification.verification_state,
            crate::domain::verification::VerificationState::Failed
        );
        assert_eq!(
            r.last_sync_failure.as_deref(),
            Some("Verification timed out after 8 hours")
        );
    }

    #[test]
    fn repeated_failures_back_off() {
        let policy = RetryPolicy::default();
        let mut r = in_state(SyncState::Pending);
        let mut last_delay = chrono::Duration::zero();
        for n in 1..=6u32 {
            r.start(now()).unwrap();
            r.mark_failed(&SyncFailure::new("x"), now(), &policy, 0)
                .unwrap();
            assert_eq!(r.retry_count, n);
            let delay = r.retry_at.unwrap() - now();
            assert!(delay > last_delay);
            last_delay = delay;
        }
    }

    #[test]
    fn missing_on_primary_uses_the_long_cap() {
        let policy = RetryPolicy::default();
        let mut r = in_state(SyncState::Started);
        r.retry_count = 40;
        r.mark_failed(&SyncFailure::missing_on_primary("gone"), now(), &policy, 0)
            .unwrap();
        assert!(r.missing_on_primary);
        assert_eq!(
            r.retry_at,
            Some(now() + chrono::Duration::seconds(4 * 3600 + 16))
        );
    }

    #[test]
    fn failure_text_is_truncated_to_255_characters() {
        let mut r = in_state(SyncState::Started);
        r.mark_failed(
            &SyncFailure::new("e".repeat(300)),
            now(),
            &RetryPolicy::default(),
            0,
        )
        .unwrap();
        assert_eq!(r.last_sync_failure.unwrap().chars().count(), 255);
    }

    #[test]
    fn resync_only_from_synced_or_failed() {
        for s in SyncState::ALL {
            let mut r = in_state(s);
            let result = r.resync();
            match s {
                SyncState::Synced | SyncState::Failed => {
                    result.unwrap();
                    assert_eq!(r.state, SyncState::Pending);
                }
                _ => assert!(result.is_err(), "resync from {s} must be refused"),
            }
        }
    }

    #[test]
    fn stuck_sync_is_failed_after_the_timeout() {
        let policy = RetryPolicy::default();
        let timeout = Duration::from_secs(8 * 3600);
        let mut r = in_state(SyncState::Pending);
        r.start(now()).unwrap();
        let later = now() + chrono::Duration::hours(8) + chrono::Duration::seconds(1);
        let cutoff = later - chrono::Duration::hours(8);
        assert!(r.fail_if_stuck(cutoff, timeout, later, &policy, 0));
        assert_eq!(r.state, SyncState::Failed);
        assert_eq!(
            r.last_sync_failure.as_deref(),
            Some("Sync timed out after 8 hours")
        );
        let mut running = in_state(SyncState::Pending);
        running.start(later).unwrap();
        assert!(!running.fail_if_stuck(cutoff, timeout, later, &policy, 0));
        assert!(!in_state(SyncState::Synced).fail_if_stuck(cutoff, timeout, later, &policy, 0));
    }

    fn cutoffs(now: DateTime<Utc>) -> StuckCutoffs {
        StuckCutoffs {
            sync_started_before: now - chrono::Duration::hours(8),
            verification_started_before: now - chrono::Duration::hours(8),
            heartbeat_before: now - chrono::Duration::seconds(60),
        }
    }

    const TIMEOUTS: (Duration, Duration) =
        (Duration::from_secs(8 * 3600), Duration::from_secs(8 * 3600));

    #[test]
    fn a_sync_without_heartbeat_for_a_minute_is_failed_as_abandoned() {
        let policy = RetryPolicy::default();
        let mut r = in_state(SyncState::Pending);
        r.start(now()).unwrap();
        let at = now() + chrono::Duration::seconds(59);
        assert!(!r.fail_stuck_work(&cutoffs(at), TIMEOUTS, at, &policy, 0));
        assert_eq!(r.state, SyncState::Started);
        let at = now() + chrono::Duration::seconds(61);
        assert!(r.fail_stuck_work(&cutoffs(at), TIMEOUTS, at, &policy, 0));
        assert_eq!(r.state, SyncState::Failed);
        assert_eq!(r.retry_count, 1);
        assert_eq!(
            r.last_sync_failure.as_deref(),
            Some("Sync worker stopped responding: no heartbeat since 2026-01-01T00:00:00Z")
        );
        // The first lost claim is due again at once ...
        assert_eq!(r.retry_at, Some(at));
        // ... a record that loses its worker again backs off.
        r.start(at).unwrap();
        let later = at + chrono::Duration::seconds(61);
        assert!(r.fail_stuck_work(&cutoffs(later), TIMEOUTS, later, &policy, 0));
        assert_eq!(r.retry_count, 2);
        assert!(r.retry_at.unwrap() > later + chrono::Duration::seconds(15));
    }

    #[test]
    fn a_heartbeating_sync_is_still_failed_after_eight_hours() {
        let policy = RetryPolicy::default();
        let mut r = in_state(SyncState::Pending);
        r.start(now()).unwrap();
        let at = now() + chrono::Duration::hours(8) + chrono::Duration::seconds(1);
        r.heartbeat_at = Some(at - chrono::Duration::seconds(5));
        assert!(r.fail_stuck_work(&cutoffs(at), TIMEOUTS, at, &policy, 0));
        assert_eq!(
            r.last_sync_failure.as_deref(),
            Some("Sync timed out after 8 hours")
        );
    }

    #[test]
    fn work_past_its_timeout_timed_out_even_without_heartbeats() {
        // A site that was down for the whole timeout: both signs hold, and the row says it
        // timed out, as Geo's sweep would.
        let policy = RetryPolicy::default();
        let at = now() + chrono::Duration::hours(9);
        let mut r = in_state(SyncState::Pending);
        r.start(now()).unwrap();
        assert!(r.fail_stuck_work(&cutoffs(at), TIMEOUTS, at, &policy, 0));
        assert_eq!(
            r.last_sync_failure.as_deref(),
            Some("Sync timed out after 8 hours")
        );
        // Its worker is gone too: the first such loss is due again at once.
        assert_eq!(r.retry_at, Some(at));
        let mut v = in_state(SyncState::Synced);
        v.verification.start(now()).unwrap();
        assert!(v.fail_stuck_work(&cutoffs(at), TIMEOUTS, at, &policy, 0));
        assert_eq!(
            v.verification.verification_failure.as_deref(),
            Some("Verification timed out after 8 hours")
        );
        // ... and the copy is fetched again.
        assert_eq!(v.state, SyncState::Failed);
    }

    #[test]
    fn an_abandoned_verification_is_failed_and_the_sync_state_kept() {
        let policy = RetryPolicy::default();
        let mut r = in_state(SyncState::Synced);
        r.verification.start(now()).unwrap();
        r.heartbeat_at = Some(now());
        let at = now() + chrono::Duration::minutes(2);
        assert!(r.fail_stuck_work(&cutoffs(at), TIMEOUTS, at, &policy, 0));
        assert_eq!(r.state, SyncState::Synced);
        assert_eq!(
            r.verification.verification_state,
            crate::domain::verification::VerificationState::Failed
        );
        assert!(
            r.verification
                .verification_failure
                .as_deref()
                .unwrap()
                .starts_with("Verification worker stopped responding")
        );
        // The first lost claim is due again at once, as a sync's is.
        assert_eq!(r.verification.verification_retry_at, Some(at));
        assert!(r.verification.is_due(at));
        // Rows with nothing started are left alone.
        let mut idle = in_state(SyncState::Failed);
        assert!(!idle.fail_stuck_work(&cutoffs(at), TIMEOUTS, at, &policy, 0));
    }

    #[test]
    fn never_attempted_rows_are_scheduled_before_retries() {
        let policy = RetryPolicy::default();
        let fresh = RegistryRecord::new_pending(9, now());
        let mut failed = RegistryRecord::new_pending(1, now());
        failed.start(now()).unwrap();
        failed
            .mark_failed(&SyncFailure::new("x"), now(), &policy, 0)
            .unwrap();
        assert!(fresh.schedule_key() < failed.schedule_key());
        assert!(fresh.is_due(now()));
        assert!(!failed.is_due(now()));
        assert!(failed.is_due(failed.retry_at.unwrap()));
    }
}
