-- Messages operators send to one user. Kept until delivered to a live socket, and until they
-- expire either way. seq orders a user's messages.
CREATE TABLE IF NOT EXISTS messages (
    id uuid PRIMARY KEY,
    seq bigserial NOT NULL UNIQUE,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    body jsonb NOT NULL,
    inserted_at timestamp(6) without time zone NOT NULL,
    expires_at timestamp(6) without time zone NOT NULL,
    delivered_at timestamp(6) without time zone
);

-- A join asks "what is waiting for this user, in order": answered from this index alone,
-- however many delivered messages there are.
CREATE INDEX IF NOT EXISTS messages_pending_idx ON messages (user_id, seq) WHERE delivered_at IS NULL;
CREATE INDEX IF NOT EXISTS messages_expires_idx ON messages (expires_at);
