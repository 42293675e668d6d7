ALTER TABLE outbox DROP COLUMN digest_id;
