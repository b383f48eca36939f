-- Users from an external identity provider (issue #15), recorded on first sight by
-- (issuer, subject), and their memberships: one role in each workspace they belong to.

-- A platform table, like workspaces: a user may belong to many workspaces.
CREATE TABLE users (
    id         uuid PRIMARY KEY,
    issuer     text NOT NULL CHECK (char_length(issuer) BETWEEN 1 AND 1000),
    subject    text NOT NULL CHECK (char_length(subject) BETWEEN 1 AND 255),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (issuer, subject)
);
GRANT SELECT, INSERT ON users TO agentplane_app;

CREATE TABLE memberships (
    tenant_id  uuid NOT NULL REFERENCES workspaces (id),
    user_id    uuid NOT NULL REFERENCES users (id),
    role       text NOT NULL CHECK (role IN ('admin', 'member', 'viewer')),
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id)
);
-- ListWorkspaces of a user.
CREATE INDEX memberships_by_user ON memberships (user_id, tenant_id);

ALTER TABLE memberships ENABLE ROW LEVEL SECURITY;
ALTER TABLE memberships FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON memberships TO agentplane_app
    USING (tenant_id = app_current_tenant())
    WITH CHECK (tenant_id = app_current_tenant());
-- A user's own memberships across workspaces (ListWorkspaces), readable by a transaction that
-- set app.user_id to the user the request authenticated as.
CREATE FUNCTION app_current_user() RETURNS uuid
    LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('app.user_id', true), '')::uuid $$;
CREATE POLICY own_memberships ON memberships FOR SELECT TO agentplane_app
    USING (user_id = app_current_user());

GRANT SELECT, INSERT, DELETE ON memberships TO agentplane_app;
GRANT UPDATE (role, updated_at) ON memberships TO agentplane_app;

ALTER TABLE events DROP CONSTRAINT events_resource_type_check;
ALTER TABLE events ADD CONSTRAINT events_resource_type_check
    CHECK (resource_type IN ('workspace', 'agent', 'task', 'api_key', 'member')) NOT VALID;
ALTER TABLE events VALIDATE CONSTRAINT events_resource_type_check;
