-- Exactly-once delivery (additive: existing rows keep working).
-- idempotency_key: an operator's retry of POST /api/messages with the same key finds the message
-- it already stored instead of storing it twice.
-- claimed_at: a delivery attempt took the message; it is marked delivered once a socket wrote
-- it, released when none did, and claimable again after a lease if the node that took it died.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS idempotency_key text;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS claimed_at timestamp(6) without time zone;
CREATE UNIQUE INDEX IF NOT EXISTS messages_idempotency_idx ON messages (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
