-- NetBox synchronisation. Keep in step with migrations/postgres/0004_netbox.sql.

-- Which NetBox device a machine is. Deleting the machine drops the link; the
-- device in NetBox is never deleted by Anvil.
CREATE TABLE netbox_links (
    machine_id  BLOB PRIMARY KEY NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    device_id   BIGINT NOT NULL UNIQUE,
    linked_at   TEXT NOT NULL
);

-- One row per sync (full reconcile, webhook, machine write-back, dry run).
CREATE TABLE netbox_sync_runs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT NOT NULL,
    dry_run      BOOLEAN NOT NULL DEFAULT FALSE,
    status       TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    finished_at  TEXT,
    created      BIGINT NOT NULL DEFAULT 0,
    updated      BIGINT NOT NULL DEFAULT 0,
    unchanged    BIGINT NOT NULL DEFAULT 0,
    written      BIGINT NOT NULL DEFAULT 0,
    pending      BIGINT NOT NULL DEFAULT 0,
    conflicts    BIGINT NOT NULL DEFAULT 0,
    error        TEXT,
    report       TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX netbox_sync_runs_started ON netbox_sync_runs (started_at);

-- Machines whose Anvil-side change has not reached NetBox yet. A row stays
-- until a write-back succeeds, so nothing is lost while NetBox is down.
CREATE TABLE netbox_outbox (
    machine_id  BLOB PRIMARY KEY NOT NULL,
    since       TEXT NOT NULL,
    attempts    BIGINT NOT NULL DEFAULT 0,
    last_error  TEXT
);

-- Named positions (the event-log id up to which changes were queued).
CREATE TABLE netbox_cursors (
    name   TEXT PRIMARY KEY NOT NULL,
    value  BIGINT NOT NULL
);
