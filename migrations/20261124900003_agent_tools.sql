-- Durable steps (issue #14), agents: tools, the step limit and fallback (provider, model)
-- pairs, which the claim loads. See 20261124900000_durable_steps.sql.
-- Each table of this change is altered by its own migration (20261124900000 to ...900004), so
-- no transaction holds the ACCESS EXCLUSIVE lock of one hot table while it waits for the
-- next one's. Every CHECK only widens or is added NOT VALID on a big table (every existing
-- row holds the default, which passes it), so no scan runs under the lock, and each
-- statement waits at most 5 s for its lock.
SET LOCAL lock_timeout = '5s';

ALTER TABLE agents ADD COLUMN tools jsonb NOT NULL DEFAULT '[]'
    CHECK (jsonb_typeof(tools) = 'array');
ALTER TABLE agents ADD COLUMN max_steps integer NOT NULL DEFAULT 16
    CHECK (max_steps BETWEEN 1 AND 100);
ALTER TABLE agents ADD COLUMN fallbacks jsonb NOT NULL DEFAULT '[]'
    CHECK (jsonb_typeof(fallbacks) = 'array');

-- The claim loads the agent's tools, step limit and fallbacks, and the transcript's steps.
GRANT SELECT (tools, max_steps, fallbacks) ON agents TO agentplane_worker;
