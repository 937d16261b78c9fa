//! `anvil machine deploy|release|rescue`: one machine's deployment
//! lifecycle through `POST /api/v1/machines/{id}/actions/{deploy|release|
//! rescue|exit-rescue}`.
//!
//! Everything that can be checked here is checked before anything is sent
//! (the key files exist and hold public keys, the user data fits, the root
//! disk hint parses), so a typo costs no job. With `--wait` the command
//! follows the run the action started (the newest run of its purpose in
//! `GET /machines/{id}/commissioning-runs`) with two progress bars: the steps,
//! and the bytes of the current step with their rate (the image write), and
//! exits 8 when the run fails, printing why.

use crate::GlobalOpts;
use crate::client::{Client, parse_segment};
use crate::error::CliError;
use crate::output::{self, OutputFormat, render};
use crate::power::job_table;
use anvil_api_types::agent::{
    AgentPurpose, CommissioningRun, CommissioningRunList, RunState, StepKind, StepStatus,
};
use anvil_api_types::deploy::{
    ConfigDriveKind, DeployRequest, EraseMode, RaidRequest, ReleaseRequest, RescueRequest,
    RootDiskHint,
};
use anvil_api_types::{Job, JobStatus, Machine};
use anvil_types::MachineState;
use clap::Args;
use reqwest::Method;
use serde::Serialize;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The largest user data a deploy accepts (`DeployRequest::user_data`).
pub const MAX_USER_DATA_BYTES: usize = 64 * 1024;

/// How often `--wait` asks the server.
const POLL: Duration = Duration::from_secs(1);

/// How many polls in a row may fail transiently (about a minute) before
/// `--wait` gives up.
const MAX_TRANSIENT_FAILURES: u32 = 60;

/// How far back the transfer rate looks: long enough to smooth the agent's
/// report interval, short enough to follow a change of speed.
const RATE_WINDOW_SECS: f64 = 10.0;

/// Options of `anvil machine deploy`.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct DeployArgs {
    /// Machine hostname or id (ready or allocated).
    #[arg(value_parser = parse_segment)]
    pub target: String,
    /// Image name (`anvil image list`).
    #[arg(long, value_name = "NAME", value_parser = parse_segment)]
    pub image: String,
    /// A file of SSH public keys (`authorized_keys` format, e.g.
    /// ~/.ssh/id_ed25519.pub) for the image's login user; repeat for several.
    #[arg(long = "ssh-key", value_name = "FILE")]
    pub ssh_keys: Vec<PathBuf>,
    /// cloud-init user data (`#cloud-config …`, a script, …), at most 64 KiB.
    #[arg(long, value_name = "FILE")]
    pub user_data: Option<PathBuf>,
    /// Which disk gets the image: smallest (default), largest, name=sda,
    /// serial=S, wwn=W, model=M or size=480G (the smallest disk at least that
    /// large).
    #[arg(long, value_name = "HINT", value_parser = RootDiskHint::parse)]
    pub root_disk: Option<RootDiskHint>,
    /// Where cloud-init finds its data: nocloud (a CIDATA partition, the
    /// default) or config-drive (OpenStack `config-2`).
    #[arg(long, value_name = "KIND", value_parser = parse_config_drive)]
    pub config_drive: Option<ConfigDriveKind>,
    /// Software RAID 1: mirror the image over two disks (md metadata 1.0,
    /// each disk boots alone). Without --raid-disk, the two smallest disks
    /// of nearly equal size that hold the image.
    #[arg(long)]
    pub raid1: bool,
    /// With --raid1: a member disk, as a --root-disk hint; give it twice.
    #[arg(long = "raid-disk", value_name = "HINT", value_parser = RootDiskHint::parse, requires = "raid1")]
    pub raid_disks: Vec<RootDiskHint>,
    /// Follow the deployment with progress bars until the machine is
    /// deployed; exit 8 if it fails.
    #[arg(long)]
    pub wait: bool,
}

/// Options of `anvil machine release`.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct ReleaseArgs {
    /// Machine hostname or id.
    #[arg(value_parser = parse_segment)]
    pub target: String,
    /// quick: partition tables, RAID and LVM signatures, the first and last
    /// MiB of every disk; secure: the disks' own secure erase.
    #[arg(long, value_name = "MODE", default_value = "quick", value_parser = parse_erase)]
    pub erase: EraseMode,
    /// With --erase secure: overwrite a disk with zeros when it has no
    /// secure erase command (slow: the whole disk is written).
    #[arg(long)]
    pub allow_overwrite: bool,
    /// Follow the release until the machine is ready; exit 8 if it fails.
    #[arg(long)]
    pub wait: bool,
}

/// Options of `anvil machine rescue`.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct RescueArgs {
    /// Machine hostname or id.
    #[arg(value_parser = parse_segment)]
    pub target: String,
    /// Leave rescue: the machine goes back to the state it had before and
    /// is power-cycled.
    #[arg(long)]
    pub exit: bool,
    /// A file of SSH public keys for root in the rescue system; repeat for
    /// several. Without it, the keys of the machine's last deployment.
    #[arg(long = "ssh-key", value_name = "FILE", conflicts_with = "exit")]
    pub ssh_keys: Vec<PathBuf>,
    /// Wait until the rescue system's SSH server listens (with --exit: until
    /// the job is done); exit 8 if it fails.
    #[arg(long)]
    pub wait: bool,
}

fn parse_config_drive(s: &str) -> Result<ConfigDriveKind, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "nocloud" | "cidata" => Ok(ConfigDriveKind::Nocloud),
        "config-drive" | "config_drive" | "config-2" => Ok(ConfigDriveKind::ConfigDrive),
        _ => Err(format!(
            "unknown config drive {s:?}: expected nocloud or config-drive"
        )),
    }
}

fn parse_erase(s: &str) -> Result<EraseMode, String> {
    EraseMode::parse(s).ok_or_else(|| format!("unknown erase mode {s:?}: expected quick or secure"))
}

/// Reads `authorized_keys`-style files: one key a line, blank lines and
/// `#` comments skipped, each key checked with the server's own rule
/// (`anvil_cloudinit::validate_ssh_key`). Duplicates are sent once.
pub(crate) fn read_ssh_keys(paths: &[PathBuf]) -> Result<Vec<String>, CliError> {
    let mut keys: Vec<String> = Vec::new();
    for path in paths {
        let shown = path.display();
        let text = std::fs::read(path)
            .map_err(|e| CliError::Usage(format!("cannot read --ssh-key {shown}: {e}")))?;
        let text = String::from_utf8(text).map_err(|_| {
            CliError::Usage(format!(
                "--ssh-key {shown} is not text; give the public key file (…/id_ed25519.pub)"
            ))
        })?;
        if text.contains("PRIVATE KEY-----") {
            return Err(CliError::Usage(format!(
                "--ssh-key {shown} holds a private key; give the public key ({shown}.pub)"
            )));
        }
        let mut found = 0;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = anvil_cloudinit::validate_ssh_key(keys.len(), line).map_err(|e| {
                let reason = match e {
                    anvil_cloudinit::Error::SshKey { reason, .. } => reason,
                    other => other.to_string(),
                };
                CliError::Usage(format!("--ssh-key {shown} line {}: {reason}", n + 1))
            })?;
            found += 1;
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        if found == 0 {
            return Err(CliError::Usage(format!(
                "--ssh-key {shown} holds no public key"
            )));
        }
    }
    Ok(keys)
}

/// The user data file as text, at most [`MAX_USER_DATA_BYTES`].
pub(crate) fn read_user_data(path: &Path) -> Result<String, CliError> {
    let shown = path.display();
    let meta = std::fs::metadata(path)
        .map_err(|e| CliError::Usage(format!("cannot read --user-data {shown}: {e}")))?;
    // Checked before reading so a wrong path to a disk image fails at once.
    if meta.len() > MAX_USER_DATA_BYTES as u64 {
        return Err(CliError::Usage(format!(
            "--user-data {shown} is {} bytes; at most {MAX_USER_DATA_BYTES} (64 KiB) are allowed",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| CliError::Usage(format!("cannot read --user-data {shown}: {e}")))?;
    if bytes.len() > MAX_USER_DATA_BYTES {
        return Err(CliError::Usage(format!(
            "--user-data {shown} is {} bytes; at most {MAX_USER_DATA_BYTES} (64 KiB) are allowed",
            bytes.len()
        )));
    }
    if bytes.is_empty() {
        return Err(CliError::Usage(format!(
            "--user-data {shown} is empty; leave the option out for none"
        )));
    }
    String::from_utf8(bytes).map_err(|_| {
        CliError::Usage(format!(
            "--user-data {shown} is not UTF-8 text (compressed user data is not supported)"
        ))
    })
}

impl DeployArgs {
    /// The request body, after reading and checking the files.
    pub(crate) fn body(&self) -> Result<DeployRequest, CliError> {
        if !self.raid_disks.is_empty() && self.raid_disks.len() != 2 {
            return Err(CliError::Usage(format!(
                "--raid-disk takes exactly two disks (one per mirror member), got {}",
                self.raid_disks.len()
            )));
        }
        if self.raid1 && self.root_disk.is_some() {
            return Err(CliError::Usage(
                "--root-disk does not apply with --raid1; name the members with --raid-disk HINT --raid-disk HINT".into(),
            ));
        }
        Ok(DeployRequest {
            image: self.image.clone(),
            ssh_keys: read_ssh_keys(&self.ssh_keys)?,
            user_data: self.user_data.as_deref().map(read_user_data).transpose()?,
            root_disk: self.root_disk.clone(),
            config_drive: self.config_drive,
            raid: self.raid1.then(|| RaidRequest {
                level: 1,
                disks: self.raid_disks.clone(),
            }),
        })
    }
}

impl ReleaseArgs {
    pub(crate) fn body(&self) -> Result<ReleaseRequest, CliError> {
        if self.allow_overwrite && self.erase != EraseMode::Secure {
            return Err(CliError::Usage(
                "--allow-overwrite only applies to --erase secure".into(),
            ));
        }
        Ok(ReleaseRequest {
            erase: self.erase,
            allow_overwrite: self.allow_overwrite,
        })
    }
}

/// What an action is called in messages, and the run it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Deploy,
    Release,
    Rescue,
    ExitRescue,
}

impl Action {
    fn path(self) -> &'static str {
        match self {
            Action::Deploy => "deploy",
            Action::Release => "release",
            Action::Rescue => "rescue",
            Action::ExitRescue => "exit-rescue",
        }
    }

    /// The purpose of the run the action starts (exit-rescue starts none).
    fn purpose(self) -> Option<AgentPurpose> {
        match self {
            Action::Deploy => Some(AgentPurpose::Deployment),
            Action::Release => Some(AgentPurpose::Release),
            Action::Rescue => Some(AgentPurpose::Rescue),
            Action::ExitRescue => None,
        }
    }

    /// A next step for a refused action, from the state the server reported.
    pub(crate) fn hint(self, state: MachineState) -> Option<&'static str> {
        use MachineState::*;
        match (self, state) {
            (Action::Deploy, New | Failed | Broken) => {
                Some("commission it first: anvil machine commission TARGET")
            }
            (Action::Deploy, Deployed) => Some("release it first: anvil machine release TARGET"),
            (Action::Deploy, Deploying) => Some("a deployment is already running"),
            (Action::Deploy | Action::Release, Rescue) => {
                Some("leave rescue first: anvil machine rescue --exit TARGET")
            }
            (Action::Release, Ready) => Some("it is released already"),
            (Action::Release, Releasing) => Some("a release is already running"),
            (Action::Rescue, Rescue) => Some("it is in rescue already"),
            (Action::ExitRescue, _) => Some("only a machine in rescue can leave it"),
            _ => None,
        }
    }
}

/// Adds the action's hint to a 409 that names the machine's state.
fn with_hint(action: Action, target: &str, e: CliError) -> CliError {
    match e {
        CliError::Api {
            status: 409,
            mut problem,
        } => {
            if let Some(hint) = problem.current_state.and_then(|s| action.hint(s)) {
                problem.detail = format!(
                    "{}; {}",
                    problem.detail.trim_end_matches('.'),
                    hint.replace("TARGET", target)
                );
            }
            CliError::Api {
                status: 409,
                problem,
            }
        }
        other => other,
    }
}

async fn post_action<B: Serialize>(
    client: &Client,
    target: &str,
    action: Action,
    body: Option<&B>,
) -> Result<Job, CliError> {
    let mut req = client.request(
        Method::POST,
        &["machines", target, "actions", action.path()],
    );
    if let Some(body) = body {
        req = req.json(body);
    }
    client
        .json(req)
        .await
        .map_err(|e| with_hint(action, target, e))
}

/// Runs `anvil machine deploy`.
pub async fn run_deploy(g: &GlobalOpts, a: DeployArgs) -> Result<(), CliError> {
    let body = a.body()?;
    let client = Client::from_opts(g)?;
    let job = post_action(&client, &a.target, Action::Deploy, Some(&body)).await?;
    finish(g, &client, &a.target, Action::Deploy, job, a.wait).await
}

/// Runs `anvil machine release`.
pub async fn run_release(g: &GlobalOpts, a: ReleaseArgs) -> Result<(), CliError> {
    let body = a.body()?;
    let client = Client::from_opts(g)?;
    let job = post_action(&client, &a.target, Action::Release, Some(&body)).await?;
    finish(g, &client, &a.target, Action::Release, job, a.wait).await
}

/// Runs `anvil machine rescue [--exit]`.
pub async fn run_rescue(g: &GlobalOpts, a: RescueArgs) -> Result<(), CliError> {
    if a.exit {
        let client = Client::from_opts(g)?;
        let job = post_action::<()>(&client, &a.target, Action::ExitRescue, None).await?;
        return finish(g, &client, &a.target, Action::ExitRescue, job, a.wait).await;
    }
    let body = RescueRequest {
        ssh_keys: read_ssh_keys(&a.ssh_keys)?,
    };
    let client = Client::from_opts(g)?;
    let job = post_action(&client, &a.target, Action::Rescue, Some(&body)).await?;
    finish(g, &client, &a.target, Action::Rescue, job, a.wait).await
}

/// Prints the job, or with `--wait` follows it to the end.
async fn finish(
    g: &GlobalOpts,
    client: &Client,
    target: &str,
    action: Action,
    job: Job,
    wait: bool,
) -> Result<(), CliError> {
    if !wait {
        output::print(&render(g.output, std::slice::from_ref(&job), job_table)?)?;
        if g.output == OutputFormat::Table {
            eprintln!(
                "Started {} of {target}; follow it with `anvil machine show {target}` or add --wait.",
                action.path()
            );
        }
        return Ok(());
    }
    // The machine's id: a rename while waiting must not lose it.
    let ident = job
        .machine_id
        .map_or_else(|| target.to_string(), |id| id.to_string());
    // An installer deploy has no agent run to follow: its job lasts until
    // the installer's completion call (or the deploy timeout).
    let installer = job.params.get("installer").is_some();
    let Some(purpose) = action.purpose().filter(|_| !installer) else {
        let done = wait_for_job(client, &job).await?;
        output::print(&render(g.output, std::slice::from_ref(&done), job_table)?)?;
        return match done.status {
            JobStatus::Failed => Err(CliError::RunFailed {
                hostname: target.to_string(),
                what: if installer {
                    "the installer deployment".into()
                } else {
                    "leaving rescue".into()
                },
                reason: done.error.unwrap_or_else(|| "the job failed".into()),
            }),
            _ => Ok(()),
        };
    };
    let bars = g.output == OutputFormat::Table;
    let (run, outcome) = follow_run(client, &ident, target, purpose, &job, bars).await?;
    let machine: Machine = client
        .json(client.request(Method::GET, &["machines", &ident]))
        .await?;
    output::print(&render(g.output, &run, run_table)?)?;
    match outcome {
        Outcome::Succeeded => {
            if g.output == OutputFormat::Table {
                eprintln!(
                    "{}: {} {} in {}; the machine is {}.",
                    machine.hostname,
                    purpose.as_str(),
                    if purpose == AgentPurpose::Rescue {
                        "is up"
                    } else {
                        "succeeded"
                    },
                    run_took(&run),
                    machine.state
                );
            }
            Ok(())
        }
        Outcome::Failed(reason) => Err(CliError::RunFailed {
            hostname: machine.hostname,
            what: purpose.as_str().to_string(),
            reason,
        }),
    }
}

async fn wait_for_job(client: &Client, job: &Job) -> Result<Job, CliError> {
    let mut failures = 0;
    loop {
        match client.get_job(job.id).await {
            Ok(cur) if matches!(cur.status, JobStatus::Succeeded | JobStatus::Failed) => {
                return Ok(cur);
            }
            Ok(_) => failures = 0,
            Err(e) if transient(&e) && failures < MAX_TRANSIENT_FAILURES => failures += 1,
            Err(e) => return Err(e),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How a followed run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Succeeded,
    Failed(String),
}

/// The run an action started: the one its job started, else the newest of
/// the purpose that began after the job was created (runs are listed newest
/// first).
pub(crate) fn pick_run<'a>(
    runs: &'a [CommissioningRun],
    purpose: AgentPurpose,
    job: &Job,
) -> Option<&'a CommissioningRun> {
    runs.iter().find(|r| r.job_id == Some(job.id)).or_else(|| {
        runs.iter()
            .filter(|r| r.purpose == purpose)
            .find(|r| r.started_at >= job.created_at - time::Duration::seconds(5))
    })
}

/// Whether following is over, from one snapshot of the run, the job and the
/// machine. A rescue run stays `running` while the rescue system is up, so
/// it is over when its steps have all succeeded (the SSH server listens).
pub(crate) fn decide(
    run: Option<&CommissioningRun>,
    purpose: AgentPurpose,
    job: &Job,
) -> Option<Outcome> {
    match run {
        Some(r) if r.state == RunState::Succeeded => Some(Outcome::Succeeded),
        Some(r) if r.state != RunState::Running => {
            Some(Outcome::Failed(r.failure_reason.clone().unwrap_or_else(
                || format!("the run was {}", r.state.as_str()),
            )))
        }
        Some(r)
            if purpose == AgentPurpose::Rescue
                && !r.steps.is_empty()
                && r.steps.iter().all(|s| s.status == StepStatus::Succeeded) =>
        {
            Some(Outcome::Succeeded)
        }
        // The job failed before a run was recorded (say, the BMC refused):
        // nothing will come.
        None if job.status == JobStatus::Failed => Some(Outcome::Failed(
            job.error.clone().unwrap_or_else(|| "the job failed".into()),
        )),
        _ => None,
    }
}

/// A moving transfer rate from the byte counts of one step.
#[derive(Debug, Default)]
pub(crate) struct RateMeter {
    step: Option<uuid::Uuid>,
    samples: VecDeque<(f64, u64)>,
}

impl RateMeter {
    /// Records `done` bytes of `step` at `t` seconds; the rate in bytes per
    /// second over the window, once two samples are apart in time.
    pub(crate) fn push(&mut self, step: uuid::Uuid, t: f64, done: u64) -> Option<f64> {
        if self.step != Some(step) {
            self.step = Some(step);
            self.samples.clear();
        }
        if self.samples.back().is_none_or(|&(_, d)| d != done) {
            self.samples.push_back((t, done));
        }
        while self
            .samples
            .front()
            .is_some_and(|&(t0, _)| t - t0 > RATE_WINDOW_SECS)
            && self.samples.len() > 2
        {
            self.samples.pop_front();
        }
        let (t0, d0) = *self.samples.front()?;
        let (t1, d1) = *self.samples.back()?;
        (t1 - t0 > 0.0 && d1 >= d0).then(|| (d1 - d0) as f64 / (t1 - t0))
    }
}

/// What the progress bars show for one snapshot.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProgressView {
    pub(crate) steps_done: u64,
    pub(crate) steps_total: u64,
    /// "write_image (3/5): writing" …
    pub(crate) line: String,
    /// The current step's own progress, when it reports one.
    pub(crate) detail: Option<DetailBar>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DetailBar {
    pub(crate) done: u64,
    pub(crate) total: u64,
    /// "512.0 MiB of 2.0 GiB at 85.3 MiB/s" or "2 of 3".
    pub(crate) text: String,
}

/// Steps whose progress counts bytes.
fn counts_bytes(kind: StepKind) -> bool {
    matches!(
        kind,
        StepKind::WriteImage | StepKind::CloudInit | StepKind::Erase
    )
}

/// The bars for a run snapshot; `rate` is the current step's bytes per
/// second (from [`RateMeter`]).
pub(crate) fn progress_view(run: Option<&CommissioningRun>, rate: Option<f64>) -> ProgressView {
    let Some(run) = run else {
        return ProgressView {
            steps_done: 0,
            steps_total: 1,
            line: "starting".into(),
            detail: None,
        };
    };
    let total = run.steps.len().max(1) as u64;
    let done = run
        .steps
        .iter()
        .filter(|s| s.status == StepStatus::Succeeded)
        .count() as u64;
    let view = |line: String, detail| ProgressView {
        steps_done: done,
        steps_total: total,
        line,
        detail,
    };
    if run.state != RunState::Running {
        return view(
            match &run.failure_reason {
                Some(r) => format!("{}: {r}", run.state.as_str()),
                None => run.state.as_str().to_string(),
            },
            None,
        );
    }
    if run.registered_at.is_none() {
        return view("booting; waiting for the agent".into(), None);
    }
    let Some((i, s)) = run
        .steps
        .iter()
        .enumerate()
        .find(|(_, s)| !s.status.is_finished())
    else {
        return view("finishing".into(), None);
    };
    let position = format!("{} ({}/{})", s.kind.as_str(), i + 1, run.steps.len());
    if s.status == StepStatus::Pending {
        return view(format!("{position}: next"), None);
    }
    let mut line = position;
    if let Some(m) = s
        .message
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        line.push_str(": ");
        line.extend(m.chars().take(60));
    }
    let detail = s.progress.map(|p| {
        let text = if counts_bytes(s.kind) {
            let mut t = format!("{} of {}", fmt_bytes(p.done), fmt_bytes(p.total));
            if let Some(r) = rate {
                t.push_str(&format!(" at {}/s", fmt_bytes(r as u64)));
            }
            t
        } else {
            format!("{} of {}", p.done, p.total)
        };
        DetailBar {
            done: p.done.min(p.total),
            total: p.total.max(1),
            text,
        }
    });
    view(line, detail)
}

/// Bytes with a binary unit: "512 B", "1.5 MiB".
pub(crate) fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Follows the run to its end, drawing the bars when `bars`.
async fn follow_run(
    client: &Client,
    ident: &str,
    hostname: &str,
    purpose: AgentPurpose,
    job: &Job,
    bars: bool,
) -> Result<(CommissioningRun, Outcome), CliError> {
    let multi = if bars {
        indicatif::MultiProgress::new()
    } else {
        indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
    };
    let steps_style =
        indicatif::ProgressStyle::with_template("{prefix:>16} [{bar:24}] {pos}/{len} steps {msg}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    let detail_style =
        indicatif::ProgressStyle::with_template("{prefix:>16} [{bar:24}] {percent:>3}% {msg}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    let steps_bar = multi.add(indicatif::ProgressBar::new(1));
    steps_bar.set_style(steps_style);
    steps_bar.set_prefix(hostname.to_string());
    // Setters redraw at most ~20 times a second and drop what comes in
    // between: a steady tick shows the last of them within 200 ms.
    let tick = Duration::from_millis(200);
    steps_bar.enable_steady_tick(tick);
    let mut detail_bar: Option<indicatif::ProgressBar> = None;
    let mut meter = RateMeter::default();
    let started = Instant::now();
    let mut job = job.clone();
    let mut failures = 0;
    loop {
        let runs = match snapshot(client, ident, &mut job).await {
            Ok(runs) => {
                failures = 0;
                runs
            }
            Err(e) if transient(&e) && failures < MAX_TRANSIENT_FAILURES => {
                failures += 1;
                steps_bar.set_message(format!("{e}; trying again"));
                tokio::time::sleep(POLL).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let run = pick_run(&runs.items, purpose, &job);
        let rate = run.and_then(|r| {
            r.steps
                .iter()
                .find(|s| s.status == StepStatus::Progress)
                .and_then(|s| {
                    s.progress
                        .map(|p| meter.push(s.id, started.elapsed().as_secs_f64(), p.done))
                })
                .flatten()
        });
        let view = progress_view(run, rate);
        // Message first: each setter redraws, and the text should never lag
        // the bar.
        steps_bar.set_message(view.line.clone());
        steps_bar.set_length(view.steps_total);
        steps_bar.set_position(view.steps_done);
        match (&view.detail, &detail_bar) {
            (Some(d), Some(pb)) => {
                pb.set_message(d.text.clone());
                pb.set_length(d.total);
                pb.set_position(d.done);
            }
            (Some(d), None) => {
                let pb = multi.add(indicatif::ProgressBar::new(d.total));
                pb.set_style(detail_style.clone());
                pb.enable_steady_tick(tick);
                pb.set_message(d.text.clone());
                pb.set_position(d.done);
                detail_bar = Some(pb);
            }
            (None, Some(pb)) => {
                pb.finish_and_clear();
                multi.remove(pb);
                detail_bar = None;
            }
            (None, None) => {}
        }
        if let Some(outcome) = decide(run, purpose, &job) {
            if let Some(pb) = detail_bar.take() {
                pb.finish_and_clear();
            }
            steps_bar.finish();
            if !bars {
                multi.clear().ok();
            } else if !steps_bar.is_hidden() {
                // The finished bar stays; what is printed next starts below it.
                eprintln!();
            }
            return match run {
                Some(r) => Ok((r.clone(), outcome)),
                None => Err(CliError::RunFailed {
                    hostname: hostname.to_string(),
                    what: purpose.as_str().to_string(),
                    reason: match outcome {
                        Outcome::Failed(r) => r,
                        Outcome::Succeeded => "no run was started".into(),
                    },
                }),
            };
        }
        if run.is_none() && job.status == JobStatus::Succeeded {
            // The job is done but lists no run: the server did not start one.
            return Err(CliError::Protocol(format!(
                "job {} finished without a {} run for {hostname}",
                job.id,
                purpose.as_str()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The machine's runs, and the job brought up to date while it runs.
async fn snapshot(
    client: &Client,
    ident: &str,
    job: &mut Job,
) -> Result<CommissioningRunList, CliError> {
    let runs = client
        .json(client.request(Method::GET, &["machines", ident, "commissioning-runs"]))
        .await?;
    if !matches!(job.status, JobStatus::Succeeded | JobStatus::Failed) {
        *job = client.get_job(job.id).await?;
    }
    Ok(runs)
}

/// Whether an error while following a run is worth waiting out: the server
/// restarting or a proxy in between failing for a moment, not a refusal.
/// A deployment takes minutes; losing the wait to a blip would leave the
/// operator without the result.
pub(crate) fn transient(e: &CliError) -> bool {
    matches!(
        e,
        CliError::Unreachable { .. }
            | CliError::Api {
                status: 502..=504,
                ..
            }
    )
}

fn run_took(run: &CommissioningRun) -> String {
    let end = run
        .finished_at
        .unwrap_or_else(time::OffsetDateTime::now_utc);
    let s = (end - run.started_at).whole_seconds().max(0);
    if s < 60 {
        format!("{s} s")
    } else {
        format!("{} min {:02} s", s / 60, s % 60)
    }
}

/// The run's steps as a table: what ran, how it ended, how long it took.
pub(crate) fn run_table(run: &CommissioningRun) -> String {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(["STEP", "STATUS", "TOOK", "MESSAGE"]);
    for s in &run.steps {
        let took = match (s.started_at, s.finished_at) {
            (Some(a), Some(b)) => format!("{:.1} s", (b - a).as_seconds_f64()),
            _ => String::new(),
        };
        t.add_row([
            s.kind.as_str().to_string(),
            s.status.as_str().to_string(),
            took,
            s.message.clone().unwrap_or_default(),
        ]);
    }
    format!("{t}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anvil_api_types::Problem;
    use anvil_api_types::agent::{RunStep, StepProgress};
    use clap::Parser;
    use std::io::Write;
    use uuid::Uuid;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDnOU2zyIAnBcHkWVLvAxoUXE2FYKBuheYt6B6p3BVHR ops@example";

    #[derive(Parser)]
    struct Deploy {
        #[command(flatten)]
        a: DeployArgs,
    }
    #[derive(Parser)]
    struct Release {
        #[command(flatten)]
        a: ReleaseArgs,
    }
    #[derive(Parser)]
    struct Rescue {
        #[command(flatten)]
        a: RescueArgs,
    }

    fn file(content: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content).unwrap();
        f
    }

    #[test]
    fn raid1_flags_become_the_raid_request() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["t", "node-01", "--image", "deb"];
            args.extend_from_slice(extra);
            Deploy::try_parse_from(args).map(|c| c.a.body())
        };
        let body = parse(&["--raid1"]).unwrap().unwrap();
        assert_eq!(
            body.raid,
            Some(RaidRequest {
                level: 1,
                disks: vec![]
            })
        );
        let body = parse(&[
            "--raid1",
            "--raid-disk",
            "serial=S1",
            "--raid-disk",
            "name=sdb",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            serde_json::to_value(&body).unwrap()["raid"],
            serde_json::json!({"level": 1, "disks": ["serial=S1", "name=sdb"]})
        );
        assert_eq!(parse(&[]).unwrap().unwrap().raid, None);
        // One member only, a root disk beside the mirror: exit 2 locally.
        let e = parse(&["--raid1", "--raid-disk", "serial=S1"])
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains("exactly two"), "{e}");
        let e = parse(&["--raid1", "--root-disk", "largest"])
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains("--raid-disk"), "{e}");
        // --raid-disk without --raid1 and a bad hint: clap refuses.
        assert!(parse(&["--raid-disk", "serial=S1"]).is_err());
        assert!(parse(&["--raid1", "--raid-disk", "huge"]).is_err());
    }

    #[test]
    fn deploy_builds_the_request_from_files() {
        let keys = file(format!("# ops\n\n{ED25519}\n{ED25519}\n").as_bytes());
        let ud = file(b"#cloud-config\npackages: [htop]\n");
        let c = Deploy::try_parse_from([
            "x",
            "node-01",
            "--image",
            "debian-12",
            "--ssh-key",
            keys.path().to_str().unwrap(),
            "--user-data",
            ud.path().to_str().unwrap(),
            "--root-disk",
            "size=480G",
            "--config-drive",
            "config-drive",
            "--wait",
        ])
        .unwrap();
        assert!(c.a.wait);
        assert_eq!(c.a.target, "node-01");
        let body = c.a.body().unwrap();
        assert_eq!(
            body,
            DeployRequest {
                image: "debian-12".into(),
                // Comment and blank lines skipped, the duplicate sent once.
                ssh_keys: vec![ED25519.into()],
                user_data: Some("#cloud-config\npackages: [htop]\n".into()),
                root_disk: Some(RootDiskHint::MinSize(480_000_000_000)),
                config_drive: Some(ConfigDriveKind::ConfigDrive),
                raid: None,
            }
        );
        // The wire form is what the server's DeployRequest reads.
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["root_disk"], "size=480000000000");
        assert_eq!(json["config_drive"], "config_drive");

        let bare = Deploy::try_parse_from(["x", "n", "--image", "i"]).unwrap();
        let body = bare.a.body().unwrap();
        assert!(body.ssh_keys.is_empty() && body.user_data.is_none() && body.root_disk.is_none());
    }

    #[test]
    fn deploy_refuses_bad_arguments() {
        use clap::error::ErrorKind::*;
        let refused = |args: &[&str]| {
            Deploy::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
                .err()
                .unwrap()
        };
        assert_eq!(refused(&["n"]).kind(), MissingRequiredArgument);
        let e = refused(&["n", "--image", "i", "--root-disk", "biggest"]);
        assert_eq!(e.kind(), ValueValidation);
        assert!(e.to_string().contains("root disk hint"), "{e}");
        assert_eq!(e.exit_code(), 2);
        let e = refused(&["n", "--image", "i", "--root-disk", "size=lots"]);
        assert!(e.to_string().contains("size must be a number"), "{e}");
        let e = refused(&["n", "--image", "i", "--config-drive", "iso"]);
        assert!(e.to_string().contains("nocloud or config-drive"), "{e}");
        assert_eq!(refused(&["..", "--image", "i"]).kind(), ValueValidation);
    }

    fn usage(a: &DeployArgs) -> String {
        let e = a.body().unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        e.to_string()
    }

    #[test]
    fn key_and_user_data_files_are_checked_before_sending() {
        let mut a = Deploy::try_parse_from(["x", "n", "--image", "i"])
            .unwrap()
            .a;

        a.ssh_keys = vec!["/nonexistent/id.pub".into()];
        let m = usage(&a);
        assert!(
            m.starts_with("cannot read --ssh-key /nonexistent/id.pub"),
            "{m}"
        );

        let private = file(
            b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\n",
        );
        a.ssh_keys = vec![private.path().into()];
        assert!(usage(&a).contains("holds a private key"));

        let truncated = file(format!("{}\n", &ED25519[..60]).as_bytes());
        a.ssh_keys = vec![truncated.path().into()];
        let m = usage(&a);
        assert!(m.contains("line 1") && m.contains("truncated"), "{m}");

        let empty = file(b"\n# nothing\n");
        a.ssh_keys = vec![empty.path().into()];
        assert!(usage(&a).contains("holds no public key"));

        a.ssh_keys.clear();
        let big = file(&vec![b'a'; MAX_USER_DATA_BYTES + 1]);
        a.user_data = Some(big.path().into());
        let m = usage(&a);
        assert!(m.contains("65537 bytes") && m.contains("64 KiB"), "{m}");
        let exact = file(&vec![b'a'; MAX_USER_DATA_BYTES]);
        a.user_data = Some(exact.path().into());
        assert_eq!(
            a.body().unwrap().user_data.unwrap().len(),
            MAX_USER_DATA_BYTES
        );
        let binary = file(&[0x1f, 0x8b, 0x08, 0xff]);
        a.user_data = Some(binary.path().into());
        assert!(usage(&a).contains("not UTF-8"));
        let none = file(b"");
        a.user_data = Some(none.path().into());
        assert!(usage(&a).contains("is empty"));
    }

    #[tokio::test]
    async fn nothing_is_sent_before_the_files_are_checked() {
        // No token: a usage error (2) rather than 5 proves the check ran
        // first and nothing was sent.
        let g = GlobalOpts {
            url: "http://127.0.0.1:1".parse().unwrap(),
            token: None,
            output: OutputFormat::Table,
        };
        let mut a = Deploy::try_parse_from(["x", "n", "--image", "i"])
            .unwrap()
            .a;
        a.ssh_keys = vec!["/nonexistent/id.pub".into()];
        assert_eq!(run_deploy(&g, a).await.unwrap_err().exit_code(), 2);
        let r = Release::try_parse_from(["x", "n", "--allow-overwrite"])
            .unwrap()
            .a;
        assert_eq!(run_release(&g, r).await.unwrap_err().exit_code(), 2);
        let mut r = Rescue::try_parse_from(["x", "n"]).unwrap().a;
        r.ssh_keys = vec!["/nonexistent/id.pub".into()];
        assert_eq!(run_rescue(&g, r).await.unwrap_err().exit_code(), 2);
        let a = Deploy::try_parse_from(["x", "n", "--image", "i"])
            .unwrap()
            .a;
        assert!(matches!(run_deploy(&g, a).await, Err(CliError::NoToken)));
    }

    #[test]
    fn release_and_rescue_arguments() {
        let r = Release::try_parse_from(["x", "n"]).unwrap().a;
        assert_eq!(r.body().unwrap(), ReleaseRequest::default());
        let r =
            Release::try_parse_from(["x", "n", "--erase", "SECURE", "--allow-overwrite", "--wait"])
                .unwrap()
                .a;
        assert!(r.wait);
        assert_eq!(
            r.body().unwrap(),
            ReleaseRequest {
                erase: EraseMode::Secure,
                allow_overwrite: true
            }
        );
        let e = Release::try_parse_from(["x", "n", "--erase", "shred"])
            .err()
            .unwrap();
        assert!(e.to_string().contains("quick or secure"), "{e}");
        let r = Release::try_parse_from(["x", "n", "--allow-overwrite"])
            .unwrap()
            .a;
        assert_eq!(r.body().unwrap_err().exit_code(), 2);

        let keys = file(ED25519.as_bytes());
        let k = keys.path().to_str().unwrap();
        let r = Rescue::try_parse_from(["x", "n", "--ssh-key", k])
            .unwrap()
            .a;
        assert!(!r.exit);
        assert_eq!(read_ssh_keys(&r.ssh_keys).unwrap(), [ED25519]);
        let r = Rescue::try_parse_from(["x", "--exit", "n"]).unwrap().a;
        assert!(r.exit && r.target == "n");
        let e = Rescue::try_parse_from(["x", "--exit", "n", "--ssh-key", k])
            .err()
            .unwrap();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn refusals_get_a_next_step() {
        let problem = |state| Problem {
            type_: "x".into(),
            title: "Conflict".into(),
            status: 409,
            detail: "cannot move from new to deploying.".into(),
            instance: None,
            field: None,
            existing_id: None,
            current_state: state,
        };
        let e = with_hint(
            Action::Deploy,
            "node-01",
            CliError::Api {
                status: 409,
                problem: Box::new(problem(Some(MachineState::New))),
            },
        );
        assert_eq!(
            e.to_string(),
            "cannot move from new to deploying; commission it first: anvil machine commission node-01"
        );
        assert_eq!(e.exit_code(), 4);
        // Without a state nothing is guessed.
        let e = with_hint(
            Action::Deploy,
            "node-01",
            CliError::Api {
                status: 409,
                problem: Box::new(problem(None)),
            },
        );
        assert_eq!(e.to_string(), "cannot move from new to deploying.");
        assert_eq!(Action::Release.hint(MachineState::Deployed), None);
    }

    fn at(s: i64) -> time::OffsetDateTime {
        time::OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(s)
    }

    fn job(status: JobStatus) -> Job {
        Job {
            id: Uuid::from_u128(7),
            kind: "deploy".into(),
            machine_id: Some(Uuid::nil()),
            status,
            actor: "user:ops".into(),
            params: serde_json::json!({}),
            result: None,
            error: (status == JobStatus::Failed).then(|| "BMC refused the power-on".into()),
            created_at: at(100),
            started_at: None,
            finished_at: None,
        }
    }

    fn step(kind: StepKind, status: StepStatus, progress: Option<(u64, u64)>) -> RunStep {
        RunStep {
            id: Uuid::from_u128(kind as u128 + 1),
            index: 0,
            kind,
            params: serde_json::json!({}),
            status,
            last_seq: 0,
            message: None,
            progress: progress.map(|(done, total)| StepProgress { done, total }),
            result: None,
            started_at: None,
            finished_at: None,
        }
    }

    fn run(purpose: AgentPurpose, state: RunState, steps: Vec<RunStep>) -> CommissioningRun {
        CommissioningRun {
            id: Uuid::nil(),
            machine_id: Uuid::nil(),
            number: 2,
            purpose,
            state,
            tests: vec![],
            job_id: None,
            failure_reason: (state == RunState::Failed)
                .then(|| "write_image failed: sha256 mismatch after 3 attempts".into()),
            failed_step: None,
            system_uuid: None,
            agent_version: None,
            started_at: at(101),
            registered_at: Some(at(130)),
            finished_at: None,
            deadline: at(2500),
            steps,
        }
    }

    fn deploy_steps(write: StepStatus, progress: Option<(u64, u64)>) -> Vec<RunStep> {
        use StepStatus::*;
        vec![
            step(StepKind::Erase, Succeeded, None),
            step(StepKind::WriteImage, write, progress),
            step(StepKind::GrowRoot, Pending, None),
            step(StepKind::CloudInit, Pending, None),
            step(StepKind::BootEntry, Pending, None),
        ]
    }

    #[test]
    fn progress_shows_step_bytes_and_rate() {
        assert_eq!(progress_view(None, None).line, "starting");

        let mut r = run(
            AgentPurpose::Deployment,
            RunState::Running,
            deploy_steps(StepStatus::Progress, Some((512 << 20, 2 << 30))),
        );
        r.steps[1].message = Some("writing /dev/vda".into());
        let v = progress_view(Some(&r), Some(85.3 * 1024.0 * 1024.0));
        assert_eq!((v.steps_done, v.steps_total), (1, 5));
        assert_eq!(v.line, "write_image (2/5): writing /dev/vda");
        assert_eq!(
            v.detail,
            Some(DetailBar {
                done: 512 << 20,
                total: 2 << 30,
                text: "512.0 MiB of 2.0 GiB at 85.3 MiB/s".into()
            })
        );

        r.registered_at = None;
        assert_eq!(
            progress_view(Some(&r), None).line,
            "booting; waiting for the agent"
        );
        r.registered_at = Some(at(130));
        r.steps[1].status = StepStatus::Succeeded;
        let v = progress_view(Some(&r), None);
        assert_eq!(
            (v.steps_done, v.line.as_str()),
            (2, "grow_root (3/5): next")
        );
        assert_eq!(v.detail, None);

        let failed = run(
            AgentPurpose::Deployment,
            RunState::Failed,
            deploy_steps(StepStatus::Failed, None),
        );
        assert_eq!(
            progress_view(Some(&failed), None).line,
            "failed: write_image failed: sha256 mismatch after 3 attempts"
        );
    }

    #[test]
    fn rate_is_measured_over_a_window_per_step() {
        let mut m = RateMeter::default();
        let a = Uuid::from_u128(1);
        assert_eq!(m.push(a, 0.0, 0), None);
        assert_eq!(m.push(a, 1.0, 100), Some(100.0));
        // No new report: same count, the rate is kept, not diluted.
        assert_eq!(m.push(a, 2.0, 100), Some(100.0));
        assert_eq!(m.push(a, 3.0, 700), Some(700.0 / 3.0));
        // Old samples leave the window.
        assert_eq!(m.push(a, 13.5, 1700), Some(1000.0 / 10.5));
        // A new step starts over.
        assert_eq!(m.push(Uuid::from_u128(2), 14.0, 5), None);
    }

    #[test]
    fn following_ends_with_the_run() {
        let j = job(JobStatus::Running);
        let mut mine = run(
            AgentPurpose::Deployment,
            RunState::Running,
            deploy_steps(StepStatus::Progress, None),
        );
        mine.job_id = Some(j.id);
        let mut older = run(AgentPurpose::Deployment, RunState::Failed, vec![]);
        older.started_at = at(10);
        let commissioning = run(AgentPurpose::Commissioning, RunState::Succeeded, vec![]);
        let runs = vec![commissioning.clone(), mine.clone(), older.clone()];
        assert_eq!(pick_run(&runs, AgentPurpose::Deployment, &j), Some(&mine));
        // Without a job id on the runs: the newest of the purpose since the job.
        mine.job_id = None;
        let runs = vec![commissioning, mine.clone(), older.clone()];
        assert_eq!(pick_run(&runs, AgentPurpose::Deployment, &j), Some(&mine));
        assert_eq!(pick_run(&[older], AgentPurpose::Deployment, &j), None);

        let p = AgentPurpose::Deployment;
        assert_eq!(decide(Some(&mine), p, &j), None);
        assert_eq!(decide(None, p, &j), None);
        mine.state = RunState::Succeeded;
        assert_eq!(decide(Some(&mine), p, &j), Some(Outcome::Succeeded));
        mine.state = RunState::Failed;
        mine.failure_reason = Some("write_image failed: sha256 mismatch".into());
        assert_eq!(
            decide(Some(&mine), p, &j),
            Some(Outcome::Failed(
                "write_image failed: sha256 mismatch".into()
            ))
        );
        mine.state = RunState::Aborted;
        mine.failure_reason = None;
        assert_eq!(
            decide(Some(&mine), p, &j),
            Some(Outcome::Failed("the run was aborted".into()))
        );
        assert_eq!(
            decide(None, p, &job(JobStatus::Failed)),
            Some(Outcome::Failed("BMC refused the power-on".into()))
        );

        // Rescue: up once its step succeeded, while the run still runs.
        let mut rescue = run(
            AgentPurpose::Rescue,
            RunState::Running,
            vec![step(StepKind::Rescue, StepStatus::Progress, None)],
        );
        assert_eq!(decide(Some(&rescue), AgentPurpose::Rescue, &j), None);
        rescue.steps[0].status = StepStatus::Succeeded;
        assert_eq!(
            decide(Some(&rescue), AgentPurpose::Rescue, &j),
            Some(Outcome::Succeeded)
        );
    }

    #[test]
    fn only_blips_are_waited_out() {
        let api = |status| CliError::Api {
            status,
            problem: Box::new(Problem {
                type_: "about:blank".into(),
                title: "x".into(),
                status,
                detail: String::new(),
                instance: None,
                field: None,
                existing_id: None,
                current_state: None,
            }),
        };
        assert!(transient(&CliError::Unreachable {
            url: "http://a".into(),
            reason: "Connection refused".into()
        }));
        assert!(transient(&api(503)) && transient(&api(502)) && transient(&api(504)));
        assert!(!transient(&api(500)) && !transient(&api(404)) && !transient(&api(401)));
        assert!(!transient(&CliError::Protocol("bad json".into())));
    }

    #[test]
    fn finished_run_is_a_table_of_steps() {
        let mut r = run(
            AgentPurpose::Deployment,
            RunState::Succeeded,
            deploy_steps(StepStatus::Succeeded, None),
        );
        r.steps[1].started_at = Some(at(140));
        r.steps[1].finished_at = Some(at(166));
        r.steps[1].message = Some("64.0 MiB written, sha256 verified".into());
        let t = run_table(&r);
        let line = t.lines().find(|l| l.contains("write_image")).unwrap();
        assert!(
            line.contains("succeeded")
                && line.contains("26.0 s")
                && line.contains("sha256 verified"),
            "{t}"
        );
        assert_eq!(t.lines().count(), 6, "{t}");
    }
}
