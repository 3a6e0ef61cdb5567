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

/// Trim when the arenas hold at least this much free...
const MIN_FREE_BYTES: usize = 16 * 1024 * 1024;

/// ...and at least this fraction (in percent) of what they hold is free.
const MIN_FREE_PERCENT: usize = 25;

/// Whether arenas holding `free` bytes free out of `total` are worth trimming.
pub fn worth_trimming(free: usize, total: usize) -> bool {
    free >= MIN_FREE_BYTES && free.saturating_mul(100) >= total.saturating_mul(MIN_FREE_PERCENT)
}

/// Checks every [`INTERVAL`] until the runtime stops. A no-op where the allocator is not glibc's.
pub fn spawn_trimmer() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async {
        let mut ticks = tokio::time::interval(INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            // Walks the arenas under their locks: a few milliseconds, off the runtime's workers.
            let trimmed = tokio::task::spawn_blocking(glibc::trim_if_worth_it).await;
            if let Ok(Some(freed)) = trimmed {
                tracing::debug!(freed_bytes = freed, "allocator trimmed");
            }
        }
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    /// Trims when [`super::worth_trimming`]; the bytes the arenas held free before, if it did.
    pub fn trim_if_worth_it() -> Option<usize> {
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        let info = unsafe { libc::mallinfo2() };
        let (free, used) = (info.fordblks, info.uordblks);
        if !super::worth_trimming(free, free + used) {
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
        let freed = glibc::trim_if_worth_it().expect("40 MB freed is worth trimming");
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
