-- Commissioning: runs, their steps, per-boot agent tokens and the hardware
-- facts each run collected. Keep in step with migrations/postgres/0005_commissioning.sql.
CREATE TABLE commissioning_runs (
    id              BLOB PRIMARY KEY NOT NULL,
    machine_id      BLOB NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    number          INTEGER NOT NULL,
    state           TEXT NOT NULL,
    tests           TEXT NOT NULL DEFAULT '[]',
    job_id          BLOB,
    failure_reason  TEXT,
    failed_step     TEXT,
    system_uuid     TEXT,
    agent_version   TEXT,
    started_at      TEXT NOT NULL,
    registered_at   TEXT,
    last_seen_at    TEXT,
    finished_at     TEXT,
    deadline        TEXT NOT NULL,
    UNIQUE (machine_id, number)
);
CREATE INDEX commissioning_runs_state ON commissioning_runs (state);

CREATE TABLE commissioning_steps (
    id              BLOB PRIMARY KEY NOT NULL,
    run_id          BLOB NOT NULL REFERENCES commissioning_runs (id) ON DELETE CASCADE,
    idx             INTEGER NOT NULL,
    kind            TEXT NOT NULL,
    params          TEXT NOT NULL,
    status          TEXT NOT NULL,
    last_seq        INTEGER NOT NULL DEFAULT 0,
    message         TEXT,
    progress_done   BIGINT,
    progress_total  BIGINT,
    result          TEXT,
    started_at      TEXT,
    finished_at     TEXT,
    updated_at      TEXT NOT NULL,
    UNIQUE (run_id, idx)
);

-- Only the SHA-256 of a token is kept.
CREATE TABLE agent_tokens (
    token_hash  TEXT PRIMARY KEY NOT NULL,
    machine_id  BLOB NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    run_id      BLOB NOT NULL REFERENCES commissioning_runs (id) ON DELETE CASCADE,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL
);
CREATE INDEX agent_tokens_run ON agent_tokens (run_id);

-- One document per run: a later run never overwrites an earlier one.
CREATE TABLE hardware_facts (
    run_id        BLOB PRIMARY KEY NOT NULL REFERENCES commissioning_runs (id) ON DELETE CASCADE,
    machine_id    BLOB NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    facts         TEXT NOT NULL,
    bytes         BIGINT NOT NULL,
    collected_at  TEXT NOT NULL
);
CREATE INDEX hardware_facts_machine ON hardware_facts (machine_id);
