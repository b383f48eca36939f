-- W3C trace context of the request that created a task (its `traceparent`), so the worker
-- that claims the task continues the same trace across the claim in PostgreSQL. NULL when
-- tracing is off. A nullable column without a default rewrites nothing. Both roles already
-- hold table-wide SELECT (and the control plane INSERT) on tasks; the worker's UPDATE grant
-- is per column and does not include this one, so a worker cannot change it.
ALTER TABLE tasks
    ADD COLUMN traceparent text CHECK (char_length(traceparent) <= 256);
