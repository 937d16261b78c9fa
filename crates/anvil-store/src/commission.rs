//! Agent runs (commissioning, deployment, release, rescue) and their steps,
//! per-boot agent tokens (hashes only) and hardware facts, one document per
//! run. The tables keep their commissioning names (`commissioning_runs`, …):
//! every purpose shares them, told apart by `purpose`.
//!
//! The store keeps records and enforces compare-and-set; the rules (which
//! report may follow which, when a run ends) live in `anvil-core`.

use crate::error::{Result, StoreError, corrupt, query_err};
use crate::machines::NewEvent;
use crate::ts::Ts;
use crate::{Store, on_pool};
use anvil_types::MachineState;
use sqlx::Row;
use sqlx::types::Json;
use time::OffsetDateTime;
use uuid::Uuid;

/// A commissioning run as stored. States and kinds are plain strings here;
/// `anvil-core` maps them to the API's enums.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub id: Uuid,
    pub machine_id: Uuid,
    pub number: i64,
    pub state: String,
    /// JSON array of test names.
    pub tests: String,
    pub job_id: Option<Uuid>,
    pub failure_reason: Option<String>,
    pub failed_step: Option<String>,
    pub system_uuid: Option<String>,
    pub agent_version: Option<String>,
    pub started_at: OffsetDateTime,
    pub registered_at: Option<OffsetDateTime>,
    pub last_seen_at: Option<OffsetDateTime>,
    pub finished_at: Option<OffsetDateTime>,
    pub deadline: OffsetDateTime,
    /// `commissioning`, `deployment`, `release` or `rescue`.
    pub purpose: String,
    /// JSON object: what the purpose needs (see migration 0007).
    pub params: String,
}

/// One step of a run as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    pub id: Uuid,
    pub run_id: Uuid,
    pub index: i32,
    pub kind: String,
    /// JSON object.
    pub params: String,
    pub status: String,
    pub last_seq: i32,
    pub message: Option<String>,
    pub progress: Option<(i64, i64)>,
    /// JSON document.
    pub result: Option<String>,
    pub started_at: Option<OffsetDateTime>,
    pub finished_at: Option<OffsetDateTime>,
    pub updated_at: OffsetDateTime,
}

/// An accepted step report, written only if the step's `last_seq` is still
/// `expected_last_seq` (so two copies of one report cannot both land).
#[derive(Debug, Clone)]
pub struct StepUpdate {
    pub step_id: Uuid,
    pub expected_last_seq: i32,
    pub seq: i32,
    pub status: String,
    pub message: Option<String>,
    pub progress: Option<(i64, i64)>,
    pub result: Option<String>,
    pub at: OffsetDateTime,
    /// Set `started_at` (first report).
    pub starts: bool,
    /// Set `finished_at` (final report).
    pub finishes: bool,
}

/// How a run ends: its state, and the machine's move out of `commissioning`.
#[derive(Debug, Clone)]
pub struct RunEnd {
    pub run_id: Uuid,
    pub state: String,
    pub failure_reason: Option<String>,
    pub failed_step: Option<String>,
    pub at: OffsetDateTime,
    /// Move the machine from `active_state` to this state (with the reason
    /// for `failed`), unless it already left `active_state`.
    pub machine_state: Option<MachineState>,
    /// The state the machine is in while the run lasts (`commissioning`,
    /// `deploying`, `releasing`, `rescue`).
    pub active_state: MachineState,
    /// Forget the machine's image (a release erased it, a deployment
    /// failed), in the same transaction.
    pub clear_image: bool,
    pub event: NewEvent,
}

/// Stored hardware facts of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct FactsRecord {
    pub run_id: Uuid,
    pub run_number: i64,
    pub machine_id: Uuid,
    pub facts: String,
    pub collected_at: OffsetDateTime,
}

/// A live agent token: the machine and run it speaks for.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentTokenRecord {
    pub machine_id: Uuid,
    pub run_id: Uuid,
    pub expires_at: OffsetDateTime,
}

const RUN_COLUMNS: &str = "id, machine_id, number, state, tests, job_id, failure_reason, failed_step, system_uuid, agent_version, started_at, registered_at, last_seen_at, finished_at, deadline, purpose, params";
const STEP_COLUMNS: &str = "id, run_id, idx, kind, params, status, last_seq, message, progress_done, progress_total, result, started_at, finished_at, updated_at";

macro_rules! run_from_row {
    ($row:expr) => {{
        let row = $row;
        let opt_ts = |c: &'static str| -> Result<Option<OffsetDateTime>> {
            let t: Option<Ts> = row.try_get(c).map_err(|e| corrupt(c, e))?;
            Ok(t.map(|t| t.0))
        };
        let ts = |c: &'static str| -> Result<OffsetDateTime> {
            let t: Ts = row.try_get(c).map_err(|e| corrupt(c, e))?;
            Ok(t.0)
        };
        RunRecord {
            id: row.try_get("id").map_err(|e| corrupt("id", e))?,
            machine_id: row
                .try_get("machine_id")
                .map_err(|e| corrupt("machine_id", e))?,
            number: row.try_get("number").map_err(|e| corrupt("number", e))?,
            state: row.try_get("state").map_err(|e| corrupt("state", e))?,
            tests: row.try_get("tests").map_err(|e| corrupt("tests", e))?,
            job_id: row.try_get("job_id").map_err(|e| corrupt("job_id", e))?,
            failure_reason: row
                .try_get("failure_reason")
                .map_err(|e| corrupt("failure_reason", e))?,
            failed_step: row
                .try_get("failed_step")
                .map_err(|e| corrupt("failed_step", e))?,
            system_uuid: row
                .try_get("system_uuid")
                .map_err(|e| corrupt("system_uuid", e))?,
            agent_version: row
                .try_get("agent_version")
                .map_err(|e| corrupt("agent_version", e))?,
            started_at: ts("started_at")?,
            registered_at: opt_ts("registered_at")?,
            last_seen_at: opt_ts("last_seen_at")?,
            finished_at: opt_ts("finished_at")?,
            deadline: ts("deadline")?,
            purpose: row.try_get("purpose").map_err(|e| corrupt("purpose", e))?,
            params: row.try_get("params").map_err(|e| corrupt("params", e))?,
        }
    }};
}

macro_rules! step_from_row {
    ($row:expr) => {{
        let row = $row;
        let opt_ts = |c: &'static str| -> Result<Option<OffsetDateTime>> {
            let t: Option<Ts> = row.try_get(c).map_err(|e| corrupt(c, e))?;
            Ok(t.map(|t| t.0))
        };
        let done: Option<i64> = row
            .try_get("progress_done")
            .map_err(|e| corrupt("progress_done", e))?;
        let total: Option<i64> = row
            .try_get("progress_total")
            .map_err(|e| corrupt("progress_total", e))?;
        let updated: Ts = row
            .try_get("updated_at")
            .map_err(|e| corrupt("updated_at", e))?;
        StepRecord {
            id: row.try_get("id").map_err(|e| corrupt("id", e))?,
            run_id: row.try_get("run_id").map_err(|e| corrupt("run_id", e))?,
            index: row.try_get("idx").map_err(|e| corrupt("idx", e))?,
            kind: row.try_get("kind").map_err(|e| corrupt("kind", e))?,
            params: row.try_get("params").map_err(|e| corrupt("params", e))?,
            status: row.try_get("status").map_err(|e| corrupt("status", e))?,
            last_seq: row
                .try_get("last_seq")
                .map_err(|e| corrupt("last_seq", e))?,
            message: row.try_get("message").map_err(|e| corrupt("message", e))?,
            progress: done.zip(total),
            result: row.try_get("result").map_err(|e| corrupt("result", e))?,
            started_at: opt_ts("started_at")?,
            finished_at: opt_ts("finished_at")?,
            updated_at: updated.0,
        }
    }};
}

macro_rules! insert_event_in {
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

impl Store {
    /// Starts a commissioning run: `start_agent_run` into `commissioning`.
    pub async fn start_commissioning_run(
        &self,
        run: &RunRecord,
        steps: &[StepRecord],
        from: MachineState,
        event: &NewEvent,
    ) -> Result<i64> {
        self.start_agent_run(run, steps, from, MachineState::Commissioning, None, event)
            .await
    }

    /// Starts a run of any purpose: moves the machine from `from` to `to`
    /// (compare-and-set), sets its image when `image` is given (deployment),
    /// numbers the run after the machine's previous ones (of every purpose),
    /// and writes the run, its steps and the event in one transaction.
    /// Returns the run's number. `run.number` is ignored.
    pub async fn start_agent_run(
        &self,
        run: &RunRecord,
        steps: &[StepRecord],
        from: MachineState,
        to: MachineState,
        image: Option<Uuid>,
        event: &NewEvent,
    ) -> Result<i64> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, begin| {
            let mut tx = p.begin_with(begin).await.map_err(query_err("begin"))?;
            let done = sqlx::query(
                "UPDATE machines SET state = $1, state_reason = NULL, updated_at = $2 WHERE id = $3 AND state = $4",
            )
            .bind(to.as_str())
            .bind(Ts(run.started_at))
            .bind(run.machine_id)
            .bind(from.as_str())
            .execute(&mut *tx)
            .await
            .map_err(query_err("start run"))?;
            if done.rows_affected() == 0 {
                return Err(StoreError::Concurrent);
            }
            if let Some(image) = image {
                sqlx::query("UPDATE machines SET image_id = $1 WHERE id = $2")
                    .bind(image)
                    .bind(run.machine_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(query_err("set machine image"))?;
            }
            let number: i64 = sqlx::query_scalar::<_, i64>(
                "SELECT COALESCE(MAX(number), 0) + 1 FROM commissioning_runs WHERE machine_id = $1",
            )
            .bind(run.machine_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(query_err("number run"))?;
            sqlx::query(
                "INSERT INTO commissioning_runs (id, machine_id, number, state, tests, job_id, failure_reason, failed_step, system_uuid, agent_version, started_at, registered_at, last_seen_at, finished_at, deadline, purpose, params)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
            )
            .bind(run.id)
            .bind(run.machine_id)
            .bind(number)
            .bind(&run.state)
            .bind(&run.tests)
            .bind(run.job_id)
            .bind(&run.failure_reason)
            .bind(&run.failed_step)
            .bind(&run.system_uuid)
            .bind(&run.agent_version)
            .bind(Ts(run.started_at))
            .bind(run.registered_at.map(Ts))
            .bind(run.last_seen_at.map(Ts))
            .bind(run.finished_at.map(Ts))
            .bind(Ts(run.deadline))
            .bind(&run.purpose)
            .bind(&run.params)
            .execute(&mut *tx)
            .await
            .map_err(query_err("insert run"))?;
            for s in steps {
                sqlx::query(
                    "INSERT INTO commissioning_steps (id, run_id, idx, kind, params, status, last_seq, message, progress_done, progress_total, result, started_at, finished_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                )
                .bind(s.id)
                .bind(run.id)
                .bind(s.index)
                .bind(&s.kind)
                .bind(&s.params)
                .bind(&s.status)
                .bind(s.last_seq)
                .bind(&s.message)
                .bind(s.progress.map(|p| p.0))
                .bind(s.progress.map(|p| p.1))
                .bind(&s.result)
                .bind(s.started_at.map(Ts))
                .bind(s.finished_at.map(Ts))
                .bind(Ts(s.updated_at))
                .execute(&mut *tx)
                .await
                .map_err(query_err("insert step"))?;
            }
            insert_event_in!(&mut *tx, event);
            tx.commit().await.map_err(query_err("commit"))?;
            Ok(number)
        })
    }

    pub async fn commissioning_run(&self, id: Uuid) -> Result<Option<RunRecord>> {
        self.commissioning_run_where("id", id).await
    }

    /// The agent run a job follows.
    pub async fn commissioning_run_for_job(&self, job_id: Uuid) -> Result<Option<RunRecord>> {
        self.commissioning_run_where("job_id", job_id).await
    }

    /// The run whose `column` (a key: `id` or `job_id`) is `value`.
    async fn commissioning_run_where(
        &self,
        column: &'static str,
        value: Uuid,
    ) -> Result<Option<RunRecord>> {
        on_pool!(self, |p, _b| {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {RUN_COLUMNS} FROM commissioning_runs WHERE {column} = $1"
            )))
            .bind(value)
            .fetch_optional(p)
            .await
            .map_err(query_err("get run"))?;
            match row {
                Some(row) => Ok(Some(run_from_row!(&row))),
                None => Ok(None),
            }
        })
    }

    /// A machine's runs, newest first.
    pub async fn commissioning_runs(&self, machine_id: Uuid, limit: u32) -> Result<Vec<RunRecord>> {
        on_pool!(self, |p, _b| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {RUN_COLUMNS} FROM commissioning_runs WHERE machine_id = $1 ORDER BY number DESC LIMIT $2"
            )))
            .bind(machine_id)
            .bind(i64::from(limit))
            .fetch_all(p)
            .await
            .map_err(query_err("list runs"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(run_from_row!(row));
            }
            Ok(out)
        })
    }

    /// A machine's latest run of one purpose (`deployment`, `rescue`, …).
    pub async fn latest_run_of(
        &self,
        machine_id: Uuid,
        purpose: &str,
    ) -> Result<Option<RunRecord>> {
        on_pool!(self, |p, _b| {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {RUN_COLUMNS} FROM commissioning_runs WHERE machine_id = $1 AND purpose = $2 ORDER BY number DESC LIMIT 1"
            )))
            .bind(machine_id)
            .bind(purpose)
            .fetch_optional(p)
            .await
            .map_err(query_err("latest run of a purpose"))?;
            match row {
                Some(row) => Ok(Some(run_from_row!(&row))),
                None => Ok(None),
            }
        })
    }

    /// Every run still `running` (for the timeout watcher).
    pub async fn running_commissioning_runs(&self) -> Result<Vec<RunRecord>> {
        on_pool!(self, |p, _b| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {RUN_COLUMNS} FROM commissioning_runs WHERE state = 'running' ORDER BY deadline"
            )))
            .fetch_all(p)
            .await
            .map_err(query_err("running runs"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(run_from_row!(row));
            }
            Ok(out)
        })
    }

    /// The steps of a run, in order.
    pub async fn commissioning_steps(&self, run_id: Uuid) -> Result<Vec<StepRecord>> {
        on_pool!(self, |p, _b| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {STEP_COLUMNS} FROM commissioning_steps WHERE run_id = $1 ORDER BY idx"
            )))
            .bind(run_id)
            .fetch_all(p)
            .await
            .map_err(query_err("list steps"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(step_from_row!(row));
            }
            Ok(out)
        })
    }

    /// Records the agent's registration (the first one sets `registered_at`;
    /// repeats only refresh `last_seen_at`).
    pub async fn register_commissioning_agent(
        &self,
        run_id: Uuid,
        system_uuid: Option<&str>,
        agent_version: &str,
        at: OffsetDateTime,
    ) -> Result<()> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, _b| {
            sqlx::query(
                "UPDATE commissioning_runs SET system_uuid = COALESCE($1, system_uuid), agent_version = $2,
                 registered_at = COALESCE(registered_at, $3), last_seen_at = $3 WHERE id = $4",
            )
            .bind(system_uuid)
            .bind(agent_version)
            .bind(Ts(at))
            .bind(run_id)
            .execute(p)
            .await
            .map_err(query_err("register agent"))?;
        });
        Ok(())
    }

    /// Notes that the run's agent was heard from.
    pub async fn touch_commissioning_run(&self, run_id: Uuid, at: OffsetDateTime) -> Result<()> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, _b| {
            sqlx::query("UPDATE commissioning_runs SET last_seen_at = $1 WHERE id = $2")
                .bind(Ts(at))
                .bind(run_id)
                .execute(p)
                .await
                .map_err(query_err("touch run"))?;
        });
        Ok(())
    }

    /// Writes an accepted report. `Concurrent` when the step's `last_seq`
    /// moved in the meantime (another copy of the report landed first).
    pub async fn update_commissioning_step(&self, u: &StepUpdate) -> Result<()> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, begin| {
            let mut tx = p.begin_with(begin).await.map_err(query_err("begin"))?;
            let done = sqlx::query(
                "UPDATE commissioning_steps SET last_seq = $1, status = $2, message = COALESCE($3, message),
                   progress_done = COALESCE($4, progress_done), progress_total = COALESCE($5, progress_total),
                   result = COALESCE($6, result), updated_at = $7,
                   started_at = CASE WHEN $8 THEN $7 ELSE started_at END,
                   finished_at = CASE WHEN $9 THEN $7 ELSE finished_at END
                 WHERE id = $10 AND last_seq = $11",
            )
            .bind(u.seq)
            .bind(&u.status)
            .bind(&u.message)
            .bind(u.progress.map(|p| p.0))
            .bind(u.progress.map(|p| p.1))
            .bind(&u.result)
            .bind(Ts(u.at))
            .bind(u.starts)
            .bind(u.finishes)
            .bind(u.step_id)
            .bind(u.expected_last_seq)
            .execute(&mut *tx)
            .await
            .map_err(query_err("update step"))?;
            if done.rows_affected() == 0 {
                return Err(StoreError::Concurrent);
            }
            sqlx::query(
                "UPDATE commissioning_runs SET last_seen_at = $1 WHERE id = (SELECT run_id FROM commissioning_steps WHERE id = $2)",
            )
            .bind(Ts(u.at))
            .bind(u.step_id)
            .execute(&mut *tx)
            .await
            .map_err(query_err("touch run"))?;
            tx.commit().await.map_err(query_err("commit"))?;
        });
        Ok(())
    }

    /// Ends a running run, and moves its machine out of the run's active
    /// state in the same transaction. Returns false (and changes nothing) if
    /// the run had already ended. A machine an operator already moved
    /// elsewhere is left where it is.
    pub async fn finish_commissioning_run(&self, end: &RunEnd) -> Result<bool> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, begin| {
            let mut tx = p.begin_with(begin).await.map_err(query_err("begin"))?;
            let done = sqlx::query(
                "UPDATE commissioning_runs SET state = $1, failure_reason = $2, failed_step = $3, finished_at = $4
                 WHERE id = $5 AND state = 'running'",
            )
            .bind(&end.state)
            .bind(&end.failure_reason)
            .bind(&end.failed_step)
            .bind(Ts(end.at))
            .bind(end.run_id)
            .execute(&mut *tx)
            .await
            .map_err(query_err("finish run"))?;
            if done.rows_affected() == 0 {
                return Ok(false);
            }
            if let Some(to) = end.machine_state {
                let reason = if to.keeps_reason() {
                    end.failure_reason.as_deref()
                } else {
                    None
                };
                sqlx::query(
                    "UPDATE machines SET state = $1, state_reason = $2, updated_at = $3
                     WHERE id = (SELECT machine_id FROM commissioning_runs WHERE id = $4) AND state = $5",
                )
                .bind(to.as_str())
                .bind(reason)
                .bind(Ts(end.at))
                .bind(end.run_id)
                .bind(end.active_state.as_str())
                .execute(&mut *tx)
                .await
                .map_err(query_err("end run"))?;
            }
            if end.clear_image {
                sqlx::query(
                    "UPDATE machines SET image_id = NULL WHERE id = (SELECT machine_id FROM commissioning_runs WHERE id = $1)",
                )
                .bind(end.run_id)
                .execute(&mut *tx)
                .await
                .map_err(query_err("clear machine image"))?;
            }
            insert_event_in!(&mut *tx, &end.event);
            tx.commit().await.map_err(query_err("commit"))?;
            Ok(true)
        })
    }

    pub async fn insert_agent_token(
        &self,
        token_hash: &str,
        machine_id: Uuid,
        run_id: Uuid,
        created_at: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<()> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, _b| {
            sqlx::query(
                "INSERT INTO agent_tokens (token_hash, machine_id, run_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(token_hash)
            .bind(machine_id)
            .bind(run_id)
            .bind(Ts(created_at))
            .bind(Ts(expires_at))
            .execute(p)
            .await
            .map_err(query_err("insert agent token"))?;
        });
        Ok(())
    }

    /// The token with this hash, if it exists and has not expired at `now`.
    pub async fn agent_token(
        &self,
        token_hash: &str,
        now: OffsetDateTime,
    ) -> Result<Option<AgentTokenRecord>> {
        on_pool!(self, |p, _b| {
            let row = sqlx::query(
                "SELECT machine_id, run_id, expires_at FROM agent_tokens WHERE token_hash = $1 AND expires_at > $2",
            )
            .bind(token_hash)
            .bind(Ts(now))
            .fetch_optional(p)
            .await
            .map_err(query_err("find agent token"))?;
            let Some(row) = row else { return Ok(None) };
            let expires: Ts = row
                .try_get("expires_at")
                .map_err(|e| corrupt("expires_at", e))?;
            Ok(Some(AgentTokenRecord {
                machine_id: row
                    .try_get("machine_id")
                    .map_err(|e| corrupt("machine_id", e))?,
                run_id: row.try_get("run_id").map_err(|e| corrupt("run_id", e))?,
                expires_at: expires.0,
            }))
        })
    }

    /// Number of tokens minted for a run (to bound minting per run).
    pub async fn count_agent_tokens(&self, run_id: Uuid) -> Result<u64> {
        on_pool!(self, |p, _b| {
            let n: i64 =
                sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM agent_tokens WHERE run_id = $1")
                    .bind(run_id)
                    .fetch_one(p)
                    .await
                    .map_err(query_err("count agent tokens"))?;
            Ok(n.max(0) as u64)
        })
    }

    /// Removes expired tokens.
    pub async fn purge_agent_tokens(&self, now: OffsetDateTime) -> Result<u64> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, _b| {
            let done = sqlx::query("DELETE FROM agent_tokens WHERE expires_at <= $1")
                .bind(Ts(now))
                .execute(p)
                .await
                .map_err(query_err("purge agent tokens"))?;
            Ok(done.rows_affected())
        })
    }

    /// Stores (or replaces) the facts of one run. Other runs' facts are never
    /// touched. The caller validates first: nothing invalid reaches here.
    pub async fn put_hardware_facts(
        &self,
        run_id: Uuid,
        machine_id: Uuid,
        facts: &str,
        at: OffsetDateTime,
    ) -> Result<()> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, _b| {
            sqlx::query(
                "INSERT INTO hardware_facts (run_id, machine_id, facts, bytes, collected_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (run_id) DO UPDATE SET facts = excluded.facts, bytes = excluded.bytes, collected_at = excluded.collected_at",
            )
            .bind(run_id)
            .bind(machine_id)
            .bind(facts)
            .bind(facts.len() as i64)
            .bind(Ts(at))
            .execute(p)
            .await
            .map_err(query_err("put hardware facts"))?;
        });
        Ok(())
    }

    /// The facts of run `number` of a machine, or of its latest run with facts.
    pub async fn hardware_facts(
        &self,
        machine_id: Uuid,
        number: Option<i64>,
    ) -> Result<Option<FactsRecord>> {
        on_pool!(self, |p, _b| {
            let mut qb = sqlx::QueryBuilder::new(
                "SELECT f.run_id, r.number, f.machine_id, f.facts, f.collected_at FROM hardware_facts f
                 JOIN commissioning_runs r ON r.id = f.run_id WHERE f.machine_id = ",
            );
            qb.push_bind(machine_id);
            if let Some(n) = number {
                qb.push(" AND r.number = ").push_bind(n);
            }
            qb.push(" ORDER BY r.number DESC LIMIT 1");
            let row = qb
                .build()
                .fetch_optional(p)
                .await
                .map_err(query_err("get hardware facts"))?;
            let Some(row) = row else { return Ok(None) };
            let at: Ts = row
                .try_get("collected_at")
                .map_err(|e| corrupt("collected_at", e))?;
            Ok(Some(FactsRecord {
                run_id: row.try_get("run_id").map_err(|e| corrupt("run_id", e))?,
                run_number: row.try_get("number").map_err(|e| corrupt("number", e))?,
                machine_id: row
                    .try_get("machine_id")
                    .map_err(|e| corrupt("machine_id", e))?,
                facts: row.try_get("facts").map_err(|e| corrupt("facts", e))?,
                collected_at: at.0,
            }))
        })
    }

    /// Whether a run has facts stored.
    pub async fn run_has_facts(&self, run_id: Uuid) -> Result<bool> {
        on_pool!(self, |p, _b| {
            let n: i64 = sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM hardware_facts WHERE run_id = $1",
            )
            .bind(run_id)
            .fetch_one(p)
            .await
            .map_err(query_err("run has facts"))?;
            Ok(n > 0)
        })
    }

    /// Run numbers of a machine that have facts, newest first.
    pub async fn runs_with_facts(&self, machine_id: Uuid) -> Result<Vec<i64>> {
        on_pool!(self, |p, _b| {
            sqlx::query_scalar::<_, i64>(
                "SELECT r.number FROM hardware_facts f JOIN commissioning_runs r ON r.id = f.run_id
                 WHERE f.machine_id = $1 ORDER BY r.number DESC",
            )
            .bind(machine_id)
            .fetch_all(p)
            .await
            .map_err(query_err("runs with facts"))
        })
    }
}
