//! The verification state machine, shared by the primary's verification rows and the secondary's
//! registry rows.
//!
//! ```text
//!   pending ──start──▶ started ──succeed──▶ succeeded
//!      ▲                  │                    │
//!      │                  └──fail──▶ failed ◀──┘ (via start)
//!      └───────── mark_pending (from any state) ─────────
//!   disable (from any state) ──▶ disabled
//! ```

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::failure::truncate_failure;
use crate::domain::retry::RetryPolicy;
use crate::domain::transition::IllegalTransition;

/// Where a record's verification stands. The numeric values are the ones stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(i16)]
pub enum VerificationState {
    /// Waiting to be (re)verified.
    Pending = 0,
    /// A checksum is being computed.
    Started = 1,
    /// The checksum was computed (primary) or matched the primary's (secondary).
    Succeeded = 2,
    /// Computing or comparing the checksum failed; retried at `verification_retry_at`.
    Failed = 3,
    /// Verification does not apply to this record.
    Disabled = 4,
}

impl VerificationState {
    /// All states, in value order.
    pub const ALL: [VerificationState; 5] = [
        Self::Pending,
        Self::Started,
        Self::Succeeded,
        Self::Failed,
        Self::Disabled,
    ];

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
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Disabled => "disabled",
        }
    }
}

impl std::fmt::Display for VerificationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The failure text a secondary records when its checksum differs from the primary's.
pub const CHECKSUM_MISMATCH: &str = "Checksum does not match the primary checksum";

/// The verification columns of a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// Where verification stands.
    pub verification_state: VerificationState,
    /// The last checksum computed (hex SHA-256 for the built-in strategies).
    pub verification_checksum: Option<String>,
    /// When the last verification succeeded.
    pub verified_at: Option<DateTime<Utc>>,
    /// When the current or last verification started.
    pub verification_started_at: Option<DateTime<Utc>>,
    /// When a failed verification is tried again.
    pub verification_retry_at: Option<DateTime<Utc>>,
    /// How many times verification failed in a row.
    pub verification_retry_count: u32,
    /// Why the last verification failed (at most 255 characters).
    pub verification_failure: Option<String>,
    /// Secondary only: the local checksum differed from the primary's.
    pub checksum_mismatch: bool,
    /// Secondary only: the local checksum that differed.
    pub verification_checksum_mismatched: Option<String>,
}

impl Default for Verification {
    fn default() -> Self {
        Self::pending()
    }
}

impl Verification {
    /// Fresh columns in the pending state.
    pub fn pending() -> Self {
        Self {
            verification_state: VerificationState::Pending,
            verification_checksum: None,
            verified_at: None,
            verification_started_at: None,
            verification_retry_at: None,
            verification_retry_count: 0,
            verification_failure: None,
            checksum_mismatch: false,
            verification_checksum_mismatched: None,
        }
    }

    fn illegal(&self, event: &'static str) -> IllegalTransition {
        IllegalTransition {
            machine: "verification",
            from: self.verification_state.name(),
            event,
        }
    }

    /// Back to pending, from any state. A failed verification keeps its retry count (and so its
    /// backoff: the next failure waits longer) and its failure text until it succeeds.
    pub fn mark_pending(&mut self) {
        self.verification_state = VerificationState::Pending;
        self.verification_retry_at = None;
        self.verification_started_at = None;
    }

    /// Forgets the verification history of a copy that was replaced by a new sync: retry count,
    /// failure and mismatch. The state is left to the caller.
    pub fn restart(&mut self) {
        self.verification_retry_at = None;
        self.verification_retry_count = 0;
        self.verification_failure = None;
        self.verification_started_at = None;
        self.checksum_mismatch = false;
        self.verification_checksum_mismatched = None;
    }

    /// Begins a verification: from pending, succeeded or failed.
    pub fn start(&mut self, now: DateTime<Utc>) -> Result<(), IllegalTransition> {
        match self.verification_state {
            VerificationState::Pending
            | VerificationState::Succeeded
            | VerificationState::Failed => {
                self.verification_state = VerificationState::Started;
                self.verification_started_at = Some(now);
                Ok(())
            }
            _ => Err(self.illegal("start")),
        }
    }

    /// Records a good checksum: only from started.
    pub fn succeed(
        &mut self,
        checksum: String,
        now: DateTime<Utc>,
    ) -> Result<(), IllegalTransition> {
        if self.verification_state != VerificationState::Started {
            return Err(self.illegal("succeed"));
        }
        self.verification_state = VerificationState::Succeeded;
        self.verification_checksum = Some(checksum);
        self.verified_at = Some(now);
        self.verification_retry_at = None;
        self.verification_retry_count = 0;
        self.verification_failure = None;
        self.checksum_mismatch = false;
        self.verification_checksum_mismatched = None;
        Ok(())
    }

    /// Records a failed verification: only from started. Schedules the retry.
    pub fn fail(
        &mut self,
        message: &str,
        now: DateTime<Utc>,
        policy: &RetryPolicy,
        jitter: u32,
    ) -> Result<(), IllegalTransition> {
        if self.verification_state != VerificationState::Started {
            return Err(self.illegal("fail"));
        }
        self.verification_state = VerificationState::Failed;
        self.verification_checksum = None;
        self.verification_failure = Some(truncate_failure(message));
        self.verification_retry_count = self.verification_retry_count.saturating_add(1);
        self.verification_retry_at = Some(policy.next_retry_time_with_jitter(
            self.verification_retry_count,
            false,
            now,
            jitter,
        ));
        Ok(())
    }

    /// Records that the secondary's checksum differs from the primary's: a failure that also
    /// keeps the mismatched checksum for the operator.
    pub fn fail_mismatch(
        &mut self,
        local_checksum: String,
        now: DateTime<Utc>,
        policy: &RetryPolicy,
        jitter: u32,
    ) -> Result<(), IllegalTransition> {
        self.fail(CHECKSUM_MISMATCH, now, policy, jitter)?;
        self.checksum_mismatch = true;
        self.verification_checksum_mismatched = Some(local_checksum);
        Ok(())
    }

    /// Fresh columns in the disabled state: a registry row whose copy is not synced yet, or
    /// whose primary has no checksum to compare with.
    pub fn disabled() -> Self {
        Self {
            verification_state: VerificationState::Disabled,
            ..Self::pending()
        }
    }

    /// Turns verification off for the row, from any state.
    pub fn disable(&mut self) {
        self.verification_state = VerificationState::Disabled;
        self.verification_retry_at = None;
        self.verification_started_at = None;
    }

    /// A verification that has been `started` since before `started_before` is failed with a
    /// timeout. Returns whether it was.
    pub fn fail_if_stuck(
        &mut self,
        started_before: DateTime<Utc>,
        timeout: std::time::Duration,
        now: DateTime<Utc>,
        policy: &RetryPolicy,
        jitter: u32,
    ) -> bool {
        let stuck = self.verification_state == VerificationState::Started
            && self
                .verification_started_at
                .is_none_or(|started| started < started_before);
        if stuck {
            let message = format!("Verification timed out after {}", humanize(timeout));
            // Started was checked above, so `fail` cannot refuse.
            let _ = self.fail(&message, now, policy, jitter);
        }
        stuck
    }

    /// Fails a `started` verification whose worker stopped heartbeating (its last sign of life
    /// `last_sign`). As for a sync, a claim lost with its worker (a killed process) says
    /// nothing about the resource: the first time it is due again at once, so a restarted
    /// site resumes without waiting out a backoff; from the second time on it backs off as
    /// usual. Returns whether it failed the row.
    pub fn fail_abandoned(
        &mut self,
        last_sign: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        policy: &RetryPolicy,
        jitter: u32,
    ) -> bool {
        let message = crate::domain::registry::abandoned_message("Verification", last_sign);
        if self.fail(&message, now, policy, jitter).is_err() {
            return false;
        }
        if self.verification_retry_count == 1 {
            self.verification_retry_at = Some(now);
        }
        true
    }

    /// Whether the row is due for (re)verification at `now`.
    pub fn is_due(&self, now: DateTime<Utc>) -> bool {
        match self.verification_state {
            VerificationState::Pending => true,
            VerificationState::Failed => self.verification_retry_at.is_none_or(|at| at <= now),
            _ => false,
        }
    }
}

/// A duration as an operator reads it: "8 hours", "90 seconds".
pub(crate) fn humanize(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    if secs >= 3600 && secs.is_multiple_of(3600) {
        let h = secs / 3600;
        format!("{h} hour{}", if h == 1 { "" } else { "s" })
    } else if secs >= 60 && secs.is_multiple_of(60) {
        let m = secs / 60;
        format!("{m} minute{}", if m == 1 { "" } else { "s" })
    } else {
        format!("{secs} seconds")
    }
}

/// The primary's verification row of one record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationRecord {
    /// The record's id.
    pub model_id: i64,
    /// The verification columns.
    pub verification: Verification,
    /// When the worker verifying the row last said it is alive.
    pub heartbeat_at: Option<DateTime<Utc>>,
    /// Bumped by every write; writes that expect an older version are refused.
    pub version: i64,
}

impl VerificationRecord {
    /// A pending row for a record.
    pub fn new(model_id: i64) -> Self {
        Self {
            model_id,
            verification: Verification::pending(),
            heartbeat_at: None,
            version: 0,
        }
    }

    /// Moves the row to `started` and sets its heartbeat.
    pub fn start(&mut self, now: DateTime<Utc>) -> Result<(), IllegalTransition> {
        self.verification.start(now)?;
        self.heartbeat_at = Some(now);
        Ok(())
    }

    /// Fails the verification if it is `started` and ran past `timeout` or lost its worker.
    /// Returns whether it changed the row.
    pub fn fail_stuck_work(
        &mut self,
        cutoffs: &crate::domain::registry::StuckCutoffs,
        timeout: std::time::Duration,
        now: DateTime<Utc>,
        policy: &RetryPolicy,
        jitter: u32,
    ) -> bool {
        let v = &mut self.verification;
        if v.verification_state != VerificationState::Started {
            return false;
        }
        // Past its timeout it timed out, heartbeats or not (the older of the two signs).
        if v.fail_if_stuck(
            cutoffs.verification_started_before,
            timeout,
            now,
            policy,
            jitter,
        ) {
            return true;
        }
        let last_sign = self.heartbeat_at.or(v.verification_started_at);
        last_sign.is_none_or(|at| at < cutoffs.heartbeat_before)
            && v.fail_abandoned(last_sign, now, policy, jitter)
    }

    /// The checksum, if verification succeeded.
    pub fn succeeded_checksum(&self) -> Option<&str> {
        match self.verification.verification_state {
            VerificationState::Succeeded => self.verification.verification_checksum.as_deref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn now() -> DateTime<Utc> {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn in_state(state: VerificationState) -> Verification {
        Verification {
            verification_state: state,
            ..Verification::pending()
        }
    }

    #[test]
    fn stored_values_match_the_reference_numbering() {
        let values: Vec<i16> = VerificationState::ALL.iter().map(|s| s.value()).collect();
        assert_eq!(values, vec![0, 1, 2, 3, 4]);
        for s in VerificationState::ALL {
            assert_eq!(VerificationState::from_value(s.value()), Some(s));
        }
        assert_eq!(VerificationState::from_value(5), None);
    }

    #[test]
    fn start_is_allowed_from_pending_succeeded_and_failed() {
        for s in [
            VerificationState::Pending,
            VerificationState::Succeeded,
            VerificationState::Failed,
        ] {
            let mut v = in_state(s);
            v.start(now()).unwrap();
            assert_eq!(v.verification_state, VerificationState::Started);
            assert_eq!(v.verification_started_at, Some(now()));
        }
    }

    #[test]
    fn start_is_refused_from_started_and_disabled() {
        for s in [VerificationState::Started, VerificationState::Disabled] {
            let err = in_state(s).start(now()).unwrap_err();
            assert_eq!(err.event, "start");
            assert_eq!(err.from, s.name());
        }
    }

    #[test]
    fn succeed_only_from_started_and_clears_failure() {
        for s in VerificationState::ALL {
            let mut v = in_state(s);
            v.verification_failure = Some("old".into());
            v.verification_retry_count = 3;
            let result = v.succeed("abc".into(), now());
            if s == VerificationState::Started {
                result.unwrap();
                assert_eq!(v.verification_state, VerificationState::Succeeded);
                assert_eq!(v.verification_checksum.as_deref(), Some("abc"));
                assert_eq!(v.verified_at, Some(now()));
                assert_eq!(v.verification_failure, None);
                assert_eq!(v.verification_retry_count, 0);
            } else {
                assert!(result.is_err(), "succeed from {s} must be refused");
            }
        }
    }

    #[test]
    fn fail_only_from_started_and_schedules_a_retry() {
        let policy = RetryPolicy::default();
        for s in VerificationState::ALL {
            let mut v = in_state(s);
            let result = v.fail("disk on fire", now(), &policy, 0);
            if s == VerificationState::Started {
                result.unwrap();
                assert_eq!(v.verification_state, VerificationState::Failed);
                assert_eq!(v.verification_retry_count, 1);
                assert_eq!(
                    v.verification_retry_at,
                    Some(now() + chrono::Duration::seconds(16))
                );
                assert_eq!(v.verification_failure.as_deref(), Some("disk on fire"));
                assert_eq!(v.verification_checksum, None);
            } else {
                assert!(result.is_err(), "fail from {s} must be refused");
            }
        }
    }

    #[test]
    fn failure_text_is_truncated() {
        let mut v = in_state(VerificationState::Started);
        v.fail(&"z".repeat(400), now(), &RetryPolicy::default(), 0)
            .unwrap();
        assert_eq!(v.verification_failure.unwrap().len(), 255);
    }

    #[test]
    fn mismatch_flags_the_row_and_keeps_the_local_checksum() {
        let mut v = in_state(VerificationState::Started);
        v.fail_mismatch("bad".into(), now(), &RetryPolicy::default(), 0)
            .unwrap();
        assert!(v.checksum_mismatch);
        assert_eq!(v.verification_checksum_mismatched.as_deref(), Some("bad"));
        assert_eq!(v.verification_failure.as_deref(), Some(CHECKSUM_MISMATCH));
        // a later success clears the flag
        v.start(now()).unwrap();
        v.succeed("good".into(), now()).unwrap();
        assert!(!v.checksum_mismatch);
        assert_eq!(v.verification_checksum_mismatched, None);
    }

    #[test]
    fn pending_and_disable_are_allowed_from_any_state() {
        for s in VerificationState::ALL {
            let mut v = in_state(s);
            v.verification_retry_count = 2;
            v.mark_pending();
            assert_eq!(v.verification_state, VerificationState::Pending);
            assert_eq!(v.verification_retry_count, 2, "the backoff is kept");
            let mut v = in_state(s);
            v.disable();
            assert_eq!(v.verification_state, VerificationState::Disabled);
        }
    }

    #[test]
    fn stuck_verification_fails_with_a_timeout_message() {
        let policy = RetryPolicy::default();
        let mut v = in_state(VerificationState::Pending);
        v.start(now()).unwrap();
        let later = now() + chrono::Duration::hours(9);
        let timeout = Duration::from_secs(8 * 3600);
        assert!(v.fail_if_stuck(
            later - chrono::Duration::hours(8),
            timeout,
            later,
            &policy,
            0
        ));
        assert_eq!(v.verification_state, VerificationState::Failed);
        assert_eq!(
            v.verification_failure.as_deref(),
            Some("Verification timed out after 8 hours")
        );
        // not stuck when recent
        let mut fresh = in_state(VerificationState::Pending);
        fresh.start(later).unwrap();
        assert!(!fresh.fail_if_stuck(
            later - chrono::Duration::hours(8),
            timeout,
            later,
            &policy,
            0
        ));
        assert_eq!(fresh.verification_state, VerificationState::Started);
    }

    #[test]
    fn due_rows_are_pending_or_failed_past_their_retry_time() {
        let mut v = in_state(VerificationState::Started);
        v.fail("x", now(), &RetryPolicy::default(), 0).unwrap();
        assert!(!v.is_due(now()));
        assert!(v.is_due(now() + chrono::Duration::seconds(16)));
        assert!(in_state(VerificationState::Pending).is_due(now()));
        assert!(!in_state(VerificationState::Succeeded).is_due(now()));
        assert!(!in_state(VerificationState::Disabled).is_due(now()));
    }
}
