//! Extractors whose rejections are problem+json, so malformed input of any
//! kind is a 4xx with a body that says what was wrong.

use crate::error::ApiError;
use anvil_api_types::problem_types as pt;
use anvil_core::{App, Principal};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
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
        let value = header.to_str().map_err(|_| anvil_core::Error::Unauthenticated)?;
        let (scheme, secret) = value.split_once(' ').ok_or(anvil_core::Error::Unauthenticated)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(anvil_core::Error::Unauthenticated.into());
        }
        Ok(Auth(app.authenticate_token(secret.trim()).await?))
    }
}

/// JSON body; rejections become problem+json.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(json_rejection(rej)),
        }
    }
}

fn json_rejection(rej: JsonRejection) -> ApiError {
    let status = rej.status();
    match rej {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            pt::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported media type",
            "send the body as JSON with 'Content-Type: application/json'",
        ),
        JsonRejection::JsonDataError(e) => {
            // serde's message names the field ("unknown field `hostnme`",
            // "invalid type: … at line 1 column 9").
            let detail = e.body_text();
            let field = detail
                .split('`')
                .nth(1)
                .filter(|_| detail.contains("field"))
                .map(str::to_string);
            ApiError::validation(field, detail)
        }
        JsonRejection::JsonSyntaxError(e) => ApiError::malformed(e.body_text()),
        other if status == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            pt::PAYLOAD_TOO_LARGE,
            "Payload too large",
            format!("the request body is larger than the limit ({})", other.body_text()),
        ),
        other => ApiError::malformed(other.body_text()),
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
