//! `GET /netbox`: where the NetBox synchronisation stands: the last sync and
//! the last successful one, pending write-backs, conflicts, recent runs.
//! Read-only; `anvil netbox sync` and the API start syncs.

use super::{Layout, fmt_time};
use crate::auth::Session;
use crate::error::PageError;
use anvil_core::App;
use anvil_netbox::SyncRunInfo;
use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;

pub(crate) struct RunView {
    pub(crate) kind: String,
    pub(crate) status: String,
    pub(crate) ok: bool,
    pub(crate) when: String,
    pub(crate) counts: String,
    pub(crate) error: String,
}

pub(crate) struct ConflictView {
    pub(crate) kind: String,
    pub(crate) message: String,
    pub(crate) machine: Option<String>,
}

#[derive(Template, WebTemplate)]
#[template(path = "pages/netbox.html")]
pub(crate) struct NetboxPage {
    layout: Layout,
    enabled: bool,
    url: String,
    webhook: bool,
    last_sync: Option<RunView>,
    last_success: Option<RunView>,
    pending: u64,
    write_back_error: String,
    conflicts: Vec<ConflictView>,
    recent: Vec<RunView>,
}

fn run_view(r: &SyncRunInfo) -> RunView {
    RunView {
        kind: r.kind.clone(),
        status: r.status.clone(),
        ok: r.status == "succeeded",
        when: fmt_time(r.finished_at.unwrap_or(r.started_at)),
        counts: format!(
            "{} created, {} updated, {} unchanged, {} written to NetBox, {} conflicts",
            r.created, r.updated, r.unchanged, r.written, r.conflicts
        ),
        error: r.error.clone().unwrap_or_default(),
    }
}

pub(crate) async fn page(
    session: Session,
    State(app): State<App>,
) -> Result<NetboxPage, PageError> {
    let s = app.netbox_status().await?;
    Ok(NetboxPage {
        layout: Layout::for_session(&session),
        enabled: s.enabled,
        url: s.url.clone().unwrap_or_default(),
        webhook: s.webhook,
        last_sync: s.last_sync.as_ref().map(run_view),
        last_success: s.last_success.as_ref().map(run_view),
        pending: s.pending_write_backs,
        write_back_error: s.write_back_error.clone().unwrap_or_default(),
        conflicts: s
            .conflicts
            .iter()
            .map(|c| ConflictView {
                kind: serde_json::to_value(c.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                message: c.message.clone(),
                machine: c.machine_id.map(|m| m.to_string()),
            })
            .collect(),
        recent: s.recent.iter().map(run_view).collect(),
    })
}
