use crate::error::{Result, StoreError};
use crate::{Pool, Store};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// How a process uses a SQLite file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The server: one per file; a second is refused.
    Exclusive,
    /// A short-lived admin command beside a running server.
    Shared,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        })
    }
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

impl Store {
    /// Opens the store named by `url` and applies pending migrations.
    /// `sqlite://PATH` (or a bare path) opens SQLite; `postgres://…` and
    /// `postgresql://…` open PostgreSQL.
    pub async fn open(url: &str) -> Result<Store> {
        Store::open_with(url, Access::Exclusive).await
    }

    /// Like `open`, with the SQLite access mode made explicit: the server
    /// takes the file exclusively; short admin commands (`anvil token create
    /// --local`) share it with a running server, as SQLite's WAL allows.
    pub async fn open_with(url: &str, access: Access) -> Result<Store> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Store::open_postgres(url).await;
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"));
        match path {
            Some(p) => Store::open_sqlite_with(Path::new(p), access).await,
            None if !url.contains("://") => Store::open_sqlite_with(Path::new(url), access).await,
            None => Err(StoreError::UnsupportedUrl {
                url: url.to_string(),
            }),
        }
    }

    /// Opens (creating if needed) a SQLite database file in WAL mode and locks
    /// it for this process.
    pub async fn open_sqlite(path: &Path) -> Result<Store> {
        Store::open_sqlite_with(path, Access::Exclusive).await
    }

    pub async fn open_sqlite_with(path: &Path, access: Access) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let lock = match access {
            Access::Exclusive => Some(Arc::new(lock_file(path)?)),
            Access::Shared => None,
        };
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed write survives a power cut, not only a crash.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                url: path.display().to_string(),
                source,
            })?;
        SQLITE_MIGRATIONS
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate { source })?;
        Ok(Store {
            pool: Pool::Sqlite(pool),
            _lock: lock,
            writers: Some(Arc::new(tokio::sync::Mutex::new(()))),
            lease_conn: Some(Arc::new(tokio::sync::Mutex::new(None))),
            instance: None,
        })
    }

    /// Connects to PostgreSQL and applies pending migrations. Several Anvil
    /// instances may share one PostgreSQL database.
    pub async fn open_postgres(url: &str) -> Result<Store> {
        let redacted = redact_url(url);
        // Fail fast on a malformed URL with the URL (minus password) in the message.
        sqlx::postgres::PgConnectOptions::from_str(url).map_err(|source| StoreError::Open {
            url: redacted.clone(),
            source,
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|source| StoreError::Open {
                url: redacted,
                source,
            })?;
        POSTGRES_MIGRATIONS
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate { source })?;
        Ok(Store {
            pool: Pool::Postgres(pool),
            _lock: None,
            writers: None,
            lease_conn: None,
            instance: None,
        })
    }
}

/// Takes an exclusive, non-blocking lock on `<db>.lock`. The OS drops it when
/// the process exits, however it exits, so a crash never leaves a stale lock.
fn lock_file(db: &Path) -> Result<File> {
    let mut lock_path: PathBuf = db.to_path_buf().into_os_string().into();
    lock_path.as_mut_os_string().push(".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| StoreError::Io {
            path: lock_path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
            db: db.to_path_buf(),
            lock: lock_path,
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(StoreError::Io {
            path: lock_path,
            source,
        }),
    }
}

/// A database URL fit for logs and error messages: the password replaced.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
    {
        let user = userinfo.split(':').next().unwrap_or("");
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact_url("postgres://anvil:s3cret@db:5432/anvil"),
            "postgres://anvil:***@db:5432/anvil"
        );
        assert_eq!(super::redact_url("postgres:///anvil"), "postgres:///anvil");
    }
}
