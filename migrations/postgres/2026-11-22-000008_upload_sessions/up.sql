-- Direct uploads: a client asks for a session, sends its file straight to the store at incoming/<id>, then
-- completes the session (or the bucket's event does). The row claims the processing, so it happens once.
CREATE TABLE upload_sessions (
    id TEXT PRIMARY KEY,
    -- pending | processing | stored | failed
    status TEXT NOT NULL,
    original_filename TEXT,
    description TEXT,
    byte_size BIGINT NOT NULL,
    content_type TEXT NOT NULL,
    sha256 TEXT,
    image_id TEXT,
    error_code TEXT,
    error_message TEXT,
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    -- While processing: when the claim lapses and another worker may take the session up.
    claimed_until TIMESTAMP,
    finished_at TIMESTAMP
);
CREATE INDEX upload_sessions_status_expires_idx ON upload_sessions (status, expires_at);
