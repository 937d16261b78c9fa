//! The agent protocol (`/api/v1/agent/…`) and the commissioning bodies of
//! the operator API. `docs/agent-protocol.md` is the prose version of this
//! file; keep them in step.
//!
//! The agent (`anvil-agent`, in the commissioning ramdisk) only ever connects
//! out to Anvil. It authenticates every call with the per-boot token Anvil put
//! on its kernel command line (`anvil.token=…`), sent as
//! `Authorization: Bearer <token>`. The token binds the call to one machine
//! and one commissioning run, so no body carries a machine id.

use anvil_types::MachineState;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// The hardware facts the agent uploads. The `HardwareFacts` type of
/// `anvil-inventory` travels here as JSON; the server validates it with
/// `HardwareFacts::validate` before storing.
pub type HardwareFactsJson = serde_json::Value;

/// Largest facts upload the server accepts (`POST /agent/facts`), in bytes.
pub const MAX_FACTS_BYTES: usize = 1024 * 1024;
/// Largest step report the server accepts, in bytes.
pub const MAX_REPORT_BYTES: usize = 256 * 1024;
/// Longest `message` of a step report, in characters.
pub const MAX_MESSAGE_CHARS: usize = 4096;

/// Why the agent API refused a report or call with 409. The problem `type`
/// is `https://anvil.dev/problems/<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AgentProblem {
    /// This report's `seq` was already accepted (a retry after a lost answer).
    AlreadyReported,
    /// A gap in `seq`, a status out of order, a report about a finished step
    /// or a step that is not the current one.
    OutOfOrder,
    /// The run is over; only `next` and `heartbeat` still answer.
    RunEnded,
}

impl AgentProblem {
    pub fn name(self) -> &'static str {
        match self {
            AgentProblem::AlreadyReported => "already-reported",
            AgentProblem::OutOfOrder => "out-of-order",
            AgentProblem::RunEnded => "run-ended",
        }
    }
    pub fn type_uri(self) -> &'static str {
        match self {
            AgentProblem::AlreadyReported => "https://anvil.dev/problems/already-reported",
            AgentProblem::OutOfOrder => "https://anvil.dev/problems/out-of-order",
            AgentProblem::RunEnded => "https://anvil.dev/problems/run-ended",
        }
    }
    pub fn title(self) -> &'static str {
        match self {
            AgentProblem::AlreadyReported => "Already reported",
            AgentProblem::OutOfOrder => "Report out of order",
            AgentProblem::RunEnded => "Run ended",
        }
    }
}

/// Kernel command-line keys the iPXE script sets for the agent.
pub mod cmdline {
    /// Base URL of Anvil, e.g. `http://10.77.0.1:8080` (no trailing slash).
    pub const URL: &str = "anvil.url";
    /// MAC of the interface the machine booted from (`aa:bb:cc:dd:ee:ff`).
    pub const MAC: &str = "anvil.mac";
    /// The per-boot bearer token.
    pub const TOKEN: &str = "anvil.token";
}

/// Body of `POST /api/v1/agent/register`: the first call after the network
/// is up. Repeating it (after a lost answer) is harmless and answers the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentRegister {
    /// The MAC the machine booted from; must belong to the token's machine.
    #[schema(example = "52:54:00:12:34:56")]
    pub mac: String,
    /// SMBIOS system UUID (`/sys/class/dmi/id/product_uuid`), if readable.
    #[serde(default)]
    #[schema(example = "4c4c4544-0042-3510-8052-b7c04f4e3232")]
    pub system_uuid: Option<String>,
    #[schema(example = "0.1.0")]
    pub agent_version: String,
    /// Seconds since the kernel started (for the boot timeline).
    #[serde(default)]
    pub uptime_secs: Option<f64>,
}

/// What the agent is there to do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentPurpose {
    #[default]
    Commissioning,
    /// Write an image (`docs/deployment.md`); the run ends with `reboot`.
    Deployment,
    /// Erase the disks; the run ends with `poweroff`.
    Release,
    /// An SSH server for the operator; no disk is touched.
    Rescue,
}

impl AgentPurpose {
    pub const ALL: [AgentPurpose; 4] = [
        AgentPurpose::Commissioning,
        AgentPurpose::Deployment,
        AgentPurpose::Release,
        AgentPurpose::Rescue,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            AgentPurpose::Commissioning => "commissioning",
            AgentPurpose::Deployment => "deployment",
            AgentPurpose::Release => "release",
            AgentPurpose::Rescue => "rescue",
        }
    }
    pub fn parse(s: &str) -> Option<AgentPurpose> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// Answer to a registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AgentRegistered {
    pub machine_id: Uuid,
    pub hostname: String,
    pub run_id: Uuid,
    /// 1 for the machine's first commissioning run, 2 for the next, …
    pub run_number: i64,
    pub purpose: AgentPurpose,
    /// Send a heartbeat at least this often while a step runs.
    pub heartbeat_secs: u32,
}

/// Body of `POST /api/v1/agent/heartbeat`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentHeartbeat {
    /// The step the agent is running, if any.
    #[serde(default)]
    pub step_id: Option<Uuid>,
    #[serde(default)]
    pub uptime_secs: Option<f64>,
}

/// State of a commissioning run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Started; waiting for the agent or running steps.
    Running,
    Succeeded,
    Failed,
    /// Ended by an operator (the machine left `commissioning`).
    Aborted,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Aborted => "aborted",
        }
    }
    pub fn parse(s: &str) -> Option<RunState> {
        [
            RunState::Running,
            RunState::Succeeded,
            RunState::Failed,
            RunState::Aborted,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
    pub fn is_finished(self) -> bool {
        self != RunState::Running
    }
}

/// Answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AgentHeartbeatAck {
    pub run_state: RunState,
    pub heartbeat_secs: u32,
}

/// Parameters of the `inventory` step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InventoryParams {
    /// How long to listen for LLDP frames on every connected interface.
    pub lldp_window_secs: u32,
}

/// Parameters of the `cpu_test` step: load every logical CPU for a bounded time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CpuTestParams {
    pub duration_secs: u32,
}

/// Parameters of the `memory_test` step: write and verify patterns over a
/// bounded share of free memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemoryTestParams {
    /// Share of `MemAvailable` to test, 1 to 90.
    pub percent_of_available: u8,
    /// Upper bound on the bytes tested.
    pub max_bytes: u64,
    pub duration_secs: u32,
}

/// Parameters of the `disk_test` step: read-only, never writes a disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskTestParams {
    /// Bytes read from each disk (spread over the disk).
    pub max_bytes_per_disk: u64,
    pub duration_secs: u32,
}

/// What a step does, with its parameters. Serialised as
/// `{"kind": "inventory", "params": {…}}`. An agent answers a kind it does
/// not know with a `failed` report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", content = "params", rename_all = "snake_case")]
pub enum StepSpec {
    /// Collect the hardware facts (with LLDP) and upload them to
    /// `POST /agent/facts` before reporting `succeeded`.
    Inventory(InventoryParams),
    CpuTest(CpuTestParams),
    MemoryTest(MemoryTestParams),
    DiskTest(DiskTestParams),
    /// Deployment and release: wipe signatures and partition tables
    /// (`quick`) or secure-erase the disks.
    Erase(crate::deploy::EraseParams),
    WriteImage(crate::deploy::WriteImageParams),
    GrowRoot(crate::deploy::GrowRootParams),
    CloudInit(crate::deploy::CloudInitParams),
    BootEntry(crate::deploy::BootEntryParams),
    Rescue(crate::deploy::RescueParams),
    /// Deployment with software RAID: build the md mirror before the image.
    Raid(crate::deploy::RaidParams),
    /// Deployment with software RAID: wait for the mirror's initial resync.
    RaidSync(crate::deploy::RaidSyncParams),
}

impl StepSpec {
    pub fn kind(&self) -> StepKind {
        match self {
            StepSpec::Inventory(_) => StepKind::Inventory,
            StepSpec::CpuTest(_) => StepKind::CpuTest,
            StepSpec::MemoryTest(_) => StepKind::MemoryTest,
            StepSpec::DiskTest(_) => StepKind::DiskTest,
            StepSpec::Erase(_) => StepKind::Erase,
            StepSpec::WriteImage(_) => StepKind::WriteImage,
            StepSpec::GrowRoot(_) => StepKind::GrowRoot,
            StepSpec::CloudInit(_) => StepKind::CloudInit,
            StepSpec::BootEntry(_) => StepKind::BootEntry,
            StepSpec::Rescue(_) => StepKind::Rescue,
            StepSpec::Raid(_) => StepKind::Raid,
            StepSpec::RaidSync(_) => StepKind::RaidSync,
        }
    }
}

/// The kind of a step, without parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Inventory,
    CpuTest,
    MemoryTest,
    DiskTest,
    Erase,
    WriteImage,
    GrowRoot,
    CloudInit,
    BootEntry,
    Rescue,
    Raid,
    RaidSync,
}

impl StepKind {
    pub const ALL: [StepKind; 12] = [
        StepKind::Inventory,
        StepKind::CpuTest,
        StepKind::MemoryTest,
        StepKind::DiskTest,
        StepKind::Erase,
        StepKind::WriteImage,
        StepKind::GrowRoot,
        StepKind::CloudInit,
        StepKind::BootEntry,
        StepKind::Rescue,
        StepKind::Raid,
        StepKind::RaidSync,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Inventory => "inventory",
            StepKind::CpuTest => "cpu_test",
            StepKind::MemoryTest => "memory_test",
            StepKind::DiskTest => "disk_test",
            StepKind::Erase => "erase",
            StepKind::WriteImage => "write_image",
            StepKind::GrowRoot => "grow_root",
            StepKind::CloudInit => "cloud_init",
            StepKind::BootEntry => "boot_entry",
            StepKind::Rescue => "rescue",
            StepKind::Raid => "raid",
            StepKind::RaidSync => "raid_sync",
        }
    }
    pub fn parse(s: &str) -> Option<StepKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Status of a step, and of a report about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not started yet (never sent in a report).
    Pending,
    Started,
    Progress,
    Succeeded,
    Failed,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Started => "started",
            StepStatus::Progress => "progress",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<StepStatus> {
        [
            StepStatus::Pending,
            StepStatus::Started,
            StepStatus::Progress,
            StepStatus::Succeeded,
            StepStatus::Failed,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
    pub fn is_finished(self) -> bool {
        matches!(self, StepStatus::Succeeded | StepStatus::Failed)
    }
}

/// A step handed to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AgentStep {
    pub id: Uuid,
    /// Position in the run, from 0.
    pub index: u32,
    #[serde(flatten)]
    pub spec: StepSpec,
    /// `pending` for a step never started. A step handed out again with
    /// `started`/`progress` was started earlier in this boot: an agent that
    /// is running it keeps reporting with `last_seq + 1`; an agent that is
    /// not (it lost track) reports it `failed` and never runs it again.
    pub status: StepStatus,
    /// The last accepted report's sequence number (0: none yet).
    pub last_seq: u32,
}

/// What the agent should do when there is no step to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentAction {
    /// Nothing to do yet: ask `next` again after `retry_secs`.
    Wait,
    /// The run ended and the node should power itself off (Anvil may also
    /// power it off through the BMC).
    Poweroff,
    /// Reboot (used by later purposes, e.g. after deployment).
    Reboot,
    /// The run ended; stay up, print the outcome, make no more calls.
    Done,
}

/// Answer to `POST /api/v1/agent/next`: either a step to run or an action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
// A message built once per `next` call and serialised at once: its size
// does not matter, and a Box would only complicate every construction.
#[allow(clippy::large_enum_variant)]
pub enum AgentNext {
    Step {
        step: AgentStep,
    },
    Action {
        action: AgentAction,
        /// For `wait`: when to ask again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_secs: Option<u32>,
        /// How the run ended, for `poweroff`/`done`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run_state: Option<RunState>,
    },
}

/// Progress of a long step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepProgress {
    pub done: u64,
    pub total: u64,
}

/// Body of `POST /api/v1/agent/steps/{step_id}/report`.
///
/// `seq` starts at 1 for each step and grows by exactly one per report. The
/// first report is `started`; then any number of `progress`; then one of
/// `succeeded`/`failed`. A report whose `seq` was already accepted answers
/// 409 `already-reported` (an agent that retried after a lost answer treats
/// that as success); a gap, a report out of this order, or a report about a
/// finished step answers 409 `out-of-order`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepReport {
    pub seq: u32,
    pub status: StepStatus,
    /// One line for the boot timeline (at most 4096 characters).
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub progress: Option<StepProgress>,
    /// The step's result (a JSON object), with `succeeded`/`failed`. For a
    /// hardware test: what was tested and what was found.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
}

/// Answer to an accepted report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StepReportAck {
    pub step_id: Uuid,
    pub seq: u32,
    pub status: StepStatus,
    /// The run's state after this report (a final report may end it).
    pub run_state: RunState,
}

/// Body of `POST /api/v1/agent/facts`: the inventory step's output. At most
/// `MAX_FACTS_BYTES`; validated before it is stored, and an invalid upload
/// never replaces facts already stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FactsUpload {
    /// The `inventory` step these facts come from (it must be started).
    pub step_id: Uuid,
    /// `anvil_inventory::HardwareFacts`.
    #[schema(value_type = Object)]
    pub facts: HardwareFactsJson,
}

/// Answer to a stored facts upload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FactsStored {
    pub machine_id: Uuid,
    pub run_number: i64,
    /// Size of the stored document in bytes.
    pub bytes: u64,
}

// ---------------------------------------------------------------------------
// Operator API: commissioning and hardware facts.

/// A hardware test an operator can choose for a commissioning run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HardwareTest {
    Cpu,
    Memory,
    Disk,
}

impl HardwareTest {
    pub const ALL: [HardwareTest; 3] =
        [HardwareTest::Cpu, HardwareTest::Memory, HardwareTest::Disk];
    pub fn as_str(self) -> &'static str {
        match self {
            HardwareTest::Cpu => "cpu",
            HardwareTest::Memory => "memory",
            HardwareTest::Disk => "disk",
        }
    }
    pub fn parse(s: &str) -> Option<HardwareTest> {
        let s = s.trim().to_ascii_lowercase();
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// Body of `POST /api/v1/machines/{id}/actions/commission` (optional; also
/// accepted with `POST /api/v1/actions/commission` next to the selector).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommissionRequest {
    /// Hardware tests to run after the inventory, in this order of kinds:
    /// cpu, memory, disk (duplicates ignored).
    #[serde(default)]
    pub tests: Vec<HardwareTest>,
}

/// Body of `POST /api/v1/actions/commission`: the machines (as for the
/// other bulk actions: by tag, state or list, combined with AND) and the
/// hardware tests to run on each.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkCommission {
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub state: Option<MachineState>,
    /// Machine ids or hostnames.
    #[serde(default)]
    pub machines: Option<Vec<String>>,
    #[serde(default)]
    pub tests: Vec<HardwareTest>,
}

impl BulkCommission {
    pub fn split(self) -> (crate::BulkSelector, CommissionRequest) {
        (
            crate::BulkSelector {
                tag: self.tag,
                state: self.state,
                machines: self.machines,
            },
            CommissionRequest { tests: self.tests },
        )
    }
}

/// One step of a commissioning run, as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunStep {
    pub id: Uuid,
    pub index: u32,
    pub kind: StepKind,
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    pub status: StepStatus,
    pub last_seq: u32,
    pub message: Option<String>,
    pub progress: Option<StepProgress>,
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<time::OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<time::OffsetDateTime>,
}

/// A commissioning run of a machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CommissioningRun {
    pub id: Uuid,
    pub machine_id: Uuid,
    /// 1, 2, … per machine; `?run=` of the hardware endpoint.
    pub number: i64,
    /// What the run is for: commissioning, deployment, release or rescue.
    #[serde(default)]
    pub purpose: AgentPurpose,
    pub state: RunState,
    pub tests: Vec<HardwareTest>,
    /// The job that started the run.
    pub job_id: Option<Uuid>,
    /// Why it failed, naming the step.
    pub failure_reason: Option<String>,
    pub failed_step: Option<StepKind>,
    /// System UUID and agent version as the agent registered.
    pub system_uuid: Option<String>,
    pub agent_version: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: time::OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub registered_at: Option<time::OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<time::OffsetDateTime>,
    /// When the run fails if it has not ended.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub deadline: time::OffsetDateTime,
    pub steps: Vec<RunStep>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CommissioningRunList {
    /// Newest first.
    pub items: Vec<CommissioningRun>,
}

/// Query of `GET /api/v1/machines/{id}/hardware`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HardwareQuery {
    /// Run number; the latest run with facts when absent.
    pub run: Option<i64>,
}

/// The hardware facts of a machine from one commissioning run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MachineHardware {
    pub machine_id: Uuid,
    pub run_number: i64,
    pub run_id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub collected_at: time::OffsetDateTime,
    /// `anvil_inventory::HardwareFacts`.
    #[schema(value_type = Object)]
    pub facts: HardwareFactsJson,
    /// Run numbers that have facts, newest first.
    pub runs_with_facts: Vec<i64>,
}

/// The machine state a run leads to, for clients that wait on a job.
pub fn run_outcome_state(state: RunState) -> Option<MachineState> {
    match state {
        RunState::Running | RunState::Aborted => None,
        RunState::Succeeded => Some(MachineState::Ready),
        RunState::Failed => Some(MachineState::Failed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_serialises_kind_and_params_flat() {
        let step = AgentStep {
            id: Uuid::nil(),
            index: 0,
            spec: StepSpec::Inventory(InventoryParams {
                lldp_window_secs: 30,
            }),
            status: StepStatus::Pending,
            last_seq: 0,
        };
        let json = serde_json::to_value(AgentNext::Step { step: step.clone() }).unwrap();
        assert_eq!(json["step"]["kind"], "inventory");
        assert_eq!(json["step"]["params"]["lldp_window_secs"], 30);
        assert_eq!(json["step"]["status"], "pending");
        let back: AgentNext = serde_json::from_value(json).unwrap();
        assert_eq!(back, AgentNext::Step { step });
    }

    #[test]
    fn action_round_trips_and_is_told_from_a_step() {
        let text = r#"{"action":"wait","retry_secs":5}"#;
        let next: AgentNext = serde_json::from_str(text).unwrap();
        assert_eq!(
            next,
            AgentNext::Action {
                action: AgentAction::Wait,
                retry_secs: Some(5),
                run_state: None
            }
        );
        assert_eq!(serde_json::to_string(&next).unwrap(), text);
    }

    #[test]
    fn report_refuses_unknown_status_and_fields() {
        assert!(serde_json::from_str::<StepReport>(r#"{"seq":1,"status":"done"}"#).is_err());
        assert!(
            serde_json::from_str::<StepReport>(r#"{"seq":1,"status":"started","x":1}"#).is_err()
        );
        let r: StepReport = serde_json::from_str(
            r#"{"seq":2,"status":"progress","progress":{"done":1,"total":4}}"#,
        )
        .unwrap();
        assert_eq!(r.progress, Some(StepProgress { done: 1, total: 4 }));
    }

    #[test]
    fn tests_parse_case_insensitively() {
        assert_eq!(HardwareTest::parse(" CPU "), Some(HardwareTest::Cpu));
        assert_eq!(HardwareTest::parse("gpu"), None);
        let req: CommissionRequest = serde_json::from_str(r#"{"tests":["cpu","disk"]}"#).unwrap();
        assert_eq!(req.tests, vec![HardwareTest::Cpu, HardwareTest::Disk]);
    }
}
