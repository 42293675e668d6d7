-- What browsers are shown of an original they cannot show (HEIC) or that is far larger than a screen.
ALTER TABLE images ADD COLUMN display_key TEXT;
ALTER TABLE images ADD COLUMN display_content_type TEXT;
CREATE INDEX images_display_key_idx ON images (display_key);
