-- Power control. Keep in step with migrations/sqlite/0003_power.sql.
ALTER TABLE machines ADD COLUMN power_state TEXT;
ALTER TABLE machines ADD COLUMN power_checked_at TIMESTAMPTZ;

CREATE TABLE jobs (
    id           UUID PRIMARY KEY,
    kind         TEXT NOT NULL,
    machine_id   UUID,
    status       TEXT NOT NULL,
    actor        TEXT NOT NULL,
    params       JSONB NOT NULL DEFAULT '{}',
    result       JSONB,
    error        TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    started_at   TIMESTAMPTZ,
    finished_at  TIMESTAMPTZ
);
CREATE INDEX jobs_machine ON jobs (machine_id, created_at);
CREATE INDEX jobs_status ON jobs (status);
