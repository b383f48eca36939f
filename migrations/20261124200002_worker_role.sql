-- Narrow the worker database role (issue #15) to what claiming and lease expiry need.
-- Before: it could set any task of any workspace to any status and append any event.
-- After:
--   * tasks: only rows that are pending or running can be updated (a finished task is out
--     of reach), to pending, running or failed, and only along two transitions, checked by
--     a trigger that sees the old and the new row:
--       pending -> running   a claim: attempt + 1, a worker id and a future lease, run_at due
--       running -> pending   lease expiry (retry): the lease has run out, the worker cleared
--       running -> failed    lease expiry (last attempt): likewise
--   * events: only task.started (actor worker:<the claiming worker>), task.retrying and
--     task.failed (actor system), each about a task this very transaction moved into the
--     matching status (its updated_at is this transaction's now()).
--   * still no access at all to output chunks, usage records or API keys, and no reading of
--     events (unchanged from the initial schema).

-- Whether the session acts as a worker (and not as the control plane or an owner).
CREATE FUNCTION app_acting_as_worker() RETURNS boolean
    LANGUAGE sql STABLE
    AS $$
        SELECT pg_has_role(current_user, 'agentplane_worker', 'MEMBER')
           AND NOT pg_has_role(current_user, 'agentplane_app', 'MEMBER')
           AND NOT (SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user)
    $$;

CREATE FUNCTION tasks_worker_transition() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF OLD.status = 'pending' AND NEW.status = 'running'
       AND NEW.attempt = OLD.attempt + 1
       AND NEW.worker_id IS NOT NULL
       AND NEW.lease_expires_at > now()
       AND OLD.run_at <= now() THEN
        RETURN NEW;
    END IF;
    IF OLD.status = 'running' AND NEW.status IN ('pending', 'failed')
       AND OLD.lease_expires_at < now()
       AND NEW.attempt = OLD.attempt
       AND NEW.worker_id IS NULL THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'a worker may only claim a due pending task or expire a lapsed lease (% -> %)',
        OLD.status, NEW.status
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER tasks_worker_transition BEFORE UPDATE ON tasks
    FOR EACH ROW WHEN (app_acting_as_worker())
    EXECUTE FUNCTION tasks_worker_transition();

DROP POLICY worker_claim ON tasks;
CREATE POLICY worker_claim ON tasks FOR UPDATE TO agentplane_worker
    USING (status IN ('pending', 'running'))
    WITH CHECK (status IN ('pending', 'running', 'failed'));

DROP POLICY worker_append ON events;
CREATE POLICY worker_append ON events FOR INSERT TO agentplane_worker
    WITH CHECK (
        resource_type = 'task'
        AND EXISTS (
            SELECT 1 FROM tasks t
            WHERE t.tenant_id = events.tenant_id
              AND t.id = events.resource_id
              AND t.updated_at = now()
              AND ((events.action = 'task.started' AND t.status = 'running'
                    AND events.actor = 'worker:' || t.worker_id::text)
                OR (events.action = 'task.retrying' AND t.status = 'pending'
                    AND events.actor = 'system')
                OR (events.action = 'task.failed' AND t.status = 'failed'
                    AND events.actor = 'system'))
        )
    );
