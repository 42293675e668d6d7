ALTER TABLE upload_sessions DROP COLUMN token_delivered;
