-- Mailbox counters kept on the device row, so enqueue and ack never count or scan a mailbox:
-- depth = envelopes currently stored; acked_seq = the highest seq the device acknowledged.
ALTER TABLE devices ADD COLUMN depth INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN acked_seq INTEGER NOT NULL DEFAULT 0;
UPDATE devices SET depth = (
    SELECT count(*) FROM envelopes e WHERE e.account_id = devices.account_id AND e.device_id = devices.device_id
);
