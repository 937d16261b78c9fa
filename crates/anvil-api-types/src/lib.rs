//! Bodies of Anvil's REST API (`/api/v1`): what clients send and receive.
//!
//! Request bodies reject unknown fields, so a typo in a playbook is an error
//! rather than a silently ignored key. Responses reuse the domain records of
//! `anvil-types`, which never carry secrets.

pub mod agent;
pub mod deploy;
pub mod images;
pub mod installer;

use anvil_types::{Architecture, BmcDriver, Firmware, MachineState};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub use anvil_types::{Bmc, Event, Interface, Machine, Token, User};

/// Distinguishes a field that is absent (`None`) from one set to `null`
/// (`Some(None)`) in a PATCH body.
fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// An interface as given when creating or replacing interfaces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InterfaceInput {
    /// MAC address; `aa:bb:cc:dd:ee:ff`, `aa-bb-…` or `aabb.ccdd.eeff`.
    #[schema(example = "52:54:00:12:34:56")]
    pub mac: String,
    /// Interface name; defaults to `eth<N>` in the order given.
    #[serde(default)]
    pub name: Option<String>,
    /// Boot from this interface; defaults to true for the first interface.
    #[serde(default)]
    pub pxe: Option<bool>,
    /// Reserved IPv4 address.
    #[serde(default)]
    pub ipv4: Option<String>,
}

/// Changes to one interface.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InterfacePatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pxe: Option<bool>,
    /// `null` removes the reservation.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub ipv4: Option<Option<String>>,
}

/// A BMC as given by a client. The password is write-only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BmcInput {
    pub driver: BmcDriver,
    /// Host name or IP address of the BMC.
    pub address: String,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub username: Option<String>,
    /// Stored encrypted; never returned. Omit in a PATCH to keep the stored one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Verify the BMC's TLS certificate (default true).
    #[serde(default)]
    pub verify_tls: Option<bool>,
}

/// Body of `POST /api/v1/machines`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MachineCreate {
    #[schema(example = "node-01")]
    pub hostname: String,
    #[serde(default)]
    pub architecture: Option<Architecture>,
    #[serde(default)]
    pub firmware: Option<Firmware>,
    #[serde(default)]
    pub vendor: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub serial: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Free-form facts (a JSON object).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub facts: Option<serde_json::Value>,
    #[serde(default)]
    pub interfaces: Vec<InterfaceInput>,
    #[serde(default)]
    pub bmc: Option<BmcInput>,
}

/// Body of `PATCH /api/v1/machines/{id}`: absent fields are left alone,
/// `null` clears an optional field. `tags` and `interfaces` replace the
/// whole list. A PATCH that changes nothing writes nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MachinePatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<Architecture>)]
    pub architecture: Option<Option<Architecture>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<Firmware>)]
    pub firmware: Option<Option<Firmware>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub vendor: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub model: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub serial: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub facts: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<InterfaceInput>>,
    /// `null` removes the BMC.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<BmcInput>)]
    pub bmc: Option<Option<BmcInput>>,
}

/// Body of `POST /api/v1/machines/{id}/state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateChange {
    pub state: MachineState,
    /// Required when moving to `failed`; kept for `failed` and `broken`.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Sort keys of the machine list; prefix with `-` for descending.
pub const MACHINE_SORT_KEYS: &[&str] = &["hostname", "created_at", "updated_at", "state"];

/// Query of `GET /api/v1/machines`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MachineQuery {
    /// Only machines in this lifecycle state.
    pub state: Option<String>,
    /// Only machines with this tag.
    pub tag: Option<String>,
    /// Only the machine with an interface of this MAC.
    pub mac: Option<String>,
    /// Case-insensitive substring of the hostname.
    pub hostname: Option<String>,
    /// `hostname` (default), `created_at`, `updated_at` or `state`; `-` prefix for descending.
    pub sort: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<u32>,
    /// Number of machines to skip (default 0).
    pub offset: Option<u64>,
}

/// A page of machines. Order is total (ties broken by id), so pages do not
/// overlap or skip while nothing changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MachineList {
    pub items: Vec<Machine>,
    /// Number of machines matching the filter.
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
    /// Offset of the next page, absent on the last page.
    pub next_offset: Option<u64>,
}

/// Query of the event feeds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Only events at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Only events with an id greater than this (to follow the feed).
    pub after: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    pub items: Vec<Event>,
    /// Pass as `after` to get the next events; absent when the page is empty.
    pub next_after: Option<i64>,
}

/// Body of `POST /api/v1/tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    #[schema(example = "ansible")]
    pub name: String,
}

/// A new token. The secret is shown this once and is not stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    #[serde(flatten)]
    pub token: Token,
    /// Send as `Authorization: Bearer <secret>`.
    pub secret: String,
}

/// Body of `POST /api/v1/users`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserCreate {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub is_admin: bool,
}

/// Body of `PUT /api/v1/users/{username}/password`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    pub password: String,
}

/// An RFC 9457 problem detail; every API error has this body with
/// content type `application/problem+json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// Stable identifier of the kind of problem, e.g.
    /// `https://anvil.dev/problems/duplicate`.
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The request field at fault, for validation problems.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The existing machine, for duplicates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing_id: Option<Uuid>,
    /// The machine's current state, for refused transitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_state: Option<MachineState>,
}

/// The problem types (the `type` member), stable across releases.
pub mod problem_types {
    pub const BASE: &str = "https://anvil.dev/problems/";
    pub const NOT_FOUND: &str = "https://anvil.dev/problems/not-found";
    pub const DUPLICATE: &str = "https://anvil.dev/problems/duplicate";
    pub const INVALID_TRANSITION: &str = "https://anvil.dev/problems/invalid-transition";
    pub const CONCURRENT_UPDATE: &str = "https://anvil.dev/problems/concurrent-update";
    pub const VALIDATION: &str = "https://anvil.dev/problems/validation";
    pub const MALFORMED: &str = "https://anvil.dev/problems/malformed-request";
    pub const UNAUTHORIZED: &str = "https://anvil.dev/problems/unauthorized";
    pub const FORBIDDEN: &str = "https://anvil.dev/problems/forbidden";
    pub const PAYLOAD_TOO_LARGE: &str = "https://anvil.dev/problems/payload-too-large";
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "https://anvil.dev/problems/unsupported-media-type";
    pub const METHOD_NOT_ALLOWED: &str = "https://anvil.dev/problems/method-not-allowed";
    pub const UNAVAILABLE: &str = "https://anvil.dev/problems/unavailable";
    pub const BMC: &str = "https://anvil.dev/problems/bmc";
    pub const INTERNAL: &str = "https://anvil.dev/problems/internal";
    pub const IN_USE: &str = "https://anvil.dev/problems/in-use";
    pub const NETBOX: &str = "https://anvil.dev/problems/netbox";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_tells_absent_from_null() {
        let p: MachinePatch = serde_json::from_str(r#"{"vendor": null}"#).unwrap();
        assert_eq!(p.vendor, Some(None));
        assert_eq!(p.model, None);
        let p: MachinePatch = serde_json::from_str(r#"{"bmc": null}"#).unwrap();
        assert_eq!(p.bmc, Some(None));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = serde_json::from_str::<MachineCreate>(r#"{"hostname": "a", "hostnme": "b"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("hostnme"), "{e}");
    }
}

/// A DHCP lease, as `GET /api/v1/leases` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Lease {
    #[schema(example = "52:54:00:12:34:56")]
    pub mac: String,
    #[schema(example = "10.77.0.100")]
    pub address: String,
    /// The boot network (`[[dhcp.network]]` name).
    pub network: String,
    /// `offered`, `bound`, `declined`, …
    pub state: String,
    pub hostname: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: time::OffsetDateTime,
    /// The machine that owns this MAC, if any.
    pub machine_id: Option<Uuid>,
}

/// Query of `GET /api/v1/leases`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LeaseQuery {
    /// Only the leases of this MAC address.
    pub mac: Option<String>,
}

/// One step of a network boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BootEvent {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub time: time::OffsetDateTime,
    pub mac: String,
    /// `dhcp.discover`, `dhcp.offer`, `dhcp.request`, `dhcp.ack`, `tftp.transfer`,
    /// `http.script`, `http.kernel`, `http.initrd`, `callhome`, …
    pub kind: String,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// The boot timeline of a machine: every recorded step of its latest boots,
/// and which of the expected steps its latest boot has reached, so an
/// operator sees where a boot stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BootTimeline {
    pub machine_id: Uuid,
    pub macs: Vec<String>,
    pub events: Vec<BootEvent>,
    /// The steps of the latest boot (since its last DHCP DISCOVER), in order,
    /// each with the time it was first seen or null.
    pub steps: Vec<BootStep>,
    /// The step after which nothing more happened, if the boot is incomplete.
    pub stopped_after: Option<String>,
    /// Whether the latest boot reached `callhome`.
    pub complete: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BootStep {
    pub kind: String,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub time: Option<time::OffsetDateTime>,
}

/// Body of `POST /api/v1/discovery/callhome`, sent by the discovery
/// environment once it is up. Unauthenticated (like MAAS enlistment): it can
/// only add facts to the machine that owns `mac`, or create it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallHome {
    /// The MAC the machine booted from.
    #[schema(example = "52:54:00:12:34:56")]
    pub mac: String,
    /// Every MAC the environment sees.
    #[serde(default)]
    pub macs: Vec<String>,
    /// The address it got by DHCP.
    #[serde(default)]
    pub ip: Option<String>,
    /// Seconds since the kernel started.
    #[serde(default)]
    pub uptime_secs: Option<f64>,
    /// Anything else it knows (a JSON object, at most 64 KiB).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub facts: Option<serde_json::Value>,
}

/// Answer to a call-home.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CallHomeAck {
    pub machine_id: Uuid,
    pub hostname: String,
    /// Whether this call created the machine.
    pub created: bool,
}

pub use anvil_types::{Job, JobStatus};

/// Body of `POST /api/v1/enroll`: a machine by its BMC. Anvil probes the BMC
/// and creates the machine in state `new` with what the BMC reports; the NICs
/// it reports become interfaces, so the machine is recognised when it
/// PXE-boots. Enrolling the same BMC again changes nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub driver: BmcDriver,
    /// Host name or IP address, optionally `:port`.
    #[schema(example = "10.10.0.21")]
    pub address: String,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub username: Option<String>,
    /// Write-only: stored encrypted, never returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Hostname for the new machine; derived from the BMC's report if absent.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Verify the BMC's TLS certificate (default true).
    #[serde(default)]
    pub verify_tls: Option<bool>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// MACs of the machine's NICs, the PXE NIC first, for BMCs that report
    /// none (IPMI): they become the machine's interfaces, so the machine is
    /// recognised when it PXE-boots. Ignored when the BMC reports its NICs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub macs: Vec<String>,
}

/// Answer to an enrolment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EnrollResult {
    pub machine: Machine,
    /// True when this call enrolled the BMC: it created the machine, or
    /// attached the BMC to the machine already discovered with its NICs.
    /// False when the BMC was already enrolled (nothing changed).
    pub created: bool,
}

/// Body of `POST /api/v1/actions/{action}`: the machines to act on, by
/// tag, state or list (at least one), combined with AND.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkSelector {
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub state: Option<MachineState>,
    /// Machine ids or hostnames.
    #[serde(default)]
    pub machines: Option<Vec<String>>,
}

/// Jobs started by one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub items: Vec<Job>,
}

/// An `anvil serve` process sharing the database (several share one
/// PostgreSQL database; SQLite has one at a time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    pub id: Uuid,
    /// The host it runs on.
    pub hostname: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: time::OffsetDateTime,
    /// Its last heartbeat (every 5 s while it runs).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub seen_at: time::OffsetDateTime,
    /// When it stopped cleanly, or was taken for gone by another instance.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub stopped_at: Option<time::OffsetDateTime>,
    /// Running and heard from within the last 60 s: its jobs are its own.
    pub live: bool,
    /// The live instance that runs the NetBox sync and the power poller.
    pub leader: bool,
    /// The instance that answered this request.
    pub this: bool,
}

impl Instance {
    /// `live`, `stopped` (cleanly, or taken for gone), or `silent` (neither
    /// stopped nor heard from within 60 s: crashed, or cut off).
    pub fn status(&self) -> &'static str {
        match (self.live, self.stopped_at) {
            (true, _) => "live",
            (false, Some(_)) => "stopped",
            (false, None) => "silent",
        }
    }
}

/// The instances on record, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InstanceList {
    pub items: Vec<Instance>,
}
