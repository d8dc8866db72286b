-- Cluster mode (docs/self-hosting.md): HTTP challenge nonces already answered, shared by
-- every relay node so that an answer is accepted once across the cluster. A nonce is kept
-- until its challenge expires (limits.challenge_ttl_secs); the expiry loop deletes older
-- rows. A single node keeps these in memory and never writes here.
CREATE TABLE used_challenges (
    nonce     BYTEA PRIMARY KEY NOT NULL,  -- 32 bytes
    issued_ms BIGINT NOT NULL            -- the challenge's timestamp (ms since the Unix epoch)
);
CREATE INDEX used_challenges_issued ON used_challenges (issued_ms);
