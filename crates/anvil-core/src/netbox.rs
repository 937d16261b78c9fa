//! NetBox synchronisation: the application side.
//!
//! The reconcile itself is pure (`anvil_netbox::plan`); this module reads
//! both sides, applies the Anvil half of a plan through the same rules as
//! every other change (one event per machine change, in its transaction),
//! sends the NetBox half with the bulk endpoints, and records every run.
//!
//! Three paths lead here:
//! * a full reconcile (`netbox_sync`): periodic, or asked for by the API/CLI;
//! * a webhook (`netbox_webhook`): NetBox says a device changed; that one
//!   device is re-read and reconciled within seconds;
//! * the write-back outbox: Anvil-side machine events (a state change, a
//!   discovered MAC) queue the machine durably (`netbox_outbox`) and a
//!   loop writes it back; while NetBox is down the entry stays, with its
//!   error, and is retried with backoff.

mod cables;

use crate::error::{Error, Result};
use crate::{App, Principal, now};
use anvil_netbox::plan::{ImportInterface, MachineImport, MachineUpdate, plan};
use anvil_netbox::{
    Conflict, Mapping, NbSnapshot, NetBoxClient, NetboxStatus, PlanInput, Scope, SyncReport,
    SyncRunInfo,
};
use anvil_store::{
    EventFilter, MachineFilter, MachineWrite, NetboxRun, NetboxRunCounts, NewEvent, SecretUpdate,
};
use anvil_types::{Bmc, BmcDriver, Interface, Machine, MachineState};
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Credentials given to the BMCs of imported devices (NetBox holds no
/// passwords).
#[derive(Clone, Default)]
pub struct BmcDefaults {
    pub driver: Option<BmcDriver>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub verify_tls: bool,
}

impl std::fmt::Debug for BmcDefaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BmcDefaults")
            .field("driver", &self.driver)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Everything the sync needs, built by the binary from `[netbox]`.
#[derive(Debug)]
pub struct NetboxSettings {
    pub client: NetBoxClient,
    pub scope: Scope,
    pub mapping: Mapping,
    /// The event-rule webhook secret; `None` refuses every webhook.
    pub webhook_secret: Option<String>,
    pub bmc: BmcDefaults,
    /// Between two full reconciles.
    pub interval: Duration,
}

pub(crate) struct NetboxCtl {
    settings: NetboxSettings,
    /// One sync at a time: two would plan against the same snapshot and
    /// write twice.
    running: tokio::sync::Mutex<()>,
}

const ACTOR: &str = "netbox";
const EVENTS_CURSOR: &str = "events";
/// Write-backs handled per outbox pass.
const OUTBOX_BATCH: u32 = 100;

fn netbox_err(e: anvil_netbox::Error) -> Error {
    Error::Netbox(crate::error_chain(&e))
}

fn run_info(r: &NetboxRun) -> SyncRunInfo {
    let n = |v: i64| v.max(0) as u64;
    SyncRunInfo {
        id: r.id,
        kind: r.kind.clone(),
        status: r.status.clone(),
        started_at: r.started_at,
        finished_at: r.finished_at,
        created: n(r.counts.created),
        updated: n(r.counts.updated),
        unchanged: n(r.counts.unchanged),
        written: n(r.counts.written),
        pending: n(r.counts.pending),
        conflicts: n(r.counts.conflicts),
        error: r.error.clone(),
    }
}

fn system_event(
    machine: Option<Uuid>,
    kind: &str,
    message: String,
    data: serde_json::Value,
) -> NewEvent {
    NewEvent {
        time: now(),
        actor: ACTOR.into(),
        machine_id: machine,
        kind: kind.into(),
        message,
        data,
    }
}

fn to_interface(i: &ImportInterface, existing: &[Interface]) -> Interface {
    Interface {
        id: existing
            .iter()
            .find(|e| e.mac == i.mac)
            .map(|e| e.id)
            .unwrap_or_else(Uuid::now_v7),
        mac: i.mac,
        name: i.name.clone(),
        pxe: i.pxe,
        ipv4: i.ipv4.clone(),
    }
}

impl App {
    /// Enables NetBox synchronisation.
    pub fn with_netbox(mut self, settings: NetboxSettings) -> Self {
        self.netbox = Some(Arc::new(NetboxCtl {
            settings,
            running: tokio::sync::Mutex::new(()),
        }));
        self
    }

    /// The NetBox client, when the sync is configured (`netconfig.rs` reads
    /// a linked device's network with it).
    pub(crate) fn netbox_client(&self) -> Option<&NetBoxClient> {
        self.netbox.as_ref().map(|c| &c.settings.client)
    }

    fn netbox_ctl(&self) -> Result<&Arc<NetboxCtl>> {
        self.netbox.as_ref().ok_or(Error::NetboxDisabled)
    }

    /// Every machine, with children (the plan needs all MACs and names).
    async fn all_machines(&self) -> Result<Vec<Machine>> {
        let mut out = Vec::new();
        let mut offset = 0u64;
        loop {
            let (page, total) = self
                .store
                .list_machines(&MachineFilter {
                    limit: 1000,
                    offset,
                    ..Default::default()
                })
                .await?;
            offset += page.len() as u64;
            let done = page.is_empty() || offset >= total;
            out.extend(page);
            if done {
                return Ok(out);
            }
        }
    }

    /// A full reconcile of the scope, or with `dry_run` its plan only.
    ///
    /// It runs in a task of its own: a caller that stops waiting (an HTTP
    /// client that timed out during a long first import) does not cut the
    /// sync short between two NetBox writes or leave its run unfinished.
    pub async fn netbox_sync(&self, by: &Principal, dry_run: bool) -> Result<SyncReport> {
        self.netbox_ctl()?;
        let app = self.clone();
        let by = by.clone();
        tokio::spawn(async move { app.netbox_sync_to_end(&by, dry_run).await })
            .await
            .map_err(|e| Error::Internal {
                context: "the NetBox sync task panicked",
                source: Box::new(e),
            })?
    }

    /// Records the start of a sync run, once no other sync is running: one
    /// at a time, here or on another instance (the store allows one
    /// `running` run). Called with `ctl.running` held, so a run of this
    /// instance still `running` is a leftover; those and the runs of gone
    /// instances are closed first.
    async fn begin_netbox_run(&self, kind: &str, dry_run: bool) -> Result<i64> {
        let waited = Instant::now();
        loop {
            let live_since = now() - crate::instances::SILENT_FOR;
            let closed = self
                .store
                .netbox_fail_running(now(), live_since, self.instance)
                .await?;
            if closed > 0 {
                tracing::warn!(
                    runs = closed,
                    "closed NetBox runs of an instance that stopped"
                );
            }
            if let Some(run) = self.store.netbox_run_start(kind, dry_run, now()).await? {
                return Ok(run);
            }
            if waited.elapsed() > Duration::from_secs(3600) {
                return Err(Error::Netbox(
                    "another instance's NetBox sync has been running for an hour; not starting a second".into(),
                ));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn netbox_sync_to_end(&self, by: &Principal, dry_run: bool) -> Result<SyncReport> {
        let ctl = self.netbox_ctl()?.clone();
        let _one = ctl.running.lock().await;
        let kind = if dry_run { "dry-run" } else { "full" };
        tracing::info!(actor = %by.actor(), kind, "NetBox sync started");
        let started = Instant::now();
        let run = self.begin_netbox_run(kind, dry_run).await?;
        // Outbox entries older than this read are covered by it.
        let covered: Vec<Uuid> = self
            .store
            .netbox_outbox(u32::MAX / 2)
            .await?
            .into_iter()
            .map(|e| e.machine_id)
            .collect();
        let snapshot = match ctl
            .settings
            .client
            .snapshot(&ctl.settings.scope, &ctl.settings.mapping)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                let err = netbox_err(e);
                self.finish_failed(run, &err, 0).await;
                return Err(err);
            }
        };
        let mut report = self.reconcile(&ctl, snapshot, dry_run).await;
        report.run_id = Some(run);
        report.duration_ms = started.elapsed().as_millis() as u64;
        if report.error.is_none() && !dry_run {
            self.store.netbox_outbox_done(&covered).await?;
        }
        self.finish_run(run, &report).await?;
        tracing::info!(
            kind,
            created = report.created,
            updated = report.updated,
            unchanged = report.unchanged,
            written = report.written,
            conflicts = report.conflicts.len(),
            error = report.error.as_deref().unwrap_or(""),
            ms = report.duration_ms,
            "NetBox sync finished"
        );
        Ok(report)
    }

    async fn finish_failed(&self, run: i64, err: &Error, pending: u64) {
        let counts = NetboxRunCounts {
            pending: pending as i64,
            ..Default::default()
        };
        if let Err(e) = self
            .store
            .netbox_run_finish(run, now(), counts, Some(&err.to_string()), &json!({}))
            .await
        {
            tracing::error!(error = %crate::error_chain(&e), "cannot record a failed NetBox sync");
        }
    }

    async fn finish_run(&self, run: i64, r: &SyncReport) -> Result<()> {
        let counts = NetboxRunCounts {
            created: r.created as i64,
            updated: r.updated as i64,
            unchanged: r.unchanged as i64,
            written: r.written as i64,
            pending: r.pending as i64,
            conflicts: r.conflicts.len() as i64,
        };
        let body = json!({ "conflicts": r.conflicts, "plan": r.plan, "cables": r.cables });
        self.store
            .netbox_run_finish(run, now(), counts, r.error.as_deref(), &body)
            .await?;
        Ok(())
    }

    /// Plans against `snapshot` and, unless `dry_run`, applies both halves.
    /// Failures are in the report (the next reconcile picks up the rest).
    async fn reconcile(&self, ctl: &NetboxCtl, snapshot: NbSnapshot, dry_run: bool) -> SyncReport {
        let mut report = SyncReport {
            dry_run,
            ..Default::default()
        };
        let inputs = async {
            Ok::<_, Error>((self.all_machines().await?, self.store.netbox_links().await?))
        };
        let (machines, links) = match inputs.await {
            Ok(v) => v,
            Err(e) => {
                report.error = Some(e.to_string());
                return report;
            }
        };
        let p = plan(&PlanInput {
            netbox: &snapshot,
            machines: &machines,
            links: &links,
            mapping: &ctl.settings.mapping,
        });
        report.unchanged = p.unchanged;
        report.conflicts = p.conflicts.clone();
        if dry_run {
            report.created = p.create.len() as u64;
            report.updated = p.update.len() as u64;
            report.pending = p.netbox.len() as u64;
            report.plan = Some(p);
            report.error = self
                .reconcile_cables(ctl, &snapshot, &machines, true, &mut report)
                .await;
            return report;
        }
        if snapshot.complete {
            self.record_new_conflicts(&p.conflicts).await;
        } else {
            self.record_conflicts(&p.conflicts).await;
        }
        let mut errors: Vec<String> = Vec::new();
        for c in &p.create {
            match self.netbox_import(ctl, c).await {
                Ok(()) => report.created += 1,
                Err(e) => errors.push(format!("device {}: {e}", c.device_id)),
            }
        }
        for u in &p.update {
            match self.netbox_apply_update(u).await {
                Ok(()) => report.updated += 1,
                Err(e) => errors.push(format!("device {}: {e}", u.device_id)),
            }
        }
        if !p.create.is_empty() || !p.update.is_empty() {
            self.boot.mark_dirty();
        }
        if !p.netbox.is_empty() {
            let client = &ctl.settings.client;
            let state_field = &ctl.settings.mapping.state_field;
            let needs_field = p.netbox.devices.iter().any(|d| d.state_field.is_some());
            let result = async {
                if needs_field && client.ensure_state_field(state_field).await? {
                    self.netbox_note(
                        None,
                        "netbox.custom_field_created",
                        format!("created the NetBox custom field {state_field}"),
                    )
                    .await;
                }
                client.apply(&p.netbox, &ctl.settings.mapping).await
            }
            .await;
            match result {
                Ok(n) => report.written = n,
                Err(e) => {
                    report.pending = p.netbox.len() as u64;
                    errors.push(format!("NetBox write-back: {}", crate::error_chain(&e)));
                }
            }
        }
        // After the writes above: interfaces they created can be cabled now.
        if let Some(e) = self
            .reconcile_cables(ctl, &snapshot, &machines, false, &mut report)
            .await
        {
            errors.push(e);
        }
        if !errors.is_empty() {
            report.error = Some(errors.join("; "));
        }
        report
    }

    async fn netbox_note(&self, machine: Option<Uuid>, kind: &str, message: String) {
        if let Err(e) = self
            .store
            .append_event(&system_event(machine, kind, message, json!({})))
            .await
        {
            tracing::error!(error = %crate::error_chain(&e), "cannot record a NetBox event");
        }
    }

    async fn record_conflicts(&self, conflicts: &[Conflict]) {
        for c in conflicts {
            let ev = system_event(
                c.machine_id,
                "netbox.conflict",
                c.message.clone(),
                serde_json::to_value(c).unwrap_or_default(),
            );
            if let Err(e) = self.store.append_event(&ev).await {
                tracing::error!(error = %crate::error_chain(&e), "cannot record a NetBox conflict");
            }
        }
    }

    /// Conflicts become events once, not at every periodic reconcile.
    async fn record_new_conflicts(&self, conflicts: &[Conflict]) {
        let known: HashSet<String> = match self.store.netbox_runs(Some("full"), 5).await {
            Ok(runs) => runs
                .iter()
                .find(|r| r.status == "succeeded" || r.status == "failed")
                .and_then(|r| r.report.get("conflicts").cloned())
                .and_then(|v| serde_json::from_value::<Vec<Conflict>>(v).ok())
                .unwrap_or_default()
                .into_iter()
                .map(|c| c.message)
                .collect(),
            Err(_) => HashSet::new(),
        };
        let fresh: Vec<Conflict> = conflicts
            .iter()
            .filter(|c| !known.contains(&c.message))
            .cloned()
            .collect();
        self.record_conflicts(&fresh).await;
    }

    async fn netbox_import(&self, ctl: &NetboxCtl, c: &MachineImport) -> Result<()> {
        let at = now();
        let defaults = &ctl.settings.bmc;
        let (bmc, secret) = match &c.bmc_address {
            None => (None, SecretUpdate::Keep),
            Some(addr) => {
                let secret = match &defaults.password {
                    Some(p) => SecretUpdate::Set(self.secrets.seal(p.as_bytes())?),
                    None => SecretUpdate::Keep,
                };
                (
                    Some(Bmc {
                        driver: defaults.driver.unwrap_or(BmcDriver::Redfish),
                        address: addr.clone(),
                        port: None,
                        username: defaults.username.clone(),
                        has_password: defaults.password.is_some(),
                        verify_tls: defaults.verify_tls,
                    }),
                    secret,
                )
            }
        };
        let machine = Machine {
            id: Uuid::now_v7(),
            hostname: c.hostname.clone(),
            state: MachineState::New,
            state_reason: None,
            architecture: None,
            firmware: None,
            vendor: None,
            model: None,
            serial: c.serial.clone(),
            tags: c.tags.clone(),
            facts: json!({ "netbox": c.placement }),
            interfaces: c.interfaces.iter().map(|i| to_interface(i, &[])).collect(),
            bmc,
            power_state: None,
            power_checked_at: None,
            created_at: at,
            updated_at: at,
        };
        let ev = NewEvent {
            time: at,
            actor: ACTOR.into(),
            machine_id: Some(machine.id),
            kind: "machine.created".into(),
            message: format!(
                "machine {} imported from NetBox device {}",
                machine.hostname, c.device_id
            ),
            data: json!({
                "hostname": machine.hostname,
                "netbox_device": c.device_id,
                "macs": machine.interfaces.iter().map(|i| i.mac.to_string()).collect::<Vec<_>>(),
            }),
        };
        let id = machine.id;
        self.store
            .insert_machine(
                &MachineWrite {
                    machine,
                    bmc_secret: secret,
                },
                &ev,
            )
            .await?;
        self.store.netbox_link(id, c.device_id, at).await?;
        Ok(())
    }

    async fn netbox_apply_update(&self, u: &MachineUpdate) -> Result<()> {
        let old = self
            .store
            .get_machine(u.machine_id)
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: "machine",
                id: u.machine_id.to_string(),
            })?;
        if u.link {
            self.store.netbox_link(old.id, u.device_id, now()).await?;
            self.netbox_note(
                Some(old.id),
                "netbox.linked",
                format!(
                    "machine {} linked to NetBox device {}",
                    old.hostname, u.device_id
                ),
            )
            .await;
        }
        if u.changes.is_empty() {
            return Ok(());
        }
        let mut new = old.clone();
        if let Some(h) = &u.hostname {
            new.hostname = h.clone();
        }
        if let Some(t) = &u.tags {
            new.tags = t.clone();
        }
        if let Some(s) = &u.serial {
            new.serial = Some(s.clone());
        }
        if let Some(p) = &u.placement {
            let mut facts = match new.facts {
                serde_json::Value::Object(o) => o,
                _ => serde_json::Map::new(),
            };
            facts.insert("netbox".into(), p.clone());
            new.facts = serde_json::Value::Object(facts);
        }
        if let Some(addr) = &u.bmc_address {
            new.bmc = Some(match old.bmc.clone() {
                Some(mut b) => {
                    b.address = addr.clone();
                    b
                }
                None => Bmc {
                    driver: BmcDriver::Redfish,
                    address: addr.clone(),
                    port: None,
                    username: None,
                    has_password: false,
                    verify_tls: true,
                },
            });
        }
        for i in &u.add_interfaces {
            new.interfaces.push(to_interface(i, &old.interfaces));
        }
        if let Some((mac, ip)) = &u.set_ipv4
            && let Some(i) = new.interfaces.iter_mut().find(|i| i.mac == *mac)
        {
            i.ipv4 = Some(ip.clone());
        }
        new.interfaces
            .sort_by(|a, b| a.name.cmp(&b.name).then(a.mac.cmp(&b.mac)));
        new.updated_at = now().max(old.updated_at + time::Duration::microseconds(1));
        let ev = NewEvent {
            time: new.updated_at,
            actor: ACTOR.into(),
            machine_id: Some(new.id),
            kind: "machine.updated".into(),
            message: format!(
                "machine {} updated from NetBox device {}: {}",
                new.hostname,
                u.device_id,
                u.changes.join(", ")
            ),
            data: json!({ "changed": u.changes, "netbox_device": u.device_id }),
        };
        self.store
            .update_machine(
                &MachineWrite {
                    machine: new,
                    bmc_secret: SecretUpdate::Keep,
                },
                old.updated_at,
                &ev,
            )
            .await?;
        Ok(())
    }

    /// Reconciles a few devices (a webhook, the outbox). Devices NetBox no
    /// longer has, or that left the scope, are reported, not deleted.
    async fn netbox_sync_devices(&self, kind: &str, device_ids: &[u64]) -> Result<SyncReport> {
        let ctl = self.netbox_ctl()?.clone();
        let _one = ctl.running.lock().await;
        let started = Instant::now();
        let run = self.begin_netbox_run(kind, false).await?;
        let client = &ctl.settings.client;
        let scoped = ctl.settings.scope != Scope::default();
        let mut devices = Vec::new();
        let mut gone = Vec::new();
        for id in device_ids {
            let read = async {
                let d = client.device(*id, &ctl.settings.mapping).await?;
                let ok = match &d {
                    Some(_) if scoped => client.in_scope(*id, &ctl.settings.scope).await?,
                    _ => true,
                };
                Ok::<_, anvil_netbox::Error>(d.filter(|_| ok))
            };
            match read.await {
                Ok(Some(d)) => devices.push(d),
                Ok(None) => gone.push(*id),
                Err(e) => {
                    let err = netbox_err(e);
                    self.finish_failed(run, &err, 0).await;
                    return Err(err);
                }
            }
        }
        for id in gone {
            if let Some(m) = self.store.netbox_machine_for_device(id).await? {
                self.netbox_note(
                    Some(m),
                    "netbox.conflict",
                    format!(
                        "NetBox device {id} was deleted or left the scope; its machine is kept"
                    ),
                )
                .await;
            }
        }
        let snapshot = NbSnapshot {
            devices,
            complete: false,
        };
        let mut report = self.reconcile(&ctl, snapshot, false).await;
        report.run_id = Some(run);
        report.duration_ms = started.elapsed().as_millis() as u64;
        self.finish_run(run, &report).await?;
        Ok(report)
    }

    /// Handles a NetBox event-rule webhook: checks `X-Hook-Signature`, then
    /// reconciles the device concerned in the background. Returns the device
    /// id, or `None` for events about other objects (ignored).
    pub async fn netbox_webhook(
        &self,
        body: &[u8],
        signature: Option<&str>,
    ) -> Result<Option<u64>> {
        // Without a configuration or a secret nothing can be verified: 401,
        // as for a wrong signature (an unauthenticated caller learns nothing).
        let ctl = self.netbox.clone().ok_or(Error::Unauthenticated)?;
        let Some(secret) = ctl.settings.webhook_secret.as_deref() else {
            return Err(Error::Unauthenticated);
        };
        anvil_netbox::verify_signature(secret.as_bytes(), body, signature)
            .map_err(|_| Error::Unauthenticated)?;
        let ev = anvil_netbox::webhook::parse_event(body).map_err(|m| Error::invalid("body", m))?;
        let Some(device) = ev.device_id else {
            return Ok(None);
        };
        tracing::debug!(event = %ev.event, object = %ev.object_type, device, "NetBox webhook");
        let app = self.clone();
        tokio::spawn(async move {
            if let Err(e) = app.netbox_sync_devices("webhook", &[device]).await {
                tracing::warn!(device, error = %crate::error_chain(&e), "NetBox webhook sync failed; the next reconcile catches up");
            }
        });
        Ok(Some(device))
    }

    /// Queues linked machines changed since the last call (from the event
    /// log, durable cursor) for write-back. Events NetBox itself caused are
    /// skipped.
    pub async fn netbox_queue_changes(&self) -> Result<u64> {
        let cursor = self.store.netbox_cursor(EVENTS_CURSOR).await?;
        let events = self
            .store
            .list_events(&EventFilter {
                after_id: Some(cursor),
                limit: 1000,
                ..Default::default()
            })
            .await?;
        let Some(last) = events.last().map(|e| e.id) else {
            return Ok(0);
        };
        let links = self.store.netbox_links().await?;
        let mut ids: Vec<Uuid> = events
            .iter()
            .filter(|e| e.actor != ACTOR)
            .filter_map(|e| e.machine_id)
            .filter(|m| links.contains_key(m))
            .collect();
        ids.sort();
        ids.dedup();
        self.store.netbox_outbox_add(&ids, now()).await?;
        self.store.netbox_set_cursor(EVENTS_CURSOR, last).await?;
        Ok(ids.len() as u64)
    }

    /// Writes queued machines back to NetBox. On failure they stay queued.
    pub async fn netbox_flush_outbox(&self) -> Result<u64> {
        let entries = self.store.netbox_outbox(OUTBOX_BATCH).await?;
        if entries.is_empty() {
            return Ok(0);
        }
        let links = self.store.netbox_links().await?;
        let ids: Vec<Uuid> = entries.iter().map(|e| e.machine_id).collect();
        let (linked, unlinked): (Vec<Uuid>, Vec<Uuid>) =
            ids.iter().partition(|m| links.contains_key(m));
        // Deleted or unlinked since: nothing to write.
        self.store.netbox_outbox_done(&unlinked).await?;
        let devices: Vec<u64> = linked
            .iter()
            .filter_map(|m| links.get(m).copied())
            .collect();
        if devices.is_empty() {
            return Ok(0);
        }
        match self.netbox_sync_devices("write-back", &devices).await {
            Ok(r) if r.error.is_none() => {
                self.store.netbox_outbox_done(&linked).await?;
                Ok(linked.len() as u64)
            }
            Ok(r) => {
                let e = r.error.unwrap_or_default();
                self.store.netbox_outbox_failed(&linked, &e).await?;
                Err(Error::Netbox(e))
            }
            Err(e) => {
                self.store
                    .netbox_outbox_failed(&linked, &e.to_string())
                    .await?;
                Err(e)
            }
        }
    }

    /// Where the synchronisation stands.
    pub async fn netbox_status(&self) -> Result<NetboxStatus> {
        let Some(ctl) = self.netbox.as_ref() else {
            return Ok(NetboxStatus::default());
        };
        let recent = self.store.netbox_runs(None, 20).await?;
        let fulls = self.store.netbox_runs(Some("full"), 50).await?;
        let last = fulls.iter().find(|r| r.status != "running");
        let conflicts = last
            .and_then(|r| r.report.get("conflicts").cloned())
            .and_then(|v| serde_json::from_value::<Vec<Conflict>>(v).ok())
            .unwrap_or_default();
        let outbox = self.store.netbox_outbox(1).await?;
        Ok(NetboxStatus {
            enabled: true,
            url: Some(ctl.settings.client.base_url().to_string()),
            webhook: ctl.settings.webhook_secret.is_some(),
            last_sync: fulls.first().map(run_info),
            last_success: fulls.iter().find(|r| r.status == "succeeded").map(run_info),
            pending_write_backs: self.store.netbox_outbox_len().await?,
            write_back_error: outbox.first().and_then(|e| e.last_error.clone()),
            conflicts,
            recent: recent.iter().map(run_info).collect(),
        })
    }

    /// Starts the background sync: the outbox every few seconds, a full
    /// reconcile every `interval`; after a failure, retries sooner with
    /// exponential backoff (5 s doubling up to the interval).
    pub fn start_netbox_sync(&self) {
        let Some(ctl) = self.netbox.clone() else {
            return;
        };
        let app = self.clone();
        tokio::spawn(async move {
            let interval = ctl.settings.interval.max(Duration::from_secs(1));
            let tick = Duration::from_secs(2).min(interval);
            let mut next_full = Instant::now();
            let mut full_failures = 0u32;
            let mut outbox_failures = 0u32;
            let mut next_outbox = Instant::now();
            loop {
                // One instance syncs: two would write the same changes to
                // NetBox twice. The others stay ready to take over.
                if !app.is_leader().await {
                    tokio::time::sleep(tick).await;
                    continue;
                }
                if Instant::now() >= next_full {
                    match app.netbox_sync(&Principal::System, false).await {
                        Ok(r) if r.error.is_none() => {
                            full_failures = 0;
                            next_full = Instant::now() + interval;
                        }
                        _ => {
                            full_failures += 1;
                            next_full = Instant::now()
                                + anvil_netbox::client::backoff_delay(
                                    Duration::from_secs(5),
                                    full_failures,
                                )
                                .min(interval);
                        }
                    }
                }
                if Instant::now() >= next_outbox {
                    let res = async {
                        app.netbox_queue_changes().await?;
                        app.netbox_flush_outbox().await
                    }
                    .await;
                    match res {
                        Ok(_) => {
                            outbox_failures = 0;
                            next_outbox = Instant::now();
                        }
                        Err(e) => {
                            outbox_failures += 1;
                            let wait = anvil_netbox::client::backoff_delay(
                                Duration::from_secs(2),
                                outbox_failures,
                            );
                            tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "NetBox write-back failed; kept queued");
                            next_outbox = Instant::now() + wait;
                        }
                    }
                }
                tokio::time::sleep(tick).await;
            }
        });
    }
}
