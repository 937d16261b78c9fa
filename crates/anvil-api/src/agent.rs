//! Commissioning in the API: the agent protocol (`/agent/…`, authenticated
//! by per-boot tokens, see `docs/agent-protocol.md`), the `commission`
//! action with its tests, commissioning runs and hardware facts.

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Auth};
use anvil_api_types::agent::*;
use anvil_api_types::{Job, JobList, Problem};
use anvil_core::App;
use anvil_core::commission::AgentSession;
use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use utoipa::OpenApi;
use uuid::Uuid;

type J<T> = axum::Json<T>;

/// The commissioning and agent routes, merged into the API router.
pub fn router() -> Router<App> {
    Router::new()
        .route("/agent/register", post(register))
        .route("/agent/heartbeat", post(heartbeat))
        .route("/agent/next", post(next))
        .route("/agent/steps/{step_id}/report", post(report))
        .route("/agent/facts", post(facts))
        // More specific than `/machines/{id}/actions/{action}`: this one
        // takes the tests in its body.
        .route("/machines/{id}/actions/commission", post(commission))
        .route("/actions/commission", post(bulk_commission))
        .route("/machines/{id}/hardware", get(hardware))
        .route("/machines/{id}/commissioning-runs", get(runs))
}

#[derive(OpenApi)]
#[openapi(
    paths(register, heartbeat, next, report, facts, commission, bulk_commission, hardware, runs),
    components(schemas(AgentProblem, StepKind, AgentStep, StepSpec)),
    tags(
        (name = "agent", description = "The commissioning agent's protocol; authenticated by the per-boot token from the kernel command line"),
        (name = "commissioning", description = "Commissioning runs and hardware facts"),
    )
)]
pub struct AgentDoc;

/// The agent behind a per-boot token.
pub struct AgentAuth(pub AgentSession);

impl FromRequestParts<App> for AgentAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .ok_or(anvil_core::Error::AgentUnauthenticated)?;
        let (scheme, secret) = value
            .split_once(' ')
            .ok_or(anvil_core::Error::AgentUnauthenticated)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(anvil_core::Error::AgentUnauthenticated.into());
        }
        Ok(AgentAuth(app.authenticate_agent(secret.trim()).await?))
    }
}

/// A JSON body that may be absent entirely (then `T::default()`); a body
/// that is present is checked exactly like `ApiJson`.
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let declared_empty = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim() == "0");
        let has_type = req.headers().contains_key(header::CONTENT_TYPE);
        let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
        if declared_empty == Some(true) || (declared_empty.is_none() && !has_type && !chunked) {
            return Ok(OptionalJson(T::default()));
        }
        let ApiJson(v) = ApiJson::<T>::from_request(req, state).await?;
        Ok(OptionalJson(v))
    }
}

const PROBLEM: &str = "application/problem+json";

/// Registers the agent of the token's machine and run. Repeating it is harmless.
#[utoipa::path(post, path = "/agent/register", tag = "agent", request_body = AgentRegister,
    responses((status = 200, body = AgentRegistered),
              (status = 401, body = Problem, content_type = PROBLEM),
              (status = 403, body = Problem, content_type = PROBLEM, description = "the MAC is not the token's machine's"),
              (status = 409, body = Problem, content_type = PROBLEM, description = "run-ended"),
              (status = 422, body = Problem, content_type = PROBLEM)))]
async fn register(
    State(app): State<App>,
    AgentAuth(s): AgentAuth,
    ApiJson(body): ApiJson<AgentRegister>,
) -> ApiResult<J<AgentRegistered>> {
    Ok(axum::Json(app.agent_register(&s, body).await?))
}

/// The agent is alive; answers the run's state.
#[utoipa::path(post, path = "/agent/heartbeat", tag = "agent", request_body = AgentHeartbeat,
    responses((status = 200, body = AgentHeartbeatAck), (status = 401, body = Problem, content_type = PROBLEM)))]
async fn heartbeat(
    State(app): State<App>,
    AgentAuth(s): AgentAuth,
    OptionalJson(body): OptionalJson<AgentHeartbeat>,
) -> ApiResult<J<AgentHeartbeatAck>> {
    Ok(axum::Json(app.agent_heartbeat(&s, body).await?))
}

/// The next step to run, or what to do instead (`wait`, `poweroff`,
/// `reboot`, `done`). URLs in step parameters are absolute, on the address
/// the agent reached.
#[utoipa::path(post, path = "/agent/next", tag = "agent",
    responses((status = 200, body = AgentNext), (status = 401, body = Problem, content_type = PROBLEM)))]
async fn next(
    State(app): State<App>,
    AgentAuth(s): AgentAuth,
    headers: HeaderMap,
) -> ApiResult<J<AgentNext>> {
    // Step URLs (image, cloud-init) point back at Anvil as the agent reached it.
    Ok(axum::Json(
        app.agent_next_at(&s, &base_url(&headers)).await?,
    ))
}

/// `http://<Host>`: the address the agent used, as in its `anvil.url`.
fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("localhost");
    format!("http://{host}")
}

/// Reports a step's start, progress or result. `seq` grows by one per
/// report of the step; replays and reports out of order are refused with 409.
#[utoipa::path(post, path = "/agent/steps/{step_id}/report", tag = "agent", request_body = StepReport,
    params(("step_id" = Uuid, Path, description = "The step, as `next` handed it out")),
    responses((status = 200, body = StepReportAck),
              (status = 401, body = Problem, content_type = PROBLEM),
              (status = 404, body = Problem, content_type = PROBLEM),
              (status = 409, body = Problem, content_type = PROBLEM, description = "already-reported, out-of-order or run-ended"),
              (status = 413, body = Problem, content_type = PROBLEM),
              (status = 422, body = Problem, content_type = PROBLEM)))]
async fn report(
    State(app): State<App>,
    AgentAuth(s): AgentAuth,
    ApiPath(step_id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<StepReport>,
) -> ApiResult<J<StepReportAck>> {
    Ok(axum::Json(app.agent_report(&s, step_id, body).await?))
}

/// Uploads the inventory step's hardware facts. Validated before they are
/// stored; a rejected upload leaves the stored facts untouched.
#[utoipa::path(post, path = "/agent/facts", tag = "agent", request_body = FactsUpload,
    responses((status = 200, body = FactsStored),
              (status = 401, body = Problem, content_type = PROBLEM),
              (status = 409, body = Problem, content_type = PROBLEM),
              (status = 413, body = Problem, content_type = PROBLEM),
              (status = 422, body = Problem, content_type = PROBLEM)))]
async fn facts(
    State(app): State<App>,
    AgentAuth(s): AgentAuth,
    ApiJson(body): ApiJson<FactsUpload>,
) -> ApiResult<J<FactsStored>> {
    Ok(axum::Json(app.agent_facts(&s, body).await?))
}

/// Commissions a machine: moves it to `commissioning`, boots it from the
/// network through its BMC (a machine without one waits for an operator to
/// power it on) and follows the agent until `ready` or `failed`. Answers 202
/// with the job, which ends with the run.
#[utoipa::path(post, path = "/machines/{id}/actions/commission", tag = "commissioning",
    request_body(content = Option<CommissionRequest>, description = "Optional: the hardware tests to run"),
    params(("id" = String, Path, description = "Machine UUID or hostname")),
    responses((status = 202, body = Job),
              (status = 404, body = Problem, content_type = PROBLEM),
              (status = 409, body = Problem, content_type = PROBLEM, description = "the machine's state does not allow commissioning"),
              (status = 422, body = Problem, content_type = PROBLEM)))]
async fn commission(
    State(app): State<App>,
    Auth(p): Auth,
    ApiPath(id): ApiPath<String>,
    OptionalJson(body): OptionalJson<CommissionRequest>,
) -> ApiResult<(StatusCode, HeaderMap, J<Job>)> {
    let job = app.start_commission(&p, &id, body).await?;
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/jobs/{}", job.id)) {
        headers.insert(header::LOCATION, v);
    }
    Ok((StatusCode::ACCEPTED, headers, axum::Json(job)))
}

/// Commissions every machine the selector matches, one job each.
#[utoipa::path(post, path = "/actions/commission", tag = "commissioning", request_body = BulkCommission,
    responses((status = 202, body = JobList),
              (status = 409, body = Problem, content_type = PROBLEM),
              (status = 422, body = Problem, content_type = PROBLEM)))]
async fn bulk_commission(
    State(app): State<App>,
    Auth(p): Auth,
    ApiJson(body): ApiJson<BulkCommission>,
) -> ApiResult<(StatusCode, J<JobList>)> {
    let (sel, req) = body.split();
    let items = app.start_bulk_commission(&p, sel, req).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(JobList { items })))
}

/// The machine's latest hardware facts, or those of run `?run=N`.
#[utoipa::path(get, path = "/machines/{id}/hardware", tag = "commissioning",
    params(("id" = String, Path, description = "Machine UUID or hostname"), HardwareQuery),
    responses((status = 200, body = MachineHardware),
              (status = 404, body = Problem, content_type = PROBLEM, description = "no such machine, or no facts (for that run)"),
              (status = 400, body = Problem, content_type = PROBLEM)))]
async fn hardware(
    State(app): State<App>,
    Auth(_caller): Auth,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<HardwareQuery>,
) -> ApiResult<J<MachineHardware>> {
    Ok(axum::Json(app.machine_hardware(&id, q.run).await?))
}

/// The machine's commissioning runs with their steps, newest first.
#[utoipa::path(get, path = "/machines/{id}/commissioning-runs", tag = "commissioning",
    params(("id" = String, Path, description = "Machine UUID or hostname")),
    responses((status = 200, body = CommissioningRunList),
              (status = 404, body = Problem, content_type = PROBLEM)))]
async fn runs(
    State(app): State<App>,
    Auth(_caller): Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<J<CommissioningRunList>> {
    Ok(axum::Json(app.commissioning_runs(&id).await?))
}
