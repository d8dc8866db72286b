-- A mailbox's seq never repeats (docs/protocol.md §13.7): when a device leaves its
-- account's device list, its row goes but its counter is kept here, and a device re-added
-- under the same id numbers on from it.
CREATE TABLE retired_mailboxes (
    account_id BLOB NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    device_id  INTEGER NOT NULL,
    next_seq   INTEGER NOT NULL,
    PRIMARY KEY (account_id, device_id)
) STRICT;

-- 16 random bytes drawn whenever the device row is created or re-keyed: with the relay's
-- per-start random value it makes the mailbox epoch of AuthOk (docs/protocol.md §13.6).
ALTER TABLE devices ADD COLUMN registration BLOB NOT NULL DEFAULT x'00000000000000000000000000000000';
