//! The inventory store: the only crate that writes SQL.
//!
//! One `Store` runs on either SQLite (the embedded default) or PostgreSQL
//! (production, several instances). Each backend has its own migrations in
//! `migrations/sqlite` and `migrations/postgres`; the queries are written once
//! in SQL both understand and compiled once per backend by the `on_pool!`
//! macro, so the two cannot drift apart. The conformance suite in
//! `tests/store.rs` runs against both.

mod boot;
mod commission;
mod error;
mod images;
mod installer;
mod jobs;
mod machines;
mod netbox;
mod open;
mod principals;
mod ts;

pub use boot::{BootEventRecord, InterfaceIndexRow, LeaseRecord, LeaseWrite};
pub use commission::{AgentTokenRecord, FactsRecord, RunEnd, RunRecord, StepRecord, StepUpdate};
pub use error::{Result, StoreError};
pub use images::{ImageDelete, ImageRecord, ImageUser};
pub use installer::{InstallerImageRecord, InstallerRunRecord};
pub use jobs::{InstanceRecord, JobUpdate, OrphanJob};
pub use machines::{EventFilter, MachineFilter, MachineWrite, NewEvent, SecretUpdate, SortKey};
pub use netbox::{NetboxRun, NetboxRunCounts, OutboxEntry};
pub use open::{Access, Backend, redact_url};
pub use principals::{SessionRecord, UserRecord};
pub use ts::truncate_to_micros;

use sqlx::{PgPool, SqlitePool};
use std::fs::File;
use std::sync::Arc;

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A handle on the inventory database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// Held for the life of the process: a second `anvil serve` on the same
    /// SQLite file fails to take it and refuses to start.
    _lock: Option<Arc<File>>,
    /// SQLite has one writer at a time. Queuing writers here, in order,
    /// instead of letting pooled connections race for the file lock avoids
    /// SQLite's busy-handler sleeps (1–100 ms each), which dominated write
    /// latency under concurrency. `None` for PostgreSQL.
    writers: Option<Arc<tokio::sync::Mutex<()>>>,
    /// SQLite: the connection DHCP lease batches are committed on (see
    /// `boot.rs`), opened on first use. `None` for PostgreSQL.
    lease_conn: Option<Arc<tokio::sync::Mutex<Option<sqlx::SqliteConnection>>>>,
    /// The Anvil instance this handle works for: the owner stamped on the
    /// jobs it inserts (`for_instance`). `None` for tools and tests.
    instance: Option<uuid::Uuid>,
}

/// Runs `$body` with `$p` bound to the concrete pool, once per backend.
/// `$begin` is the statement that opens a write transaction: SQLite needs
/// `BEGIN IMMEDIATE` so that concurrent writers queue on the busy timeout
/// instead of failing when a read lock cannot be upgraded.
macro_rules! on_pool {
    ($self:expr, |$p:ident, $begin:ident| $body:expr) => {
        match &$self.pool {
            $crate::Pool::Sqlite($p) => {
                #[allow(unused_variables)]
                let $begin: &'static str = "BEGIN IMMEDIATE";
                $body
            }
            $crate::Pool::Postgres($p) => {
                #[allow(unused_variables)]
                let $begin: &'static str = "BEGIN";
                $body
            }
        }
    };
}
pub(crate) use on_pool;

impl Store {
    /// Serialises writers on SQLite (see `writers`); free on PostgreSQL.
    pub(crate) async fn write_guard(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.writers {
            Some(m) => Some(m.lock().await),
            None => None,
        }
    }

    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// Answers when the database can run a query (for `/readyz`).
    pub async fn ping(&self) -> Result<()> {
        on_pool!(self, |p, _b| {
            sqlx::query("SELECT 1")
                .execute(p)
                .await
                .map_err(error::query_err("ping"))?;
        });
        Ok(())
    }

    /// Closes every connection (at shutdown, so SQLite checkpoints its WAL).
    pub async fn close(&self) {
        on_pool!(self, |p, _b| p.close().await)
    }
}
