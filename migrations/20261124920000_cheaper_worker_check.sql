-- app_acting_as_worker() is the WHEN condition of the tasks_worker_transition trigger, so
-- it is evaluated for every row that any role updates in tasks. Its body read pg_roles (a
-- view over two catalogs) in a subquery, which keeps PostgreSQL from inlining it: every
-- statement that updated tasks planned and ran that catalog query anew, about 1.4 ms for a
-- claim of 32 tasks and 0.5 ms for a control plane's batch of results, a third of the
-- claim's UPDATE and the largest single cost in the profile (docs/benchmarks.md).
--
-- The same test without a catalog query: row_security_active(tasks) is false exactly for
-- superusers and BYPASSRLS roles (its owner bypasses row-level security only where it is
-- not FORCED, and on tasks it is), so the function becomes one expression of built-in
-- functions, which the planner inlines into the trigger's condition.
--
-- The body is SQL-standard (RETURN ...), so PostgreSQL stores it parsed, with the table
-- resolved once and kept by reference: pg_dump writes it back as 'public.tasks'::regclass and
-- a restore resolves it again (resolved here through the search_path, like every table the
-- migrations create) (a body with the table's oid written in as a number would
-- silently name nothing after a restore, and switch the worker trigger off). No search_path
-- can make it mean another table.
--
-- This couples the worker trigger to row-level security on tasks: with it disabled,
-- row_security_active is false for everyone and the worker's restrictions go with the
-- tenant policies. Row-level security on tasks is ENABLED and FORCED by the initial
-- migration and nothing turns it off; the control plane checks both at startup.
CREATE OR REPLACE FUNCTION app_acting_as_worker() RETURNS boolean
    LANGUAGE sql STABLE
    RETURN pg_has_role(current_user, 'agentplane_worker', 'MEMBER')
       AND NOT pg_has_role(current_user, 'agentplane_app', 'MEMBER')
       AND row_security_active('tasks'::regclass);
