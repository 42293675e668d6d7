ALTER TABLE images DROP COLUMN thumbhash;
