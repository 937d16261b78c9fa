//! The agent protocol loop (docs/agent-protocol.md): register, then ask
//! `next` for a step, run it while reporting start, progress and result
//! (heartbeats in between), and follow the final action. Steps run on a
//! worker thread; this thread does all the talking to Anvil.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use anvil_api_types::agent::{
    AgentAction, AgentHeartbeat, AgentHeartbeatAck, AgentNext, AgentRegister, AgentRegistered,
    AgentStep, FactsStored, FactsUpload, RunState, StepProgress, StepReport, StepReportAck,
    StepSpec, StepStatus,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::client::{CallError, Client};
use crate::hwtest::{self, Outcome};
use crate::ledger::{Decision, Ledger};
use crate::{log, system};

/// How the protocol loop ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    PowerOff,
    Reboot,
    /// Stay up and make no more calls (the reason is printed).
    Halt(String),
}

enum Msg {
    Progress(u64, u64, String),
    Done(StepOutput),
}

pub(crate) struct StepOutput {
    pub(crate) outcome: Outcome,
    /// Hardware facts to upload before the step may succeed (inventory).
    pub(crate) facts: Option<Value>,
}

enum Delivery {
    Delivered,
    RunEnded,
    Refused(CallError),
}

pub struct Agent {
    client: Client,
    ledger: Ledger,
    mac: String,
    heartbeat: Duration,
    /// The boot interface; LLDP is heard on every connected interface.
    lldp_default_secs: Option<u64>,
    /// What the deployment steps need (root of /sys and /dev, downloads).
    deploy: crate::deploy::Ctx,
}

/// Progress reports go out at most this often (they count as heartbeats).
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

impl Agent {
    pub fn new(
        client: Client,
        mac: String,
        lldp_default_secs: Option<u64>,
        deploy: crate::deploy::Ctx,
    ) -> Agent {
        Agent {
            client,
            ledger: Ledger::default(),
            mac,
            heartbeat: Duration::from_secs(10),
            lldp_default_secs,
            deploy,
        }
    }

    pub fn run(&mut self) -> Finish {
        let reg = AgentRegister {
            mac: self.mac.clone(),
            system_uuid: system::system_uuid(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_secs: Some(system::uptime()),
        };
        match self
            .client
            .post::<_, AgentRegistered>("agent/register", &reg, None)
        {
            Ok(r) => {
                log!(
                    "registered as {} ({}), {:?} run {} at uptime {:.2} s",
                    r.hostname,
                    r.machine_id,
                    r.purpose,
                    r.run_number,
                    system::uptime()
                );
                self.heartbeat = Duration::from_secs(u64::from(r.heartbeat_secs.clamp(1, 300)));
            }
            Err(e) if e.problem() == Some("run-ended") => {
                log!("the run already ended; asking for the final action");
            }
            Err(e) => return Finish::Halt(format!("registration refused: {e}")),
        }
        loop {
            let next = match self
                .client
                .post::<_, AgentNext>("agent/next", &json!({}), None)
            {
                Ok(n) => n,
                Err(e) => return Finish::Halt(format!("next refused: {e}")),
            };
            match next {
                AgentNext::Step { step } => {
                    if let Some(finish) = self.handle_step(step) {
                        return finish;
                    }
                }
                AgentNext::Action {
                    action,
                    retry_secs,
                    run_state,
                } => {
                    let outcome = run_state.map(RunState::as_str).unwrap_or("?");
                    match action {
                        AgentAction::Wait => {
                            let secs = retry_secs.unwrap_or(5).clamp(1, 300);
                            std::thread::sleep(Duration::from_secs(u64::from(secs)));
                        }
                        AgentAction::Poweroff => {
                            log!("run {outcome}: powering off");
                            return Finish::PowerOff;
                        }
                        AgentAction::Reboot => {
                            log!("run {outcome}: rebooting");
                            return Finish::Reboot;
                        }
                        AgentAction::Done => {
                            return Finish::Halt(format!("run {outcome}: done"));
                        }
                    }
                }
            }
        }
    }

    /// Runs (or refuses to re-run) one step. `Some` ends the loop.
    fn handle_step(&mut self, step: AgentStep) -> Option<Finish> {
        let kind = step.spec.kind().as_str();
        match self.ledger.decide(&step) {
            Decision::ReportLost {
                next_seq,
                needs_start,
            } => {
                log!(
                    "step {kind} ({}) was started before and is not running here: reporting it failed, not running it again",
                    step.id
                );
                let mut seq = next_seq;
                if needs_start {
                    self.report(
                        step.id,
                        seq,
                        StepStatus::Started,
                        "restarting bookkeeping".into(),
                        None,
                        None,
                    );
                    seq += 1;
                }
                match self.report(
                    step.id,
                    seq,
                    StepStatus::Failed,
                    "agent lost track of the step".into(),
                    None,
                    Some(json!({"lost": true})),
                ) {
                    Delivery::Refused(e) => {
                        Some(Finish::Halt(format!("cannot fail lost step {kind}: {e}")))
                    }
                    _ => None,
                }
            }
            Decision::Run => self.run_step(step),
        }
    }

    fn run_step(&mut self, step: AgentStep) -> Option<Finish> {
        let kind = step.spec.kind().as_str();
        let id = step.id;
        match self.report(
            id,
            1,
            StepStatus::Started,
            format!("{kind} started"),
            None,
            None,
        ) {
            Delivery::Delivered => {}
            Delivery::RunEnded => return None,
            Delivery::Refused(e) => {
                return Some(Finish::Halt(format!("step {kind}: start refused: {e}")));
            }
        }
        self.ledger.started(id);
        log!(
            "step {kind} ({id}) started at uptime {:.2} s",
            system::uptime()
        );
        let (tx, rx) = mpsc::channel();
        let spec = step.spec.clone();
        let lldp_default = self.lldp_default_secs;
        let ctx = self.deploy.clone();
        std::thread::spawn(move || {
            let tx2 = tx.clone();
            let mut progress = move |d, t, m| {
                let _ = tx2.send(Msg::Progress(d, t, m));
            };
            let out = execute(&spec, lldp_default, &ctx, &mut progress);
            let _ = tx.send(Msg::Done(out));
        });
        let mut seq = 1;
        let mut last_call = Instant::now();
        // Progress counts as a heartbeat; more often than every 2 s (or half
        // a heartbeat) would only load the server. The worker's latest
        // progress waits here until it is due, so a step that reports often
        // is seen at the pace of the reports, not lost between them.
        let every = PROGRESS_EVERY.min(self.heartbeat / 2);
        let mut pending: Option<(u64, u64, String)> = None;
        let output = loop {
            let wait = if pending.is_some() {
                every.saturating_sub(last_call.elapsed())
            } else {
                self.heartbeat.saturating_sub(last_call.elapsed())
            };
            match rx.recv_timeout(wait) {
                Ok(Msg::Done(out)) => break out,
                Ok(Msg::Progress(done, total, message)) => pending = Some((done, total, message)),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break StepOutput {
                        outcome: Outcome {
                            ok: false,
                            message: format!("{kind}: the step's worker died (panic)"),
                            result: json!({}),
                        },
                        facts: None,
                    };
                }
            }
            if last_call.elapsed() >= every
                && let Some((done, total, message)) = pending.take()
            {
                log!("step {kind}: {message}");
                seq += 1;
                match self.report(
                    id,
                    seq,
                    StepStatus::Progress,
                    message,
                    Some(StepProgress { done, total }),
                    None,
                ) {
                    Delivery::Delivered => last_call = Instant::now(),
                    Delivery::RunEnded => return None,
                    Delivery::Refused(e) => {
                        log!("step {kind}: progress report refused: {e}");
                        seq -= 1;
                    }
                }
            } else if last_call.elapsed() >= self.heartbeat {
                let hb = AgentHeartbeat {
                    step_id: Some(id),
                    uptime_secs: Some(system::uptime()),
                };
                match self
                    .client
                    .post::<_, AgentHeartbeatAck>("agent/heartbeat", &hb, None)
                {
                    Ok(ack) if ack.run_state != RunState::Running => {
                        log!(
                            "step {kind}: run is {}: abandoning the step",
                            ack.run_state.as_str()
                        );
                        return None;
                    }
                    Ok(_) => last_call = Instant::now(),
                    Err(e) => {
                        log!("heartbeat: {e}");
                        last_call = Instant::now();
                    }
                }
            }
        };
        let mut outcome = output.outcome;
        if let (true, Some(facts)) = (outcome.ok, output.facts) {
            let upload = FactsUpload { step_id: id, facts };
            match self
                .client
                .post::<_, FactsStored>("agent/facts", &upload, None)
            {
                Ok(stored) => log!(
                    "facts posted at uptime {:.2} s ({} bytes, run {})",
                    system::uptime(),
                    stored.bytes,
                    stored.run_number
                ),
                Err(e) if e.problem() == Some("run-ended") => return None,
                Err(e) => {
                    outcome.ok = false;
                    outcome.message = format!("facts rejected: {e}");
                }
            }
        }
        let status = if outcome.ok {
            StepStatus::Succeeded
        } else {
            StepStatus::Failed
        };
        log!("step {kind} {}: {}", status.as_str(), outcome.message);
        match self.report(
            id,
            seq + 1,
            status,
            outcome.message,
            None,
            Some(outcome.result),
        ) {
            Delivery::Refused(e) => {
                // Never retried by running it again: the ledger has it.
                log!("step {kind}: final report refused: {e}");
                None
            }
            _ => None,
        }
    }

    fn report(
        &mut self,
        id: Uuid,
        seq: u32,
        status: StepStatus,
        message: String,
        progress: Option<StepProgress>,
        result: Option<Value>,
    ) -> Delivery {
        let body = StepReport {
            seq,
            status,
            message: Some(truncate(&message, 4000)),
            progress,
            result,
        };
        match self
            .client
            .post::<_, StepReportAck>(&format!("agent/steps/{id}/report"), &body, None)
        {
            Ok(_) => {
                self.ledger.accepted(id, seq, status.is_finished());
                Delivery::Delivered
            }
            // A retry of a report whose answer was lost: it was delivered.
            Err(e) if e.problem() == Some("already-reported") => {
                self.ledger.accepted(id, seq, status.is_finished());
                Delivery::Delivered
            }
            Err(e) if e.problem() == Some("run-ended") => {
                log!("the run ended while reporting step {id}");
                Delivery::RunEnded
            }
            Err(e) => Delivery::Refused(e),
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Does the work of one step (on the worker thread).
fn execute(
    spec: &StepSpec,
    lldp_default: Option<u64>,
    ctx: &crate::deploy::Ctx,
    progress: hwtest::Progress<'_>,
) -> StepOutput {
    use crate::deploy;
    let plain = |outcome| StepOutput {
        outcome,
        facts: None,
    };
    match spec {
        StepSpec::Inventory(p) => {
            let window = lldp_default.unwrap_or(u64::from(p.lldp_window_secs));
            crate::inventory::run(Duration::from_secs(window), progress)
        }
        StepSpec::CpuTest(p) => StepOutput {
            outcome: hwtest::cpu_test(p, system::cpus(), progress),
            facts: None,
        },
        StepSpec::MemoryTest(p) => {
            let available = std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| hwtest::mem_available(&m))
                .unwrap_or(0);
            StepOutput {
                outcome: hwtest::memory_test(p, available, progress),
                facts: None,
            }
        }
        StepSpec::DiskTest(p) => {
            let disks = hwtest::block_disks(std::path::Path::new("/sys/block"));
            StepOutput {
                outcome: hwtest::disk_test(p, std::path::Path::new("/dev"), &disks, progress),
                facts: None,
            }
        }
        StepSpec::Erase(p) => plain(deploy::erase(ctx, p, progress)),
        StepSpec::WriteImage(p) => plain(deploy::write_image(ctx, p, progress)),
        StepSpec::GrowRoot(p) => plain(deploy::grow_root(ctx, p, progress)),
        StepSpec::CloudInit(p) => plain(deploy::cloud_init(ctx, p, progress)),
        StepSpec::BootEntry(p) => plain(deploy::boot_entry(ctx, p, progress)),
        StepSpec::Rescue(p) => plain(deploy::rescue(ctx, p, progress)),
        StepSpec::Raid(p) => plain(crate::raid::build(ctx, p, progress)),
        StepSpec::RaidSync(p) => plain(crate::raid::wait_sync(ctx, p, progress)),
    }
}
