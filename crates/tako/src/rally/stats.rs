//! How an event is going: scans per stamp, and scans per minute over a recent window, for the
//! operators' dashboard. The store counts with SQL; this holds the window's bounds.

use super::StampId;
use crate::accounts::Timestamp;

/// The longest window of per-minute counts (one day).
pub const MAX_STATS_MINUTES: u32 = 24 * 60;

const MINUTE_MICROS: i64 = 60_000_000;

/// Whole minutes from `since` (included) to `until` (excluded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatsWindow {
    pub since: Timestamp,
    pub until: Timestamp,
}

impl StatsWindow {
    /// The last `minutes` whole minutes up to and including the one `now` is in; `minutes`
    /// is clamped to 1..=MAX_STATS_MINUTES.
    pub fn last(minutes: u32, now: Timestamp) -> StatsWindow {
        let minutes = i64::from(minutes.clamp(1, MAX_STATS_MINUTES));
        let until = (now.as_micros().div_euclid(MINUTE_MICROS) + 1) * MINUTE_MICROS;
        StatsWindow {
            since: Timestamp::from_micros(until - minutes * MINUTE_MICROS),
            until: Timestamp::from_micros(until),
        }
    }

    /// The start of the minute `at` is in.
    pub fn minute_of(at: Timestamp) -> Timestamp {
        Timestamp::from_micros(at.as_micros().div_euclid(MINUTE_MICROS) * MINUTE_MICROS)
    }
}

/// Scans of one stamp (every scan ever, not only the window's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StampScans {
    pub stamp: StampId,
    pub scans: u64,
}

/// Scans in one minute of the window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MinuteScans {
    /// The minute's start.
    pub minute: Timestamp,
    pub scans: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanStats {
    /// Every stamp of the event (hidden ones too), in creation order, with its scans.
    pub per_stamp: Vec<StampScans>,
    /// Only the minutes of the window that had scans, oldest first.
    pub per_minute: Vec<MinuteScans>,
    /// Users who completed the event.
    pub completers: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_ends_after_the_current_minute() {
        let now = Timestamp::from_micros(10 * MINUTE_MICROS + 5_000_000);
        let window = StatsWindow::last(3, now);
        assert_eq!(window.until.as_micros(), 11 * MINUTE_MICROS);
        assert_eq!(window.since.as_micros(), 8 * MINUTE_MICROS);
        assert_eq!(StatsWindow::last(0, now).since.as_micros(), 10 * MINUTE_MICROS);
        let day = StatsWindow::last(u32::MAX, now);
        assert_eq!(
            day.until.as_micros() - day.since.as_micros(),
            i64::from(MAX_STATS_MINUTES) * MINUTE_MICROS
        );
        assert_eq!(StatsWindow::minute_of(now).as_micros(), 10 * MINUTE_MICROS);
    }
}
