-- Two plans of the claim that went wrong with large claims (a worker of capacity 512 claims
-- up to ~400 tasks at once), both because the statistics of tasks.status say nothing useful
-- about pending and running tasks: they move in and out of those states within seconds,
-- and ANALYZE last saw them empty (a fresh table) or all finished.
--
-- 1. The claim's UPDATE joined the claimed keys to tasks, and the worker's policy on tasks
--    (status pending or running) made the planner expect one visible row: it scanned the
--    table once and compared every row with every key (12 million comparisons, 1 s for a
--    claim of 384). The claim now marks the rows it locked by their row version (ctid),
--    which PostgreSQL fetches directly (TID Scan) whatever the statistics say; the worker
--    reads the ctid of the candidates it locks, so it needs SELECT on that column. A ctid
--    names a row version, not data: it reveals nothing the worker cannot already read.
SET LOCAL lock_timeout = '5s';

GRANT SELECT (ctid) ON tasks TO agentplane_worker;

-- 2. The worker may read the transcripts of running tasks only. The policy's subquery had
--    `t.status = 'running'`, which lets the planner probe through the partial index of
--    running tasks, keyed by (tenant_id, agent_id): it walked every running task of the
--    workspace for each transcript row (22,000 buffers for a claim of 496 rows). With the
--    status from an init plan the partial index cannot serve it, and the primary key (or
--    tasks_by_status on all three of its columns) does. The rule is unchanged. ALTER POLICY
--    locks task_messages exclusively for the moment it takes; the lock wait is bounded to
--    5 s above, so a long transaction on the table fails the migration (to be retried)
--    rather than stall every claim queued behind it.
ALTER POLICY worker_read ON task_messages
    USING (EXISTS (
        SELECT 1 FROM tasks t
        WHERE t.tenant_id = task_messages.tenant_id
          AND t.id = task_messages.task_id
          AND t.status = (SELECT 'running'::text)
    ));
