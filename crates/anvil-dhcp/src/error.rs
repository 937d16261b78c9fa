//! The crate's one error type.

use std::io;

/// Everything that can go wrong in the DHCP service. Per-packet problems are
/// not errors: they are [`crate::DropReason`]s, counted and logged, because a
/// server facing untrusted layer-2 traffic must never stop on bad input.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// The configuration is invalid; the message names the key.
    #[error("invalid DHCP configuration: {0}")]
    Config(String),
    /// A socket could not be opened, bound or configured.
    #[error("DHCP socket {what}: {source}")]
    Socket {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The lease store failed (load or commit).
    #[error("lease store: {0}")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The service's thread or its runtime could not be started, or the
    /// thread died.
    #[error("DHCP service thread: {0}")]
    Runtime(#[source] io::Error),
    /// The lease store did not answer in time.
    #[error("lease store did not answer within {0:?}")]
    StoreTimeout(std::time::Duration),
}

impl DhcpError {
    /// Wraps any error of a [`crate::LeaseStore`] implementation.
    pub fn store(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        DhcpError::Store(Box::new(e))
    }

    pub(crate) fn socket(what: impl Into<String>, source: io::Error) -> Self {
        DhcpError::Socket {
            what: what.into(),
            source,
        }
    }
}
