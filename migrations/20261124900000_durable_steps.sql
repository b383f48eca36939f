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
-- Every CHECK here only widens or is added NOT VALID on a big table (every existing row holds
-- the default, which passes it), so no scan runs under the ACCESS EXCLUSIVE locks, and each
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

ALTER TABLE task_messages DROP CONSTRAINT task_messages_role_check;
ALTER TABLE task_messages ADD CONSTRAINT task_messages_role_check
    CHECK (role IN ('system', 'user', 'assistant', 'tool')) NOT VALID;
ALTER TABLE task_messages ADD COLUMN step integer;
ALTER TABLE task_messages ADD COLUMN tool_calls jsonb;
ALTER TABLE task_messages ADD COLUMN tool_call_id text;
ALTER TABLE task_messages ADD COLUMN is_error boolean NOT NULL DEFAULT false;
ALTER TABLE task_messages ADD CONSTRAINT task_messages_step_shape
    CHECK ((step IS NULL OR (step >= 0 AND role = 'assistant'))
           AND (tool_calls IS NULL OR (role = 'assistant' AND jsonb_typeof(tool_calls) = 'array'))
           AND ((tool_call_id IS NOT NULL) = (role = 'tool'))) NOT VALID;

ALTER TABLE agents ADD COLUMN tools jsonb NOT NULL DEFAULT '[]'
    CHECK (jsonb_typeof(tools) = 'array');
ALTER TABLE agents ADD COLUMN max_steps integer NOT NULL DEFAULT 16
    CHECK (max_steps BETWEEN 1 AND 100);
ALTER TABLE agents ADD COLUMN fallbacks jsonb NOT NULL DEFAULT '[]'
    CHECK (jsonb_typeof(fallbacks) = 'array');

ALTER TABLE usage_records DROP CONSTRAINT usage_records_tenant_id_provider_request_id_key;
ALTER TABLE usage_records
    ADD COLUMN agent_id uuid,
    ADD COLUMN cache_read_input_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN cache_write_input_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN reasoning_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN vendor_request_id text,
    ADD COLUMN latency_ms bigint,
    ADD COLUMN first_token_ms bigint,
    ADD COLUMN outcome text NOT NULL DEFAULT 'ok',
    ADD COLUMN unpriced boolean NOT NULL DEFAULT false;
ALTER TABLE usage_records ADD CONSTRAINT usage_records_counts_non_negative
    CHECK (cache_read_input_tokens >= 0 AND cache_write_input_tokens >= 0
           AND reasoning_tokens >= 0) NOT VALID;
-- The claim loads the agent's tools, step limit and fallbacks, and the transcript's steps.
GRANT SELECT (tools, max_steps, fallbacks) ON agents TO agentplane_worker;
