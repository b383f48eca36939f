-- no-transaction
-- A task's usage totals are summed from its calls (every attempt, step and fallback) when it
-- ends, so usage_records needs an index by task. Built CONCURRENTLY: usage_records grows with
-- every call and must keep taking inserts meanwhile. No IF NOT EXISTS: a build that failed
-- halfway leaves an INVALID index that must be dropped by hand, not silently kept.
CREATE INDEX CONCURRENTLY usage_records_task ON usage_records (tenant_id, task_id);
