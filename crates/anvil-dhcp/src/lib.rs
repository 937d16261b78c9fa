//! Anvil's DHCPv4 server: full mode (addresses + boot information) and
//! proxyDHCP mode (boot information next to a site's own DHCP server), aware of
//! legacy PXE, UEFI PXE, UEFI HTTP boot and iPXE.
//!
//! Layout (sans-IO, as in quinn-proto or pixiecore's `dhcp4`):
//! - [`config`]: `[dhcp]` and `[[dhcp.network]]`, validated at load.
//! - [`classify`]: which boot client sent a request and what it boots
//!   (pure functions, golden-tested against captured packets).
//! - [`DhcpCore`]: the protocol state machine over an in-memory lease table.
//!   Bytes and `now` in, an [`Outcome`] out (reply + destination, or a drop
//!   reason; lease changes; observations). No sockets, no clock.
//! - [`LeaseStore`], [`BootFacts`], [`DhcpObserver`]: the seams to the rest of
//!   Anvil (durable leases, the inventory snapshot, the boot timeline).
//! - [`run`]: the thin tokio service: sockets, group commit, timeouts, metrics.
//!
//! Client identity is the MAC (chaddr), not option 61: one machine boots
//! through several DHCP clients (firmware PXE, iPXE, the installer, the OS),
//! which send different client identifiers but must all land on one address.
//!
//! # Boot files and URLs emitted
//! With `S` = the network's `server_address` and `P` = `boot.http_port`:
//! - BIOS PXE (arch 0): TFTP `undionly.kpxe` (`boot.bios`), siaddr `S`.
//! - UEFI x86-64 PXE (arch 7, 9): TFTP `ipxe.efi` (`boot.uefi_x64`).
//! - UEFI arm64 PXE (arch 11): TFTP `ipxe-arm64.efi` (`boot.arm64`).
//! - UEFI HTTP boot x86-64 (arch 16): `http://S:P/boot/ipxe.efi`;
//!   arm64 (arch 19): `http://S:P/boot/ipxe-arm64.efi`; option 60 `HTTPClient`.
//! - iPXE (user class `iPXE`, any arch): `http://S:P/boot/<mac>.ipxe`, MAC
//!   lower-case with colons, e.g. `http://10.0.0.1:8080/boot/52:54:00:12:34:56.ipxe`.
//! - Anything else: an address and options, no boot file.

pub mod classify;
pub mod config;
mod engine;
mod error;
mod seams;
mod service;
mod socket;
mod table;
pub mod wire;

pub use classify::{BootTarget, ClientClass, ClientKind, boot_target, classify};
pub use config::{BootFiles, BootNetwork, DhcpConfig, NetworkMode};
pub use engine::{Decision, DhcpCore, DropReason, Listener, Outcome, RecvMeta, Reply};
pub use error::DhcpError;
pub use seams::{
    BootFacts, CollectingObserver, DhcpMessageKind, DhcpObservation, DhcpObserver, HostFacts,
    Lease, LeaseChange, LeaseState, LeaseStore, MemoryLeaseStore, NoopObserver, StaticBootFacts,
};
pub use service::run;
