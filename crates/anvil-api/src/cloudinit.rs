//! `GET /api/v1/machines/{id}/cloud-init`: the cloud-init data Anvil renders
//! for a machine's deployment, user-data secrets masked (`docs/cloud-init.md`).
//! Until deploy requests exist it shows the defaults (DHCP on the boot NIC,
//! no keys, no user-data); deploy parameters will be added by the deploy work.

use crate::error::ApiResult;
use crate::extract::{ApiPath, ApiQuery, Auth};
use anvil_api_types::Problem;
use anvil_core::App;
use anvil_core::cloudinit::{DisplayFile, Flavor};
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

const PROBLEM: &str = "application/problem+json";

/// The cloud-init route, merged into the API router.
pub fn router() -> Router<App> {
    Router::new().route("/machines/{id}/cloud-init", get(cloud_init))
}

#[derive(OpenApi)]
#[openapi(
    paths(cloud_init),
    components(schemas(CloudInitView, CloudInitFile, CloudInitFlavor)),
    tags((name = "deployment", description = "Deploying images: cloud-init data"))
)]
pub struct CloudInitDoc;

/// Which layout to render.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CloudInitFlavor {
    /// NoCloud, filesystem label `CIDATA`: meta-data, user-data, network-config.
    #[default]
    Nocloud,
    /// OpenStack config-drive, label `config-2`, for images without NoCloud.
    ConfigDrive,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CloudInitQuery {
    /// `nocloud` (default) or `config-drive`.
    pub flavor: Option<CloudInitFlavor>,
}

/// One file of the rendered data.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CloudInitFile {
    /// Path on the cloud-init filesystem, e.g. `meta-data` or
    /// `openstack/latest/meta_data.json`.
    pub path: String,
    pub content: String,
    /// Secrets in `content` were replaced by `********`.
    pub masked: bool,
}

/// The cloud-init data of a machine, as the deploy would write it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CloudInitView {
    pub flavor: CloudInitFlavor,
    /// The filesystem label cloud-init looks for: `CIDATA` or `config-2`.
    pub label: String,
    pub files: Vec<CloudInitFile>,
}

impl From<DisplayFile> for CloudInitFile {
    fn from(f: DisplayFile) -> Self {
        Self {
            path: f.path,
            content: f.content,
            masked: f.masked,
        }
    }
}

/// The cloud-init data Anvil renders for the machine (meta-data with
/// instance-id, host name and keys; user-data with secrets masked;
/// network-config). Before a deploy request exists: DHCP on the NIC the
/// machine boots from, no keys, no user-data.
#[utoipa::path(get, path = "/machines/{id}/cloud-init", tag = "deployment",
    params(("id" = String, Path, description = "Machine UUID or hostname"), CloudInitQuery),
    responses((status = 200, body = CloudInitView),
              (status = 400, body = Problem, content_type = PROBLEM),
              (status = 404, body = Problem, content_type = PROBLEM),
              (status = 422, body = Problem, content_type = PROBLEM,
               description = "the machine cannot be rendered (no interface, invalid host name, a NetBox network that contradicts the machine)"),
              (status = 502, body = Problem, content_type = PROBLEM,
               description = "the machine is linked to a NetBox device and NetBox did not answer its network reads")))]
async fn cloud_init(
    State(app): State<App>,
    Auth(_caller): Auth,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<CloudInitQuery>,
) -> ApiResult<axum::Json<CloudInitView>> {
    let flavor = q.flavor.unwrap_or_default();
    let rendered = match flavor {
        CloudInitFlavor::Nocloud => Flavor::NoCloud,
        CloudInitFlavor::ConfigDrive => Flavor::ConfigDrive,
    };
    let files = app.machine_cloud_init(&id, rendered).await?;
    Ok(axum::Json(CloudInitView {
        flavor,
        label: rendered.label().to_string(),
        files: files.into_iter().map(Into::into).collect(),
    }))
}
