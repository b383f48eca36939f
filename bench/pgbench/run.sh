#!/usr/bin/env bash
# The pgbench baseline: the raw SQL life cycle of a no-op task (bench/pgbench/lifecycle.sql)
# against the same PostgreSQL the engine uses, on the same machine. See docs/benchmarks.md.
#
#   AGENTPLANE_DATABASE_URL=postgres://agentplane_cp:…@127.0.0.1:<port>/agentplane \
#     bench/pgbench/run.sh [clients] [seconds]
#
# The URL is the control plane's (a login role in agentplane_app; deploy/local/up.sh prints
# how to build it). It creates a workspace and an agent of its own (display name
# "pgbench <time>"), then runs pgbench with `clients` connections (8) for `seconds` (30).
# One pgbench "transaction" is one round: create a task, claim one, finish it (three database
# transactions). A claim can come back empty under concurrency (lifecycle.sql says when), so
# the figure to quote is the one printed last: tasks finished per second, counted in the
# workspace afterwards.
set -euo pipefail
cd "$(dirname "$0")"
url=${AGENTPLANE_DATABASE_URL:?set AGENTPLANE_DATABASE_URL to the control plane database URL}
clients=${1:-8}
seconds=${2:-30}
pg_bin=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}

ids=$("$pg_bin/psql" "$url" -v ON_ERROR_STOP=1 -qtA -F ' ' <<'SQL'
BEGIN;
INSERT INTO workspaces (id, display_name, labels)
    VALUES (gen_random_uuid(), 'pgbench ' || now()::text, '{"purpose": "bench"}')
    RETURNING id AS tenant \gset
SELECT set_config('app.tenant_id', :'tenant', true) \g /dev/null
INSERT INTO agents (tenant_id, id, name, provider, model, max_concurrency, task_timeout_ms,
                    max_attempts)
    VALUES (:'tenant', gen_random_uuid(), 'pgbench', 'echo', 'echo-1', 10000, 60000, 3)
    RETURNING :'tenant', id, gen_random_uuid();
COMMIT;
SQL
)
read -r tenant agent worker <<<"$ids"
echo "workspace $tenant, agent $agent; $clients clients for $seconds s" >&2
echo "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
started=$(date +%s.%N)
"$pg_bin/pgbench" -n -M prepared -c "$clients" -j "$(( clients < 2 ? clients : 2 ))" \
  -T "$seconds" -D tenant="$tenant" -D agent="$agent" -D worker="$worker" \
  -f lifecycle.sql "$url"
ended=$(date +%s.%N)
finished=$("$pg_bin/psql" "$url" -qtA -v tenant="$tenant" <<'SQL'
BEGIN;
SELECT set_config('app.tenant_id', :'tenant', true) \g /dev/null
SELECT count(*) FROM tasks WHERE tenant_id = :'tenant' AND status = 'succeeded';
COMMIT;
SQL
)
python3 -c "import sys; n=int(sys.argv[1]); s=float(sys.argv[3])-float(sys.argv[2]); print(f'tasks finished: {n} in {s:.1f} s = {n/s:.0f} tasks/s (pgbench start to end, connections included)')" "$finished" "$started" "$ended"
