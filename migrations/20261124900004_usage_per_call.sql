-- Durable steps (issue #14), usage_records: one row per provider call whatever became of its
-- attempt, keyed by the worker's call id; the provider request id is shared by every attempt
-- and fallback of a step, so it is no longer unique. See 20261124900000_durable_steps.sql.
-- Each table of this change is altered by its own migration (20261124900000 to ...900004), so
-- no transaction holds the ACCESS EXCLUSIVE lock of one hot table while it waits for the
-- next one's. Every CHECK only widens or is added NOT VALID on a big table (every existing
-- row holds the default, which passes it), so no scan runs under the lock, and each
-- statement waits at most 5 s for its lock.
SET LOCAL lock_timeout = '5s';

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
