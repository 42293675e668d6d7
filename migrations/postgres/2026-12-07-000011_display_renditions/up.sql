-- What browsers are shown of an original they cannot show (HEIC) or that is far larger than a screen. Its key
-- compares as bytes, like the other object keys, for the consistency check's walk.
ALTER TABLE images ADD COLUMN display_key TEXT COLLATE "C";
ALTER TABLE images ADD COLUMN display_content_type TEXT;
CREATE INDEX images_display_key_idx ON images (display_key);
