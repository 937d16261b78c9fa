//! Per-transfer reports for the rest of Anvil (a machine's boot timeline).

use crate::proto::{Failure, Mode};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

/// Receives one report per request the service answered: completed
/// transfers, refused requests (missing file, WRQ, busy) and failures alike.
///
/// Called from the transfer's task after the transfer ended: keep it quick
/// (record and return; hand slow work to a channel).
pub trait TftpObserver: Send + Sync {
    fn transfer_finished(&self, report: &TransferReport);
}

/// An observer that ignores every report.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopObserver;

impl TftpObserver for NoopObserver {
    fn transfer_finished(&self, _report: &TransferReport) {}
}

/// What happened to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferReport {
    /// The client's address and port (its TID).
    pub peer: SocketAddr,
    /// The local address the request was sent to and replies came from.
    pub local_ip: IpAddr,
    /// The file name as the client sent it.
    pub file: String,
    pub mode: Mode,
    /// Negotiated block size (512 if none was negotiated or the request was
    /// refused before negotiation).
    pub blksize: u16,
    /// Negotiated window size (1 = lock-step).
    pub windowsize: u16,
    /// The file size, if the source knew it.
    pub size: Option<u64>,
    /// Wall-clock time the request arrived.
    pub started: SystemTime,
    /// From the request to the last ACK (or the failure).
    pub duration: Duration,
    /// Payload bytes the client acknowledged (netascii: as converted).
    pub bytes: u64,
    pub outcome: TransferOutcome,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferOutcome {
    /// Every block was acknowledged.
    Completed,
    /// No source had the file (ERROR 1 sent).
    NotFound,
    /// The name was refused: `..`, a symlink out of the root, no permission
    /// (ERROR 2 sent).
    AccessDenied,
    /// A write request: the server is read-only (ERROR 2 sent).
    WriteRefused,
    /// Too many concurrent transfers (ERROR 0 "server busy" sent).
    Busy,
    /// The source failed to open the file (ERROR 0 sent; details logged).
    OpenFailed,
    /// No socket could be bound to answer from (nothing sent; logged).
    SocketFailed,
    /// The transfer started and then failed. One case is no failure at
    /// all: label `size_probe` ([`Failure::OackDeclined`] with `tsize_sent`)
    /// is UEFI firmware asking only for the file size before fetching it,
    /// which EDK2 does on every PXE boot.
    Failed(Failure),
}

impl TransferOutcome {
    /// The `result` label of `anvil_tftp_transfers_total`.
    pub fn label(&self) -> &'static str {
        match self {
            TransferOutcome::Completed => "completed",
            TransferOutcome::NotFound => "not_found",
            TransferOutcome::AccessDenied => "access_denied",
            TransferOutcome::WriteRefused => "write_refused",
            TransferOutcome::Busy => "busy",
            TransferOutcome::OpenFailed => "open_failed",
            TransferOutcome::SocketFailed => "socket_failed",
            TransferOutcome::Failed(f) => f.label(),
        }
    }
}
