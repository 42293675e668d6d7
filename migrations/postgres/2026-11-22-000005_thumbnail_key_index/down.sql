DROP INDEX images_thumbnail_key_idx;
