-- Queue statistics for metrics and autoscaling, without workspace data.
--
-- agentplane_queue_stats() returns one row per priority band (high: priority > 0, normal: 0,
-- low: < 0) with the pending tasks that are due (`ready`), pending tasks scheduled for later
-- (`scheduled`), running tasks, and the age in seconds of the oldest due pending task. It
-- is SECURITY DEFINER, so the control plane (whose row-level security shows it one workspace
-- at a time), the workers and the autoscaler (KEDA's postgresql scaler, as a login role in
-- agentplane_metrics) can all read these totals while seeing no row of any workspace.
-- The bands keep metric label sets bounded.
--
-- Its cost: the pending rows are counted through the partial index tasks_claim and the
-- running ones through tasks_leases, so it grows with the backlog, not with the history.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'agentplane_metrics') THEN
        CREATE ROLE agentplane_metrics NOLOGIN;
    END IF;
END
$$;

-- tasks has row-level security FORCED, which binds its owner too: give the owner (whose
-- rights the function runs with) a read policy. The owner could switch RLS off anyway, so
-- this grants nothing new; no service connects as the owner.
CREATE POLICY queue_stats_read ON tasks FOR SELECT TO CURRENT_USER USING (true);

CREATE FUNCTION agentplane_queue_stats()
RETURNS TABLE (
    priority_band text,
    ready bigint,
    scheduled bigint,
    running bigint,
    oldest_ready_age_seconds double precision
)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
    SELECT band,
           count(*) FILTER (WHERE status = 'pending' AND run_at <= now()),
           count(*) FILTER (WHERE status = 'pending' AND run_at > now()),
           count(*) FILTER (WHERE status = 'running'),
           coalesce(extract(epoch FROM now() - min(run_at)
                    FILTER (WHERE status = 'pending' AND run_at <= now())), 0)::double precision
    FROM (
        SELECT CASE WHEN priority > 0 THEN 'high' WHEN priority < 0 THEN 'low' ELSE 'normal' END
                   AS band,
               status, run_at
        FROM tasks
        WHERE status = 'pending'
        UNION ALL
        SELECT CASE WHEN priority > 0 THEN 'high' WHEN priority < 0 THEN 'low' ELSE 'normal' END,
               status, run_at
        FROM tasks
        WHERE status = 'running'
    ) AS live (band, status, run_at)
    GROUP BY band
$$;

REVOKE ALL ON FUNCTION agentplane_queue_stats() FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO agentplane_metrics;
GRANT EXECUTE ON FUNCTION agentplane_queue_stats()
    TO agentplane_app, agentplane_worker, agentplane_metrics;
