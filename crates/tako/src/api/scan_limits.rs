//! Failed scans per user and per client address: guessing codes must be hopeless even where
//! a code is short-lived.
//!
//! Only failures count (a convention's Wi-Fi puts thousands of honest visitors behind one
//! address), but once a key is over its budget *every* scan of it is refused until the budget
//! refills, right guesses included. `governor` cannot tell whether a key would be refused
//! without spending from it, so this is a small GCRA of our own: per key, the theoretical
//! time at which its budget is whole again.

use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys remembered before the ones with a whole budget are forgotten (and, under a flood of
/// distinct keys, all of them: memory stays bounded).
const MAX_KEYS: usize = 10_000;

pub struct FailureLimiter<K> {
    /// One failure's share of the budget.
    interval: Duration,
    /// How many failures fit at once.
    burst: u32,
    keys: Mutex<HashMap<K, Instant>>,
}

impl<K: Eq + Hash + Clone> FailureLimiter<K> {
    /// `per_minute` failures per minute, all at once at most; `None` for 0 (no limit).
    pub fn per_minute(per_minute: u32) -> Option<FailureLimiter<K>> {
        let n = NonZeroU32::new(per_minute)?;
        Some(FailureLimiter {
            interval: Duration::from_secs(60) / n.get(),
            burst: n.get(),
            keys: Mutex::new(HashMap::new()),
        })
    }

    fn tolerance(&self) -> Duration {
        self.interval * (self.burst - 1)
    }

    /// `Some(wait)` while `key` has no budget left.
    pub fn blocked(&self, key: &K, now: Instant) -> Option<Duration> {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let tat = *keys.get(key)?;
        let ahead = tat.checked_duration_since(now)?;
        ahead.checked_sub(self.tolerance()).filter(|wait| !wait.is_zero())
    }

    /// Spends one failure of `key`'s budget.
    pub fn fail(&self, key: &K, now: Instant) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if keys.len() >= MAX_KEYS && !keys.contains_key(key) {
            keys.retain(|_, tat| *tat > now);
            if keys.len() >= MAX_KEYS {
                keys.clear();
            }
        }
        let tat = keys.entry(key.clone()).or_insert(now);
        *tat = (*tat).max(now) + self.interval;
    }
}

/// Turns for work that queues for a small resource (scans for the database pool): at most
/// `at_once` in progress, the others served first come first served, each waiting at most
/// `wait` for its turn.
pub struct Turns {
    permits: tokio::sync::Semaphore,
    at_once: usize,
    wait: Duration,
}

impl Turns {
    pub fn new(at_once: usize, wait: Duration) -> Turns {
        Turns { permits: tokio::sync::Semaphore::new(at_once), at_once, wait }
    }

    /// A turn, held until dropped; `None` when none came within the wait.
    pub async fn take(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        tokio::time::timeout(self.wait, self.permits.acquire()).await.ok()?.ok()
    }

    pub fn at_once(&self) -> usize {
        self.at_once
    }

    pub fn wait(&self) -> Duration {
        self.wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn turns_are_bounded_served_in_order_and_refused_after_the_wait() {
        let wait = Duration::from_millis(200);
        let turns = std::sync::Arc::new(Turns::new(2, wait));
        let (a, b) = (turns.take().await.unwrap(), turns.take().await.unwrap());
        // A third waits; it is refused once the wait is over.
        let started = Instant::now();
        assert!(turns.take().await.is_none());
        assert!(started.elapsed() >= wait);
        // Waiting ones are served in the order they came when turns are given back.
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waiting = Vec::new();
        for n in 0..3 {
            let (turns, order) = (turns.clone(), order.clone());
            waiting.push(tokio::spawn(async move {
                let turn = turns.take().await;
                order.lock().unwrap().push(n);
                tokio::time::sleep(Duration::from_millis(10)).await;
                turn.is_some()
            }));
            // Each is queued before the next one starts.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(a);
        drop(b);
        for w in waiting {
            assert!(w.await.unwrap(), "every waiting one got its turn");
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
    }

    #[test]
    fn the_budget_is_spent_by_failures_and_refills() {
        let limiter = FailureLimiter::per_minute(3).unwrap();
        let t0 = Instant::now();
        assert_eq!(limiter.blocked(&"a", t0), None);
        for _ in 0..3 {
            assert_eq!(limiter.blocked(&"a", t0), None);
            limiter.fail(&"a", t0);
        }
        let wait = limiter.blocked(&"a", t0).expect("over budget");
        assert_eq!(wait, Duration::from_secs(20));
        assert_eq!(limiter.blocked(&"b", t0), None, "keys are separate");
        assert!(limiter.blocked(&"a", t0 + Duration::from_secs(19)).is_some());
        assert_eq!(limiter.blocked(&"a", t0 + Duration::from_secs(20)), None);
        assert!(FailureLimiter::<&str>::per_minute(0).is_none());
    }

    #[test]
    fn memory_stays_bounded() {
        let limiter = FailureLimiter::per_minute(1).unwrap();
        let now = Instant::now();
        for key in 0..(MAX_KEYS + 10) {
            limiter.fail(&key, now);
        }
        assert!(limiter.keys.lock().unwrap().len() <= MAX_KEYS);
    }
}
