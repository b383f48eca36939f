-- Each stored output delta records the running byte total of its attempt, so the control
-- plane can refuse a delta that would take an attempt's live output past its cap (1 MiB)
-- with one index probe, instead of summing every earlier delta.
-- Adding a column with a constant default rewrites nothing (PostgreSQL 11+); rows written
-- before this migration count as 0 bytes, which only matters for attempts running across it.
-- The CHECK makes PostgreSQL scan the table under an exclusive lock; the table holds only
-- live output of running attempts, so it is small. Give up rather than queue behind a long
-- transaction and stall every output write meanwhile: the migration is retried at the next
-- start.
SET LOCAL lock_timeout = '5s';
ALTER TABLE task_output_chunks
    ADD COLUMN end_offset bigint NOT NULL DEFAULT 0 CHECK (end_offset >= 0);
