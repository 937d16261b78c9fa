//! TFTP packet codec (RFC 1350 packets plus the RFC 2347 OACK).
//!
//! Decoding borrows from the datagram and never panics: every field access is
//! bounds-checked, and anything that is not a well-formed packet becomes a
//! [`DecodeError`] whose [`DecodeError::reason`] is a short label suitable for
//! a metric. The decoder is lenient where real clients are sloppy (padding
//! NULs after the options, a dangling option name with no value, an ERROR
//! message without its final NUL) and strict where a guess could serve the
//! wrong file (an unterminated file name or mode, an unknown mode).

use bytes::BufMut;
use std::borrow::Cow;

/// The largest DATA payload RFC 2348 allows (65535 − 20 IP − 8 UDP − 4 TFTP −
/// 39 spare octets, as the RFC computes it).
pub const MAX_BLKSIZE: u16 = 65464;
/// The smallest DATA payload RFC 2348 allows.
pub const MIN_BLKSIZE: u16 = 8;
/// The RFC 1350 block size, used when the client negotiates none.
pub const DEFAULT_BLKSIZE: u16 = 512;

/// TFTP opcodes (the first two octets of every packet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Opcode {
    Rrq = 1,
    Wrq = 2,
    Data = 3,
    Ack = 4,
    Error = 5,
    Oack = 6,
}

/// Transfer mode of a request. Matched case-insensitively, as RFC 1350 asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Text: line ends become CR LF on the wire, a bare CR becomes CR NUL.
    Netascii,
    /// Raw bytes ("binary" in most clients).
    Octet,
    /// Obsolete RFC 1350 mail delivery; only meaningful for writes.
    Mail,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        if s.eq_ignore_ascii_case("octet") {
            Some(Mode::Octet)
        } else if s.eq_ignore_ascii_case("netascii") {
            Some(Mode::Netascii)
        } else if s.eq_ignore_ascii_case("mail") {
            Some(Mode::Mail)
        } else {
            None
        }
    }

    /// The mode's name as written in a request.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Netascii => "netascii",
            Mode::Octet => "octet",
            Mode::Mail => "mail",
        }
    }
}

/// One option of a request or OACK, as sent (names keep the sender's case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TftpOption<'a> {
    pub name: &'a str,
    pub value: &'a str,
}

/// The body of an RRQ or WRQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub filename: &'a str,
    pub mode: Mode,
    pub options: Vec<TftpOption<'a>>,
}

/// TFTP error codes (RFC 1350, plus 8 from RFC 2347).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 0: not defined, see the message.
    NotDefined,
    /// 1
    FileNotFound,
    /// 2
    AccessViolation,
    /// 3
    DiskFull,
    /// 4
    IllegalOperation,
    /// 5
    UnknownTid,
    /// 6
    FileExists,
    /// 7
    NoSuchUser,
    /// 8: the client refuses the options of an OACK (RFC 2347).
    OptionRefused,
    /// Any other value a peer sent.
    Other(u16),
}

impl ErrorCode {
    pub fn from_u16(code: u16) -> ErrorCode {
        match code {
            0 => ErrorCode::NotDefined,
            1 => ErrorCode::FileNotFound,
            2 => ErrorCode::AccessViolation,
            3 => ErrorCode::DiskFull,
            4 => ErrorCode::IllegalOperation,
            5 => ErrorCode::UnknownTid,
            6 => ErrorCode::FileExists,
            7 => ErrorCode::NoSuchUser,
            8 => ErrorCode::OptionRefused,
            other => ErrorCode::Other(other),
        }
    }

    pub fn as_u16(self) -> u16 {
        match self {
            ErrorCode::NotDefined => 0,
            ErrorCode::FileNotFound => 1,
            ErrorCode::AccessViolation => 2,
            ErrorCode::DiskFull => 3,
            ErrorCode::IllegalOperation => 4,
            ErrorCode::UnknownTid => 5,
            ErrorCode::FileExists => 6,
            ErrorCode::NoSuchUser => 7,
            ErrorCode::OptionRefused => 8,
            ErrorCode::Other(code) => code,
        }
    }
}

/// A decoded TFTP packet borrowing from the datagram it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Rrq(Request<'a>),
    Wrq(Request<'a>),
    Data {
        block: u16,
        data: &'a [u8],
    },
    Ack {
        block: u16,
    },
    Error {
        code: ErrorCode,
        /// Lossily decoded: peers put any bytes there.
        message: Cow<'a, str>,
    },
    Oack {
        options: Vec<TftpOption<'a>>,
    },
}

/// Why a datagram is not a TFTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("packet shorter than its fixed header")]
    Truncated,
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    #[error("a string field has no terminating NUL")]
    Unterminated,
    #[error("a string field is not UTF-8")]
    InvalidUtf8,
    #[error("unknown transfer mode")]
    UnknownMode,
}

impl DecodeError {
    /// A stable label for metrics (`reason` of the dropped-packets counter).
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Truncated => "truncated",
            DecodeError::UnknownOpcode(_) => "unknown_opcode",
            DecodeError::Unterminated => "unterminated_string",
            DecodeError::InvalidUtf8 => "invalid_utf8",
            DecodeError::UnknownMode => "unknown_mode",
        }
    }
}

impl<'a> Packet<'a> {
    /// Decodes one datagram.
    pub fn decode(buf: &'a [u8]) -> Result<Packet<'a>, DecodeError> {
        let (op, body) = split_u16(buf).ok_or(DecodeError::Truncated)?;
        match op {
            1 => Ok(Packet::Rrq(decode_request(body)?)),
            2 => Ok(Packet::Wrq(decode_request(body)?)),
            3 => {
                let (block, data) = split_u16(body).ok_or(DecodeError::Truncated)?;
                Ok(Packet::Data { block, data })
            }
            4 => {
                // Trailing bytes after the block number are ignored: nothing
                // else can be meant, and refusing them would stall a transfer.
                let (block, _) = split_u16(body).ok_or(DecodeError::Truncated)?;
                Ok(Packet::Ack { block })
            }
            5 => {
                let (code, rest) = split_u16(body).ok_or(DecodeError::Truncated)?;
                let text = match rest.iter().position(|&b| b == 0) {
                    Some(nul) => &rest[..nul],
                    None => rest,
                };
                Ok(Packet::Error {
                    code: ErrorCode::from_u16(code),
                    message: String::from_utf8_lossy(text),
                })
            }
            6 => Ok(Packet::Oack {
                options: decode_options(body)?,
            }),
            other => Err(DecodeError::UnknownOpcode(other)),
        }
    }

    /// Appends the wire form of the packet to `out`. Strings are written up to
    /// their first NUL (a NUL inside a field cannot be represented).
    pub fn encode(&self, out: &mut impl BufMut) {
        match self {
            Packet::Rrq(req) | Packet::Wrq(req) => {
                let op = if matches!(self, Packet::Rrq(_)) {
                    Opcode::Rrq
                } else {
                    Opcode::Wrq
                };
                out.put_u16(op as u16);
                put_str(out, req.filename);
                put_str(out, req.mode.as_str());
                put_options(out, &req.options);
            }
            Packet::Data { block, data } => {
                out.put_u16(Opcode::Data as u16);
                out.put_u16(*block);
                out.put_slice(data);
            }
            Packet::Ack { block } => {
                out.put_u16(Opcode::Ack as u16);
                out.put_u16(*block);
            }
            Packet::Error { code, message } => {
                out.put_u16(Opcode::Error as u16);
                out.put_u16(code.as_u16());
                put_str(out, message);
            }
            Packet::Oack { options } => {
                out.put_u16(Opcode::Oack as u16);
                put_options(out, options);
            }
        }
    }

    /// The encoded packet as a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// Encodes an ERROR packet (shortcut for the service's many error replies).
pub fn error_packet(code: ErrorCode, message: &str) -> Vec<u8> {
    Packet::Error {
        code,
        message: Cow::Borrowed(message),
    }
    .to_vec()
}

fn split_u16(buf: &[u8]) -> Option<(u16, &[u8])> {
    match buf {
        [hi, lo, rest @ ..] => Some((u16::from_be_bytes([*hi, *lo]), rest)),
        _ => None,
    }
}

/// Takes one NUL-terminated UTF-8 string off the front of `buf`.
fn take_str<'a>(buf: &mut &'a [u8]) -> Result<&'a str, DecodeError> {
    let nul = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(DecodeError::Unterminated)?;
    let (field, rest) = buf.split_at(nul);
    // `rest` starts with the NUL, which `get` skips without a bounds panic.
    *buf = rest.get(1..).unwrap_or_default();
    std::str::from_utf8(field).map_err(|_| DecodeError::InvalidUtf8)
}

fn decode_request(mut body: &[u8]) -> Result<Request<'_>, DecodeError> {
    let filename = take_str(&mut body)?;
    let mode = Mode::parse(take_str(&mut body)?).ok_or(DecodeError::UnknownMode)?;
    Ok(Request {
        filename,
        mode,
        options: decode_options(body)?,
    })
}

/// Option name/value pairs up to the end of the packet. Empty names are
/// padding (some PXE ROMs pad requests with NULs) and a final name without a
/// value is ignored rather than failing the whole request.
fn decode_options(mut body: &[u8]) -> Result<Vec<TftpOption<'_>>, DecodeError> {
    let mut options = Vec::new();
    while !body.is_empty() {
        let name = take_str(&mut body)?;
        if name.is_empty() {
            continue;
        }
        if body.is_empty() {
            break;
        }
        let value = take_str(&mut body)?;
        options.push(TftpOption { name, value });
    }
    Ok(options)
}

fn put_str(out: &mut impl BufMut, s: &str) {
    let bytes = s.as_bytes();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    out.put_slice(&bytes[..end]);
    out.put_u8(0);
}

fn put_options(out: &mut impl BufMut, options: &[TftpOption<'_>]) {
    for opt in options {
        put_str(out, opt.name);
        put_str(out, opt.value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt<'a>(name: &'a str, value: &'a str) -> TftpOption<'a> {
        TftpOption { name, value }
    }

    #[test]
    fn rrq_with_options_round_trips() {
        let pkt = Packet::Rrq(Request {
            filename: "pxelinux.cfg/default",
            mode: Mode::Octet,
            options: vec![opt("blksize", "1468"), opt("tsize", "0")],
        });
        let wire = pkt.to_vec();
        assert_eq!(
            wire,
            b"\x00\x01pxelinux.cfg/default\0octet\0blksize\x001468\0tsize\x000\0"
        );
        assert_eq!(Packet::decode(&wire), Ok(pkt));
    }

    #[test]
    fn every_packet_kind_round_trips() {
        let packets = [
            Packet::Wrq(Request {
                filename: "up",
                mode: Mode::Netascii,
                options: vec![],
            }),
            Packet::Data {
                block: 65535,
                data: b"abc",
            },
            Packet::Data {
                block: 0,
                data: b"",
            },
            Packet::Ack { block: 7 },
            Packet::Error {
                code: ErrorCode::OptionRefused,
                message: Cow::Borrowed("no"),
            },
            Packet::Error {
                code: ErrorCode::Other(99),
                message: Cow::Borrowed(""),
            },
            Packet::Oack {
                options: vec![opt("windowsize", "16")],
            },
        ];
        for pkt in packets {
            assert_eq!(Packet::decode(&pkt.to_vec()), Ok(pkt.clone()));
        }
    }

    #[test]
    fn mode_is_case_insensitive_and_mail_is_recognised() {
        for (text, mode) in [
            ("OCTET", Mode::Octet),
            ("NetAscii", Mode::Netascii),
            ("mail", Mode::Mail),
        ] {
            let wire = [b"\x00\x01f\0".as_slice(), text.as_bytes(), b"\0"].concat();
            match Packet::decode(&wire) {
                Ok(Packet::Rrq(req)) => assert_eq!(req.mode, mode),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert_eq!(
            Packet::decode(b"\x00\x01f\0binary\0"),
            Err(DecodeError::UnknownMode)
        );
    }

    #[test]
    fn malformed_packets_are_errors() {
        let cases: &[(&[u8], DecodeError)] = &[
            (b"", DecodeError::Truncated),
            (b"\x00", DecodeError::Truncated),
            (b"\x00\x03\x00", DecodeError::Truncated),
            (b"\x00\x04", DecodeError::Truncated),
            (b"\x00\x05\x00", DecodeError::Truncated),
            (b"\x00\x07", DecodeError::UnknownOpcode(7)),
            (b"\x00\x00", DecodeError::UnknownOpcode(0)),
            (b"\x00\x01file", DecodeError::Unterminated),
            (b"\x00\x01file\0octet", DecodeError::Unterminated),
            (b"\x00\x01\xff\0octet\0", DecodeError::InvalidUtf8),
            (
                b"\x00\x01f\0octet\0blksize\x00123",
                DecodeError::Unterminated,
            ),
        ];
        for (wire, err) in cases {
            assert_eq!(Packet::decode(wire), Err(*err), "{wire:?}");
        }
    }

    #[test]
    fn sloppy_but_unambiguous_packets_are_accepted() {
        // Padding NULs and a dangling option name.
        match Packet::decode(b"\x00\x01f\0octet\0\0\0tsize\x000\0\0blksize\0") {
            Ok(Packet::Rrq(req)) => assert_eq!(req.options, vec![opt("tsize", "0")]),
            other => panic!("{other:?}"),
        }
        // ERROR without its final NUL, ACK with trailing bytes.
        assert_eq!(
            Packet::decode(b"\x00\x05\x00\x08refused"),
            Ok(Packet::Error {
                code: ErrorCode::OptionRefused,
                message: Cow::Borrowed("refused")
            })
        );
        assert_eq!(
            Packet::decode(b"\x00\x04\x00\x02junk"),
            Ok(Packet::Ack { block: 2 })
        );
    }

    #[test]
    fn encoding_cuts_strings_at_nul() {
        let wire = error_packet(ErrorCode::NotDefined, "a\0b");
        assert_eq!(wire, b"\x00\x05\x00\x00a\0");
    }

    /// Deterministic random and mutated inputs: the decoder must return, not
    /// panic, and whatever decodes must re-encode to something that decodes.
    #[test]
    fn decoder_never_panics_on_random_input() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(0x7f7f);
        let seeds: [&[u8]; 3] = [
            b"\x00\x01undionly.kpxe\0octet\0blksize\x001468\0tsize\x000\0windowsize\x0016\0",
            b"\x00\x05\x00\x01not found\0",
            b"\x00\x06blksize\x001468\0",
        ];
        for i in 0..200_000 {
            let mut buf: Vec<u8> = if i % 2 == 0 {
                let len = rng.gen_range(0..64);
                (0..len).map(|_| rng.r#gen()).collect()
            } else {
                seeds[i % seeds.len()].to_vec()
            };
            if !buf.is_empty() {
                for _ in 0..rng.gen_range(0..4) {
                    let at = rng.gen_range(0..buf.len());
                    buf[at] = rng.r#gen();
                }
                buf.truncate(rng.gen_range(0..=buf.len()));
            }
            if let Ok(pkt) = Packet::decode(&buf) {
                let again = pkt.to_vec();
                assert!(Packet::decode(&again).is_ok(), "{buf:?}");
            }
        }
    }
}
