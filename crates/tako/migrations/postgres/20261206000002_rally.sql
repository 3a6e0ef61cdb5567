-- The rally: events, their stamps, the scans the server verified, and who completed an event.
-- Only additions: nothing existing changes. Timestamps hold UTC, as the users table's do.
CREATE TABLE IF NOT EXISTS rally_events (
    id text PRIMARY KEY,
    name text NOT NULL,
    stamps_required integer NOT NULL,
    topic text NOT NULL,
    opens_at timestamp(6) without time zone,
    closes_at timestamp(6) without time zone,
    description text,
    -- JSON as text: a string with NUL (\u0000) is valid JSON that jsonb refuses.
    metadata text NOT NULL DEFAULT '{}',
    visible boolean NOT NULL DEFAULT true,
    inserted_at timestamp(6) without time zone NOT NULL,
    updated_at timestamp(6) without time zone NOT NULL
);

-- code_hash: HMAC-SHA256 of a printed stamp's code under the server's rally secret (the code
-- itself is never stored). screen_salt: a screen stamp's per-stamp secret is derived from it
-- and the rally secret, so the row alone derives nothing.
CREATE TABLE IF NOT EXISTS rally_stamps (
    id uuid PRIMARY KEY,
    event_id text NOT NULL REFERENCES rally_events (id) ON DELETE CASCADE,
    name text NOT NULL,
    booth_id text,
    description text,
    image_url text,
    external_url text,
    nsfw boolean NOT NULL DEFAULT false,
    visible boolean NOT NULL DEFAULT true,
    mode text NOT NULL,
    code_hash text UNIQUE,
    screen_salt text,
    inserted_at timestamp(6) without time zone NOT NULL,
    updated_at timestamp(6) without time zone NOT NULL
);
CREATE INDEX IF NOT EXISTS rally_stamps_event_idx ON rally_stamps (event_id, inserted_at, id);

-- One row per user and stamp, ever: the unique key is what makes two tabs scanning at once
-- count once.
CREATE TABLE IF NOT EXISTS rally_scans (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    stamp_id uuid NOT NULL REFERENCES rally_stamps (id) ON DELETE CASCADE,
    event_id text NOT NULL REFERENCES rally_events (id) ON DELETE CASCADE,
    scanned_at timestamp(6) without time zone NOT NULL,
    UNIQUE (user_id, stamp_id)
);
CREATE INDEX IF NOT EXISTS rally_scans_user_idx ON rally_scans (user_id, scanned_at);
CREATE INDEX IF NOT EXISTS rally_scans_event_idx ON rally_scans (event_id, user_id);
CREATE INDEX IF NOT EXISTS rally_scans_stamp_idx ON rally_scans (stamp_id);

-- `rally-completed` is announced by whoever inserts this row: once per user and event, ever,
-- whichever node the scan reached.
CREATE TABLE IF NOT EXISTS rally_completions (
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    event_id text NOT NULL REFERENCES rally_events (id) ON DELETE CASCADE,
    completed_at timestamp(6) without time zone NOT NULL,
    PRIMARY KEY (user_id, event_id)
);

-- The generated rally secret when TAKO_RALLY_SECRET is not set: one row, shared by every node.
CREATE TABLE IF NOT EXISTS rally_secret (
    id integer PRIMARY KEY CHECK (id = 1),
    secret text NOT NULL
);
