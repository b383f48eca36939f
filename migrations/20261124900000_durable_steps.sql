-- Durable steps and tool calls (issue #14).
--
--   * A task's transcript (task_messages) is also its log of steps: each completed model call
--     is recorded as an assistant message with its step number and tool calls as soon as it
--     ends, at a transcript position the attempt chose when it was claimed (the first record
--     of a position wins, through the existing UNIQUE (tenant_id, task_id, position)). A later
--     attempt replays recorded steps instead of calling the model again. Outputs of tools the
--     caller ran are 'tool' messages naming the call they answer.
--   * A task whose model called tools waits in 'requires_action' with the calls in
--     tasks.required_action until SubmitToolOutputs queues it again.
--   * Agents declare tools (name, description, JSON Schema), a step limit, and fallback
--     (provider, model) pairs.
--   * usage_records gets one row per provider call, whatever became of its attempt: the id is
--     the worker's id of the call (so a resend is stored once), and the provider request id is
--     now shared by every attempt and fallback of a step, so it is no longer unique. It gains
--     the cached and reasoning token counts, the vendor's request id, latency, time to first
--     token, the outcome, the agent, and whether the model was priced.
--
-- This migration: tasks (the requires_action status, the waited-on calls, usage totals).
-- Each table of this change is altered by its own migration (20261124900000 to ...900004), so
-- no transaction holds the ACCESS EXCLUSIVE lock of one hot table while it waits for the
-- next one's. Every CHECK only widens or is added NOT VALID on a big table (every existing
-- row holds the default, which passes it), so no scan runs under the lock, and each
-- statement waits at most 5 s for its lock.
SET LOCAL lock_timeout = '5s';

ALTER TABLE tasks DROP CONSTRAINT tasks_status_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_status_check
    CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'canceled',
                      'requires_action')) NOT VALID;
ALTER TABLE tasks ADD COLUMN required_action jsonb;
-- The task's usage totals gain the cached and reasoning parts (summed from its calls).
ALTER TABLE tasks
    ADD COLUMN cache_read_input_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN cache_write_input_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN reasoning_tokens bigint NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD CONSTRAINT tasks_required_action_waiting
    CHECK ((required_action IS NOT NULL) = (status = 'requires_action')) NOT VALID;
