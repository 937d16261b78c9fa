-- DHCP leases and the boot timeline. Keep in step with migrations/sqlite/0002_network_boot.sql.
CREATE TABLE leases (
    ip          TEXT PRIMARY KEY,
    mac         TEXT NOT NULL,
    network     TEXT NOT NULL,
    state       TEXT NOT NULL,
    hostname    TEXT,
    client_id   TEXT,
    expires_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX leases_mac ON leases (mac);

CREATE TABLE boot_events (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time    TIMESTAMPTZ NOT NULL,
    mac     TEXT NOT NULL,
    kind    TEXT NOT NULL,
    detail  JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX boot_events_mac ON boot_events (mac, id);
