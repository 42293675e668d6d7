-- One row per upload. Objects may be shared between rows holding identical bytes (dedup), so a row's
-- storage keys can sit under another row's id.
CREATE TABLE images (
    id                     TEXT PRIMARY KEY,
    sha256                 TEXT NOT NULL,
    source_sha256          TEXT NOT NULL,
    original_filename      TEXT,
    description            TEXT,
    format                 TEXT NOT NULL,
    content_type           TEXT NOT NULL,
    byte_size              BIGINT NOT NULL,
    width                  INTEGER NOT NULL,
    height                 INTEGER NOT NULL,
    original_key           TEXT NOT NULL,
    thumbnail_key          TEXT NOT NULL,
    thumbnail_content_type TEXT NOT NULL,
    predictions            TEXT NOT NULL DEFAULT '[]',
    model_name             TEXT,
    model_version          TEXT,
    status                 TEXT NOT NULL,
    delete_token_hash      TEXT NOT NULL,
    idempotency_key        TEXT UNIQUE,
    created_at             TIMESTAMP NOT NULL
);
CREATE INDEX images_sha256_idx ON images (sha256);
CREATE INDEX images_original_key_idx ON images (original_key);
CREATE INDEX images_created_idx ON images (created_at DESC, id DESC);

-- Notifications to publish, written in the same transaction as the row they announce.
CREATE TABLE outbox (
    id           TEXT PRIMARY KEY,
    image_id     TEXT NOT NULL,
    event_type   TEXT NOT NULL,
    payload      TEXT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'pending',
    attempts     INTEGER NOT NULL DEFAULT 0,
    available_at TIMESTAMP NOT NULL,
    last_error   TEXT,
    created_at   TIMESTAMP NOT NULL,
    published_at TIMESTAMP
);
CREATE INDEX outbox_due_idx ON outbox (status, available_at);
