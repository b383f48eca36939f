-- The queue becomes fair across workspaces and routable by worker labels (issue #13).
--
--   * workspaces.max_running_tasks: an optional cap on a workspace's running tasks, enforced
--     exactly by the claim (like agents.max_concurrency). NULL: no cap.
--   * agents.required_labels: labels a worker must advertise (all of them, with equal
--     values) to run the agent's tasks. '{}' matches every worker.
--   * tasks.required_labels: the agent's requirement, copied when the task is created (and
--     when UpdateAgent changes it, for the agent's pending tasks), so the claim filters on the
--     task row it already reads instead of joining agents for every candidate.
--
-- The claim order within a workspace becomes (priority DESC, created_at, id): a task
-- requeued after a failure or a lost lease keeps its place in line once its backoff is over
-- (run_at only says when it is due). The index serving it is built by the next migration.
SET LOCAL lock_timeout = '5s';

ALTER TABLE workspaces
    ADD COLUMN max_running_tasks integer CHECK (max_running_tasks BETWEEN 1 AND 1000000);
ALTER TABLE agents
    ADD COLUMN required_labels jsonb NOT NULL DEFAULT '{}'
        CHECK (jsonb_typeof(required_labels) = 'object');
-- tasks may be large: the column gets a constant default (no rewrite) and its CHECK is added
-- NOT VALID, so no scan runs under the ACCESS EXCLUSIVE lock; every existing row holds the
-- default, which passes it.
ALTER TABLE tasks ADD COLUMN required_labels jsonb NOT NULL DEFAULT '{}';
ALTER TABLE tasks ADD CONSTRAINT tasks_required_labels_object
    CHECK (jsonb_typeof(required_labels) = 'object') NOT VALID;

-- The claim reads the workspace's cap and the task's requirement; workspaces has no
-- row-level security (a platform table), so the grant is by column.
GRANT SELECT (id, max_running_tasks) ON workspaces TO agentplane_worker;
GRANT SELECT (required_labels) ON tasks TO agentplane_worker;
