-- The foreign keys of the rows a task writes in bulk (its events' workspace, its transcript's
-- and its output chunks' task) become deferrable. They stay INITIALLY IMMEDIATE: every
-- transaction checks them as before, at the end of each statement, unless it says otherwise.
-- The workers' claims and reports and batch creation say `SET CONSTRAINTS ALL DEFERRED`, and
-- have the checks planned at COMMIT with a plan kept per connection (agentplane_core's
-- key_checks): planned for every row in those transactions, which plan their own statements
-- for their parameters, the checks were a fifth of PostgreSQL's time per task
-- (docs/benchmarks.md, "Key checks at commit").
-- Only the catalog changes (no row is read); the statements wait at most 5 s for their locks.
SET LOCAL lock_timeout = '5s';

ALTER TABLE events
    ALTER CONSTRAINT events_tenant_id_fkey DEFERRABLE INITIALLY IMMEDIATE;
ALTER TABLE task_messages
    ALTER CONSTRAINT task_messages_tenant_id_task_id_fkey DEFERRABLE INITIALLY IMMEDIATE;
ALTER TABLE task_output_chunks
    ALTER CONSTRAINT task_output_chunks_tenant_id_task_id_fkey DEFERRABLE INITIALLY IMMEDIATE;
