//! The Deployment card of a machine page and its actions: the deploy form
//! (image, SSH keys, user data, root disk from the machine's hardware facts,
//! cloud-init data source), Release (quick or secure erase), Rescue and Exit
//! rescue, the live steps of the current run, and the page with the rendered
//! cloud-init data (user-data secrets masked).
//!
//! Every action goes through `App::{deploy, release, rescue, exit_rescue}`.
//! A refused action shows the machine page again with the message beside the
//! field it is about (or above the card for the lifecycle and the BMC), and
//! the operator's input kept; it is never an error page.

use super::machines::{Feedback, render_machine};
use super::{fmt_bytes, fmt_duration, sentence};
use crate::auth::{CsrfForm, HasCsrfToken, Session};
use crate::error::PageError;
use crate::views::Layout;
use anvil_api_types::agent::{AgentPurpose, CommissioningRun, RunState, StepKind, StepStatus};
use anvil_api_types::deploy::{
    ConfigDriveKind, DeployRequest, EraseMode, RaidRequest, ReleaseRequest, RescueRequest,
    RootDiskHint,
};
use anvil_api_types::images::Image;
use anvil_core::cloudinit::Flavor;
use anvil_core::{App, Error, Principal};
use anvil_inventory::HardwareFacts;
use anvil_types::{Machine, MachineState};
use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use http::StatusCode;
use serde::Deserialize;

/// How often the card reloads while a run is going.
const POLL_SECONDS: u32 = 3;

/// The largest user data a deploy takes (`DeployRequest::user_data`).
pub(crate) const MAX_USER_DATA_BYTES: usize = 64 * 1024;

/// An `<option>`.
pub(crate) struct Choice {
    pub(crate) value: String,
    pub(crate) label: String,
    pub(crate) selected: bool,
}

/// The deploy form as posted; also what is shown again after a refusal.
#[derive(Deserialize, Default, Clone, Debug, PartialEq)]
#[serde(default)]
pub(crate) struct DeployForm {
    csrf_token: String,
    pub(crate) image: String,
    /// One key a line (browsers send CRLF).
    pub(crate) ssh_keys: String,
    pub(crate) user_data: String,
    /// A `RootDiskHint` as text; "" for the default.
    pub(crate) root_disk: String,
    /// `nocloud` or `config_drive`; "" for the default.
    pub(crate) config_drive: String,
    /// The RAID 1 checkbox: "on" when ticked, absent otherwise.
    pub(crate) raid1: String,
}

impl HasCsrfToken for DeployForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

/// Messages shown at the deploy form's fields.
#[derive(Default, Debug, Clone, PartialEq)]
pub(crate) struct DeployErrors {
    pub(crate) image: Option<String>,
    pub(crate) ssh_keys: Option<String>,
    pub(crate) user_data: Option<String>,
    pub(crate) root_disk: Option<String>,
    pub(crate) config_drive: Option<String>,
    pub(crate) raid: Option<String>,
}

impl DeployErrors {
    fn is_empty(&self) -> bool {
        *self == DeployErrors::default()
    }

    /// Puts `message` at the field a request path names (`ssh_keys[1]`,
    /// `root_disk`, …); false when no field of the form matches.
    fn set(&mut self, field: &str, message: String) -> bool {
        let name = field.split(['[', '.']).next().unwrap_or(field);
        let slot = match name {
            "image" => &mut self.image,
            "ssh_keys" => &mut self.ssh_keys,
            "user_data" => &mut self.user_data,
            "root_disk" => &mut self.root_disk,
            "config_drive" => &mut self.config_drive,
            "raid" => &mut self.raid,
            _ => return false,
        };
        *slot = Some(message);
        true
    }
}

/// What a refused action puts back on the card.
#[derive(Default)]
pub(crate) struct CardFeedback {
    /// The deploy form as the operator filled it in.
    pub(crate) form: Option<DeployForm>,
    pub(crate) errors: DeployErrors,
    /// Above the card: a refused move, a BMC that failed, …
    pub(crate) message: Option<String>,
    /// The rescue keys typed before a refusal.
    pub(crate) rescue_keys: String,
}

/// One step of the current run.
pub(crate) struct StepView {
    pub(crate) label: &'static str,
    /// `pending`, `started`, `progress`, `succeeded`, `failed`, `skipped`.
    pub(crate) status: &'static str,
    /// Percent done when the step reports progress.
    pub(crate) percent: Option<u8>,
    /// "512.0 MiB of 2.0 GiB", the agent's message, how long it took.
    pub(crate) detail: String,
}

/// The newest deployment, release or rescue run.
pub(crate) struct RunView {
    /// "Deployment, run 3"
    pub(crate) title: String,
    /// `running`, `succeeded`, `failed`, `aborted`.
    pub(crate) state: &'static str,
    /// Where it is, or how it ended.
    pub(crate) line: String,
    pub(crate) steps: Vec<StepView>,
}

/// The card.
pub(crate) struct DeploymentView {
    pub(crate) machine_id: String,
    pub(crate) csrf: String,
    pub(crate) polling: bool,
    pub(crate) poll_seconds: u32,
    /// The deploy form: the state allows it and there are hardware facts.
    pub(crate) can_deploy: bool,
    /// The state allows a deploy but the machine was never commissioned:
    /// the server would refuse, so the card says so instead of a form.
    pub(crate) needs_commissioning: bool,
    pub(crate) can_release: bool,
    pub(crate) can_rescue: bool,
    pub(crate) in_rescue: bool,
    pub(crate) images: Vec<Choice>,
    pub(crate) disks: Vec<Choice>,
    /// Whether the machine has hardware facts to choose a disk from.
    pub(crate) has_disks: bool,
    pub(crate) config_drives: Vec<Choice>,
    /// The RAID 1 checkbox is ticked (kept after a refusal).
    pub(crate) raid1: bool,
    pub(crate) ssh_keys: String,
    pub(crate) user_data: String,
    pub(crate) errors: DeployErrors,
    pub(crate) message: Option<String>,
    pub(crate) rescue_keys: String,
    pub(crate) run: Option<RunView>,
    /// The image of the machine's newest successful deployment, if known.
    pub(crate) deployed_image: Option<String>,
}

/// The deploy request from the form, or the messages for its fields.
/// Checks what can be checked without the store; the server checks again.
// One message slot per field, built once per form post: boxing it would
// only add noise at every caller.
#[allow(clippy::result_large_err)]
pub(crate) fn parse_deploy(f: &DeployForm) -> Result<DeployRequest, DeployErrors> {
    let mut errors = DeployErrors::default();
    let image = f.image.trim().to_string();
    if image.is_empty() {
        errors.image = Some("Choose an image.".into());
    }
    let mut ssh_keys: Vec<String> = Vec::new();
    for (n, line) in f.ssh_keys.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.contains("PRIVATE KEY") {
            errors.ssh_keys =
                Some("This is a private key. Paste the public key (the .pub file) instead.".into());
            break;
        }
        match anvil_cloudinit::validate_ssh_key(ssh_keys.len(), line) {
            Ok(k) if !ssh_keys.contains(&k) => ssh_keys.push(k),
            Ok(_) => {}
            Err(anvil_cloudinit::Error::SshKey { reason, .. }) => {
                errors.ssh_keys = Some(format!("Line {}: {}.", n + 1, reason));
                break;
            }
            Err(e) => {
                errors.ssh_keys = Some(format!("Line {}: {e}.", n + 1));
                break;
            }
        }
    }
    // Browsers send a textarea's line breaks as CRLF; cloud-init and the
    // scripts it runs expect what the operator typed, with LF.
    let user_data = f.user_data.replace("\r\n", "\n");
    let user_data = if user_data.trim().is_empty() {
        None
    } else if user_data.len() > MAX_USER_DATA_BYTES {
        errors.user_data = Some(format!(
            "User data is {} bytes; at most {MAX_USER_DATA_BYTES} (64 KiB) are allowed.",
            user_data.len()
        ));
        None
    } else {
        Some(user_data)
    };
    let root_disk = match f.root_disk.trim() {
        "" => None,
        hint => match RootDiskHint::parse(hint) {
            Ok(h) => Some(h),
            Err(e) => {
                errors.root_disk = Some(sentence(&e));
                None
            }
        },
    };
    let config_drive = match f.config_drive.trim() {
        "" => None,
        "nocloud" => Some(ConfigDriveKind::Nocloud),
        "config_drive" => Some(ConfigDriveKind::ConfigDrive),
        other => {
            errors.config_drive = Some(format!(
                "{other:?} is not a cloud-init data source; choose NoCloud or config drive."
            ));
            None
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    // A mirror picks its own two disks (the two smallest of equal size);
    // the root-disk choice does not apply to it.
    let raid = (!f.raid1.trim().is_empty()).then(|| RaidRequest {
        level: 1,
        disks: Vec::new(),
    });
    let root_disk = if raid.is_some() { None } else { root_disk };
    Ok(DeployRequest {
        image,
        ssh_keys,
        user_data,
        root_disk,
        config_drive,
        raid,
    })
}

/// The states each action starts from (the agreed flow; the server decides).
fn can_deploy(s: MachineState) -> bool {
    matches!(s, MachineState::Ready | MachineState::Allocated)
}
fn can_release(s: MachineState) -> bool {
    matches!(
        s,
        MachineState::Deployed
            | MachineState::Failed
            | MachineState::Broken
            | MachineState::Allocated
    )
}
fn can_rescue(s: MachineState) -> bool {
    matches!(
        s,
        MachineState::Deployed | MachineState::Ready | MachineState::Failed | MachineState::Broken
    )
}

fn purpose_label(p: AgentPurpose) -> &'static str {
    match p {
        AgentPurpose::Commissioning => "Commissioning",
        AgentPurpose::Deployment => "Deployment",
        AgentPurpose::Release => "Release",
        AgentPurpose::Rescue => "Rescue",
    }
}

fn step_label(k: StepKind) -> &'static str {
    match k {
        StepKind::Erase => "Erase disks",
        StepKind::WriteImage => "Write image",
        StepKind::GrowRoot => "Grow root partition",
        StepKind::CloudInit => "cloud-init data",
        StepKind::BootEntry => "Boot entry",
        StepKind::Rescue => "Rescue system",
        StepKind::Raid => "Build RAID 1",
        StepKind::RaidSync => "RAID 1 resync",
        other => other.as_str(),
    }
}

/// Steps whose progress counts bytes.
fn counts_bytes(k: StepKind) -> bool {
    matches!(
        k,
        StepKind::WriteImage | StepKind::CloudInit | StepKind::Erase | StepKind::RaidSync
    )
}

fn run_view(run: &CommissioningRun) -> RunView {
    let steps = run
        .steps
        .iter()
        .map(|s| {
            let mut detail = Vec::new();
            let mut percent = None;
            if let Some(p) = s.progress.filter(|_| !s.status.is_finished()) {
                percent = p
                    .done
                    .min(p.total)
                    .saturating_mul(100)
                    .checked_div(p.total)
                    .map(|v| v as u8);
                detail.push(if counts_bytes(s.kind) {
                    format!("{} of {}", fmt_bytes(p.done), fmt_bytes(p.total))
                } else {
                    format!("{} of {}", p.done, p.total)
                });
            }
            if let Some(m) = s
                .message
                .as_deref()
                .map(str::trim)
                .filter(|m| !m.is_empty())
            {
                detail.push(m.chars().take(200).collect());
            }
            if let (Some(a), Some(b)) = (s.started_at, s.finished_at) {
                detail.push(fmt_duration(b - a));
            }
            StepView {
                label: step_label(s.kind),
                status: s.status.as_str(),
                percent,
                detail: detail.join(" · "),
            }
        })
        .collect();
    let line = match run.state {
        RunState::Running if run.registered_at.is_none() => {
            "Booting the machine; waiting for the agent.".to_string()
        }
        RunState::Running => match run.steps.iter().find(|s| !s.status.is_finished()) {
            Some(s) if s.status == StepStatus::Pending => format!("Next: {}.", step_label(s.kind)),
            Some(s) => format!("{}…", step_label(s.kind)),
            None if run.purpose == AgentPurpose::Rescue => {
                "The rescue system is up: log in as root over SSH.".to_string()
            }
            None => "Finishing.".to_string(),
        },
        RunState::Succeeded => "Succeeded.".to_string(),
        RunState::Failed | RunState::Aborted => format!(
            "{}: {}",
            if run.state == RunState::Failed {
                "Failed"
            } else {
                "Aborted"
            },
            run.failure_reason
                .as_deref()
                .unwrap_or("no reason recorded")
        ),
    };
    RunView {
        title: format!("{}, run {}", purpose_label(run.purpose), run.number),
        state: run.state.as_str(),
        line,
        steps,
    }
}

/// The image a deployment run wrote: its `write_image` step names the
/// sha256, which the library maps back to a name.
fn deployed_image(runs: &[CommissioningRun], images: &[Image]) -> Option<String> {
    let run = runs
        .iter()
        .find(|r| r.purpose == AgentPurpose::Deployment && r.state == RunState::Succeeded)?;
    let sha = run
        .steps
        .iter()
        .find(|s| s.kind == StepKind::WriteImage)?
        .params
        .get("sha256")?
        .as_str()?;
    images
        .iter()
        .find(|i| i.sha256 == sha)
        .map(|i| i.name.clone())
}

/// A stable hint for a disk: WWN, else serial, else the kernel name.
fn disk_hint(d: &anvil_inventory::Disk) -> RootDiskHint {
    match (&d.wwn, &d.serial) {
        (Some(w), _) if !w.trim().is_empty() => RootDiskHint::Wwn(w.trim().to_string()),
        (_, Some(s)) if !s.trim().is_empty() => RootDiskHint::Serial(s.trim().to_string()),
        _ => RootDiskHint::Name(d.name.clone()),
    }
}

/// The card's view from what the store holds. `runs` are newest first.
pub(crate) fn deployment_view(
    m: &Machine,
    csrf: String,
    images: &[Image],
    facts: Option<&HardwareFacts>,
    runs: &[CommissioningRun],
    fb: CardFeedback,
) -> DeploymentView {
    let form = fb.form.unwrap_or_default();
    let run = runs
        .iter()
        .find(|r| r.purpose != AgentPurpose::Commissioning);
    let polling = run.is_some_and(|r| r.state == RunState::Running)
        && matches!(
            m.state,
            MachineState::Deploying | MachineState::Releasing | MachineState::Rescue
        );
    let images_choices = images
        .iter()
        // Disk images and installers (an installer deploy refuses user data
        // and config-drive choices at their fields, as the API does).
        .filter(|i| i.kind == "disk" || i.kind == "installer")
        .map(|i| {
            let mut label = i.name.clone();
            let os = [i.os.as_deref(), i.release.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
            let extra: Vec<String> = [
                (!os.is_empty()).then_some(os),
                i.firmware.clone(),
                Some(if i.kind == "installer" {
                    "installer".to_string()
                } else {
                    fmt_bytes(i.raw_size)
                }),
            ]
            .into_iter()
            .flatten()
            .collect();
            label.push_str(&format!(" ({})", extra.join(", ")));
            Choice {
                selected: i.name == form.image.trim(),
                value: i.name.clone(),
                label,
            }
        })
        .collect();
    let chosen_disk = form.root_disk.trim();
    let mut disks = vec![
        Choice {
            value: String::new(),
            label: "Smallest disk (default)".into(),
            selected: chosen_disk.is_empty(),
        },
        Choice {
            value: "largest".into(),
            label: "Largest disk".into(),
            selected: chosen_disk == "largest",
        },
    ];
    let mut has_disks = false;
    for d in facts
        .map(|f| f.disks.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|d| !d.removable && !d.read_only)
    {
        has_disks = true;
        let hint = disk_hint(d).to_string();
        let mut label = format!("{} — {}", d.name, fmt_bytes(d.size_bytes));
        if let Some(model) = d.model.as_deref().filter(|s| !s.trim().is_empty()) {
            label.push_str(&format!(" {}", model.trim()));
        }
        if let Some(serial) = d.serial.as_deref().filter(|s| !s.trim().is_empty()) {
            label.push_str(&format!(" (serial {})", serial.trim()));
        }
        disks.push(Choice {
            selected: chosen_disk == hint,
            value: hint,
            label,
        });
    }
    // A hint typed elsewhere (the API's forms) that is not one of the
    // choices stays selectable, so a refused form keeps it.
    if !chosen_disk.is_empty() && !disks.iter().any(|c| c.selected) {
        disks.push(Choice {
            value: chosen_disk.to_string(),
            label: chosen_disk.to_string(),
            selected: true,
        });
    }
    let config_drives = [
        ("nocloud", "NoCloud (CIDATA partition)"),
        ("config_drive", "OpenStack config drive (config-2)"),
    ]
    .into_iter()
    .map(|(value, label)| Choice {
        value: value.into(),
        label: label.into(),
        selected: form.config_drive == value,
    })
    .collect();
    DeploymentView {
        machine_id: m.id.to_string(),
        csrf,
        polling,
        poll_seconds: POLL_SECONDS,
        can_deploy: can_deploy(m.state) && facts.is_some(),
        needs_commissioning: can_deploy(m.state) && facts.is_none(),
        can_release: can_release(m.state),
        can_rescue: can_rescue(m.state),
        in_rescue: m.state == MachineState::Rescue,
        images: images_choices,
        disks,
        has_disks,
        config_drives,
        raid1: !form.raid1.trim().is_empty(),
        ssh_keys: form.ssh_keys,
        user_data: form.user_data,
        errors: fb.errors,
        message: fb.message,
        rescue_keys: fb.rescue_keys,
        run: run.map(|r| {
            let mut v = run_view(r);
            // A rescue run ends when its SSH server listens; the system
            // stays up until the operator leaves rescue.
            if r.purpose == AgentPurpose::Rescue
                && r.state == RunState::Succeeded
                && m.state == MachineState::Rescue
            {
                v.line = "The rescue system is up: log in as root over SSH.".into();
            }
            v
        }),
        deployed_image: if m.state == MachineState::Deployed {
            deployed_image(runs, images)
        } else {
            None
        },
    }
}

/// Reads what the card shows: images, hardware facts, runs.
pub(crate) async fn load(
    app: &App,
    session: &Session,
    m: &Machine,
    fb: CardFeedback,
) -> Result<DeploymentView, PageError> {
    let by = Principal::User(session.user.clone());
    let id = m.id.to_string();
    let images = app.list_images(&by).await?;
    let runs = app.commissioning_runs(&id).await?;
    let facts = match app.machine_hardware(&id, None).await {
        Ok(hw) => serde_json::from_value::<HardwareFacts>(hw.facts).ok(),
        Err(Error::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    Ok(deployment_view(
        m,
        session.csrf_token.clone(),
        &images,
        facts.as_ref(),
        &runs.items,
        fb,
    ))
}

#[derive(Template, WebTemplate)]
#[template(path = "partials/deployment.html")]
struct DeploymentPartial {
    d: DeploymentView,
}

/// `GET /machines/{id}/deployment`: the card alone (its polling). Only a
/// card that polls asks for it, so a card that no longer polls means the run
/// just ended: htmx is told to reload the page, whose state badge, lifecycle
/// and power cards changed with it.
pub(crate) async fn fragment(
    session: Session,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let m = app.get_machine(&id).await?;
    let d = load(&app, &session, &m, CardFeedback::default()).await?;
    let ended = !d.polling;
    let mut response = DeploymentPartial { d }.into_response();
    if ended {
        response
            .headers_mut()
            .insert("HX-Refresh", http::HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Where a refused action's core error goes: a field of the deploy form, the
/// card's message (with the status of the page), or an error page.
fn place_error(e: Error, fb: &mut CardFeedback) -> Result<StatusCode, PageError> {
    match e {
        Error::Invalid { field, message } => {
            if !fb.errors.set(&field, sentence(&message)) {
                fb.message = Some(sentence(&format!("{field}: {message}")));
            }
            Ok(StatusCode::UNPROCESSABLE_ENTITY)
        }
        Error::NotFound { kind: "image", id } => {
            fb.errors.image = Some(format!("There is no image {id:?} (any more)."));
            Ok(StatusCode::UNPROCESSABLE_ENTITY)
        }
        e @ Error::TooLarge { .. } => {
            let message = sentence(&e.to_string());
            if !fb.errors.set("user_data", message.clone()) {
                fb.message = Some(message);
            }
            Ok(StatusCode::UNPROCESSABLE_ENTITY)
        }
        e @ (Error::Transition { .. }
        | Error::Concurrent { .. }
        | Error::Bmc(_)
        | Error::InUse { .. }) => {
            fb.message = Some(sentence(&e.to_string()));
            Ok(StatusCode::CONFLICT)
        }
        e @ Error::PowerDisabled => {
            fb.message = Some(sentence(&e.to_string()));
            Ok(StatusCode::UNPROCESSABLE_ENTITY)
        }
        other => Err(other.into()),
    }
}

/// The machine page again with the card's feedback.
async fn refused(
    app: &App,
    session: &Session,
    id: &str,
    fb: CardFeedback,
    status: StatusCode,
) -> Result<Response, PageError> {
    let m = app.get_machine(id).await?;
    let feedback = Feedback {
        deployment: fb,
        ..Default::default()
    };
    render_machine(app, session, m, feedback, status).await
}

/// After an accepted action: the machine page, whose card follows the run.
fn started(machine: &str, action: &str) -> Response {
    Redirect::to(&format!(
        "/machines/{machine}?deployment={action}#deployment"
    ))
    .into_response()
}

/// The banner after a redirect, from known values only.
pub(crate) fn notice(action: &str) -> Option<String> {
    Some(
        match action {
            "deploy" => "Deployment started. The machine boots the agent, which writes the image; the Deployment card follows it.",
            "release" => "Release started. The machine boots the agent, which erases its disks; then it is ready.",
            "rescue" => "Rescue started. The machine boots the rescue system; log in as root over SSH once it is up.",
            "exit-rescue" => "Leaving rescue: the machine goes back to its previous state and is power-cycled.",
            _ => return None,
        }
        .to_string(),
    )
}

/// `POST /machines/{id}/deploy`.
pub(crate) async fn deploy(
    State(app): State<App>,
    Path(id): Path<String>,
    CsrfForm { session, form }: CsrfForm<DeployForm>,
) -> Result<Response, PageError> {
    let mut fb = CardFeedback {
        form: Some(form.clone()),
        ..Default::default()
    };
    let req = match parse_deploy(&form) {
        Ok(req) => req,
        Err(errors) => {
            fb.errors = errors;
            return refused(&app, &session, &id, fb, StatusCode::UNPROCESSABLE_ENTITY).await;
        }
    };
    let by = Principal::User(session.user.clone());
    match app.deploy(&by, &id, req).await {
        Ok(job) => Ok(started(
            &job.machine_id.map_or(id, |m| m.to_string()),
            "deploy",
        )),
        Err(e) => {
            let status = place_error(e, &mut fb)?;
            refused(&app, &session, &id, fb, status).await
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct ReleaseForm {
    csrf_token: String,
    erase: String,
    /// The checkbox: "on" when ticked.
    allow_overwrite: String,
}

impl HasCsrfToken for ReleaseForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

/// `POST /machines/{id}/release`.
pub(crate) async fn release(
    State(app): State<App>,
    Path(id): Path<String>,
    CsrfForm { session, form }: CsrfForm<ReleaseForm>,
) -> Result<Response, PageError> {
    let mut fb = CardFeedback::default();
    let erase = match form.erase.trim() {
        "" => EraseMode::Quick,
        e => match EraseMode::parse(e) {
            Some(m) => m,
            None => {
                fb.message = Some(format!(
                    "{e:?} is not an erase mode; choose quick or secure."
                ));
                return refused(&app, &session, &id, fb, StatusCode::UNPROCESSABLE_ENTITY).await;
            }
        },
    };
    let req = ReleaseRequest {
        erase,
        allow_overwrite: erase == EraseMode::Secure && !form.allow_overwrite.is_empty(),
    };
    let by = Principal::User(session.user.clone());
    match app.release(&by, &id, req).await {
        Ok(job) => Ok(started(
            &job.machine_id.map_or(id, |m| m.to_string()),
            "release",
        )),
        Err(e) => {
            let status = place_error(e, &mut fb)?;
            refused(&app, &session, &id, fb, status).await
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct RescueForm {
    csrf_token: String,
    ssh_keys: String,
}

impl HasCsrfToken for RescueForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

/// `POST /machines/{id}/rescue`: keys optional (the last deployment's).
pub(crate) async fn rescue(
    State(app): State<App>,
    Path(id): Path<String>,
    CsrfForm { session, form }: CsrfForm<RescueForm>,
) -> Result<Response, PageError> {
    let mut fb = CardFeedback {
        rescue_keys: form.ssh_keys.clone(),
        ..Default::default()
    };
    // The deploy form's key rules, reported above the card.
    let keys = DeployForm {
        image: "-".into(),
        ssh_keys: form.ssh_keys.clone(),
        ..Default::default()
    };
    let ssh_keys = match parse_deploy(&keys) {
        Ok(r) => r.ssh_keys,
        Err(e) => {
            fb.message = Some(format!(
                "Rescue SSH keys: {}",
                e.ssh_keys.unwrap_or_default()
            ));
            return refused(&app, &session, &id, fb, StatusCode::UNPROCESSABLE_ENTITY).await;
        }
    };
    let by = Principal::User(session.user.clone());
    match app.rescue(&by, &id, RescueRequest { ssh_keys }).await {
        Ok(job) => Ok(started(
            &job.machine_id.map_or(id, |m| m.to_string()),
            "rescue",
        )),
        Err(e) => {
            let status = place_error(e, &mut fb)?;
            if let Some(k) = fb.errors.ssh_keys.take() {
                fb.message = Some(format!("Rescue SSH keys: {k}"));
            }
            refused(&app, &session, &id, fb, status).await
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct PlainForm {
    csrf_token: String,
}

impl HasCsrfToken for PlainForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

/// `POST /machines/{id}/exit-rescue`.
pub(crate) async fn exit_rescue(
    State(app): State<App>,
    Path(id): Path<String>,
    CsrfForm { session, form: _ }: CsrfForm<PlainForm>,
) -> Result<Response, PageError> {
    let by = Principal::User(session.user.clone());
    match app.exit_rescue(&by, &id).await {
        Ok(job) => Ok(started(
            &job.machine_id.map_or(id, |m| m.to_string()),
            "exit-rescue",
        )),
        Err(e) => {
            let mut fb = CardFeedback::default();
            let status = place_error(e, &mut fb)?;
            refused(&app, &session, &id, fb, status).await
        }
    }
}

// ------------------------------------------------------------ cloud-init

pub(crate) struct FileView {
    pub(crate) path: String,
    pub(crate) content: String,
    pub(crate) masked: bool,
}

pub(crate) struct FlavorLink {
    pub(crate) value: &'static str,
    pub(crate) label: &'static str,
    pub(crate) selected: bool,
}

#[derive(Template, WebTemplate)]
#[template(path = "pages/cloud_init.html")]
struct CloudInitPage {
    layout: Layout,
    machine_id: String,
    hostname: String,
    flavors: Vec<FlavorLink>,
    label: &'static str,
    files: Vec<FileView>,
    /// Why nothing can be rendered (no network interface, …).
    problem: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct CloudInitParams {
    flavor: String,
}

/// `GET /machines/{id}/cloud-init[?flavor=nocloud|config_drive]`: the files
/// Anvil renders for the machine's deployment, user-data secrets masked.
pub(crate) async fn cloud_init_page(
    session: Session,
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<CloudInitParams>,
) -> Result<Response, PageError> {
    let m = app.get_machine(&id).await?;
    let flavor = match q.flavor.as_str() {
        "config_drive" | "config-drive" => Flavor::ConfigDrive,
        _ => Flavor::NoCloud,
    };
    let (files, problem) = match app.machine_cloud_init(&m.id.to_string(), flavor).await {
        Ok(files) => (files, None),
        Err(e @ Error::Invalid { .. }) => (Vec::new(), Some(sentence(&e.to_string()))),
        Err(e) => return Err(e.into()),
    };
    let page = CloudInitPage {
        layout: Layout::for_session(&session),
        machine_id: m.id.to_string(),
        hostname: m.hostname,
        flavors: [
            ("nocloud", "NoCloud", Flavor::NoCloud),
            ("config_drive", "Config drive", Flavor::ConfigDrive),
        ]
        .into_iter()
        .map(|(value, label, f)| FlavorLink {
            value,
            label,
            selected: f == flavor,
        })
        .collect(),
        label: flavor.label(),
        files: files
            .into_iter()
            .map(|f| FileView {
                path: f.path,
                content: f.content,
                masked: f.masked,
            })
            .collect(),
        problem,
    };
    Ok(page.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anvil_api_types::agent::{RunStep, StepProgress};
    use serde_json::json;
    use uuid::Uuid;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDnOU2zyIAnBcHkWVLvAxoUXE2FYKBuheYt6B6p3BVHR ops@example";

    fn form(image: &str, keys: &str, user_data: &str, disk: &str, drive: &str) -> DeployForm {
        DeployForm {
            csrf_token: "t".into(),
            image: image.into(),
            ssh_keys: keys.into(),
            user_data: user_data.into(),
            root_disk: disk.into(),
            config_drive: drive.into(),
            raid1: String::new(),
        }
    }

    #[test]
    fn the_raid1_checkbox_asks_for_a_mirror_and_drops_the_root_disk() {
        let mut f = form("img", "", "", "serial=S1", "");
        f.raid1 = "on".into();
        let req = parse_deploy(&f).unwrap();
        assert_eq!(
            req.raid,
            Some(RaidRequest {
                level: 1,
                disks: vec![]
            })
        );
        assert_eq!(req.root_disk, None);
        assert_eq!(
            parse_deploy(&form("img", "", "", "", "")).unwrap().raid,
            None
        );
        // The server's refusal of the mirror lands at the checkbox.
        let mut e = DeployErrors::default();
        assert!(e.set("raid", "RAID 1 needs two writable disks".into()));
        assert_eq!(e.raid.as_deref(), Some("RAID 1 needs two writable disks"));
    }

    #[test]
    fn the_form_becomes_a_deploy_request() {
        let keys = format!("# ops\r\n{KEY}\r\n\r\n{KEY}\r\n");
        let req = parse_deploy(&form(
            " debian-12 ",
            &keys,
            "#cloud-config\r\nruncmd: [echo hi]\r\n",
            "serial=S64HNE0R",
            "config_drive",
        ))
        .unwrap();
        assert_eq!(
            req,
            DeployRequest {
                image: "debian-12".into(),
                ssh_keys: vec![KEY.into()],
                user_data: Some("#cloud-config\nruncmd: [echo hi]\n".into()),
                root_disk: Some(RootDiskHint::Serial("S64HNE0R".into())),
                config_drive: Some(ConfigDriveKind::ConfigDrive),
                raid: None,
            }
        );
        let bare = parse_deploy(&form("img", "", "  \r\n", "", "")).unwrap();
        assert!(bare.ssh_keys.is_empty() && bare.user_data.is_none());
        assert_eq!((bare.root_disk, bare.config_drive), (None, None));
    }

    #[test]
    fn bad_fields_get_their_own_message() {
        let e = parse_deploy(&form(
            "",
            &format!("{KEY}\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5"),
            &"x".repeat(MAX_USER_DATA_BYTES + 1),
            "biggest",
            "iso",
        ))
        .unwrap_err();
        assert_eq!(e.image.as_deref(), Some("Choose an image."));
        let keys = e.ssh_keys.unwrap();
        assert!(keys.starts_with("Line 2: key data does not hold"), "{keys}");
        assert!(e.user_data.unwrap().contains("65537 bytes"));
        assert!(
            e.root_disk
                .unwrap()
                .starts_with("Root disk hint \"biggest\"")
        );
        assert!(e.config_drive.unwrap().contains("\"iso\""));
        let e = parse_deploy(&form(
            "i",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n",
            "",
            "",
            "",
        ))
        .unwrap_err();
        assert!(e.ssh_keys.unwrap().contains("private key"));
    }

    #[test]
    fn server_refusals_land_at_the_field() {
        let mut fb = CardFeedback::default();
        let st = place_error(Error::invalid("ssh_keys[0]", "unknown key type"), &mut fb).unwrap();
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(fb.errors.ssh_keys.as_deref(), Some("Unknown key type."));
        let st = place_error(
            Error::invalid("root_disk", "no disk matches serial=X"),
            &mut fb,
        )
        .unwrap();
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            fb.errors.root_disk.as_deref(),
            Some("No disk matches serial=X.")
        );
        place_error(
            Error::NotFound {
                kind: "image",
                id: "gone".into(),
            },
            &mut fb,
        )
        .unwrap();
        assert!(fb.errors.image.as_deref().unwrap().contains("\"gone\""));
        let st = place_error(Error::invalid("machine", "has no disks"), &mut fb).unwrap();
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(fb.message.as_deref(), Some("Machine: has no disks."));
        let st = place_error(
            Error::Transition {
                current: MachineState::New,
                source: anvil_types::TransitionError::NotAllowed {
                    from: MachineState::New,
                    to: MachineState::Deploying,
                },
            },
            &mut fb,
        )
        .unwrap();
        assert_eq!(st, StatusCode::CONFLICT);
        assert!(fb.message.unwrap().contains("new"));
        // A machine that is not there is an error page, not a form message.
        assert!(matches!(
            place_error(
                Error::NotFound {
                    kind: "machine",
                    id: "x".into()
                },
                &mut CardFeedback::default()
            ),
            Err(PageError::NotFound(_))
        ));
    }

    fn machine(state: MachineState) -> Machine {
        serde_json::from_value(json!({
            "id": Uuid::nil(), "hostname": "node-01", "state": state,
            "tags": [], "facts": {}, "interfaces": [], "bmc": null,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        }))
        .unwrap()
    }

    fn image(name: &str, sha: &str) -> Image {
        Image {
            id: Uuid::nil(),
            name: name.into(),
            kind: "disk".into(),
            os: Some("debian".into()),
            release: Some("12".into()),
            arch: Some("x86_64".into()),
            firmware: Some("bios+uefi".into()),
            login_user: Some("debian".into()),
            source_format: "qcow2".into(),
            source_size: 1,
            raw_size: 64 << 20,
            stored_size: 1,
            zero_bytes: 0,
            sha256: sha.into(),
            created_at: time::OffsetDateTime::UNIX_EPOCH,
            used_by: vec![],
        }
    }

    fn facts() -> HardwareFacts {
        serde_json::from_value(json!({
            "schema_version": 1,
            "cpu": {"sockets": 1, "cores": 1, "threads": 1},
            "memory": {"total_bytes": 1},
            "disks": [
                {"name": "nvme0n1", "model": "SAMSUNG MZQL2", "serial": "S64H", "wwn": "eui.0025388", "size_bytes": 960197124096u64, "transport": "nvme"},
                {"name": "sda", "serial": "SER1", "size_bytes": 480103981056u64, "transport": "sata"},
                {"name": "sr0", "size_bytes": 1024, "transport": "sata", "removable": true},
                {"name": "vdb", "size_bytes": 1073741824u64, "transport": "virtio"}
            ],
            "boot": {"mode": "bios"}
        }))
        .unwrap()
    }

    fn step(kind: StepKind, status: StepStatus) -> RunStep {
        RunStep {
            id: Uuid::nil(),
            index: 0,
            kind,
            params: json!({"sha256": "ab".repeat(32)}),
            status,
            last_seq: 0,
            message: None,
            progress: None,
            result: None,
            started_at: None,
            finished_at: None,
        }
    }

    fn run(purpose: AgentPurpose, state: RunState, steps: Vec<RunStep>) -> CommissioningRun {
        let t = time::OffsetDateTime::UNIX_EPOCH;
        CommissioningRun {
            id: Uuid::nil(),
            machine_id: Uuid::nil(),
            number: 3,
            purpose,
            state,
            tests: vec![],
            job_id: None,
            failure_reason: None,
            failed_step: None,
            system_uuid: None,
            agent_version: None,
            started_at: t,
            registered_at: Some(t),
            finished_at: None,
            deadline: t,
            steps,
        }
    }

    #[test]
    fn a_ready_machine_offers_the_form_with_its_disks() {
        let mut installer = image("debian-12-netinst", "cc");
        installer.kind = "installer".into();
        installer.firmware = None;
        let mut other = image("not-deployable", "dd");
        other.kind = "something-else".into();
        let images = [
            image("debian-12", "aa"),
            image("rocky-9", "bb"),
            installer,
            other,
        ];
        let fb = CardFeedback {
            form: Some(form("rocky-9", KEY, "", "serial=SER1", "config_drive")),
            ..Default::default()
        };
        let v = deployment_view(
            &machine(MachineState::Ready),
            "t".into(),
            &images,
            Some(&facts()),
            &[],
            fb,
        );
        assert!(v.can_deploy && v.can_rescue && !v.can_release && !v.in_rescue && !v.polling);
        assert_eq!(v.images.len(), 3);
        assert_eq!(
            v.images[0].label,
            "debian-12 (debian 12, bios+uefi, 64.0 MiB)"
        );
        assert_eq!(
            v.images[2].label,
            "debian-12-netinst (debian 12, installer)"
        );
        assert!(v.images[1].selected && !v.images[0].selected);
        let disks: Vec<(&str, bool)> = v
            .disks
            .iter()
            .map(|c| (c.value.as_str(), c.selected))
            .collect();
        // Removable drives are not offered; WWN before serial before name.
        assert_eq!(
            disks,
            [
                ("", false),
                ("largest", false),
                ("wwn=eui.0025388", false),
                ("serial=SER1", true),
                ("name=vdb", false),
            ]
        );
        assert_eq!(
            v.disks[2].label,
            "nvme0n1 — 894.3 GiB SAMSUNG MZQL2 (serial S64H)"
        );
        assert!(v.config_drives[1].selected);
        assert_eq!(v.ssh_keys, KEY);

        let v = deployment_view(
            &machine(MachineState::New),
            "t".into(),
            &images,
            None,
            &[],
            CardFeedback::default(),
        );
        assert!(!v.can_deploy && !v.needs_commissioning && !v.has_disks);
        assert!(v.disks[0].selected);
        let v = deployment_view(
            &machine(MachineState::Ready),
            "t".into(),
            &images,
            None,
            &[],
            CardFeedback::default(),
        );
        assert!(!v.can_deploy && v.needs_commissioning, "no facts: no form");
    }

    #[test]
    fn a_running_deployment_shows_live_steps() {
        let mut steps = vec![
            step(StepKind::Erase, StepStatus::Succeeded),
            step(StepKind::WriteImage, StepStatus::Progress),
            step(StepKind::GrowRoot, StepStatus::Pending),
        ];
        steps[0].started_at = Some(time::OffsetDateTime::UNIX_EPOCH);
        steps[0].finished_at = Some(time::OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(2));
        steps[1].progress = Some(StepProgress {
            done: 16 << 20,
            total: 64 << 20,
        });
        steps[1].message = Some("writing vda".into());
        let runs = [
            run(AgentPurpose::Deployment, RunState::Running, steps),
            run(AgentPurpose::Commissioning, RunState::Succeeded, vec![]),
        ];
        let v = deployment_view(
            &machine(MachineState::Deploying),
            "t".into(),
            &[],
            None,
            &runs,
            CardFeedback::default(),
        );
        assert!(v.polling && !v.can_deploy && !v.can_release);
        let r = v.run.unwrap();
        assert_eq!(r.title, "Deployment, run 3");
        assert_eq!(r.line, "Write image…");
        assert_eq!(r.steps[0].detail, "2.0 s");
        assert_eq!(r.steps[1].percent, Some(25));
        assert_eq!(r.steps[1].detail, "16.0 MiB of 64.0 MiB · writing vda");
        assert_eq!(r.steps[2].status, "pending");

        // Done: no polling, the image is named from the library.
        let mut done = runs[0].clone();
        done.state = RunState::Succeeded;
        for s in &mut done.steps {
            s.status = StepStatus::Succeeded;
        }
        let v = deployment_view(
            &machine(MachineState::Deployed),
            "t".into(),
            &[image("debian-12", &"ab".repeat(32))],
            None,
            &[done],
            CardFeedback::default(),
        );
        assert!(!v.polling && v.can_release && v.can_rescue);
        assert_eq!(v.deployed_image.as_deref(), Some("debian-12"));
        assert_eq!(v.run.unwrap().line, "Succeeded.");

        let mut failed = run(AgentPurpose::Release, RunState::Failed, vec![]);
        failed.failure_reason = Some("erase failed: disk sdb not found".into());
        let v = deployment_view(
            &machine(MachineState::Failed),
            "t".into(),
            &[],
            None,
            &[failed],
            CardFeedback::default(),
        );
        assert_eq!(
            v.run.unwrap().line,
            "Failed: erase failed: disk sdb not found"
        );
        let rescue = run(
            AgentPurpose::Rescue,
            RunState::Running,
            vec![step(StepKind::Rescue, StepStatus::Succeeded)],
        );
        let v = deployment_view(
            &machine(MachineState::Rescue),
            "t".into(),
            &[],
            None,
            &[rescue],
            CardFeedback::default(),
        );
        assert!(v.in_rescue && v.polling);
        assert!(v.run.unwrap().line.starts_with("The rescue system is up"));
        let mut up = run(
            AgentPurpose::Rescue,
            RunState::Succeeded,
            vec![step(StepKind::Rescue, StepStatus::Succeeded)],
        );
        let v = deployment_view(
            &machine(MachineState::Rescue),
            "t".into(),
            &[],
            None,
            std::slice::from_ref(&up),
            CardFeedback::default(),
        );
        assert!(!v.polling, "nothing runs any more");
        assert!(v.run.unwrap().line.starts_with("The rescue system is up"));
        up.state = RunState::Aborted;
        up.failure_reason = Some("left rescue".into());
        let v = deployment_view(
            &machine(MachineState::Deployed),
            "t".into(),
            &[],
            None,
            &[up],
            CardFeedback::default(),
        );
        assert_eq!(v.run.unwrap().line, "Aborted: left rescue");
    }

    #[test]
    fn notices_come_from_known_actions_only() {
        assert!(notice("deploy").unwrap().starts_with("Deployment started"));
        assert!(notice("exit-rescue").is_some());
        assert_eq!(notice("<script>"), None);
    }
}
