-- The original Tako (Phoenix + Ash) created this table with Ecto; on such a database the
-- CREATE is a no-op and only additions follow. Nothing here drops or rewrites existing data.
CREATE TABLE IF NOT EXISTS users (
    id uuid PRIMARY KEY,
    nickname text,
    stamps_collected bigint DEFAULT 0,
    inserted_at timestamp(6) without time zone NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    updated_at timestamp(6) without time zone NOT NULL DEFAULT (now() AT TIME ZONE 'utc')
);

-- When stamps_collected last changed: the leaderboard's tie-break. Existing rows take their
-- updated_at, the best estimate there is; rows the original inserts later get the default.
ALTER TABLE users ADD COLUMN IF NOT EXISTS stamps_changed_at timestamp(6) without time zone
    DEFAULT (now() AT TIME ZONE 'utc');
UPDATE users SET stamps_changed_at = updated_at WHERE stamps_changed_at IS NULL;

CREATE INDEX IF NOT EXISTS users_leaderboard_idx
    ON users (stamps_collected DESC NULLS LAST, stamps_changed_at ASC NULLS LAST, id)
    WHERE nickname IS NOT NULL;

CREATE INDEX IF NOT EXISTS users_inserted_at_idx ON users (inserted_at, id);
