-- What each completed `upshot reconcile` found and repaired. The latest row is what /metrics reports on
-- every instance, whichever instance ran the check; older rows are a short history.
CREATE TABLE reconcile_runs (
    id TEXT PRIMARY KEY,
    finished_at TIMESTAMP NOT NULL,
    repair BOOLEAN NOT NULL,
    orphans BIGINT NOT NULL,
    missing_images BIGINT NOT NULL,
    missing_thumbnails BIGINT NOT NULL,
    repaired BIGINT NOT NULL,
    elapsed_ms BIGINT NOT NULL
);
CREATE INDEX reconcile_runs_finished_at_idx ON reconcile_runs (finished_at);
