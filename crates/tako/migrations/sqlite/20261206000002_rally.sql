-- The rally: events, their stamps, the scans the server verified, and who completed an event.
-- Only additions: nothing existing changes. Timestamps are microseconds since the epoch (UTC).
CREATE TABLE IF NOT EXISTS rally_events (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    stamps_required INTEGER NOT NULL,
    topic TEXT NOT NULL,
    opens_at INTEGER,
    closes_at INTEGER,
    description TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    visible INTEGER NOT NULL DEFAULT 1,
    inserted_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- code_hash: HMAC-SHA256 of a printed stamp's code under the server's rally secret (the code
-- itself is never stored). screen_salt: a screen stamp's per-stamp secret is derived from it
-- and the rally secret, so the row alone derives nothing.
CREATE TABLE IF NOT EXISTS rally_stamps (
    id TEXT PRIMARY KEY NOT NULL,
    event_id TEXT NOT NULL REFERENCES rally_events (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    booth_id TEXT,
    description TEXT,
    image_url TEXT,
    external_url TEXT,
    nsfw INTEGER NOT NULL DEFAULT 0,
    visible INTEGER NOT NULL DEFAULT 1,
    mode TEXT NOT NULL,
    code_hash TEXT UNIQUE,
    screen_salt TEXT,
    inserted_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS rally_stamps_event_idx ON rally_stamps (event_id, inserted_at, id);

-- One row per user and stamp, ever: the unique key is what makes two tabs scanning at once
-- count once.
CREATE TABLE IF NOT EXISTS rally_scans (
    id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    stamp_id TEXT NOT NULL REFERENCES rally_stamps (id) ON DELETE CASCADE,
    event_id TEXT NOT NULL REFERENCES rally_events (id) ON DELETE CASCADE,
    scanned_at INTEGER NOT NULL,
    UNIQUE (user_id, stamp_id)
);
CREATE INDEX IF NOT EXISTS rally_scans_user_idx ON rally_scans (user_id, scanned_at);
CREATE INDEX IF NOT EXISTS rally_scans_event_idx ON rally_scans (event_id, user_id);
CREATE INDEX IF NOT EXISTS rally_scans_stamp_idx ON rally_scans (stamp_id);

-- `rally-completed` is announced by whoever inserts this row: once per user and event, ever,
-- whichever node the scan reached.
CREATE TABLE IF NOT EXISTS rally_completions (
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    event_id TEXT NOT NULL REFERENCES rally_events (id) ON DELETE CASCADE,
    completed_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, event_id)
);

-- The generated rally secret when TAKO_RALLY_SECRET is not set: one row, shared by every node.
CREATE TABLE IF NOT EXISTS rally_secret (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    secret TEXT NOT NULL
);
