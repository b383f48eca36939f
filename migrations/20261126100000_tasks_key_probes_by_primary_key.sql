-- Key probes of `tasks` reach its primary key on a fresh install too.
--
-- Without statistics, PostgreSQL costs every index of `tasks` that leads with tenant_id the
-- same as the primary key for a probe by (tenant_id, id), custom or generic plan alike, and
-- takes the index created last. The foreign-key checks of task_messages and
-- task_output_chunks are such probes: from a fresh install until autovacuum first analyzed
-- `tasks` (up to a minute, longer if autovacuum is slow to come round), each walked the
-- workspace's whole range in tasks_by_status, and a plan kept then stayed with its
-- connection until that analyze (docs/benchmarks.md, "Key probes on a fresh install").
-- Rebuilt after the other indexes, the primary key wins the tie.
--
-- Only an empty table is rebuilt: on a fresh install, where the window matters, this is
-- instant. A table with rows has statistics, or gets them at its first autoanalyze (after
-- 50 rows and 2 % change), and rebuilding its key would lock it for as long as an index
-- build. pg_relation_size, not a SELECT: row security is forced on `tasks` for its owner
-- too. The size is read again under the locks, taken in the order the application's
-- writes take them (tasks, then the transcript and output), so that a task created
-- meanwhile is seen and a concurrent write waits rather than deadlocks. An index added to `tasks` later that
-- leads with tenant_id must be followed by the same rebuild; the test
-- database::a_key_check_on_a_table_without_statistics_probes_the_primary_key fails until
-- it is.
SET LOCAL lock_timeout = '5s';

DO $$
BEGIN
    IF pg_relation_size('tasks') = 0 THEN
        LOCK TABLE tasks, task_messages, task_output_chunks IN ACCESS EXCLUSIVE MODE;
    END IF;
    IF pg_relation_size('tasks') = 0 THEN
        ALTER TABLE task_messages DROP CONSTRAINT task_messages_tenant_id_task_id_fkey;
        ALTER TABLE task_output_chunks DROP CONSTRAINT task_output_chunks_tenant_id_task_id_fkey;
        ALTER TABLE tasks DROP CONSTRAINT tasks_pkey;
        ALTER TABLE tasks ADD CONSTRAINT tasks_pkey PRIMARY KEY (tenant_id, id);
        ALTER TABLE task_messages ADD CONSTRAINT task_messages_tenant_id_task_id_fkey
            FOREIGN KEY (tenant_id, task_id) REFERENCES tasks (tenant_id, id)
            DEFERRABLE INITIALLY IMMEDIATE;
        ALTER TABLE task_output_chunks ADD CONSTRAINT task_output_chunks_tenant_id_task_id_fkey
            FOREIGN KEY (tenant_id, task_id) REFERENCES tasks (tenant_id, id)
            DEFERRABLE INITIALLY IMMEDIATE;
    END IF;
END $$;
