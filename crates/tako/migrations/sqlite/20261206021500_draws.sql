-- Prize draws of an event: when, how many were asked for, and who won. A user wins at most once
-- per event (the primary key), so drawing again draws other people and no draw is re-rolled.
CREATE TABLE IF NOT EXISTS rally_draws (
    id TEXT PRIMARY KEY NOT NULL,
    event_id TEXT NOT NULL REFERENCES rally_events (id) ON DELETE CASCADE,
    drawn_at INTEGER NOT NULL,
    requested INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS rally_draws_event_idx ON rally_draws (event_id, drawn_at);
CREATE TABLE IF NOT EXISTS rally_draw_winners (
    draw_id TEXT NOT NULL REFERENCES rally_draws (id) ON DELETE CASCADE,
    event_id TEXT NOT NULL REFERENCES rally_events (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (event_id, user_id)
);
