//! `anvil serve`: wires configuration, store, application layer and the
//! HTTP services together, and shuts them down cleanly.

use crate::config::{Config, LogFormat};
use anvil_core::{AdminBootstrap, App, SecretBox};
use anvil_store::Store;
use anyhow::Context;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::time::Instant;
use tokio::net::TcpListener;

pub fn init_tracing(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[derive(Clone)]
struct Ops {
    app: App,
    metrics: PrometheusHandle,
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            cfg.data_dir.display()
        )
    })?;
    let store = Store::open(&cfg.store_url())
        .await
        .context("cannot open the inventory store")?;
    tracing::info!(backend = %store.backend(), data_dir = %cfg.data_dir.display(), "store ready");
    let env_key = std::env::var("ANVIL_SECRET_KEY").ok();
    let secrets = SecretBox::load_or_create(&cfg.data_dir, env_key.as_deref())
        .context("cannot load the secret key")?;
    let limits = anvil_core::power::PowerLimits {
        concurrency: cfg.power.concurrency.max(1),
        action_timeout: std::time::Duration::from_secs(cfg.power.action_timeout_secs.max(1)),
        status_timeout: std::time::Duration::from_secs(cfg.power.status_timeout_secs.max(1)),
        poll_interval: std::time::Duration::from_secs(cfg.power.poll_interval_secs.max(1)),
    };
    let app = App::new(store.clone(), secrets)
        .with_session_ttl(time::Duration::hours(i64::from(cfg.auth.session_hours)))
        .with_power(
            std::sync::Arc::new(crate::power_drivers::Drivers::default()),
            limits,
        )
        .with_commissioning(cfg.commissioning.settings())
        .with_deploy(cfg.deploy.settings())
        .with_installer(anvil_core::installer::InstallerConfig::in_data_dir(
            &cfg.data_dir,
        ));
    let app = app
        .with_images(cfg.images.library(&cfg.data_dir))
        .context("cannot open the image library")?;
    let app = match &cfg.netbox {
        Some(n) => app.with_netbox(n.settings()?),
        None => app,
    };
    // This process joins the instances sharing the store; the jobs that
    // stopped instances left are taken over (runs' jobs followed on, the
    // rest failed as interrupted).
    match app.start_instance().await {
        Ok(sweep) if sweep == Default::default() => {}
        Ok(sweep) => tracing::warn!(
            resumed = sweep.resumed,
            failed = sweep.failed,
            "took over the jobs a stopped instance left unfinished"
        ),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot register this instance or take over orphaned jobs")
        }
    }
    let instance = app.clone();

    match app
        .bootstrap_admin(&cfg.data_dir)
        .await
        .context("cannot create the admin user")?
    {
        AdminBootstrap::Created { password, file } => {
            // Printed once, on the first start only; also kept in a 0600 file.
            tracing::warn!(
                username = "admin",
                password = %password,
                file = %file.display(),
                "created the first user; change its password with `anvil user passwd admin`"
            );
        }
        AdminBootstrap::Existing => {}
    }

    app.start_background();
    app.start_commissioning_watcher();
    app.start_installer_watcher();
    if cfg.power.poll_interval_secs > 0 {
        app.start_power_poller();
    }
    app.start_netbox_sync();
    // The boot index must be loaded before DHCP answers its first packet.
    if let Err(e) = app.refresh_boot_index().await {
        tracing::warn!(error = %e, "cannot load the boot index");
    }
    let app_for_services = app.clone();
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let boot = anvil_httpboot::HttpBootConfig {
        data_dir: cfg.data_dir.clone(),
        ipxe_dirs: cfg.ipxe_dirs(),
    };
    let router = build_router(app, metrics, boot);

    let listener = TcpListener::bind(cfg.http.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.http.listen))?;
    let addr = listener.local_addr()?;
    // Tests and scripts read this line to learn the port when given port 0.
    tracing::info!(%addr, "listening on http://{addr}");
    println!("anvil: listening on http://{addr}");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut services = tokio::task::JoinSet::new();
    if !cfg.ipv6_ra.interfaces.is_empty() {
        let ra = cfg.ipv6_ra.clone();
        let stop = stopped();
        services.spawn(async move {
            anvil_ra::run(ra, stop)
                .await
                .context("IPv6 router advertisements failed")
        });
    }
    let addresses = crate::boot_services::AddressBook::default();
    {
        let tftp_cfg = cfg.tftp.clone();
        let mut source = anvil_tftp::MultiSource::new();
        // The data directory's tftp/ first (operator files), then the
        // configured root, then the iPXE binaries.
        let mut roots = vec![cfg.data_dir.join("tftp")];
        roots.extend(cfg.tftp.root.clone());
        roots.extend(cfg.ipxe_dirs());
        for dir in roots {
            if dir.is_dir() {
                match tftp_source(&dir) {
                    Ok(s) => source = source.with(s),
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "skipping a TFTP directory")
                    }
                }
            }
        }
        let observer = std::sync::Arc::new(crate::boot_services::TftpTimeline {
            app: app_for_services.clone(),
            addresses: addresses.clone(),
        });
        let stop = stopped();
        services.spawn(async move {
            anvil_tftp::run(tftp_cfg, std::sync::Arc::new(source), observer, stop)
                .await
                .context("TFTP service failed")
        });
    }
    {
        let dhcp_cfg = cfg.dhcp.clone();
        let leases = std::sync::Arc::new(crate::boot_services::StoreLeases {
            store: store.clone(),
        });
        let facts = std::sync::Arc::new(crate::boot_services::AppFacts {
            app: app_for_services.clone(),
        });
        let observer = std::sync::Arc::new(crate::boot_services::DhcpTimeline {
            app: app_for_services.clone(),
            addresses: addresses.clone(),
        });
        if cfg.dhcp.networks.is_empty() {
            tracing::info!("DHCP is off: no [[dhcp.network]] is configured");
        }
        let stop = stopped();
        services.spawn(async move {
            anvil_dhcp::run(dhcp_cfg, leases, facts, observer, stop)
                .await
                .context("DHCP service failed")
        });
    }
    let http_stop = stopped();
    services.spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(http_stop)
            .await
            .context("HTTP server failed")
    });
    // Run until a signal, or until a service fails (then stop the others).
    let outcome = tokio::select! {
        _ = shutdown_signal() => Ok(()),
        Some(done) = services.join_next() => match done {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("a service panicked: {e}")),
        },
    };
    let _ = stop_tx.send(true);
    while let Some(done) = services.join_next().await {
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %format!("{e:#}"), "service stopped with an error");
        }
    }
    tracing::info!("shutting down");
    if let Err(e) = instance.stop_instance().await {
        tracing::warn!(error = %format!("{e:#}"), "cannot mark this instance stopped");
    }
    store.close().await;
    outcome
}

/// The whole HTTP surface: API, web UI, health and metrics.
pub fn build_router(
    app: App,
    metrics: PrometheusHandle,
    boot: anvil_httpboot::HttpBootConfig,
) -> Router {
    let ops = Ops {
        app: app.clone(),
        metrics,
    };
    let ops_routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(ops);
    Router::new()
        .nest("/api/v1", anvil_api::router(app.clone()))
        .merge(ops_routes)
        .merge(anvil_httpboot::router(app.clone(), boot))
        .merge(anvil_web::router(app))
        .layer(axum::middleware::from_fn(track_requests))
}

/// Counts requests and their latency per route and status.
async fn track_requests(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("anvil_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("anvil_http_request_duration_seconds", "method" => method, "route" => route)
        .record(start.elapsed().as_secs_f64());
    resp
}

/// Liveness: the process answers.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the database answers.
async fn readyz(State(ops): State<Ops>) -> Response {
    match ops.app.ready().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %anvil_api::chain(&e), "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response()
        }
    }
}

/// Prometheus text format; machine counts are read at scrape time.
async fn metrics_text(State(ops): State<Ops>) -> Response {
    if let Ok(counts) = ops.app.machine_counts().await {
        for (state, n) in counts {
            metrics::gauge!("anvil_machines", "state" => state.as_str()).set(n as f64);
        }
    }
    let mut resp = ops.metrics.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("signal received, draining connections");
}

/// A TFTP directory source that also serves the targets of the symlinks in
/// it: Debian's `ipxe` package installs `/usr/lib/ipxe/ipxe.efi` as a
/// symlink into `/boot`. Only files named in the directory are reachable; a
/// request can never name a path outside it.
fn tftp_source(dir: &std::path::Path) -> Result<anvil_tftp::DirSource, anvil_tftp::TftpError> {
    let mut src = anvil_tftp::DirSource::new(dir)?;
    let mut allowed = std::collections::BTreeSet::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let is_link = e.file_type().map(|t| t.is_symlink()).unwrap_or(false);
            if is_link
                && let Ok(target) = std::fs::canonicalize(e.path())
                && let Some(parent) = target.parent()
            {
                allowed.insert(parent.to_path_buf());
            }
        }
    }
    for parent in allowed {
        src = src.allow_symlinks_into(parent)?;
    }
    Ok(src)
}
