//! What a distribution's installer calls during an installer deploy
//! (`anvil-core/src/installer.rs`, `docs/deployment.md`): its answer files
//! and the completion call. Installers send no headers, so the per-boot
//! token minted with the machine's iPXE script is part of the URL; only its
//! SHA-256 is stored. An unknown token is 401; a token whose deployment has
//! ended (the completion already received) is 409 `run-ended`.

use crate::error::{ApiError, ApiResult};
use crate::extract::ApiPath;
use anvil_api_types::{Problem, problem_types as pt};
use anvil_core::{App, Error};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use utoipa::OpenApi;

/// The installer routes, merged into the API router.
pub fn router() -> Router<App> {
    Router::new()
        .route("/installer/{token}/done", post(installer_done))
        .route("/installer/{token}/{file}", get(installer_answer))
}

#[derive(OpenApi)]
#[openapi(
    paths(installer_answer, installer_done),
    tags((name = "installer", description = "Installer deploys: answer files and the installer's completion call"))
)]
pub struct InstallerDoc;

fn map(e: Error) -> ApiError {
    match e {
        Error::AgentUnauthenticated => ApiError::new(
            StatusCode::UNAUTHORIZED,
            pt::UNAUTHORIZED,
            "Unauthorized",
            "unknown installer token: the URL must carry the token of the machine's current installer boot (from its iPXE script)",
        ),
        other => other.into(),
    }
}

/// Anvil's URL as the installer reached it.
fn server_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("localhost");
    format!("http://{host}")
}

/// An answer file of the token's installer deploy, rendered for the
/// machine: `preseed.cfg` (Debian), `user-data` and `meta-data` (Ubuntu
/// autoinstall, NoCloud), `ks.cfg` (Rocky, AlmaLinux). It names the
/// completion URL with the same token.
#[utoipa::path(get, path = "/installer/{token}/{file}", tag = "installer",
    params(("token" = String, Path, description = "Per-boot installer token"),
           ("file" = String, Path, description = "Answer file name")),
    responses((status = 200, description = "The answer file", content_type = "text/plain"),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn installer_answer(
    State(app): State<App>,
    ApiPath((token, file)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let body = app
        .installer_answer(&token, &file, &server_url(&headers))
        .await
        .map_err(map)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        body,
    )
        .into_response())
}

/// The installer's completion call (its `late_command`, `late-commands` or
/// `%post`): the machine becomes `deployed`, and its next network boot
/// boots the local disk. Accepted once; 204.
#[utoipa::path(post, path = "/installer/{token}/done", tag = "installer",
    params(("token" = String, Path, description = "Per-boot installer token")),
    responses((status = 204, description = "The machine is deployed"),
              (status = 401, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json")))]
async fn installer_done(
    State(app): State<App>,
    ApiPath(token): ApiPath<String>,
) -> ApiResult<StatusCode> {
    app.installer_done(&token).await.map_err(map)?;
    Ok(StatusCode::NO_CONTENT)
}
