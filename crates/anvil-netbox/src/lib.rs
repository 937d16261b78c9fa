//! NetBox synchronisation for Anvil.
//!
//! NetBox stays the operators' source of truth for what exists and where;
//! Anvil writes back what it discovers and does. This crate holds the three
//! parts that do not need Anvil's store:
//!
//! * `client`: a typed REST client (token header by the token's form, TLS
//!   verification on by default, timeouts, retries with backoff, cursor
//!   pagination with `?fields=`, bulk writes);
//! * `plan`: the **pure** reconcile: a NetBox snapshot and Anvil's machines
//!   in, a `Plan` out (machines to create or update in Anvil, NetBox writes,
//!   conflicts). Every ownership rule of `docs/netbox-sync.md` is decided
//!   there and unit-tested;
//! * `webhook`: `X-Hook-Signature` verification and event parsing.
//!
//! The application layer (`anvil_core::netbox`) joins them to the store.

pub mod cables;
pub mod client;
mod error;
pub mod model;
pub mod network;
pub mod plan;
pub mod report;
mod tls;
pub mod webhook;

pub use cables::{CableCreate, CablePlan, CableSkip, CableSummary};
pub use client::{ClientConfig, NetBoxClient, Scope, TokenKind};
pub use error::{Error, Result};
pub use model::{NbDevice, NbInterface, NbSnapshot};
pub use network::{NbIpAddress, NbNetInterface, NbNetwork};
pub use plan::{
    Conflict, ConflictKind, DevicePatch, InterfaceCreate, MacCreate, MachineImport, MachineUpdate,
    Mapping, NetBoxWrites, Plan, PlanInput, status_for_state,
};
pub use report::{NetboxStatus, SyncReport, SyncRunInfo};
pub use webhook::{SignatureError, WebhookEvent, verify_signature};
