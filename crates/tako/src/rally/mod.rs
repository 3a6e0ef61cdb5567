//! The rally: events, their stamps, and scans the server verified. Nothing here knows HTTP or
//! sockets; the API checks requests into these types and announces what a scan returns.

mod codes;
mod draw;
mod event;
mod postgres;
mod scan;
mod sqlite;
mod stamp;
mod stats;
mod store;

pub use codes::{
    booth_key_well_formed, qr_content, CodeStep, RallySecret, StampCode, MAX_SCANNED_CHARS,
    MIN_SECRET_CHARS,
};
pub use draw::{Completer, Draw, Winner, MAX_WINNERS};
pub use event::{Event, EventChanges, EventDraft, EventId, RallyError, MAX_EVENT_ID};
pub use scan::{CurrentCode, Progress, Rally, ScanError, ScanOutcome};
pub use stamp::{Stamp, StampChanges, StampDraft, StampFields, StampId, StampMode, StampSecret};
pub use stats::{MinuteScans, ScanStats, StampScans, StatsWindow, MAX_STATS_MINUTES};
pub use store::{Deletion, RallyStore, Recorded, Scan};
