//! Installer images (what a distribution's network installer needs besides
//! the `images` row) and installer deployments: runs without an agent, whose
//! per-boot tokens (hashes only) let the installer fetch its answer file and
//! call back when it is done (`anvil-core/src/installer.rs`).

use crate::error::{Result, StoreError, corrupt, query_err};
use crate::images::{ImageRecord, insert_err, to_i64};
use crate::machines::NewEvent;
use crate::ts::Ts;
use crate::{Store, on_pool};
use anvil_types::MachineState;
use sqlx::Row;
use sqlx::types::Json;
use time::OffsetDateTime;
use uuid::Uuid;

/// One row of `installer_images`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallerImageRecord {
    pub image_id: Uuid,
    /// `debian`, `ubuntu`, `rocky` or `alma`.
    pub os: String,
    /// Debian mirror, Ubuntu live-server ISO, or Rocky/Alma BaseOS repository.
    pub repo_url: Option<String>,
    pub kernel_sha256: String,
    pub kernel_size: u64,
    pub initrd_sha256: String,
    pub initrd_size: u64,
}

/// One row of `installer_runs`.
#[derive(Debug, Clone, PartialEq)]
pub struct InstallerRunRecord {
    pub id: Uuid,
    pub machine_id: Uuid,
    pub image_id: Uuid,
    pub job_id: Option<Uuid>,
    /// `running`, `succeeded`, `failed` or `aborted`.
    pub state: String,
    /// JSON: what the answer files are rendered from.
    pub params: String,
    pub failure_reason: Option<String>,
    pub started_at: OffsetDateTime,
    pub deadline: OffsetDateTime,
    pub finished_at: Option<OffsetDateTime>,
}

macro_rules! ev_in {
    ($tx:expr, $ev:expr) => {{
        let ev: &NewEvent = $ev;
        sqlx::query(
            "INSERT INTO events (time, actor, machine_id, kind, message, data) VALUES ($1, $2, $3, $4, $5, $6)",
        )
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

const RUN_COLUMNS: &str = "id, machine_id, image_id, job_id, state, params, failure_reason, started_at, deadline, finished_at";

macro_rules! run_from_row {
    ($row:expr) => {{
        let row = $row;
        let ts = |c: &'static str| -> Result<OffsetDateTime> {
            let v: Ts = row.try_get(c).map_err(|e| corrupt(c, e))?;
            Ok(v.0)
        };
        let finished: Option<Ts> = row
            .try_get("finished_at")
            .map_err(|e| corrupt("finished_at", e))?;
        InstallerRunRecord {
            id: row.try_get("id").map_err(|e| corrupt("id", e))?,
            machine_id: row
                .try_get("machine_id")
                .map_err(|e| corrupt("machine_id", e))?,
            image_id: row
                .try_get("image_id")
                .map_err(|e| corrupt("image_id", e))?,
            job_id: row.try_get("job_id").map_err(|e| corrupt("job_id", e))?,
            state: row.try_get("state").map_err(|e| corrupt("state", e))?,
            params: row.try_get("params").map_err(|e| corrupt("params", e))?,
            failure_reason: row
                .try_get("failure_reason")
                .map_err(|e| corrupt("failure_reason", e))?,
            started_at: ts("started_at")?,
            deadline: ts("deadline")?,
            finished_at: finished.map(|t| t.0),
        }
    }};
}

impl Store {
    /// Writes an installer image: its `images` row, its installer row and
    /// the event, in one transaction. A taken name or content is
    /// `Duplicate`, as for `insert_image`.
    pub async fn insert_installer_image(
        &self,
        image: &ImageRecord,
        installer: &InstallerImageRecord,
        event: &NewEvent,
    ) -> Result<()> {
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
            sqlx::query(
                "INSERT INTO installer_images (image_id, os, repo_url, kernel_sha256, kernel_size, initrd_sha256, initrd_size)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(image.id)
            .bind(&installer.os)
            .bind(&installer.repo_url)
            .bind(&installer.kernel_sha256)
            .bind(to_i64("kernel_size", installer.kernel_size)?)
            .bind(&installer.initrd_sha256)
            .bind(to_i64("initrd_size", installer.initrd_size)?)
            .execute(&mut *tx)
            .await
            .map_err(query_err("insert installer image"))?;
            ev_in!(&mut *tx, event);
            tx.commit().await.map_err(query_err("commit"))?;
        });
        Ok(())
    }

    pub async fn installer_image(&self, image_id: Uuid) -> Result<Option<InstallerImageRecord>> {
        on_pool!(self, |p, _b| {
            let row = sqlx::query(
                "SELECT image_id, os, repo_url, kernel_sha256, kernel_size, initrd_sha256, initrd_size FROM installer_images WHERE image_id = $1",
            )
            .bind(image_id)
            .fetch_optional(p)
            .await
            .map_err(query_err("get installer image"))?;
            let Some(row) = row else { return Ok(None) };
            let size = |c: &'static str| -> Result<u64> {
                let v: i64 = row.try_get(c).map_err(|e| corrupt(c, e))?;
                u64::try_from(v).map_err(|e| corrupt(c, e))
            };
            Ok(Some(InstallerImageRecord {
                image_id: row
                    .try_get("image_id")
                    .map_err(|e| corrupt("image_id", e))?,
                os: row.try_get("os").map_err(|e| corrupt("os", e))?,
                repo_url: row
                    .try_get("repo_url")
                    .map_err(|e| corrupt("repo_url", e))?,
                kernel_sha256: row
                    .try_get("kernel_sha256")
                    .map_err(|e| corrupt("kernel_sha256", e))?,
                kernel_size: size("kernel_size")?,
                initrd_sha256: row
                    .try_get("initrd_sha256")
                    .map_err(|e| corrupt("initrd_sha256", e))?,
                initrd_size: size("initrd_size")?,
            }))
        })
    }

    /// Starts an installer deployment: moves the machine from `from` to
    /// `deploying` (compare-and-set, `Concurrent` otherwise), sets its
    /// image, and writes the run and the event in one transaction.
    pub async fn start_installer_run(
        &self,
        run: &InstallerRunRecord,
        from: MachineState,
        event: &NewEvent,
    ) -> Result<()> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, begin| {
            let mut tx = p.begin_with(begin).await.map_err(query_err("begin"))?;
            let done = sqlx::query(
                "UPDATE machines SET state = $1, state_reason = NULL, image_id = $2, updated_at = $3 WHERE id = $4 AND state = $5",
            )
            .bind(MachineState::Deploying.as_str())
            .bind(run.image_id)
            .bind(Ts(run.started_at))
            .bind(run.machine_id)
            .bind(from.as_str())
            .execute(&mut *tx)
            .await
            .map_err(query_err("start installer run"))?;
            if done.rows_affected() == 0 {
                return Err(StoreError::Concurrent);
            }
            sqlx::query(
                "INSERT INTO installer_runs (id, machine_id, image_id, job_id, state, params, failure_reason, started_at, deadline, finished_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(run.id)
            .bind(run.machine_id)
            .bind(run.image_id)
            .bind(run.job_id)
            .bind(&run.state)
            .bind(&run.params)
            .bind(&run.failure_reason)
            .bind(Ts(run.started_at))
            .bind(Ts(run.deadline))
            .bind(run.finished_at.map(Ts))
            .execute(&mut *tx)
            .await
            .map_err(query_err("insert installer run"))?;
            ev_in!(&mut *tx, event);
            tx.commit().await.map_err(query_err("commit"))?;
        });
        Ok(())
    }

    pub async fn installer_run(&self, id: Uuid) -> Result<Option<InstallerRunRecord>> {
        self.installer_run_where("id", id).await
    }

    /// The installer run a job follows.
    pub async fn installer_run_for_job(&self, job_id: Uuid) -> Result<Option<InstallerRunRecord>> {
        self.installer_run_where("job_id", job_id).await
    }

    /// The installer run whose `column` (a key: `id` or `job_id`) is `value`.
    async fn installer_run_where(
        &self,
        column: &'static str,
        value: Uuid,
    ) -> Result<Option<InstallerRunRecord>> {
        on_pool!(self, |p, _b| {
            let sql = format!("SELECT {RUN_COLUMNS} FROM installer_runs WHERE {column} = $1");
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(value)
                .fetch_optional(p)
                .await
                .map_err(query_err("get installer run"))?;
            match row {
                Some(row) => Ok(Some(run_from_row!(&row))),
                None => Ok(None),
            }
        })
    }

    /// The machine's latest installer run, whatever its state.
    pub async fn latest_installer_run(
        &self,
        machine_id: Uuid,
    ) -> Result<Option<InstallerRunRecord>> {
        on_pool!(self, |p, _b| {
            let sql = format!(
                "SELECT {RUN_COLUMNS} FROM installer_runs WHERE machine_id = $1 ORDER BY started_at DESC, id DESC LIMIT 1"
            );
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(machine_id)
                .fetch_optional(p)
                .await
                .map_err(query_err("latest installer run"))?;
            match row {
                Some(row) => Ok(Some(run_from_row!(&row))),
                None => Ok(None),
            }
        })
    }

    /// Every installer run still running (for the watcher).
    pub async fn running_installer_runs(&self) -> Result<Vec<InstallerRunRecord>> {
        on_pool!(self, |p, _b| {
            let sql = format!(
                "SELECT {RUN_COLUMNS} FROM installer_runs WHERE state = 'running' ORDER BY started_at"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(p)
                .await
                .map_err(query_err("running installer runs"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(run_from_row!(row));
            }
            Ok(out)
        })
    }

    /// Ends a running installer run once: `running` → `state`
    /// (compare-and-set), and, when `machine` is given, moves the machine
    /// from its first state to its second with `reason` (compare-and-set
    /// too), with the event, in one transaction. `Concurrent` when the run
    /// had already ended or the machine was no longer where expected;
    /// nothing is written then.
    pub async fn end_installer_run(
        &self,
        run_id: Uuid,
        state: &str,
        reason: Option<&str>,
        machine: Option<(Uuid, MachineState, MachineState)>,
        at: OffsetDateTime,
        event: &NewEvent,
    ) -> Result<()> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, begin| {
            let mut tx = p.begin_with(begin).await.map_err(query_err("begin"))?;
            let done = sqlx::query(
                "UPDATE installer_runs SET state = $1, failure_reason = $2, finished_at = $3 WHERE id = $4 AND state = 'running'",
            )
            .bind(state)
            .bind(reason)
            .bind(Ts(at))
            .bind(run_id)
            .execute(&mut *tx)
            .await
            .map_err(query_err("end installer run"))?;
            if done.rows_affected() == 0 {
                return Err(StoreError::Concurrent);
            }
            if let Some((id, from, to)) = machine {
                let done = sqlx::query(
                    "UPDATE machines SET state = $1, state_reason = $2, updated_at = $3 WHERE id = $4 AND state = $5",
                )
                .bind(to.as_str())
                .bind(reason)
                .bind(Ts(at))
                .bind(id)
                .bind(from.as_str())
                .execute(&mut *tx)
                .await
                .map_err(query_err("move machine"))?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::Concurrent);
                }
            }
            ev_in!(&mut *tx, event);
            tx.commit().await.map_err(query_err("commit"))?;
        });
        Ok(())
    }

    pub async fn insert_installer_token(
        &self,
        token_hash: &str,
        run_id: Uuid,
        created_at: OffsetDateTime,
    ) -> Result<()> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, _b| {
            sqlx::query(
                "INSERT INTO installer_tokens (token_hash, run_id, created_at) VALUES ($1, $2, $3)",
            )
            .bind(token_hash)
            .bind(run_id)
            .bind(Ts(created_at))
            .execute(p)
            .await
            .map_err(query_err("insert installer token"))?;
        });
        Ok(())
    }

    /// The run a token hash was minted for.
    pub async fn installer_token_run(&self, token_hash: &str) -> Result<Option<Uuid>> {
        on_pool!(self, |p, _b| {
            sqlx::query_scalar::<_, Uuid>(
                "SELECT run_id FROM installer_tokens WHERE token_hash = $1",
            )
            .bind(token_hash)
            .fetch_optional(p)
            .await
            .map_err(query_err("find installer token"))
        })
    }

    pub async fn count_installer_tokens(&self, run_id: Uuid) -> Result<u64> {
        on_pool!(self, |p, _b| {
            let n = sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM installer_tokens WHERE run_id = $1",
            )
            .bind(run_id)
            .fetch_one(p)
            .await
            .map_err(query_err("count installer tokens"))?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }
}
