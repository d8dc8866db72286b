-- Sotto relay schema (SQLite). No table has a sender column: the relay does not know senders.

CREATE TABLE accounts (
    account_id  BLOB PRIMARY KEY NOT NULL,  -- 32 bytes
    version     INTEGER NOT NULL,           -- device list version; only grows
    device_list BLOB NOT NULL               -- the AK-signed device list, as uploaded
) STRICT;

-- One row per device of the current device list; also the device's mailbox counter.
CREATE TABLE devices (
    account_id   BLOB NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    device_id    INTEGER NOT NULL,
    signing_key  BLOB NOT NULL,             -- DSK public key
    identity_key BLOB NOT NULL,             -- IK public key
    next_seq     INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (account_id, device_id)
) STRICT;

-- kind: 1 signed X25519, 2 one-time X25519, 3 one-time ML-KEM, 4 last-resort ML-KEM
CREATE TABLE prekeys (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id BLOB NOT NULL,
    device_id  INTEGER NOT NULL,
    kind       INTEGER NOT NULL,
    key_id     INTEGER NOT NULL,
    record     BLOB NOT NULL,               -- kind ‖ id ‖ public key ‖ signature
    UNIQUE (account_id, device_id, kind, key_id),
    FOREIGN KEY (account_id, device_id) REFERENCES devices (account_id, device_id) ON DELETE CASCADE
) STRICT;

CREATE INDEX prekeys_by_device ON prekeys (account_id, device_id, kind, id);

-- The mailbox of a device: seq strictly increasing and gap-free per (account_id, device_id).
CREATE TABLE envelopes (
    account_id  BLOB NOT NULL,
    device_id   INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    received_at INTEGER NOT NULL,           -- seconds, coarse
    expires_at  INTEGER NOT NULL,           -- seconds
    ciphertext  BLOB NOT NULL,
    PRIMARY KEY (account_id, device_id, seq),
    FOREIGN KEY (account_id, device_id) REFERENCES devices (account_id, device_id) ON DELETE CASCADE
) STRICT;

CREATE INDEX envelopes_by_expiry ON envelopes (expires_at);

CREATE TABLE push_registrations (
    account_id BLOB NOT NULL,
    device_id  INTEGER NOT NULL,
    provider   INTEGER NOT NULL,
    token      BLOB NOT NULL,
    PRIMARY KEY (account_id, device_id),
    FOREIGN KEY (account_id, device_id) REFERENCES devices (account_id, device_id) ON DELETE CASCADE
) STRICT;
