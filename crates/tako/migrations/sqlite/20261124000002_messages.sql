-- Messages operators send to one user. Kept until delivered to a live socket, and until they
-- expire either way. seq orders a user's messages; timestamps are microseconds since the epoch.
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    body TEXT NOT NULL,
    inserted_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    delivered_at INTEGER
);

-- A join asks "what is waiting for this user, in order": answered from this index alone,
-- however many delivered messages there are.
CREATE INDEX IF NOT EXISTS messages_pending_idx ON messages (user_id, seq) WHERE delivered_at IS NULL;
CREATE INDEX IF NOT EXISTS messages_expires_idx ON messages (expires_at);
