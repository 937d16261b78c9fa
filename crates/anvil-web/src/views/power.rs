//! Power control: a machine's power state and buttons, its power jobs (a
//! card that follows running jobs by htmx polling), and bulk power actions
//! from the machine list.
//!
//! Every action goes through `App`, which runs it as a job; the UI only
//! starts jobs and shows them.

use super::machines::{self, Feedback, ListParams};
use super::{fmt_ago, fmt_clock, fmt_duration, fmt_time, sentence};
use crate::auth::{CsrfForm, HasCsrfToken, Session};
use crate::error::PageError;
use anvil_api_types::BulkSelector;
use anvil_core::power::MachineAction;
use anvil_core::{App, Error, Principal};
use anvil_types::{Job, JobStatus, Machine};
use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use http::StatusCode;
use serde::Deserialize;
use time::OffsetDateTime;

/// How many of a machine's jobs its page lists (the newest).
pub(crate) const JOBS_SHOWN: u32 = 20;

/// How often the jobs card reloads while a job is queued or running.
const POLL_SECONDS: u32 = 2;

/// Most machines one bulk request may act on.
const MAX_BULK: usize = 1000;

/// Shown instead of core's terse `Error::PowerDisabled`.
pub(crate) const NOT_ENABLED: &str = "Power control is not enabled on this Anvil server, so it \
     cannot talk to BMCs. Ask an administrator to enable it; until then, use the BMC's own \
     interface to power machines.";

/// The label of an action, as its button says it.
pub(crate) fn action_label(a: MachineAction) -> &'static str {
    match a {
        MachineAction::PowerOn => "Power on",
        MachineAction::PowerOff => "Power off",
        MachineAction::PowerCycle => "Power cycle",
        MachineAction::PxeBoot => "PXE boot",
        MachineAction::PxePowerOn => "Power on, PXE once",
        MachineAction::Commission => "Commission",
    }
}

/// A job's kind as a heading ("power-on" → "Power on").
fn job_label(kind: &str) -> String {
    match MachineAction::parse(kind) {
        Some(a) => action_label(a).to_string(),
        None => {
            let mut s = kind.replace(['-', '_', '.'], " ");
            if let Some(first) = s.get(..1) {
                let upper = first.to_uppercase();
                s.replace_range(..1, &upper);
            }
            s
        }
    }
}

/// What went wrong with a power request, as a sentence for the page, and
/// the status to answer with. Anything that is not the operator's to fix
/// stays an error page.
pub(crate) fn power_problem(e: Error) -> Result<(StatusCode, String), PageError> {
    match e {
        Error::PowerDisabled => Ok((StatusCode::CONFLICT, NOT_ENABLED.to_string())),
        Error::Invalid { message, .. } => {
            Ok((StatusCode::UNPROCESSABLE_ENTITY, sentence(&message)))
        }
        // The text names the BMC and what failed; it never holds a password.
        // A conflict, as on the error page: the operator's to look at.
        Error::Bmc(m) => Ok((StatusCode::CONFLICT, sentence(&m))),
        other => Err(other.into()),
    }
}

// ----------------------------------------------------------- power card

/// A machine's last known power state.
pub(crate) struct PowerView {
    /// `on`, `off` or `unknown`: the CSS class.
    pub(crate) state: &'static str,
    pub(crate) label: &'static str,
    pub(crate) checked: String,
    pub(crate) checked_full: String,
}

pub(crate) fn power_view(m: &Machine, now: OffsetDateTime) -> PowerView {
    // Not "Power on": that is what the button says.
    let (state, label) = match m.power_state.as_deref() {
        Some("on") => ("on", "Powered on"),
        Some("off") => ("off", "Powered off"),
        _ => ("unknown", "Power state unknown"),
    };
    let (checked, checked_full) = match m.power_checked_at {
        Some(t) => (format!("checked {}", fmt_ago(t, now)), fmt_time(t)),
        None => ("never checked".to_string(), String::new()),
    };
    PowerView {
        state,
        label,
        checked,
        checked_full,
    }
}

pub(crate) struct PowerButton {
    pub(crate) action: &'static str,
    pub(crate) label: &'static str,
    /// `on`, `off`, `cycle`, `pxe`: the icon.
    pub(crate) icon: &'static str,
    /// Asked before the form is sent (by `anvil.js`; without it the form
    /// is sent at once).
    pub(crate) confirm: Option<String>,
}

pub(crate) fn power_buttons(hostname: &str) -> Vec<PowerButton> {
    vec![
        PowerButton {
            action: MachineAction::PowerOn.as_str(),
            label: "Power on",
            icon: "on",
            confirm: None,
        },
        PowerButton {
            action: MachineAction::PowerOff.as_str(),
            label: "Power off",
            icon: "off",
            confirm: Some(format!(
                "Power off {hostname} now? This cuts the power at once, like pulling the plug."
            )),
        },
        PowerButton {
            action: MachineAction::PowerCycle.as_str(),
            label: "Power cycle",
            icon: "cycle",
            confirm: Some(format!(
                "Power cycle {hostname}? A running system is switched off and on without shutting down."
            )),
        },
        PowerButton {
            action: MachineAction::PxeBoot.as_str(),
            label: "PXE boot now",
            icon: "pxe",
            confirm: Some(format!(
                "PXE boot {hostname} now? It boots from the network once; if it is on, it is reset."
            )),
        },
    ]
}

// ------------------------------------------------------------ jobs card

pub(crate) struct JobView {
    pub(crate) label: String,
    /// `queued`, `running`, `succeeded`, `failed`: badge colour.
    pub(crate) status: &'static str,
    pub(crate) status_label: &'static str,
    pub(crate) outcome: String,
    pub(crate) failed: bool,
    pub(crate) actor: String,
    pub(crate) created: String,
    pub(crate) created_full: String,
    pub(crate) took: String,
}

pub(crate) struct JobsView {
    pub(crate) machine_id: String,
    pub(crate) items: Vec<JobView>,
    /// A job is queued or running: the card reloads itself.
    pub(crate) active: bool,
    pub(crate) poll_seconds: u32,
}

fn job_view(j: &Job, now: OffsetDateTime) -> JobView {
    let (status, status_label) = match j.status {
        JobStatus::Queued => ("queued", "Queued"),
        JobStatus::Running => ("running", "Running"),
        JobStatus::Succeeded => ("succeeded", "Succeeded"),
        JobStatus::Failed => ("failed", "Failed"),
    };
    // These jobs follow an agent run; the Hardware or Deployment card shows
    // its steps.
    let agent_run = matches!(
        j.kind.as_str(),
        "commission" | "deploy" | "release" | "rescue"
    );
    let outcome = match j.status {
        JobStatus::Queued if agent_run => "Starting…".to_string(),
        JobStatus::Queued => "Waiting for a free BMC slot…".to_string(),
        JobStatus::Running if agent_run => "Following the agent's run…".to_string(),
        JobStatus::Running => "Talking to the BMC…".to_string(),
        JobStatus::Succeeded => match j
            .result
            .as_ref()
            .and_then(|r| r.get("power_state"))
            .and_then(|v| v.as_str())
        {
            Some(p) => format!("Power is {p}"),
            None => "Done".to_string(),
        },
        JobStatus::Failed => j
            .error
            .as_deref()
            .map(sentence)
            .unwrap_or_else(|| "Failed without a reason".to_string()),
    };
    let took = match (j.started_at, j.finished_at) {
        (Some(s), Some(f)) => fmt_duration(f - s),
        (Some(s), None) => format!("{} so far", fmt_duration(now - s)),
        _ => "—".to_string(),
    };
    JobView {
        label: job_label(&j.kind),
        status,
        status_label,
        outcome,
        failed: j.status == JobStatus::Failed,
        actor: j.actor.clone(),
        created: fmt_clock(j.created_at),
        created_full: fmt_time(j.created_at),
        took,
    }
}

pub(crate) fn jobs_view(machine_id: &str, jobs: &[Job], now: OffsetDateTime) -> JobsView {
    JobsView {
        machine_id: machine_id.to_string(),
        items: jobs.iter().map(|j| job_view(j, now)).collect(),
        active: jobs
            .iter()
            .any(|j| matches!(j.status, JobStatus::Queued | JobStatus::Running)),
        poll_seconds: POLL_SECONDS,
    }
}

/// The jobs card, and the power state swapped out of band (a finished job
/// has just changed it).
#[derive(Template, WebTemplate)]
#[template(path = "partials/jobs_refresh.html")]
struct JobsPartial {
    jobs: JobsView,
    power: Option<PowerView>,
    oob: bool,
}

/// `GET /machines/{id}/jobs`: the jobs card, for the page to swap in.
pub(crate) async fn jobs_fragment(
    _session: Session,
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let m = app.get_machine(&id).await?;
    let mid = m.id.to_string();
    let jobs = app.list_jobs(Some(&mid), JOBS_SHOWN).await?;
    // The power state is read again after the jobs: a job that finished
    // between the two reads would otherwise show `Succeeded` beside the
    // power state from before it (a job stores the state, then finishes).
    let m = app.get_machine(&mid).await?;
    let now = OffsetDateTime::now_utc();
    Ok(JobsPartial {
        jobs: jobs_view(&mid, &jobs, now),
        power: m.bmc.as_ref().map(|_| power_view(&m, now)),
        oob: true,
    }
    .into_response())
}

// ------------------------------------------------------------- actions

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct PowerForm {
    csrf_token: String,
    action: String,
}

impl HasCsrfToken for PowerForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

/// The machine's page again with what went wrong in its power card.
async fn power_refused(
    app: &App,
    session: &Session,
    id: &str,
    status: StatusCode,
    message: String,
) -> Result<Response, PageError> {
    let m = app.get_machine(id).await?;
    let feedback = Feedback {
        power_error: Some(message),
        ..Default::default()
    };
    machines::render_machine(app, session, m, feedback, status).await
}

/// `POST /machines/{id}/power`: starts a power action as a job and shows
/// the machine, whose jobs card follows the job.
pub(crate) async fn action(
    State(app): State<App>,
    Path(id): Path<String>,
    CsrfForm { session, form }: CsrfForm<PowerForm>,
) -> Result<Response, PageError> {
    let Some(action) = MachineAction::parse(form.action.trim()) else {
        let message = format!("{:?} is not a power action.", form.action);
        return power_refused(
            &app,
            &session,
            &id,
            StatusCode::UNPROCESSABLE_ENTITY,
            message,
        )
        .await;
    };
    let by = Principal::User(session.user.clone());
    match app.start_action(&by, &id, action).await {
        Ok(job) => {
            let machine = job.machine_id.map_or(id, |m| m.to_string());
            Ok(
                Redirect::to(&format!("/machines/{machine}?power={}", action.as_str()))
                    .into_response(),
            )
        }
        Err(e) => {
            let (status, message) = power_problem(e)?;
            power_refused(&app, &session, &id, status, message).await
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct CheckForm {
    csrf_token: String,
}

impl HasCsrfToken for CheckForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

/// `POST /machines/{id}/power-state`: reads the power state from the BMC
/// now (it waits for the BMC, bounded by the server's status timeout).
pub(crate) async fn check(
    State(app): State<App>,
    Path(id): Path<String>,
    CsrfForm { session, .. }: CsrfForm<CheckForm>,
) -> Result<Response, PageError> {
    match app.refresh_power_state(&id).await {
        Ok(m) => Ok(Redirect::to(&format!("/machines/{}?checked=1", m.id)).into_response()),
        Err(e) => {
            let (status, message) = power_problem(e)?;
            let message = format!("Could not read the power state. {message}");
            power_refused(&app, &session, &id, status, message).await
        }
    }
}

// ---------------------------------------------------------------- bulk

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct BulkForm {
    csrf_token: String,
    action: String,
    /// Machine ids, one per ticked checkbox (a repeated field).
    machine: Vec<String>,
}

impl HasCsrfToken for BulkForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

/// `POST /machines/actions?<the list's filters>`: starts a power action on
/// every ticked machine that has a BMC, then shows the list (with the same
/// filters) and how many jobs were started. Machines without a BMC are
/// skipped and counted, so one of them does not stop the others.
pub(crate) async fn bulk(
    State(app): State<App>,
    Query(p): Query<ListParams>,
    CsrfForm { session, form }: CsrfForm<BulkForm>,
) -> Result<Response, PageError> {
    let Some(action) = MachineAction::parse(form.action.trim()) else {
        let message = format!("{:?} is not a power action.", form.action);
        return machines::render_list(
            &app,
            &session,
            &p,
            Some(message),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    };
    let mut wanted: Vec<&str> = Vec::new();
    for ident in form
        .machine
        .iter()
        .map(|m| m.trim())
        .filter(|m| !m.is_empty())
    {
        if !wanted.contains(&ident) {
            wanted.push(ident);
        }
    }
    if wanted.is_empty() {
        let message = format!(
            "Select the machines to {} first: tick their boxes in the list.",
            action_label(action).to_lowercase()
        );
        return machines::render_list(
            &app,
            &session,
            &p,
            Some(message),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    }
    if wanted.len() > MAX_BULK {
        let message = format!("At most {MAX_BULK} machines at once.");
        return machines::render_list(
            &app,
            &session,
            &p,
            Some(message),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    }
    let mut with_bmc = Vec::new();
    let mut skipped = 0usize;
    for ident in wanted {
        match app.get_machine(ident).await {
            Ok(m) if m.bmc.is_some() => with_bmc.push(m.id.to_string()),
            // No BMC, or deleted since the list was shown.
            Ok(_) | Err(Error::NotFound { .. }) => skipped += 1,
            Err(e) => return Err(e.into()),
        }
    }
    if with_bmc.is_empty() {
        let message = "None of the selected machines has a BMC, so Anvil cannot power them. \
                       Add a BMC on a machine's Edit page, or enroll it by its BMC."
            .to_string();
        return machines::render_list(
            &app,
            &session,
            &p,
            Some(message),
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    }
    let by = Principal::User(session.user.clone());
    let selector = BulkSelector {
        machines: Some(with_bmc),
        ..Default::default()
    };
    match app.start_bulk_action(&by, selector, action).await {
        Ok(jobs) => {
            let to = machines::list_url_with(
                &p,
                &[
                    ("action", action.as_str().to_string()),
                    ("started", jobs.len().to_string()),
                    ("skipped", skipped.to_string()),
                ],
            );
            Ok(Redirect::to(&to).into_response())
        }
        Err(e) => {
            let (status, message) = power_problem(e)?;
            machines::render_list(&app, &session, &p, Some(message), status).await
        }
    }
}

/// The banner after a bulk action, from the redirect's query (validated:
/// only numbers and a known action make it into the text).
pub(crate) fn bulk_notice(action: &str, started: &str, skipped: &str) -> Option<String> {
    let action = MachineAction::parse(action)?;
    let started: u32 = started.parse().ok()?;
    let skipped: u32 = skipped.parse().unwrap_or(0);
    let plural = |n: u32, one: &str, many: &str| {
        if n == 1 {
            format!("{n} {one}")
        } else {
            format!("{n} {many}")
        }
    };
    let mut s = format!(
        "{}: {} started, one per machine. Each machine's page shows how its job went.",
        action_label(action),
        plural(started, "job", "jobs")
    );
    if skipped > 0 {
        s.push_str(&format!(
            " {} skipped: no BMC.",
            plural(skipped, "selected machine was", "selected machines were")
        ));
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;
    use uuid::Uuid;

    fn job(status: JobStatus) -> Job {
        let t = datetime!(2025-03-01 10:00:00 UTC);
        Job {
            id: Uuid::nil(),
            kind: "power-cycle".into(),
            machine_id: None,
            status,
            actor: "user:admin".into(),
            params: json!({}),
            result: Some(json!({"power_state": "on"})),
            error: Some("the BMC at 10.0.0.1 refused the credentials".into()),
            created_at: t,
            started_at: Some(t + time::Duration::milliseconds(200)),
            finished_at: Some(t + time::Duration::milliseconds(3_400)),
        }
    }

    #[test]
    fn jobs_read_as_sentences_and_poll_only_while_active() {
        let now = datetime!(2025-03-01 10:01:00 UTC);
        let done = jobs_view("m", &[job(JobStatus::Succeeded)], now);
        assert!(!done.active);
        let j = &done.items[0];
        assert_eq!(
            (j.label.as_str(), j.outcome.as_str(), j.took.as_str()),
            ("Power cycle", "Power is on", "3.2 s")
        );
        let failed = jobs_view("m", &[job(JobStatus::Failed)], now);
        assert_eq!(
            failed.items[0].outcome,
            "The BMC at 10.0.0.1 refused the credentials."
        );
        assert!(
            jobs_view(
                "m",
                &[job(JobStatus::Succeeded), job(JobStatus::Running)],
                now
            )
            .active
        );
        assert_eq!(job_label("commission"), "Commission");
    }

    #[test]
    fn errors_become_friendly_sentences() {
        let (status, m) = power_problem(Error::PowerDisabled).unwrap();
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(m, NOT_ENABLED);
        let (status, m) =
            power_problem(Error::Bmc("cannot reach the BMC at x: no route".into())).unwrap();
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(m, "Cannot reach the BMC at x: no route.");
        assert!(power_problem(Error::Forbidden("no")).is_err());
    }

    #[test]
    fn the_bulk_banner_takes_only_numbers_and_known_actions() {
        assert_eq!(
            bulk_notice("power-on", "3", "1").as_deref(),
            Some(
                "Power on: 3 jobs started, one per machine. Each machine's page shows how its \
                 job went. 1 selected machine was skipped: no BMC."
            )
        );
        assert!(bulk_notice("<script>", "3", "0").is_none());
        assert!(bulk_notice("power-on", "many", "0").is_none());
    }
}
