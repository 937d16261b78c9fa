//! Static assets (CSS, logo, vendored htmx), embedded in the binary.

use axum::body::Body;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use http::{HeaderMap, HeaderValue, StatusCode};
use std::fmt::Write;

#[derive(rust_embed::Embed)]
#[folder = "../../web/static"]
struct Static;

/// Serves `/static/{path}`. Assets are revalidated on every use
/// (`no-cache` + a content-hash `ETag`) rather than cached for a fixed time,
/// so an upgrade never leaves a browser with yesterday's CSS; the check
/// costs one 304.
pub(crate) async fn serve(Path(path): Path<String>, headers: HeaderMap) -> Response {
    let Some(file) = Static::get(&path) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let etag = file
        .metadata
        .sha256_hash()
        .iter()
        .fold(String::from("\""), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
        + "\"";
    let Ok(etag) = HeaderValue::from_str(&etag) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let cached = headers
        .get(IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let mime = HeaderValue::from_str(file.metadata.mimetype())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let mut res = if cached {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Response::new(Body::from(file.data.into_owned()))
    };
    let h = res.headers_mut();
    h.insert(ETAG, etag);
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if !cached {
        h.insert(CONTENT_TYPE, mime);
    }
    res
}
