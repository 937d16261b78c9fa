//! DHCP leases and boot-timeline events.

use crate::error::{Result, corrupt, query_err};
use crate::ts::Ts;
use crate::{Store, on_pool};
use sqlx::types::Json;
use sqlx::{QueryBuilder, Row};
use time::OffsetDateTime;

/// A DHCP lease as stored: one row per address.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseRecord {
    pub ip: String,
    pub mac: String,
    pub network: String,
    /// `offered`, `bound`, `declined`, …: the DHCP service's vocabulary.
    pub state: String,
    pub hostname: Option<String>,
    pub client_id: Option<String>,
    pub expires_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// A change to the lease table.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseWrite {
    /// Insert or replace the lease of this address.
    Upsert(LeaseRecord),
    /// The address is free again.
    Remove { ip: String },
}

/// One step of a network boot.
#[derive(Debug, Clone, PartialEq)]
pub struct BootEventRecord {
    pub id: i64,
    pub time: OffsetDateTime,
    pub mac: String,
    pub kind: String,
    pub detail: serde_json::Value,
}

macro_rules! lease_from_row {
    ($row:expr) => {{
        let row = $row;
        let expires: Ts = row
            .try_get("expires_at")
            .map_err(|e| corrupt("expires_at", e))?;
        let updated: Ts = row
            .try_get("updated_at")
            .map_err(|e| corrupt("updated_at", e))?;
        LeaseRecord {
            ip: row.try_get("ip").map_err(|e| corrupt("ip", e))?,
            mac: row.try_get("mac").map_err(|e| corrupt("mac", e))?,
            network: row.try_get("network").map_err(|e| corrupt("network", e))?,
            state: row.try_get("state").map_err(|e| corrupt("state", e))?,
            hostname: row
                .try_get("hostname")
                .map_err(|e| corrupt("hostname", e))?,
            client_id: row
                .try_get("client_id")
                .map_err(|e| corrupt("client_id", e))?,
            expires_at: expires.0,
            updated_at: updated.0,
        }
    }};
}

impl Store {
    /// Applies a batch of lease changes in one transaction: one commit (one
    /// fsync) makes the whole batch durable, which is how DHCP stays both
    /// durable and fast.
    pub async fn commit_leases(&self, batch: &[LeaseWrite]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let _serialised = self.write_guard().await;
        // Consecutive upserts go out as one multi-row statement (one round
        // trip to the database instead of one per lease); order between
        // upserts and removals is kept. Within one statement an address may
        // appear once (PostgreSQL refuses ON CONFLICT touching a row twice),
        // so a later upsert of the same address replaces an earlier one.
        let mut runs: Vec<Result<Vec<&LeaseRecord>, &str>> = Vec::new();
        for w in batch {
            match w {
                LeaseWrite::Upsert(l) => match runs.last_mut() {
                    Some(Ok(run)) => {
                        run.retain(|x| x.ip != l.ip);
                        run.push(l);
                    }
                    _ => runs.push(Ok(vec![l])),
                },
                LeaseWrite::Remove { ip } => runs.push(Err(ip.as_str())),
            }
        }
        on_pool!(self, |p, begin| {
            let mut tx = p.begin_with(begin).await.map_err(query_err("begin"))?;
            for run in &runs {
                match run {
                    Ok(leases) => {
                        let mut qb = QueryBuilder::new(
                            "INSERT INTO leases (ip, mac, network, state, hostname, client_id, expires_at, updated_at) ",
                        );
                        qb.push_values(leases.iter(), |mut b, l| {
                            b.push_bind(l.ip.clone())
                                .push_bind(l.mac.clone())
                                .push_bind(l.network.clone())
                                .push_bind(l.state.clone())
                                .push_bind(l.hostname.clone())
                                .push_bind(l.client_id.clone())
                                .push_bind(Ts(l.expires_at))
                                .push_bind(Ts(l.updated_at));
                        });
                        qb.push(
                            " ON CONFLICT (ip) DO UPDATE SET mac = excluded.mac, network = excluded.network,
                               state = excluded.state, hostname = excluded.hostname, client_id = excluded.client_id,
                               expires_at = excluded.expires_at, updated_at = excluded.updated_at",
                        );
                        qb.build()
                            .execute(&mut *tx)
                            .await
                            .map_err(query_err("write leases"))?;
                    }
                    Err(ip) => {
                        sqlx::query("DELETE FROM leases WHERE ip = $1")
                            .bind(*ip)
                            .execute(&mut *tx)
                            .await
                            .map_err(query_err("remove lease"))?;
                    }
                }
            }
            tx.commit().await.map_err(query_err("commit leases"))?;
        });
        Ok(())
    }

    /// Leases, all or those of one MAC, by address.
    pub async fn list_leases(&self, mac: Option<&str>) -> Result<Vec<LeaseRecord>> {
        on_pool!(self, |p, _b| {
            let mut qb = QueryBuilder::new(
                "SELECT ip, mac, network, state, hostname, client_id, expires_at, updated_at FROM leases",
            );
            if let Some(mac) = mac {
                qb.push(" WHERE mac = ").push_bind(mac.to_string());
            }
            qb.push(" ORDER BY ip");
            let rows = qb
                .build()
                .fetch_all(p)
                .await
                .map_err(query_err("list leases"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(lease_from_row!(row));
            }
            Ok(out)
        })
    }

    /// Appends boot events in one transaction.
    pub async fn append_boot_events(
        &self,
        events: &[(OffsetDateTime, String, String, serde_json::Value)],
    ) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, _b| {
            let mut qb = QueryBuilder::new("INSERT INTO boot_events (time, mac, kind, detail) ");
            qb.push_values(events, |mut b, (time, mac, kind, detail)| {
                b.push_bind(Ts(*time))
                    .push_bind(mac.clone())
                    .push_bind(kind.clone())
                    .push_bind(Json(detail.clone()));
            });
            qb.build()
                .execute(p)
                .await
                .map_err(query_err("append boot events"))?;
        });
        Ok(())
    }

    /// The newest `limit` boot events of these MACs, returned oldest first.
    pub async fn boot_events(&self, macs: &[String], limit: u32) -> Result<Vec<BootEventRecord>> {
        if macs.is_empty() {
            return Ok(Vec::new());
        }
        on_pool!(self, |p, _b| {
            let mut qb = QueryBuilder::new(
                "SELECT id, time, mac, kind, detail FROM boot_events WHERE mac IN (",
            );
            let mut sep = qb.separated(", ");
            for m in macs {
                sep.push_bind(m.clone());
            }
            qb.push(") ORDER BY id DESC LIMIT ")
                .push_bind(i64::from(limit));
            let rows = qb
                .build()
                .fetch_all(p)
                .await
                .map_err(query_err("list boot events"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows.iter().rev() {
                let time: Ts = row.try_get("time").map_err(|e| corrupt("time", e))?;
                let detail: Json<serde_json::Value> =
                    row.try_get("detail").map_err(|e| corrupt("detail", e))?;
                out.push(BootEventRecord {
                    id: row.try_get("id").map_err(|e| corrupt("id", e))?,
                    time: time.0,
                    mac: row.try_get("mac").map_err(|e| corrupt("mac", e))?,
                    kind: row.try_get("kind").map_err(|e| corrupt("kind", e))?,
                    detail: detail.0,
                });
            }
            Ok(out)
        })
    }

    /// Every interface MAC with its machine (for the boot services' snapshot).
    pub async fn interface_index(&self) -> Result<Vec<InterfaceIndexRow>> {
        on_pool!(self, |p, _b| {
            let rows = sqlx::query(
                "SELECT i.mac, i.ipv4, m.id, m.hostname, m.state FROM interfaces i JOIN machines m ON m.id = i.machine_id",
            )
            .fetch_all(p)
            .await
            .map_err(query_err("interface index"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let state: String = row.try_get("state").map_err(|e| corrupt("state", e))?;
                out.push(InterfaceIndexRow {
                    mac: row.try_get("mac").map_err(|e| corrupt("mac", e))?,
                    ipv4: row.try_get("ipv4").map_err(|e| corrupt("ipv4", e))?,
                    machine_id: row.try_get("id").map_err(|e| corrupt("id", e))?,
                    hostname: row
                        .try_get("hostname")
                        .map_err(|e| corrupt("hostname", e))?,
                    state: state.parse().map_err(|e| corrupt("state", e))?,
                });
            }
            Ok(out)
        })
    }
}

/// One row of the MAC → machine index.
#[derive(Debug, Clone, PartialEq)]
pub struct InterfaceIndexRow {
    pub mac: String,
    pub ipv4: Option<String>,
    pub machine_id: uuid::Uuid,
    pub hostname: String,
    pub state: anvil_types::MachineState,
}
