//! OS image metadata (the bytes live on the filesystem, see anvil-image) and
//! which machines use an image.

use crate::error::{Result, StoreError, corrupt, query_err};
use crate::machines::NewEvent;
use crate::ts::Ts;
use crate::{Store, on_pool};
use sqlx::Row;
use sqlx::types::Json;
use time::OffsetDateTime;
use uuid::Uuid;

/// One row of `images`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    pub id: Uuid,
    pub name: String,
    /// `disk` (a raw disk image to write); room for installer kinds later.
    pub kind: String,
    pub os: Option<String>,
    pub release: Option<String>,
    pub arch: Option<String>,
    pub firmware: Option<String>,
    pub login_user: Option<String>,
    pub source_format: String,
    pub source_size: u64,
    pub raw_size: u64,
    pub stored_size: u64,
    pub zero_bytes: u64,
    pub sha256: String,
    pub created_at: OffsetDateTime,
}

/// A machine that uses an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUser {
    pub image_id: Uuid,
    pub machine_id: Uuid,
    pub hostname: String,
}

/// What `delete_image` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageDelete {
    Deleted,
    NotFound,
    /// Refused: these machines (hostnames, sorted) use it.
    InUse(Vec<String>),
}

const COLUMNS: &str = "id, name, kind, os, os_release, arch, firmware, login_user, source_format, source_size, raw_size, stored_size, zero_bytes, sha256, created_at";

macro_rules! image_from_row {
    ($row:expr) => {{
        let row = $row;
        let size = |column: &'static str| -> Result<u64> {
            let v: i64 = row.try_get(column).map_err(|e| corrupt(column, e))?;
            u64::try_from(v).map_err(|e| corrupt(column, e))
        };
        let created: Ts = row
            .try_get("created_at")
            .map_err(|e| corrupt("created_at", e))?;
        ImageRecord {
            id: row.try_get("id").map_err(|e| corrupt("id", e))?,
            name: row.try_get("name").map_err(|e| corrupt("name", e))?,
            kind: row.try_get("kind").map_err(|e| corrupt("kind", e))?,
            os: row.try_get("os").map_err(|e| corrupt("os", e))?,
            release: row
                .try_get("os_release")
                .map_err(|e| corrupt("os_release", e))?,
            arch: row.try_get("arch").map_err(|e| corrupt("arch", e))?,
            firmware: row
                .try_get("firmware")
                .map_err(|e| corrupt("firmware", e))?,
            login_user: row
                .try_get("login_user")
                .map_err(|e| corrupt("login_user", e))?,
            source_format: row
                .try_get("source_format")
                .map_err(|e| corrupt("source_format", e))?,
            source_size: size("source_size")?,
            raw_size: size("raw_size")?,
            stored_size: size("stored_size")?,
            zero_bytes: size("zero_bytes")?,
            sha256: row.try_get("sha256").map_err(|e| corrupt("sha256", e))?,
            created_at: created.0,
        }
    }};
}

pub(crate) fn to_i64(column: &'static str, v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|e| corrupt(column, e))
}

/// Names the unique column an insert collided with.
pub(crate) fn insert_err(e: sqlx::Error, image: &ImageRecord) -> StoreError {
    if let sqlx::Error::Database(db) = &e
        && db.is_unique_violation()
    {
        let text = format!("{} {}", db.constraint().unwrap_or(""), db.message());
        return if text.contains("sha256") {
            StoreError::Duplicate {
                what: "sha256",
                value: image.sha256.clone(),
            }
        } else {
            StoreError::Duplicate {
                what: "name",
                value: image.name.clone(),
            }
        };
    }
    query_err("insert image")(e)
}

macro_rules! append_event {
    ($tx:expr, $ev:expr) => {{
        let ev: &NewEvent = $ev;
        sqlx::query("INSERT INTO events (time, actor, machine_id, kind, message, data) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(Ts(ev.time))
            .bind(&ev.actor)
            .bind(ev.machine_id)
            .bind(&ev.kind)
            .bind(&ev.message)
            .bind(Json(&ev.data))
            .execute($tx)
            .await
            .map_err(query_err("append event"))?;
    }};
}

impl Store {
    /// Adds an image and its event. A second image with the same name or the
    /// same content (sha256) is `Duplicate` naming the column.
    pub async fn insert_image(&self, image: &ImageRecord, event: &NewEvent) -> Result<()> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, begin| {
            let mut tx = p.begin_with(begin).await.map_err(query_err("begin"))?;
            sqlx::query(
                "INSERT INTO images (id, name, kind, os, os_release, arch, firmware, login_user, source_format, source_size, raw_size, stored_size, zero_bytes, sha256, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            )
            .bind(image.id)
            .bind(&image.name)
            .bind(&image.kind)
            .bind(&image.os)
            .bind(&image.release)
            .bind(&image.arch)
            .bind(&image.firmware)
            .bind(&image.login_user)
            .bind(&image.source_format)
            .bind(to_i64("source_size", image.source_size)?)
            .bind(to_i64("raw_size", image.raw_size)?)
            .bind(to_i64("stored_size", image.stored_size)?)
            .bind(to_i64("zero_bytes", image.zero_bytes)?)
            .bind(&image.sha256)
            .bind(Ts(image.created_at))
            .execute(&mut *tx)
            .await
            .map_err(|e| insert_err(e, image))?;
            append_event!(&mut *tx, event);
            tx.commit().await.map_err(query_err("commit"))?;
        });
        Ok(())
    }

    pub async fn get_image_by_name(&self, name: &str) -> Result<Option<ImageRecord>> {
        self.get_image_where("name", name).await
    }

    pub async fn get_image_by_sha256(&self, sha256: &str) -> Result<Option<ImageRecord>> {
        self.get_image_where("sha256", sha256).await
    }

    async fn get_image_where(
        &self,
        column: &'static str,
        value: &str,
    ) -> Result<Option<ImageRecord>> {
        on_pool!(self, |p, _b| {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM images WHERE {column} = $1"
            )))
            .bind(value)
            .fetch_optional(p)
            .await
            .map_err(query_err("get image"))?;
            Ok(match row {
                Some(row) => Some(image_from_row!(row)),
                None => None,
            })
        })
    }

    /// Every image, by name.
    pub async fn list_images(&self) -> Result<Vec<ImageRecord>> {
        on_pool!(self, |p, _b| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM images ORDER BY name"
            )))
            .fetch_all(p)
            .await
            .map_err(query_err("list images"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(image_from_row!(row));
            }
            Ok(out)
        })
    }

    /// Machines that use an image (all images when `image_id` is `None`),
    /// by hostname.
    pub async fn image_users(&self, image_id: Option<Uuid>) -> Result<Vec<ImageUser>> {
        on_pool!(self, |p, _b| {
            let rows = sqlx::query(
                "SELECT image_id, id, hostname FROM machines
                 WHERE image_id IS NOT NULL AND ($1 IS NULL OR image_id = $1) ORDER BY hostname",
            )
            .bind(image_id)
            .fetch_all(p)
            .await
            .map_err(query_err("image users"))?;
            rows.iter()
                .map(|row| {
                    Ok(ImageUser {
                        image_id: row
                            .try_get("image_id")
                            .map_err(|e| corrupt("image_id", e))?,
                        machine_id: row.try_get("id").map_err(|e| corrupt("id", e))?,
                        hostname: row
                            .try_get("hostname")
                            .map_err(|e| corrupt("hostname", e))?,
                    })
                })
                .collect()
        })
    }

    /// Records which image a machine runs (deployment), or none.
    pub async fn set_machine_image(
        &self,
        machine_id: Uuid,
        image_id: Option<Uuid>,
    ) -> Result<bool> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, _b| {
            let done = sqlx::query("UPDATE machines SET image_id = $1 WHERE id = $2")
                .bind(image_id)
                .bind(machine_id)
                .execute(p)
                .await
                .map_err(query_err("set machine image"))?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Deletes an image unless a machine uses it; the check and the delete
    /// are one statement, so a machine cannot start using it in between.
    pub async fn delete_image(&self, id: Uuid, event: &NewEvent) -> Result<ImageDelete> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, begin| {
            let mut tx = p.begin_with(begin).await.map_err(query_err("begin"))?;
            let done = sqlx::query("DELETE FROM images WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM machines WHERE image_id = $1)")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(query_err("delete image"))?;
            if done.rows_affected() == 1 {
                append_event!(&mut *tx, event);
                tx.commit().await.map_err(query_err("commit"))?;
                return Ok(ImageDelete::Deleted);
            }
            let users: Vec<String> = sqlx::query_scalar(
                "SELECT hostname FROM machines WHERE image_id = $1 ORDER BY hostname",
            )
            .bind(id)
            .fetch_all(&mut *tx)
            .await
            .map_err(query_err("image users"))?;
            tx.rollback().await.map_err(query_err("rollback"))?;
            Ok(if users.is_empty() {
                ImageDelete::NotFound
            } else {
                ImageDelete::InUse(users)
            })
        })
    }
}
