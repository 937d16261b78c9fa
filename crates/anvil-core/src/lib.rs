//! Anvil's application layer.
//!
//! The REST API, the web UI and the CLI (through the API) all act through
//! `App`; none of them touches the store directly. Rules that must hold
//! whichever way a request arrives live here: validation, the lifecycle,
//! idempotency, secrets handling and the audit log.

pub mod boot;
pub mod cloudinit;
pub mod commission;
pub mod crypto;
pub mod deploy;
mod error;
pub mod images;
pub mod installer;
mod instances;
mod machines;
pub mod netbox;
pub mod netconfig;
pub mod power;
mod power_writer;
mod principals;

pub use crypto::{KeyError, SecretBox};
pub use error::{Error, Result, error_chain};
pub use instances::Sweep;
pub use principals::{AdminBootstrap, Principal, SessionCookie, SessionInfo};

use anvil_store::Store;
use time::OffsetDateTime;

/// Limits on request values, shared by API and UI.
pub mod limits {
    pub const MAX_PAGE: u32 = 1000;
    pub const DEFAULT_PAGE: u32 = 100;
    pub const MAX_TAGS: usize = 64;
    pub const MAX_TAG_LEN: usize = 64;
    pub const MAX_INTERFACES: usize = 64;
    pub const MAX_TEXT: usize = 255;
    pub const MAX_FACTS_BYTES: usize = 256 * 1024;
    pub const MIN_PASSWORD: usize = 8;
}

#[derive(Clone)]
pub struct App {
    store: Store,
    secrets: SecretBox,
    session_ttl: time::Duration,
    boot: std::sync::Arc<boot::BootState>,
    power: Option<std::sync::Arc<power::PowerCtl>>,
    images: Option<std::sync::Arc<images::ImageCtl>>,
    installer: Option<std::sync::Arc<installer::InstallerConfig>>,
    commissioning: std::sync::Arc<commission::CommissioningConfig>,
    deploy: std::sync::Arc<deploy::DeployConfig>,
    netbox: Option<std::sync::Arc<netbox::NetboxCtl>>,
    /// This process among the instances sharing the store (`instances.rs`).
    instance: uuid::Uuid,
    /// Set by `stop_instance`, under the lock the heartbeat holds while it
    /// writes: once stopped, no heartbeat records the instance running again.
    stopped: std::sync::Arc<tokio::sync::Mutex<bool>>,
}

impl App {
    pub fn new(store: Store, secrets: SecretBox) -> Self {
        let instance = uuid::Uuid::now_v7();
        App {
            store: store.for_instance(instance),
            secrets,
            session_ttl: time::Duration::hours(12),
            boot: std::sync::Arc::new(boot::BootState::new()),
            power: None,
            images: None,
            installer: None,
            commissioning: Default::default(),
            deploy: Default::default(),
            netbox: None,
            instance,
            stopped: Default::default(),
        }
    }

    pub fn with_session_ttl(mut self, ttl: time::Duration) -> Self {
        self.session_ttl = ttl;
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether the database answers (for `/readyz`).
    pub async fn ready(&self) -> Result<()> {
        self.store
            .ping()
            .await
            .map_err(|source| Error::Unavailable { source })
    }
}

/// The current time at the precision the store keeps.
pub(crate) fn now() -> OffsetDateTime {
    anvil_store::truncate_to_micros(OffsetDateTime::now_utc())
}
