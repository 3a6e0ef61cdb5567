-- Users. Timestamps are microseconds since the Unix epoch (UTC), so they compare and move
-- forward with plain integer arithmetic.
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY NOT NULL,
    nickname TEXT,
    stamps_collected INTEGER NOT NULL DEFAULT 0,
    inserted_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    -- when stamps_collected last changed: the leaderboard's tie-break ("who got there first")
    stamps_changed_at INTEGER NOT NULL
);

CREATE INDEX IF NOT EXISTS users_leaderboard_idx
    ON users (stamps_collected DESC, stamps_changed_at ASC, id)
    WHERE nickname IS NOT NULL;

CREATE INDEX IF NOT EXISTS users_inserted_at_idx ON users (inserted_at, id);
