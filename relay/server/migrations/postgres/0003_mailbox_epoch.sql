-- A mailbox's seq never repeats (docs/protocol.md §13.7): when a device leaves its
-- account's device list, its row goes but its counter is kept here, and a device re-added
-- under the same id numbers on from it.
CREATE TABLE retired_mailboxes (
    account_id BYTEA NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    device_id  BIGINT NOT NULL,
    next_seq   BIGINT NOT NULL,
    PRIMARY KEY (account_id, device_id)
);

-- 16 random bytes drawn whenever the device row is created or re-keyed: with the relay's
-- per-start random value it makes the mailbox epoch of AuthOk (docs/protocol.md §13.6).
ALTER TABLE devices ADD COLUMN registration BYTEA NOT NULL DEFAULT '\x00000000000000000000000000000000'::bytea;
