//! DHCP leases and boot-timeline events.

use crate::error::{Result, corrupt, query_err};
use crate::ts::Ts;
use crate::{Store, on_pool};
use sqlx::types::Json;
use sqlx::{QueryBuilder, Row};
use std::collections::HashMap;
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

/// Writes runs of lease changes (see `commit_leases`) inside an open
/// transaction `$tx`; the same SQL on both backends.
macro_rules! write_lease_runs {
    ($tx:expr, $runs:expr) => {{
        for run in $runs {
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
                        .execute(&mut *$tx)
                        .await
                        .map_err(query_err("write leases"))?;
                }
                Err(ip) => {
                    sqlx::query("DELETE FROM leases WHERE ip = $1")
                        .bind(*ip)
                        .execute(&mut *$tx)
                        .await
                        .map_err(query_err("remove lease"))?;
                }
            }
        }
    }};
}

/// Page cache of the lease connection: a lease row and its index entries
/// take ~150 bytes, so 32 MiB keeps ~200,000 leases' pages in memory. SQLite
/// allocates it only as pages are read.
const LEASE_CACHE_KIB: i64 = 32 * 1024;

/// Groups a batch into runs: consecutive upserts form one multi-row
/// statement (one round trip instead of one per lease), a removal is a run of
/// its own, and order between upserts and removals is kept. Within one
/// statement an address may appear once (PostgreSQL refuses ON CONFLICT
/// touching a row twice), so a later upsert of the same address replaces an
/// earlier one of the same run.
fn lease_runs(batch: &[LeaseWrite]) -> Vec<std::result::Result<Vec<&LeaseRecord>, &str>> {
    let mut runs: Vec<std::result::Result<Vec<&LeaseRecord>, &str>> = Vec::new();
    // Position of each address in the current run of upserts.
    let mut at: HashMap<&str, usize> = HashMap::new();
    for w in batch {
        match w {
            LeaseWrite::Upsert(l) => match runs.last_mut() {
                Some(Ok(run)) => match at.get(l.ip.as_str()) {
                    Some(&i) => run[i] = l,
                    None => {
                        at.insert(&l.ip, run.len());
                        run.push(l);
                    }
                },
                _ => {
                    at.clear();
                    at.insert(&l.ip, 0);
                    runs.push(Ok(vec![l]));
                }
            },
            LeaseWrite::Remove { ip } => runs.push(Err(ip.as_str())),
        }
    }
    runs
}

/// Takes a connection out of the pool for lease batches (see
/// `Store::commit_leases`), with its own cache size and in-memory statement
/// journals.
async fn open_lease_conn(pool: &sqlx::SqlitePool) -> Result<sqlx::SqliteConnection> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(query_err("open the lease connection"))?
        .detach();
    sqlx::query("PRAGMA temp_store = MEMORY")
        .execute(&mut conn)
        .await
        .map_err(query_err("lease connection: temp_store"))?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "PRAGMA cache_size = -{LEASE_CACHE_KIB}"
    )))
    .execute(&mut conn)
    .await
    .map_err(query_err("lease connection: cache_size"))?;
    Ok(conn)
}

async fn commit_lease_runs_sqlite(
    conn: &mut sqlx::SqliteConnection,
    runs: &[std::result::Result<Vec<&LeaseRecord>, &str>],
) -> Result<()> {
    use sqlx::Connection;
    let mut tx = conn
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(query_err("begin"))?;
    write_lease_runs!(tx, runs);
    tx.commit().await.map_err(query_err("commit leases"))?;
    Ok(())
}

impl Store {
    /// Applies a batch of lease changes in one transaction: one commit (one
    /// fsync) makes the whole batch durable, which is how DHCP stays both
    /// durable and fast.
    ///
    /// On SQLite the batches go through one connection kept for them. In WAL
    /// mode a connection drops its whole page cache whenever another
    /// connection wrote since its last transaction, and the pool hands out its
    /// connections in turn: every commit started cold and re-read the lease
    /// table's and indexes' pages (`pread`) it was about to modify. The kept
    /// connection also holds statement journals in memory (`temp_store`): a
    /// multi-row upsert journals the pages it changes in case it must be
    /// rolled back on its own, and past 64 KiB SQLite spilled that journal to
    /// a temporary file it created, wrote and unlinked on every other commit.
    pub async fn commit_leases(&self, batch: &[LeaseWrite]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let _serialised = self.write_guard().await;
        let runs = lease_runs(batch);
        if let (crate::Pool::Sqlite(pool), Some(slot)) = (&self.pool, &self.lease_conn) {
            let mut slot = slot.lock().await;
            let conn = match slot.as_mut() {
                Some(c) => c,
                None => slot.insert(open_lease_conn(pool).await?),
            };
            let res = commit_lease_runs_sqlite(conn, &runs).await;
            if res.is_err() {
                // Whatever state the failure left the connection in (an open
                // transaction, a broken file handle), the next batch starts
                // on a fresh one.
                *slot = None;
            }
            return res;
        }
        on_pool!(self, |p, begin| {
            let mut tx = p.begin_with(begin).await.map_err(query_err("begin"))?;
            write_lease_runs!(tx, &runs);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn up(ip: &str, state: &str) -> LeaseWrite {
        LeaseWrite::Upsert(LeaseRecord {
            ip: ip.into(),
            mac: "52:54:00:00:00:01".into(),
            network: "n".into(),
            state: state.into(),
            hostname: None,
            client_id: None,
            expires_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
        })
    }

    fn shape(batch: &[LeaseWrite]) -> Vec<Result<Vec<(String, String)>, String>> {
        lease_runs(batch)
            .into_iter()
            .map(|r| match r {
                Ok(ls) => Ok(ls
                    .into_iter()
                    .map(|l| (l.ip.clone(), l.state.clone()))
                    .collect()),
                Err(ip) => Err(ip.to_string()),
            })
            .collect()
    }

    #[test]
    fn lease_runs_keep_order_and_the_last_upsert_per_address() {
        let rm = |ip: &str| LeaseWrite::Remove { ip: ip.into() };
        let p = |ip: &str, st: &str| (ip.to_string(), st.to_string());
        let batch = [
            up("10.0.0.1", "offered"),
            up("10.0.0.2", "bound"),
            up("10.0.0.1", "bound"),
            rm("10.0.0.2"),
            up("10.0.0.2", "bound"),
            up("10.0.0.3", "bound"),
            up("10.0.0.2", "released"),
        ];
        assert_eq!(
            shape(&batch),
            vec![
                Ok(vec![p("10.0.0.1", "bound"), p("10.0.0.2", "bound")]),
                Err("10.0.0.2".into()),
                // A new run after a removal: 10.0.0.1 of the first run does
                // not leak into this one's positions.
                Ok(vec![p("10.0.0.2", "released"), p("10.0.0.3", "bound")]),
            ]
        );
        assert!(lease_runs(&[]).is_empty());
    }
}
