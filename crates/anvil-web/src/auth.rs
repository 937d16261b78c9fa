//! Sessions, CSRF tokens and the rules around the login redirect.

use crate::error::PageError;
use anvil_core::{App, SessionCookie};
use anvil_types::User;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use http::header::{HOST, ORIGIN};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde::de::DeserializeOwned;

/// Name of the session cookie. Its value is the session secret; the store
/// keeps only its hash.
pub(crate) const SESSION_COOKIE: &str = "anvil_session";

/// Where a login goes when no (acceptable) `next` was given.
pub(crate) const HOME: &str = "/machines";

/// A logged-in user. Extracting it from a request that has no live session
/// answers with a redirect to the login page instead of running the handler.
pub(crate) struct Session {
    pub(crate) user: User,
    pub(crate) csrf_token: String,
    /// The cookie value, needed to end the session at logout.
    pub(crate) secret: String,
}

impl Session {
    /// The session behind the request's cookie, if it is live.
    pub(crate) async fn from_headers(
        app: &App,
        headers: &HeaderMap,
    ) -> Result<Option<Session>, PageError> {
        let jar = CookieJar::from_headers(headers);
        let Some(secret) = jar.get(SESSION_COOKIE).map(|c| c.value().to_string()) else {
            return Ok(None);
        };
        Ok(app.session(&secret).await?.map(|info| Session {
            user: info.user,
            csrf_token: info.csrf_token,
            secret,
        }))
    }
}

impl FromRequestParts<App> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Response> {
        match Session::from_headers(app, &parts.headers).await {
            Ok(Some(s)) => Ok(s),
            Ok(None) => Err(login_redirect(parts)),
            Err(e) => Err(e.into_response()),
        }
    }
}

/// Sends a visitor without a session to the login page. A page view keeps
/// its address in `next` so the login comes back to it; an htmx request gets
/// `HX-Redirect`, because a 303 would be followed inside the XHR and the
/// login form swapped into the page.
fn login_redirect(parts: &Parts) -> Response {
    let to = if parts.method == Method::GET || parts.method == Method::HEAD {
        let here = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        format!("/login?next={}", encode_component(here))
    } else {
        "/login".to_string()
    };
    if parts.headers.contains_key("hx-request") {
        let mut res = StatusCode::NO_CONTENT.into_response();
        if let Ok(v) = HeaderValue::from_str(&to) {
            res.headers_mut().insert("hx-redirect", v);
        }
        return res;
    }
    Redirect::to(&to).into_response()
}

/// A POST form from a logged-in user whose `csrf_token` field matches the
/// session's. Anything else is refused before the handler runs: no session
/// → login redirect, token missing or wrong → 403 page. The body is read
/// with `axum_extra`'s `Form`, which also takes a repeated field into a
/// `Vec` (the ticked checkboxes of a bulk action).
pub(crate) struct CsrfForm<T> {
    pub(crate) session: Session,
    pub(crate) form: T,
}

/// A form that carries the CSRF token in a field named `csrf_token`. Form
/// structs use `#[serde(default)]`, so a missing token deserialises to ""
/// and is refused as a mismatch rather than as a malformed form.
pub(crate) trait HasCsrfToken {
    fn csrf_token(&self) -> &str;
}

impl<T> FromRequest<App> for CsrfForm<T>
where
    T: DeserializeOwned + HasCsrfToken + Send,
{
    type Rejection = Response;

    async fn from_request(req: Request, app: &App) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let session = Session::from_request_parts(&mut parts, app).await?;
        let axum_extra::extract::Form(form) =
            axum_extra::extract::Form::<T>::from_request(Request::from_parts(parts, body), app)
                .await
                .map_err(|e| PageError::BadRequest(e.body_text()).into_response())?;
        if !tokens_match(form.csrf_token(), &session.csrf_token) {
            return Err(PageError::CsrfMismatch.into_response());
        }
        Ok(CsrfForm { session, form })
    }
}

/// Compares a submitted token with the session's without stopping at the
/// first differing byte, so response time does not reveal how much of a
/// guess was right. The length is not secret (every token has the same).
fn tokens_match(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    if a.is_empty() || a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Whether a login POST comes from a page of this server. The login form has
/// no session and so no CSRF token; `Origin`, which browsers send on every
/// cross-site POST, is the check instead (login CSRF would log a victim into
/// an attacker's account). Without `Origin` (old clients, curl) the request
/// is allowed: a browser attack always carries one.
pub(crate) fn same_origin(headers: &HeaderMap, uri_host: Option<&str>) -> bool {
    let Some(origin) = headers.get(ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    // HTTP/2 carries the host in the URI authority instead of `Host`.
    let host = headers.get(HOST).and_then(|h| h.to_str().ok()).or(uri_host);
    let authority = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    match (authority, host) {
        (Some(a), Some(h)) => a.eq_ignore_ascii_case(h),
        _ => false,
    }
}

/// Whether the browser reached us over https (through a TLS-terminating
/// proxy that says so). Only then is the cookie marked `Secure`: on a plain
/// http lab network a `Secure` cookie would never come back and nobody
/// could log in.
fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

/// The cookie that carries a new session.
pub(crate) fn session_cookie(session: SessionCookie, headers: &HeaderMap) -> Cookie<'static> {
    Cookie::build((SESSION_COOKIE, session.id))
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/")
        .max_age(session.max_age)
        .secure(over_https(headers))
        .build()
}

/// A cookie that makes the browser forget the session cookie.
pub(crate) fn cleared_cookie(headers: &HeaderMap) -> Cookie<'static> {
    Cookie::build((SESSION_COOKIE, ""))
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/")
        .max_age(time::Duration::ZERO)
        .secure(over_https(headers))
        .build()
}

/// The page to go to after login: `next` if it is a path on this server,
/// else the machine list. Anything that a browser could read as another
/// host (`//evil`, `/\evil`, `https://evil`, control characters that it
/// strips) is refused, so the login page cannot be used as an open redirect.
pub(crate) fn safe_next(next: &str) -> String {
    let local = next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && !next.chars().any(char::is_control)
        && next.len() <= 2048;
    if local {
        // A header value must be visible ASCII; non-ASCII (a decoded search
        // term) is percent-encoded, which the browser reads the same way.
        next.chars()
            .fold(String::with_capacity(next.len()), |mut s, c| {
                if c.is_ascii_graphic() {
                    s.push(c);
                } else {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        s.push_str(&format!("%{b:02X}"));
                    }
                }
                s
            })
    } else {
        HOME.to_string()
    }
}

/// Percent-encodes a query-string component (RFC 3986 unreserved characters
/// pass through).
pub(crate) fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_accepts_only_local_paths() {
        assert_eq!(safe_next("/machines/abc?x=1"), "/machines/abc?x=1");
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "evil.example",
            "",
            "/\tfoo",
            "javascript:alert(1)",
        ] {
            assert_eq!(safe_next(bad), HOME, "{bad:?}");
        }
        assert_eq!(safe_next("/machines?q=é"), "/machines?q=%C3%A9");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(tokens_match("abc", "abc"));
        assert!(!tokens_match("abd", "abc"));
        assert!(!tokens_match("ab", "abc"));
        assert!(!tokens_match("", ""));
    }

    #[test]
    fn origin_must_name_the_host() {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("anvil.lab:8080"));
        assert!(same_origin(&h, None), "no Origin header");
        h.insert(ORIGIN, HeaderValue::from_static("http://anvil.lab:8080"));
        assert!(same_origin(&h, None));
        h.insert(ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(!same_origin(&h, None));
        h.insert(ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h, None));
    }

    #[test]
    fn secure_only_over_https() {
        let session = || SessionCookie {
            id: "s".into(),
            max_age: time::Duration::hours(1),
        };
        let mut h = HeaderMap::new();
        let plain = session_cookie(session(), &h).to_string();
        assert!(!plain.contains("Secure"), "{plain}");
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(plain.contains("Path=/") && plain.contains("Max-Age=3600"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(session_cookie(session(), &h).to_string().contains("Secure"));
    }

    #[test]
    fn components_are_encoded() {
        assert_eq!(encode_component("/m?a=b&c"), "%2Fm%3Fa%3Db%26c");
    }
}
