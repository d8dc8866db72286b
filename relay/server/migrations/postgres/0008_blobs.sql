-- The blob store (docs/protocol.md §16.4): encrypted attachments, uploaded with a
-- single-use token and fetched by id. A blob row names no account and no device: only its
-- id, length, progress and times. Every table is bounded: blobs by max_total_bytes (the
-- running total in blob_totals), issuer keys to the current and previous epoch, the spent
-- set to the tokens of those epochs, quota rows to one per device and day (older days are
-- deleted by the collector).
CREATE TABLE blob_issuers (
    epoch  BIGINT PRIMARY KEY NOT NULL,    -- floor(unix seconds / token_epoch_secs)
    secret BYTEA NOT NULL                    -- the issuer scalar, 32 bytes
);

CREATE TABLE blob_spent (
    token_hash BYTEA PRIMARY KEY NOT NULL,   -- SHA-256 (32 bytes) of the redeemed 64-byte token
    epoch      BIGINT NOT NULL             -- the issuer epoch it was redeemed under
);
CREATE INDEX blob_spent_by_epoch ON blob_spent (epoch);

CREATE TABLE blob_quota (
    account_id BYTEA NOT NULL,
    device_id  BIGINT NOT NULL,
    day        BIGINT NOT NULL,            -- floor(unix ms / 86 400 000), UTC
    issued     BIGINT NOT NULL,            -- tokens issued to the device that day
    PRIMARY KEY (account_id, device_id, day)
);
CREATE INDEX blob_quota_by_day ON blob_quota (day);

CREATE TABLE blobs (
    id           BYTEA PRIMARY KEY NOT NULL, -- 32 random bytes
    length       BIGINT NOT NULL,          -- 1..=max_blob_len
    received     BIGINT NOT NULL,          -- bytes stored durably, 0..=length
    created_ms   BIGINT NOT NULL,
    completed_ms BIGINT,                   -- NULL while incomplete
    expires_ms   BIGINT NOT NULL           -- upload deadline, then completed_ms + blob_ttl
);
CREATE INDEX blobs_by_expiry ON blobs (expires_ms);

-- One row: the sum of the lengths of all blob rows, kept in the transactions that insert
-- and delete them, so that the total is checked without a scan.
CREATE TABLE blob_totals (
    id    INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    bytes BIGINT NOT NULL
);
INSERT INTO blob_totals (id, bytes) VALUES (1, 0);
