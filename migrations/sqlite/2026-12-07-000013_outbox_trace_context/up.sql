-- The W3C traceparent of the upload that wrote the message, so its publish joins that upload's trace.
ALTER TABLE outbox ADD COLUMN traceparent TEXT;
