//! Response headers that make the browser enforce what the templates promise.

use axum::response::Response;
use http::HeaderValue;
use http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};

/// Only our own origin may supply anything. No page has inline script or
/// style, and htmx is configured (`includeIndicatorStyles`, `allowEval` off
/// in `base.html`) so that it needs neither `'unsafe-inline'` nor
/// `'unsafe-eval'`. `form-action` and `base-uri` close the two holes that
/// `default-src` does not cover.
const CSP: &str = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
                   form-action 'self'; object-src 'none'";

/// Adds the security headers to every UI response. Pages default to
/// `no-store` so that the back button after logout shows no inventory;
/// static assets set their own caching.
pub(crate) async fn headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    // For browsers that predate `frame-ancestors`.
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(CACHE_CONTROL) {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}
