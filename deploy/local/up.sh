#!/usr/bin/env bash
# Starts agentplane on this machine and runs a demo task end to end:
#   1. installs what is missing (PostgreSQL, protoc, mold) from the OS packages;
#   2. starts a private PostgreSQL cluster under .state/local (or uses DATABASE_URL, a URL
#      of a role that may create roles and own the schema);
#   3. builds and starts the control plane (migrating the database) and two workers
#      (AGENTPLANE_WORKERS=n for another number);
#   4. creates a demo workspace and agent, submits a task and streams its answer;
#   5. prints grpcurl commands to go on by hand, and keeps running until Ctrl-C, which stops
#      everything it started. With AGENTPLANE_DEMO_EXIT=1 it stops right after the demo.
# With AGENTPLANE_WORKERS=0 there is no demo (nothing would run it): it prints the command
# that starts a worker by hand instead, e.g. to drain a backlog queued before any worker
# ran (docs/benchmarks.md).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
state="$root/.state/local"
mkdir -p "$state"
cp_port=${AGENTPLANE_PORT:-50051}
workers=${AGENTPLANE_WORKERS:-2}
case "$workers" in
  '' | *[!0-9]*) echo "AGENTPLANE_WORKERS must be a number, got '$workers'" >&2; exit 1 ;;
esac
log_dir="$state/logs"
mkdir -p "$log_dir"

bash deploy/local/deps.sh --tools

pids=()
pg_data=""
pg_bin=""
as_postgres=()
cleanup() {
  trap - EXIT INT TERM
  echo
  echo "==> stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$pg_data" ]; then
    "${as_postgres[@]}" "$pg_bin/pg_ctl" -D "$pg_data" stop -m fast >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $((20000 + RANDOM % 20000))
}

password_file="$state/db-password"
[ -f "$password_file" ] || (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$password_file")
db_password=$(cat "$password_file")

if [ -n "${DATABASE_URL:-}" ]; then
  echo "==> using the database at DATABASE_URL"
  owner_url=$DATABASE_URL
  db_location=${DATABASE_URL#*@}
else
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  pg_data="$state/pg"
  if [ "$(id -u)" = 0 ]; then
    # PostgreSQL refuses to run as root: run the cluster as the postgres OS user.
    as_postgres=(runuser -u postgres --)
    mkdir -p "$pg_data"
    chown postgres:postgres "$pg_data"
    if ! runuser -u postgres -- test -w "$pg_data"; then
      # A parent folder is private to root: keep the cluster where postgres can reach it.
      pg_data="${TMPDIR:-/tmp}/agentplane-local-$(echo "$root" | cksum | cut -d' ' -f1)/pg"
      mkdir -p "$pg_data"
      chown -R postgres:postgres "$(dirname "$pg_data")"
      echo "==> $state is not reachable by the postgres user; the cluster lives in $pg_data"
    fi
  fi
  if [ ! -f "$pg_data/PG_VERSION" ]; then
    echo "==> creating a private PostgreSQL cluster in $pg_data"
    "${as_postgres[@]}" "$pg_bin/initdb" -D "$pg_data" -U postgres --auth=trust -E UTF8 --locale=C >"$log_dir/initdb.log"
  fi
  pg_port=$(free_port)
  echo "==> starting PostgreSQL on 127.0.0.1:$pg_port"
  "${as_postgres[@]}" "$pg_bin/pg_ctl" -D "$pg_data" -l "$pg_data/postgres.log" -w -t 60 \
    -o "-p $pg_port -k $pg_data -c listen_addresses=127.0.0.1" start >/dev/null
  "${as_postgres[@]}" "$pg_bin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -qtAc \
    "SELECT 1 FROM pg_database WHERE datname = 'agentplane'" | grep -q 1 \
    || "${as_postgres[@]}" "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres agentplane
  owner_url="postgres://postgres@127.0.0.1:$pg_port/agentplane"
  db_location="127.0.0.1:$pg_port/agentplane"
fi

# AGENTPLANE_PROFILE=release runs optimised builds (for benchmarks); debug by default.
profile=${AGENTPLANE_PROFILE:-debug}
case "$profile" in
  debug) profile_flag=() ;;
  release) profile_flag=(--release) ;;
  *) echo "AGENTPLANE_PROFILE must be debug or release, got '$profile'" >&2; exit 1 ;;
esac
echo "==> building ($profile; the first build takes a few minutes)"
cargo build -q "${profile_flag[@]}" -p agentplane-control-plane -p agentplane-worker
bin="$root/target/$profile"

echo "==> migrating"
"$bin/agentplane-control-plane" migrate --migrate-database-url "$owner_url"
# Login roles for the services: members of the roles the migrations created, owning nothing.
sql="DO \$\$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'agentplane_cp') THEN
    CREATE ROLE agentplane_cp LOGIN IN ROLE agentplane_app; END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'agentplane_wk') THEN
    CREATE ROLE agentplane_wk LOGIN IN ROLE agentplane_worker; END IF;
  EXECUTE format('ALTER ROLE agentplane_cp PASSWORD %L', '$db_password');
  EXECUTE format('ALTER ROLE agentplane_wk PASSWORD %L', '$db_password');
END \$\$;"
psql_bin=$(command -v psql || echo "$pg_bin/psql")
"$psql_bin" "$owner_url" -qtAc "$sql" >/dev/null
app_url="postgres://agentplane_cp:$db_password@$db_location"
worker_url="postgres://agentplane_wk:$db_password@$db_location"

echo "==> starting the control plane on 127.0.0.1:$cp_port"
AGENTPLANE_DATABASE_URL=$app_url "$bin/agentplane-control-plane" serve --dev-mode \
  --listen-addr "127.0.0.1:$cp_port" >"$log_dir/control-plane.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$cp_port") 2>/dev/null && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$log_dir/control-plane.log" >&2; exit 1; }
  sleep 0.1
done

# Workers inherit this environment: a vendor's key (ANTHROPIC_API_KEY, OPENAI_API_KEY,
# GEMINI_API_KEY) or AGENTPLANE_OPENAI_COMPATIBLE_BASE_URL (e.g. a local Ollama) makes them
# offer that provider too; without any, they run the offline echo provider only.
providers="echo"
[ -n "${ANTHROPIC_API_KEY:-}" ] && providers="$providers anthropic"
[ -n "${OPENAI_API_KEY:-}" ] && providers="$providers openai"
[ -n "${GEMINI_API_KEY:-}" ] && providers="$providers gemini"
[ -n "${AGENTPLANE_OPENAI_COMPATIBLE_BASE_URL:-}" ] && providers="$providers openai_compatible"
echo "==> model providers the workers offer: $providers"

for n in $(seq 1 "$workers"); do
  echo "==> starting worker $n"
  AGENTPLANE_WORKER_DATABASE_URL=$worker_url AGENTPLANE_WORKER_TOKEN=dev-worker-token \
    "$bin/agentplane-worker" --control-plane-url "http://127.0.0.1:$cp_port" --echo-token-delay-ms 60 \
    >"$log_dir/worker-$n.log" 2>&1 &
  pids+=($!)
done

if [ "$workers" = 0 ]; then
  app_url_hint="postgres://agentplane_cp:\$(cat $password_file)@$db_location"
  cat <<HINT

agentplane is running without workers: control plane on 127.0.0.1:$cp_port, logs in
.state/local/logs. Tasks stay pending until a worker runs. Start one (once per worker, each
in its own terminal; Ctrl-C there stops it) with:

  AGENTPLANE_WORKER_DATABASE_URL="postgres://agentplane_wk:\$(cat $password_file)@$db_location" \\
    AGENTPLANE_WORKER_TOKEN=dev-worker-token $bin/agentplane-worker --control-plane-url http://127.0.0.1:$cp_port

To call the API, create a workspace and its first admin API key (shown once) with:

  AGENTPLANE_DATABASE_URL="$app_url_hint" $bin/agentplane-control-plane bootstrap

HINT
else
  echo "==> running the demo"
  echo
  demo_out="$state/demo.out"
  "$bin/agentplane-control-plane" demo --endpoint "http://127.0.0.1:$cp_port" | tee "$demo_out"
  ids=$(grep '^WORKSPACE_ID=' "$demo_out" || true)
  ws=$(echo "$ids" | sed -n 's/.*WORKSPACE_ID=\([^ ]*\).*/\1/p')
  task=$(echo "$ids" | sed -n 's/.*TASK_ID=\([^ ]*\).*/\1/p')
  agent=$(echo "$ids" | sed -n 's/.*AGENT_ID=\([^ ]*\).*/\1/p')
  api_key=$(echo "$ids" | sed -n 's/.*API_KEY=\([^ ]*\).*/\1/p')

  grpcurl_bin=$(command -v grpcurl || echo "$root/.state/tools/bin/grpcurl")
  cat <<HINT

agentplane is running: control plane on 127.0.0.1:$cp_port, $workers worker(s), logs in .state/local/logs.
Go on by hand with grpcurl (reflection is on), with the demo workspace's admin API key
(the platform token, dev-admin-token, only manages workspaces, keys and workers):

  alias apc='$grpcurl_bin -plaintext -H "authorization: Bearer $api_key"'
  apc 127.0.0.1:$cp_port list
  apc 127.0.0.1:$cp_port describe agentplane.v1.TaskService
  apc -d '{"workspace_id":"$ws","agent_id":"$agent","input":[{"role":"ROLE_USER","content":"hi again"}]}' \\
      127.0.0.1:$cp_port agentplane.v1.TaskService/CreateTask
  apc -d '{"workspace_id":"$ws","id":"$task"}' 127.0.0.1:$cp_port agentplane.v1.TaskService/WatchTask
  apc -d '{"workspace_id":"$ws"}' 127.0.0.1:$cp_port agentplane.v1.EventService/WatchEvents

HINT
  # An agent per real provider the workers offer, to try it by hand.
  for provider in $providers; do
    case "$provider" in
      anthropic) wire=PROVIDER_ANTHROPIC model=claude-haiku-4-5 ;;
      openai) wire=PROVIDER_OPENAI model=gpt-4o-mini ;;
      gemini) wire=PROVIDER_GEMINI model=gemini-2.5-flash ;;
      openai_compatible) wire=PROVIDER_OPENAI_COMPATIBLE model=${AGENTPLANE_OPENAI_COMPATIBLE_MODEL:-llama3.2} ;;
      *) continue ;;
    esac
    echo "An agent on $provider (then CreateTask with its id as above):"
    echo "  apc -d '{\"workspace_id\":\"$ws\",\"agent\":{\"name\":\"${provider//_/-}-agent\",\"provider\":\"$wire\",\"model\":\"$model\"}}' \\"
    echo "      127.0.0.1:$cp_port agentplane.v1.AgentService/CreateAgent"
    echo
  done
fi

if [ "${AGENTPLANE_DEMO_EXIT:-0}" = 1 ]; then
  exit 0
fi
echo "Press Ctrl-C to stop everything."
wait "${pids[0]}"
