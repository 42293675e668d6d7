-- The classifier's first label, for filtering the gallery and subscriptions.
ALTER TABLE images ADD COLUMN top_label TEXT;
CREATE INDEX images_top_label_idx ON images (top_label, created_at DESC);
