-- SQLite compares text as bytes already (BINARY), the order the consistency check needs; kept so both
-- backends carry the same migrations.
SELECT 1;
