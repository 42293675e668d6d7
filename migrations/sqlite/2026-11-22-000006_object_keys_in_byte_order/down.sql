-- SQLite compares text as bytes already (BINARY): nothing to undo.
SELECT 1;
