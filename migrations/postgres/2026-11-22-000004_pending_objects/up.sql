-- Objects written ahead of their row. An upload records its keys here before storing them; the transaction
-- that inserts its row deletes them. An entry that outlives the grace period belongs to an upload that died
-- in between (a killed process), and the sweeper removes its objects.
CREATE TABLE pending_objects (
    object_key TEXT PRIMARY KEY,
    image_id TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX pending_objects_image_id_idx ON pending_objects (image_id);
CREATE INDEX pending_objects_created_at_idx ON pending_objects (created_at);
