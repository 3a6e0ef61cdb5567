//! Tako: the realtime backend of the HoloQuest stamp rally.

pub mod accounts;
pub mod allocator;
pub mod api;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod messages;
pub mod metrics;
pub mod realtime;
pub mod server;
pub mod startup;
pub mod storage;
pub mod telemetry;
