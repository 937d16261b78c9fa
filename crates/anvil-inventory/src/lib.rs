//! Hardware inventory for Anvil's commissioning agent.
//!
//! - [`HardwareFacts`] and its parts: the serde types a commissioning run
//!   reports and the server stores (versioned by [`SCHEMA_VERSION`]);
//!   [`HardwareFacts::validate`] rejects malformed reports before they can
//!   overwrite good facts.
//!
//! Everything here builds for `x86_64-unknown-linux-musl` without C
//! dependencies: the agent that links it is a static binary in a small ramdisk.

mod error;
mod facts;

pub use error::Error;
pub use facts::{
    Boot, BootMode, Cpu, Dimm, Disk, DiskTransport, Dmi, HardwareFacts, LldpNeighbor, Memory, Nic,
    SCHEMA_VERSION, is_mac, is_uuid,
};
