//! The server side of one read transfer, as a sans-IO state machine.
//!
//! The machine never touches a socket, a file or a clock. The driver feeds it
//! [`Event`]s — a datagram from the client's TID, the timer it asked for, file
//! bytes it asked for — together with the current [`Instant`], and then drains
//! [`Action`]s with [`ReadTransfer::poll_action`]: datagrams to send, file
//! bytes to read, when to fire the timer, and the end of the transfer.
//!
//! Protocol behaviour:
//! - Lock-step RFC 1350 when no windowsize is negotiated; RFC 7440 windows
//!   otherwise. Both are the same code: a window of one block is lock-step.
//! - The ACK of any block sent in the current window acknowledges everything
//!   up to it; if it is not the window's last block the client lost the next
//!   one, so sending goes back to the block after it (go-back-N) with a full
//!   window from there.
//! - An ACK that acknowledges nothing new is a duplicate. In lock-step it is
//!   ignored: answering duplicates is the Sorcerer's Apprentice bug (RFC 1123
//!   §4.2.3.1). With windows, a repeated ACK of the block before the window is
//!   how a client whose first block of the window was lost asks for it again
//!   (RFC 7440 §4), so it resends the window — at most once between two ACKs
//!   that make progress and not after a timer-driven resend, which keeps the
//!   amplification bounded even if the network duplicates every ACK.
//! - On timeout the whole unacknowledged window (or the OACK) is resent; after
//!   `max_retries` resends in a row without progress the transfer fails and
//!   the client gets ERROR 0.
//! - Block numbers wrap from 65535 to 0, as tftpd-hpa, atftpd, curl and iPXE
//!   expect, so files of any size can be sent.
//! - The last block is shorter than blksize; a file whose length is a
//!   multiple of blksize ends with an empty block.
//! - netascii is converted on the fly (LF → CR LF, CR → CR NUL; stateless per
//!   byte, so reads may split anywhere). Unacknowledged bytes are kept, so the
//!   file is only ever read forward.

use super::options::{Limits, Negotiated, negotiate};
use super::packet::{ErrorCode, Mode, Opcode, Packet, TftpOption, error_packet};
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Bytes buffered ahead of the window at least (see `request_data`).
const READ_AHEAD: usize = 64 << 10;

/// Input to the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A datagram from the client's transfer ID (the driver checks the TID).
    Packet(&'a [u8]),
    /// The timer from the latest [`Action::SetTimer`] expired.
    Timeout,
    /// File bytes answering the outstanding [`Action::Read`]: exactly the
    /// length asked for, or fewer when the file ends.
    Data(&'a [u8]),
    /// The outstanding read failed.
    ReadFailed,
}

/// Output of the state machine, in the order it must be carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this datagram to the client.
    Send(Bytes),
    /// Read up to `len` bytes of the file at `offset` and answer with
    /// [`Event::Data`] (or [`Event::ReadFailed`]). Offsets only ever grow.
    Read { offset: u64, len: usize },
    /// Deliver [`Event::Timeout`] at this instant; replaces any earlier timer.
    SetTimer(Instant),
    /// The client acknowledged the last block; nothing more will happen.
    Finished,
    /// The transfer ended without the whole file being acknowledged.
    Failed(Failure),
}

/// Why a transfer failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No acknowledgement after the configured number of retransmissions.
    TimedOut,
    /// The client answered the OACK with an ERROR instead of ACK 0: it
    /// refused the options (code 8), or — when the OACK carried `tsize` — it
    /// only wanted the size. UEFI firmware (EDK2's MTFTP GetInfo) does that
    /// on every PXE boot: ask with `tsize`, abort, then fetch the file.
    OackDeclined {
        code: ErrorCode,
        message: String,
        tsize_sent: bool,
    },
    /// The client ended the transfer with an ERROR while data was flowing.
    PeerError { code: ErrorCode, message: String },
    /// The client sent a packet that has no place in a read transfer.
    IllegalPacket,
    /// The file could not be read.
    ReadFailed,
    /// The request used a mode that cannot be read (mail).
    UnsupportedMode,
    /// The driver cancelled the transfer (server shutdown).
    Cancelled,
}

impl Failure {
    /// A stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Failure::TimedOut => "timed_out",
            Failure::OackDeclined {
                tsize_sent: true, ..
            } => "size_probe",
            Failure::OackDeclined { .. } => "options_refused",
            Failure::PeerError { .. } => "peer_error",
            Failure::IllegalPacket => "illegal_packet",
            Failure::ReadFailed => "read_failed",
            Failure::UnsupportedMode => "unsupported_mode",
            Failure::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// OACK sent, waiting for the client's ACK 0.
    OackSent,
    /// Sending DATA.
    Sending,
    Done,
}

/// The server side of one RRQ. See the module documentation.
#[derive(Debug)]
pub struct ReadTransfer {
    params: Negotiated,
    mode: Mode,
    max_retries: u32,
    phase: Phase,
    oack: Bytes,
    /// Payload bytes (after netascii conversion) from the start of block
    /// `base` on: the unacknowledged window plus what has been read ahead.
    pending: BytesMut,
    /// Absolute number (1-based, never wraps) of the first unacked block.
    base: u64,
    /// Highest block sent since the window last (re)started.
    sent_upto: u64,
    /// Number of the final block, known once the end of the file was read.
    last_block: Option<u64>,
    /// Next file offset to read.
    raw_offset: u64,
    /// Length of the outstanding read, if one is outstanding.
    reading: Option<usize>,
    /// Consecutive retransmissions without progress.
    retries: u32,
    /// Payload bytes acknowledged.
    acked_bytes: u64,
    /// The current window was resent since the last progress (bounds resends
    /// triggered by duplicate ACKs).
    resent: bool,
    actions: VecDeque<Action>,
}

impl ReadTransfer {
    /// Starts the transfer for an RRQ that the driver accepted: negotiates the
    /// options and queues the OACK, or the first read when there is none.
    pub fn new(
        now: Instant,
        mode: Mode,
        options: &[TftpOption<'_>],
        size: Option<u64>,
        limits: &Limits,
    ) -> ReadTransfer {
        let params = negotiate(options, mode, size, limits);
        let oack = if params.oack.is_empty() {
            Bytes::new()
        } else {
            let options = params
                .oack
                .iter()
                .map(|(name, value)| TftpOption { name, value })
                .collect();
            Bytes::from(Packet::Oack { options }.to_vec())
        };
        let mut t = ReadTransfer {
            params,
            mode,
            max_retries: limits.max_retries,
            phase: Phase::Sending,
            oack,
            pending: BytesMut::new(),
            base: 1,
            sent_upto: 0,
            last_block: None,
            raw_offset: 0,
            reading: None,
            retries: 0,
            acked_bytes: 0,
            resent: false,
            actions: VecDeque::new(),
        };
        if mode == Mode::Mail {
            t.fail(
                Failure::UnsupportedMode,
                Some((ErrorCode::IllegalOperation, "mail mode is for writes only")),
            );
        } else if !t.oack.is_empty() {
            t.phase = Phase::OackSent;
            t.actions.push_back(Action::Send(t.oack.clone()));
            t.arm(now);
        } else {
            t.pump(now);
        }
        t
    }

    /// Negotiated block size.
    pub fn blksize(&self) -> u16 {
        self.params.blksize
    }

    /// Negotiated window size (1 = lock-step).
    pub fn windowsize(&self) -> u16 {
        self.params.windowsize
    }

    /// Retransmission timeout in force.
    pub fn timeout(&self) -> Duration {
        self.params.timeout
    }

    /// Payload bytes the client has acknowledged so far (after netascii
    /// conversion, i.e. as sent).
    pub fn bytes_acked(&self) -> u64 {
        self.acked_bytes
    }

    /// Whether the transfer has ended (finished or failed).
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The next action to carry out, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Feeds one event at time `now`.
    pub fn handle(&mut self, now: Instant, event: Event<'_>) {
        if self.phase == Phase::Done {
            return;
        }
        match event {
            Event::Packet(buf) => self.on_packet(now, buf),
            Event::Timeout => self.on_timeout(now),
            Event::Data(data) => self.on_data(now, data),
            Event::ReadFailed => {
                self.reading = None;
                self.fail(
                    Failure::ReadFailed,
                    Some((ErrorCode::NotDefined, "error reading file")),
                );
            }
        }
    }

    /// Ends the transfer now, telling the client why with ERROR 0.
    pub fn cancel(&mut self, message: &str) {
        if self.phase != Phase::Done {
            self.fail(Failure::Cancelled, Some((ErrorCode::NotDefined, message)));
        }
    }

    fn on_packet(&mut self, now: Instant, buf: &[u8]) {
        match Packet::decode(buf) {
            // A mangled datagram may be a corrupted duplicate: ignoring it
            // costs at most a retransmission, failing would cost the boot.
            Err(_) => {}
            Ok(Packet::Ack { block }) => self.on_ack(now, block),
            Ok(Packet::Error { code, message }) => {
                let message = message.into_owned();
                let failure = if self.phase == Phase::OackSent {
                    Failure::OackDeclined {
                        code,
                        message,
                        tsize_sent: self.params.tsize.is_some(),
                    }
                } else {
                    Failure::PeerError { code, message }
                };
                self.fail(failure, None);
            }
            Ok(_) => self.fail(
                Failure::IllegalPacket,
                Some((ErrorCode::IllegalOperation, "expected ACK")),
            ),
        }
    }

    fn on_ack(&mut self, now: Instant, block: u16) {
        if self.phase == Phase::OackSent {
            // ACK 0 accepts the OACK. Anything else cannot refer to data yet.
            if block == 0 {
                self.phase = Phase::Sending;
                self.retries = 0;
                self.pump(now);
            }
            return;
        }
        let prev = self.base - 1;
        let in_flight = self.sent_upto - prev;
        // Distance from the last acknowledged block, modulo the wrap of the
        // 16-bit block number; in-window ACKs are 1..=in_flight ahead.
        let ahead = u64::from(block.wrapping_sub(wire_block(prev)));
        if ahead == 0 {
            if self.params.windowsize > 1 && in_flight > 0 && !self.resent {
                self.resend_window(now);
            }
            return;
        }
        if ahead > in_flight {
            return; // stale or from the future: not ours to act on
        }
        let acked = prev + ahead;
        if Some(acked) == self.last_block {
            // Everything left is the final blocks' payload.
            self.acked_bytes += self.pending.len() as u64;
            self.pending.clear();
            self.base = acked + 1;
            self.phase = Phase::Done;
            self.actions.push_back(Action::Finished);
            return;
        }
        let consumed = usize::try_from(ahead)
            .unwrap_or(usize::MAX)
            .saturating_mul(usize::from(self.params.blksize))
            .min(self.pending.len());
        let _ = self.pending.split_to(consumed);
        self.acked_bytes += consumed as u64;
        self.base = acked + 1;
        self.retries = 0;
        self.resent = false;
        // An ACK short of the window's end means the block after it was lost:
        // the blocks sent after it go out again with the new window.
        self.sent_upto = acked;
        self.pump(now);
    }

    fn on_timeout(&mut self, now: Instant) {
        self.retries += 1;
        if self.retries > self.max_retries {
            self.fail(
                Failure::TimedOut,
                Some((ErrorCode::NotDefined, "timed out waiting for ACK")),
            );
            return;
        }
        match self.phase {
            Phase::OackSent => {
                self.actions.push_back(Action::Send(self.oack.clone()));
                self.arm(now);
            }
            Phase::Sending => self.resend_window(now),
            Phase::Done => {}
        }
    }

    fn resend_window(&mut self, now: Instant) {
        self.resent = true;
        self.sent_upto = self.base - 1;
        self.pump(now);
    }

    fn on_data(&mut self, now: Instant, data: &[u8]) {
        let Some(asked) = self.reading.take() else {
            return; // no read outstanding: a driver bug, not the client's
        };
        self.raw_offset += data.len() as u64;
        match self.mode {
            Mode::Netascii => netascii_extend(&mut self.pending, data),
            Mode::Octet | Mode::Mail => self.pending.extend_from_slice(data),
        }
        if data.len() < asked {
            let total = self.acked_bytes + self.pending.len() as u64;
            self.last_block = Some(total / u64::from(self.params.blksize) + 1);
        }
        if self.phase == Phase::Sending {
            self.pump(now);
        }
    }

    /// Sends every block of the current window that has data and has not been
    /// sent, then asks for the file bytes the rest of the window needs.
    fn pump(&mut self, now: Instant) {
        let bs = usize::from(self.params.blksize);
        let mut window_end = self.base + u64::from(self.params.windowsize) - 1;
        if let Some(last) = self.last_block {
            window_end = window_end.min(last);
        }
        let mut arena = BytesMut::new();
        let mut sent_any = false;
        while self.sent_upto < window_end {
            let block = self.sent_upto + 1;
            let start = usize::try_from(block - self.base)
                .unwrap_or(usize::MAX)
                .saturating_mul(bs);
            let end = if self.pending.len() >= start.saturating_add(bs) {
                start + bs
            } else if self.last_block.is_some() {
                self.pending.len() // the final, short block
            } else {
                break; // waiting for file bytes
            };
            let payload = self.pending.get(start.min(end)..end).unwrap_or_default();
            if arena.capacity() < 4 + payload.len() {
                // One allocation per window; each packet is split off it.
                let blocks_left = usize::try_from(window_end - self.sent_upto).unwrap_or(1);
                arena.reserve((4 + bs).saturating_mul(blocks_left));
            }
            arena.put_u16(Opcode::Data as u16);
            arena.put_u16(wire_block(block));
            arena.put_slice(payload);
            self.actions.push_back(Action::Send(arena.split().freeze()));
            self.sent_upto = block;
            sent_any = true;
        }
        if sent_any {
            self.arm(now);
        }
        self.request_data();
    }

    fn request_data(&mut self) {
        if self.last_block.is_some() || self.reading.is_some() {
            return;
        }
        let window_bytes =
            usize::from(self.params.windowsize).saturating_mul(usize::from(self.params.blksize));
        if self.pending.len() >= window_bytes {
            return;
        }
        // Read well ahead of the window: one read serves several windows
        // (many blocks in lock-step), so most ACKs need no read at all. In
        // netascii the converted bytes outnumber the file bytes, so this
        // may buffer a little more.
        let target = window_bytes.saturating_mul(2).max(READ_AHEAD);
        let len = target - self.pending.len();
        self.reading = Some(len);
        self.actions.push_back(Action::Read {
            offset: self.raw_offset,
            len,
        });
    }

    fn arm(&mut self, now: Instant) {
        self.actions
            .push_back(Action::SetTimer(now + self.params.timeout));
    }

    fn fail(&mut self, failure: Failure, reply: Option<(ErrorCode, &str)>) {
        if let Some((code, message)) = reply {
            self.actions
                .push_back(Action::Send(Bytes::from(error_packet(code, message))));
        }
        self.phase = Phase::Done;
        self.actions.push_back(Action::Failed(failure));
    }
}

/// The 16-bit block number on the wire for an absolute block number.
fn wire_block(block: u64) -> u16 {
    (block & 0xffff) as u16
}

/// Appends `raw` converted to netascii (LF → CR LF, CR → CR NUL).
fn netascii_extend(out: &mut BytesMut, raw: &[u8]) {
    out.reserve(raw.len() + raw.len() / 16);
    let mut rest = raw;
    while let Some(i) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
        let (before, tail) = rest.split_at(i);
        out.extend_from_slice(before);
        out.extend_from_slice(if tail.first() == Some(&b'\n') {
            b"\r\n"
        } else {
            b"\r\0"
        });
        rest = tail.get(1..).unwrap_or_default();
    }
    out.extend_from_slice(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netascii_conversion_is_stateless_per_byte() {
        let mut out = BytesMut::new();
        netascii_extend(&mut out, b"a\nb\r\nc\r");
        netascii_extend(&mut out, b"\n");
        assert_eq!(&out[..], b"a\r\nb\r\0\r\nc\r\0\r\n");
    }

    #[test]
    fn wire_block_wraps_to_zero() {
        assert_eq!(wire_block(65535), 65535);
        assert_eq!(wire_block(65536), 0);
        assert_eq!(wire_block(65537), 1);
    }
}
