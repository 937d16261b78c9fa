//! Deployment in the API: the `deploy`, `release`, `rescue` and
//! `exit-rescue` actions (202 with the job), and what a deploying agent
//! fetches with its per-boot token: the image stream, its zero map and the
//! cloud-init partition (`docs/deployment.md`).

use crate::agent::{AgentAuth, OptionalJson};
use crate::error::ApiResult;
use crate::extract::{ApiJson, ApiPath, Auth};
use anvil_api_types::deploy::*;
use anvil_api_types::{Job, Problem};
use anvil_core::App;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use utoipa::OpenApi;

type J<T> = axum::Json<T>;

/// The deployment routes, merged into the API router. The action routes are
/// more specific than `/machines/{id}/actions/{action}`: they take bodies.
pub fn router() -> Router<App> {
    Router::new()
        .route("/machines/{id}/actions/deploy", post(deploy))
        .route("/machines/{id}/actions/release", post(release))
        .route("/machines/{id}/actions/rescue", post(rescue))
        .route("/machines/{id}/actions/exit-rescue", post(exit_rescue))
        .route("/agent/images/{sha256}", get(agent_image))
        .route("/agent/images/{sha256}/zeromap", get(agent_zeromap))
        .route("/agent/cloud-init", get(agent_cloud_init))
}

#[derive(OpenApi)]
#[openapi(
    paths(deploy, release, rescue, exit_rescue, agent_image, agent_zeromap, agent_cloud_init),
    components(schemas(
        DeployRequest, ReleaseRequest, RescueRequest, EraseMode, ConfigDriveKind, DiskRef,
        EraseParams, WriteImageParams, GrowRootParams, CloudInitParams, BootEntryParams,
        RescueParams
    )),
    tags((name = "deployment", description = "Deploy an image, release (erase) a machine, rescue it"))
)]
pub struct DeployDoc;

const PROBLEM: &str = "application/problem+json";

fn accepted(job: Job) -> (StatusCode, HeaderMap, J<Job>) {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/jobs/{}", job.id)) {
        headers.insert(header::LOCATION, v);
    }
    (StatusCode::ACCEPTED, headers, axum::Json(job))
}

/// Deploys an image: `ready` (allocated on the way) or `allocated` →
/// `deploying` → `deployed`. Everything that can be checked before the
/// machine boots is checked here (image, hardware facts, root disk, keys,
/// user data). Answers 202 with the job, which ends with the run.
#[utoipa::path(post, path = "/machines/{id}/actions/deploy", tag = "deployment",
    request_body = DeployRequest,
    params(("id" = String, Path, description = "Machine UUID or hostname")),
    responses((status = 202, body = Job),
              (status = 404, body = Problem, content_type = PROBLEM),
              (status = 409, body = Problem, content_type = PROBLEM, description = "the machine's state does not allow deploying"),
              (status = 413, body = Problem, content_type = PROBLEM, description = "user data over 64 KiB"),
              (status = 422, body = Problem, content_type = PROBLEM, description = "no such image, no hardware facts, no disk matches the root-disk hint, a bad SSH key, a NetBox network that contradicts the machine"),
              (status = 502, body = Problem, content_type = PROBLEM, description = "the machine is linked to a NetBox device and NetBox did not answer its network reads")))]
async fn deploy(
    State(app): State<App>,
    Auth(p): Auth,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<DeployRequest>,
) -> ApiResult<(StatusCode, HeaderMap, J<Job>)> {
    Ok(accepted(app.deploy(&p, &id, body).await?))
}

/// Releases a machine: `deployed`, `allocated` or `failed` → `releasing`
/// (its disks erased) → `ready`.
#[utoipa::path(post, path = "/machines/{id}/actions/release", tag = "deployment",
    request_body(content = Option<ReleaseRequest>, description = "Optional: how to erase (quick by default)"),
    params(("id" = String, Path, description = "Machine UUID or hostname")),
    responses((status = 202, body = Job),
              (status = 404, body = Problem, content_type = PROBLEM),
              (status = 409, body = Problem, content_type = PROBLEM),
              (status = 422, body = Problem, content_type = PROBLEM)))]
async fn release(
    State(app): State<App>,
    Auth(p): Auth,
    ApiPath(id): ApiPath<String>,
    OptionalJson(body): OptionalJson<ReleaseRequest>,
) -> ApiResult<(StatusCode, HeaderMap, J<Job>)> {
    Ok(accepted(app.release(&p, &id, body).await?))
}

/// Boots the rescue system (the agent ramdisk with an SSH server for root);
/// no disk is touched. Without keys, the last deployment's keys.
#[utoipa::path(post, path = "/machines/{id}/actions/rescue", tag = "deployment",
    request_body(content = Option<RescueRequest>, description = "Optional: SSH keys for root"),
    params(("id" = String, Path, description = "Machine UUID or hostname")),
    responses((status = 202, body = Job),
              (status = 404, body = Problem, content_type = PROBLEM),
              (status = 409, body = Problem, content_type = PROBLEM),
              (status = 422, body = Problem, content_type = PROBLEM)))]
async fn rescue(
    State(app): State<App>,
    Auth(p): Auth,
    ApiPath(id): ApiPath<String>,
    OptionalJson(body): OptionalJson<RescueRequest>,
) -> ApiResult<(StatusCode, HeaderMap, J<Job>)> {
    Ok(accepted(app.rescue(&p, &id, body).await?))
}

/// Leaves rescue: the machine returns to the state it had before and is
/// power-cycled (a deployed machine boots its disk again).
#[utoipa::path(post, path = "/machines/{id}/actions/exit-rescue", tag = "deployment",
    params(("id" = String, Path, description = "Machine UUID or hostname")),
    responses((status = 202, body = Job),
              (status = 404, body = Problem, content_type = PROBLEM),
              (status = 409, body = Problem, content_type = PROBLEM, description = "the machine is not in rescue")))]
async fn exit_rescue(
    State(app): State<App>,
    Auth(p): Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<(StatusCode, HeaderMap, J<Job>)> {
    Ok(accepted(app.exit_rescue(&p, &id).await?))
}

/// The image of the agent's deployment run: only the bytes outside the zero
/// ranges, in order; `Content-Length` is their count. Streamed, never held
/// in memory whole.
#[utoipa::path(get, path = "/agent/images/{sha256}", tag = "agent",
    params(("sha256" = String, Path, description = "The image's sha256, as the write_image step names it")),
    responses((status = 200, content_type = "application/octet-stream", description = "the non-zero bytes of the raw image"),
              (status = 401, body = Problem, content_type = PROBLEM),
              (status = 403, body = Problem, content_type = PROBLEM, description = "not this run's image, or the run is not a deployment"),
              (status = 409, body = Problem, content_type = PROBLEM, description = "run-ended")))]
async fn agent_image(
    State(app): State<App>,
    AgentAuth(s): AgentAuth,
    ApiPath(sha256): ApiPath<String>,
) -> ApiResult<Response> {
    let stream = app.agent_image_stream(&s, &sha256).await?;
    let body = Body::from_stream(futures::stream::unfold(stream.chunks, |mut rx| async {
        rx.recv().await.map(|chunk| (chunk, rx))
    }));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CONTENT_LENGTH, HeaderValue::from(stream.len)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response())
}

/// The zero map (`ANVZMAP1`) of the agent's deployment image.
#[utoipa::path(get, path = "/agent/images/{sha256}/zeromap", tag = "agent",
    params(("sha256" = String, Path, description = "The image's sha256")),
    responses((status = 200, content_type = "application/octet-stream", description = "the ANVZMAP1 zero map"),
              (status = 401, body = Problem, content_type = PROBLEM),
              (status = 403, body = Problem, content_type = PROBLEM)))]
async fn agent_zeromap(
    State(app): State<App>,
    AgentAuth(s): AgentAuth,
    ApiPath(sha256): ApiPath<String>,
) -> ApiResult<Response> {
    let map = app.agent_zeromap(&s, &sha256).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        map,
    )
        .into_response())
}

/// The FAT image of the run's cloud-init partition (NoCloud `CIDATA` or
/// `config-2`), as the cloud_init step names it (size and sha256).
#[utoipa::path(get, path = "/agent/cloud-init", tag = "agent",
    responses((status = 200, content_type = "application/octet-stream", description = "the FAT16 partition image"),
              (status = 401, body = Problem, content_type = PROBLEM),
              (status = 403, body = Problem, content_type = PROBLEM, description = "the run is not a deployment")))]
async fn agent_cloud_init(State(app): State<App>, AgentAuth(s): AgentAuth) -> ApiResult<Response> {
    let (fat, label) = app.agent_cloud_init(&s).await?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{label}.img\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok((headers, fat).into_response())
}
