//! Anvil's web UI: server-rendered pages over `anvil_core::App`.
//!
//! Pages are askama templates from `web/templates` compiled into the binary;
//! CSS, the logo and the vendored htmx come from `web/static`, embedded with
//! rust-embed. Nothing is fetched from the internet at run time: provisioning
//! networks are often air-gapped.
//!
//! Every page works as plain HTML forms and links; htmx only adds the live
//! machine search (a request with `HX-Request` gets the result table alone)
//! and the cards of a machine page that follow work in progress (the boot
//! timeline and the power jobs poll their own fragment while something is
//! happening). `static/anvil.js` adds small comforts (select all, confirm
//! before power off); nothing depends on it.
//!
//! The UI acts only through [`App`], like the REST API, so validation, the
//! lifecycle and the audit log are the same whichever way a change arrives.
//!
//! Security model, in short:
//! - a session cookie (`anvil_session`: HttpOnly, SameSite=Strict, `Secure`
//!   when the request came through an https proxy) guards every page except
//!   `/login` and `/static`;
//! - every POST form carries the session's CSRF token (checked in constant
//!   time); the login form, which has no session yet, checks `Origin`;
//! - responses carry a strict Content-Security-Policy: no inline script or
//!   style anywhere, htmx runs with `allowEval` off.

mod assets;
mod auth;
mod error;
mod security;
mod views;

use anvil_core::App;
use axum::Router;
use axum::routing::{get, post};

/// The web UI as an axum router with its state applied.
///
/// It owns the paths `/`, `/login`, `/logout`, `/machines…` and `/static/…`
/// and answers anything else with a 404 page, so mount it last (e.g. as the
/// fallback of the binary's router, after `/api`). It needs no extra layer:
/// security headers are set here. Behind a TLS-terminating proxy, have the
/// proxy send `X-Forwarded-Proto: https` so the session cookie is `Secure`.
pub fn router(app: App) -> Router {
    use views::{boot, enroll, login, machine_form, machines, power};
    Router::new()
        .route("/", get(views::home))
        .route("/login", get(login::page).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/machines", get(machines::list).post(machine_form::create))
        .route("/machines/new", get(machine_form::new_page))
        .route("/machines/enroll", get(enroll::page).post(enroll::submit))
        .route("/machines/actions", post(power::bulk))
        .route("/machines/{id}", get(machines::detail))
        .route(
            "/machines/{id}/edit",
            get(machine_form::edit_page).post(machine_form::update),
        )
        .route("/machines/{id}/state", post(machines::change_state))
        .route("/machines/{id}/delete", post(machines::delete))
        .route("/machines/{id}/power", post(power::action))
        .route("/machines/{id}/power-state", post(power::check))
        .route("/machines/{id}/jobs", get(power::jobs_fragment))
        .route("/machines/{id}/boot-timeline", get(boot::fragment))
        .route("/machines/{id}/hardware", get(views::hardware::fragment))
        .route(
            "/machines/{id}/commission",
            post(views::hardware::commission),
        )
        .route("/machines/{id}/deployment", get(views::deploy::fragment))
        .route("/machines/{id}/deploy", post(views::deploy::deploy))
        .route("/machines/{id}/release", post(views::deploy::release))
        .route("/machines/{id}/rescue", post(views::deploy::rescue))
        .route(
            "/machines/{id}/exit-rescue",
            post(views::deploy::exit_rescue),
        )
        .route(
            "/machines/{id}/cloud-init",
            get(views::deploy::cloud_init_page),
        )
        .route("/netbox", get(views::netbox::page))
        .route("/images", get(views::images::page))
        .route("/instances", get(views::instances::page))
        .route("/static/{*path}", get(assets::serve))
        .fallback(error::not_found)
        .layer(axum::middleware::map_response(security::headers))
        .with_state(app)
}
