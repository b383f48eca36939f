-- The raw SQL life cycle of one no-op task on agentplane's schema, as three transactions
-- (the fewest the engine could use: create, claim, finish), for pgbench. Run by
-- bench/pgbench/run.sh, which creates the workspace and agent and passes their ids as
-- :tenant::uuid and :agent::uuid, and a worker id as :worker::uuid.
--
-- It runs as the control plane's application role with the workspace set, so row-level
-- security and the worker-transition trigger's WHEN clause are evaluated as for the engine.
-- What it leaves out, on purpose: gRPC, the engine's batching (one task per statement here),
-- the idempotency lookup, the per-agent concurrency check and output deltas. It is the
-- floor the engine's cost per task is compared with (docs/benchmarks.md), not a model of it.

-- create: the task, its transcript (system prompt, input), its event, one wake-up
BEGIN;
SELECT set_config('app.tenant_id', :tenant::text, true);
INSERT INTO tasks (tenant_id, id, agent_id, max_attempts)
    VALUES (:tenant::uuid, gen_random_uuid(), :agent::uuid, 3) RETURNING id AS new_id \gset
INSERT INTO task_messages (tenant_id, id, task_id, position, role, content)
    VALUES (:tenant::uuid, gen_random_uuid(), :new_id::uuid, 0, 'system', 'You are terse.'),
           (:tenant::uuid, gen_random_uuid(), :new_id::uuid, 1, 'user', 'hello');
INSERT INTO events (tenant_id, id, actor, action, resource_type, resource_id)
    VALUES (:tenant::uuid, gen_random_uuid(), 'apikey:' || 'pgbench', 'task.created', 'task', :new_id::uuid);
SELECT pg_notify('agentplane_task_ready', '');
COMMIT;

SELECT 0 AS got \gset
-- claim: one due pending task in queue order, skipping locked ones; its transcript; its event.
-- The candidate is a MATERIALIZED CTE: as `WHERE (tenant_id, id) IN (SELECT … LIMIT 1 FOR
-- UPDATE SKIP LOCKED)` the planner may run the sub-select more than once and claim several.
BEGIN;
SELECT set_config('app.tenant_id', :tenant::text, true);
WITH next AS MATERIALIZED (
    SELECT tenant_id, id FROM tasks
    WHERE tenant_id = :tenant::uuid AND status = 'pending' AND run_at <= now()
    ORDER BY priority DESC, created_at, id
    LIMIT 1 FOR UPDATE SKIP LOCKED)
UPDATE tasks t SET status = 'running', attempt = attempt + 1, worker_id = :worker::uuid,
                   lease_expires_at = now() + interval '30 seconds', started_at = now(),
                   updated_at = now()
    FROM next WHERE t.tenant_id = next.tenant_id AND t.id = next.id
    RETURNING t.id AS claimed_id, t.attempt AS claimed_attempt, 1 AS got \aset
SELECT role, content FROM task_messages
    WHERE tenant_id = :tenant::uuid AND task_id = :claimed_id::uuid ORDER BY position;
INSERT INTO events (tenant_id, id, actor, action, resource_type, resource_id)
    VALUES (:tenant::uuid, gen_random_uuid(), 'worker:' || :worker::text, 'task.started', 'task',
            :claimed_id::uuid);
COMMIT;

-- A claim can find nothing when another client took the task this one created and the
-- task that client created committed after this claim's snapshot: then this round only
-- created, and a later round claims it.
\if :got
-- finish: the fenced result, the answer, one usage record, its event, one state notice
BEGIN;
SELECT set_config('app.tenant_id', :tenant::text, true);
UPDATE tasks SET status = 'succeeded', output = 'You said' || ': hello', finish_reason = 'stop',
                 input_tokens = 3, output_tokens = 1, lease_expires_at = NULL,
                 ended_at = now(), updated_at = now()
    WHERE tenant_id = :tenant::uuid AND id = :claimed_id::uuid AND attempt = :claimed_attempt::int
      AND status = 'running' AND worker_id = :worker::uuid;
INSERT INTO task_messages (tenant_id, id, task_id, position, role, content, attempt)
    VALUES (:tenant::uuid, gen_random_uuid(), :claimed_id::uuid, 2, 'assistant', 'You said' || ': hello',
            :claimed_attempt::int);
INSERT INTO usage_records (tenant_id, id, task_id, attempt, step, provider, model,
                           provider_request_id, input_tokens, output_tokens, cost_micros)
    VALUES (:tenant::uuid, gen_random_uuid(), :claimed_id::uuid, :claimed_attempt::int, 0, 'echo',
            'echo-1', :claimed_id::text || '-' || :claimed_attempt::text || '-0', 3, 1, 0);
INSERT INTO events (tenant_id, id, actor, action, resource_type, resource_id)
    VALUES (:tenant::uuid, gen_random_uuid(), 'worker:' || :worker::text, 'task.succeeded', 'task',
            :claimed_id::uuid);
SELECT pg_notify('agentplane_task_state', :claimed_id::text);
COMMIT;
\endif
