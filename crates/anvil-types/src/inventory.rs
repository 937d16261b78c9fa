//! Inventory records as every layer sees them. Secrets (BMC passwords,
//! token and password hashes) are deliberately absent: they never leave the
//! store and the application layer.

use crate::{MacAddr, MachineState, ParseError};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident, $field:literal, { $($(#[$vm:meta])* $var:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        pub enum $name { $($(#[$vm])* #[serde(rename = $s)] $var),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$var),+];
            pub fn as_str(self) -> &'static str { match self { $($name::$var => $s),+ } }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                let l = s.trim().to_ascii_lowercase();
                $name::ALL.iter().copied().find(|v| v.as_str() == l)
                    .ok_or_else(|| ParseError::new($field, s, concat!("expected one of: ", $($s, " "),+)))
            }
        }
    };
}

string_enum!(
    /// CPU architecture, named as Debian and MAAS name them.
    Architecture, "architecture", {
    Amd64 => "amd64",
    Arm64 => "arm64",
    I386 => "i386",
    Ppc64el => "ppc64el",
    S390x => "s390x",
    Riscv64 => "riscv64",
});

string_enum!(
    /// Boot firmware of a machine.
    Firmware, "firmware", {
    Bios => "bios",
    Uefi => "uefi",
});

string_enum!(
    /// How Anvil talks to a machine's BMC.
    BmcDriver, "driver", {
    Redfish => "redfish",
    Ipmi => "ipmi",
});

/// A network interface of a machine. A MAC belongs to at most one machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Interface {
    pub id: Uuid,
    #[schema(value_type = String, example = "52:54:00:12:34:56")]
    pub mac: MacAddr,
    pub name: String,
    /// Whether the machine network-boots from this interface.
    pub pxe: bool,
    /// Reserved IPv4 address, if any.
    pub ipv4: Option<String>,
}

/// A machine's baseboard management controller. The password is write-only:
/// `has_password` says whether one is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Bmc {
    pub driver: BmcDriver,
    pub address: String,
    pub port: Option<u16>,
    pub username: Option<String>,
    pub has_password: bool,
    /// Verify the BMC's TLS certificate (Redfish).
    pub verify_tls: bool,
}

/// A machine in the inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Machine {
    pub id: Uuid,
    pub hostname: String,
    pub state: MachineState,
    /// Why the machine is `failed` or `broken`.
    pub state_reason: Option<String>,
    pub architecture: Option<Architecture>,
    pub firmware: Option<Firmware>,
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub tags: Vec<String>,
    /// Free-form facts (JSON object).
    #[schema(value_type = Object)]
    pub facts: serde_json::Value,
    pub interfaces: Vec<Interface>,
    pub bmc: Option<Bmc>,
    /// Last power state read from the BMC (`on` or `off`), if ever read.
    #[serde(default)]
    pub power_state: Option<String>,
    /// When `power_state` was read.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub power_checked_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

/// One entry of the append-only audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Increasing; use it as a cursor (`after=`).
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub time: OffsetDateTime,
    /// Who caused it: `user:NAME`, `token:NAME` or `system`.
    pub actor: String,
    pub machine_id: Option<Uuid>,
    /// Stable machine-readable kind, e.g. `machine.created`.
    pub kind: String,
    pub message: String,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// An API token, without its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Token {
    pub id: Uuid,
    pub name: String,
    pub username: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<OffsetDateTime>,
}

/// A user of the web UI and owner of API tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub is_admin: bool,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

string_enum!(
    /// Where a job is.
    JobStatus, "status", {
    Queued => "queued",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
});

/// An action Anvil carries out in the background (a power action, an
/// enrolment, a commissioning …), with its outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: Uuid,
    /// `power-on`, `power-off`, `power-cycle`, `pxe-boot`, …
    pub kind: String,
    pub machine_id: Option<Uuid>,
    pub status: JobStatus,
    /// Who asked for it.
    pub actor: String,
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    /// What it produced, when it succeeded.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// Why it failed.
    pub error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<OffsetDateTime>,
}
