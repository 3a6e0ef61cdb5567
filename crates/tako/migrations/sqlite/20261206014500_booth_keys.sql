-- A screen booth's link: the keyed hash (HMAC under the rally secret) of the booth key that lets
-- a page read that one stamp's current code. One per stamp; a new key replaces the old one, and
-- NULL means revoked (or never made).
ALTER TABLE rally_stamps ADD COLUMN booth_key_hash TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS rally_stamps_booth_key_idx ON rally_stamps (booth_key_hash);
