-- no-transaction
-- The claim's index: pending tasks per workspace in claim order. The claim walks it once per
-- workspace with work (a skip scan over tenant_id), then takes each workspace's first tasks
-- in (priority DESC, created_at, id) order. run_at is included so the queue statistics
-- (agentplane_queue_stats) still count due and scheduled tasks from the index alone.
--
-- Built CONCURRENTLY (so creating tasks is not blocked while it builds on a large table),
-- which must run outside a transaction and alone: one statement per file. If a build is
-- interrupted it leaves an INVALID index; this file then fails on the next run ("already
-- exists") instead of accepting it, and the next migration (dropping the old index) does not
-- run. docs/operations.md says what to do: drop it and migrate again.
CREATE INDEX CONCURRENTLY tasks_queue ON tasks (tenant_id, priority DESC, created_at, id)
    INCLUDE (run_at) WHERE status = 'pending'
