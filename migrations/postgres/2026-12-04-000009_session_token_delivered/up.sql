-- A stored session's delete token is handed to a client once: the first completion answered to a client
-- (the bucket's event may have done the work) shows it and sets this; replays answer without it.
ALTER TABLE upload_sessions ADD COLUMN token_delivered BOOLEAN NOT NULL DEFAULT FALSE;
