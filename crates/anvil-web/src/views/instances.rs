//! `GET /instances`: the `anvil serve` processes sharing the database, which
//! of them are live, which one leads (NetBox sync, power poller) and which
//! one served this page. Read-only.

use super::{Layout, fmt_time};
use crate::auth::Session;
use crate::error::PageError;
use anvil_core::App;
use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;

pub(crate) struct InstanceRow {
    pub(crate) id: String,
    pub(crate) hostname: String,
    pub(crate) started: String,
    pub(crate) seen: String,
    /// `Instance::status`: live, stopped or silent.
    pub(crate) status: &'static str,
    pub(crate) leader: bool,
    pub(crate) this: bool,
}

#[derive(Template, WebTemplate)]
#[template(path = "pages/instances.html")]
pub(crate) struct InstancesPage {
    layout: Layout,
    instances: Vec<InstanceRow>,
}

pub(crate) async fn page(
    session: Session,
    State(app): State<App>,
) -> Result<InstancesPage, PageError> {
    let instances = app
        .list_instances()
        .await?
        .into_iter()
        .map(|i| InstanceRow {
            id: i.id.to_string(),
            hostname: i.hostname.clone(),
            started: fmt_time(i.started_at),
            seen: fmt_time(i.seen_at),
            status: i.status(),
            leader: i.leader,
            this: i.this,
        })
        .collect();
    Ok(InstancesPage {
        layout: Layout::for_session(&session),
        instances,
    })
}
