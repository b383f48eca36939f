-- The foreign key of a transcript row to its task becomes deferrable. It stays INITIALLY IMMEDIATE: a transaction checks it as
-- before, at the end of each statement, unless it says `SET CONSTRAINTS ALL DEFERRED`. The
-- workers' claims and reports and every path that writes transcript rows do, and have the
-- checks planned at COMMIT with a plan kept per connection, made without sequential scans
-- (agentplane_core's key_checks): planned for every row in the reports, which plan their own
-- statements for their parameters, the checks were a fifth of PostgreSQL's time per task
-- (docs/benchmarks.md, "Key checks at commit").
--
-- ALTER CONSTRAINT changes only the catalog (no row is read), but on PostgreSQL 15 it takes
-- an ACCESS EXCLUSIVE lock on the table, held until the migration commits: one constraint
-- per migration, so that no migration holds two of these hot tables at once (or takes their
-- locks in an order that a transaction writing both could deadlock with), and the lock is
-- waited for at most 5 s: behind a long transaction the migration fails and is retried
-- rather than holding up every statement queued behind it.
SET LOCAL lock_timeout = '5s';

ALTER TABLE task_messages
    ALTER CONSTRAINT task_messages_tenant_id_task_id_fkey DEFERRABLE INITIALLY IMMEDIATE;
