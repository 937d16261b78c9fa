-- NetBox synchronisation. Keep in step with migrations/sqlite/0004_netbox.sql.

CREATE TABLE netbox_links (
    machine_id  UUID PRIMARY KEY REFERENCES machines (id) ON DELETE CASCADE,
    device_id   BIGINT NOT NULL UNIQUE,
    linked_at   TIMESTAMPTZ NOT NULL
);

CREATE TABLE netbox_sync_runs (
    id           BIGSERIAL PRIMARY KEY,
    kind         TEXT NOT NULL,
    dry_run      BOOLEAN NOT NULL DEFAULT FALSE,
    status       TEXT NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL,
    finished_at  TIMESTAMPTZ,
    created      BIGINT NOT NULL DEFAULT 0,
    updated      BIGINT NOT NULL DEFAULT 0,
    unchanged    BIGINT NOT NULL DEFAULT 0,
    written      BIGINT NOT NULL DEFAULT 0,
    pending      BIGINT NOT NULL DEFAULT 0,
    conflicts    BIGINT NOT NULL DEFAULT 0,
    error        TEXT,
    report       JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX netbox_sync_runs_started ON netbox_sync_runs (started_at);

CREATE TABLE netbox_outbox (
    machine_id  UUID PRIMARY KEY,
    since       TIMESTAMPTZ NOT NULL,
    attempts    BIGINT NOT NULL DEFAULT 0,
    last_error  TEXT
);

CREATE TABLE netbox_cursors (
    name   TEXT PRIMARY KEY,
    value  BIGINT NOT NULL
);
