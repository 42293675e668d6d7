DROP TABLE outbox;
DROP TABLE images;
