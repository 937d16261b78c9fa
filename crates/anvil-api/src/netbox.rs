//! `/api/v1/netbox`: the NetBox event-rule webhook receiver, the sync status
//! and on-demand syncs (with a dry run that returns the plan).

use crate::MAX_BODY;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, Auth};
use anvil_api_types::Problem;
use anvil_api_types::problem_types as pt;
use anvil_core::App;
use anvil_netbox::{NetboxStatus, SyncReport};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

/// The NetBox routes, merged into the API router.
pub fn router() -> Router<App> {
    Router::new()
        .route("/netbox/webhook", post(webhook))
        .route("/netbox/status", get(status))
        .route("/netbox/sync", post(sync))
}

#[derive(OpenApi)]
#[openapi(
    paths(webhook, status, sync),
    components(schemas(SyncRequest, WebhookAccepted)),
    tags((name = "netbox", description = "Synchronisation with NetBox: webhooks, status, reconcile"))
)]
pub struct NetboxDoc;

/// Body of `POST /netbox/sync`.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    /// Compute and return the plan without changing anything.
    #[serde(default)]
    pub dry_run: bool,
}

/// Answer to an accepted webhook.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookAccepted {
    /// The NetBox device that will be reconciled; absent when the event is
    /// about an object Anvil does not follow.
    pub device_id: Option<u64>,
}

fn unsigned() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        pt::UNAUTHORIZED,
        "Unauthorized",
        "a NetBox webhook must carry a valid X-Hook-Signature (HMAC-SHA512 of the body with the configured secret)",
    )
}

/// Receives a NetBox event-rule webhook. Authenticated by its
/// `X-Hook-Signature` (HMAC-SHA512 of the raw body with the shared secret),
/// not by an API token: a missing or wrong signature answers 401. The device
/// concerned is reconciled in the background, within seconds.
#[utoipa::path(post, path = "/netbox/webhook", tag = "netbox", security(()),
    params(("X-Hook-Signature" = String, Header, description = "hex(HMAC-SHA512(secret, body))")),
    request_body(content = Object, content_type = "application/json"),
    responses((status = 202, body = WebhookAccepted),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 413, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
async fn webhook(
    State(app): State<App>,
    req: Request,
) -> ApiResult<(StatusCode, axum::Json<WebhookAccepted>)> {
    let signature = req
        .headers()
        .get("x-hook-signature")
        .map(|v| v.to_str().map(str::to_string).unwrap_or_default());
    let body = axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                pt::PAYLOAD_TOO_LARGE,
                "Payload too large",
                format!("the body is larger than {MAX_BODY} bytes or was cut off"),
            )
        })?;
    match app.netbox_webhook(&body, signature.as_deref()).await {
        Ok(device_id) => Ok((
            StatusCode::ACCEPTED,
            axum::Json(WebhookAccepted { device_id }),
        )),
        Err(anvil_core::Error::Unauthenticated) => Err(unsigned()),
        Err(e) => Err(e.into()),
    }
}

/// Where the NetBox synchronisation stands: last sync, pending write-backs,
/// conflicts, recent runs. `enabled: false` when not configured.
#[utoipa::path(get, path = "/netbox/status", tag = "netbox",
    responses((status = 200, body = NetboxStatus),
              (status = 401, body = Problem, content_type = "application/problem+json")))]
async fn status(
    State(app): State<App>,
    Auth(_caller): Auth,
) -> ApiResult<axum::Json<NetboxStatus>> {
    Ok(axum::Json(app.netbox_status().await?))
}

/// Runs a full reconcile now and returns its report (created, updated,
/// unchanged, conflicts …); with `dry_run` returns the plan and changes
/// nothing. NetBox unreachable answers 502.
#[utoipa::path(post, path = "/netbox/sync", tag = "netbox", request_body = SyncRequest,
    responses((status = 200, body = SyncReport),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json"),
              (status = 502, body = Problem, content_type = "application/problem+json")))]
async fn sync(
    State(app): State<App>,
    Auth(p): Auth,
    ApiJson(body): ApiJson<SyncRequest>,
) -> ApiResult<axum::Json<SyncReport>> {
    Ok(axum::Json(app.netbox_sync(&p, body.dry_run).await?))
}
