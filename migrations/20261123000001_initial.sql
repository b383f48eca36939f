-- agentplane initial schema. Rules (../shared/DESIGN.md): every workspace-owned table carries
-- tenant_id with composite keys, row-level security is enabled and forced, statuses are
-- CHECKed text, names of soft-deleted rows are reusable, the event log is append-only.

-- Roles the services run as. They own nothing, so they cannot bypass row-level security.
-- Login users are granted membership in them (deploy/local/up.sh shows how).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'agentplane_app') THEN
        CREATE ROLE agentplane_app NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'agentplane_worker') THEN
        CREATE ROLE agentplane_worker NOLOGIN;
    END IF;
END
$$;

-- The tenant of the current transaction, set by the control plane with
-- set_config('app.tenant_id', <workspace id>, true). NULL when unset, which matches no row.
CREATE FUNCTION app_current_tenant() RETURNS uuid
    LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('app.tenant_id', true), '')::uuid $$;

-- The tenant registry itself is a platform table: it has no tenant_id of its own to isolate.
CREATE TABLE workspaces (
    id           uuid PRIMARY KEY,
    display_name text NOT NULL CHECK (char_length(display_name) BETWEEN 1 AND 200),
    labels       jsonb NOT NULL DEFAULT '{}',
    request_id   text CHECK (char_length(request_id) BETWEEN 1 AND 128),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz
);
CREATE UNIQUE INDEX workspaces_request_id ON workspaces (request_id) WHERE request_id IS NOT NULL;

CREATE TABLE agents (
    tenant_id         uuid NOT NULL REFERENCES workspaces (id),
    id                uuid NOT NULL,
    name              text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 63),
    provider          text NOT NULL CHECK (provider IN ('echo')),
    model             text NOT NULL CHECK (char_length(model) BETWEEN 1 AND 200),
    system_prompt     text NOT NULL DEFAULT '',
    generation        jsonb NOT NULL DEFAULT '{}',
    labels            jsonb NOT NULL DEFAULT '{}',
    max_concurrency   integer NOT NULL CHECK (max_concurrency BETWEEN 1 AND 10000),
    task_timeout_ms   bigint NOT NULL CHECK (task_timeout_ms BETWEEN 1000 AND 86400000),
    max_attempts      integer NOT NULL CHECK (max_attempts BETWEEN 1 AND 100),
    request_id        text CHECK (char_length(request_id) BETWEEN 1 AND 128),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    deleted_at        timestamptz,
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX agents_live_name ON agents (tenant_id, name) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX agents_request_id ON agents (tenant_id, request_id) WHERE request_id IS NOT NULL;

CREATE TABLE tasks (
    tenant_id        uuid NOT NULL,
    id               uuid NOT NULL,
    agent_id         uuid NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'canceled')),
    priority         integer NOT NULL DEFAULT 0 CHECK (priority BETWEEN -1000 AND 1000),
    run_at           timestamptz NOT NULL DEFAULT now(),
    labels           jsonb NOT NULL DEFAULT '{}',
    -- Claims so far; the fencing token of the current attempt.
    attempt          integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    -- Attempts given back by a worker shutting down; they do not count against max_attempts.
    releases         integer NOT NULL DEFAULT 0 CHECK (releases >= 0),
    max_attempts     integer NOT NULL CHECK (max_attempts BETWEEN 1 AND 100),
    worker_id        uuid,
    lease_expires_at timestamptz,
    output           text,
    finish_reason    text,
    input_tokens     bigint NOT NULL DEFAULT 0,
    output_tokens    bigint NOT NULL DEFAULT 0,
    cost_micros      bigint NOT NULL DEFAULT 0,
    error_code       text,
    error_message    text,
    request_id       text CHECK (char_length(request_id) BETWEEN 1 AND 128),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    ended_at         timestamptz,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, agent_id) REFERENCES agents (tenant_id, id),
    CHECK ((status = 'running') = (lease_expires_at IS NOT NULL AND worker_id IS NOT NULL))
);
-- Serves the claim: pending tasks in claim order.
CREATE INDEX tasks_claim ON tasks (priority DESC, run_at) WHERE status = 'pending';
-- Serves lease expiry.
CREATE INDEX tasks_leases ON tasks (lease_expires_at) WHERE status = 'running';
-- Serves the per-agent concurrency count at claim time.
CREATE INDEX tasks_running_by_agent ON tasks (tenant_id, agent_id) WHERE status = 'running';
CREATE INDEX tasks_by_agent ON tasks (tenant_id, agent_id, id);
CREATE INDEX tasks_by_status ON tasks (tenant_id, status, id);
CREATE UNIQUE INDEX tasks_request_id ON tasks (tenant_id, request_id) WHERE request_id IS NOT NULL;

-- The transcript: the system prompt as it was at creation, the input, the answer.
CREATE TABLE task_messages (
    tenant_id  uuid NOT NULL,
    id         uuid NOT NULL,
    task_id    uuid NOT NULL,
    position   integer NOT NULL CHECK (position >= 0),
    role       text NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content    text NOT NULL,
    attempt    integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, task_id, position),
    FOREIGN KEY (tenant_id, task_id) REFERENCES tasks (tenant_id, id)
);

-- Output deltas of running attempts, kept until the task ends so late watchers catch up.
CREATE TABLE task_output_chunks (
    tenant_id  uuid NOT NULL,
    task_id    uuid NOT NULL,
    attempt    integer NOT NULL,
    seq        bigint NOT NULL CHECK (seq >= 0),
    content    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, task_id, attempt, seq),
    FOREIGN KEY (tenant_id, task_id) REFERENCES tasks (tenant_id, id)
);

-- One row per provider call, with the idempotency id the provider saw.
CREATE TABLE usage_records (
    tenant_id           uuid NOT NULL,
    id                  uuid NOT NULL,
    task_id             uuid NOT NULL,
    attempt             integer NOT NULL,
    step                integer NOT NULL,
    provider            text NOT NULL,
    model               text NOT NULL,
    provider_request_id text NOT NULL,
    input_tokens        bigint NOT NULL CHECK (input_tokens >= 0),
    output_tokens       bigint NOT NULL CHECK (output_tokens >= 0),
    cost_micros         bigint NOT NULL CHECK (cost_micros >= 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, provider_request_id),
    FOREIGN KEY (tenant_id, task_id) REFERENCES tasks (tenant_id, id)
);

-- The event log. Position is (xid, seq): a reader only returns events of transactions older
-- than every transaction still running, so a cursor never skips an event that commits late.
CREATE TABLE events (
    tenant_id     uuid NOT NULL REFERENCES workspaces (id),
    id            uuid NOT NULL,
    seq           bigint GENERATED ALWAYS AS IDENTITY,
    xid           xid8 NOT NULL DEFAULT pg_current_xact_id(),
    actor         text NOT NULL,
    action        text NOT NULL,
    resource_type text NOT NULL CHECK (resource_type IN ('workspace', 'agent', 'task')),
    resource_id   uuid NOT NULL,
    request_id    text,
    data          jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX events_log ON events (tenant_id, xid, seq);
CREATE INDEX events_by_resource ON events (tenant_id, resource_id, xid, seq);

CREATE FUNCTION events_append_only() RETURNS trigger
    LANGUAGE plpgsql
    AS $$ BEGIN RAISE EXCEPTION 'the event log is append-only'; END $$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();

-- Workers that have connected to a control plane (platform table).
CREATE TABLE workers (
    id            uuid PRIMARY KEY,
    version       text NOT NULL,
    capacity      integer NOT NULL CHECK (capacity BETWEEN 1 AND 10000),
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now()
);

-- Row-level security: the control plane sees one tenant per transaction; the worker role
-- claims across tenants (it serves every workspace) but can only read agents and
-- transcripts, move tasks through the claim, and append events.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['agents', 'tasks', 'task_messages', 'task_output_chunks',
                             'usage_records', 'events']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I TO agentplane_app '
                       'USING (tenant_id = app_current_tenant()) '
                       'WITH CHECK (tenant_id = app_current_tenant())', t);
    END LOOP;
END
$$;
CREATE POLICY worker_read ON agents FOR SELECT TO agentplane_worker USING (true);
CREATE POLICY worker_read ON task_messages FOR SELECT TO agentplane_worker USING (true);
CREATE POLICY worker_read ON tasks FOR SELECT TO agentplane_worker USING (true);
CREATE POLICY worker_claim ON tasks FOR UPDATE TO agentplane_worker USING (true) WITH CHECK (true);
CREATE POLICY worker_append ON events FOR INSERT TO agentplane_worker WITH CHECK (true);

GRANT USAGE ON SCHEMA public TO agentplane_app, agentplane_worker;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO agentplane_app, agentplane_worker;
GRANT SELECT, INSERT, UPDATE ON workspaces, agents, tasks, workers TO agentplane_app;
GRANT SELECT, INSERT ON task_messages, usage_records, events TO agentplane_app;
GRANT SELECT, INSERT, DELETE ON task_output_chunks TO agentplane_app;
GRANT SELECT ON agents, task_messages TO agentplane_worker;
GRANT SELECT ON tasks TO agentplane_worker;
-- Only the columns the claim and lease expiry change: a worker cannot write results.
GRANT UPDATE (status, attempt, worker_id, lease_expires_at, run_at, started_at, ended_at,
              updated_at, error_code, error_message) ON tasks TO agentplane_worker;
GRANT INSERT ON events TO agentplane_worker;
