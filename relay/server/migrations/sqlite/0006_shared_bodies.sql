-- Shared bodies (docs/protocol.md §13.7): a Send's body, the bytes every recipient's
-- envelope ends with, is stored once here, and every envelope row of the send keeps only
-- its head (in `ciphertext`), the body's id and its length:
--   envelope = envelopes.ciphertext ‖ bodies.body        (no body when body_id is NULL)
-- A send with an empty body (every 1:1 send) stores no body row. Rows stored before this
-- migration have no body and keep working.
--
-- `body_len` lets byte accounting, acks and expiry work without reading the body. There
-- is no foreign key: a body row is deleted by the transaction that deletes its last
-- envelope row (an ack, expiry, or the device's removal or re-keying), and the expiry run
-- deletes any expired body no row references. AUTOINCREMENT: an id is never reused.
CREATE TABLE bodies (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    expires_at INTEGER NOT NULL,            -- seconds; that of the send's envelopes
    body       BLOB NOT NULL
) STRICT;

CREATE INDEX bodies_by_expiry ON bodies (expires_at);

ALTER TABLE envelopes ADD COLUMN body_id INTEGER;
ALTER TABLE envelopes ADD COLUMN body_len INTEGER NOT NULL DEFAULT 0;

-- "Does any envelope still reference this body?" Partial: 1:1 rows (no body) add nothing.
CREATE INDEX envelopes_by_body ON envelopes (body_id) WHERE body_id IS NOT NULL;
