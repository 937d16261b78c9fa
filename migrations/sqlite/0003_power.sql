-- Power control: the last known power state of each machine, and jobs.
-- Keep in step with migrations/postgres/0003_power.sql.
ALTER TABLE machines ADD COLUMN power_state TEXT;
ALTER TABLE machines ADD COLUMN power_checked_at TEXT;

CREATE TABLE jobs (
    id           BLOB PRIMARY KEY NOT NULL,
    kind         TEXT NOT NULL,
    machine_id   BLOB,
    status       TEXT NOT NULL,
    actor        TEXT NOT NULL,
    params       TEXT NOT NULL DEFAULT '{}',
    result       TEXT,
    error        TEXT,
    created_at   TEXT NOT NULL,
    started_at   TEXT,
    finished_at  TEXT
);
CREATE INDEX jobs_machine ON jobs (machine_id, created_at);
CREATE INDEX jobs_status ON jobs (status);
