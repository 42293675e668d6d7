-- Rows published together in one digest (when the hour's allowance of messages is spent) share its id.
ALTER TABLE outbox ADD COLUMN digest_id TEXT;
