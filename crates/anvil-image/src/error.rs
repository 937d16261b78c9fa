use std::path::PathBuf;

/// Everything that can go wrong while importing or reading an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the image stream at raw offset {offset}")]
    Read {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("unsupported image format: {what}")]
    Unsupported { what: String },
    #[error(
        "qcow2 image refused: it has a backing file ({name:?}); flatten it first with `qemu-img convert -O qcow2 IN OUT`"
    )]
    BackingFile { name: String },
    #[error("qcow2 image refused: it is encrypted (method {method}); decrypt it first")]
    Encrypted { method: u32 },
    #[error(
        "qcow2 image refused: it stores its data in an external data file; convert it to a self-contained image first"
    )]
    ExternalDataFile,
    #[error(
        "qcow2 image refused: it is marked corrupt; repair it with `qemu-img check -r all` first"
    )]
    MarkedCorrupt,
    #[error("qcow2 image refused: unknown incompatible feature bits {bits:#x}")]
    UnknownFeatures { bits: u64 },
    #[error("invalid qcow2 image: {reason}")]
    InvalidQcow2 { reason: String },
    #[error("the compressed {format} stream is corrupt or truncated")]
    Decompress {
        format: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} changed while it was being imported; import it again once it is complete")]
    SourceChanged { path: PathBuf },
    #[error("image is empty")]
    Empty,
    #[error("image {sha256} is not in the library")]
    NotFound { sha256: String },
    #[error("{0:?} is not a sha256 (64 lowercase hex digits)")]
    BadDigest(String),
    #[error("zero map {path} is corrupt: {reason}")]
    BadZeroMap { path: PathBuf, reason: String },
    #[error("image {sha256} does not match its content (got {actual}): the stored file is damaged")]
    DigestMismatch { sha256: String, actual: String },
}

impl Error {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    pub(crate) fn qcow2(reason: impl Into<String>) -> Error {
        Error::InvalidQcow2 {
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
