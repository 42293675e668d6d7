-- The consistency check walks rows in object-key order beside the store's listing, which S3 gives in byte
-- order: the keys compare as bytes ("C"), whatever the database's locale.
ALTER TABLE images
    ALTER COLUMN original_key TYPE TEXT COLLATE "C",
    ALTER COLUMN thumbnail_key TYPE TEXT COLLATE "C";
