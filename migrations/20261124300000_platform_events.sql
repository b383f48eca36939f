-- The platform's own event log: side effects on resources that belong to no workspace
-- (today: worker credentials, created, enrolled or revoked), with the acting identity, written
-- in the same transaction as the change. Like `events`, it is append-only; unlike it, it has
-- no tenant, so no row-level security: only the control plane (and the schema owner) reach it.
CREATE TABLE platform_events (
    id            uuid PRIMARY KEY,
    seq           bigint GENERATED ALWAYS AS IDENTITY,
    actor         text NOT NULL,
    action        text NOT NULL,
    resource_type text NOT NULL CHECK (resource_type IN ('worker_credential')),
    resource_id   uuid NOT NULL,
    data          jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX platform_events_by_resource ON platform_events (resource_id, seq);
CREATE TRIGGER platform_events_append_only BEFORE UPDATE OR DELETE ON platform_events
    FOR EACH ROW EXECUTE FUNCTION events_append_only();
CREATE TRIGGER platform_events_no_truncate BEFORE TRUNCATE ON platform_events
    FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();
GRANT SELECT, INSERT ON platform_events TO agentplane_app;
