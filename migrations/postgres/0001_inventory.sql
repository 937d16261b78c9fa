-- Anvil inventory, PostgreSQL flavour. Keep in step with migrations/sqlite/0001_inventory.sql.
CREATE TABLE machines (
    id            UUID PRIMARY KEY,
    hostname      TEXT NOT NULL UNIQUE,
    state         TEXT NOT NULL,
    state_reason  TEXT,
    architecture  TEXT,
    firmware      TEXT,
    vendor        TEXT,
    model         TEXT,
    serial        TEXT,
    facts         JSONB NOT NULL DEFAULT '{}',
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX machines_state ON machines (state);
CREATE INDEX machines_created ON machines (created_at, id);

CREATE TABLE machine_tags (
    machine_id  UUID NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    tag         TEXT NOT NULL,
    PRIMARY KEY (machine_id, tag)
);
CREATE INDEX machine_tags_tag ON machine_tags (tag);

CREATE TABLE interfaces (
    id          UUID PRIMARY KEY,
    machine_id  UUID NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    mac         TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    pxe         BOOLEAN NOT NULL DEFAULT FALSE,
    ipv4        TEXT,
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX interfaces_machine ON interfaces (machine_id);

CREATE TABLE bmcs (
    machine_id    UUID PRIMARY KEY REFERENCES machines (id) ON DELETE CASCADE,
    driver        TEXT NOT NULL,
    address       TEXT NOT NULL,
    port          INTEGER,
    username      TEXT,
    password_enc  BYTEA,
    verify_tls    BOOLEAN NOT NULL DEFAULT TRUE
);

CREATE TABLE events (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time        TIMESTAMPTZ NOT NULL,
    actor       TEXT NOT NULL,
    machine_id  UUID,
    kind        TEXT NOT NULL,
    message     TEXT NOT NULL,
    data        JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX events_machine ON events (machine_id, id);
CREATE INDEX events_time ON events (time);

CREATE TABLE users (
    id             UUID PRIMARY KEY,
    username       TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    is_admin       BOOLEAN NOT NULL DEFAULT FALSE,
    created_at     TIMESTAMPTZ NOT NULL
);

CREATE TABLE api_tokens (
    id            UUID PRIMARY KEY,
    name          TEXT NOT NULL,
    user_id       UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    secret_hash   TEXT NOT NULL UNIQUE,
    created_at    TIMESTAMPTZ NOT NULL,
    last_used_at  TIMESTAMPTZ
);

CREATE TABLE sessions (
    id_hash     TEXT PRIMARY KEY,
    user_id     UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_token  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);
