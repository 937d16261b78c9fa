//! The TFTP protocol without I/O: the packet codec, option negotiation and the
//! per-transfer state machine of a read-only server.
//!
//! Nothing here opens a socket, reads a file or looks at a clock: time is an
//! [`std::time::Instant`] parameter and file bytes arrive as events, so whole
//! transfers run in memory in the tests (see `sim`), with simulated loss,
//! duplication, reordering and time.

pub mod options;
pub mod packet;
pub mod transfer;

#[cfg(test)]
mod sim;

pub use options::{Limits, Negotiated, negotiate};
pub use packet::{DecodeError, ErrorCode, Mode, Packet, Request, TftpOption, error_packet};
pub use transfer::{Action, Event, Failure, ReadTransfer};
