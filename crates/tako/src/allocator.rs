//! Gives memory freed after a burst back to the system.
//!
//! A connect storm on a topic with presence queues, writes and frees a lot of short-lived
//! memory (state frames, outbox queues) between long-lived allocations (sockets, presence
//! entries). glibc's malloc keeps such freed memory in its arenas for reuse: measured with the
//! channels crate's `idle_memory` example (5,000 sockets on one presence topic), the process
//! holds 8.5 KiB per socket after the joins and 5.0 KiB after `malloc_trim`. So once a second a
//! task looks at how much the arenas hold free, and trims when it is a lot; under steady load
//! the free memory is small and reused, and nothing is done. A trim is not free: it took 9 ms
//! for 69 MB free in 2 KiB pieces (the unit test's heap, release build), during which each
//! arena is locked in turn, so allocations on other threads may wait that long once after a
//! burst.

use std::time::Duration;

/// How often the arenas are looked at.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// A big heap: trim whenever the arenas hold at least this much free...
const MIN_FREE_BYTES: usize = 16 * 1024 * 1024;

/// ...and at least this fraction (in percent) of what they hold is free (both rules).
const MIN_FREE_PERCENT: usize = 25;

/// A small heap: trim once a burst is over when at least this much is free (a burst of 1,000
/// joins leaves ~2 MB free over a 15–20 MB process: 2 KiB per socket, half the budget)...
const MIN_SMALL_FREE_BYTES: usize = 1024 * 1024;

/// ...a burst being a change of at least this much memory in use since the last trim...
const BURST_BYTES: usize = 1024 * 1024;

/// ...followed by a quiet look (in use changed by less than this since the previous one)...
const QUIET_BYTES: usize = 256 * 1024;

/// ...and at most once in this many looks, whatever the load does.
const SMALL_TRIM_EVERY: u32 = 10;

/// Whether arenas holding `free` bytes free out of `total` are worth trimming at once.
pub fn worth_trimming(free: usize, total: usize) -> bool {
    free >= MIN_FREE_BYTES && mostly_free(free, total)
}

fn mostly_free(free: usize, total: usize) -> bool {
    free.saturating_mul(100) >= total.saturating_mul(MIN_FREE_PERCENT)
}

/// Decides, one look at a time, when to trim. Big heaps with a lot free are trimmed at once
/// (as before). A small heap's free memory is trimmed once after a burst: when the memory in
/// use has moved by [`BURST_BYTES`] since the last trim, then held still for a look, and at
/// most every [`SMALL_TRIM_EVERY`] looks. Under steady load the memory in use either stays
/// put (no burst since the last trim: nothing to do) or keeps moving (never quiet), so small
/// trims stay rare; a trim of a small heap walks little (see the module's figures).
#[derive(Debug, Default)]
pub struct Policy {
    /// In use at the previous look.
    last_used: Option<usize>,
    /// In use right after the last trim (or at the first look).
    used_at_trim: Option<usize>,
    /// Looks since the last small trim (saturating).
    since_small: u32,
}

impl Policy {
    pub fn new() -> Policy {
        Policy { since_small: SMALL_TRIM_EVERY, ..Policy::default() }
    }

    /// One look: the arenas hold `free` bytes free and `used` in use. True: trim now.
    pub fn look(&mut self, free: usize, used: usize) -> bool {
        let total = free.saturating_add(used);
        let previous = self.last_used.replace(used);
        let at_trim = *self.used_at_trim.get_or_insert(used);
        self.since_small = self.since_small.saturating_add(1);
        let trim = if worth_trimming(free, total) {
            true
        } else {
            let burst = used.abs_diff(at_trim) >= BURST_BYTES;
            let quiet = previous.is_some_and(|p| used.abs_diff(p) < QUIET_BYTES);
            let small = burst
                && quiet
                && self.since_small >= SMALL_TRIM_EVERY
                && free >= MIN_SMALL_FREE_BYTES
                && mostly_free(free, total);
            if small {
                self.since_small = 0;
            }
            small
        };
        if trim {
            self.used_at_trim = Some(used);
        }
        trim
    }
}

/// Checks every [`INTERVAL`] until the runtime stops. A no-op where the allocator is not glibc's.
pub fn spawn_trimmer() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async {
        let mut ticks = tokio::time::interval(INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let policy = std::sync::Arc::new(std::sync::Mutex::new(Policy::new()));
        loop {
            ticks.tick().await;
            // Walks the arenas under their locks: a few milliseconds, off the runtime's workers.
            let policy = policy.clone();
            let trimmed = tokio::task::spawn_blocking(move || {
                let mut policy = policy.lock().unwrap_or_else(|e| e.into_inner());
                glibc::trim_if_worth_it(&mut policy)
            })
            .await;
            if let Ok(Some(freed)) = trimmed {
                tracing::debug!(freed_bytes = freed, "allocator trimmed");
            }
        }
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    /// Trims when `policy` says so; the bytes the arenas held free before, if it did.
    pub fn trim_if_worth_it(policy: &mut super::Policy) -> Option<usize> {
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        let info = unsafe { libc::mallinfo2() };
        let (free, used) = (info.fordblks, info.uordblks);
        if !policy.look(free, used) {
            return None;
        }
        // SAFETY: malloc_trim only returns free memory to the system; nothing in use moves.
        unsafe { libc::malloc_trim(0) };
        Some(free)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_a_lot_of_free_memory() {
        const MIB: usize = 1024 * 1024;
        assert!(!worth_trimming(0, 100 * MIB));
        assert!(!worth_trimming(8 * MIB, 10 * MIB), "small heaps are left alone");
        assert!(
            !worth_trimming(20 * MIB, 200 * MIB),
            "a little free in a big heap is reuse, not waste"
        );
        assert!(worth_trimming(40 * MIB, 100 * MIB));
        assert!(worth_trimming(usize::MAX, usize::MAX), "no overflow");
    }

    #[test]
    fn a_small_heap_is_trimmed_once_after_a_burst_and_not_under_steady_load() {
        const MIB: usize = 1024 * 1024;
        let mut policy = Policy::new();
        // Idle at 10 MiB in use, 1 MiB free: nothing happened, nothing to trim.
        for _ in 0..20 {
            assert!(!policy.look(MIB, 10 * MIB));
        }
        // A burst: in use climbs to 16 MiB, then falls to 13 MiB with 5 MiB free.
        assert!(!policy.look(MIB, 16 * MIB));
        assert!(!policy.look(5 * MIB, 13 * MIB), "still moving: not quiet yet");
        assert!(policy.look(5 * MIB, 13 * MIB), "quiet after the burst: trim");
        // Idle again: that free memory was trimmed already.
        for _ in 0..30 {
            assert!(!policy.look(5 * MIB, 13 * MIB));
        }
        // Steady churn of ±2 MiB every look: never quiet, never trimmed.
        for i in 0..30 {
            assert!(!policy.look(4 * MIB, if i % 2 == 0 { 15 * MIB } else { 13 * MIB }));
        }
        // Churn that is sometimes quiet: at most one small trim per SMALL_TRIM_EVERY looks.
        let mut policy = Policy::new();
        let used = [10, 12, 12, 14, 14, 12, 12, 14, 14, 12, 12, 14, 14, 12, 12];
        let trims: Vec<usize> =
            (0..60).filter(|&i| policy.look(4 * MIB, used[i % used.len()] * MIB)).collect();
        assert!(!trims.is_empty());
        assert!(trims.windows(2).all(|w| w[1] - w[0] >= SMALL_TRIM_EVERY as usize), "{trims:?}");
        // Little free, or little of the heap free: never.
        let mut policy = Policy::new();
        for used in [10, 16, 13, 13, 13] {
            assert!(!policy.look(MIB / 2, used * MIB));
        }
        let mut policy = Policy::new();
        for used in [40, 60, 50, 50, 50] {
            assert!(!policy.look(4 * MIB, used * MIB));
        }
        // A big heap with a lot free: at once, as before.
        assert!(Policy::new().look(40 * MIB, 60 * MIB));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_memory_goes_back_to_the_system() {
        fn rss_bytes() -> usize {
            let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
            statm.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 4096
        }
        // Many small blocks (below glibc's mmap threshold), one in eight kept alive, so what is
        // freed lies between live blocks all over the heap and cannot just shrink its top.
        let blocks: Vec<Vec<u8>> = (0..40_000).map(|i| vec![i as u8; 2048]).collect();
        let kept: Vec<Vec<u8>> = blocks.into_iter().step_by(8).collect();
        let before = rss_bytes();
        let freed =
            glibc::trim_if_worth_it(&mut Policy::new()).expect("40 MB freed is worth trimming");
        assert!(freed >= 16 * 1024 * 1024);
        let after = rss_bytes();
        assert!(after + 16 * 1024 * 1024 < before, "rss {before} -> {after}");
        assert_eq!(kept.len(), 5_000);
        assert!(
            kept.iter().enumerate().all(|(i, b)| b[0] == (i * 8) as u8),
            "what is in use is untouched"
        );
    }
}
