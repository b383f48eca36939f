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
-- would then never change: worse than before, since the next ANALYZE used to correct them.
-- So each table's old statistics of tenant_id are deleted when the migration runs as a
-- superuser (only a superuser may write pg_statistic on PostgreSQL 15 to 17). Otherwise a
-- table that may have statistics (it was analyzed, or vacuum or an index build counted
-- rows in it) keeps the default target, and the migration warns; docs/operations.md,
-- "Planner statistics", says what a superuser runs to finish the change. A database
-- created by these migrations has no statistics yet, so any role finishes it here.
SET LOCAL lock_timeout = '5s';

DO $$
DECLARE
    target regclass;
    superuser boolean := (SELECT rolsuper FROM pg_roles WHERE rolname = current_user);
BEGIN
    FOREACH target IN ARRAY ARRAY['tasks', 'task_messages', 'task_output_chunks', 'events',
                                  'usage_records']::regclass[] LOOP
        -- ANALYZE takes this lock too: none can add statistics between the check and the
        -- change below.
        EXECUTE format('LOCK TABLE %s IN SHARE UPDATE EXCLUSIVE MODE', target);
        IF superuser THEN
            DELETE FROM pg_statistic s USING pg_attribute a
            WHERE s.starelid = target AND a.attrelid = target
              AND a.attnum = s.staattnum AND a.attname = 'tenant_id';
        ELSIF pg_stat_get_last_analyze_time(target) IS NOT NULL
           OR pg_stat_get_last_autoanalyze_time(target) IS NOT NULL
           OR (SELECT reltuples > 0 FROM pg_class WHERE oid = target) THEN
            RAISE WARNING 'tenant_id of % keeps its planner statistics: only a superuser can '
                'delete the ones it has (docs/operations.md, "Planner statistics")', target;
            CONTINUE;
        END IF;
        EXECUTE format('ALTER TABLE %s ALTER COLUMN tenant_id SET STATISTICS 0', target);
    END LOOP;
END
$$;
