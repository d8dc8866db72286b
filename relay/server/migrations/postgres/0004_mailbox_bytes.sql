-- Envelope bytes stored in the device's mailbox, kept with depth, so that a mailbox is
-- bounded in bytes as well as in count (max_mailbox_bytes, MAILBOX_FULL).
ALTER TABLE devices ADD COLUMN bytes BIGINT NOT NULL DEFAULT 0;
UPDATE devices SET bytes = (
    SELECT coalesce(sum(length(e.ciphertext)), 0) FROM envelopes e
    WHERE e.account_id = devices.account_id AND e.device_id = devices.device_id
);
