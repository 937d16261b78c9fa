-- DHCP leases and the boot timeline. Keep in step with migrations/postgres/0002_network_boot.sql.
CREATE TABLE leases (
    ip          TEXT PRIMARY KEY NOT NULL,
    mac         TEXT NOT NULL,
    network     TEXT NOT NULL,
    state       TEXT NOT NULL,
    hostname    TEXT,
    client_id   TEXT,
    expires_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX leases_mac ON leases (mac);

-- Each step of a network boot, by MAC (a MAC may not belong to a machine yet).
CREATE TABLE boot_events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    time    TEXT NOT NULL,
    mac     TEXT NOT NULL,
    kind    TEXT NOT NULL,
    detail  TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX boot_events_mac ON boot_events (mac, id);
