//! What a sync reports, and the sync status: the bodies of
//! `POST /api/v1/netbox/sync` and `GET /api/v1/netbox/status`, shared by the
//! server and the CLI.

use crate::cables::CableSummary;
use crate::plan::{Conflict, Plan};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// The outcome of one sync (or, with `dry_run`, what it would do).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SyncReport {
    pub run_id: Option<i64>,
    pub dry_run: bool,
    /// Machines created in Anvil from NetBox devices.
    pub created: u64,
    /// Machines updated in Anvil (NetBox-owned fields, new links).
    pub updated: u64,
    /// Devices already in step on both sides.
    pub unchanged: u64,
    /// NetBox objects written (devices patched, interfaces and MACs created).
    pub written: u64,
    /// NetBox writes planned but not done (dry run, or NetBox failed).
    pub pending: u64,
    pub conflicts: Vec<Conflict>,
    /// The full plan (always for a dry run).
    pub plan: Option<Plan>,
    /// Why the sync failed, if it did.
    pub error: Option<String>,
    pub duration_ms: u64,
    /// LLDP neighbours as cables (`mapping.lldp_cables`). Cables are also
    /// counted in `written` / `pending`, their conflicts in `conflicts`.
    #[serde(default)]
    pub cables: CableSummary,
}

/// One recorded sync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SyncRunInfo {
    pub id: i64,
    /// `full`, `dry-run`, `webhook` or `write-back`.
    pub kind: String,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<OffsetDateTime>,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub written: u64,
    pub pending: u64,
    pub conflicts: u64,
    pub error: Option<String>,
}

/// Where the synchronisation stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NetboxStatus {
    /// Whether this server has a `[netbox]` configuration.
    pub enabled: bool,
    pub url: Option<String>,
    /// Whether webhooks are accepted (a secret is configured).
    pub webhook: bool,
    /// The latest full reconcile (not dry runs).
    pub last_sync: Option<SyncRunInfo>,
    /// The latest full reconcile that succeeded.
    pub last_success: Option<SyncRunInfo>,
    /// Machines whose changes still have to reach NetBox.
    pub pending_write_backs: u64,
    /// The oldest such change's error, when the last attempt failed.
    pub write_back_error: Option<String>,
    /// Conflicts found by the latest full reconcile.
    pub conflicts: Vec<Conflict>,
    /// The latest syncs of any kind, newest first.
    pub recent: Vec<SyncRunInfo>,
}
