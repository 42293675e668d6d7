-- A ThumbHash of each image (base64), painted while the image loads; none for images stored before.
ALTER TABLE images ADD COLUMN thumbhash TEXT;
