//! Machines, their tags, interfaces and BMC, and the event log.

use crate::error::{Result, StoreError, corrupt, query_err};
use crate::ts::Ts;
use crate::{Store, on_pool};
use anvil_types::{Bmc, BmcDriver, Event, Interface, MacAddr, Machine, MachineState};
use sqlx::types::Json;
use sqlx::{QueryBuilder, Row};
use std::collections::HashMap;
use time::OffsetDateTime;
use uuid::Uuid;

/// A machine as written: the whole record, children included.
#[derive(Debug, Clone)]
pub struct MachineWrite {
    pub machine: Machine,
    /// The BMC password, already encrypted by the application layer.
    pub bmc_secret: SecretUpdate,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SecretUpdate {
    /// Leave the stored secret as it is.
    Keep,
    Set(Vec<u8>),
    Clear,
}

/// An event to append in the same transaction as the change it records.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub time: OffsetDateTime,
    pub actor: String,
    pub machine_id: Option<Uuid>,
    pub kind: String,
    pub message: String,
    pub data: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortKey {
    #[default]
    Hostname,
    CreatedAt,
    UpdatedAt,
    State,
}

impl SortKey {
    fn column(self) -> &'static str {
        match self {
            SortKey::Hostname => "m.hostname",
            SortKey::CreatedAt => "m.created_at",
            SortKey::UpdatedAt => "m.updated_at",
            SortKey::State => "m.state",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct MachineFilter {
    pub state: Option<MachineState>,
    pub tag: Option<String>,
    pub mac: Option<MacAddr>,
    /// Case-insensitive substring of the hostname.
    pub hostname_contains: Option<String>,
    pub sort: SortKey,
    pub descending: bool,
    pub limit: u32,
    pub offset: u64,
}

#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub machine_id: Option<Uuid>,
    /// Only events with an id greater than this (a cursor).
    pub after_id: Option<i64>,
    /// Only events at or after this time.
    pub since: Option<OffsetDateTime>,
    pub limit: u32,
}

const MACHINE_COLUMNS: &str = "m.id, m.hostname, m.state, m.state_reason, m.architecture, m.firmware, m.vendor, m.model, m.serial, m.facts, m.power_state, m.power_checked_at, m.created_at, m.updated_at";

fn parse_opt<T: std::str::FromStr>(column: &'static str, v: Option<String>) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    v.map(|s| s.parse::<T>().map_err(|e| corrupt(column, e)))
        .transpose()
}

/// Decodes the machine columns of a row (children are filled in later).
macro_rules! machine_from_row {
    ($row:expr) => {{
        let row = $row;
        let get = |c: &'static str| -> Result<Option<String>> {
            row.try_get::<Option<String>, _>(c)
                .map_err(|e| corrupt(c, e))
        };
        let state: String = row.try_get("state").map_err(|e| corrupt("state", e))?;
        let facts: Json<serde_json::Value> =
            row.try_get("facts").map_err(|e| corrupt("facts", e))?;
        let created: Ts = row
            .try_get("created_at")
            .map_err(|e| corrupt("created_at", e))?;
        let updated: Ts = row
            .try_get("updated_at")
            .map_err(|e| corrupt("updated_at", e))?;
        Machine {
            id: row.try_get("id").map_err(|e| corrupt("id", e))?,
            hostname: row
                .try_get("hostname")
                .map_err(|e| corrupt("hostname", e))?,
            state: state.parse().map_err(|e| corrupt("state", e))?,
            state_reason: get("state_reason")?,
            architecture: parse_opt("architecture", get("architecture")?)?,
            firmware: parse_opt("firmware", get("firmware")?)?,
            vendor: get("vendor")?,
            model: get("model")?,
            serial: get("serial")?,
            tags: Vec::new(),
            facts: facts.0,
            interfaces: Vec::new(),
            bmc: None,
            power_state: get("power_state")?,
            power_checked_at: row
                .try_get::<Option<Ts>, _>("power_checked_at")
                .map_err(|e| corrupt("power_checked_at", e))?
                .map(|t| t.0),
            created_at: created.0,
            updated_at: updated.0,
        }
    }};
}

/// Loads tags, interfaces and BMCs for `machines` in three queries, whatever
/// their number (no query per machine).
macro_rules! fill_children {
    // The ids of the machines, bound one by one (for a few machines).
    ($p:expr, $machines:expr) => {{
        let ids: Vec<Uuid> = $machines.iter().map(|m| m.id).collect();
        fill_children!($p, $machines, |qb| {
            let mut sep = qb.separated(", ");
            for id in &ids {
                sep.push_bind(*id);
            }
        })
    }};
    // `$push` writes what goes inside `machine_id IN (…)`: bound ids, or a
    // subquery repeating the page's filter. The subquery keeps big pages
    // from sending thousands of bound ids (a 20 KB message that stalls on
    // Nagle's algorithm under TLS with sqlx 0.9.0, sqlx#4335).
    ($p:expr, $machines:expr, |$qb:ident| $push:block) => {{
        let machines: &mut Vec<Machine> = $machines;
        if !machines.is_empty() {
            let index: HashMap<Uuid, usize> =
                machines.iter().enumerate().map(|(i, m)| (m.id, i)).collect();

            let mut qb = QueryBuilder::new("SELECT machine_id, tag FROM machine_tags WHERE machine_id IN (");
            {
                let $qb = &mut qb;
                $push
            }
            qb.push(") ORDER BY tag");
            for row in qb.build().fetch_all($p).await.map_err(query_err("load tags"))? {
                let mid: Uuid = row.try_get("machine_id").map_err(|e| corrupt("machine_id", e))?;
                if let Some(&i) = index.get(&mid) {
                    machines[i].tags.push(row.try_get("tag").map_err(|e| corrupt("tag", e))?);
                }
            }

            let mut qb = QueryBuilder::new(
                "SELECT id, machine_id, mac, name, pxe, ipv4 FROM interfaces WHERE machine_id IN (",
            );
            {
                let $qb = &mut qb;
                $push
            }
            qb.push(") ORDER BY name, mac");
            for row in qb.build().fetch_all($p).await.map_err(query_err("load interfaces"))? {
                let mid: Uuid = row.try_get("machine_id").map_err(|e| corrupt("machine_id", e))?;
                let mac: String = row.try_get("mac").map_err(|e| corrupt("mac", e))?;
                let iface = Interface {
                    id: row.try_get("id").map_err(|e| corrupt("id", e))?,
                    mac: mac.parse().map_err(|e| corrupt("mac", e))?,
                    name: row.try_get("name").map_err(|e| corrupt("name", e))?,
                    pxe: row.try_get("pxe").map_err(|e| corrupt("pxe", e))?,
                    ipv4: row.try_get("ipv4").map_err(|e| corrupt("ipv4", e))?,
                };
                if let Some(&i) = index.get(&mid) {
                    machines[i].interfaces.push(iface);
                }
            }

            let mut qb = QueryBuilder::new(
                "SELECT machine_id, driver, address, port, username, password_enc IS NOT NULL AS has_password, verify_tls FROM bmcs WHERE machine_id IN (",
            );
            {
                let $qb = &mut qb;
                $push
            }
            qb.push(")");
            for row in qb.build().fetch_all($p).await.map_err(query_err("load bmcs"))? {
                let mid: Uuid = row.try_get("machine_id").map_err(|e| corrupt("machine_id", e))?;
                let driver: String = row.try_get("driver").map_err(|e| corrupt("driver", e))?;
                let port: Option<i32> = row.try_get("port").map_err(|e| corrupt("port", e))?;
                let bmc = Bmc {
                    driver: driver.parse::<BmcDriver>().map_err(|e| corrupt("driver", e))?,
                    address: row.try_get("address").map_err(|e| corrupt("address", e))?,
                    port: port.map(|p| p as u16),
                    username: row.try_get("username").map_err(|e| corrupt("username", e))?,
                    has_password: row.try_get("has_password").map_err(|e| corrupt("has_password", e))?,
                    verify_tls: row.try_get("verify_tls").map_err(|e| corrupt("verify_tls", e))?,
                };
                if let Some(&i) = index.get(&mid) {
                    machines[i].bmc = Some(bmc);
                }
            }
        }
    }};
}

/// Appends an event inside transaction `$tx`.
macro_rules! insert_event {
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

/// Writes tags, interfaces and BMC of `w` (after the old ones were removed).
macro_rules! write_children {
    ($tx:expr, $w:expr) => {{
        let w: &MachineWrite = $w;
        let m = &w.machine;
        for tag in &m.tags {
            sqlx::query("INSERT INTO machine_tags (machine_id, tag) VALUES ($1, $2)")
                .bind(m.id)
                .bind(tag)
                .execute(&mut *$tx)
                .await
                .map_err(query_err("write tag"))?;
        }
        for i in &m.interfaces {
            sqlx::query(
                "INSERT INTO interfaces (id, machine_id, mac, name, pxe, ipv4, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(i.id)
            .bind(m.id)
            .bind(i.mac.to_string())
            .bind(&i.name)
            .bind(i.pxe)
            .bind(&i.ipv4)
            .bind(Ts(m.updated_at))
            .execute(&mut *$tx)
            .await
            .map_err(|e| match query_err("write interface")(e) {
                StoreError::Duplicate { what, .. } => StoreError::Duplicate { what, value: i.mac.to_string() },
                other => other,
            })?;
        }
        match &m.bmc {
            None => {
                sqlx::query("DELETE FROM bmcs WHERE machine_id = $1")
                    .bind(m.id)
                    .execute(&mut *$tx)
                    .await
                    .map_err(query_err("remove bmc"))?;
            }
            Some(b) => {
                sqlx::query(
                    "INSERT INTO bmcs (machine_id, driver, address, port, username, verify_tls) VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (machine_id) DO UPDATE SET driver = excluded.driver, address = excluded.address,
                       port = excluded.port, username = excluded.username, verify_tls = excluded.verify_tls",
                )
                .bind(m.id)
                .bind(b.driver.as_str())
                .bind(&b.address)
                .bind(b.port.map(i32::from))
                .bind(&b.username)
                .bind(b.verify_tls)
                .execute(&mut *$tx)
                .await
                .map_err(query_err("write bmc"))?;
                let secret: Option<Option<&Vec<u8>>> = match &w.bmc_secret {
                    SecretUpdate::Keep => None,
                    SecretUpdate::Set(s) => Some(Some(s)),
                    SecretUpdate::Clear => Some(None),
                };
                if let Some(secret) = secret {
                    sqlx::query("UPDATE bmcs SET password_enc = $1 WHERE machine_id = $2")
                        .bind(secret)
                        .bind(m.id)
                        .execute(&mut *$tx)
                        .await
                        .map_err(query_err("write bmc secret"))?;
                }
            }
        }
    }};
}

fn named_duplicate(e: StoreError, m: &Machine) -> StoreError {
    match e {
        StoreError::Duplicate {
            what: "hostname", ..
        } => StoreError::Duplicate {
            what: "hostname",
            value: m.hostname.clone(),
        },
        other => other,
    }
}

fn push_filter<DB: sqlx::Database>(qb: &mut QueryBuilder<DB>, f: &MachineFilter)
where
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    qb.push(" WHERE 1 = 1");
    if let Some(state) = f.state {
        qb.push(" AND m.state = ")
            .push_bind(state.as_str().to_string());
    }
    if let Some(tag) = &f.tag {
        qb.push(" AND EXISTS (SELECT 1 FROM machine_tags t WHERE t.machine_id = m.id AND t.tag = ")
            .push_bind(tag.clone())
            .push(")");
    }
    if let Some(mac) = &f.mac {
        qb.push(" AND EXISTS (SELECT 1 FROM interfaces i WHERE i.machine_id = m.id AND i.mac = ")
            .push_bind(mac.to_string())
            .push(")");
    }
    if let Some(sub) = &f.hostname_contains {
        let escaped = sub
            .to_ascii_lowercase()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        qb.push(" AND m.hostname LIKE ")
            .push_bind(format!("%{escaped}%"))
            .push(" ESCAPE '\\'");
    }
}

impl Store {
    /// Inserts a new machine with its children and the event that records it.
    pub async fn insert_machine(&self, w: &MachineWrite, event: &NewEvent) -> Result<()> {
        let m = &w.machine;
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, begin| {
            let mut tx = p.begin_with(begin).await.map_err(query_err("begin"))?;
            sqlx::query(
                "INSERT INTO machines (id, hostname, state, state_reason, architecture, firmware, vendor, model, serial, facts, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind(m.id)
            .bind(&m.hostname)
            .bind(m.state.as_str())
            .bind(&m.state_reason)
            .bind(m.architecture.map(|a| a.as_str()))
            .bind(m.firmware.map(|f| f.as_str()))
            .bind(&m.vendor)
            .bind(&m.model)
            .bind(&m.serial)
            .bind(Json(&m.facts))
            .bind(Ts(m.created_at))
            .bind(Ts(m.updated_at))
            .execute(&mut *tx)
            .await
            .map_err(|e| named_duplicate(query_err("insert machine")(e), m))?;
            write_children!(tx, w);
            insert_event!(&mut *tx, event);
            tx.commit().await.map_err(query_err("commit"))?;
        });
        Ok(())
    }

    /// Replaces a machine's record and children, if it has not changed since
    /// `expected_updated_at` (optimistic concurrency: two instances editing the
    /// same machine cannot silently overwrite each other).
    pub async fn update_machine(
        &self,
        w: &MachineWrite,
        expected_updated_at: OffsetDateTime,
        event: &NewEvent,
    ) -> Result<()> {
        let m = &w.machine;
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, begin| {
            let mut tx = p.begin_with(begin).await.map_err(query_err("begin"))?;
            let done = sqlx::query(
                "UPDATE machines SET hostname = $1, state = $2, state_reason = $3, architecture = $4, firmware = $5,
                   vendor = $6, model = $7, serial = $8, facts = $9, updated_at = $10
                 WHERE id = $11 AND updated_at = $12",
            )
            .bind(&m.hostname)
            .bind(m.state.as_str())
            .bind(&m.state_reason)
            .bind(m.architecture.map(|a| a.as_str()))
            .bind(m.firmware.map(|f| f.as_str()))
            .bind(&m.vendor)
            .bind(&m.model)
            .bind(&m.serial)
            .bind(Json(&m.facts))
            .bind(Ts(m.updated_at))
            .bind(m.id)
            .bind(Ts(expected_updated_at))
            .execute(&mut *tx)
            .await
            .map_err(|e| named_duplicate(query_err("update machine")(e), m))?;
            if done.rows_affected() == 0 {
                return Err(StoreError::Concurrent);
            }
            sqlx::query("DELETE FROM machine_tags WHERE machine_id = $1")
                .bind(m.id)
                .execute(&mut *tx)
                .await
                .map_err(query_err("clear tags"))?;
            sqlx::query("DELETE FROM interfaces WHERE machine_id = $1")
                .bind(m.id)
                .execute(&mut *tx)
                .await
                .map_err(query_err("clear interfaces"))?;
            write_children!(tx, w);
            insert_event!(&mut *tx, event);
            tx.commit().await.map_err(query_err("commit"))?;
        });
        Ok(())
    }

    /// Moves a machine from state `from` to `to`; fails with `Concurrent` if
    /// it is no longer in `from`.
    pub async fn set_state(
        &self,
        id: Uuid,
        from: MachineState,
        to: MachineState,
        reason: Option<&str>,
        at: OffsetDateTime,
        event: &NewEvent,
    ) -> Result<()> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, begin| {
            let mut tx = p.begin_with(begin).await.map_err(query_err("begin"))?;
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
            .map_err(query_err("set state"))?;
            if done.rows_affected() == 0 {
                return Err(StoreError::Concurrent);
            }
            insert_event!(&mut *tx, event);
            tx.commit().await.map_err(query_err("commit"))?;
        });
        Ok(())
    }

    /// Deletes a machine and its children. Returns false if it did not exist.
    pub async fn delete_machine(&self, id: Uuid, event: &NewEvent) -> Result<bool> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, begin| {
            let mut tx = p.begin_with(begin).await.map_err(query_err("begin"))?;
            let done = sqlx::query("DELETE FROM machines WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(query_err("delete machine"))?;
            if done.rows_affected() == 0 {
                return Ok(false);
            }
            insert_event!(&mut *tx, event);
            tx.commit().await.map_err(query_err("commit"))?;
        });
        Ok(true)
    }

    pub async fn get_machine(&self, id: Uuid) -> Result<Option<Machine>> {
        on_pool!(self, |p, _b| {
            let sql = format!("SELECT {MACHINE_COLUMNS} FROM machines m WHERE m.id = $1");
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(p)
                .await
                .map_err(query_err("get machine"))?;
            let Some(row) = row else { return Ok(None) };
            let mut v = vec![machine_from_row!(&row)];
            fill_children!(p, &mut v);
            Ok(v.pop())
        })
    }

    pub async fn get_machine_by_hostname(&self, hostname: &str) -> Result<Option<Machine>> {
        let id = on_pool!(self, |p, _b| {
            sqlx::query_scalar::<_, Uuid>("SELECT id FROM machines WHERE hostname = $1")
                .bind(hostname)
                .fetch_optional(p)
                .await
                .map_err(query_err("find machine by hostname"))?
        });
        match id {
            Some(id) => self.get_machine(id).await,
            None => Ok(None),
        }
    }

    /// The machine that owns interface `mac`, if any.
    pub async fn machine_id_by_mac(&self, mac: &MacAddr) -> Result<Option<Uuid>> {
        on_pool!(self, |p, _b| {
            sqlx::query_scalar::<_, Uuid>("SELECT machine_id FROM interfaces WHERE mac = $1")
                .bind(mac.to_string())
                .fetch_optional(p)
                .await
                .map_err(query_err("find machine by mac"))
        })
    }

    /// One page of machines with all details, and the total matching `f`.
    pub async fn list_machines(&self, f: &MachineFilter) -> Result<(Vec<Machine>, u64)> {
        on_pool!(self, |p, _b| {
            let mut count = QueryBuilder::new("SELECT COUNT(*) FROM machines m");
            push_filter(&mut count, f);
            let total: i64 = count
                .build_query_scalar()
                .fetch_one(p)
                .await
                .map_err(query_err("count machines"))?;

            let mut qb = QueryBuilder::new(format!("SELECT {MACHINE_COLUMNS} FROM machines m"));
            push_filter(&mut qb, f);
            let dir = if f.descending { "DESC" } else { "ASC" };
            qb.push(format!(" ORDER BY {} {dir}, m.id {dir}", f.sort.column()));
            qb.push(" LIMIT ").push_bind(i64::from(f.limit));
            qb.push(" OFFSET ").push_bind(f.offset as i64);
            let rows = qb
                .build()
                .fetch_all(p)
                .await
                .map_err(query_err("list machines"))?;
            let mut machines = Vec::with_capacity(rows.len());
            for row in &rows {
                machines.push(machine_from_row!(row));
            }
            let order = format!(" ORDER BY {} {dir}, m.id {dir}", f.sort.column());
            fill_children!(p, &mut machines, |qb| {
                qb.push("SELECT m.id FROM machines m");
                push_filter(qb, f);
                qb.push(order.as_str());
                qb.push(" LIMIT ").push_bind(i64::from(f.limit));
                qb.push(" OFFSET ").push_bind(f.offset as i64);
            });
            Ok((machines, total.max(0) as u64))
        })
    }

    /// The stored (encrypted) BMC password of a machine.
    pub async fn bmc_secret(&self, machine_id: Uuid) -> Result<Option<Vec<u8>>> {
        on_pool!(self, |p, _b| {
            let v: Option<Option<Vec<u8>>> =
                sqlx::query_scalar("SELECT password_enc FROM bmcs WHERE machine_id = $1")
                    .bind(machine_id)
                    .fetch_optional(p)
                    .await
                    .map_err(query_err("read bmc secret"))?;
            Ok(v.flatten())
        })
    }

    /// Appends an event that is not part of another change.
    pub async fn append_event(&self, event: &NewEvent) -> Result<()> {
        let _serialised = self.write_guard().await;
        on_pool!(self, |p, _b| {
            insert_event!(p, event);
        });
        Ok(())
    }

    /// Events in ascending id order.
    pub async fn list_events(&self, f: &EventFilter) -> Result<Vec<Event>> {
        on_pool!(self, |p, _b| {
            let mut qb = QueryBuilder::new(
                "SELECT id, time, actor, machine_id, kind, message, data FROM events WHERE 1 = 1",
            );
            if let Some(mid) = f.machine_id {
                qb.push(" AND machine_id = ").push_bind(mid);
            }
            if let Some(after) = f.after_id {
                qb.push(" AND id > ").push_bind(after);
            }
            if let Some(since) = f.since {
                qb.push(" AND time >= ").push_bind(Ts(since));
            }
            qb.push(" ORDER BY id ASC LIMIT ")
                .push_bind(i64::from(f.limit));
            let rows = qb
                .build()
                .fetch_all(p)
                .await
                .map_err(query_err("list events"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let time: Ts = row.try_get("time").map_err(|e| corrupt("time", e))?;
                let data: Json<serde_json::Value> =
                    row.try_get("data").map_err(|e| corrupt("data", e))?;
                out.push(Event {
                    id: row.try_get("id").map_err(|e| corrupt("id", e))?,
                    time: time.0,
                    actor: row.try_get("actor").map_err(|e| corrupt("actor", e))?,
                    machine_id: row
                        .try_get("machine_id")
                        .map_err(|e| corrupt("machine_id", e))?,
                    kind: row.try_get("kind").map_err(|e| corrupt("kind", e))?,
                    message: row.try_get("message").map_err(|e| corrupt("message", e))?,
                    data: data.0,
                });
            }
            Ok(out)
        })
    }

    /// Counts per lifecycle state (for metrics and the UI header).
    pub async fn count_by_state(&self) -> Result<Vec<(MachineState, u64)>> {
        on_pool!(self, |p, _b| {
            let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM machines GROUP BY state")
                .fetch_all(p)
                .await
                .map_err(query_err("count by state"))?;
            let mut out = Vec::new();
            for row in rows {
                let s: String = row.try_get("state").map_err(|e| corrupt("state", e))?;
                let n: i64 = row.try_get("n").map_err(|e| corrupt("n", e))?;
                out.push((s.parse().map_err(|e| corrupt("state", e))?, n.max(0) as u64));
            }
            Ok(out)
        })
    }
}
