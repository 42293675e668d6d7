ALTER TABLE images
    ALTER COLUMN original_key TYPE TEXT COLLATE "default",
    ALTER COLUMN thumbnail_key TYPE TEXT COLLATE "default";
