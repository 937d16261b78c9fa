//! Error pages. User mistakes in forms never get here: those re-render the
//! form with the message beside the field. This is for what a form cannot
//! show: a missing machine, a refused CSRF token, a database that is down.

use crate::views::Layout;
use askama::Template;
use askama_web::WebTemplate;
use axum::response::{IntoResponse, Response};
use http::{StatusCode, Uri};

#[derive(Debug)]
pub(crate) enum PageError {
    NotFound(String),
    CsrfMismatch,
    Forbidden(String),
    BadRequest(String),
    Conflict(String),
    Unavailable,
    Internal,
}

impl From<anvil_core::Error> for PageError {
    fn from(e: anvil_core::Error) -> Self {
        use anvil_core::Error as E;
        match e {
            E::NotFound { .. } => PageError::NotFound(e.to_string()),
            E::Duplicate { .. } | E::Transition { .. } | E::Concurrent { .. } => {
                PageError::Conflict(e.to_string())
            }
            E::Invalid { .. } | E::PowerDisabled => PageError::BadRequest(e.to_string()),
            // A BMC's failure is the operator's to see and fix (the text never
            // holds a password); shown like a conflict, not as a server fault.
            E::Bmc(m) => PageError::Conflict(m),
            E::InUse { .. } => PageError::Conflict(e.to_string()),
            E::NetboxDisabled => PageError::BadRequest(e.to_string()),
            E::Netbox(m) => PageError::Conflict(format!("NetBox: {m}")),
            E::Unauthenticated | E::AgentUnauthenticated => PageError::Forbidden(e.to_string()),
            E::Agent { .. } => PageError::Conflict(e.to_string()),
            E::TooLarge { .. } => PageError::BadRequest(e.to_string()),
            E::Forbidden(m) => PageError::Forbidden(m.to_string()),
            E::Unavailable { .. } => {
                tracing::error!(error = %anvil_core::error_chain(&e), "web UI: store unavailable");
                PageError::Unavailable
            }
            E::Internal { .. } => {
                tracing::error!(error = %anvil_core::error_chain(&e), "web UI: internal error");
                PageError::Internal
            }
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "pages/error.html")]
struct ErrorPage {
    layout: Layout,
    status: u16,
    title: &'static str,
    message: String,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title, message) = match self {
            PageError::NotFound(m) => (StatusCode::NOT_FOUND, "Not found", m),
            PageError::CsrfMismatch => (
                StatusCode::FORBIDDEN,
                "Form expired",
                "This form did not carry a valid security token, so nothing was changed. \
                 Go back, reload the page and try again."
                    .to_string(),
            ),
            PageError::Forbidden(m) => (StatusCode::FORBIDDEN, "Not allowed", m),
            PageError::BadRequest(m) => (StatusCode::BAD_REQUEST, "Bad request", m),
            PageError::Conflict(m) => (StatusCode::CONFLICT, "Conflict", m),
            PageError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Database unavailable",
                "Anvil cannot reach its database right now. Try again in a moment.".to_string(),
            ),
            PageError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "Anvil hit an internal error; the details are in the server log.".to_string(),
            ),
        };
        let page = ErrorPage {
            layout: Layout::anonymous(),
            status: status.as_u16(),
            title,
            message,
        };
        (status, page).into_response()
    }
}

/// The 404 page for paths the UI does not serve.
pub(crate) async fn not_found(uri: Uri) -> PageError {
    PageError::NotFound(format!("There is no page at {}.", uri.path()))
}
