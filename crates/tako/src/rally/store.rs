//! The rally's storage interface; the SQLite and PostgreSQL backends are beside it.

use async_trait::async_trait;
use uuid::Uuid;

use super::{Completer, Draw, Event, EventId, ScanStats, Stamp, StampId, StatsWindow};
use crate::accounts::{LeaderboardEntry, Timestamp, UserId};
use crate::storage::StoreError;

/// One verified scan: `user` was at `stamp`'s booth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    pub id: Uuid,
    pub user_id: UserId,
    pub stamp_id: StampId,
    pub event_id: EventId,
    pub scanned_at: Timestamp,
}

/// What recording a scan found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// The stored scan: the one just made, or the one the user already had.
    pub scan: Scan,
    /// Whether this call made it (false: the user already had this stamp).
    pub new: bool,
    /// The user's stamps in the event, this one included.
    pub collected: u64,
}

/// What a delete did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deletion {
    Deleted,
    NotFound,
    /// Scans exist and `force` was not given: nothing was deleted.
    HasScans,
}

#[async_trait]
pub trait RallyStore: Send + Sync + 'static {
    /// The stored rally secret; `generated` is stored first when there is none yet (the first
    /// node to ask wins, every node reads the same).
    async fn rally_secret(&self, generated: &str) -> Result<String, StoreError>;

    /// False when an event with this id exists.
    async fn create_event(&self, event: &Event) -> Result<bool, StoreError>;
    async fn event(&self, id: &EventId) -> Result<Option<Event>, StoreError>;
    /// By opening time (unset first), then id; hidden ones too when asked. At most `limit`.
    async fn events(&self, include_hidden: bool, limit: u32) -> Result<Vec<Event>, StoreError>;
    /// The event's id when exactly one event exists.
    async fn sole_event(&self) -> Result<Option<EventId>, StoreError>;
    /// Writes every field of `event` (found by id); false when it is gone.
    async fn save_event(&self, event: &Event) -> Result<bool, StoreError>;
    /// With `force`, its stamps, scans and completions go too.
    async fn delete_event(&self, id: &EventId, force: bool) -> Result<Deletion, StoreError>;

    /// False when its event is gone.
    async fn create_stamp(&self, stamp: &Stamp) -> Result<bool, StoreError>;
    async fn stamp(&self, id: StampId) -> Result<Option<Stamp>, StoreError>;
    /// The printed stamp whose code has this keyed hash.
    async fn stamp_by_code_hash(&self, hash: &str) -> Result<Option<Stamp>, StoreError>;
    /// The event's stamps in creation order; hidden ones too when asked.
    async fn stamps(&self, event: &EventId, include_hidden: bool)
        -> Result<Vec<Stamp>, StoreError>;
    /// Writes the public fields of `stamp` (found by id); false when it is gone.
    async fn save_stamp(&self, stamp: &Stamp) -> Result<bool, StoreError>;
    /// Sets (replacing any earlier one) or clears the keyed hash of the stamp's booth key;
    /// false when the stamp is gone.
    async fn set_booth_key(&self, id: StampId, hash: Option<&str>) -> Result<bool, StoreError>;
    /// The stamp whose booth key has this keyed hash.
    async fn stamp_by_booth_key(&self, hash: &str) -> Result<Option<Stamp>, StoreError>;
    /// With `force`, its scans go too.
    async fn delete_stamp(&self, id: StampId, force: bool) -> Result<Deletion, StoreError>;

    /// Records `scan` unless the user already has its stamp (one row per user and stamp, also
    /// under concurrent calls), and counts the user's stamps in the event.
    async fn record_scan(&self, scan: &Scan) -> Result<Recorded, StoreError>;
    /// Marks the user as having completed the event; true only for the call that did it.
    async fn complete(
        &self,
        user: UserId,
        event: &EventId,
        at: Timestamp,
    ) -> Result<bool, StoreError>;
    /// The user's scans, newest first, at most `limit`.
    async fn scans(&self, user: UserId, limit: u32) -> Result<Vec<Scan>, StoreError>;
    /// How many stamps of `event` the user has.
    async fn collected(&self, user: UserId, event: &EventId) -> Result<u64, StoreError>;
    /// Users with a nickname ranked by their stamps in `event`; equal counts by who reached
    /// theirs first.
    async fn event_leaderboard(
        &self,
        event: &EventId,
        limit: u32,
    ) -> Result<Vec<LeaderboardEntry>, StoreError>;

    /// Who completed `event`, in the order they did, at most `limit`.
    async fn completers(&self, event: &EventId, limit: u32) -> Result<Vec<Completer>, StoreError>;
    /// Who completed `event` and was not drawn in it before.
    async fn undrawn_completers(&self, event: &EventId) -> Result<Vec<UserId>, StoreError>;
    /// Records the draw and its winners at once; false (nothing recorded) when one of them was
    /// drawn by another draw meanwhile.
    async fn record_draw(&self, draw: &Draw) -> Result<bool, StoreError>;
    /// The event's draws, oldest first, with their winners (and their nicknames).
    async fn draws(&self, event: &EventId) -> Result<Vec<Draw>, StoreError>;

    /// Scans per stamp of `event` (all time), scans per minute within `window` (minutes with
    /// none left out) and how many completed it; counted by the database.
    async fn scan_stats(
        &self,
        event: &EventId,
        window: StatsWindow,
    ) -> Result<ScanStats, StoreError>;
}
