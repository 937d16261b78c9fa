use std::path::PathBuf;

/// Everything that can go wrong in the store. The application layer maps
/// these to its own error; nothing above it sees sqlx.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {url}")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot create the data directory or lock file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the database {db} is already in use by another anvil process (lock held on {lock}); stop it first or use PostgreSQL for several instances"
    )]
    Locked { db: PathBuf, lock: PathBuf },
    #[error("unsupported database URL {url:?}: expected sqlite://PATH or postgres://…")]
    UnsupportedUrl { url: String },
    #[error("cannot apply database migrations")]
    Migrate {
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A unique constraint refused the write; `what` names the column.
    #[error("{what} {value:?} already exists")]
    Duplicate { what: &'static str, value: String },
    #[error("the record changed while it was being updated")]
    Concurrent,
    #[error("database operation failed: {op}")]
    Query {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("stored value of {column} is not valid: {message}")]
    Corrupt {
        column: &'static str,
        message: String,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Maps a sqlx error from operation `op` to a `StoreError`, recognising
/// unique-constraint violations so the caller can name the duplicate.
pub(crate) fn query_err(op: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| {
        if let sqlx::Error::Database(db) = &e
            && db.is_unique_violation()
        {
            let text = format!("{} {}", db.constraint().unwrap_or(""), db.message());
            let what = if text.contains("hostname") {
                "hostname"
            } else if text.contains("mac") {
                "mac"
            } else if text.contains("username") {
                "username"
            } else {
                "record"
            };
            return StoreError::Duplicate {
                what,
                value: String::new(),
            };
        }
        StoreError::Query { op, source: e }
    }
}

/// A stored value that does not decode, naming its column.
pub(crate) fn corrupt(column: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        column,
        message: e.to_string(),
    }
}
