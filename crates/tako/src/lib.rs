//! Tako: the realtime backend of the HoloQuest stamp rally.

pub mod accounts;
pub mod allocator;
pub mod api;
pub mod booths;
pub mod cli;
pub mod config;
pub mod dashboard;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod messages;
pub mod metrics;
pub mod prize_csv;
pub mod qr_sheet;
pub mod rally;
pub mod realtime;
pub mod server;
pub mod stamp_import;
pub mod startup;
pub mod storage;
pub mod telemetry;
