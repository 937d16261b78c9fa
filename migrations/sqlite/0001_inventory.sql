-- Anvil inventory, SQLite flavour. Keep in step with migrations/postgres/0001_inventory.sql:
-- the same tables, columns and constraints; only the types differ.
CREATE TABLE machines (
    id            BLOB PRIMARY KEY NOT NULL,
    hostname      TEXT NOT NULL UNIQUE,
    state         TEXT NOT NULL,
    state_reason  TEXT,
    architecture  TEXT,
    firmware      TEXT,
    vendor        TEXT,
    model         TEXT,
    serial        TEXT,
    facts         TEXT NOT NULL DEFAULT '{}',
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
CREATE INDEX machines_state ON machines (state);
CREATE INDEX machines_created ON machines (created_at, id);

CREATE TABLE machine_tags (
    machine_id  BLOB NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    tag         TEXT NOT NULL,
    PRIMARY KEY (machine_id, tag)
);
CREATE INDEX machine_tags_tag ON machine_tags (tag);

CREATE TABLE interfaces (
    id          BLOB PRIMARY KEY NOT NULL,
    machine_id  BLOB NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    mac         TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    pxe         BOOLEAN NOT NULL DEFAULT FALSE,
    ipv4        TEXT,
    created_at  TEXT NOT NULL
);
CREATE INDEX interfaces_machine ON interfaces (machine_id);

CREATE TABLE bmcs (
    machine_id    BLOB PRIMARY KEY NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    driver        TEXT NOT NULL,
    address       TEXT NOT NULL,
    port          INTEGER,
    username      TEXT,
    password_enc  BLOB,
    verify_tls    BOOLEAN NOT NULL DEFAULT TRUE
);

-- Append-only. machine_id has no foreign key on purpose: the history of a
-- deleted machine stays readable.
CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    time        TEXT NOT NULL,
    actor       TEXT NOT NULL,
    machine_id  BLOB,
    kind        TEXT NOT NULL,
    message     TEXT NOT NULL,
    data        TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX events_machine ON events (machine_id, id);
CREATE INDEX events_time ON events (time);

CREATE TABLE users (
    id             BLOB PRIMARY KEY NOT NULL,
    username       TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    is_admin       BOOLEAN NOT NULL DEFAULT FALSE,
    created_at     TEXT NOT NULL
);

CREATE TABLE api_tokens (
    id            BLOB PRIMARY KEY NOT NULL,
    name          TEXT NOT NULL,
    user_id       BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    secret_hash   TEXT NOT NULL UNIQUE,
    created_at    TEXT NOT NULL,
    last_used_at  TEXT
);

CREATE TABLE sessions (
    id_hash     TEXT PRIMARY KEY NOT NULL,
    user_id     BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_token  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL
);
