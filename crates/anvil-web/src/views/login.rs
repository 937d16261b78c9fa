//! Login and logout.

use super::Layout;
use crate::auth::{self, CsrfForm, HasCsrfToken, Session};
use crate::error::PageError;
use anvil_core::App;
use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Form, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::CookieJar;
use http::{HeaderMap, StatusCode, Uri};
use serde::Deserialize;

/// The one message for a wrong username and a wrong password: telling them
/// apart would tell an attacker which accounts exist.
const BAD_LOGIN: &str = "Invalid username or password.";

#[derive(Template, WebTemplate)]
#[template(path = "pages/login.html")]
struct LoginPage {
    layout: Layout,
    username: String,
    next: String,
    error: Option<&'static str>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct LoginQuery {
    next: String,
}

/// `GET /login`. A visitor who is already logged in goes straight on.
pub(crate) async fn page(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Result<Response, PageError> {
    let next = auth::safe_next(&q.next);
    if Session::from_headers(&app, &headers).await?.is_some() {
        return Ok(Redirect::to(&next).into_response());
    }
    Ok(LoginPage {
        layout: Layout::anonymous(),
        username: String::new(),
        next,
        error: None,
    }
    .into_response())
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct LoginForm {
    username: String,
    password: String,
    next: String,
}

/// `POST /login`: on success a fresh session cookie and a redirect to
/// `next`; on failure 401 and the form again, username kept.
pub(crate) async fn submit(
    State(app): State<App>,
    headers: HeaderMap,
    uri: Uri,
    jar: CookieJar,
    Form(f): Form<LoginForm>,
) -> Result<Response, PageError> {
    if !auth::same_origin(&headers, uri.host()) {
        return Err(PageError::Forbidden(
            "This login request came from another site and was refused.".to_string(),
        ));
    }
    let next = auth::safe_next(&f.next);
    match app.login(f.username.trim(), &f.password).await? {
        Some(cookie) => {
            let jar = jar.add(auth::session_cookie(cookie, &headers));
            Ok((jar, Redirect::to(&next)).into_response())
        }
        None => {
            tracing::info!(username = %f.username.trim(), "web UI: failed login");
            let page = LoginPage {
                layout: Layout::anonymous(),
                username: f.username,
                next,
                error: Some(BAD_LOGIN),
            };
            Ok((StatusCode::UNAUTHORIZED, page).into_response())
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct LogoutForm {
    csrf_token: String,
}

impl HasCsrfToken for LogoutForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

/// `POST /logout`: ends the session on the server (the cookie alone is not
/// enough: a copied cookie would stay valid) and clears the cookie.
pub(crate) async fn logout(
    State(app): State<App>,
    headers: HeaderMap,
    jar: CookieJar,
    CsrfForm { session, .. }: CsrfForm<LogoutForm>,
) -> Result<Response, PageError> {
    app.logout(&session.secret).await?;
    let jar = jar.add(auth::cleared_cookie(&headers));
    Ok((jar, Redirect::to("/login")).into_response())
}
