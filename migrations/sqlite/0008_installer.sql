-- Installer images and installer deployments (docs/deployment.md,
-- "Installer images"). An installer image is a row of `images` (kind
-- 'installer') plus what its network installer needs: the OS family that
-- picks the iPXE template and answer file, the mirror/ISO/repository URL,
-- and the kernel and initrd kept under <data_dir>/boot/installer/<image id>/.
-- An installer deployment has no agent: the machine boots the distribution's
-- installer, which fetches its answer file with a per-boot token and calls
-- back when done. Tokens are stored as SHA-256 only, like agent tokens.
-- Keep in step with migrations/postgres/0008_installer.sql.
CREATE TABLE installer_images (
    image_id       BLOB PRIMARY KEY NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    os             TEXT NOT NULL,
    repo_url       TEXT,
    kernel_sha256  TEXT NOT NULL,
    kernel_size    INTEGER NOT NULL,
    initrd_sha256  TEXT NOT NULL,
    initrd_size    INTEGER NOT NULL
);

-- No foreign key to images: a finished run outlives its image; whether an
-- image is in use is machines.image_id's business.
CREATE TABLE installer_runs (
    id              BLOB PRIMARY KEY NOT NULL,
    machine_id      BLOB NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    image_id        BLOB NOT NULL,
    job_id          BLOB,
    state           TEXT NOT NULL,
    params          TEXT NOT NULL,
    failure_reason  TEXT,
    started_at      TEXT NOT NULL,
    deadline        TEXT NOT NULL,
    finished_at     TEXT
);
CREATE INDEX installer_runs_machine ON installer_runs (machine_id, started_at);

CREATE TABLE installer_tokens (
    token_hash  TEXT PRIMARY KEY NOT NULL,
    run_id      BLOB NOT NULL REFERENCES installer_runs (id) ON DELETE CASCADE,
    created_at  TEXT NOT NULL
);
CREATE INDEX installer_tokens_run ON installer_tokens (run_id);
