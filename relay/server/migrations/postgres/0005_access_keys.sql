-- Access keys (docs/protocol.md §13.8): the account's access verifier, SHA-256 of the key
-- its contacts present on a send, and whether it takes sends without it (message requests).
-- An account with no verifier takes every send as a contact's.
ALTER TABLE accounts ADD COLUMN access_verifier BYTEA;
ALTER TABLE accounts ADD COLUMN accept_requests BIGINT NOT NULL DEFAULT 1;
-- Envelopes stored without the recipient's access key, and their count and bytes per
-- mailbox, bounded apart from the mailbox's own bounds (max_request_depth, _bytes).
ALTER TABLE envelopes ADD COLUMN request BIGINT NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN requests BIGINT NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN request_bytes BIGINT NOT NULL DEFAULT 0;
