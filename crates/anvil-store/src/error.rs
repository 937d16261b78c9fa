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

impl StoreError {
    /// Whether the same write may succeed if it is tried again shortly: the
    /// database was busy or locked (SQLite, past its busy timeout), a
    /// transaction lost a serialisation race or a deadlock, or the
    /// connection or the pool failed (PostgreSQL restarting, a network
    /// blip). Constraint violations, corrupt values and bad SQL are not:
    /// trying them again only repeats the failure.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Query { source, .. } => sqlx_transient(source),
            _ => false,
        }
    }
}

fn sqlx_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| transient_code(&c)),
        _ => false,
    }
}

/// Transient error codes. PostgreSQL's are SQLSTATEs, always five
/// characters; SQLite's are numbers of at most four digits (extended codes
/// keep the primary code in their low byte).
fn transient_code(code: &str) -> bool {
    if code.len() == 5 {
        // serialization_failure, deadlock_detected, too_many_connections,
        // the connection-exception class, and admin/crash shutdown (the
        // server is restarting).
        return matches!(
            code,
            "40001" | "40P01" | "53300" | "57P01" | "57P02" | "57P03"
        ) || code.starts_with("08");
    }
    // SQLITE_BUSY (5), SQLITE_LOCKED (6), and their extended forms.
    code.parse::<i32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6))
}

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

#[cfg(test)]
mod tests {
    use super::transient_code;

    #[test]
    fn transient_codes() {
        // SQLite: BUSY, LOCKED, BUSY_RECOVERY (261), BUSY_SNAPSHOT (517),
        // LOCKED_SHAREDCACHE (262).
        for c in ["5", "6", "261", "517", "262"] {
            assert!(transient_code(c), "{c}");
        }
        // SQLite: CONSTRAINT_UNIQUE (2067), CORRUPT (11), READONLY (8).
        for c in ["2067", "11", "8", "19"] {
            assert!(!transient_code(c), "{c}");
        }
        // PostgreSQL.
        for c in ["40001", "40P01", "08006", "08003", "57P01", "53300"] {
            assert!(transient_code(c), "{c}");
        }
        // unique_violation, foreign_key_violation, syntax_error, undefined_table.
        for c in ["23505", "23503", "42601", "42P01"] {
            assert!(!transient_code(c), "{c}");
        }
    }
}
