/// Everything that can go wrong talking to NetBox. Messages never carry the
/// API token.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid NetBox configuration: {0}")]
    Config(String),
    #[error("NetBox at {url} is unreachable")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("NetBox answered {status} to {method} {path}: {body}")]
    Status {
        method: &'static str,
        path: String,
        status: u16,
        /// The start of NetBox's answer (its validation messages).
        body: String,
    },
    #[error("NetBox's answer to {path} is not what Anvil expects: {message}")]
    Decode { path: String, message: String },
}

impl Error {
    /// Whether trying again later may succeed (NetBox down, slow, or busy).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. } => true,
            Error::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
