-- The raw SQL life cycle of one no-op task on agentplane's schema, as three transactions
-- (the fewest the engine could use: create, claim, finish), for pgbench. Run by
-- bench/pgbench/run.sh, which creates the workspace and agent and passes their ids as
-- :tenant and :agent, and a worker id as :worker.
--
-- It runs as the control plane's application role with the workspace set, so row-level
-- security and the worker-transition trigger's WHEN clause are evaluated as for the engine.
-- What it leaves out, on purpose: gRPC, the engine's batching (one task per statement here),
-- the idempotency lookup, the per-agent concurrency check and output deltas. It is the
-- floor the engine's cost per task is compared with (docs/benchmarks.md), not a model of it.

-- create: the task, its transcript (system prompt, input), its event, one wake-up
BEGIN;
SELECT set_config('app.tenant_id', :'tenant', true);
INSERT INTO tasks (tenant_id, id, agent_id, max_attempts)
    VALUES (:'tenant', gen_random_uuid(), :'agent', 3) RETURNING id AS new_id \gset
INSERT INTO task_messages (tenant_id, id, task_id, position, role, content)
    VALUES (:'tenant', gen_random_uuid(), :'new_id', 0, 'system', 'You are terse.'),
           (:'tenant', gen_random_uuid(), :'new_id', 1, 'user', 'hello');
INSERT INTO events (tenant_id, id, actor, action, resource_type, resource_id)
    VALUES (:'tenant', gen_random_uuid(), 'apikey:pgbench', 'task.created', 'task', :'new_id');
SELECT pg_notify('agentplane_task_ready', '');
COMMIT;

-- claim: one due pending task in queue order, skipping locked ones; its transcript; its event
BEGIN;
SELECT set_config('app.tenant_id', :'tenant', true);
UPDATE tasks SET status = 'running', attempt = attempt + 1, worker_id = :'worker',
                 lease_expires_at = now() + interval '30 seconds', started_at = now(),
                 updated_at = now()
    WHERE (tenant_id, id) IN (
        SELECT tenant_id, id FROM tasks
        WHERE status = 'pending' AND run_at <= now()
        ORDER BY priority DESC, run_at
        LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING id AS claimed_id, attempt AS claimed_attempt \gset
SELECT role, content FROM task_messages
    WHERE tenant_id = :'tenant' AND task_id = :'claimed_id' ORDER BY position;
INSERT INTO events (tenant_id, id, actor, action, resource_type, resource_id)
    VALUES (:'tenant', gen_random_uuid(), 'worker:' || :'worker', 'task.started', 'task',
            :'claimed_id');
COMMIT;

-- finish: the fenced result, the answer, one usage record, its event, one state notice
BEGIN;
SELECT set_config('app.tenant_id', :'tenant', true);
UPDATE tasks SET status = 'succeeded', output = 'You said: hello', finish_reason = 'stop',
                 input_tokens = 3, output_tokens = 1, lease_expires_at = NULL,
                 ended_at = now(), updated_at = now()
    WHERE tenant_id = :'tenant' AND id = :'claimed_id' AND attempt = :claimed_attempt
      AND status = 'running' AND worker_id = :'worker';
INSERT INTO task_messages (tenant_id, id, task_id, position, role, content, attempt)
    VALUES (:'tenant', gen_random_uuid(), :'claimed_id', 2, 'assistant', 'You said: hello',
            :claimed_attempt);
INSERT INTO usage_records (tenant_id, id, task_id, attempt, step, provider, model,
                           provider_request_id, input_tokens, output_tokens, cost_micros)
    VALUES (:'tenant', gen_random_uuid(), :'claimed_id', :claimed_attempt, 0, 'echo',
            'echo-1', :'claimed_id' || '-' || :claimed_attempt || '-0', 3, 1, 0);
INSERT INTO events (tenant_id, id, actor, action, resource_type, resource_id)
    VALUES (:'tenant', gen_random_uuid(), 'worker:' || :'worker', 'task.succeeded', 'task',
            :'claimed_id');
SELECT pg_notify('agentplane_task_state', :'claimed_id');
COMMIT;
