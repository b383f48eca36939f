-- Per-worker credentials (issue #15): each worker authenticates with its own secret, and its
-- worker id is the credential's id, so a worker can no longer claim to be another. Issued by
-- the platform admin, or to a worker that presents the fleet's enrolment token. A platform
-- table like workers: no tenant_id, reached through the pool; workers themselves never read
-- it (no grant to agentplane_worker).
CREATE TABLE worker_credentials (
    id          uuid PRIMARY KEY,
    name        text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    secret_hash bytea NOT NULL CHECK (octet_length(secret_hash) = 32),
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_by  text,
    revoked_at  timestamptz,
    CHECK ((revoked_at IS NULL) = (revoked_by IS NULL))
);
-- Revocation checks read the revoked ones.
CREATE INDEX worker_credentials_revoked ON worker_credentials (revoked_at)
    WHERE revoked_at IS NOT NULL;

GRANT SELECT, INSERT ON worker_credentials TO agentplane_app;
GRANT UPDATE (revoked_at, revoked_by) ON worker_credentials TO agentplane_app;
