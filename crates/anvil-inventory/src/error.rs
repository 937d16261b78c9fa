//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in this crate: collecting, parsing LLDP,
/// listening on raw sockets, and validating a [`crate::HardwareFacts`]
/// report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The root directory handed to [`crate::collect`] is not a directory.
    #[error("inventory root {path} is not a readable directory")]
    BadRoot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    // ---- validation of a HardwareFacts report ----
    /// The report's `schema_version` is not one this build understands.
    #[error("unsupported hardware facts schema_version {found} (supported: {supported})")]
    UnsupportedSchemaVersion { found: u32, supported: u32 },
    /// A MAC address field is not six colon-separated hex octets.
    #[error("{field}: {value:?} is not a MAC address (expected aa:bb:cc:dd:ee:ff)")]
    InvalidMac { field: String, value: String },
    /// A UUID field is not in the 8-4-4-4-12 hex form.
    #[error("{field}: {value:?} is not a UUID")]
    InvalidUuid { field: String, value: String },
    /// A list holds more entries than any real machine has.
    #[error("{field}: {count} entries, at most {max} allowed")]
    TooManyEntries {
        field: &'static str,
        count: usize,
        max: usize,
    },
    /// A number is outside what real hardware can have.
    #[error("{field}: {value} is outside the plausible range {min}..={max}")]
    OutOfRange {
        field: String,
        value: u64,
        min: u64,
        max: u64,
    },
    /// A string is longer than any real firmware or kernel value.
    #[error("{field}: {len} bytes long, at most {max} allowed")]
    StringTooLong {
        field: String,
        len: usize,
        max: usize,
    },
    /// A string holds control characters (NUL, escape sequences...).
    #[error("{field}: contains control characters")]
    ControlCharacters { field: String },
    /// Two entries of a list share a key that must be unique.
    #[error("{field}: duplicate {value:?}")]
    Duplicate { field: &'static str, value: String },
    /// A required string is empty.
    #[error("{field}: must not be empty")]
    Empty { field: String },

    // ---- LLDP frame parsing ----
    /// The frame ended inside a TLV or header.
    #[error("LLDP frame truncated at byte {offset}: needed {needed} more bytes")]
    LldpTruncated { offset: usize, needed: usize },
    /// The Ethernet frame does not carry ethertype 0x88cc.
    #[error("not an LLDP frame (ethertype {ethertype:#06x})")]
    LldpNotLldp { ethertype: u16 },
    /// A mandatory TLV (chassis ID, port ID, TTL) is missing or out of order.
    #[error("LLDPDU lacks mandatory TLV {tlv} at position {position}")]
    LldpMissingTlv { tlv: &'static str, position: usize },
    /// A TLV's length is invalid for its type.
    #[error("LLDP TLV type {tlv_type} has invalid length {len}")]
    LldpBadTlvLength { tlv_type: u8, len: usize },

    // ---- live listening ----
    /// A raw-socket or interface operation failed.
    #[error("{op} on interface {interface}")]
    Socket {
        op: &'static str,
        interface: String,
        #[source]
        source: std::io::Error,
    },
    /// An interface name is not usable (too long, NUL, or unknown).
    #[error("interface {interface:?}: {reason}")]
    BadInterface {
        interface: String,
        reason: &'static str,
    },
}
