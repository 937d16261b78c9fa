//! Extractors whose rejections are problem+json, so malformed input of any
//! kind is a 4xx with a body that says what was wrong.

use crate::error::ApiError;
use anvil_api_types::problem_types as pt;
use anvil_core::{App, Principal};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// The authenticated caller of an API request.
pub struct Auth(pub Principal);

impl FromRequestParts<App> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or(anvil_core::Error::Unauthenticated)?;
        let value = header
            .to_str()
            .map_err(|_| anvil_core::Error::Unauthenticated)?;
        let (scheme, secret) = value
            .split_once(' ')
            .ok_or(anvil_core::Error::Unauthenticated)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(anvil_core::Error::Unauthenticated.into());
        }
        Ok(Auth(app.authenticate_token(secret.trim()).await?))
    }
}

/// JSON body; rejections become problem+json. The body is parsed in two
/// steps so the answer says which is wrong: not JSON at all (400), or JSON
/// of the wrong shape (422, naming the field by its path, e.g.
/// `interfaces[0].mac`).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                pt::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported media type",
                "send the body as JSON with 'Content-Type: application/json'",
            ));
        }
        let body = bytes::Bytes::from_request(req, state)
            .await
            .map_err(|rej| {
                if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        pt::PAYLOAD_TOO_LARGE,
                        "Payload too large",
                        format!("the request body is larger than {} bytes", crate::MAX_BODY),
                    )
                } else {
                    ApiError::malformed(rej.body_text())
                }
            })?;
        let value: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::malformed(format!("the body is not valid JSON: {e}")))?;
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Ok(ApiJson(v)),
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner().to_string();
                // For an unknown field serde names it in the message, and the
                // path is its parent; name the offending field itself.
                let field = match inner.split('`').nth(1) {
                    Some(f)
                        if inner.starts_with("unknown field")
                            || inner.starts_with("missing field") =>
                    {
                        if path == "." {
                            f.to_string()
                        } else {
                            format!("{path}.{f}")
                        }
                    }
                    _ => path.clone(),
                };
                let field = (field != ".").then_some(field);
                let detail = match &field {
                    Some(f) => format!("{f}: {inner}"),
                    None => inner,
                };
                Err(ApiError::validation(field, detail))
            }
        }
    }
}

/// Query string; rejections become problem+json.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(rej) => Err(query_rejection(rej)),
        }
    }
}

fn query_rejection(rej: QueryRejection) -> ApiError {
    let detail = rej.body_text();
    let field = detail.split('`').nth(1).map(str::to_string);
    let mut e = ApiError::malformed(detail);
    e.problem.field = field;
    e
}

/// Path parameters; a value that does not parse (a bad UUID) is a 404: no
/// such resource can exist.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(rej) => Err(path_rejection(rej)),
        }
    }
}

fn path_rejection(rej: PathRejection) -> ApiError {
    ApiError::not_found(rej.body_text())
}
