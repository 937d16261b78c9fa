//! Hardware inventory for Anvil's commissioning agent.
//!
//! - [`HardwareFacts`] and its parts: the serde types a commissioning run
//!   reports and the server stores (versioned by [`SCHEMA_VERSION`]);
//!   [`HardwareFacts::validate`] rejects malformed reports before they can
//!   overwrite good facts.
//! - [`collect`]: reads CPU, memory, DIMMs, disks, NICs, DMI and boot mode
//!   from /proc, /sys and /dev below a root directory (a fixture tree in
//!   tests), softly: what is missing stays empty, what is broken is listed
//!   in [`HardwareFacts::problems`].
//! - [`smbios::parse`]: the raw SMBIOS table (/sys/firmware/dmi/tables/DMI)
//!   without dmidecode: identification (types 0–3) and DIMMs (type 17).
//! - [`lldp::parse_frame`] / [`lldp::parse_lldpdu`]: pure, bounds-checked
//!   LLDP parsing (fuzzed: `crates/anvil-inventory/fuzz`).
//! - [`listen_lldp`] / [`listen_lldp_with`]: hear LLDP neighbours on raw
//!   AF_PACKET sockets within a window.
//! - [`physical_interfaces`] and [`connected_interfaces`]: which NICs to
//!   listen on: bring them up, wait for carrier.
//!
//! Everything here builds for `x86_64-unknown-linux-musl` without C
//! dependencies: the agent that links it is a static binary in a small ramdisk.

mod boot;
mod collect;
pub mod cpu;
mod disks;
mod dmi;
mod error;
mod ethtool;
mod facts;
mod links;
mod listen;
pub mod lldp;
pub mod memory;
mod nics;
pub mod smbios;
mod sysfs;

pub use collect::{collect, collect_with};
pub use disks::{parse_vpd_pg80, transport_from_path};
pub use error::Error;
pub use facts::{
    Boot, BootMode, Cpu, Dimm, Disk, DiskTransport, Dmi, HardwareFacts, LldpNeighbor, Memory, Nic,
    SCHEMA_VERSION, is_mac, is_uuid,
};
pub use links::{connected_interfaces, physical_interfaces};
pub use listen::{ListenOptions, listen_lldp, listen_lldp_with};
