-- The consistency check looks objects up by key, thumbnails too.
CREATE INDEX images_thumbnail_key_idx ON images (thumbnail_key);
