//! Anvil's REST API under `/api/v1`.
//!
//! Handlers are thin: authenticate, extract, call `anvil_core::App`, map the
//! result. Every error, including malformed input, is problem+json (see
//! `error.rs`). The OpenAPI document is generated from the annotations here,
//! served at `/api/v1/openapi.json` and committed at `openapi/anvil.json`.

pub mod agent;
pub mod cloudinit;
pub mod deploy;
mod error;
mod extract;
pub mod images;
pub mod installer;
pub mod netbox;

pub use error::{ApiError, chain};

use anvil_api_types::*;
use anvil_core::App;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use error::ApiResult;
use extract::{ApiJson, ApiPath, ApiQuery, Auth};
use utoipa::OpenApi;
use uuid::Uuid;

/// Largest request body the API accepts.
pub const MAX_BODY: usize = 1024 * 1024;

type J<T> = axum::Json<T>;

/// The API router, to be nested at `/api/v1`.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/openapi.json", get(openapi_json))
        .route("/whoami", get(whoami))
        .route("/machines", get(list_machines).post(create_machine))
        .route(
            "/machines/{id}",
            get(get_machine)
                .patch(update_machine)
                .delete(delete_machine),
        )
        .route("/machines/{id}/state", post(change_state))
        .route("/machines/{id}/events", get(machine_events))
        .route(
            "/machines/{id}/interfaces",
            get(list_interfaces).post(add_interface),
        )
        .route(
            "/machines/{id}/interfaces/{iface}",
            axum::routing::patch(update_interface).delete(delete_interface),
        )
        .route("/machines/{id}/boot-timeline", get(boot_timeline))
        .route("/leases", get(list_leases))
        .route("/machines/{id}/actions/{action}", post(machine_action))
        .route("/machines/{id}/jobs", get(machine_jobs))
        .route("/machines/{id}/power-state", post(refresh_power))
        .route("/actions/{action}", post(bulk_action))
        .route("/jobs", get(list_jobs))
        .route("/jobs/{id}", get(get_job))
        .route("/instances", get(list_instances))
        .route("/enroll", post(enroll))
        .route("/discovery/callhome", post(call_home))
        .route("/events", get(events))
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{id}", axum::routing::delete(revoke_token))
        .route("/users", get(list_users).post(create_user))
        .route("/users/{username}/password", put(set_password))
        .merge(agent::router())
        .merge(netbox::router())
        .merge(images::router())
        .merge(cloudinit::router())
        .merge(deploy::router())
        .merge(installer::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such API endpoint; see /api/v1/openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        problem_types::METHOD_NOT_ALLOWED,
        "Method not allowed",
        "this endpoint does not support that method; see /api/v1/openapi.json",
    )
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Anvil API",
        description = "Bare-metal provisioning: inventory, lifecycle and audit log. Authenticate with `Authorization: Bearer <token>` (create one with `anvil token create`). Errors are RFC 9457 problem+json documents with a stable `type`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    servers((url = "/api/v1")),
    paths(
        whoami, list_machines, create_machine, get_machine, update_machine, delete_machine,
        change_state, machine_events, list_interfaces, add_interface, update_interface,
        delete_interface, machine_action, bulk_action, machine_jobs, list_jobs, get_job, refresh_power, enroll, boot_timeline, list_leases, call_home, events, list_tokens, create_token, revoke_token, list_users,
        create_user, set_password, list_instances,
    ),
    components(schemas(Problem)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "machines", description = "The inventory and the lifecycle"),
        (name = "events", description = "The append-only audit log"),
        (name = "boot", description = "Network boot: leases, boot timelines, discovery"),
        (name = "power", description = "BMCs: enrolment, power actions as jobs"),
        (name = "auth", description = "Users and API tokens"),
        (name = "system", description = "The Anvil instances sharing the database"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document as pretty JSON, exactly as committed in `openapi/anvil.json`.
pub fn openapi_document() -> String {
    let mut doc = ApiDoc::openapi();
    doc.merge(agent::AgentDoc::openapi());
    doc.merge(netbox::NetboxDoc::openapi());
    doc.merge(images::ImagesDoc::openapi());
    doc.merge(cloudinit::CloudInitDoc::openapi());
    doc.merge(deploy::DeployDoc::openapi());
    doc.merge(installer::InstallerDoc::openapi());
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let mut s = doc.to_pretty_json().unwrap_or_else(|_| "{}".to_string());
    s.push('\n');
    s
}

async fn openapi_json() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        openapi_document(),
    )
        .into_response()
}

/// The user the token belongs to.
#[utoipa::path(get, path = "/whoami", tag = "auth",
    responses((status = 200, body = User), (status = 401, body = Problem, content_type = "application/problem+json")))]
async fn whoami(Auth(p): Auth) -> ApiResult<J<User>> {
    p.user()
        .cloned()
        .map(axum::Json)
        .ok_or_else(|| anvil_core::Error::Unauthenticated.into())
}

/// Lists machines with their interfaces, BMC and tags.
#[utoipa::path(get, path = "/machines", tag = "machines", params(MachineQuery),
    responses((status = 200, body = MachineList), (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 401, body = Problem, content_type = "application/problem+json"), (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn list_machines(
    State(app): State<App>,
    Auth(_caller): Auth,
    ApiQuery(q): ApiQuery<MachineQuery>,
) -> ApiResult<J<MachineList>> {
    Ok(axum::Json(app.list_machines(q).await?))
}

/// Creates a machine in state `new`. If the hostname or a MAC is taken, answers
/// 409 with `existing_id` naming the machine that has it.
#[utoipa::path(post, path = "/machines", tag = "machines", request_body = MachineCreate,
    responses((status = 201, body = Machine), (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn create_machine(
    State(app): State<App>,
    Auth(p): Auth,
    ApiJson(body): ApiJson<MachineCreate>,
) -> ApiResult<Response> {
    let m = app.create_machine(&p, body).await?;
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/machines/{}", m.id)) {
        headers.insert(header::LOCATION, v);
    }
    Ok((StatusCode::CREATED, headers, axum::Json(m)).into_response())
}

/// A machine, by UUID or hostname.
#[utoipa::path(get, path = "/machines/{id}", tag = "machines",
    params(("id" = String, Path, description = "Machine UUID or hostname")),
    responses((status = 200, body = Machine), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_machine(
    State(app): State<App>,
    Auth(_caller): Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<J<Machine>> {
    Ok(axum::Json(app.get_machine(&id).await?))
}

/// Changes a machine. Absent fields are kept, `null` clears; `tags` and
/// `interfaces` replace the list. A PATCH that changes nothing writes no event.
#[utoipa::path(patch, path = "/machines/{id}", tag = "machines", request_body = MachinePatch,
    params(("id" = String, Path, description = "Machine UUID or hostname")),
    responses((status = 200, body = Machine), (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"), (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn update_machine(
    State(app): State<App>,
    Auth(p): Auth,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<MachinePatch>,
) -> ApiResult<J<Machine>> {
    Ok(axum::Json(app.update_machine(&p, &id, body).await?))
}

/// Deletes a machine. Its events stay in the log.
#[utoipa::path(delete, path = "/machines/{id}", tag = "machines",
    params(("id" = String, Path, description = "Machine UUID or hostname")),
    responses((status = 204), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn delete_machine(
    State(app): State<App>,
    Auth(p): Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    app.delete_machine(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Moves a machine through the lifecycle (e.g. mark broken, mark fixed).
/// An illegal move answers 409 with `current_state`.
#[utoipa::path(post, path = "/machines/{id}/state", tag = "machines", request_body = StateChange,
    params(("id" = String, Path, description = "Machine UUID or hostname")),
    responses((status = 200, body = Machine), (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn change_state(
    State(app): State<App>,
    Auth(p): Auth,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<StateChange>,
) -> ApiResult<J<Machine>> {
    Ok(axum::Json(app.change_state(&p, &id, body).await?))
}

/// The events of one machine, oldest first.
#[utoipa::path(get, path = "/machines/{id}/events", tag = "events", params(("id" = String, Path, description = "Machine UUID or hostname"), EventQuery),
    responses((status = 200, body = EventList), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn machine_events(
    State(app): State<App>,
    Auth(_caller): Auth,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> ApiResult<J<EventList>> {
    Ok(axum::Json(app.list_events(Some(&id), q).await?))
}

/// The global event feed, oldest first; follow it with `after`.
#[utoipa::path(get, path = "/events", tag = "events", params(EventQuery),
    responses((status = 200, body = EventList), (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn events(
    State(app): State<App>,
    Auth(_caller): Auth,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> ApiResult<J<EventList>> {
    Ok(axum::Json(app.list_events(None, q).await?))
}

/// A machine's interfaces.
#[utoipa::path(get, path = "/machines/{id}/interfaces", tag = "machines",
    params(("id" = String, Path, description = "Machine UUID or hostname")),
    responses((status = 200, body = [Interface]), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn list_interfaces(
    State(app): State<App>,
    Auth(_caller): Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<J<Vec<Interface>>> {
    Ok(axum::Json(app.get_machine(&id).await?.interfaces))
}

/// Adds an interface. A MAC that another machine has answers 409.
#[utoipa::path(post, path = "/machines/{id}/interfaces", tag = "machines", request_body = InterfaceInput,
    params(("id" = String, Path, description = "Machine UUID or hostname")),
    responses((status = 201, body = Interface), (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn add_interface(
    State(app): State<App>,
    Auth(p): Auth,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<InterfaceInput>,
) -> ApiResult<(StatusCode, J<Interface>)> {
    Ok((
        StatusCode::CREATED,
        axum::Json(app.add_interface(&p, &id, body).await?),
    ))
}

/// Changes an interface.
#[utoipa::path(patch, path = "/machines/{id}/interfaces/{iface}", tag = "machines", request_body = InterfacePatch,
    params(("id" = String, Path, description = "Machine UUID or hostname"), ("iface" = Uuid, Path, description = "Interface id")),
    responses((status = 200, body = Interface), (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn update_interface(
    State(app): State<App>,
    Auth(p): Auth,
    ApiPath((id, iface)): ApiPath<(String, Uuid)>,
    ApiJson(body): ApiJson<InterfacePatch>,
) -> ApiResult<J<Interface>> {
    Ok(axum::Json(
        app.update_interface(&p, &id, iface, body).await?,
    ))
}

/// Removes an interface.
#[utoipa::path(delete, path = "/machines/{id}/interfaces/{iface}", tag = "machines",
    params(("id" = String, Path, description = "Machine UUID or hostname"), ("iface" = Uuid, Path, description = "Interface id")),
    responses((status = 204), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn delete_interface(
    State(app): State<App>,
    Auth(p): Auth,
    ApiPath((id, iface)): ApiPath<(String, Uuid)>,
) -> ApiResult<StatusCode> {
    app.delete_interface(&p, &id, iface).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// API tokens: all for an administrator, one's own otherwise.
#[utoipa::path(get, path = "/tokens", tag = "auth", responses((status = 200, body = [Token])))]
async fn list_tokens(State(app): State<App>, Auth(p): Auth) -> ApiResult<J<Vec<Token>>> {
    Ok(axum::Json(app.list_tokens(&p).await?))
}

/// Creates a token for the caller. The secret is in this answer only.
#[utoipa::path(post, path = "/tokens", tag = "auth", request_body = TokenCreate,
    responses((status = 201, body = TokenCreated), (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn create_token(
    State(app): State<App>,
    Auth(p): Auth,
    ApiJson(body): ApiJson<TokenCreate>,
) -> ApiResult<(StatusCode, J<TokenCreated>)> {
    Ok((
        StatusCode::CREATED,
        axum::Json(app.create_token(&p, &body.name, None).await?),
    ))
}

/// Revokes a token.
#[utoipa::path(delete, path = "/tokens/{id}", tag = "auth", params(("id" = Uuid, Path, description = "Token id")),
    responses((status = 204), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn revoke_token(
    State(app): State<App>,
    Auth(p): Auth,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    app.revoke_token(&p, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Users (administrators only).
#[utoipa::path(get, path = "/users", tag = "auth", responses((status = 200, body = [User]), (status = 403, body = Problem, content_type = "application/problem+json")))]
async fn list_users(State(app): State<App>, Auth(p): Auth) -> ApiResult<J<Vec<User>>> {
    Ok(axum::Json(app.list_users(&p).await?))
}

/// Creates a user (administrators only).
#[utoipa::path(post, path = "/users", tag = "auth", request_body = UserCreate,
    responses((status = 201, body = User), (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn create_user(
    State(app): State<App>,
    Auth(p): Auth,
    ApiJson(body): ApiJson<UserCreate>,
) -> ApiResult<(StatusCode, J<User>)> {
    let u = app
        .create_user(&p, &body.username, &body.password, body.is_admin)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(u)))
}

/// Sets a password: one's own, or anyone's for an administrator.
#[utoipa::path(put, path = "/users/{username}/password", tag = "auth", request_body = PasswordChange,
    params(("username" = String, Path)),
    responses((status = 204), (status = 403, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn set_password(
    State(app): State<App>,
    Auth(p): Auth,
    ApiPath(username): ApiPath<String>,
    ApiJson(body): ApiJson<PasswordChange>,
) -> ApiResult<StatusCode> {
    app.set_password(&p, &username, &body.password).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The boot timeline of a machine: each recorded step of its network boots
/// (DHCP, TFTP, iPXE script, kernel, ramdisk, call-home) and where the
/// latest boot stopped.
#[utoipa::path(get, path = "/machines/{id}/boot-timeline", tag = "boot",
    params(("id" = String, Path, description = "Machine UUID or hostname")),
    responses((status = 200, body = BootTimeline), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn boot_timeline(
    State(app): State<App>,
    Auth(_caller): Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<J<BootTimeline>> {
    Ok(axum::Json(app.boot_timeline(&id).await?))
}

/// DHCP leases.
#[utoipa::path(get, path = "/leases", tag = "boot", params(LeaseQuery),
    responses((status = 200, body = [Lease]), (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn list_leases(
    State(app): State<App>,
    Auth(_caller): Auth,
    ApiQuery(q): ApiQuery<LeaseQuery>,
) -> ApiResult<J<Vec<Lease>>> {
    Ok(axum::Json(app.list_leases(q.mac.as_deref()).await?))
}

/// Call-home of the discovery environment. Needs no token (a machine being
/// discovered has none, as with MAAS enlistment): it can only create the
/// machine that owns `mac` or add facts and interfaces to it.
#[utoipa::path(post, path = "/discovery/callhome", tag = "boot", request_body = CallHome, security(()),
    responses((status = 200, body = CallHomeAck), (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn call_home(
    State(app): State<App>,
    ApiJson(body): ApiJson<CallHome>,
) -> ApiResult<J<CallHomeAck>> {
    Ok(axum::Json(app.call_home(body).await?))
}

fn parse_action(action: &str) -> ApiResult<anvil_core::power::MachineAction> {
    anvil_core::power::MachineAction::parse(action).ok_or_else(|| {
        ApiError::not_found(format!(
            "no action {action:?}: use power-on, power-off, power-cycle, pxe-boot or pxe-power-on"
        ))
    })
}

/// Starts a power action on a machine. Answers 202 with the job; follow it
/// at `/api/v1/jobs/{id}`.
#[utoipa::path(post, path = "/machines/{id}/actions/{action}", tag = "power",
    params(("id" = String, Path, description = "Machine UUID or hostname"),
           ("action" = String, Path, description = "power-on, power-off, power-cycle, pxe-boot or pxe-power-on")),
    responses((status = 202, body = Job), (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn machine_action(
    State(app): State<App>,
    Auth(p): Auth,
    ApiPath((id, action)): ApiPath<(String, String)>,
) -> ApiResult<(StatusCode, HeaderMap, J<Job>)> {
    let action = parse_action(&action)?;
    let job = app.start_action(&p, &id, action).await?;
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/jobs/{}", job.id)) {
        headers.insert(header::LOCATION, v);
    }
    Ok((StatusCode::ACCEPTED, headers, axum::Json(job)))
}

/// Starts a power action on every machine the selector matches (by tag,
/// state or list). The jobs run with a concurrency limit; one BMC that hangs
/// never holds up the others beyond its own timeout.
#[utoipa::path(post, path = "/actions/{action}", tag = "power", request_body = BulkSelector,
    params(("action" = String, Path, description = "power-on, power-off, power-cycle, pxe-boot or pxe-power-on")),
    responses((status = 202, body = JobList), (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn bulk_action(
    State(app): State<App>,
    Auth(p): Auth,
    ApiPath(action): ApiPath<String>,
    ApiJson(sel): ApiJson<BulkSelector>,
) -> ApiResult<(StatusCode, J<JobList>)> {
    let action = parse_action(&action)?;
    let items = app.start_bulk_action(&p, sel, action).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(JobList { items })))
}

/// The newest jobs of a machine.
#[utoipa::path(get, path = "/machines/{id}/jobs", tag = "power",
    params(("id" = String, Path, description = "Machine UUID or hostname")),
    responses((status = 200, body = JobList), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn machine_jobs(
    State(app): State<App>,
    Auth(_caller): Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<J<JobList>> {
    Ok(axum::Json(JobList {
        items: app.list_jobs(Some(&id), 100).await?,
    }))
}

/// The newest jobs.
#[utoipa::path(get, path = "/jobs", tag = "power", responses((status = 200, body = JobList)))]
async fn list_jobs(State(app): State<App>, Auth(_caller): Auth) -> ApiResult<J<JobList>> {
    Ok(axum::Json(JobList {
        items: app.list_jobs(None, 100).await?,
    }))
}

/// The `anvil serve` instances sharing the database: which are live (their
/// jobs are their own), which one runs the NetBox sync and the power poller,
/// and which one answered.
#[utoipa::path(get, path = "/instances", tag = "system", responses((status = 200, body = InstanceList)))]
async fn list_instances(State(app): State<App>, Auth(_caller): Auth) -> ApiResult<J<InstanceList>> {
    Ok(axum::Json(InstanceList {
        items: app.list_instances().await?,
    }))
}

/// A job and its outcome.
#[utoipa::path(get, path = "/jobs/{id}", tag = "power", params(("id" = Uuid, Path, description = "Job id")),
    responses((status = 200, body = Job), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_job(
    State(app): State<App>,
    Auth(_caller): Auth,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<J<Job>> {
    Ok(axum::Json(app.get_job(id).await?))
}

/// Reads the machine's power state from its BMC now.
#[utoipa::path(post, path = "/machines/{id}/power-state", tag = "power",
    params(("id" = String, Path, description = "Machine UUID or hostname")),
    responses((status = 200, body = Machine), (status = 502, body = Problem, content_type = "application/problem+json")))]
async fn refresh_power(
    State(app): State<App>,
    Auth(_caller): Auth,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<J<Machine>> {
    Ok(axum::Json(app.refresh_power_state(&id).await?))
}

/// Enrols a machine by its BMC: Anvil probes the BMC and creates the machine
/// with what it reports (NICs become interfaces). 201 when created, 200 with
/// the existing machine when that BMC is already enrolled.
#[utoipa::path(post, path = "/enroll", tag = "power", request_body = EnrollRequest,
    responses((status = 201, body = EnrollResult), (status = 200, body = EnrollResult),
              (status = 502, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn enroll(
    State(app): State<App>,
    Auth(p): Auth,
    ApiJson(body): ApiJson<EnrollRequest>,
) -> ApiResult<(StatusCode, J<EnrollResult>)> {
    let r = app.enroll(&p, body).await?;
    let status = if r.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(r)))
}
