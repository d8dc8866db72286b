-- Profiles (docs/protocol.md §13.3): per account one encrypted profile, opaque to the relay,
-- and its version. Clients derive the version from the profile key they share with their
-- contacts (§15.9); the relay never sees the key or the profile. Whoever presents the
-- stored version may fetch the ciphertext; an upload replaces the row, so after the owner
-- rotates the key the old version no longer finds it. One row per account at most, each
-- ciphertext at most 32 KiB (the codec's bound): storage is bounded by the accounts.
CREATE TABLE profiles (
    account_id BLOB PRIMARY KEY NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    version    BLOB NOT NULL,               -- 32 bytes
    ciphertext BLOB NOT NULL,               -- 1..=32768 bytes
    updated_at INTEGER NOT NULL             -- seconds (rounded down to 60) of the last upload
) STRICT;
