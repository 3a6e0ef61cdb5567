-- Exactly-once delivery (additive: existing rows keep working).
-- idempotency_key: an operator's retry of POST /api/messages with the same key finds the message
-- it already stored instead of storing it twice.
-- claimed_at: a delivery attempt took the message (microseconds since the epoch); it is marked
-- delivered once a socket wrote it, released when none did, and claimable again after a lease
-- if the node that took it died.
ALTER TABLE messages ADD COLUMN idempotency_key TEXT;
ALTER TABLE messages ADD COLUMN claimed_at INTEGER;
CREATE UNIQUE INDEX IF NOT EXISTS messages_idempotency_idx ON messages (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
