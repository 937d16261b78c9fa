-- Anvil instances and the jobs they run (ARCHITECTURE.md, "Jobs across
-- restarts and instances"). Every `anvil serve` registers itself with a new
-- id and refreshes `seen_at` every few seconds; a clean stop sets
-- `stopped_at`. A queued or running job whose owner is stopped, silent for
-- too long or unknown (NULL: a job from before this migration) is an
-- orphan: a live instance takes over the jobs that follow an agent or
-- installer run (the run itself lives in the store and goes on) and fails
-- the others as interrupted. Jobs of live instances are left alone, so a
-- restart of one instance no longer fails another's work.
-- Keep in step with migrations/postgres/0009_instances.sql.
CREATE TABLE instances (
    id          BLOB PRIMARY KEY NOT NULL,
    hostname    TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    seen_at     TEXT NOT NULL,
    stopped_at  TEXT
);

ALTER TABLE jobs ADD COLUMN owner BLOB;
-- A taken-over job finds the run it follows by the run's job_id.
CREATE INDEX commissioning_runs_job ON commissioning_runs (job_id);
CREATE INDEX installer_runs_job ON installer_runs (job_id);

-- One NetBox sync at a time across instances: a sync records its instance,
-- and at most one run is 'running' (a second waits for it). Runs left
-- running by a server that stopped before this migration are closed first.
ALTER TABLE netbox_sync_runs ADD COLUMN owner BLOB;
UPDATE netbox_sync_runs SET status = 'failed', finished_at = started_at,
    error = 'the server stopped during the sync' WHERE status = 'running';
CREATE UNIQUE INDEX netbox_sync_runs_one_running ON netbox_sync_runs (status)
    WHERE status = 'running';
