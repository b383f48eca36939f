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
-- With a target of 1, ANALYZE keeps at most the single most common workspace; any other is
-- costed at its share of the rest of the table (the planner's usual 1/n_distinct), so key
-- probes win. Equality on tenant_id is the only use the planner has for these statistics.
-- SET STATISTICS takes a SHARE UPDATE EXCLUSIVE lock, which does not block reads or writes;
-- the ANALYZE of the one column samples 300 rows per table.
ALTER TABLE tasks ALTER COLUMN tenant_id SET STATISTICS 1;
ALTER TABLE task_messages ALTER COLUMN tenant_id SET STATISTICS 1;
ALTER TABLE task_output_chunks ALTER COLUMN tenant_id SET STATISTICS 1;
ALTER TABLE events ALTER COLUMN tenant_id SET STATISTICS 1;
ALTER TABLE usage_records ALTER COLUMN tenant_id SET STATISTICS 1;

ANALYZE tasks (tenant_id);
ANALYZE task_messages (tenant_id);
ANALYZE task_output_chunks (tenant_id);
ANALYZE events (tenant_id);
ANALYZE usage_records (tenant_id);
