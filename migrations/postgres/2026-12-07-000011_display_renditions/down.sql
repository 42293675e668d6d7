DROP INDEX images_display_key_idx;
ALTER TABLE images DROP COLUMN display_content_type;
ALTER TABLE images DROP COLUMN display_key;
