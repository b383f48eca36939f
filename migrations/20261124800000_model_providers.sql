-- Real model providers (issue #14): agents may run on Anthropic, OpenAI, Gemini or any
-- OpenAI-compatible server, besides the offline echo provider. The CHECK only widens, so every
-- existing row passes it; the agents table is small and the ALTER waits at most 5 s for its
-- lock rather than queueing every agent read behind it.
SET LOCAL lock_timeout = '5s';

ALTER TABLE agents
    DROP CONSTRAINT agents_provider_check,
    ADD CONSTRAINT agents_provider_check
        CHECK (provider IN ('echo', 'anthropic', 'openai', 'gemini', 'openai_compatible'));
