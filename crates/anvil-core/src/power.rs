//! Power control: enrolment by BMC, power actions as jobs, bulk actions
//! with a concurrency limit, and the power-state poller.
//!
//! The application never speaks a BMC protocol: a `DriverFactory` turns a
//! machine's BMC record and password into an `anvil_power::PowerDriver`.
//! Every call to a BMC runs under a timeout, and at most `concurrency` run
//! at once, so one BMC that hangs or refuses never delays the others beyond
//! its own slot.

use crate::error::{Error, Result};
use crate::power_writer::JobWriter;
use crate::{App, Principal, now};
use anvil_api_types::{BulkSelector, EnrollRequest, EnrollResult, InterfaceInput, MachineCreate};
use anvil_power::{
    BmcCredentials, BootDevice, BootOverride, Inventory, PollSchedule, PowerAction, PowerDriver,
    PowerError, PowerState,
};
use anvil_types::{BmcDriver, Job, JobStatus, MacAddr, Machine};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use uuid::Uuid;

/// Makes drivers. The binary provides the real one (Redfish, IPMI); tests
/// provide fakes.
pub trait DriverFactory: Send + Sync {
    fn driver(
        &self,
        driver: BmcDriver,
        creds: BmcCredentials,
    ) -> Result<Arc<dyn PowerDriver>, PowerError>;
}

/// Limits of power work.
#[derive(Debug, Clone)]
pub struct PowerLimits {
    /// BMC calls in flight at once.
    pub concurrency: usize,
    /// Longest a single action (with its wait for the state) may take.
    pub action_timeout: Duration,
    /// Longest a single power-state read may take.
    pub status_timeout: Duration,
    /// Time between two polls of all machines' power state.
    pub poll_interval: Duration,
}

impl Default for PowerLimits {
    fn default() -> Self {
        PowerLimits {
            concurrency: 32,
            action_timeout: Duration::from_secs(120),
            status_timeout: Duration::from_secs(15),
            poll_interval: Duration::from_secs(60),
        }
    }
}

pub(crate) struct PowerCtl {
    factory: Arc<dyn DriverFactory>,
    pub(crate) limits: PowerLimits,
    slots: Arc<Semaphore>,
    /// Started by the first action, on its runtime (`with_power` may run
    /// outside one).
    writer: std::sync::OnceLock<JobWriter>,
}

/// A power action on a machine, as the API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineAction {
    PowerOn,
    PowerOff,
    PowerCycle,
    /// Boot from the network once, then power on (or reset when on).
    PxeBoot,
    /// Boot from the network once and power on; a machine that is on
    /// keeps running and boots from the network at its next boot. Unlike
    /// `PxeBoot` it needs no power-state read first: for bringing up
    /// machines known to be off, one BMC round trip fewer each.
    PxePowerOn,
    /// Commission the machine (a job that lasts the whole run; see
    /// `commission.rs`). Through the generic action routes it runs without
    /// hardware tests.
    Commission,
}

impl MachineAction {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "power-on" => MachineAction::PowerOn,
            "power-off" => MachineAction::PowerOff,
            "power-cycle" => MachineAction::PowerCycle,
            "pxe-boot" => MachineAction::PxeBoot,
            "pxe-power-on" => MachineAction::PxePowerOn,
            "commission" => MachineAction::Commission,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MachineAction::PowerOn => "power-on",
            MachineAction::PowerOff => "power-off",
            MachineAction::PowerCycle => "power-cycle",
            MachineAction::PxeBoot => "pxe-boot",
            MachineAction::PxePowerOn => "pxe-power-on",
            MachineAction::Commission => "commission",
        }
    }
}

fn power_err(e: PowerError) -> Error {
    Error::Bmc(e.to_string())
}

fn state_str(s: PowerState) -> &'static str {
    match s {
        PowerState::On => "on",
        PowerState::Off => "off",
    }
}

impl App {
    /// Enables power control with drivers from `factory`.
    pub fn with_power(mut self, factory: Arc<dyn DriverFactory>, limits: PowerLimits) -> Self {
        self.power = Some(Arc::new(PowerCtl {
            factory,
            slots: Arc::new(Semaphore::new(limits.concurrency.max(1))),
            limits,
            writer: std::sync::OnceLock::new(),
        }));
        self
    }

    fn power_ctl(&self) -> Result<&Arc<PowerCtl>> {
        self.power.as_ref().ok_or(Error::PowerDisabled)
    }

    /// A driver for a machine's BMC, with its decrypted password.
    async fn driver_for(&self, m: &Machine) -> Result<(Arc<dyn PowerDriver>, String)> {
        let ctl = self.power_ctl()?;
        let bmc = m
            .bmc
            .as_ref()
            .ok_or_else(|| Error::invalid("bmc", format!("machine {} has no BMC", m.hostname)))?;
        let password = self.bmc_password(m.id).await?;
        let creds = BmcCredentials {
            address: bmc.address.clone(),
            port: bmc.port,
            username: bmc.username.clone(),
            password,
            verify_tls: bmc.verify_tls,
            ca_pem: None,
        };
        let d = ctl.factory.driver(bmc.driver, creds).map_err(power_err)?;
        Ok((d, bmc.address.clone()))
    }

    /// Probes a BMC and creates its machine. Enrolling a BMC that is already
    /// enrolled returns its machine unchanged (`created: false`).
    pub async fn enroll(&self, by: &Principal, req: EnrollRequest) -> Result<EnrollResult> {
        let ctl = self.power_ctl()?.clone();
        let (address, port) = split_address(&req.address, req.port)?;
        let given_macs = parse_macs(&req.macs)?;
        if let Some(id) = self.store.machine_id_by_bmc(&address, port).await? {
            return Ok(EnrollResult {
                machine: self.get_machine(&id.to_string()).await?,
                created: false,
            });
        }
        let creds = BmcCredentials {
            address: address.clone(),
            port,
            username: req.username.clone(),
            password: req.password.clone(),
            verify_tls: req.verify_tls.unwrap_or(true),
            ca_pem: None,
        };
        let driver = ctl.factory.driver(req.driver, creds).map_err(power_err)?;
        let _slot = ctl.slots.acquire().await.map_err(|_| Error::Internal {
            context: "power slots",
            source: "closed".into(),
        })?;
        let timeout = ctl.limits.action_timeout;
        let inventory = match tokio::time::timeout(timeout, driver.inventory()).await {
            Ok(Ok(inv)) => inv,
            // IPMI and some BMCs cannot describe the machine: a reachable
            // BMC (its power state answers) is enough to enrol it.
            Ok(Err(PowerError::NotSupported { .. })) => {
                let state = tokio::time::timeout(timeout, driver.power_state())
                    .await
                    .map_err(|_| {
                        Error::Bmc(format!(
                            "the BMC at {address} did not answer within {timeout:?}"
                        ))
                    })?
                    .map_err(power_err)?;
                Inventory {
                    power_state: Some(state),
                    ..Default::default()
                }
            }
            Ok(Err(e)) => return Err(power_err(e)),
            Err(_) => {
                return Err(Error::Bmc(format!(
                    "the BMC at {address} did not answer within {timeout:?}"
                )));
            }
        };
        // The machine's NICs: as the BMC reports them, else (IPMI reports
        // none) the MACs the request names.
        let macs: Vec<MacAddr> = if inventory.nics.is_empty() {
            given_macs
        } else {
            inventory.nics.iter().map(|n| n.mac).collect()
        };
        // A machine discovered by PXE before its BMC was enrolled owns the
        // BMC's NICs already: attach the BMC to it instead of refusing.
        let mut owners = std::collections::BTreeSet::new();
        for mac in &macs {
            if let Some(id) = self.store.machine_id_by_mac(mac).await? {
                owners.insert(id);
            }
        }
        if owners.len() == 1
            && let Some(id) = owners.first()
        {
            let existing = self.get_machine(&id.to_string()).await?;
            if existing.bmc.is_none() {
                return self
                    .attach_bmc(by, existing, &req, &address, port, &inventory, &macs)
                    .await;
            }
        }
        let hostname = match req.hostname.clone() {
            Some(h) => h,
            None => default_hostname(&inventory, &address),
        };
        let interfaces: Vec<InterfaceInput> = macs
            .iter()
            .enumerate()
            .map(|(i, mac)| InterfaceInput {
                mac: mac.to_string(),
                name: Some(format!("eth{i}")),
                pxe: Some(i == 0),
                ipv4: None,
            })
            .collect();
        let create = MachineCreate {
            hostname,
            vendor: inventory.manufacturer.clone(),
            model: inventory.model.clone(),
            serial: inventory.serial.clone(),
            tags: req.tags.clone(),
            facts: Some(json!({ "bmc_inventory": inventory })),
            interfaces,
            bmc: Some(anvil_api_types::BmcInput {
                driver: req.driver,
                address: address.clone(),
                port,
                username: req.username.clone(),
                password: req.password.clone(),
                verify_tls: req.verify_tls,
            }),
            ..Default::default()
        };
        let m = self.create_machine(by, create).await?;
        if let Some(s) = inventory.power_state {
            self.store
                .set_power_state(m.id, Some(state_str(s)), now())
                .await?;
        }
        self.store
            .append_event(&anvil_store::NewEvent {
                time: now(),
                actor: by.actor(),
                machine_id: Some(m.id),
                kind: "machine.enrolled".into(),
                message: format!("enrolled by its {} BMC at {address}", req.driver),
                data: json!({ "driver": req.driver, "address": address, "nics": macs.len() }),
            })
            .await?;
        Ok(EnrollResult {
            machine: self.get_machine(&m.id.to_string()).await?,
            created: true,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn attach_bmc(
        &self,
        by: &Principal,
        m: Machine,
        req: &EnrollRequest,
        address: &str,
        port: Option<u16>,
        inventory: &Inventory,
        macs: &[MacAddr],
    ) -> Result<EnrollResult> {
        let mut interfaces: Vec<InterfaceInput> = m
            .interfaces
            .iter()
            .map(|i| InterfaceInput {
                mac: i.mac.to_string(),
                name: Some(i.name.clone()),
                pxe: Some(i.pxe),
                ipv4: i.ipv4.clone(),
            })
            .collect();
        for mac in macs {
            if !m.interfaces.iter().any(|i| i.mac == *mac) {
                let taken: Vec<String> = interfaces.iter().filter_map(|i| i.name.clone()).collect();
                let name = (0..)
                    .map(|k| format!("eth{k}"))
                    .find(|c| !taken.contains(c))
                    .unwrap_or_default();
                interfaces.push(InterfaceInput {
                    mac: mac.to_string(),
                    name: Some(name),
                    pxe: Some(false),
                    ipv4: None,
                });
            }
        }
        let mut facts = m.facts.clone();
        if !facts.is_object() {
            facts = json!({});
        }
        facts["bmc_inventory"] = json!(inventory);
        let mut tags = m.tags.clone();
        for t in &req.tags {
            if !tags.contains(t) {
                tags.push(t.clone());
            }
        }
        let patch = anvil_api_types::MachinePatch {
            hostname: req.hostname.clone(),
            vendor: m.vendor.is_none().then(|| inventory.manufacturer.clone()),
            model: m.model.is_none().then(|| inventory.model.clone()),
            serial: m.serial.is_none().then(|| inventory.serial.clone()),
            tags: Some(tags),
            facts: Some(facts),
            interfaces: Some(interfaces),
            bmc: Some(Some(anvil_api_types::BmcInput {
                driver: req.driver,
                address: address.to_string(),
                port,
                username: req.username.clone(),
                password: req.password.clone(),
                verify_tls: req.verify_tls,
            })),
            ..Default::default()
        };
        let updated = self.update_machine(by, &m.id.to_string(), patch).await?;
        self.store
            .append_event(&anvil_store::NewEvent {
                time: now(),
                actor: by.actor(),
                machine_id: Some(m.id),
                kind: "machine.enrolled".into(),
                message: format!(
                    "its {} BMC at {address} was enrolled; the machine had been discovered by PXE",
                    req.driver
                ),
                data: json!({ "driver": req.driver, "address": address, "attached": true }),
            })
            .await?;
        Ok(EnrollResult {
            machine: updated,
            created: true,
        })
    }

    /// Starts `action` on a machine as a job and returns the queued job.
    pub async fn start_action(
        &self,
        by: &Principal,
        ident: &str,
        action: MachineAction,
    ) -> Result<Job> {
        let m = self.get_machine(ident).await?;
        self.queue_action(by, m, action).await
    }

    /// Starts `action` on every machine the selector matches.
    pub async fn start_bulk_action(
        &self,
        by: &Principal,
        sel: BulkSelector,
        action: MachineAction,
    ) -> Result<Vec<Job>> {
        let targets = self.select_machines(&sel).await?;
        if action == MachineAction::Commission {
            let mut jobs = Vec::with_capacity(targets.len());
            for m in targets {
                jobs.push(self.queue_commission(by, m, &[]).await?);
            }
            return Ok(jobs);
        }
        // Every target is checked before any job is queued, and the jobs are
        // written in one transaction before the first starts: a rack is one
        // commit that does not wait behind its own running jobs' writes, and
        // a machine without a BMC refuses the request instead of leaving it
        // half started.
        let mut planned = Vec::with_capacity(targets.len());
        for m in targets {
            planned.push((self.new_action_job(by, &m, action)?, m));
        }
        let jobs: Vec<Job> = planned.iter().map(|(j, _)| j.clone()).collect();
        self.store.insert_jobs(&jobs).await?;
        for (job, m) in planned {
            self.spawn_action(job.id, m, action, by.actor());
        }
        Ok(jobs)
    }

    async fn queue_action(&self, by: &Principal, m: Machine, action: MachineAction) -> Result<Job> {
        if action == MachineAction::Commission {
            return self.queue_commission(by, m, &[]).await;
        }
        let job = self.new_action_job(by, &m, action)?;
        self.store.insert_job(&job).await?;
        self.spawn_action(job.id, m, action, by.actor());
        Ok(job)
    }

    /// The queued job for a power action on `m`, after checking that power
    /// control is on and `m` has a BMC.
    fn new_action_job(&self, by: &Principal, m: &Machine, action: MachineAction) -> Result<Job> {
        self.power_ctl()?;
        if m.bmc.is_none() {
            return Err(Error::invalid(
                "bmc",
                format!("machine {} has no BMC", m.hostname),
            ));
        }
        Ok(Job {
            id: Uuid::now_v7(),
            kind: action.as_str().to_string(),
            machine_id: Some(m.id),
            status: JobStatus::Queued,
            actor: by.actor(),
            params: json!({}),
            result: None,
            error: None,
            created_at: now(),
            started_at: None,
            finished_at: None,
        })
    }

    fn spawn_action(&self, job_id: Uuid, m: Machine, action: MachineAction, actor: String) {
        let app = self.clone();
        tokio::spawn(async move { app.run_action(job_id, m, action, actor).await });
    }

    async fn run_action(&self, job_id: Uuid, m: Machine, action: MachineAction, actor: String) {
        let Some(ctl) = self.power.clone() else {
            return;
        };
        let writer = ctl
            .writer
            .get_or_init(|| JobWriter::spawn(self.store.clone()))
            .clone();
        writer.started(job_id, now());
        let outcome =
            match tokio::time::timeout(ctl.limits.action_timeout, self.perform(&m, action, &ctl))
                .await
            {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "{} timed out after {:?}",
                    action.as_str(),
                    ctl.limits.action_timeout
                )),
            };
        let at = now();
        let (kind, message, result, power_state) = match &outcome {
            Ok(state) => (
                format!("power.{}", action.as_str()),
                format!("{} succeeded: power {}", action.as_str(), state_str(*state)),
                Ok(json!({ "power_state": state_str(*state) })),
                Some((m.id, state_str(*state).to_string())),
            ),
            Err(e) => (
                format!("power.{}.failed", action.as_str()),
                format!("{} failed: {e}", action.as_str()),
                Err(e.clone()),
                None,
            ),
        };
        // The outcome, the power state and the event in one group commit
        // (`power_writer.rs`): visible together, durable before this returns.
        writer
            .finished(anvil_store::JobUpdate::Finished {
                id: job_id,
                outcome: result,
                at,
                power_state,
                event: Some(anvil_store::NewEvent {
                    time: at,
                    actor,
                    machine_id: Some(m.id),
                    kind,
                    message,
                    data: json!({ "job": job_id }),
                }),
            })
            .await;
        metrics::counter!("anvil_power_actions_total", "action" => action.as_str(), "result" => if outcome.is_ok() { "ok" } else { "error" })
            .increment(1);
    }

    /// The BMC calls of an action. A concurrency slot is held only while a
    /// call is in flight, not while the BMC takes its seconds to apply a
    /// power change: waiting machines must not keep others from starting.
    /// Errors are strings already safe to show (drivers never put a password
    /// in an error).
    pub(crate) async fn perform(
        &self,
        m: &Machine,
        action: MachineAction,
        ctl: &PowerCtl,
    ) -> std::result::Result<PowerState, String> {
        let (d, address) = self.driver_for(m).await.map_err(|e| e.to_string())?;
        let err = |e: PowerError| e.to_string();
        let target = {
            let _slot = ctl.slots.acquire().await.map_err(|e| e.to_string())?;
            match action {
                MachineAction::PowerOn => {
                    d.power(PowerAction::On).await.map_err(err)?;
                    PowerState::On
                }
                MachineAction::PowerOff => {
                    d.power(PowerAction::ForceOff).await.map_err(err)?;
                    PowerState::Off
                }
                MachineAction::PowerCycle => {
                    if d.power_state().await.map_err(err)? == PowerState::On {
                        d.power(PowerAction::Cycle).await.map_err(err)?;
                    } else {
                        d.power(PowerAction::On).await.map_err(err)?;
                    }
                    PowerState::On
                }
                MachineAction::PxeBoot => {
                    // The state is read first: a driver may reuse that read
                    // for the boot override and the reset (Redfish keeps the
                    // ComputerSystem for ~2 s), so the action costs one GET,
                    // one PATCH and one POST instead of two more GETs. The
                    // override changes no power state, so the order does not
                    // change which of Reset and On is chosen.
                    let was_on = d.power_state().await.map_err(err)? == PowerState::On;
                    d.set_boot(BootOverride {
                        device: BootDevice::Pxe,
                        once: true,
                        mode: None,
                    })
                    .await
                    .map_err(err)?;
                    if was_on {
                        d.power(PowerAction::Reset).await.map_err(err)?;
                    } else {
                        d.power(PowerAction::On).await.map_err(err)?;
                    }
                    PowerState::On
                }
                MachineAction::PxePowerOn => {
                    d.set_boot_and_power_on(BootOverride {
                        device: BootDevice::Pxe,
                        once: true,
                        mode: None,
                    })
                    .await
                    .map_err(err)?;
                    PowerState::On
                }
                MachineAction::Commission => {
                    return Err("commission is not a power action".into());
                }
            }
        };
        // Poll a second after the BMC's acceptance and a second after each
        // answer (anvil_power::PollSchedule), with a slot per read only,
        // until the first read that shows the target.
        let schedule = PollSchedule::STEADY;
        let accepted = tokio::time::Instant::now();
        let mut reads = 0;
        loop {
            let pause = schedule.pause(reads);
            if accepted.elapsed() + pause > ctl.limits.action_timeout {
                return Err(PowerError::NotConverged {
                    address,
                    wanted: target,
                    after: ctl.limits.action_timeout,
                }
                .to_string());
            }
            tokio::time::sleep(pause).await;
            reads += 1;
            let state = {
                let _slot = ctl.slots.acquire().await.map_err(|e| e.to_string())?;
                d.power_state().await.map_err(err)?
            };
            if state == target {
                return Ok(target);
            }
        }
    }

    /// Reads one machine's power state now and records it.
    pub async fn refresh_power_state(&self, ident: &str) -> Result<Machine> {
        let m = self.get_machine(ident).await?;
        let ctl = self.power_ctl()?.clone();
        let (d, address) = self.driver_for(&m).await?;
        let _slot = ctl.slots.acquire().await.map_err(|_| Error::Internal {
            context: "power slots",
            source: "closed".into(),
        })?;
        let state = tokio::time::timeout(ctl.limits.status_timeout, d.power_state())
            .await
            .map_err(|_| {
                Error::Bmc(format!(
                    "the BMC at {address} did not answer within {:?}",
                    ctl.limits.status_timeout
                ))
            })?
            .map_err(power_err)?;
        self.store
            .set_power_state(m.id, Some(state_str(state)), now())
            .await?;
        self.get_machine(&m.id.to_string()).await
    }

    pub async fn get_job(&self, id: Uuid) -> Result<Job> {
        self.store
            .get_job(id)
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: "job",
                id: id.to_string(),
            })
    }

    pub async fn list_jobs(&self, machine: Option<&str>, limit: u32) -> Result<Vec<Job>> {
        let id = match machine {
            Some(ident) => Some(self.get_machine(ident).await?.id),
            None => None,
        };
        Ok(self.store.list_jobs(id, limit.clamp(1, 1000)).await?)
    }

    /// Starts the power-state poller: every `poll_interval`, every machine
    /// with a BMC, through the same concurrency slots as actions, each read
    /// bounded by `status_timeout`.
    pub fn start_power_poller(&self) {
        let Some(ctl) = self.power.clone() else {
            return;
        };
        let app = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ctl.limits.poll_interval).await;
                // One instance polls; the others would only repeat its reads.
                if !app.is_leader().await {
                    continue;
                }
                let ids = match app.store.machines_with_bmc().await {
                    Ok(ids) => ids,
                    Err(e) => {
                        tracing::warn!(error = %e, "power poller cannot list machines");
                        continue;
                    }
                };
                let mut set = tokio::task::JoinSet::new();
                for id in ids {
                    let app = app.clone();
                    set.spawn(async move {
                        if let Err(e) = app.refresh_power_state(&id.to_string()).await {
                            tracing::debug!(machine = %id, error = %e, "power poll failed");
                        }
                    });
                }
                while set.join_next().await.is_some() {}
            }
        });
    }
}

/// The MACs an enrolment names (`macs`): parsed, without repeats, at most 64.
fn parse_macs(macs: &[String]) -> Result<Vec<MacAddr>> {
    if macs.len() > 64 {
        return Err(Error::invalid("macs", "at most 64"));
    }
    let mut out: Vec<MacAddr> = Vec::with_capacity(macs.len());
    for (i, m) in macs.iter().enumerate() {
        let mac: MacAddr = m
            .trim()
            .parse()
            .map_err(|e| Error::from_parse(format!("macs[{i}]"), e))?;
        if !out.contains(&mac) {
            out.push(mac);
        }
    }
    Ok(out)
}

/// `host`, `host:port`, `[v6]:port`, or `http(s)://host[:port]` (kept as is
/// for emulators) with an optional separate port.
fn split_address(addr: &str, port: Option<u16>) -> Result<(String, Option<u16>)> {
    let a = addr.trim();
    if a.is_empty() || a.len() > 253 || a.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::invalid("address", "a host name or IP address"));
    }
    if a.contains("://") {
        return Ok((a.to_string(), port));
    }
    if let Some(rest) = a.strip_prefix('[') {
        let (host, tail) = rest
            .split_once(']')
            .ok_or_else(|| Error::invalid("address", "unclosed ["))?;
        let p = match tail.strip_prefix(':') {
            Some(p) => Some(
                p.parse::<u16>()
                    .map_err(|_| Error::invalid("address", "bad port"))?,
            ),
            None => port,
        };
        return Ok((host.to_string(), p));
    }
    match a.rsplit_once(':') {
        Some((host, p)) if !host.contains(':') => {
            let p = p
                .parse::<u16>()
                .map_err(|_| Error::invalid("address", "bad port"))?;
            Ok((host.to_string(), Some(p)))
        }
        _ => Ok((a.to_string(), port)),
    }
}

/// A hostname for an enrolled machine: from its serial number if the BMC
/// gave one, else from the BMC address.
fn default_hostname(inv: &Inventory, address: &str) -> String {
    let clean = |s: &str| -> String {
        let t: String = s
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        t.trim_matches('-').chars().take(50).collect()
    };
    match inv.serial.as_deref().map(clean).filter(|s| !s.is_empty()) {
        Some(s) => format!("node-{s}"),
        None => format!(
            "bmc-{}",
            clean(address.rsplit("://").next().unwrap_or(address))
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            split_address("10.0.0.1", None).unwrap(),
            ("10.0.0.1".into(), None)
        );
        assert_eq!(
            split_address("10.0.0.1:8443", None).unwrap(),
            ("10.0.0.1".into(), Some(8443))
        );
        assert_eq!(
            split_address("[fd00::1]:623", None).unwrap(),
            ("fd00::1".into(), Some(623))
        );
        assert_eq!(
            split_address("fd00::1", Some(623)).unwrap(),
            ("fd00::1".into(), Some(623))
        );
        assert_eq!(
            split_address("http://127.0.0.1:8000", None).unwrap(),
            ("http://127.0.0.1:8000".into(), None)
        );
        assert!(split_address("a b", None).is_err());
        assert!(split_address("h:99999", None).is_err());
    }

    #[test]
    fn hostnames_from_inventory() {
        let inv = Inventory {
            serial: Some("SN 12/34".into()),
            ..Default::default()
        };
        assert_eq!(default_hostname(&inv, "x"), "node-sn-12-34");
        assert_eq!(
            default_hostname(&Inventory::default(), "10.0.0.7"),
            "bmc-10-0-0-7"
        );
    }
}
