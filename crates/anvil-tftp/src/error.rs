//! The crate's one error type.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Errors of the TFTP service and its file sources. Variants carry the
/// context (which address, which path); the underlying cause is the
/// `#[source]`, never repeated in the message, so a log of the whole chain
/// shows each fact once.
#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    /// A `[tftp]` setting is out of range.
    #[error("invalid TFTP configuration: `{key}` {reason}")]
    InvalidConfig { key: &'static str, reason: String },

    /// The listening socket could not be bound (port in use, no permission
    /// for port 69, address not on this host).
    #[error("cannot bind the TFTP socket to {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },

    /// A socket option the service relies on was refused by the kernel.
    #[error("cannot set {option} on the TFTP socket")]
    SocketOption {
        option: &'static str,
        #[source]
        source: io::Error,
    },

    /// The service thread or its runtime could not be started, or the
    /// thread died.
    #[error("the TFTP service thread failed")]
    ServiceThread {
        #[source]
        source: io::Error,
    },

    /// A [`DirSource`](crate::DirSource) root (or an allowed symlink target
    /// directory) does not exist or is not a directory.
    #[error("TFTP directory {path} is not usable")]
    Root {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The requested path may not be served (`..`, NUL, a symlink leading
    /// out of the root, no permission). The client gets ERROR 2.
    #[error("access to {path:?} denied: {reason}")]
    AccessDenied { path: String, reason: &'static str },

    /// Opening or inspecting a file failed for another reason. The client
    /// gets ERROR 0 without the details.
    #[error("cannot open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl TftpError {
    pub(crate) fn denied(path: &str, reason: &'static str) -> TftpError {
        TftpError::AccessDenied {
            path: path.to_string(),
            reason,
        }
    }
}
