//! HTTP boot: what iPXE and UEFI HTTP boot fetch from Anvil.
//!
//! - `GET /boot/<mac>.ipxe`: the machine's iPXE script, chosen by
//!   `anvil_boot::decide` and rendered from the template (an override in
//!   `<data_dir>/ipxe/` wins over the built-in one, read on every request).
//! - `GET /boot/<file>`: iPXE binaries (`ipxe.efi`, `snponly.efi`,
//!   `undionly.kpxe`, …) for UEFI HTTP boot, from the configured directories.
//! - `GET|HEAD /boot/files/<path>`: kernels, ramdisks and images under
//!   `<data_dir>/boot/`, with Range, ETag and Last-Modified, streamed from
//!   disk (never read whole into memory).
//!
//! Each step is recorded in the machine's boot timeline; the `?mac=` query
//! the scripts add to kernel and ramdisk URLs says whose boot it is.

use anvil_boot::{Stage, builtin_template, decide, mac_from_script_name, render_with_token};
use anvil_core::App;
use anvil_types::MacAddr;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use tower_http::services::{ServeDir, ServeFile};

/// Where HTTP boot finds its files.
#[derive(Debug, Clone)]
pub struct HttpBootConfig {
    /// Anvil's data directory: `ipxe/` holds template overrides, `boot/` the
    /// kernels and ramdisks.
    pub data_dir: PathBuf,
    /// Directories searched for iPXE binaries, in order (e.g.
    /// `<data_dir>/ipxe-bin`, then Debian's `/usr/lib/ipxe`).
    pub ipxe_dirs: Vec<PathBuf>,
}

#[derive(Clone)]
struct Ctx {
    app: App,
    cfg: Arc<HttpBootConfig>,
}

/// The `/boot` routes (mount at the root of the HTTP server).
pub fn router(app: App, cfg: HttpBootConfig) -> Router {
    let files_root = cfg.data_dir.join("boot");
    let ctx = Ctx {
        app,
        cfg: Arc::new(cfg),
    };
    let files = Router::new()
        .nest_service(
            "/boot/files",
            // 256 KiB reads: large files stream at disk speed with few syscalls.
            ServeDir::new(files_root).with_buf_chunk_size(256 * 1024),
        )
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            record_file_fetch,
        ));
    Router::new()
        .route("/boot/{name}", get(boot_entry))
        .with_state(ctx)
        .merge(files)
}

/// `/boot/<mac>.ipxe` scripts and `/boot/<ipxe binary>`.
async fn boot_entry(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    headers: HeaderMap,
    req: Request,
) -> Response {
    if name.ends_with(".ipxe") {
        return script(&ctx, &name, &headers).await;
    }
    ipxe_binary(&ctx, &name, req).await
}

async fn script(ctx: &Ctx, name: &str, headers: &HeaderMap) -> Response {
    let Some(mac) = mac_from_script_name(name) else {
        return (
            StatusCode::NOT_FOUND,
            "not a MAC address: expected /boot/aa:bb:cc:dd:ee:ff.ipxe\n",
        )
            .into_response();
    };
    let machine = match ctx.app.machine_for_mac(&mac).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(%mac, error = %e, "cannot look up a machine for its boot script");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the inventory is unavailable; retry\n",
            )
                .into_response();
        }
    };
    let mut known = machine.as_ref().map(|m| anvil_boot::KnownMachine {
        id: m.id,
        hostname: m.hostname.clone(),
        state: m.state,
    });
    // With `[commissioning] on_discovery`, an unknown machine (or one DHCP
    // discovery just created, still `new` and never commissioned) is
    // commissioned in this same boot.
    if ctx.app.commissioning_config().on_discovery
        && known
            .as_ref()
            .is_none_or(|k| k.state == anvil_types::MachineState::New)
    {
        match ctx.app.commission_discovered(mac).await {
            Ok(Some(m)) => {
                known = Some(anvil_boot::KnownMachine {
                    id: m.id,
                    hostname: m.hostname,
                    state: m.state,
                })
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(%mac, error = %anvil_core::error_chain(&e), "cannot commission a discovered machine")
            }
        }
    }
    // A deploy of an installer image boots the distribution's installer
    // instead of the agent (anvil-core/src/installer.rs).
    if let Some(k) = known
        .as_ref()
        .filter(|k| k.state == anvil_types::MachineState::Deploying)
    {
        match ctx
            .app
            .installer_boot_script(k.id, &k.hostname, mac, &server_url(headers))
            .await
        {
            Ok(Some(body)) => {
                ctx.app.record_boot(
                    mac,
                    "http.script",
                    json!({ "stage": "installer", "state": k.state.as_str() }),
                );
                return (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; charset=utf-8"),
                    )],
                    body,
                )
                    .into_response();
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(%mac, error = %anvil_core::error_chain(&e), "cannot render an installer iPXE script");
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "#!ipxe\necho Anvil: cannot render the installer script: see the server log\nshell\n",
                )
                    .into_response();
            }
        }
    }
    let stage = decide(known.as_ref());
    // A per-boot token for the agent; minted here because only its hash is
    // stored (see docs/agent-protocol.md).
    let agent_token = match (&known, stage) {
        (Some(k), s) if s.runs_agent() => match ctx.app.mint_agent_token(k.id).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(%mac, error = %anvil_core::error_chain(&e), "cannot mint an agent token");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the inventory is unavailable; retry\n",
                )
                    .into_response();
            }
        },
        _ => None,
    };
    if stage.runs_agent() && agent_token.is_none() {
        tracing::warn!(%mac, stage = stage.as_str(), "machine in an agent state without a running run: its agent will have no token; start the action again (`anvil machine commission|deploy|release|rescue`)");
    }
    let override_path = ctx.cfg.data_dir.join("ipxe").join(stage.template_name());
    let template = match tokio::fs::read_to_string(&override_path).await {
        Ok(t) => t,
        Err(_) => builtin_template(stage).to_string(),
    };
    let server_url = server_url(headers);
    match render_with_token(
        stage,
        &template,
        &server_url,
        mac,
        known.as_ref(),
        agent_token.as_deref(),
    ) {
        Ok(body) => {
            ctx.app.record_boot(
                mac,
                "http.script",
                json!({ "stage": stage.as_str(), "state": known.as_ref().map(|k| k.state.as_str()) }),
            );
            if stage == Stage::Discovery {
                ctx.app.discover(
                    mac,
                    anvil_core::boot::DhcpFacts {
                        via: "http",
                        ..Default::default()
                    },
                );
            }
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                )],
                body,
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(%mac, template = %override_path.display(), error = %anvil_core::error_chain(&e), "cannot render an iPXE script");
            // iPXE shows this text; it says what to fix.
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "#!ipxe\necho Anvil: the {} template is broken: see the server log\nshell\n",
                    stage.template_name()
                ),
            )
                .into_response()
        }
    }
}

/// Anvil's base URL as this client reached it, so scripts point back to the
/// same address whatever interface or relay the request came through.
fn server_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("localhost");
    format!("http://{host}")
}

/// A plain file name: no directories, no traversal.
fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && !name.starts_with('.')
}

async fn ipxe_binary(ctx: &Ctx, name: &str, req: Request) -> Response {
    if !plain_file_name(name) {
        return StatusCode::NOT_FOUND.into_response();
    }
    for dir in &ctx.cfg.ipxe_dirs {
        let path = dir.join(name);
        if tokio::fs::metadata(&path)
            .await
            .map(|m| m.is_file())
            .unwrap_or(false)
        {
            let mut svc = ServeFile::new(path);
            return match tower::ServiceExt::oneshot(&mut svc, req).await {
                Ok(r) => r.into_response(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot serve an iPXE binary");
                    StatusCode::INTERNAL_SERVER_ERROR.into_response()
                }
            };
        }
    }
    (StatusCode::NOT_FOUND, format!("no iPXE binary {name}\n")).into_response()
}

/// Records kernel and ramdisk fetches (`?mac=` in the URL) in the timeline.
async fn record_file_fetch(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let mac: Option<MacAddr> = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("mac=")))
        .and_then(|m| m.replace("%3A", ":").replace("%3a", ":").parse().ok());
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let resp = next.run(req).await;
    if let Some(mac) = mac
        && method == axum::http::Method::GET
    {
        let file = path.rsplit('/').next().unwrap_or("");
        let kind = if file.starts_with("vmlinuz")
            || file.starts_with("linux")
            || file.starts_with("kernel")
        {
            "http.kernel"
        } else if file.starts_with("initrd") || file.starts_with("initramfs") {
            "http.initrd"
        } else {
            "http.file"
        };
        let size = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        ctx.app.record_boot(
            mac,
            kind,
            json!({ "path": path, "status": resp.status().as_u16(), "bytes": size }),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert!(plain_file_name("ipxe.efi"));
        assert!(plain_file_name("undionly.kpxe"));
        for bad in ["", "..", ".hidden", "a/b", "a%2fb", "x\0"] {
            assert!(!plain_file_name(bad), "{bad}");
        }
    }

    #[test]
    fn server_url_from_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("10.77.0.1:8080"));
        assert_eq!(server_url(&h), "http://10.77.0.1:8080");
        assert_eq!(server_url(&HeaderMap::new()), "http://localhost");
    }
}
