-- OS images: metadata of the raw disks stored compressed under
-- <data_dir>/images/<sha256>.raw.zst (never in the database), and which
-- machine uses which. Keep in step with migrations/sqlite/0006_images.sql.
CREATE TABLE images (
    id             UUID PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    kind           TEXT NOT NULL DEFAULT 'disk',
    os             TEXT,
    os_release     TEXT,
    arch           TEXT,
    firmware       TEXT,
    login_user     TEXT,
    source_format  TEXT NOT NULL,
    source_size    BIGINT NOT NULL,
    raw_size       BIGINT NOT NULL,
    stored_size    BIGINT NOT NULL,
    zero_bytes     BIGINT NOT NULL,
    sha256         TEXT NOT NULL UNIQUE,
    created_at     TIMESTAMPTZ NOT NULL
);

-- Set by deployment; an image a machine uses cannot be deleted.
ALTER TABLE machines ADD COLUMN image_id UUID REFERENCES images (id);
CREATE INDEX machines_image ON machines (image_id);
