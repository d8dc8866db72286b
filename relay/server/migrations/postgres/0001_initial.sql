-- Sotto relay schema (PostgreSQL). No table has a sender column: the relay does not know senders.

CREATE TABLE accounts (
    account_id  BYTEA PRIMARY KEY NOT NULL,  -- 32 bytes
    version     BIGINT NOT NULL,           -- device list version; only grows
    device_list BYTEA NOT NULL               -- the AK-signed device list, as uploaded
);

-- One row per device of the current device list; also the device's mailbox counter.
CREATE TABLE devices (
    account_id   BYTEA NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    device_id    BIGINT NOT NULL,
    signing_key  BYTEA NOT NULL,             -- DSK public key
    identity_key BYTEA NOT NULL,             -- IK public key
    next_seq     BIGINT NOT NULL DEFAULT 1,
    PRIMARY KEY (account_id, device_id)
);

-- kind: 1 signed X25519, 2 one-time X25519, 3 one-time ML-KEM, 4 last-resort ML-KEM
CREATE TABLE prekeys (
    id         BIGSERIAL PRIMARY KEY,
    account_id BYTEA NOT NULL,
    device_id  BIGINT NOT NULL,
    kind       BIGINT NOT NULL,
    key_id     BIGINT NOT NULL,
    record     BYTEA NOT NULL,               -- kind ‖ id ‖ public key ‖ signature
    UNIQUE (account_id, device_id, kind, key_id),
    FOREIGN KEY (account_id, device_id) REFERENCES devices (account_id, device_id) ON DELETE CASCADE
);

CREATE INDEX prekeys_by_device ON prekeys (account_id, device_id, kind, id);

-- The mailbox of a device: seq strictly increasing and gap-free per (account_id, device_id).
CREATE TABLE envelopes (
    account_id  BYTEA NOT NULL,
    device_id   BIGINT NOT NULL,
    seq         BIGINT NOT NULL,
    received_at BIGINT NOT NULL,           -- seconds, coarse
    expires_at  BIGINT NOT NULL,           -- seconds
    ciphertext  BYTEA NOT NULL,
    PRIMARY KEY (account_id, device_id, seq),
    FOREIGN KEY (account_id, device_id) REFERENCES devices (account_id, device_id) ON DELETE CASCADE
);

CREATE INDEX envelopes_by_expiry ON envelopes (expires_at);

CREATE TABLE push_registrations (
    account_id BYTEA NOT NULL,
    device_id  BIGINT NOT NULL,
    provider   BIGINT NOT NULL,
    token      BYTEA NOT NULL,
    PRIMARY KEY (account_id, device_id),
    FOREIGN KEY (account_id, device_id) REFERENCES devices (account_id, device_id) ON DELETE CASCADE
);
