//! The machine list, a machine's page, lifecycle moves and deletion.

use super::boot::{TimelineView, timeline_view};
use super::power::{
    JOBS_SHOWN, JobsView, PowerButton, PowerView, bulk_notice, jobs_view, power_buttons, power_view,
};
use super::{Layout, fmt_iso, fmt_minute, fmt_time, or_dash, sentence};
use crate::auth::{CsrfForm, HasCsrfToken, Session, encode_component};
use crate::error::PageError;
use anvil_api_types::{EventQuery, MachineQuery, StateChange};
use anvil_core::{App, Error, Principal};
use anvil_types::{Event, Hostname, Machine, MachineState};
use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use http::header::VARY;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::Deserialize;
use std::collections::VecDeque;
use time::OffsetDateTime;

/// Page sizes offered in the list.
const PAGE_SIZES: [u32; 4] = [25, 50, 100, 200];
const DEFAULT_PAGE_SIZE: u32 = 50;

/// Sort keys offered as column headers (all are `anvil_api_types::MACHINE_SORT_KEYS`).
const SORT_KEYS: [&str; 4] = ["hostname", "state", "created_at", "updated_at"];

/// How many of a machine's events its page shows (the newest).
const EVENTS_SHOWN: usize = 200;

/// A state as a heading: the CSS class is the lower-case name.
pub(crate) fn state_label(s: MachineState) -> &'static str {
    match s {
        MachineState::New => "New",
        MachineState::Commissioning => "Commissioning",
        MachineState::Ready => "Ready",
        MachineState::Allocated => "Allocated",
        MachineState::Deploying => "Deploying",
        MachineState::Deployed => "Deployed",
        MachineState::Releasing => "Releasing",
        MachineState::Rescue => "Rescue",
        MachineState::Broken => "Broken",
        MachineState::Failed => "Failed",
    }
}

/// The button that moves a machine into `to`, named as the action an
/// operator takes (MAAS's verbs).
fn action_label(to: MachineState) -> &'static str {
    match to {
        MachineState::New => "Reset to new",
        MachineState::Commissioning => "Commission",
        MachineState::Ready => "Mark ready",
        MachineState::Allocated => "Allocate",
        MachineState::Deploying => "Deploy",
        MachineState::Deployed => "Mark deployed",
        MachineState::Releasing => "Release",
        MachineState::Rescue => "Enter rescue",
        MachineState::Broken => "Mark broken",
        MachineState::Failed => "Mark failed",
    }
}

// ---------------------------------------------------------------- the list

/// Query of `GET /machines`. Every field is a string read leniently: a
/// hand-edited URL with a bad page number shows the first page, not a 400.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct ListParams {
    q: String,
    state: String,
    tag: String,
    sort: String,
    page: String,
    per_page: String,
    /// Hostname of a machine just deleted, for the confirmation banner.
    deleted: String,
    /// After a bulk power action: which, how many jobs started, how many
    /// selected machines were skipped (for the banner).
    action: String,
    started: String,
    skipped: String,
}

/// The list's filters after validation; builds the list's links.
#[derive(Clone)]
struct Filters {
    q: String,
    state: Option<MachineState>,
    tag: String,
    /// A key of `SORT_KEYS`, `-` prefixed for descending; "" for the default.
    sort: String,
    page: u64,
    per_page: u32,
}

impl Filters {
    /// Validated filters and notices about the values that were ignored.
    fn from_params(p: &ListParams) -> (Filters, Vec<String>) {
        let mut notices = Vec::new();
        let state = match p.state.trim() {
            "" => None,
            s => match s.parse::<MachineState>() {
                Ok(st) => Some(st),
                Err(_) => {
                    notices.push(format!("There is no state {s:?}; showing all states."));
                    None
                }
            },
        };
        let sort = p.sort.trim();
        let sort = if SORT_KEYS.contains(&sort.trim_start_matches('-')) {
            sort.to_string()
        } else {
            String::new()
        };
        let per_page = p
            .per_page
            .parse()
            .ok()
            .filter(|n| PAGE_SIZES.contains(n))
            .unwrap_or(DEFAULT_PAGE_SIZE);
        let filters = Filters {
            q: p.q.trim().to_string(),
            state,
            tag: p.tag.trim().to_string(),
            sort,
            // Bounded so that the offset stays far inside what SQL takes.
            page: p
                .page
                .parse()
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
                .unwrap_or(1),
            per_page,
        };
        (filters, notices)
    }

    fn active(&self) -> bool {
        !self.q.is_empty() || self.state.is_some() || !self.tag.is_empty()
    }

    /// `/machines` with these filters; defaults are left out so links stay short.
    fn url(&self) -> String {
        self.url_at("/machines", &[])
    }

    /// `path` with these filters and `extra` parameters in its query.
    fn url_at(&self, path: &str, extra: &[(&str, String)]) -> String {
        let mut parts = Vec::new();
        let mut add = |k: &str, v: &str| parts.push(format!("{k}={}", encode_component(v)));
        if !self.q.is_empty() {
            add("q", &self.q);
        }
        if let Some(s) = self.state {
            add("state", s.as_str());
        }
        if !self.tag.is_empty() {
            add("tag", &self.tag);
        }
        if !self.sort.is_empty() {
            add("sort", &self.sort);
        }
        if self.per_page != DEFAULT_PAGE_SIZE {
            add("per_page", &self.per_page.to_string());
        }
        if self.page > 1 {
            add("page", &self.page.to_string());
        }
        for (k, v) in extra {
            add(k, v);
        }
        if parts.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{}", parts.join("&"))
        }
    }

    /// A link with one thing changed; any change but paging goes to page 1.
    fn with(&self, f: impl FnOnce(&mut Filters)) -> String {
        let mut other = self.clone();
        other.page = 1;
        f(&mut other);
        other.url()
    }

    fn query(&self) -> MachineQuery {
        // A search term with a colon cannot be a hostname: it is a MAC.
        let (hostname, mac) = if self.q.contains(':') {
            (None, Some(self.q.clone()))
        } else {
            (Some(self.q.clone()).filter(|q| !q.is_empty()), None)
        };
        MachineQuery {
            state: self.state.map(|s| s.as_str().to_string()),
            tag: Some(self.tag.clone()).filter(|t| !t.is_empty()),
            mac,
            hostname,
            sort: Some(self.sort.clone()).filter(|s| !s.is_empty()),
            limit: Some(self.per_page),
            offset: Some((self.page - 1).saturating_mul(u64::from(self.per_page))),
        }
    }
}

pub(crate) struct TagLink {
    name: String,
    url: String,
}

pub(crate) struct Row {
    id: String,
    hostname: String,
    state: &'static str,
    state_label: &'static str,
    reason: Option<String>,
    /// `on`, `off`, `unknown` (never read) or `none` (no BMC).
    power: &'static str,
    power_label: &'static str,
    arch: String,
    hardware: String,
    mac: String,
    more_macs: usize,
    tags: Vec<TagLink>,
    /// To the minute, for the table; the full time is its tooltip.
    updated: String,
    updated_full: String,
    updated_iso: String,
}

pub(crate) struct Column {
    label: &'static str,
    /// Link that sorts by this column (toggling the direction), if sortable.
    url: Option<String>,
    /// "▲"/"▼" on the column the list is sorted by.
    arrow: &'static str,
}

/// The part of the list that the live search replaces.
pub(crate) struct Results {
    rows: Vec<Row>,
    columns: Vec<Column>,
    total: u64,
    first: u64,
    last: u64,
    page: u64,
    pages: u64,
    prev_url: Option<String>,
    next_url: Option<String>,
    filtered: bool,
    first_page_url: String,
    /// The query failed validation in core (e.g. a malformed MAC).
    error: Option<String>,
    /// For the bulk-action form around the table.
    csrf: String,
    /// Where the bulk form posts: it carries the filters, so the list comes
    /// back as it was.
    bulk_url: String,
}

pub(crate) struct StateLink {
    state: &'static str,
    label: &'static str,
    count: u64,
    url: String,
    active: bool,
}

pub(crate) struct Choice {
    value: String,
    label: String,
    selected: bool,
}

#[derive(Template, WebTemplate)]
#[template(path = "pages/machines.html")]
struct MachinesPage {
    layout: Layout,
    results: Results,
    states: Vec<StateLink>,
    total_all: u64,
    all_url: String,
    all_active: bool,
    q: String,
    tag: String,
    sort: String,
    state_choices: Vec<Choice>,
    size_choices: Vec<Choice>,
    notices: Vec<String>,
    deleted: Option<String>,
    /// Jobs started by a bulk action.
    bulk_notice: Option<String>,
    /// Why a bulk action was refused.
    bulk_error: Option<String>,
    oob: bool,
}

/// What an htmx search gets: the results, plus the state sidebar swapped
/// out of band so its highlight follows the state filter.
#[derive(Template, WebTemplate)]
#[template(path = "partials/machine_results.html")]
struct MachineResultsPartial {
    results: Results,
    states: Vec<StateLink>,
    total_all: u64,
    all_url: String,
    all_active: bool,
    oob: bool,
}

fn row(m: &Machine, filters: &Filters) -> Row {
    let (power, power_label) = match (&m.bmc, m.power_state.as_deref()) {
        (None, _) => ("none", "No BMC"),
        (Some(_), Some("on")) => ("on", "On"),
        (Some(_), Some("off")) => ("off", "Off"),
        (Some(_), _) => ("unknown", "Unknown"),
    };
    let hardware = [m.vendor.as_deref(), m.model.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    Row {
        id: m.id.to_string(),
        hostname: m.hostname.clone(),
        state: m.state.as_str(),
        state_label: state_label(m.state),
        reason: m.state_reason.clone(),
        power,
        power_label,
        arch: or_dash(m.architecture.map(|a| a.as_str())),
        hardware: or_dash(Some(&hardware)),
        mac: or_dash(
            m.interfaces
                .iter()
                .find(|i| i.pxe)
                .or(m.interfaces.first())
                .map(|i| i.mac.to_string())
                .as_deref(),
        ),
        more_macs: m.interfaces.len().saturating_sub(1),
        tags: m
            .tags
            .iter()
            .map(|t| TagLink {
                name: t.clone(),
                url: filters.with(|f| f.tag = t.clone()),
            })
            .collect(),
        updated: fmt_minute(m.updated_at),
        updated_full: fmt_time(m.updated_at),
        updated_iso: fmt_iso(m.updated_at),
    }
}

fn columns(filters: &Filters) -> Vec<Column> {
    let sortable = |label, key: &'static str| {
        let (current, desc) = match filters.sort.strip_prefix('-') {
            Some(k) => (k, true),
            None if filters.sort.is_empty() => ("hostname", false),
            None => (filters.sort.as_str(), false),
        };
        let on = current == key;
        let next = if on && !desc {
            format!("-{key}")
        } else {
            key.to_string()
        };
        Column {
            label,
            url: Some(filters.with(|f| f.sort = next)),
            arrow: match (on, desc) {
                (false, _) => "",
                (true, false) => "▲",
                (true, true) => "▼",
            },
        }
    };
    let plain = |label| Column {
        label,
        url: None,
        arrow: "",
    };
    vec![
        sortable("Hostname", "hostname"),
        sortable("Status", "state"),
        plain("Power"),
        plain("Arch"),
        plain("Hardware"),
        plain("MAC"),
        plain("Tags"),
        sortable("Updated", "updated_at"),
    ]
}

async fn results(app: &App, filters: &Filters, csrf: &str) -> Result<Results, PageError> {
    let bulk_url = filters.url_at("/machines/actions", &[]);
    let empty = |error| Results {
        rows: Vec::new(),
        columns: columns(filters),
        total: 0,
        first: 0,
        last: 0,
        page: 1,
        pages: 1,
        prev_url: None,
        next_url: None,
        filtered: filters.active(),
        first_page_url: filters.with(|_| ()),
        error,
        csrf: csrf.to_string(),
        bulk_url: bulk_url.clone(),
    };
    let list = match app.list_machines(filters.query()).await {
        Ok(l) => l,
        Err(Error::Invalid { field, message }) if field == "mac" => {
            return Ok(empty(Some(format!("Searching by MAC address: {message}."))));
        }
        Err(Error::Invalid { message, .. }) => return Ok(empty(Some(message))),
        Err(e) => return Err(e.into()),
    };
    let per = u64::from(filters.per_page);
    let pages = list.total.div_ceil(per).max(1);
    let shown = list.items.len() as u64;
    Ok(Results {
        rows: list.items.iter().map(|m| row(m, filters)).collect(),
        columns: columns(filters),
        total: list.total,
        first: if shown == 0 { 0 } else { list.offset + 1 },
        last: list.offset + shown,
        page: filters.page,
        pages,
        prev_url: (filters.page > 1).then(|| {
            let mut f = filters.clone();
            f.page = (filters.page - 1).min(pages);
            f.url()
        }),
        next_url: list.next_offset.map(|_| {
            let mut f = filters.clone();
            f.page = filters.page + 1;
            f.url()
        }),
        filtered: filters.active(),
        first_page_url: filters.with(|_| ()),
        error: None,
        csrf: csrf.to_string(),
        bulk_url,
    })
}

async fn state_links(app: &App, filters: &Filters) -> Result<(Vec<StateLink>, u64), PageError> {
    let counts = app.machine_counts().await?;
    let total = counts.iter().map(|(_, n)| n).sum();
    let links = counts
        .into_iter()
        .map(|(s, count)| StateLink {
            state: s.as_str(),
            label: state_label(s),
            count,
            url: filters.with(|f| f.state = Some(s)),
            active: filters.state == Some(s),
        })
        .collect();
    Ok((links, total))
}

/// An htmx request that wants a fragment: not a history restore, which
/// needs the whole page.
fn wants_fragment(headers: &HeaderMap) -> bool {
    headers.contains_key("hx-request") && !headers.contains_key("hx-history-restore-request")
}

/// `GET /machines`: filters, search, sort and pagination are all in the
/// query string, so every view has a URL to bookmark or share.
pub(crate) async fn list(
    session: Session,
    State(app): State<App>,
    headers: HeaderMap,
    Query(p): Query<ListParams>,
) -> Result<Response, PageError> {
    let mut res = if wants_fragment(&headers) {
        let (filters, _) = Filters::from_params(&p);
        let results = results(&app, &filters, &session.csrf_token).await?;
        let (states, total_all) = state_links(&app, &filters).await?;
        let all_url = filters.with(|f| f.state = None);
        let all_active = filters.state.is_none();
        MachineResultsPartial {
            results,
            states,
            total_all,
            all_url,
            all_active,
            oob: true,
        }
        .into_response()
    } else {
        render_list(&app, &session, &p, None, StatusCode::OK).await?
    };
    // The same URL answers a fragment or a page: caches must keep both.
    res.headers_mut()
        .insert(VARY, HeaderValue::from_static("HX-Request"));
    Ok(res)
}

/// The list page for `p`, with `bulk_error` (a refused bulk action) shown
/// above the table.
pub(crate) async fn render_list(
    app: &App,
    session: &Session,
    p: &ListParams,
    bulk_error: Option<String>,
    status: StatusCode,
) -> Result<Response, PageError> {
    let (filters, notices) = Filters::from_params(p);
    let results = results(app, &filters, &session.csrf_token).await?;
    let (states, total_all) = state_links(app, &filters).await?;
    let all_url = filters.with(|f| f.state = None);
    let all_active = filters.state.is_none();
    {
        let state_choices = std::iter::once(Choice {
            value: String::new(),
            label: "All states".to_string(),
            selected: filters.state.is_none(),
        })
        .chain(MachineState::ALL.iter().map(|s| Choice {
            value: s.as_str().to_string(),
            label: state_label(*s).to_string(),
            selected: filters.state == Some(*s),
        }))
        .collect();
        let size_choices = PAGE_SIZES
            .iter()
            .map(|n| Choice {
                value: n.to_string(),
                label: format!("{n} per page"),
                selected: *n == filters.per_page,
            })
            .collect();
        let page = MachinesPage {
            layout: Layout::for_session(session),
            results,
            states,
            total_all,
            all_url,
            all_active,
            q: filters.q.clone(),
            tag: filters.tag.clone(),
            sort: filters.sort.clone(),
            state_choices,
            size_choices,
            notices,
            deleted: p
                .deleted
                .parse::<Hostname>()
                .ok()
                .map(|h| h.as_str().to_string()),
            bulk_notice: bulk_notice(&p.action, &p.started, &p.skipped),
            bulk_error,
            oob: false,
        };
        Ok((status, page).into_response())
    }
}

/// The list with the filters of `p` and `extra` parameters (a banner's).
pub(crate) fn list_url_with(p: &ListParams, extra: &[(&str, String)]) -> String {
    Filters::from_params(p).0.url_at("/machines", extra)
}

// ----------------------------------------------------------- machine page

pub(crate) struct MachineView {
    id: String,
    hostname: String,
    state: &'static str,
    state_label: &'static str,
    reason: Option<String>,
    architecture: String,
    firmware: String,
    vendor: String,
    model: String,
    serial: String,
    tags: Vec<TagLink>,
    created: String,
    updated: String,
}

pub(crate) struct InterfaceView {
    name: String,
    mac: String,
    pxe: bool,
    ipv4: String,
}

/// The BMC as shown: never the password, only whether one is stored.
pub(crate) struct BmcView {
    driver: &'static str,
    address: String,
    port: String,
    username: String,
    has_password: bool,
    verify_tls: bool,
}

pub(crate) struct EventView {
    time: String,
    actor: String,
    kind: String,
    message: String,
}

/// A lifecycle move offered on the page, from `MachineState::next_states`.
pub(crate) struct Action {
    state: &'static str,
    label: &'static str,
    /// Moves into `failed`/`broken` take a reason (required for `failed`).
    with_reason: bool,
    reason_required: bool,
}

#[derive(Template, WebTemplate)]
#[template(path = "pages/machine.html")]
struct MachinePage {
    layout: Layout,
    /// For the page's POST forms.
    csrf: String,
    m: MachineView,
    interfaces: Vec<InterfaceView>,
    bmc: Option<BmcView>,
    facts: Option<String>,
    events: Vec<EventView>,
    events_truncated: bool,
    actions: Vec<Action>,
    state_error: Option<String>,
    delete_error: Option<String>,
    /// The reason typed before a refused move, shown again.
    reason: String,
    /// Power state and buttons, when the machine has a BMC.
    power: Option<PowerView>,
    power_buttons: Vec<PowerButton>,
    power_error: Option<String>,
    /// The jobs card, when the machine has a BMC or jobs.
    jobs: Option<JobsView>,
    /// The Deployment card (views/deploy.rs).
    d: super::deploy::DeploymentView,
    timeline: TimelineView,
    /// A confirmation after a redirect ("power on requested", "enrolled").
    notice: Option<String>,
    /// For the included partials: the page renders them in place.
    oob: bool,
}

/// What a refused action puts back on the page.
#[derive(Default)]
pub(crate) struct Feedback {
    pub(crate) state_error: Option<String>,
    pub(crate) delete_error: Option<String>,
    pub(crate) reason: String,
    pub(crate) power_error: Option<String>,
    pub(crate) notice: Option<String>,
    /// A refused deploy, release or rescue: the form and its messages.
    pub(crate) deployment: super::deploy::CardFeedback,
}

/// The newest events of a machine, newest first, and whether older ones
/// were left out. The feed pages oldest-first, so this walks it to the end.
async fn recent_events(app: &App, id: &str) -> Result<(Vec<Event>, bool), PageError> {
    const PAGE: u32 = 1000;
    let mut kept = VecDeque::with_capacity(EVENTS_SHOWN);
    let mut truncated = false;
    let mut q = EventQuery {
        limit: Some(PAGE),
        ..Default::default()
    };
    loop {
        let page = app.list_events(Some(id), q.clone()).await?;
        let n = page.items.len();
        for e in page.items {
            if kept.len() == EVENTS_SHOWN {
                kept.pop_front();
                truncated = true;
            }
            kept.push_back(e);
        }
        if n < PAGE as usize {
            break;
        }
        q.after = page.next_after;
    }
    Ok((kept.into_iter().rev().collect(), truncated))
}

pub(crate) async fn render_machine(
    app: &App,
    session: &Session,
    m: Machine,
    feedback: Feedback,
    status: StatusCode,
) -> Result<Response, PageError> {
    let id = m.id.to_string();
    let now = OffsetDateTime::now_utc();
    let (events, events_truncated) = recent_events(app, &id).await?;
    let jobs = app.list_jobs(Some(&id), JOBS_SHOWN).await?;
    let timeline = timeline_view(&app.boot_timeline(&id).await?, &jobs, now);
    let power = m.bmc.as_ref().map(|_| power_view(&m, now));
    let buttons = if power.is_some() {
        power_buttons(&m.hostname)
    } else {
        Vec::new()
    };
    let jobs = (m.bmc.is_some() || !jobs.is_empty()).then(|| jobs_view(&id, &jobs, now));
    let d = super::deploy::load(app, session, &m, feedback.deployment).await?;
    let no_filter = Filters::from_params(&ListParams::default()).0;
    let facts = match &m.facts {
        serde_json::Value::Object(o) if o.is_empty() => None,
        v => serde_json::to_string_pretty(v).ok(),
    };
    let page = MachinePage {
        layout: Layout::for_session(session),
        csrf: session.csrf_token.clone(),
        interfaces: m
            .interfaces
            .iter()
            .map(|i| InterfaceView {
                name: i.name.clone(),
                mac: i.mac.to_string(),
                pxe: i.pxe,
                ipv4: or_dash(i.ipv4.as_deref()),
            })
            .collect(),
        bmc: m.bmc.as_ref().map(|b| BmcView {
            driver: b.driver.as_str(),
            address: b.address.clone(),
            port: b
                .port
                .map_or_else(|| "default".to_string(), |p| p.to_string()),
            username: or_dash(b.username.as_deref()),
            has_password: b.has_password,
            verify_tls: b.verify_tls,
        }),
        facts,
        events: events
            .into_iter()
            .map(|e| EventView {
                time: fmt_time(e.time),
                actor: e.actor,
                kind: e.kind,
                message: e.message,
            })
            .collect(),
        events_truncated,
        actions: m
            .state
            .next_states()
            .iter()
            // Deploying, releasing and rescue need a run (image, keys, erase
            // mode): the Deployment card starts them, not a bare move.
            .filter(|s| {
                !matches!(
                    s,
                    MachineState::Deploying | MachineState::Releasing | MachineState::Rescue
                )
            })
            .map(|&s| Action {
                state: s.as_str(),
                label: action_label(s),
                with_reason: s.keeps_reason(),
                reason_required: s == MachineState::Failed,
            })
            .collect(),
        m: MachineView {
            id,
            hostname: m.hostname,
            state: m.state.as_str(),
            state_label: state_label(m.state),
            reason: m.state_reason,
            architecture: or_dash(m.architecture.map(|a| a.as_str())),
            firmware: or_dash(m.firmware.map(|f| f.as_str())),
            vendor: or_dash(m.vendor.as_deref()),
            model: or_dash(m.model.as_deref()),
            serial: or_dash(m.serial.as_deref()),
            tags: m
                .tags
                .iter()
                .map(|t| TagLink {
                    name: t.clone(),
                    url: no_filter.with(|f| f.tag = t.clone()),
                })
                .collect(),
            created: fmt_time(m.created_at),
            updated: fmt_time(m.updated_at),
        },
        state_error: feedback.state_error,
        delete_error: feedback.delete_error,
        reason: feedback.reason,
        power_buttons: buttons,
        power,
        power_error: feedback.power_error,
        jobs,
        d,
        timeline,
        notice: feedback.notice,
        oob: false,
    };
    Ok((status, page).into_response())
}

/// Query of a machine's page: what a redirect to it confirms.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct DetailParams {
    /// A power action just started.
    power: String,
    /// The power state was just read.
    checked: String,
    /// `new` or `already`, after "Add server by BMC".
    enrolled: String,
    /// `deploy`, `release`, `rescue` or `exit-rescue` just started.
    deployment: String,
}

impl DetailParams {
    /// The banner, built from known values only (nothing from the URL is
    /// echoed, so a crafted link cannot put words on the page).
    fn notice(&self, m: &Machine) -> Option<String> {
        if let Some(a) = anvil_core::power::MachineAction::parse(&self.power) {
            return Some(format!(
                "{} requested. The job runs in the background; Power jobs below follows it.",
                super::power::action_label(a)
            ));
        }
        if self.checked == "1" {
            let state = m.power_state.as_deref().unwrap_or("unknown");
            return Some(format!("Power state read from the BMC: {state}."));
        }
        if let Some(n) = super::deploy::notice(&self.deployment) {
            return Some(n);
        }
        match self.enrolled.as_str() {
            "new" => Some(format!(
                "Enrolled {} from its BMC with {} network interface{}. It is recognised when it PXE-boots.",
                m.hostname,
                m.interfaces.len(),
                if m.interfaces.len() == 1 { "" } else { "s" }
            )),
            "already" => Some(format!(
                "This BMC was already enrolled as {}; nothing was changed.",
                m.hostname
            )),
            _ => None,
        }
    }
}

/// `GET /machines/{id}` (id or hostname).
pub(crate) async fn detail(
    session: Session,
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<DetailParams>,
) -> Result<Response, PageError> {
    let m = app.get_machine(&id).await?;
    let feedback = Feedback {
        notice: q.notice(&m),
        ..Default::default()
    };
    render_machine(&app, &session, m, feedback, StatusCode::OK).await
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct StateForm {
    csrf_token: String,
    state: String,
    reason: String,
}

impl HasCsrfToken for StateForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

/// `POST /machines/{id}/state`. A move the lifecycle refuses (the page may
/// be stale: someone else moved the machine) shows the machine again with
/// the reason, not an error page.
pub(crate) async fn change_state(
    State(app): State<App>,
    Path(id): Path<String>,
    CsrfForm { session, form }: CsrfForm<StateForm>,
) -> Result<Response, PageError> {
    let Ok(to) = form.state.parse::<MachineState>() else {
        let message = format!("{:?} is not a lifecycle state.", form.state);
        return refused(
            &app,
            &session,
            &id,
            message,
            form.reason,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    };
    let change = StateChange {
        state: to,
        reason: Some(form.reason.trim().to_string()).filter(|r| !r.is_empty()),
    };
    let by = Principal::User(session.user.clone());
    match app.change_state(&by, &id, change).await {
        Ok(m) => Ok(Redirect::to(&format!("/machines/{}", m.id)).into_response()),
        Err(e @ (Error::Transition { .. } | Error::Concurrent { .. })) => {
            refused(
                &app,
                &session,
                &id,
                sentence(&e.to_string()),
                form.reason,
                StatusCode::CONFLICT,
            )
            .await
        }
        Err(e @ Error::Invalid { .. }) => {
            let status = StatusCode::UNPROCESSABLE_ENTITY;
            refused(
                &app,
                &session,
                &id,
                sentence(&e.to_string()),
                form.reason,
                status,
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

/// The machine's page again, with why the move was refused and the reason
/// the operator typed.
async fn refused(
    app: &App,
    session: &Session,
    id: &str,
    message: String,
    reason: String,
    status: StatusCode,
) -> Result<Response, PageError> {
    let m = app.get_machine(id).await?;
    let feedback = Feedback {
        state_error: Some(message),
        reason,
        ..Default::default()
    };
    render_machine(app, session, m, feedback, status).await
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct DeleteForm {
    csrf_token: String,
    confirm_hostname: String,
}

impl HasCsrfToken for DeleteForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

/// `POST /machines/{id}/delete`. The operator confirms by typing the
/// hostname (works without JavaScript, and a stray click cannot delete).
pub(crate) async fn delete(
    State(app): State<App>,
    Path(id): Path<String>,
    CsrfForm { session, form }: CsrfForm<DeleteForm>,
) -> Result<Response, PageError> {
    let m = app.get_machine(&id).await?;
    if !form
        .confirm_hostname
        .trim()
        .eq_ignore_ascii_case(&m.hostname)
    {
        let feedback = Feedback {
            delete_error: Some(format!(
                "Type the hostname \"{}\" to confirm the deletion.",
                m.hostname
            )),
            ..Default::default()
        };
        return render_machine(
            &app,
            &session,
            m,
            feedback,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    }
    let by = Principal::User(session.user.clone());
    app.delete_machine(&by, &m.id.to_string()).await?;
    Ok(Redirect::to(&format!(
        "/machines?deleted={}",
        encode_component(&m.hostname)
    ))
    .into_response())
}
