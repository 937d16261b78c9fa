//! Jobs and the power state of machines.

use crate::error::{Result, corrupt, query_err};
use crate::ts::Ts;
use crate::{NewEvent, Store, on_pool};
use anvil_types::{Job, JobStatus};
use sqlx::Row;
use sqlx::types::Json;
use time::OffsetDateTime;
use uuid::Uuid;

const JOB_COLUMNS: &str = "id, kind, machine_id, status, actor, params, result, error, created_at, started_at, finished_at";

macro_rules! job_from_row {
    ($row:expr) => {{
        let row = $row;
        let status: String = row.try_get("status").map_err(|e| corrupt("status", e))?;
        let params: Json<serde_json::Value> =
            row.try_get("params").map_err(|e| corrupt("params", e))?;
        let result: Option<Json<serde_json::Value>> =
            row.try_get("result").map_err(|e| corrupt("result", e))?;
        let created: Ts = row
            .try_get("created_at")
            .map_err(|e| corrupt("created_at", e))?;
        let started: Option<Ts> = row
            .try_get("started_at")
            .map_err(|e| corrupt("started_at", e))?;
        let finished: Option<Ts> = row
            .try_get("finished_at")
            .map_err(|e| corrupt("finished_at", e))?;
        Job {
            id: row.try_get("id").map_err(|e| corrupt("id", e))?,
            kind: row.try_get("kind").map_err(|e| corrupt("kind", e))?,
            machine_id: row
                .try_get("machine_id")
                .map_err(|e| corrupt("machine_id", e))?,
            status: status
                .parse::<JobStatus>()
                .map_err(|e| corrupt("status", e))?,
            actor: row.try_get("actor").map_err(|e| corrupt("actor", e))?,
            params: params.0,
            result: result.map(|r| r.0),
            error: row.try_get("error").map_err(|e| corrupt("error", e))?,
            created_at: created.0,
            started_at: started.map(|t| t.0),
            finished_at: finished.map(|t| t.0),
        }
    }};
}

/// An Anvil instance on record (`anvil serve` process).
#[derive(Debug, Clone)]
pub struct InstanceRecord {
    pub id: Uuid,
    pub hostname: String,
    pub started_at: OffsetDateTime,
    pub seen_at: OffsetDateTime,
    pub stopped_at: Option<OffsetDateTime>,
}

/// A queued or running job whose owner is gone, with that owner (`None`: not
/// recorded).
#[derive(Debug, Clone)]
pub struct OrphanJob {
    pub job: Job,
    pub owner: Option<Uuid>,
}

/// One step of a job's life, for [`Store::apply_job_updates`], which writes
/// many of them (of many jobs) in one transaction.
#[derive(Debug, Clone)]
// Updates live only in the writer's queue, a few hundred bytes each; boxing
// the large variant would add an allocation per job for nothing.
#[allow(clippy::large_enum_variant)]
pub enum JobUpdate {
    /// The job moved to `running` (only from `queued`, as `start_job`).
    Started { id: Uuid, at: OffsetDateTime },
    /// The job's outcome, with what it learnt and its event, all visible at
    /// once: a reader never sees a finished job without its event or the
    /// power state it read.
    Finished {
        id: Uuid,
        outcome: std::result::Result<serde_json::Value, String>,
        at: OffsetDateTime,
        /// The machine's power state as the job read it (`on`/`off`).
        power_state: Option<(Uuid, String)>,
        event: Option<NewEvent>,
    },
}

impl Store {
    pub async fn insert_job(&self, job: &Job) -> Result<()> {
        self.insert_jobs(std::slice::from_ref(job)).await
    }

    /// Inserts jobs in one transaction: a bulk action over a rack is one
    /// commit, not one per machine (each of which would also queue behind
    /// the writes of the jobs already running).
    pub async fn insert_jobs(&self, jobs: &[Job]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, begin| {
            let mut tx = p.begin_with(begin).await.map_err(query_err("begin"))?;
            for job in jobs {
                sqlx::query(
                    "INSERT INTO jobs (id, kind, machine_id, status, actor, params, result, error, created_at, started_at, finished_at, owner)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                )
                .bind(job.id)
                .bind(&job.kind)
                .bind(job.machine_id)
                .bind(job.status.as_str())
                .bind(&job.actor)
                .bind(Json(&job.params))
                .bind(job.result.as_ref().map(Json))
                .bind(&job.error)
                .bind(Ts(job.created_at))
                .bind(job.started_at.map(Ts))
                .bind(job.finished_at.map(Ts))
                .bind(self.instance)
                .execute(&mut *tx)
                .await
                .map_err(query_err("insert job"))?;
            }
            tx.commit().await.map_err(query_err("commit jobs"))?;
        });
        Ok(())
    }

    /// Moves a job to `running`.
    pub async fn start_job(&self, id: Uuid, at: OffsetDateTime) -> Result<()> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, _b| {
            sqlx::query("UPDATE jobs SET status = 'running', started_at = $1 WHERE id = $2 AND status = 'queued'")
                .bind(Ts(at))
                .bind(id)
                .execute(p)
                .await
                .map_err(query_err("start job"))?;
        });
        Ok(())
    }

    /// Records a job's outcome.
    pub async fn finish_job(
        &self,
        id: Uuid,
        outcome: std::result::Result<&serde_json::Value, &str>,
        at: OffsetDateTime,
    ) -> Result<()> {
        let _serialised = self.write_guard().await;
        let (status, result, error) = match outcome {
            Ok(r) => (JobStatus::Succeeded, Some(Json(r)), None),
            Err(e) => (JobStatus::Failed, None, Some(e)),
        };
        on_pool!(self, |p, _b| {
            sqlx::query("UPDATE jobs SET status = $1, result = $2, error = $3, finished_at = $4 WHERE id = $5")
                .bind(status.as_str())
                .bind(result)
                .bind(error)
                .bind(Ts(at))
                .bind(id)
                .execute(p)
                .await
                .map_err(query_err("finish job"))?;
        });
        Ok(())
    }

    /// Writes `updates` in order, in one transaction: the group commit of
    /// the job writer (`anvil-core`), so 1,000 jobs finishing within a few
    /// milliseconds cost a few commits instead of thousands. All or none.
    pub async fn apply_job_updates(&self, updates: &[JobUpdate]) -> Result<()> {
        if updates.is_empty() {
            return Ok(());
        }
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, begin| {
            let mut tx = p.begin_with(begin).await.map_err(query_err("begin"))?;
            for u in updates {
                match u {
                    JobUpdate::Started { id, at } => {
                        sqlx::query("UPDATE jobs SET status = 'running', started_at = $1 WHERE id = $2 AND status = 'queued'")
                            .bind(Ts(*at))
                            .bind(*id)
                            .execute(&mut *tx)
                            .await
                            .map_err(query_err("start job"))?;
                    }
                    JobUpdate::Finished {
                        id,
                        outcome,
                        at,
                        power_state,
                        event,
                    } => {
                        if let Some((machine_id, state)) = power_state {
                            sqlx::query(
                                "UPDATE machines SET power_state = $1, power_checked_at = $2 WHERE id = $3",
                            )
                            .bind(state.as_str())
                            .bind(Ts(*at))
                            .bind(*machine_id)
                            .execute(&mut *tx)
                            .await
                            .map_err(query_err("set power state"))?;
                        }
                        let (status, result, error) = match outcome {
                            Ok(r) => (JobStatus::Succeeded, Some(Json(r)), None),
                            Err(e) => (JobStatus::Failed, None, Some(e.as_str())),
                        };
                        sqlx::query("UPDATE jobs SET status = $1, result = $2, error = $3, finished_at = $4 WHERE id = $5")
                            .bind(status.as_str())
                            .bind(result)
                            .bind(error)
                            .bind(Ts(*at))
                            .bind(*id)
                            .execute(&mut *tx)
                            .await
                            .map_err(query_err("finish job"))?;
                        if let Some(ev) = event {
                            sqlx::query(
                                "INSERT INTO events (time, actor, machine_id, kind, message, data) VALUES ($1, $2, $3, $4, $5, $6)",
                            )
                            .bind(Ts(ev.time))
                            .bind(&ev.actor)
                            .bind(ev.machine_id)
                            .bind(&ev.kind)
                            .bind(&ev.message)
                            .bind(Json(&ev.data))
                            .execute(&mut *tx)
                            .await
                            .map_err(query_err("append event"))?;
                        }
                    }
                }
            }
            tx.commit().await.map_err(query_err("commit job updates"))?;
        });
        Ok(())
    }

    pub async fn get_job(&self, id: Uuid) -> Result<Option<Job>> {
        on_pool!(self, |p, _b| {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"
            )))
            .bind(id)
            .fetch_optional(p)
            .await
            .map_err(query_err("get job"))?;
            match row {
                Some(row) => Ok(Some(job_from_row!(&row))),
                None => Ok(None),
            }
        })
    }

    /// The newest jobs, of one machine or all, newest first.
    pub async fn list_jobs(&self, machine_id: Option<Uuid>, limit: u32) -> Result<Vec<Job>> {
        on_pool!(self, |p, _b| {
            let mut qb = sqlx::QueryBuilder::new(format!("SELECT {JOB_COLUMNS} FROM jobs"));
            if let Some(m) = machine_id {
                qb.push(" WHERE machine_id = ").push_bind(m);
            }
            qb.push(" ORDER BY created_at DESC, id DESC LIMIT ")
                .push_bind(i64::from(limit));
            let rows = qb
                .build()
                .fetch_all(p)
                .await
                .map_err(query_err("list jobs"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(job_from_row!(row));
            }
            Ok(out)
        })
    }

    /// This handle, stamping the jobs it inserts with `instance` as their
    /// owner (see [`Store::orphaned_jobs`]).
    pub fn for_instance(mut self, instance: Uuid) -> Store {
        self.instance = Some(instance);
        self
    }

    /// The instance this handle stamps its jobs with.
    pub fn instance(&self) -> Option<Uuid> {
        self.instance
    }

    /// Records a starting instance.
    pub async fn register_instance(
        &self,
        id: Uuid,
        hostname: &str,
        at: OffsetDateTime,
    ) -> Result<()> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, _b| {
            sqlx::query(
                "INSERT INTO instances (id, hostname, started_at, seen_at) VALUES ($1, $2, $3, $3)",
            )
            .bind(id)
            .bind(hostname)
            .bind(Ts(at))
            .execute(p)
            .await
            .map_err(query_err("register instance"))?;
        });
        Ok(())
    }

    /// The instance's heartbeat. `false` when it is no longer registered as
    /// running (another instance took it for dead and its jobs over): it is
    /// then recorded as running again, so that the jobs it creates from now
    /// on are not taken for orphans.
    pub async fn instance_seen(&self, id: Uuid, at: OffsetDateTime) -> Result<bool> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, _b| {
            let done = sqlx::query(
                "UPDATE instances SET seen_at = $1 WHERE id = $2 AND stopped_at IS NULL",
            )
            .bind(Ts(at))
            .bind(id)
            .execute(p)
            .await
            .map_err(query_err("instance heartbeat"))?;
            if done.rows_affected() == 1 {
                return Ok(true);
            }
            sqlx::query("UPDATE instances SET seen_at = $1, stopped_at = NULL WHERE id = $2")
                .bind(Ts(at))
                .bind(id)
                .execute(p)
                .await
                .map_err(query_err("instance heartbeat"))?;
            Ok(false)
        })
    }

    /// Marks instances stopped: `id` alone (a clean shutdown), or every
    /// instance but `id` (`others`: SQLite, where the file lock proves no
    /// other process is using the database). Their queued and running jobs
    /// become orphans at once.
    pub async fn stop_instances(&self, id: Uuid, others: bool, at: OffsetDateTime) -> Result<u64> {
        let _serialised = self.write_guard().await;
        let sql = if others {
            "UPDATE instances SET stopped_at = $1 WHERE id <> $2 AND stopped_at IS NULL"
        } else {
            "UPDATE instances SET stopped_at = $1 WHERE id = $2 AND stopped_at IS NULL"
        };
        on_pool!(self, |p, _b| {
            let done = sqlx::query(sql)
                .bind(Ts(at))
                .bind(id)
                .execute(p)
                .await
                .map_err(query_err("stop instances"))?;
            Ok(done.rows_affected())
        })
    }

    /// The instances on record, newest first.
    pub async fn list_instances(&self) -> Result<Vec<InstanceRecord>> {
        on_pool!(self, |p, _b| {
            let rows = sqlx::query(
                "SELECT id, hostname, started_at, seen_at, stopped_at FROM instances ORDER BY started_at DESC",
            )
            .fetch_all(p)
            .await
            .map_err(query_err("list instances"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                let started: Ts = row
                    .try_get("started_at")
                    .map_err(|e| corrupt("started_at", e))?;
                let seen: Ts = row.try_get("seen_at").map_err(|e| corrupt("seen_at", e))?;
                let stopped: Option<Ts> = row
                    .try_get("stopped_at")
                    .map_err(|e| corrupt("stopped_at", e))?;
                out.push(InstanceRecord {
                    id: row.try_get("id").map_err(|e| corrupt("id", e))?,
                    hostname: row
                        .try_get("hostname")
                        .map_err(|e| corrupt("hostname", e))?,
                    started_at: started.0,
                    seen_at: seen.0,
                    stopped_at: stopped.map(|t| t.0),
                });
            }
            Ok(out)
        })
    }

    /// The instance that runs the work only one instance should do (the
    /// NetBox sync, the power poller): the longest-running live one, i.e.
    /// not stopped and seen since `live_since`. `None` when none is live.
    pub async fn instance_leader(&self, live_since: OffsetDateTime) -> Result<Option<Uuid>> {
        on_pool!(self, |p, _b| {
            sqlx::query_scalar::<_, Uuid>(
                "SELECT id FROM instances WHERE stopped_at IS NULL AND seen_at >= $1
                 ORDER BY started_at, id LIMIT 1",
            )
            .bind(Ts(live_since))
            .fetch_optional(p)
            .await
            .map_err(query_err("find the leading instance"))
        })
    }

    /// Forgets stopped instances (and silent ones) not seen since `before`
    /// that own no queued or running job.
    pub async fn prune_instances(&self, before: OffsetDateTime) -> Result<u64> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, _b| {
            let done = sqlx::query(
                "DELETE FROM instances WHERE seen_at < $1
                 AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.owner = instances.id AND jobs.status IN ('queued', 'running'))",
            )
            .bind(Ts(before))
            .execute(p)
            .await
            .map_err(query_err("prune instances"))?;
            Ok(done.rows_affected())
        })
    }

    /// Queued and running jobs whose owner is not a live instance: stopped,
    /// not seen since `live_since`, or unknown (jobs from before owners were
    /// recorded). Oldest first.
    pub async fn orphaned_jobs(&self, live_since: OffsetDateTime) -> Result<Vec<OrphanJob>> {
        on_pool!(self, |p, _b| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {JOB_COLUMNS}, owner FROM jobs
                 WHERE status IN ('queued', 'running')
                 AND (owner IS NULL OR owner NOT IN
                      (SELECT id FROM instances WHERE stopped_at IS NULL AND seen_at >= $1))
                 ORDER BY created_at, id"
            )))
            .bind(Ts(live_since))
            .fetch_all(p)
            .await
            .map_err(query_err("list orphaned jobs"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(OrphanJob {
                    job: job_from_row!(row),
                    owner: row.try_get("owner").map_err(|e| corrupt("owner", e))?,
                });
            }
            Ok(out)
        })
    }

    /// Gives an adopted job back (owner unknown) when `owner` could not take
    /// it over, so that the next look for orphans tries again.
    pub async fn disown_job(&self, id: Uuid, owner: Uuid) -> Result<()> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, _b| {
            sqlx::query(
                "UPDATE jobs SET owner = NULL WHERE id = $1 AND owner = $2 AND status IN ('queued', 'running')",
            )
            .bind(id)
            .bind(owner)
            .execute(p)
            .await
            .map_err(query_err("disown job"))?;
        });
        Ok(())
    }

    /// Makes `to` the owner of an orphaned job, if it is still queued or
    /// running and still owned by `from`: of several instances sweeping at
    /// once, exactly one takes each job.
    pub async fn adopt_job(&self, id: Uuid, from: Option<Uuid>, to: Uuid) -> Result<bool> {
        let _serialised = self.write_guard().await;
        let sql = if from.is_some() {
            "UPDATE jobs SET owner = $1 WHERE id = $2 AND status IN ('queued', 'running') AND owner = $3"
        } else {
            "UPDATE jobs SET owner = $1 WHERE id = $2 AND status IN ('queued', 'running') AND owner IS NULL"
        };
        on_pool!(self, |p, _b| {
            let mut q = sqlx::query(sql).bind(to).bind(id);
            if let Some(from) = from {
                q = q.bind(from);
            }
            let done = q.execute(p).await.map_err(query_err("adopt job"))?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Records the power state read from a machine's BMC. Does not touch
    /// `updated_at`: polling is not an edit.
    pub async fn set_power_state(
        &self,
        machine_id: Uuid,
        state: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<()> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, _b| {
            sqlx::query(
                "UPDATE machines SET power_state = $1, power_checked_at = $2 WHERE id = $3",
            )
            .bind(state)
            .bind(Ts(at))
            .bind(machine_id)
            .execute(p)
            .await
            .map_err(query_err("set power state"))?;
        });
        Ok(())
    }

    /// The machine whose BMC is at `address` (and `port`, when given).
    pub async fn machine_id_by_bmc(
        &self,
        address: &str,
        port: Option<u16>,
    ) -> Result<Option<Uuid>> {
        on_pool!(self, |p, _b| {
            sqlx::query_scalar::<_, Uuid>(
                "SELECT machine_id FROM bmcs WHERE lower(address) = lower($1) AND (port = $2 OR ($2 IS NULL AND port IS NULL))",
            )
            .bind(address)
            .bind(port.map(i32::from))
            .fetch_optional(p)
            .await
            .map_err(query_err("find machine by bmc"))
        })
    }

    /// Machines that have a BMC, for the power-state poller.
    pub async fn machines_with_bmc(&self) -> Result<Vec<Uuid>> {
        on_pool!(self, |p, _b| {
            sqlx::query_scalar::<_, Uuid>("SELECT machine_id FROM bmcs")
                .fetch_all(p)
                .await
                .map_err(query_err("machines with bmc"))
        })
    }
}
