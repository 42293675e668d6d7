DROP INDEX images_top_label_idx;
ALTER TABLE images DROP COLUMN top_label;
