-- What the models said: the classifier's sha256 and timing, and the face/selfie analysis as JSON.
ALTER TABLE images ADD COLUMN model_sha256 TEXT;
ALTER TABLE images ADD COLUMN inference_ms DOUBLE PRECISION;
ALTER TABLE images ADD COLUMN analysis TEXT NOT NULL DEFAULT '{}';
