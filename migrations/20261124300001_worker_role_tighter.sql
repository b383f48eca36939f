-- Tighten the worker role further (review of #15). The transitions it may make were right,
-- but not what it may write along them, nor what it may read:
--   * a claim must not touch run_at, the error columns or ended_at, and its lease is at
--     most an hour and five minutes (the control plane's longest lease is an hour);
--   * lease expiry writes the fixed 'lease_expired' code and message, fails a task only when
--     its counted attempts are used up (and requeues it otherwise), with run_at at most the
--     longest retry delay (5 minutes) ahead;
--   * it reads only the columns claiming and expiry use: no task output, finish reason,
--     usage totals, labels or error text, no agent system prompts or names, and only the
--     transcripts of running tasks (what a claim loads).
SET LOCAL lock_timeout = '5s';

CREATE OR REPLACE FUNCTION tasks_worker_transition() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF OLD.status = 'pending' AND NEW.status = 'running'
       AND NEW.attempt = OLD.attempt + 1
       AND NEW.worker_id IS NOT NULL
       AND NEW.lease_expires_at > now()
       AND NEW.lease_expires_at <= now() + interval '1 hour 5 minutes'
       AND OLD.run_at <= now()
       AND NEW.run_at = OLD.run_at
       AND NEW.error_code IS NOT DISTINCT FROM OLD.error_code
       AND NEW.error_message IS NOT DISTINCT FROM OLD.error_message
       AND NEW.ended_at IS NOT DISTINCT FROM OLD.ended_at THEN
        RETURN NEW;
    END IF;
    IF OLD.status = 'running' AND NEW.status IN ('pending', 'failed')
       AND OLD.lease_expires_at < now()
       AND NEW.attempt = OLD.attempt
       AND NEW.releases = OLD.releases
       AND NEW.worker_id IS NULL
       AND NEW.error_code = 'lease_expired'
       AND NEW.error_message = 'the worker holding the task stopped renewing its lease'
       AND (
            (NEW.status = 'failed' AND OLD.attempt - OLD.releases >= OLD.max_attempts
             AND NEW.run_at = OLD.run_at)
         OR (NEW.status = 'pending' AND OLD.attempt - OLD.releases < OLD.max_attempts
             AND NEW.run_at BETWEEN now() AND now() + interval '301 seconds'
             AND NEW.ended_at IS NOT DISTINCT FROM OLD.ended_at)
       ) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'a worker may only claim a due pending task or expire a lapsed lease (% -> %)',
        OLD.status, NEW.status
        USING ERRCODE = 'insufficient_privilege';
END
$$;

-- Reads: column grants instead of whole tables.
REVOKE SELECT ON tasks FROM agentplane_worker;
GRANT SELECT (tenant_id, id, agent_id, status, priority, run_at, attempt, releases,
              max_attempts, worker_id, lease_expires_at, started_at, ended_at, updated_at,
              created_at, traceparent)
    ON tasks TO agentplane_worker;
REVOKE SELECT ON agents FROM agentplane_worker;
GRANT SELECT (tenant_id, id, provider, model, generation, task_timeout_ms, max_concurrency,
              max_attempts, deleted_at)
    ON agents TO agentplane_worker;
DROP POLICY worker_read ON task_messages;
CREATE POLICY worker_read ON task_messages FOR SELECT TO agentplane_worker
    USING (EXISTS (
        SELECT 1 FROM tasks t
        WHERE t.tenant_id = task_messages.tenant_id
          AND t.id = task_messages.task_id
          AND t.status = 'running'
    ));
