ALTER TABLE images DROP COLUMN analysis;
ALTER TABLE images DROP COLUMN inference_ms;
ALTER TABLE images DROP COLUMN model_sha256;
