-- Durable steps (issue #14), task_messages: a completed model call is an assistant message
-- with its step number and tool calls; a tool output is a 'tool' message naming its call.
-- See 20261124900000_durable_steps.sql.
-- Each table of this change is altered by its own migration (20261124900000 to ...900004), so
-- no transaction holds the ACCESS EXCLUSIVE lock of one hot table while it waits for the
-- next one's. Every CHECK only widens or is added NOT VALID on a big table (every existing
-- row holds the default, which passes it), so no scan runs under the lock, and each
-- statement waits at most 5 s for its lock.
SET LOCAL lock_timeout = '5s';

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
