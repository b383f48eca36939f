-- Planner statistics that do not mistake a new or fast-growing workspace for an empty one.
--
-- With the default statistics target, ANALYZE keeps up to 100 workspaces as "most common
-- values" of tenant_id. When every workspace present at the last ANALYZE is in that list,
-- the planner costs any other one (a workspace created since, flooding its first tasks) at
-- one row until autovacuum analyzes the table again, which is up to a minute away
-- (autovacuum_naptime) and, on a table of millions of rows, many minutes. At one row a
-- workspace's whole range costs the same as a key probe, and the planner breaks the tie
-- badly: the foreign-key checks of every transcript row, output chunk and usage record
-- (SELECT 1 FROM tasks WHERE tenant_id = $1 AND id = $2 FOR KEY SHARE, which PostgreSQL
-- plans itself) walked the new workspace's entries in tasks_by_status instead of probing
-- the primary key: 93 buffers per check on average and 250 µs of PostgreSQL time per task,
-- measured with a million finished tasks of another workspace in the table
-- (docs/benchmarks.md).
--
-- With a target of 0, ANALYZE keeps no statistics of tenant_id, and the planner costs any
-- workspace at its default share of a table (0.5 %), which grows with the table: key probes
-- win over a workspace's range from a few hundred rows on. (A target of 1 was tried first: it
-- keeps the single most common workspace and costs the others at their share of the rest,
-- which is right with several workspaces and still one row when a single workspace filled
-- the table at the last ANALYZE.) Every query is confined to one workspace and finds its
-- rows by index; the other use of these statistics, the claim's walk over workspaces
-- (tenant_id > $1 … LIMIT 1 on the partial index of pending tasks), has one index that
-- serves it whatever they say.
-- SET STATISTICS takes a SHARE UPDATE EXCLUSIVE lock, which does not block reads or writes
-- (bounded to 5 s here, so a long transaction holding the table makes the migration fail
-- and be retried rather than hold up everything queued behind it).
--
-- ANALYZE skips a column with target 0 but leaves the statistics it kept before, and they
-- would then never change. They are deleted here when the migration runs as a superuser;
-- otherwise the migration warns, and docs/operations.md gives the statement for a superuser
-- to run (the control plane cannot see them: pg_stats hides the statistics of tables under
-- row-level security from the roles it applies to).
SET LOCAL lock_timeout = '5s';

ALTER TABLE tasks ALTER COLUMN tenant_id SET STATISTICS 0;
ALTER TABLE task_messages ALTER COLUMN tenant_id SET STATISTICS 0;
ALTER TABLE task_output_chunks ALTER COLUMN tenant_id SET STATISTICS 0;
ALTER TABLE events ALTER COLUMN tenant_id SET STATISTICS 0;
ALTER TABLE usage_records ALTER COLUMN tenant_id SET STATISTICS 0;

DO $$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        DELETE FROM pg_statistic s USING pg_attribute a
        WHERE a.attrelid = s.starelid AND a.attnum = s.staattnum AND a.attname = 'tenant_id'
          AND s.starelid IN ('tasks'::regclass, 'task_messages'::regclass,
                             'task_output_chunks'::regclass, 'events'::regclass,
                             'usage_records'::regclass);
    ELSIF EXISTS (SELECT 1 FROM pg_stats
                  WHERE attname = 'tenant_id'
                    AND tablename IN ('tasks', 'task_messages', 'task_output_chunks',
                                      'events', 'usage_records')) THEN
        RAISE WARNING 'statistics of tenant_id kept from before this migration stay until a '
            'superuser deletes them (docs/operations.md, "Planner statistics")';
    END IF;
END
$$;
