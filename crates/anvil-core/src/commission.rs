//! Commissioning: the `commission` action as a job, the agent protocol's
//! server side, hardware facts and the timeout watcher.
//!
//! The lifecycle is `new|ready|failed|broken → commissioning → ready|failed`
//! (the transitions come from `MachineState::next_states`). Starting a run
//! moves the machine to `commissioning` and writes the run and its planned
//! steps in one transaction; the job then boots the machine from the network
//! through its BMC (or waits for an operator to power on a machine without
//! one) and waits. From there the agent's reports drive the run: every step
//! succeeded → `ready` (and powered off when configured); a failed step →
//! `failed` with its message; no end by the deadline → `failed` naming the
//! step that hung.
//!
//! The rules of the protocol (which report may follow which, what `next`
//! answers, why a run timed out) are pure functions at the bottom of this
//! file, unit-tested without a store or a clock.

use crate::error::{Error, Result};
use crate::power::MachineAction;
use crate::{App, Principal, now};
use anvil_api_types::agent::*;
use anvil_api_types::{BulkSelector, MachineQuery};
use anvil_store::{NewEvent, RunEnd, RunRecord, StepRecord, StepUpdate, StoreError};
use anvil_types::{Job, JobStatus, MacAddr, Machine, MachineState};
use serde_json::json;
use std::time::Duration;
use time::OffsetDateTime;
use uuid::Uuid;

/// `[commissioning]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CommissioningConfig {
    /// A run not ended by then fails (MAAS: 20 minutes).
    pub timeout: Duration,
    /// Power the machine off through its BMC when a run succeeds.
    pub power_off_when_done: bool,
    /// LLDP listening window of the inventory step.
    pub lldp_window_secs: u32,
    /// Unknown machines boot straight into commissioning (discovery and
    /// commissioning in one boot).
    pub on_discovery: bool,
    /// Interval the agent is asked to heartbeat at.
    pub heartbeat_secs: u32,
    /// Bounds of the hardware tests.
    pub cpu_test_secs: u32,
    pub memory_test_percent: u8,
    pub memory_test_max_bytes: u64,
    pub memory_test_secs: u32,
    pub disk_test_bytes_per_disk: u64,
    pub disk_test_secs: u32,
    /// How often the watcher looks for runs past their deadline.
    pub watch_interval: Duration,
}

impl Default for CommissioningConfig {
    fn default() -> Self {
        CommissioningConfig {
            timeout: Duration::from_secs(20 * 60),
            power_off_when_done: true,
            lldp_window_secs: 30,
            on_discovery: false,
            heartbeat_secs: 10,
            cpu_test_secs: 60,
            memory_test_percent: 50,
            memory_test_max_bytes: 4 << 30,
            memory_test_secs: 120,
            disk_test_bytes_per_disk: 256 << 20,
            disk_test_secs: 120,
            watch_interval: Duration::from_secs(2),
        }
    }
}

/// Signalled whenever a run ends, so jobs waiting on runs do not poll.
static RUN_ENDED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// At most this many tokens are minted for one run (each iPXE script fetch
/// mints one); a machine stuck in a boot loop cannot fill the table.
const MAX_TOKENS_PER_RUN: u64 = 256;
/// Bytes of randomness in an agent token.
const TOKEN_BYTES: usize = 32;
/// A token outlives its run's deadline by this much, so an agent can still
/// learn how the run ended.
const TOKEN_GRACE: time::Duration = time::Duration::minutes(30);

/// An authenticated agent: the machine and run its token speaks for.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSession {
    pub machine_id: Uuid,
    pub run_id: Uuid,
}

fn std_to_time(d: Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

fn tests_json(tests: &[HardwareTest]) -> String {
    serde_json::to_string(tests).unwrap_or_else(|_| "[]".into())
}

fn store_err(e: StoreError) -> Error {
    e.into()
}

impl App {
    /// Sets the commissioning settings.
    pub fn with_commissioning(mut self, cfg: CommissioningConfig) -> Self {
        self.commissioning = std::sync::Arc::new(cfg);
        self
    }

    pub fn commissioning_config(&self) -> &CommissioningConfig {
        &self.commissioning
    }

    /// Starts commissioning a machine: checks the transition, moves it to
    /// `commissioning` with a new run, and starts the job that boots it.
    pub async fn start_commission(
        &self,
        by: &Principal,
        ident: &str,
        req: CommissionRequest,
    ) -> Result<Job> {
        let m = self.get_machine(ident).await?;
        self.queue_commission(by, m, &req.tests).await
    }

    /// Commissions every machine the selector matches (see `start_bulk_action`).
    pub async fn start_bulk_commission(
        &self,
        by: &Principal,
        sel: BulkSelector,
        req: CommissionRequest,
    ) -> Result<Vec<Job>> {
        let targets = self.select_machines(&sel).await?;
        let mut jobs = Vec::with_capacity(targets.len());
        for m in targets {
            jobs.push(self.queue_commission(by, m, &req.tests).await?);
        }
        Ok(jobs)
    }

    /// The machines a bulk selector names (tag AND state AND list).
    pub(crate) async fn select_machines(&self, sel: &BulkSelector) -> Result<Vec<Machine>> {
        if sel.tag.is_none() && sel.state.is_none() && sel.machines.is_none() {
            return Err(Error::invalid(
                "tag",
                "select machines by tag, state or a list of machines",
            ));
        }
        let mut targets: Vec<Machine> = Vec::new();
        match &sel.machines {
            Some(list) => {
                for (i, ident) in list.iter().enumerate() {
                    let m = self.get_machine(ident).await.map_err(|e| match e {
                        Error::NotFound { .. } => Error::invalid(
                            format!("machines[{i}]"),
                            format!("no machine {ident:?}"),
                        ),
                        other => other,
                    })?;
                    targets.push(m);
                }
            }
            None => {
                let mut offset = 0;
                loop {
                    let page = self
                        .list_machines(MachineQuery {
                            tag: sel.tag.clone(),
                            state: sel.state.map(|s| s.to_string()),
                            limit: Some(crate::limits::MAX_PAGE),
                            offset: Some(offset),
                            ..Default::default()
                        })
                        .await?;
                    targets.extend(page.items);
                    match page.next_offset {
                        Some(n) => offset = n,
                        None => break,
                    }
                }
            }
        }
        targets.retain(|m| {
            sel.tag.as_ref().is_none_or(|t| m.tags.contains(t))
                && sel.state.is_none_or(|s| m.state == s)
        });
        Ok(targets)
    }

    pub(crate) async fn queue_commission(
        &self,
        by: &Principal,
        m: Machine,
        tests: &[HardwareTest],
    ) -> Result<Job> {
        self.queue_commission_with(by, m, tests, false).await
    }

    /// `already_booting`: the machine is network-booting right now (its
    /// iPXE script is being rendered), so the job must not boot it again.
    async fn queue_commission_with(
        &self,
        by: &Principal,
        m: Machine,
        tests: &[HardwareTest],
        already_booting: bool,
    ) -> Result<Job> {
        m.state
            .check_transition(MachineState::Commissioning, None)
            .map_err(|source| Error::Transition {
                current: m.state,
                source,
            })?;
        let tests = canonical_tests(tests);
        let cfg = self.commissioning.clone();
        let at = now();
        let job = Job {
            id: Uuid::now_v7(),
            kind: MachineAction::Commission.as_str().to_string(),
            machine_id: Some(m.id),
            status: JobStatus::Queued,
            actor: by.actor(),
            params: json!({ "tests": tests }),
            result: None,
            error: None,
            created_at: at,
            started_at: None,
            finished_at: None,
        };
        let run = RunRecord {
            id: Uuid::now_v7(),
            machine_id: m.id,
            number: 0,
            state: RunState::Running.as_str().into(),
            tests: tests_json(&tests),
            job_id: Some(job.id),
            failure_reason: None,
            failed_step: None,
            system_uuid: None,
            agent_version: None,
            started_at: at,
            registered_at: None,
            last_seen_at: None,
            finished_at: None,
            deadline: at + std_to_time(cfg.timeout),
            purpose: AgentPurpose::Commissioning.as_str().into(),
            params: "{}".into(),
        };
        let steps: Vec<StepRecord> = plan_steps(&tests, &cfg)
            .into_iter()
            .enumerate()
            .map(|(i, spec)| step_record(run.id, i, &spec, at))
            .collect();
        let ev = NewEvent {
            time: at,
            actor: by.actor(),
            machine_id: Some(m.id),
            kind: "commission.start".into(),
            message: format!(
                "{} → commissioning{}",
                m.state,
                if tests.is_empty() {
                    String::new()
                } else {
                    format!(
                        " with tests {}",
                        tests
                            .iter()
                            .map(|t| t.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    )
                }
            ),
            data: json!({ "from": m.state, "job": job.id, "run": run.id, "tests": tests }),
        };
        self.store.insert_job(&job).await?;
        match self
            .store
            .start_commissioning_run(&run, &steps, m.state, &ev)
            .await
        {
            Ok(_) => {}
            Err(e) => {
                let msg = match &e {
                    StoreError::Concurrent => {
                        "the machine's state changed while commissioning was starting".to_string()
                    }
                    other => other.to_string(),
                };
                let _ = self.store.finish_job(job.id, Err(&msg), now()).await;
                return Err(match e {
                    StoreError::Concurrent => Error::Concurrent {
                        what: "the machine",
                    },
                    other => other.into(),
                });
            }
        }
        self.boot.mark_dirty();
        let app = self.clone();
        let run_id = run.id;
        let actor = by.actor();
        tokio::spawn(async move {
            app.run_agent_job(
                job.id,
                m,
                run_id,
                AgentPurpose::Commissioning,
                actor,
                already_booting,
            )
            .await
        });
        Ok(job)
    }

    /// The job of a run of any purpose: boot the machine from the network
    /// (or ask for manual power), wait for the run to end, then power off
    /// when the purpose asks for it (commissioning when configured, release).
    pub(crate) async fn run_agent_job(
        &self,
        job_id: Uuid,
        m: Machine,
        run_id: Uuid,
        purpose: AgentPurpose,
        actor: String,
        already_booting: bool,
    ) {
        let prefix = event_prefix(purpose);
        let _ = self.store.start_job(job_id, now()).await;
        let has_power = m.bmc.is_some() && self.power.is_some();
        if already_booting {
            let _ = self
                .store
                .append_event(&NewEvent {
                    time: now(),
                    actor: actor.clone(),
                    machine_id: Some(m.id),
                    kind: format!("{prefix}.on-discovery"),
                    message: "commissioning in the machine's current network boot".into(),
                    data: json!({ "job": job_id, "run": run_id }),
                })
                .await;
        } else if has_power {
            if let Err(e) = self.power_for_commission(&m, MachineAction::PxeBoot).await {
                let reason = format!("cannot boot the machine from the network: {e}");
                self.end_run(run_id, RunState::Failed, Some(reason), None, &actor)
                    .await;
            }
        } else {
            let why = if m.bmc.is_none() {
                "the machine has no BMC"
            } else {
                "power control is disabled on this server"
            };
            let _ = self
                .store
                .append_event(&NewEvent {
                    time: now(),
                    actor: actor.clone(),
                    machine_id: Some(m.id),
                    kind: format!("{prefix}.manual-power"),
                    message: format!(
                        "{why}: power it on with network boot; {} waits for its agent",
                        purpose.as_str()
                    ),
                    data: json!({ "job": job_id, "run": run_id }),
                })
                .await;
        }
        self.follow_agent_run(job_id, m, run_id, purpose).await;
    }

    /// The rest of a run's job, once the machine is booting: wait for the
    /// run to end, power off when the purpose asks for it, record the job's
    /// outcome. Also where an instance taking over another's job starts
    /// (`instances.rs`): the run itself lives in the store.
    pub(crate) async fn follow_agent_run(
        &self,
        job_id: Uuid,
        m: Machine,
        run_id: Uuid,
        purpose: AgentPurpose,
    ) {
        let has_power = m.bmc.is_some() && self.power.is_some();
        // The agent's reports and the watcher end the run; follow it. Woken
        // when any run ends (the store says whether it was this one), with
        // a slow poll as a safety net for runs ended by another instance.
        let run = loop {
            let ended = RUN_ENDED.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            match self.store.commissioning_run(run_id).await {
                Ok(Some(r)) if r.state != RunState::Running.as_str() => break Some(r),
                Ok(Some(_)) => {}
                Ok(None) => break None,
                Err(e) => {
                    tracing::warn!(run = %run_id, error = %e, "cannot read a commissioning run")
                }
            }
            tokio::select! {
                _ = ended => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        };
        let Some(run) = run else {
            let _ = self
                .store
                .finish_job(job_id, Err("the machine was deleted"), now())
                .await;
            return;
        };
        let state = RunState::parse(&run.state).unwrap_or(RunState::Failed);
        let mut result = json!({ "run": run.number, "state": state });
        let power_off = match purpose {
            AgentPurpose::Commissioning => self.commissioning.power_off_when_done,
            AgentPurpose::Release => true,
            // A deployed machine reboots into its disk; a rescue system stays up.
            AgentPurpose::Deployment | AgentPurpose::Rescue => false,
        };
        if state == RunState::Succeeded && has_power && power_off {
            match self.power_for_commission(&m, MachineAction::PowerOff).await {
                Ok(()) => result["power_state"] = json!("off"),
                Err(e) => {
                    result["power_off_error"] = json!(e);
                    tracing::warn!(machine = %m.hostname, purpose = purpose.as_str(), error = %e, "cannot power off after the run");
                }
            }
        }
        let outcome = match state {
            RunState::Succeeded => Ok(result),
            _ => Err(run
                .failure_reason
                .clone()
                .unwrap_or_else(|| format!("{} {}", purpose.as_str(), state.as_str()))),
        };
        let at = now();
        let stored = match &outcome {
            Ok(v) => self.store.finish_job(job_id, Ok(v), at).await,
            Err(e) => self.store.finish_job(job_id, Err(e), at).await,
        };
        if let Err(e) = stored {
            tracing::warn!(job = %job_id, error = %e, "cannot record a job's outcome");
        }
        metrics::counter!("anvil_commissioning_runs_total", "result" => state.as_str(), "purpose" => purpose.as_str())
            .increment(1);
    }

    pub(crate) async fn power_for_commission(
        &self,
        m: &Machine,
        action: MachineAction,
    ) -> std::result::Result<(), String> {
        let ctl = self
            .power
            .clone()
            .ok_or_else(|| "power control is disabled".to_string())?;
        let state = tokio::time::timeout(ctl.limits.action_timeout, self.perform(m, action, &ctl))
            .await
            .map_err(|_| format!("{} timed out", action.as_str()))??;
        let s = match state {
            anvil_power::PowerState::On => "on",
            anvil_power::PowerState::Off => "off",
        };
        let _ = self.store.set_power_state(m.id, Some(s), now()).await;
        Ok(())
    }

    /// Ends a run (once) and moves its machine out of the purpose's state.
    pub(crate) async fn end_run(
        &self,
        run_id: Uuid,
        state: RunState,
        reason: Option<String>,
        failed_step: Option<StepKind>,
        actor: &str,
    ) -> bool {
        self.end_run_to(run_id, state, reason, failed_step, actor, None)
            .await
    }

    /// `end_run`, with the machine's next state given (`exit-rescue`: the
    /// state it had before) instead of the purpose's outcome.
    pub(crate) async fn end_run_to(
        &self,
        run_id: Uuid,
        state: RunState,
        reason: Option<String>,
        failed_step: Option<StepKind>,
        actor: &str,
        machine_state: Option<MachineState>,
    ) -> bool {
        let run = match self.store.commissioning_run(run_id).await {
            Ok(Some(r)) => r,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(run = %run_id, error = %e, "cannot read a run to end it");
                return false;
            }
        };
        let machine_id = run.machine_id;
        let purpose = run_purpose(&run);
        let machine_state = machine_state.or_else(|| purpose_outcome_state(purpose, state));
        let message = match (&reason, state, machine_state) {
            (Some(r), _, _) => format!("{} {}: {r}", purpose.as_str(), state.as_str()),
            (None, s, Some(to)) => format!("{} {}: {to}", purpose.as_str(), s.as_str()),
            (None, s, None) => format!("{} {}", purpose.as_str(), s.as_str()),
        };
        let at = now();
        let end = RunEnd {
            run_id,
            state: state.as_str().into(),
            failure_reason: reason.clone(),
            failed_step: failed_step.map(|k| k.as_str().to_string()),
            at,
            machine_state,
            active_state: active_state(purpose),
            clear_image: clears_image(purpose, state),
            event: NewEvent {
                time: at,
                actor: actor.to_string(),
                machine_id: Some(machine_id),
                kind: format!("{}.end", event_prefix(purpose)),
                message,
                data: json!({ "run": run_id, "purpose": purpose, "state": state, "reason": reason, "step": failed_step, "to": machine_state }),
            },
        };
        match self.store.finish_commissioning_run(&end).await {
            Ok(done) => {
                if done {
                    RUN_ENDED.notify_waiters();
                    self.boot.mark_dirty();
                    if let Some(mac) = self.boot_mac(machine_id).await {
                        self.record_boot(
                            mac,
                            &format!("{}.end", event_prefix(purpose)),
                            json!({ "state": state, "reason": reason, "step": failed_step }),
                        );
                    }
                }
                done
            }
            Err(e) => {
                tracing::warn!(run = %run_id, error = %e, "cannot end a commissioning run");
                false
            }
        }
    }

    /// The MAC whose boot timeline a machine's agent events go on.
    async fn boot_mac(&self, machine_id: Uuid) -> Option<MacAddr> {
        let m = self.store.get_machine(machine_id).await.ok()??;
        m.interfaces
            .iter()
            .find(|i| i.pxe)
            .or(m.interfaces.first())
            .map(|i| i.mac)
    }

    /// Starts the watcher that fails runs past their deadline and aborts runs
    /// whose machine an operator moved out of `commissioning`.
    pub fn start_commissioning_watcher(&self) {
        let app = self.clone();
        tokio::spawn(async move {
            let mut last_purge = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(app.commissioning.watch_interval).await;
                if let Err(e) = app.check_commissioning_runs().await {
                    tracing::warn!(error = %e, "commissioning watcher");
                }
                // Expired tokens are refused anyway; removing them is tidying.
                if last_purge.elapsed() >= Duration::from_secs(60) {
                    last_purge = tokio::time::Instant::now();
                    if let Err(e) = app.store.purge_agent_tokens(now()).await {
                        tracing::warn!(error = %e, "cannot purge expired agent tokens");
                    }
                }
            }
        });
    }

    /// One pass of the watcher (public for tests and the CLI-less server).
    pub async fn check_commissioning_runs(&self) -> Result<()> {
        let at = now();
        for run in self.store.running_commissioning_runs().await? {
            let machine = self.store.get_machine(run.machine_id).await?;
            let active = active_state(run_purpose(&run));
            if machine.as_ref().is_none_or(|m| m.state != active) {
                self.end_run(
                    run.id,
                    RunState::Aborted,
                    Some(format!("the machine left {active}")),
                    None,
                    "system",
                )
                .await;
                continue;
            }
            if run.deadline <= at {
                let steps = self.store.commissioning_steps(run.id).await?;
                let (reason, step) = timeout_reason(&run, &steps);
                self.end_run(run.id, RunState::Failed, Some(reason), step, "system")
                    .await;
            }
        }
        Ok(())
    }

    /// `[commissioning] on_discovery`: a machine PXE-booting for the first
    /// time (unknown MAC, or `new` and never commissioned) is created if
    /// needed and commissioned in the same boot, without tests. Returns the
    /// machine now in `commissioning`, or `None` when it does not qualify.
    /// Touches only the store (never a BMC): it runs on the HTTP boot path.
    pub async fn commission_discovered(&self, mac: MacAddr) -> Result<Option<Machine>> {
        let existing = match self.store.machine_id_by_mac(&mac).await? {
            Some(id) => self.store.get_machine(id).await?,
            None => None,
        };
        let m = match existing {
            Some(m) => m,
            None => {
                let create = anvil_api_types::MachineCreate {
                    hostname: crate::boot::discovered_hostname(&mac),
                    facts: Some(json!({ "discovered": { "via": "http", "commission": true } })),
                    interfaces: vec![anvil_api_types::InterfaceInput {
                        mac: mac.to_string(),
                        name: Some("eth0".into()),
                        pxe: Some(true),
                        ipv4: None,
                    }],
                    ..Default::default()
                };
                match self.create_machine(&Principal::System, create).await {
                    Ok(m) => m,
                    // DHCP discovery created it a moment ago.
                    Err(Error::Duplicate { .. }) => match self.store.machine_id_by_mac(&mac).await?
                    {
                        Some(id) => match self.store.get_machine(id).await? {
                            Some(m) => m,
                            None => return Ok(None),
                        },
                        None => return Ok(None),
                    },
                    Err(e) => return Err(e),
                }
            }
        };
        if m.state != MachineState::New || !self.store.commissioning_runs(m.id, 1).await?.is_empty()
        {
            return Ok(None);
        }
        match self
            .queue_commission_with(&Principal::System, m.clone(), &[], true)
            .await
        {
            Ok(_) => {}
            // Two script fetches of the same boot raced; the other started it.
            Err(Error::Concurrent { .. } | Error::Transition { .. }) => {}
            Err(e) => return Err(e),
        }
        Ok(self.store.get_machine(m.id).await?)
    }

    /// Mints a per-boot agent token for the machine's running run, for the
    /// kernel command line of the iPXE script being rendered. `None` when
    /// the machine has no running run (or minted too many for it).
    pub async fn mint_agent_token(&self, machine_id: Uuid) -> Result<Option<String>> {
        let runs = self.store.commissioning_runs(machine_id, 1).await?;
        let Some(run) = runs
            .into_iter()
            .find(|r| r.state == RunState::Running.as_str())
        else {
            return Ok(None);
        };
        if self.store.count_agent_tokens(run.id).await? >= MAX_TOKENS_PER_RUN {
            tracing::warn!(machine = %machine_id, "too many boots in one commissioning run; no more agent tokens");
            return Ok(None);
        }
        let token = crate::crypto::random_token(TOKEN_BYTES);
        let at = now();
        self.store
            .insert_agent_token(
                &crate::crypto::sha256_hex(&token),
                machine_id,
                run.id,
                at,
                run.deadline + TOKEN_GRACE,
            )
            .await?;
        Ok(Some(token))
    }

    /// Authenticates an agent by its bearer token.
    pub async fn authenticate_agent(&self, token: &str) -> Result<AgentSession> {
        let token = token.trim();
        if token.is_empty() || token.len() > 256 {
            return Err(Error::AgentUnauthenticated);
        }
        let rec = self
            .store
            .agent_token(&crate::crypto::sha256_hex(token), now())
            .await?
            .ok_or(Error::AgentUnauthenticated)?;
        Ok(AgentSession {
            machine_id: rec.machine_id,
            run_id: rec.run_id,
        })
    }

    /// The session's run, ended first if its machine left `commissioning`.
    async fn session_run(&self, s: &AgentSession) -> Result<RunRecord> {
        let run = self
            .store
            .commissioning_run(s.run_id)
            .await?
            .ok_or(Error::AgentUnauthenticated)?;
        if run.state == RunState::Running.as_str() {
            let state = self.store.get_machine(s.machine_id).await?.map(|m| m.state);
            let active = active_state(run_purpose(&run));
            if state != Some(active) {
                self.end_run(
                    run.id,
                    RunState::Aborted,
                    Some(format!("the machine left {active}")),
                    None,
                    "system",
                )
                .await;
                return self
                    .store
                    .commissioning_run(s.run_id)
                    .await?
                    .ok_or(Error::AgentUnauthenticated);
            }
        }
        Ok(run)
    }

    async fn running_run(&self, s: &AgentSession) -> Result<RunRecord> {
        let run = self.session_run(s).await?;
        if run.state != RunState::Running.as_str() {
            return Err(Error::Agent {
                problem: AgentProblem::RunEnded,
                detail: format!(
                    "{} run {} has ended ({}); ask next for the final action",
                    run.purpose, run.number, run.state
                ),
            });
        }
        Ok(run)
    }

    pub async fn agent_register(
        &self,
        s: &AgentSession,
        body: AgentRegister,
    ) -> Result<AgentRegistered> {
        let mac: MacAddr = body
            .mac
            .trim()
            .parse()
            .map_err(|e| Error::from_parse("mac", e))?;
        if body.agent_version.trim().is_empty() || body.agent_version.len() > 64 {
            return Err(Error::invalid("agent_version", "1 to 64 characters"));
        }
        if let Some(u) = &body.system_uuid
            && (u.len() > 64 || Uuid::parse_str(u.trim()).is_err())
        {
            return Err(Error::invalid(
                "system_uuid",
                "an SMBIOS UUID (8-4-4-4-12 hex digits)",
            ));
        }
        let run = self.running_run(s).await?;
        let m = self
            .store
            .get_machine(s.machine_id)
            .await?
            .ok_or(Error::AgentUnauthenticated)?;
        if !m.interfaces.iter().any(|i| i.mac == mac) {
            return Err(Error::Forbidden(
                "this MAC does not belong to the machine the token was issued for",
            ));
        }
        self.store
            .register_commissioning_agent(
                run.id,
                body.system_uuid.as_deref().map(str::trim),
                body.agent_version.trim(),
                now(),
            )
            .await?;
        // The booted environment reporting in is the boot timeline's last
        // step, as the discovery call-home is.
        self.record_boot(
            mac,
            "callhome",
            json!({ "via": "agent", "uptime_secs": body.uptime_secs }),
        );
        self.record_boot(
            mac,
            "agent.register",
            json!({
                "run": run.number,
                "agent_version": body.agent_version,
                "system_uuid": body.system_uuid,
                "uptime_secs": body.uptime_secs,
            }),
        );
        Ok(AgentRegistered {
            machine_id: m.id,
            hostname: m.hostname,
            run_id: run.id,
            run_number: run.number,
            purpose: run_purpose(&run),
            heartbeat_secs: self.commissioning.heartbeat_secs,
        })
    }

    pub async fn agent_heartbeat(
        &self,
        s: &AgentSession,
        _body: AgentHeartbeat,
    ) -> Result<AgentHeartbeatAck> {
        let run = self.session_run(s).await?;
        let state = RunState::parse(&run.state).unwrap_or(RunState::Failed);
        if state == RunState::Running {
            self.store.touch_commissioning_run(run.id, now()).await?;
        }
        Ok(AgentHeartbeatAck {
            run_state: state,
            heartbeat_secs: self.commissioning.heartbeat_secs,
        })
    }

    /// What the agent does next. Step URLs are given as paths; use
    /// `agent_next_at` to have them made absolute.
    pub async fn agent_next(&self, s: &AgentSession) -> Result<AgentNext> {
        self.agent_next_at(s, "").await
    }

    /// `agent_next`, with the URLs in step parameters (`write_image`,
    /// `cloud_init`) made absolute against `base_url`, Anvil's address as the
    /// agent reached it (`http://10.77.0.1:8080`).
    pub async fn agent_next_at(&self, s: &AgentSession, base_url: &str) -> Result<AgentNext> {
        let run = self.session_run(s).await?;
        let state = RunState::parse(&run.state).unwrap_or(RunState::Failed);
        if state == RunState::Running {
            self.store.touch_commissioning_run(run.id, now()).await?;
        }
        let steps = self
            .store
            .commissioning_steps(run.id)
            .await?
            .into_iter()
            .map(agent_step)
            .collect::<Result<Vec<_>>>()?;
        let mut answer = next_answer(state, &steps, self.final_action(run_purpose(&run)));
        if let AgentNext::Step { step } = &mut answer {
            absolutise_urls(&mut step.spec, base_url);
        }
        Ok(answer)
    }

    /// What `next` answers once a run of `purpose` succeeded.
    fn final_action(&self, purpose: AgentPurpose) -> AgentAction {
        match purpose {
            AgentPurpose::Commissioning if self.commissioning.power_off_when_done => {
                AgentAction::Poweroff
            }
            AgentPurpose::Commissioning | AgentPurpose::Rescue => AgentAction::Done,
            AgentPurpose::Deployment => AgentAction::Reboot,
            AgentPurpose::Release => AgentAction::Poweroff,
        }
    }

    /// Applies one step report.
    pub async fn agent_report(
        &self,
        s: &AgentSession,
        step_id: Uuid,
        report: StepReport,
    ) -> Result<StepReportAck> {
        let size = serde_json::to_vec(&report).map(|v| v.len()).unwrap_or(0);
        if size > MAX_REPORT_BYTES {
            return Err(Error::TooLarge {
                what: "the step report",
                size,
                max: MAX_REPORT_BYTES,
            });
        }
        check_report_fields(&report)?;
        let run = self.running_run(s).await?;
        let records = self.store.commissioning_steps(run.id).await?;
        let steps = records
            .iter()
            .cloned()
            .map(agent_step)
            .collect::<Result<Vec<_>>>()?;
        let Some(step) = steps.iter().find(|st| st.id == step_id) else {
            return Err(Error::NotFound {
                kind: "step",
                id: step_id.to_string(),
            });
        };
        if let Some(current) = steps.iter().find(|st| !st.status.is_finished())
            && current.index < step.index
        {
            return Err(Error::Agent {
                problem: AgentProblem::OutOfOrder,
                detail: format!(
                    "step {} ({}) cannot start before step {} ({}) has finished",
                    step.index,
                    step.spec.kind().as_str(),
                    current.index,
                    current.spec.kind().as_str()
                ),
            });
        }
        let accepted =
            check_report(step.status, step.last_seq, &report).map_err(|r| r.into_error(step))?;
        if step.spec.kind() == StepKind::Inventory
            && report.status == StepStatus::Succeeded
            && !self.store.run_has_facts(run.id).await?
        {
            return Err(Error::Agent {
                problem: AgentProblem::OutOfOrder,
                detail: "the inventory step cannot succeed before its facts were posted to /api/v1/agent/facts".into(),
            });
        }
        let at = now();
        let update = StepUpdate {
            step_id,
            expected_last_seq: step.last_seq as i32,
            seq: report.seq as i32,
            status: accepted.as_str().into(),
            message: report.message.clone(),
            progress: report.progress.map(|p| (p.done as i64, p.total as i64)),
            result: report.result.as_ref().map(|r| r.to_string()),
            at,
            starts: report.status == StepStatus::Started,
            finishes: accepted.is_finished(),
        };
        match self.store.update_commissioning_step(&update).await {
            Ok(()) => {}
            // Another copy of this report landed between our read and write.
            Err(StoreError::Concurrent) => {
                return Err(Error::Agent {
                    problem: AgentProblem::AlreadyReported,
                    detail: format!(
                        "report {} of step {} was already accepted",
                        report.seq, step.index
                    ),
                });
            }
            Err(e) => return Err(store_err(e)),
        }
        let kind = step.spec.kind();
        if kind == StepKind::Erase && accepted.is_finished() {
            self.record_erase(&run, s.machine_id, &report).await;
        }
        if let Some(mac) = self.boot_mac(s.machine_id).await {
            self.record_boot(
                mac,
                "agent.step",
                json!({
                    "run": run.number,
                    "step": step.index,
                    "kind": kind,
                    "status": report.status,
                    "seq": report.seq,
                    "message": report.message,
                    "progress": report.progress,
                }),
            );
        }
        let is_last = steps
            .iter()
            .all(|st| st.id == step_id || st.status.is_finished());
        let mut run_state = RunState::Running;
        if report.status == StepStatus::Failed {
            let reason = failure_reason(kind, report.message.as_deref(), report.result.as_ref());
            self.end_run(run.id, RunState::Failed, Some(reason), Some(kind), "agent")
                .await;
            run_state = RunState::Failed;
        } else if report.status == StepStatus::Succeeded && is_last {
            if run_purpose(&run) == AgentPurpose::Commissioning {
                self.apply_facts_to_machine(s.machine_id, run.id).await;
            }
            self.end_run(run.id, RunState::Succeeded, None, None, "agent")
                .await;
            run_state = RunState::Succeeded;
        }
        Ok(StepReportAck {
            step_id,
            seq: report.seq,
            status: report.status,
            run_state,
        })
    }

    /// An erase step's outcome goes to the machine's event log: which disk
    /// was erased how (quick, NVMe sanitize, ATA secure erase, overwrite,
    /// skipped as read-only), as the agent's result says.
    async fn record_erase(&self, run: &RunRecord, machine_id: Uuid, report: &StepReport) {
        let purpose = run_purpose(run);
        let result = report.result.clone().unwrap_or(json!({}));
        let disks: Vec<serde_json::Value> = result
            .get("disks")
            .and_then(|d| d.as_array())
            .map(|d| {
                d.iter()
                    .map(|x| {
                        json!({
                            "disk": x.get("disk"),
                            "method": x.get("method"),
                            "reason": x.get("reason"),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let methods = disks
            .iter()
            .map(|d| {
                format!(
                    "{} {}",
                    d["disk"].as_str().unwrap_or("?"),
                    d["method"].as_str().unwrap_or("?")
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let message = match (report.status, methods.is_empty()) {
            (StepStatus::Succeeded, false) => format!("erased: {methods}"),
            (StepStatus::Succeeded, true) => "erased".to_string(),
            (_, _) => format!(
                "erase failed: {}",
                report.message.as_deref().unwrap_or("no reason given")
            ),
        };
        let ev = NewEvent {
            time: now(),
            actor: "agent".into(),
            machine_id: Some(machine_id),
            kind: format!("{}.erase", event_prefix(purpose)),
            message: message.chars().take(1024).collect(),
            data: json!({
                "run": run.id,
                "status": report.status,
                "mode": result.get("mode"),
                "disks": disks,
            }),
        };
        if let Err(e) = self.store.append_event(&ev).await {
            tracing::warn!(run = %run.id, error = %e, "cannot record an erase");
        }
    }

    /// Stores the inventory step's facts after validating them. A rejected
    /// upload leaves every stored document untouched.
    pub async fn agent_facts(&self, s: &AgentSession, upload: FactsUpload) -> Result<FactsStored> {
        let text = upload.facts.to_string();
        if text.len() > MAX_FACTS_BYTES {
            return Err(Error::TooLarge {
                what: "the facts document",
                size: text.len(),
                max: MAX_FACTS_BYTES,
            });
        }
        let facts: anvil_inventory::HardwareFacts = serde_json::from_value(upload.facts.clone())
            .map_err(|e| Error::invalid("facts", format!("not a HardwareFacts document: {e}")))?;
        facts
            .validate()
            .map_err(|e| Error::invalid("facts", e.to_string()))?;
        let run = self.running_run(s).await?;
        let steps = self
            .store
            .commissioning_steps(run.id)
            .await?
            .into_iter()
            .map(agent_step)
            .collect::<Result<Vec<_>>>()?;
        let Some(step) = steps.iter().find(|st| st.id == upload.step_id) else {
            return Err(Error::NotFound {
                kind: "step",
                id: upload.step_id.to_string(),
            });
        };
        if step.spec.kind() != StepKind::Inventory
            || !matches!(step.status, StepStatus::Started | StepStatus::Progress)
        {
            return Err(Error::Agent {
                problem: AgentProblem::OutOfOrder,
                detail: format!(
                    "facts belong to a started inventory step; step {} is a {} step, {}",
                    step.index,
                    step.spec.kind().as_str(),
                    step.status.as_str()
                ),
            });
        }
        // Stored as the agent's document re-serialised from the validated
        // type: unknown fields do not pass through.
        let doc = serde_json::to_string(&facts).map_err(|e| Error::Internal {
            context: "serialise facts",
            source: Box::new(e),
        })?;
        self.store
            .put_hardware_facts(run.id, s.machine_id, &doc, now())
            .await?;
        if let Some(mac) = self.boot_mac(s.machine_id).await {
            self.record_boot(
                mac,
                "agent.facts",
                json!({ "run": run.number, "bytes": doc.len(), "disks": facts.disks.len(), "nics": facts.nics.len(), "lldp": facts.lldp.len() }),
            );
        }
        Ok(FactsStored {
            machine_id: s.machine_id,
            run_number: run.number,
            bytes: doc.len() as u64,
        })
    }

    /// Fills the machine's empty vendor/model/serial from the DMI facts of
    /// a successful run (an operator's values are never overwritten).
    async fn apply_facts_to_machine(&self, machine_id: Uuid, run_id: Uuid) {
        let Ok(Some(rec)) = self.store.hardware_facts(machine_id, None).await else {
            return;
        };
        if rec.run_id != run_id {
            return;
        }
        let Ok(facts) = serde_json::from_str::<anvil_inventory::HardwareFacts>(&rec.facts) else {
            return;
        };
        let Ok(Some(m)) = self.store.get_machine(machine_id).await else {
            return;
        };
        let clip = |s: &Option<String>| {
            s.as_ref()
                .map(|v| v.chars().take(crate::limits::MAX_TEXT).collect::<String>())
        };
        let patch = anvil_api_types::MachinePatch {
            vendor: m
                .vendor
                .is_none()
                .then(|| clip(&facts.dmi.system_vendor))
                .filter(|v| v.is_some()),
            model: m
                .model
                .is_none()
                .then(|| clip(&facts.dmi.system_product))
                .filter(|v| v.is_some()),
            serial: m
                .serial
                .is_none()
                .then(|| clip(&facts.dmi.system_serial))
                .filter(|v| v.is_some()),
            ..Default::default()
        };
        if patch != anvil_api_types::MachinePatch::default()
            && let Err(e) = self
                .update_machine(&Principal::System, &machine_id.to_string(), patch)
                .await
        {
            tracing::debug!(machine = %machine_id, error = %e, "cannot fill identity from DMI facts");
        }
        self.add_discovered_nics(&m, &facts).await;
    }

    /// NICs the agent found that the inventory does not list yet become
    /// interfaces of the machine (never boot interfaces: PXE stays where the
    /// operator or discovery put it). DHCP then recognises every port, and
    /// the NetBox write-back, fed from the events this writes, carries the
    /// discovered interfaces and MACs. One NIC at a time, so a MAC another
    /// machine already owns skips that NIC only (and is logged).
    async fn add_discovered_nics(&self, m: &Machine, facts: &anvil_inventory::HardwareFacts) {
        for nic in &facts.nics {
            let Ok(mac) = nic.mac.parse::<MacAddr>() else {
                continue;
            };
            if m.interfaces.iter().any(|i| i.mac == mac) {
                continue;
            }
            // The kernel's name when it is free on this machine, else ethN.
            let name_free = !m.interfaces.iter().any(|i| i.name == nic.name);
            let input = |name: Option<String>| anvil_api_types::InterfaceInput {
                mac: mac.to_string(),
                name,
                pxe: Some(false),
                ipv4: None,
            };
            let ident = m.id.to_string();
            let mut added = self
                .add_interface(
                    &Principal::System,
                    &ident,
                    input(name_free.then(|| nic.name.clone())),
                )
                .await;
            if added.is_err() && name_free {
                // A kernel name our naming rules refuse: fall back to ethN.
                added = self
                    .add_interface(&Principal::System, &ident, input(None))
                    .await;
            }
            if let Err(e) = added {
                tracing::info!(machine = %m.id, %mac, error = %e, "discovered NIC not added as an interface");
            }
        }
    }

    /// A machine's commissioning runs, newest first.
    pub async fn commissioning_runs(&self, ident: &str) -> Result<CommissioningRunList> {
        let m = self.get_machine(ident).await?;
        let mut items = Vec::new();
        for r in self.store.commissioning_runs(m.id, 100).await? {
            let steps = self.store.commissioning_steps(r.id).await?;
            items.push(run_view(r, steps)?);
        }
        Ok(CommissioningRunList { items })
    }

    /// The latest hardware facts of a machine, or those of run `run`.
    pub async fn machine_hardware(&self, ident: &str, run: Option<i64>) -> Result<MachineHardware> {
        let m = self.get_machine(ident).await?;
        if let Some(n) = run
            && n < 1
        {
            return Err(Error::invalid("run", "a run number, from 1"));
        }
        let rec = self
            .store
            .hardware_facts(m.id, run)
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: "hardware facts",
                id: match run {
                    Some(n) => format!("{} run {n}", m.hostname),
                    None => m.hostname.clone(),
                },
            })?;
        let facts: serde_json::Value =
            serde_json::from_str(&rec.facts).map_err(|e| Error::Internal {
                context: "stored hardware facts",
                source: Box::new(e),
            })?;
        Ok(MachineHardware {
            machine_id: m.id,
            run_number: rec.run_number,
            run_id: rec.run_id,
            collected_at: rec.collected_at,
            facts,
            runs_with_facts: self.store.runs_with_facts(m.id).await?,
        })
    }
}

pub(crate) fn step_record(
    run_id: Uuid,
    index: usize,
    spec: &StepSpec,
    at: OffsetDateTime,
) -> StepRecord {
    let v = serde_json::to_value(spec).unwrap_or_default();
    StepRecord {
        id: Uuid::now_v7(),
        run_id,
        index: index as i32,
        kind: spec.kind().as_str().into(),
        params: v.get("params").cloned().unwrap_or(json!({})).to_string(),
        status: StepStatus::Pending.as_str().into(),
        last_seq: 0,
        message: None,
        progress: None,
        result: None,
        started_at: None,
        finished_at: None,
        updated_at: at,
    }
}

fn corrupt(what: &'static str, e: impl std::fmt::Display) -> Error {
    Error::Internal {
        context: what,
        source: e.to_string().into(),
    }
}

fn agent_step(r: StepRecord) -> Result<AgentStep> {
    let params: serde_json::Value =
        serde_json::from_str(&r.params).map_err(|e| corrupt("stored step params", e))?;
    let spec: StepSpec = serde_json::from_value(json!({ "kind": r.kind, "params": params }))
        .map_err(|e| corrupt("stored step", e))?;
    Ok(AgentStep {
        id: r.id,
        index: r.index.max(0) as u32,
        spec,
        status: StepStatus::parse(&r.status)
            .ok_or_else(|| corrupt("stored step status", &r.status))?,
        last_seq: r.last_seq.max(0) as u32,
    })
}

fn run_view(r: RunRecord, steps: Vec<StepRecord>) -> Result<CommissioningRun> {
    let tests: Vec<HardwareTest> =
        serde_json::from_str(&r.tests).map_err(|e| corrupt("stored run tests", e))?;
    let steps = steps
        .into_iter()
        .map(|s| {
            Ok(RunStep {
                id: s.id,
                index: s.index.max(0) as u32,
                kind: StepKind::parse(&s.kind)
                    .ok_or_else(|| corrupt("stored step kind", &s.kind))?,
                params: serde_json::from_str(&s.params)
                    .map_err(|e| corrupt("stored step params", e))?,
                status: StepStatus::parse(&s.status)
                    .ok_or_else(|| corrupt("stored step status", &s.status))?,
                last_seq: s.last_seq.max(0) as u32,
                message: s.message,
                progress: s.progress.map(|(d, t)| StepProgress {
                    done: d.max(0) as u64,
                    total: t.max(0) as u64,
                }),
                result: match s.result {
                    Some(t) => Some(
                        serde_json::from_str(&t).map_err(|e| corrupt("stored step result", e))?,
                    ),
                    None => None,
                },
                started_at: s.started_at,
                finished_at: s.finished_at,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(CommissioningRun {
        id: r.id,
        machine_id: r.machine_id,
        number: r.number,
        purpose: run_purpose(&r),
        state: RunState::parse(&r.state).ok_or_else(|| corrupt("stored run state", &r.state))?,
        tests,
        job_id: r.job_id,
        failure_reason: r.failure_reason,
        failed_step: r.failed_step.as_deref().and_then(StepKind::parse),
        system_uuid: r.system_uuid,
        agent_version: r.agent_version,
        started_at: r.started_at,
        registered_at: r.registered_at,
        finished_at: r.finished_at,
        deadline: r.deadline,
        steps,
    })
}

// ---------------------------------------------------------------------------
// Pure rules.

/// The tests in their fixed order (cpu, memory, disk), without repeats.
pub fn canonical_tests(tests: &[HardwareTest]) -> Vec<HardwareTest> {
    HardwareTest::ALL
        .into_iter()
        .filter(|t| tests.contains(t))
        .collect()
}

/// The steps of a run: the inventory, then the chosen tests.
pub fn plan_steps(tests: &[HardwareTest], cfg: &CommissioningConfig) -> Vec<StepSpec> {
    let mut steps = vec![StepSpec::Inventory(InventoryParams {
        lldp_window_secs: cfg.lldp_window_secs,
    })];
    for t in canonical_tests(tests) {
        steps.push(match t {
            HardwareTest::Cpu => StepSpec::CpuTest(CpuTestParams {
                duration_secs: cfg.cpu_test_secs,
            }),
            HardwareTest::Memory => StepSpec::MemoryTest(MemoryTestParams {
                percent_of_available: cfg.memory_test_percent.clamp(1, 90),
                max_bytes: cfg.memory_test_max_bytes,
                duration_secs: cfg.memory_test_secs,
            }),
            HardwareTest::Disk => StepSpec::DiskTest(DiskTestParams {
                max_bytes_per_disk: cfg.disk_test_bytes_per_disk,
                duration_secs: cfg.disk_test_secs,
            }),
        });
    }
    steps
}

/// Why a report is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportRefusal {
    AlreadyReported { last_seq: u32 },
    OutOfOrder(String),
}

impl ReportRefusal {
    fn into_error(self, step: &AgentStep) -> Error {
        match self {
            ReportRefusal::AlreadyReported { last_seq } => Error::Agent {
                problem: AgentProblem::AlreadyReported,
                detail: format!(
                    "step {} ({}) already accepted report {last_seq}; send seq {} next",
                    step.index,
                    step.spec.kind().as_str(),
                    last_seq + 1
                ),
            },
            ReportRefusal::OutOfOrder(why) => Error::Agent {
                problem: AgentProblem::OutOfOrder,
                detail: format!("step {} ({}): {why}", step.index, step.spec.kind().as_str()),
            },
        }
    }
}

/// Checks a report against its step's status and last sequence number and
/// returns the step's new status. Rules: `seq` grows by exactly one;
/// `started` first, then `progress`, then one of `succeeded`/`failed`.
pub fn check_report(
    status: StepStatus,
    last_seq: u32,
    report: &StepReport,
) -> std::result::Result<StepStatus, ReportRefusal> {
    if report.seq <= last_seq {
        return Err(ReportRefusal::AlreadyReported { last_seq });
    }
    if status.is_finished() {
        return Err(ReportRefusal::OutOfOrder(format!(
            "the step already {}; nothing may follow",
            status.as_str()
        )));
    }
    if report.seq != last_seq + 1 {
        return Err(ReportRefusal::OutOfOrder(format!(
            "expected seq {}, got {} (a report is missing)",
            last_seq + 1,
            report.seq
        )));
    }
    match (status, report.status) {
        (StepStatus::Pending, StepStatus::Started) => Ok(StepStatus::Started),
        (StepStatus::Pending, other) => Err(ReportRefusal::OutOfOrder(format!(
            "the first report must be started, not {}",
            other.as_str()
        ))),
        (_, StepStatus::Pending) => Err(ReportRefusal::OutOfOrder(
            "pending is not a report status".into(),
        )),
        (_, StepStatus::Started) => Err(ReportRefusal::OutOfOrder(
            "the step was already started; a step never runs twice".into(),
        )),
        (_, s @ (StepStatus::Progress | StepStatus::Succeeded | StepStatus::Failed)) => Ok(s),
    }
}

/// Field checks of a report that need no state.
fn check_report_fields(r: &StepReport) -> Result<()> {
    if r.seq == 0 {
        return Err(Error::invalid("seq", "sequence numbers start at 1"));
    }
    if let Some(m) = &r.message
        && m.chars().count() > MAX_MESSAGE_CHARS
    {
        return Err(Error::invalid(
            "message",
            format!("at most {MAX_MESSAGE_CHARS} characters"),
        ));
    }
    if let Some(p) = r.progress
        && (p.done > p.total || p.total > i64::MAX as u64)
    {
        return Err(Error::invalid("progress", "done must not exceed total"));
    }
    if let Some(res) = &r.result
        && !res.is_object()
    {
        return Err(Error::invalid("result", "a JSON object"));
    }
    Ok(())
}

/// What `next` answers, given the run's state, its steps in order and the
/// action that follows success (`poweroff`, `reboot` or `done`, by purpose).
pub fn next_answer(state: RunState, steps: &[AgentStep], on_success: AgentAction) -> AgentNext {
    match state {
        RunState::Running => match steps.iter().find(|s| !s.status.is_finished()) {
            Some(step) => AgentNext::Step { step: step.clone() },
            // Every step finished but the run has not ended yet (the final
            // report is being applied): ask again shortly.
            None => AgentNext::Action {
                action: AgentAction::Wait,
                retry_secs: Some(1),
                run_state: None,
            },
        },
        RunState::Succeeded => AgentNext::Action {
            action: on_success,
            retry_secs: None,
            run_state: Some(state),
        },
        _ => AgentNext::Action {
            action: AgentAction::Done,
            retry_secs: None,
            run_state: Some(state),
        },
    }
}

/// The failure reason of a failed step: its message, and the result's
/// `summary` when it has one.
pub fn failure_reason(
    kind: StepKind,
    message: Option<&str>,
    result: Option<&serde_json::Value>,
) -> String {
    let mut reason = format!("{} failed", kind.as_str());
    if let Some(m) = message.map(str::trim).filter(|m| !m.is_empty()) {
        reason.push_str(": ");
        reason.push_str(m);
    }
    if let Some(summary) = result
        .and_then(|r| r.get("summary"))
        .and_then(|s| s.as_str())
        .filter(|s| Some(*s) != message)
    {
        reason.push_str(" (");
        reason.push_str(summary);
        reason.push(')');
    }
    reason.chars().take(1024).collect()
}

/// Why a run timed out, and the step that hung (if the agent got that far).
/// The timeout is the run's own (deadline - start): it depends on the purpose.
pub fn timeout_reason(run: &RunRecord, steps: &[StepRecord]) -> (String, Option<StepKind>) {
    let timeout = (run.deadline - run.started_at).whole_seconds().max(0);
    let prefix = format!("{} timed out after {timeout} s", run_purpose(run).as_str());
    if run.registered_at.is_none() {
        return (format!("{prefix}: no agent registered"), None);
    }
    match steps
        .iter()
        .find(|s| s.status != StepStatus::Succeeded.as_str())
    {
        Some(s) => {
            let kind = StepKind::parse(&s.kind);
            let detail = if s.status == StepStatus::Pending.as_str() {
                "never started".to_string()
            } else {
                let last = s
                    .message
                    .as_deref()
                    .map(|m| format!(", last message: {m}"))
                    .unwrap_or_default();
                format!("hung ({} reports{last})", s.last_seq)
            };
            (
                format!("{prefix}: step {} {} {detail}", s.index, s.kind),
                kind,
            )
        }
        None => (format!("{prefix}: the run did not end"), None),
    }
}

/// The purpose of a stored run (an unknown one reads as commissioning,
/// the only purpose before migration 0007).
pub fn run_purpose(run: &RunRecord) -> AgentPurpose {
    AgentPurpose::parse(&run.purpose).unwrap_or_default()
}

/// The machine's state while a run of `purpose` lasts.
pub fn active_state(purpose: AgentPurpose) -> MachineState {
    match purpose {
        AgentPurpose::Commissioning => MachineState::Commissioning,
        AgentPurpose::Deployment => MachineState::Deploying,
        AgentPurpose::Release => MachineState::Releasing,
        AgentPurpose::Rescue => MachineState::Rescue,
    }
}

/// Where the machine goes when a run of `purpose` ends in `state`. A rescue
/// that succeeded (its SSH server listens) keeps the machine in `rescue`
/// until the operator exits it.
pub fn purpose_outcome_state(purpose: AgentPurpose, state: RunState) -> Option<MachineState> {
    match (purpose, state) {
        (_, RunState::Running | RunState::Aborted) => None,
        (_, RunState::Failed) => Some(MachineState::Failed),
        (AgentPurpose::Commissioning | AgentPurpose::Release, RunState::Succeeded) => {
            Some(MachineState::Ready)
        }
        (AgentPurpose::Deployment, RunState::Succeeded) => Some(MachineState::Deployed),
        (AgentPurpose::Rescue, RunState::Succeeded) => None,
    }
}

/// Whether the end of a run means the machine no longer uses its image: a
/// release erased it, and a failed deployment never finished writing it.
pub fn clears_image(purpose: AgentPurpose, state: RunState) -> bool {
    matches!(
        (purpose, state),
        (AgentPurpose::Release, RunState::Succeeded) | (AgentPurpose::Deployment, RunState::Failed)
    )
}

/// Prefix of a purpose's event kinds (`commission.start`, `deploy.end`, …).
pub fn event_prefix(purpose: AgentPurpose) -> &'static str {
    match purpose {
        AgentPurpose::Commissioning => "commission",
        AgentPurpose::Deployment => "deploy",
        AgentPurpose::Release => "release",
        AgentPurpose::Rescue => "rescue",
    }
}

/// Makes the URLs of a step absolute: steps store paths (`/api/v1/agent/…`)
/// because only the agent's request says how it reached Anvil.
pub fn absolutise_urls(spec: &mut StepSpec, base_url: &str) {
    let base = base_url.trim_end_matches('/');
    let fix = |u: &mut String| {
        if u.starts_with('/') {
            *u = format!("{base}{u}");
        }
    };
    match spec {
        StepSpec::WriteImage(p) => {
            fix(&mut p.url);
            fix(&mut p.zeromap_url);
        }
        StepSpec::CloudInit(p) => fix(&mut p.url),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(seq: u32, status: StepStatus) -> StepReport {
        StepReport {
            seq,
            status,
            message: None,
            progress: None,
            result: None,
        }
    }

    #[test]
    fn reports_follow_the_sequence_rules() {
        use StepStatus::*;
        assert_eq!(check_report(Pending, 0, &report(1, Started)), Ok(Started));
        assert!(matches!(
            check_report(Pending, 0, &report(1, Succeeded)),
            Err(ReportRefusal::OutOfOrder(_))
        ));
        assert!(matches!(
            check_report(Pending, 0, &report(2, Started)),
            Err(ReportRefusal::OutOfOrder(_))
        ));
        assert_eq!(check_report(Started, 1, &report(2, Progress)), Ok(Progress));
        assert_eq!(
            check_report(Progress, 2, &report(3, Progress)),
            Ok(Progress)
        );
        assert_eq!(check_report(Progress, 3, &report(4, Failed)), Ok(Failed));
        // A replay of an accepted report.
        assert_eq!(
            check_report(Progress, 3, &report(3, Progress)),
            Err(ReportRefusal::AlreadyReported { last_seq: 3 })
        );
        assert_eq!(
            check_report(Succeeded, 4, &report(1, Started)),
            Err(ReportRefusal::AlreadyReported { last_seq: 4 })
        );
        // Nothing after the end, and a step never starts twice.
        assert!(matches!(
            check_report(Succeeded, 4, &report(5, Started)),
            Err(ReportRefusal::OutOfOrder(_))
        ));
        assert!(matches!(
            check_report(Started, 1, &report(2, Started)),
            Err(ReportRefusal::OutOfOrder(_))
        ));
        // A gap.
        assert!(matches!(
            check_report(Started, 1, &report(3, Progress)),
            Err(ReportRefusal::OutOfOrder(_))
        ));
    }

    #[test]
    fn field_checks() {
        assert!(check_report_fields(&report(0, StepStatus::Started)).is_err());
        let mut r = report(1, StepStatus::Progress);
        r.progress = Some(StepProgress { done: 5, total: 4 });
        assert!(check_report_fields(&r).is_err());
        r.progress = None;
        r.result = Some(json!([1]));
        assert!(check_report_fields(&r).is_err());
        r.result = Some(json!({"ok": true}));
        r.message = Some("x".repeat(MAX_MESSAGE_CHARS + 1));
        assert!(check_report_fields(&r).is_err());
        r.message = Some("fine".into());
        assert!(check_report_fields(&r).is_ok());
    }

    #[test]
    fn plan_puts_inventory_first_and_tests_in_order() {
        let cfg = CommissioningConfig::default();
        let kinds: Vec<StepKind> = plan_steps(
            &[HardwareTest::Disk, HardwareTest::Cpu, HardwareTest::Disk],
            &cfg,
        )
        .iter()
        .map(StepSpec::kind)
        .collect();
        assert_eq!(
            kinds,
            [StepKind::Inventory, StepKind::CpuTest, StepKind::DiskTest]
        );
        assert_eq!(
            plan_steps(&[], &cfg),
            [StepSpec::Inventory(InventoryParams {
                lldp_window_secs: 30
            })]
        );
    }

    fn step(i: u32, status: StepStatus) -> AgentStep {
        AgentStep {
            id: Uuid::from_u128(i as u128 + 1),
            index: i,
            spec: StepSpec::CpuTest(CpuTestParams { duration_secs: 1 }),
            status,
            last_seq: 0,
        }
    }

    #[test]
    fn next_hands_out_the_first_unfinished_step_or_an_action() {
        use StepStatus::*;
        let steps = [step(0, Succeeded), step(1, Started), step(2, Pending)];
        assert_eq!(
            next_answer(RunState::Running, &steps, AgentAction::Poweroff),
            AgentNext::Step {
                step: steps[1].clone()
            }
        );
        let done = [step(0, Succeeded)];
        assert!(matches!(
            next_answer(RunState::Running, &done, AgentAction::Poweroff),
            AgentNext::Action {
                action: AgentAction::Wait,
                ..
            }
        ));
        assert!(matches!(
            next_answer(RunState::Succeeded, &done, AgentAction::Poweroff),
            AgentNext::Action {
                action: AgentAction::Poweroff,
                ..
            }
        ));
        assert!(matches!(
            next_answer(RunState::Succeeded, &done, AgentAction::Done),
            AgentNext::Action {
                action: AgentAction::Done,
                ..
            }
        ));
        assert!(matches!(
            next_answer(RunState::Failed, &done, AgentAction::Reboot),
            AgentNext::Action {
                action: AgentAction::Done,
                run_state: Some(RunState::Failed),
                ..
            }
        ));
    }

    fn run_rec(registered: bool) -> RunRecord {
        let at = OffsetDateTime::UNIX_EPOCH;
        RunRecord {
            id: Uuid::nil(),
            machine_id: Uuid::nil(),
            number: 1,
            state: "running".into(),
            tests: "[]".into(),
            job_id: None,
            failure_reason: None,
            failed_step: None,
            system_uuid: None,
            agent_version: None,
            started_at: at,
            registered_at: registered.then_some(at),
            last_seen_at: None,
            finished_at: None,
            deadline: at + time::Duration::seconds(60),
            purpose: "commissioning".into(),
            params: "{}".into(),
        }
    }

    fn step_rec(i: i32, kind: &str, status: &str, seq: i32) -> StepRecord {
        StepRecord {
            id: Uuid::nil(),
            run_id: Uuid::nil(),
            index: i,
            kind: kind.into(),
            params: "{}".into(),
            status: status.into(),
            last_seq: seq,
            message: (seq > 0).then(|| "listening for LLDP".to_string()),
            progress: None,
            result: None,
            started_at: None,
            finished_at: None,
            updated_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn timeouts_name_what_hung() {
        let steps = [
            step_rec(0, "inventory", "succeeded", 3),
            step_rec(1, "cpu_test", "progress", 2),
        ];
        assert_eq!(
            timeout_reason(&run_rec(false), &steps),
            (
                "commissioning timed out after 60 s: no agent registered".into(),
                None
            )
        );
        let (reason, step) = timeout_reason(&run_rec(true), &steps);
        assert_eq!(step, Some(StepKind::CpuTest));
        assert!(reason.contains("step 1 cpu_test hung"), "{reason}");
        let pending = [step_rec(0, "inventory", "pending", 0)];
        let (reason, step) = timeout_reason(&run_rec(true), &pending);
        assert_eq!(step, Some(StepKind::Inventory));
        assert!(reason.contains("never started"), "{reason}");
    }

    #[test]
    fn each_purpose_has_its_state_outcome_and_final_action() {
        use AgentPurpose::*;
        use MachineState as M;
        let cases = [
            (
                Commissioning,
                M::Commissioning,
                Some(M::Ready),
                "commission",
            ),
            (Deployment, M::Deploying, Some(M::Deployed), "deploy"),
            (Release, M::Releasing, Some(M::Ready), "release"),
            // A rescue that succeeded keeps the machine up in `rescue`.
            (Rescue, M::Rescue, None, "rescue"),
        ];
        for (p, active, success, prefix) in cases {
            assert_eq!(active_state(p), active, "{p:?}");
            assert_eq!(purpose_outcome_state(p, RunState::Succeeded), success);
            assert_eq!(
                purpose_outcome_state(p, RunState::Failed),
                Some(M::Failed),
                "{p:?}"
            );
            assert_eq!(purpose_outcome_state(p, RunState::Aborted), None);
            assert_eq!(event_prefix(p), prefix);
            // Every outcome is a move the lifecycle allows.
            for to in [success, Some(M::Failed)].into_iter().flatten() {
                assert!(active.can_move_to(to), "{active} → {to}");
            }
        }
        // Only a finished release or a failed deployment frees the image.
        assert!(clears_image(Release, RunState::Succeeded));
        assert!(clears_image(Deployment, RunState::Failed));
        assert!(!clears_image(Deployment, RunState::Succeeded));
        assert!(!clears_image(Release, RunState::Failed));
        assert!(!clears_image(Rescue, RunState::Aborted));
        let mut r = run_rec(true);
        assert_eq!(run_purpose(&r), Commissioning);
        r.purpose = "deployment".into();
        assert_eq!(run_purpose(&r), Deployment);
    }

    #[test]
    fn step_urls_become_absolute_on_the_agents_address() {
        let mut spec = StepSpec::CloudInit(anvil_api_types::deploy::CloudInitParams {
            disk: anvil_api_types::deploy::DiskRef {
                name: "vda".into(),
                size_bytes: 1,
                serial: None,
                wwn: None,
                model: None,
            },
            url: "/api/v1/agent/cloud-init".into(),
            sha256: String::new(),
            size_bytes: 0,
            label: "CIDATA".into(),
        });
        absolutise_urls(&mut spec, "http://10.77.0.1:8080/");
        let StepSpec::CloudInit(p) = &spec else {
            panic!()
        };
        assert_eq!(p.url, "http://10.77.0.1:8080/api/v1/agent/cloud-init");
        // Already absolute: left alone.
        absolutise_urls(&mut spec, "http://elsewhere");
        let StepSpec::CloudInit(p) = &spec else {
            panic!()
        };
        assert_eq!(p.url, "http://10.77.0.1:8080/api/v1/agent/cloud-init");
    }

    #[test]
    fn a_deployment_timeout_names_its_purpose_and_length() {
        let mut r = run_rec(true);
        r.purpose = "deployment".into();
        r.deadline = r.started_at + time::Duration::seconds(2400);
        let (reason, step) = timeout_reason(&r, &[step_rec(0, "erase", "started", 1)]);
        assert_eq!(step, Some(StepKind::Erase));
        assert!(
            reason.starts_with("deployment timed out after 2400 s: step 0 erase hung"),
            "{reason}"
        );
    }

    #[test]
    fn failure_reasons_carry_message_and_summary() {
        assert_eq!(
            failure_reason(
                StepKind::MemoryTest,
                Some("3 mismatches"),
                Some(&json!({"summary": "bad DIMM at 0x1000"}))
            ),
            "memory_test failed: 3 mismatches (bad DIMM at 0x1000)"
        );
        assert_eq!(
            failure_reason(StepKind::DiskTest, None, None),
            "disk_test failed"
        );
    }
}
