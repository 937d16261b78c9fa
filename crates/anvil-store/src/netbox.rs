//! NetBox synchronisation: machine ↔ device links, sync runs, the
//! write-back outbox and cursors.

use crate::error::{Result, StoreError, corrupt, query_err};
use crate::ts::Ts;
use crate::{Store, on_pool};
use sqlx::Row;
use sqlx::types::Json;
use std::collections::HashMap;
use time::OffsetDateTime;
use uuid::Uuid;

/// A finished or running sync, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NetboxRun {
    pub id: i64,
    /// `full`, `webhook`, `machine` (write-back of one machine).
    pub kind: String,
    pub dry_run: bool,
    /// `running`, `succeeded`, `failed`.
    pub status: String,
    pub started_at: OffsetDateTime,
    pub finished_at: Option<OffsetDateTime>,
    pub counts: NetboxRunCounts,
    pub error: Option<String>,
    /// The plan or report (JSON).
    pub report: serde_json::Value,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetboxRunCounts {
    pub created: i64,
    pub updated: i64,
    pub unchanged: i64,
    /// NetBox objects written.
    pub written: i64,
    /// NetBox writes planned but not done (dry run, or failed part-way).
    pub pending: i64,
    pub conflicts: i64,
}

/// A machine waiting for its write-back.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    pub machine_id: Uuid,
    pub since: OffsetDateTime,
    pub attempts: i64,
    pub last_error: Option<String>,
}

const RUN_COLUMNS: &str = "id, kind, dry_run, status, started_at, finished_at, created, updated, unchanged, written, pending, conflicts, error, report";

macro_rules! run_from_row {
    ($row:expr) => {{
        let row = $row;
        let get = |c: &'static str| -> Result<i64> { row.try_get(c).map_err(|e| corrupt(c, e)) };
        let started: Ts = row
            .try_get("started_at")
            .map_err(|e| corrupt("started_at", e))?;
        let finished: Option<Ts> = row
            .try_get("finished_at")
            .map_err(|e| corrupt("finished_at", e))?;
        let report: Json<serde_json::Value> =
            row.try_get("report").map_err(|e| corrupt("report", e))?;
        NetboxRun {
            id: get("id")?,
            kind: row.try_get("kind").map_err(|e| corrupt("kind", e))?,
            dry_run: row.try_get("dry_run").map_err(|e| corrupt("dry_run", e))?,
            status: row.try_get("status").map_err(|e| corrupt("status", e))?,
            started_at: started.0,
            finished_at: finished.map(|t| t.0),
            counts: NetboxRunCounts {
                created: get("created")?,
                updated: get("updated")?,
                unchanged: get("unchanged")?,
                written: get("written")?,
                pending: get("pending")?,
                conflicts: get("conflicts")?,
            },
            error: row.try_get("error").map_err(|e| corrupt("error", e))?,
            report: report.0,
        }
    }};
}

impl Store {
    /// Every link: machine id → NetBox device id.
    pub async fn netbox_links(&self) -> Result<HashMap<Uuid, u64>> {
        on_pool!(self, |p, _b| {
            let rows = sqlx::query("SELECT machine_id, device_id FROM netbox_links")
                .fetch_all(p)
                .await
                .map_err(query_err("list netbox links"))?;
            let mut out = HashMap::with_capacity(rows.len());
            for row in rows {
                let m: Uuid = row
                    .try_get("machine_id")
                    .map_err(|e| corrupt("machine_id", e))?;
                let d: i64 = row
                    .try_get("device_id")
                    .map_err(|e| corrupt("device_id", e))?;
                out.insert(m, d.max(0) as u64);
            }
            Ok(out)
        })
    }

    /// Links `machine_id` to `device_id`, replacing any link either had.
    pub async fn netbox_link(
        &self,
        machine_id: Uuid,
        device_id: u64,
        at: OffsetDateTime,
    ) -> Result<()> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, begin| {
            let mut tx = p.begin_with(begin).await.map_err(query_err("begin"))?;
            sqlx::query("DELETE FROM netbox_links WHERE machine_id = $1 OR device_id = $2")
                .bind(machine_id)
                .bind(device_id as i64)
                .execute(&mut *tx)
                .await
                .map_err(query_err("replace netbox link"))?;
            sqlx::query(
                "INSERT INTO netbox_links (machine_id, device_id, linked_at) VALUES ($1, $2, $3)",
            )
            .bind(machine_id)
            .bind(device_id as i64)
            .bind(Ts(at))
            .execute(&mut *tx)
            .await
            .map_err(query_err("insert netbox link"))?;
            tx.commit().await.map_err(query_err("commit"))?;
        });
        Ok(())
    }

    /// The machine linked to a device.
    pub async fn netbox_machine_for_device(&self, device_id: u64) -> Result<Option<Uuid>> {
        on_pool!(self, |p, _b| {
            sqlx::query_scalar::<_, Uuid>(
                "SELECT machine_id FROM netbox_links WHERE device_id = $1",
            )
            .bind(device_id as i64)
            .fetch_optional(p)
            .await
            .map_err(query_err("find netbox link"))
        })
    }

    /// Records the start of a sync; returns its id.
    pub async fn netbox_run_start(
        &self,
        kind: &str,
        dry_run: bool,
        at: OffsetDateTime,
    ) -> Result<Option<i64>> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, _b| {
            let started = sqlx::query_scalar::<_, i64>(
                "INSERT INTO netbox_sync_runs (kind, dry_run, status, started_at, owner) VALUES ($1, $2, 'running', $3, $4) RETURNING id",
            )
            .bind(kind)
            .bind(dry_run)
            .bind(Ts(at))
            .bind(self.instance)
            .fetch_one(p)
            .await
            .map_err(query_err("start netbox run"));
            match started {
                Ok(id) => Ok(Some(id)),
                // The one-running index: another sync (here or on another
                // instance) has not ended yet.
                Err(StoreError::Duplicate { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    /// Records how a sync ended (`error` set = failed).
    pub async fn netbox_run_finish(
        &self,
        id: i64,
        at: OffsetDateTime,
        counts: NetboxRunCounts,
        error: Option<&str>,
        report: &serde_json::Value,
    ) -> Result<()> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, _b| {
            sqlx::query(
                "UPDATE netbox_sync_runs SET status = $1, finished_at = $2, created = $3, updated = $4,
                   unchanged = $5, written = $6, pending = $7, conflicts = $8, error = $9, report = $10
                 WHERE id = $11",
            )
            .bind(if error.is_some() { "failed" } else { "succeeded" })
            .bind(Ts(at))
            .bind(counts.created)
            .bind(counts.updated)
            .bind(counts.unchanged)
            .bind(counts.written)
            .bind(counts.pending)
            .bind(counts.conflicts)
            .bind(error)
            .bind(Json(report))
            .bind(id)
            .execute(p)
            .await
            .map_err(query_err("finish netbox run"))?;
        });
        Ok(())
    }

    /// The latest runs, newest first. `kind` filters when given.
    pub async fn netbox_runs(&self, kind: Option<&str>, limit: u32) -> Result<Vec<NetboxRun>> {
        on_pool!(self, |p, _b| {
            let sql = format!(
                "SELECT {RUN_COLUMNS} FROM netbox_sync_runs WHERE (CAST($1 AS TEXT) IS NULL OR kind = $1) ORDER BY id DESC LIMIT $2"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(kind)
                .bind(i64::from(limit))
                .fetch_all(p)
                .await
                .map_err(query_err("list netbox runs"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(run_from_row!(row));
            }
            Ok(out)
        })
    }

    /// Marks runs left `running` as failed: those of instances that are gone
    /// (stopped, not seen since `live_since`, or unknown) and those of `me`,
    /// the caller, which must hold its own one-sync-at-a-time lock: a run of
    /// its own still `running` then is one whose end could not be recorded.
    pub async fn netbox_fail_running(
        &self,
        at: OffsetDateTime,
        live_since: OffsetDateTime,
        me: Uuid,
    ) -> Result<u64> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, _b| {
            let done = sqlx::query(
                "UPDATE netbox_sync_runs SET status = 'failed', finished_at = $1, error = 'the server stopped during the sync'
                 WHERE status = 'running' AND (owner IS NULL OR owner = $3 OR owner NOT IN
                     (SELECT id FROM instances WHERE stopped_at IS NULL AND seen_at >= $2))",
            )
            .bind(Ts(at))
            .bind(Ts(live_since))
            .bind(me)
            .execute(p)
            .await
            .map_err(query_err("fail running netbox runs"))?;
            Ok(done.rows_affected())
        })
    }

    /// Queues machines for write-back. A machine already queued keeps its
    /// first `since` (the oldest change not yet in NetBox).
    pub async fn netbox_outbox_add(&self, machines: &[Uuid], at: OffsetDateTime) -> Result<()> {
        if machines.is_empty() {
            return Ok(());
        }
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, begin| {
            let mut tx = p.begin_with(begin).await.map_err(query_err("begin"))?;
            for m in machines {
                sqlx::query(
                    "INSERT INTO netbox_outbox (machine_id, since) VALUES ($1, $2) ON CONFLICT (machine_id) DO NOTHING",
                )
                .bind(*m)
                .bind(Ts(at))
                .execute(&mut *tx)
                .await
                .map_err(query_err("queue netbox write-back"))?;
            }
            tx.commit().await.map_err(query_err("commit"))?;
        });
        Ok(())
    }

    /// The oldest queued write-backs.
    pub async fn netbox_outbox(&self, limit: u32) -> Result<Vec<OutboxEntry>> {
        on_pool!(self, |p, _b| {
            let rows = sqlx::query(
                "SELECT machine_id, since, attempts, last_error FROM netbox_outbox ORDER BY since, machine_id LIMIT $1",
            )
            .bind(i64::from(limit))
            .fetch_all(p)
            .await
            .map_err(query_err("list netbox outbox"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let since: Ts = row.try_get("since").map_err(|e| corrupt("since", e))?;
                out.push(OutboxEntry {
                    machine_id: row
                        .try_get("machine_id")
                        .map_err(|e| corrupt("machine_id", e))?,
                    since: since.0,
                    attempts: row
                        .try_get("attempts")
                        .map_err(|e| corrupt("attempts", e))?,
                    last_error: row
                        .try_get("last_error")
                        .map_err(|e| corrupt("last_error", e))?,
                });
            }
            Ok(out)
        })
    }

    pub async fn netbox_outbox_len(&self) -> Result<u64> {
        on_pool!(self, |p, _b| {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM netbox_outbox")
                .fetch_one(p)
                .await
                .map_err(query_err("count netbox outbox"))?;
            Ok(n.max(0) as u64)
        })
    }

    /// Removes entries whose write-back succeeded.
    pub async fn netbox_outbox_done(&self, machines: &[Uuid]) -> Result<()> {
        if machines.is_empty() {
            return Ok(());
        }
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, begin| {
            let mut tx = p.begin_with(begin).await.map_err(query_err("begin"))?;
            for m in machines {
                sqlx::query("DELETE FROM netbox_outbox WHERE machine_id = $1")
                    .bind(*m)
                    .execute(&mut *tx)
                    .await
                    .map_err(query_err("clear netbox write-back"))?;
            }
            tx.commit().await.map_err(query_err("commit"))?;
        });
        Ok(())
    }

    /// Records a failed write-back attempt (the entry stays queued).
    pub async fn netbox_outbox_failed(&self, machines: &[Uuid], error: &str) -> Result<()> {
        if machines.is_empty() {
            return Ok(());
        }
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, begin| {
            let mut tx = p.begin_with(begin).await.map_err(query_err("begin"))?;
            for m in machines {
                sqlx::query(
                    "UPDATE netbox_outbox SET attempts = attempts + 1, last_error = $1 WHERE machine_id = $2",
                )
                .bind(error)
                .bind(*m)
                .execute(&mut *tx)
                .await
                .map_err(query_err("record netbox write-back failure"))?;
            }
            tx.commit().await.map_err(query_err("commit"))?;
        });
        Ok(())
    }

    /// A named cursor (0 when never set).
    pub async fn netbox_cursor(&self, name: &str) -> Result<i64> {
        on_pool!(self, |p, _b| {
            let v: Option<i64> =
                sqlx::query_scalar("SELECT value FROM netbox_cursors WHERE name = $1")
                    .bind(name)
                    .fetch_optional(p)
                    .await
                    .map_err(query_err("read netbox cursor"))?;
            Ok(v.unwrap_or(0))
        })
    }

    pub async fn netbox_set_cursor(&self, name: &str, value: i64) -> Result<()> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, _b| {
            sqlx::query(
                "INSERT INTO netbox_cursors (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )
            .bind(name)
            .bind(value)
            .execute(p)
            .await
            .map_err(query_err("write netbox cursor"))?;
        });
        Ok(())
    }
}
