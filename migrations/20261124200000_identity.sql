-- Workspace API keys (issue #15): each bound to one workspace and one role, stored as a
-- SHA-256 hash of the secret (the secret has 256 random bits, so a fast hash is enough),
-- revocable, optionally expiring.

CREATE TABLE api_keys (
    tenant_id    uuid NOT NULL REFERENCES workspaces (id),
    id           uuid NOT NULL,
    name         text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    role         text NOT NULL CHECK (role IN ('admin', 'member', 'viewer')),
    secret_hash  bytea NOT NULL CHECK (octet_length(secret_hash) = 32),
    created_by   text NOT NULL,
    request_id   text CHECK (char_length(request_id) BETWEEN 1 AND 128),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    -- Written in batches by the control plane (about once a minute), not on every request.
    last_used_at timestamptz,
    PRIMARY KEY (tenant_id, id)
);
-- Authentication finds a key by the id embedded in its secret, before it knows the tenant.
CREATE UNIQUE INDEX api_keys_id ON api_keys (id);
CREATE UNIQUE INDEX api_keys_request_id ON api_keys (tenant_id, request_id)
    WHERE request_id IS NOT NULL;

ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON api_keys TO agentplane_app
    USING (tenant_id = app_current_tenant())
    WITH CHECK (tenant_id = app_current_tenant());
-- Authentication: a transaction that has set app.api_key_id to the id named in a presented
-- secret may read that one row (and nothing else) before it knows the tenant, and stamp its
-- last use. It learns nothing it was not already told: the id came with the secret.
CREATE FUNCTION app_current_api_key() RETURNS uuid
    LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('app.api_key_id', true), '')::uuid $$;
CREATE POLICY authenticate ON api_keys FOR SELECT TO agentplane_app
    USING (id = app_current_api_key());

GRANT SELECT, INSERT ON api_keys TO agentplane_app;
GRANT UPDATE (revoked_at, last_used_at) ON api_keys TO agentplane_app;
-- Workers never see keys: no grant, no policy.

-- Events about API keys (created, revoked). A new CHECK is added NOT VALID and validated
-- separately, so the events table is never locked against writes while it is checked.
ALTER TABLE events DROP CONSTRAINT events_resource_type_check;
ALTER TABLE events ADD CONSTRAINT events_resource_type_check
    CHECK (resource_type IN ('workspace', 'agent', 'task', 'api_key')) NOT VALID;
ALTER TABLE events VALIDATE CONSTRAINT events_resource_type_check;
