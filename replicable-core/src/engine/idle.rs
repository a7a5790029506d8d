//! Idle backoff and wake-ups shared by the engine's loops.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::config::IdleBackoff;

/// A wake-up signal: a counter bumped when new work appears in this process (the log cursor
/// recorded intent, a sync finished and its copy awaits verification). A loop takes a
/// [`Wake::snapshot`] before it looks for work, so a bump between its look and its wait is not
/// lost.
#[derive(Debug, Clone)]
pub(crate) struct Wake {
    sender: std::sync::Arc<watch::Sender<u64>>,
}

impl Wake {
    pub(crate) fn new() -> Self {
        Self {
            sender: std::sync::Arc::new(watch::channel(0).0),
        }
    }

    /// Signals new work to every loop waiting on this.
    pub(crate) fn notify(&self) {
        self.sender.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The current position, to wait for a change after it.
    pub(crate) fn snapshot(&self) -> watch::Receiver<u64> {
        let mut receiver = self.sender.subscribe();
        receiver.mark_unchanged();
        receiver
    }
}

/// One [`Wake`] per replicable: work of one replicable wakes its own loops only, so that the
/// loops of the others do not go looking (each look is a claim, a write on SQLite).
#[derive(Debug)]
pub(crate) struct Wakes {
    by_name: std::collections::HashMap<&'static str, Wake>,
    /// Never notified: what a name the engine does not run waits on.
    never: Wake,
}

impl Wakes {
    pub(crate) fn new(names: impl IntoIterator<Item = &'static str>) -> Self {
        Self {
            by_name: names.into_iter().map(|name| (name, Wake::new())).collect(),
            never: Wake::new(),
        }
    }

    /// Signals new work of `name` (a name the engine does not run: nothing).
    pub(crate) fn notify(&self, name: &str) {
        if let Some(wake) = self.by_name.get(name) {
            wake.notify();
        }
    }

    /// Signals new work of every replicable.
    pub(crate) fn notify_all(&self) {
        for wake in self.by_name.values() {
            wake.notify();
        }
    }

    /// The current position of `name`'s wake, to wait for a change after it.
    pub(crate) fn snapshot(&self, name: &'static str) -> watch::Receiver<u64> {
        match self.by_name.get(name) {
            Some(wake) => wake.snapshot(),
            // Not run by this engine: a wake that never comes (its sender lives on, so the
            // receiver waits instead of seeing it closed).
            None => self.never.snapshot(),
        }
    }
}

/// The measured pace of a kind of work (a check, a sync): a moving average of how long one
/// takes, for loops that size their claims or their waits by it.
#[derive(Debug, Default)]
pub(crate) struct Pace {
    /// In microseconds; 0 while none has been measured.
    average_micros: std::sync::atomic::AtomicU64,
}

impl Pace {
    pub(crate) fn add(&self, took: Duration) {
        use std::sync::atomic::Ordering;
        let took = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .average_micros
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |average| {
                Some(if average == 0 {
                    took
                } else {
                    // 1/8 of the new sample: one slow piece of work does not swing it.
                    average - average / 8 + took / 8
                })
            });
    }

    /// The average so far, if any was measured.
    pub(crate) fn average(&self) -> Option<Duration> {
        match self
            .average_micros
            .load(std::sync::atomic::Ordering::Acquire)
        {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }
}

/// The idle state of one loop: the next wait doubles from `min` up to `max` while passes find
/// nothing, and starts over when one finds work.
#[derive(Debug)]
pub(crate) struct Idle {
    settings: IdleBackoff,
    next: Duration,
}

impl Idle {
    pub(crate) fn new(settings: IdleBackoff) -> Self {
        Self {
            settings,
            next: settings.min,
        }
    }

    /// A pass found work: the next idle wait starts from the minimum again.
    pub(crate) fn busy(&mut self) {
        self.next = self.settings.min;
    }

    /// Waits after an idle (or failed) pass: until the backoff elapses, `wake` changes, or the
    /// engine stops. Returns false when the engine stops.
    pub(crate) async fn wait(
        &mut self,
        wake: Option<&mut watch::Receiver<u64>>,
        cancel: &CancellationToken,
    ) -> bool {
        let wait = self.next;
        self.next = (self.next * 2)
            .min(self.settings.max)
            .max(self.settings.min);
        let woken = async {
            match wake {
                Some(receiver) => {
                    let _ = receiver.changed().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(wait) => true,
            _ = woken => {
                self.busy();
                true
            }
        }
    }
}

/// Sleeps `period`, or less if the engine stops. Returns false when it stops.
pub(crate) async fn sleep_or_stop(period: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(period) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_waits_grow_to_the_maximum_and_a_wake_cuts_them_short() {
        let mut idle = Idle::new(IdleBackoff {
            min: Duration::from_secs(1),
            max: Duration::from_secs(5),
        });
        let cancel = CancellationToken::new();
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            assert!(idle.wait(None, &cancel).await);
        }
        // 1 + 2 + 4 + 5 + 5
        assert_eq!(start.elapsed(), Duration::from_secs(17));
        let wake = Wake::new();
        let mut snapshot = wake.snapshot();
        wake.notify();
        let before = tokio::time::Instant::now();
        assert!(idle.wait(Some(&mut snapshot), &cancel).await);
        assert_eq!(before.elapsed(), Duration::ZERO, "woken at once");
        cancel.cancel();
        assert!(!idle.wait(None, &cancel).await);
    }

    #[tokio::test]
    async fn a_replicable_wake_reaches_its_own_loops_only() {
        let wakes = Wakes::new(["a", "b"]);
        let (mut a, b) = (wakes.snapshot("a"), wakes.snapshot("b"));
        wakes.notify("a");
        assert!(a.has_changed().unwrap(), "a's loops are woken");
        assert!(!b.has_changed().unwrap(), "b's loops are not");
        a.mark_unchanged();
        wakes.notify("unknown");
        assert!(!a.has_changed().unwrap() && !b.has_changed().unwrap());
        wakes.notify_all();
        assert!(a.has_changed().unwrap() && b.has_changed().unwrap());
        let mut unknown = wakes.snapshot("unknown");
        wakes.notify_all();
        let waited = tokio::time::timeout(Duration::from_millis(20), unknown.changed()).await;
        assert!(
            waited.is_err(),
            "a name the engine does not run is never woken"
        );
    }

    #[test]
    fn pace_is_a_moving_average() {
        let pace = Pace::default();
        assert_eq!(pace.average(), None);
        pace.add(Duration::from_millis(8));
        assert_eq!(pace.average(), Some(Duration::from_millis(8)));
        pace.add(Duration::from_millis(16));
        assert_eq!(pace.average(), Some(Duration::from_millis(9)));
    }
}
