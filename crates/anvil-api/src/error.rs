//! The one mapping from `anvil_core::Error` (and request rejections) to HTTP:
//! RFC 9457 problem+json with a stable `type`.

use anvil_api_types::{Problem, problem_types as pt};
use anvil_core::Error;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An error as the API answers it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Boxed: results carrying an ApiError stay small on the happy path.
    pub problem: Box<Problem>,
}

impl ApiError {
    pub fn new(status: StatusCode, type_: &str, title: &str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            problem: Box::new(Problem {
                type_: type_.to_string(),
                title: title.to_string(),
                status: status.as_u16(),
                detail: detail.into(),
                instance: None,
                field: None,
                existing_id: None,
                current_state: None,
            }),
        }
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, pt::NOT_FOUND, "Not found", detail)
    }

    pub fn malformed(detail: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            pt::MALFORMED,
            "Malformed request",
            detail,
        )
    }

    pub fn validation(field: Option<String>, detail: impl Into<String>) -> Self {
        let mut e = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            pt::VALIDATION,
            "Invalid request",
            detail,
        );
        e.problem.field = field;
        e
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match &e {
            Error::NotFound { .. } => ApiError::not_found(e.to_string()),
            Error::Duplicate {
                field, existing, ..
            } => {
                let mut a = ApiError::new(
                    StatusCode::CONFLICT,
                    pt::DUPLICATE,
                    "Already exists",
                    e.to_string(),
                );
                a.problem.field = Some(field.to_string());
                a.problem.existing_id = *existing;
                a
            }
            Error::Transition { current, .. } => {
                let mut a = ApiError::new(
                    StatusCode::CONFLICT,
                    pt::INVALID_TRANSITION,
                    "State change not allowed",
                    e.to_string(),
                );
                a.problem.current_state = Some(*current);
                a.problem.field = Some("state".into());
                a
            }
            Error::Concurrent { .. } => ApiError::new(
                StatusCode::CONFLICT,
                pt::CONCURRENT_UPDATE,
                "Concurrent update",
                e.to_string(),
            ),
            Error::Invalid { field, message } => {
                ApiError::validation(Some(field.clone()), format!("{field}: {message}"))
            }
            Error::PowerDisabled => ApiError::validation(Some("bmc".into()), format!("bmc: {e}")),
            Error::InUse { .. } => {
                ApiError::new(StatusCode::CONFLICT, pt::IN_USE, "In use", e.to_string())
            }
            Error::Bmc(detail) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                pt::BMC,
                "BMC error",
                detail.clone(),
            ),
            Error::NetboxDisabled => ApiError::new(
                StatusCode::CONFLICT,
                pt::NETBOX,
                "NetBox not configured",
                e.to_string(),
            ),
            Error::Netbox(detail) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                pt::NETBOX,
                "NetBox error",
                detail.clone(),
            ),
            Error::Unauthenticated => ApiError::new(
                StatusCode::UNAUTHORIZED,
                pt::UNAUTHORIZED,
                "Unauthorized",
                "a valid API token is required: send 'Authorization: Bearer <token>'",
            ),
            Error::Forbidden(why) => {
                ApiError::new(StatusCode::FORBIDDEN, pt::FORBIDDEN, "Forbidden", *why)
            }
            Error::AgentUnauthenticated => ApiError::new(
                StatusCode::UNAUTHORIZED,
                pt::UNAUTHORIZED,
                "Unauthorized",
                "unknown or expired agent token: send the per-boot token from the kernel command line (anvil.token) as 'Authorization: Bearer <token>'; a token is valid for one commissioning run",
            ),
            Error::Agent { problem, detail } => ApiError::new(
                StatusCode::CONFLICT,
                problem.type_uri(),
                problem.title(),
                detail.clone(),
            ),
            Error::TooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                pt::PAYLOAD_TOO_LARGE,
                "Payload too large",
                e.to_string(),
            ),
            Error::Unavailable { .. } => {
                tracing::error!(error = %chain(&e), "database unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    pt::UNAVAILABLE,
                    "Service unavailable",
                    "the database is unavailable; retry later",
                )
            }
            Error::Internal { .. } => {
                tracing::error!(error = %chain(&e), "internal error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    pt::INTERNAL,
                    "Internal error",
                    "an internal error occurred; the server log has the details",
                )
            }
        }
    }
}

pub use anvil_core::error_chain as chain;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.problem).unwrap_or_else(|_| b"{}".to_vec());
        let mut resp = (self.status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
