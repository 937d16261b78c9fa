use anvil_store::StoreError;
use anvil_types::{MachineState, ParseError, TransitionError};
use uuid::Uuid;

/// The only error the API, web UI and CLI see from the application layer.
/// Each variant maps to one HTTP status in `anvil-api` (and nowhere else).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    /// A unique value is taken; `existing` names the holder when known.
    #[error("{field} {value:?} is already used{}", existing.map(|e| format!(" by machine {e}")).unwrap_or_default())]
    Duplicate {
        field: &'static str,
        value: String,
        existing: Option<Uuid>,
    },
    #[error("{source}")]
    Transition {
        current: MachineState,
        #[source]
        source: TransitionError,
    },
    #[error("{what} changed while it was being updated; read it again and retry")]
    Concurrent { what: &'static str },
    /// A request value is invalid; `field` is its path in the request.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// A BMC refused, failed or did not answer. The text never holds a
    /// password (drivers guarantee it).
    #[error("{0}")]
    Bmc(String),
    /// This server was started without BMC drivers.
    #[error("power control is not enabled on this server")]
    PowerDisabled,
    /// Refused because other records use it (machines using an image).
    #[error("{kind} {name:?} is in use by {}", users.join(", "))]
    InUse {
        kind: &'static str,
        name: String,
        users: Vec<String>,
    },
    /// This server was started without a `[netbox]` configuration.
    #[error("NetBox synchronisation is not configured on this server")]
    NetboxDisabled,
    /// NetBox refused, failed or did not answer (never holds the token).
    #[error("NetBox: {0}")]
    Netbox(String),
    #[error("authentication required")]
    Unauthenticated,
    #[error("{0}")]
    Forbidden(&'static str),
    /// An agent call without a valid per-boot token.
    #[error("unknown or expired agent token")]
    AgentUnauthenticated,
    /// The agent protocol refuses a call (see docs/agent-protocol.md).
    #[error("{detail}")]
    Agent {
        problem: anvil_api_types::agent::AgentProblem,
        detail: String,
    },
    /// A request part is larger than allowed.
    #[error("{what} is {size} bytes, more than the {max} allowed")]
    TooLarge {
        what: &'static str,
        size: usize,
        max: usize,
    },
    #[error("the database is unavailable")]
    Unavailable {
        #[source]
        source: StoreError,
    },
    #[error("internal error: {context}")]
    Internal {
        context: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and all its causes on one line, for logs and CLI messages
/// (causes are kept out of `Display`, so nothing is printed twice).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl Error {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A parse error of a domain value, reported at request path `field`.
    pub fn from_parse(field: impl Into<String>, e: ParseError) -> Self {
        Error::Invalid {
            field: field.into(),
            message: format!("{:?} is not valid: {}", e.value, e.message),
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Duplicate { what, value } => Error::Duplicate {
                field: what,
                value,
                existing: None,
            },
            StoreError::Concurrent => Error::Concurrent { what: "the record" },
            e @ (StoreError::Query { .. } | StoreError::Open { .. }) => {
                Error::Unavailable { source: e }
            }
            other => Error::Internal {
                context: "store",
                source: Box::new(other),
            },
        }
    }
}
