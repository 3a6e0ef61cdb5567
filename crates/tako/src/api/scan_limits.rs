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

#[cfg(test)]
mod tests {
    use super::*;

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
