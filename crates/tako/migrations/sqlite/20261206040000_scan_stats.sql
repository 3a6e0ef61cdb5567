-- The dashboard's scans per minute of one event (GET /api/json/events/{id}/stats) reads a
-- recent window of it by time.
CREATE INDEX IF NOT EXISTS rally_scans_event_time_idx ON rally_scans (event_id, scanned_at);
