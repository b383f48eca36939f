-- Retention of finished tasks (the control plane's `--task-retention`, see
-- docs/operations.md). A background loop of the control plane deletes tasks that ended
-- longer ago than the retention, with their transcript (task_messages) and any live output
-- left behind (task_output_chunks), one workspace at a time through the tenant-scoped
-- transaction, so it needs DELETE on those tables under the same row-level security as
-- every other statement of the application role.
--
-- What stays: the event log (append-only and audited; a trigger refuses deletes) and the
-- usage records (billing). Usage therefore stops referencing tasks by foreign key: a usage
-- record outlives its task and keeps task_id as a plain reference, as events keep
-- resource_id. It is still written only in the transaction that records the task's result,
-- for a task that transaction has locked, so it never names another workspace's task.
--
-- Every statement here takes a short lock on a hot table (tasks, usage_records); give up
-- rather than queue behind a long transaction and stall the queue meanwhile: the migration
-- is retried at the next start.
SET LOCAL lock_timeout = '5s';

GRANT DELETE ON tasks, task_messages TO agentplane_app;

ALTER TABLE usage_records DROP CONSTRAINT usage_records_tenant_id_task_id_fkey;

-- tasks is updated two or three times per task (claim, result, maybe a retry) and now
-- deleted in batches: every change leaves a dead tuple, and dead entries in the partial index
-- tasks_queue are what the claim walks past. PostgreSQL's default waits for 20 % of the
-- table to be dead before vacuuming, which with a million finished tasks is 200,000 dead
-- rows; vacuum and analyze it after 2 % instead. Setting storage parameters takes only a
-- SHARE UPDATE EXCLUSIVE lock (reads and writes go on).
ALTER TABLE tasks SET (autovacuum_vacuum_scale_factor = 0.02,
                       autovacuum_analyze_scale_factor = 0.02);
