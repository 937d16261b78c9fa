//! Byte layouts: RMCP, the IPMI v1.5 and v2.0 (RMCP+) session wrappers and
//! the IPMI LAN message inside them (IPMI v2.0 §13.6–13.8, §13.27).
//! Everything multi-byte is little-endian on the wire.

use crate::crypto::{CryptoError, SessionKeys};

/// RMCP version 1.0, reserved, sequence 0xFF (no RMCP ACK), class IPMI.
pub(crate) const RMCP_HEADER: [u8; 4] = [0x06, 0x00, 0xFF, 0x07];
/// Session header "authentication type" value that marks an RMCP+ packet.
pub(crate) const AUTH_TYPE_RMCP_PLUS: u8 = 0x06;

/// RMCP+ payload types (§13.27.3).
pub(crate) mod payload {
    pub const IPMI: u8 = 0x00;
    pub const OPEN_SESSION_REQUEST: u8 = 0x10;
    pub const OPEN_SESSION_RESPONSE: u8 = 0x11;
    pub const RAKP1: u8 = 0x12;
    pub const RAKP2: u8 = 0x13;
    pub const RAKP3: u8 = 0x14;
    pub const RAKP4: u8 = 0x15;
}

/// The BMC's responder address on IPMB, and the software ID Anvil uses as
/// requester (0x81 = "remote console software 1", as ipmitool does).
pub(crate) const BMC_ADDR: u8 = 0x20;
pub(crate) const CONSOLE_ADDR: u8 = 0x81;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IpmiMessage {
    /// NetFn (even for requests, odd for responses).
    pub netfn: u8,
    pub cmd: u8,
    /// 6-bit request sequence number; the response echoes it.
    pub rq_seq: u8,
    /// For responses: the completion code followed by the data.
    pub data: Vec<u8>,
    /// Responder and requester addresses as seen on the wire.
    pub rs_addr: u8,
    pub rq_addr: u8,
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// A request from Anvil (requester 0x81) to the BMC (responder 0x20).
pub(crate) fn encode_request(netfn: u8, cmd: u8, rq_seq: u8, data: &[u8]) -> Vec<u8> {
    encode_message(BMC_ADDR, netfn, CONSOLE_ADDR, rq_seq, cmd, data)
}

/// Layout of every IPMI LAN message: rsAddr, netFn/rsLUN, checksum 1,
/// rqAddr, rqSeq/rqLUN, cmd, data, checksum 2. LUNs are always 0 here.
/// (A response swaps the address fields: first byte is the requester.)
pub(crate) fn encode_message(
    first_addr: u8,
    netfn: u8,
    second_addr: u8,
    rq_seq: u8,
    cmd: u8,
    data: &[u8],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(7 + data.len());
    m.push(first_addr);
    m.push(netfn << 2);
    m.push(checksum(&m[..2]));
    m.push(second_addr);
    m.push((rq_seq & 0x3F) << 2);
    m.push(cmd);
    m.extend_from_slice(data);
    let c = checksum(&m[3..]);
    m.push(c);
    m
}

/// Parses a LAN message and checks both checksums. Works for requests and
/// responses; the caller checks addresses and netfn direction.
pub(crate) fn decode_message(m: &[u8]) -> Result<IpmiMessage, String> {
    if m.len() < 7 {
        return Err(format!("IPMI message too short ({} bytes)", m.len()));
    }
    if checksum(&m[..2]) != m[2] {
        return Err("IPMI message header checksum mismatch".into());
    }
    let last = m.len() - 1;
    if checksum(&m[3..last]) != m[last] {
        return Err("IPMI message data checksum mismatch".into());
    }
    Ok(IpmiMessage {
        rs_addr: m[0],
        netfn: m[1] >> 2,
        rq_addr: m[3],
        rq_seq: m[4] >> 2,
        cmd: m[5],
        data: m[6..last].to_vec(),
    })
}

/// An IPMI v1.5 packet without a session (authentication type NONE,
/// sequence 0, session 0): only used for Get Channel Authentication
/// Capabilities before the RMCP+ session exists, the form every BMC
/// answers (ipmitool's lanplus interface sends it the same way).
pub(crate) fn encode_v15_sessionless(msg: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(14 + msg.len());
    p.extend_from_slice(&RMCP_HEADER);
    p.push(0x00); // auth type NONE
    p.extend_from_slice(&[0; 4]); // session sequence
    p.extend_from_slice(&[0; 4]); // session ID
    p.push(msg.len() as u8);
    p.extend_from_slice(msg);
    p
}

/// Returns the IPMI message of a v1.5 packet. Authenticated v1.5 packets
/// (auth type ≠ NONE) carry a 16-byte auth code before the length.
pub(crate) fn decode_v15(p: &[u8]) -> Result<&[u8], String> {
    if p.len() < 14 || p[..4] != RMCP_HEADER {
        return Err("not an RMCP/IPMI packet".into());
    }
    let auth_type = p[4];
    if auth_type == AUTH_TYPE_RMCP_PLUS {
        return Err("RMCP+ packet where IPMI v1.5 was expected".into());
    }
    let len_at = if auth_type == 0 { 13 } else { 29 };
    let len = usize::from(*p.get(len_at).ok_or("IPMI v1.5 packet truncated")?);
    p.get(len_at + 1..len_at + 1 + len)
        .ok_or_else(|| "IPMI v1.5 packet shorter than its length field".to_string())
}

/// A decoded RMCP+ packet.
#[derive(Debug)]
pub(crate) struct RmcpPlus {
    pub payload_type: u8,
    pub session_id: u32,
    pub seq: u32,
    pub payload: Vec<u8>,
}

/// Builds an RMCP+ packet. With `keys`, the payload is encrypted
/// (AES-CBC-128) and the packet carries the integrity trailer; both are
/// always on together in the suites Anvil speaks.
pub(crate) fn encode_rmcp_plus(
    payload_type: u8,
    session_id: u32,
    seq: u32,
    payload: &[u8],
    keys: Option<&SessionKeys>,
) -> Result<Vec<u8>, CryptoError> {
    let body;
    let (body, flags) = match keys {
        Some(k) => {
            body = k.encrypt(payload)?;
            (&body[..], 0xC0)
        }
        None => (payload, 0x00),
    };
    let mut p = Vec::with_capacity(16 + body.len() + 24);
    p.extend_from_slice(&RMCP_HEADER);
    p.push(AUTH_TYPE_RMCP_PLUS);
    p.push(flags | (payload_type & 0x3F));
    p.extend_from_slice(&session_id.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend_from_slice(&(body.len() as u16).to_le_bytes());
    p.extend_from_slice(body);
    if let Some(k) = keys {
        // Integrity pad (0xFF) so that everything from the auth type byte
        // through Next Header is a multiple of 4 bytes (§13.28.4).
        let covered_so_far = p.len() - 4 + 2; // + pad length + next header
        let pad = (4 - covered_so_far % 4) % 4;
        p.extend(std::iter::repeat_n(0xFF, pad));
        p.push(pad as u8);
        p.push(0x07); // Next Header: always 07h
        let code = k.auth_code(&p[4..]);
        p.extend_from_slice(&code);
    }
    Ok(p)
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// Not something this session should look at (garbage, another
    /// protocol, a truncated packet).
    Malformed(String),
    /// Failed integrity or decryption: possibly forged, always dropped.
    Integrity,
    /// The session has keys but the packet lacks authentication or
    /// encryption: a downgrade attempt or a confused BMC; dropped.
    Unprotected,
}

/// Parses an RMCP+ packet. With `keys`, the packet must be authenticated
/// and encrypted; its AuthCode is checked before anything is decrypted.
pub(crate) fn decode_rmcp_plus(
    p: &[u8],
    keys: Option<&SessionKeys>,
) -> Result<RmcpPlus, DecodeError> {
    let bad = |s: &str| DecodeError::Malformed(s.to_string());
    if p.len() < 16 || p[..4] != RMCP_HEADER {
        return Err(bad("not an RMCP/IPMI packet"));
    }
    if p[4] != AUTH_TYPE_RMCP_PLUS {
        return Err(bad("IPMI v1.5 packet where RMCP+ was expected"));
    }
    let pt = p[5];
    let encrypted = pt & 0x80 != 0;
    let authenticated = pt & 0x40 != 0;
    let payload_type = pt & 0x3F;
    if payload_type == 0x02 {
        return Err(bad("OEM payloads are not used by Anvil"));
    }
    let session_id = u32::from_le_bytes([p[6], p[7], p[8], p[9]]);
    let seq = u32::from_le_bytes([p[10], p[11], p[12], p[13]]);
    let len = usize::from(u16::from_le_bytes([p[14], p[15]]));
    let body = p
        .get(16..16 + len)
        .ok_or_else(|| bad("RMCP+ packet shorter than its payload length"))?;
    match keys {
        None => {
            if encrypted || authenticated {
                return Err(bad("protected packet outside a session"));
            }
            Ok(RmcpPlus {
                payload_type,
                session_id,
                seq,
                payload: body.to_vec(),
            })
        }
        Some(k) => {
            if !(encrypted && authenticated) {
                return Err(DecodeError::Unprotected);
            }
            let icv = k.hash.icv_len();
            if p.len() < 16 + len + 2 + icv {
                return Err(bad("RMCP+ packet without its integrity trailer"));
            }
            let code_at = p.len() - icv;
            // Pad length and Next Header sit just before the AuthCode.
            let pad_len = usize::from(p[code_at - 2]);
            if p[code_at - 1] != 0x07 || 16 + len + pad_len + 2 != code_at {
                return Err(bad("RMCP+ integrity trailer malformed"));
            }
            k.verify_auth_code(&p[4..code_at], &p[code_at..])
                .map_err(|_| DecodeError::Integrity)?;
            let payload = k.decrypt(body).map_err(|_| DecodeError::Integrity)?;
            Ok(RmcpPlus {
                payload_type,
                session_id,
                seq,
                payload,
            })
        }
    }
}

/// Sliding window over inbound session sequence numbers: a repeat, or a
/// number far behind the highest seen, is dropped even though its AuthCode
/// is valid, so a captured response cannot be replayed into the session.
#[derive(Debug, Default)]
pub(crate) struct ReplayWindow {
    highest: u32,
    /// Bit i set: sequence number `highest - i` was seen.
    seen: u32,
}

impl ReplayWindow {
    pub(crate) fn accept(&mut self, seq: u32) -> bool {
        if seq == 0 {
            return false; // 0 is never valid on an authenticated session
        }
        if self.highest == 0 || seq > self.highest {
            let shift = seq.wrapping_sub(self.highest);
            self.seen = if self.highest == 0 || shift >= 32 {
                1
            } else {
                (self.seen << shift) | 1
            };
            self.highest = seq;
            return true;
        }
        let behind = self.highest - seq;
        if behind >= 16 {
            return false;
        }
        let bit = 1u32 << behind;
        if self.seen & bit != 0 {
            return false;
        }
        self.seen |= bit;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_channel_auth_caps_request_matches_ipmitool_bytes() {
        // Captured from ipmitool 1.8.19 talking to ipmi_sim (rqSeq 0):
        // 06 00 ff 07 00 00000000 00000000 09 20 18 c8 81 00 38 8e 04 b5
        let msg = encode_request(0x06, 0x38, 0, &[0x8E, 0x04]);
        let pkt = encode_v15_sessionless(&msg);
        assert_eq!(
            pkt,
            [
                0x06, 0x00, 0xff, 0x07, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0x09, 0x20, 0x18, 0xc8, 0x81,
                0x00, 0x38, 0x8e, 0x04, 0xb5
            ]
        );
        assert_eq!(decode_v15(&pkt).unwrap(), &msg[..]);
        let m = decode_message(&msg).unwrap();
        assert_eq!((m.netfn, m.cmd, m.rq_seq), (0x06, 0x38, 0));
    }

    #[test]
    fn message_checksums_are_checked() {
        let mut msg = encode_request(0x00, 0x01, 5, &[]);
        assert!(decode_message(&msg).is_ok());
        msg[5] ^= 1;
        assert!(decode_message(&msg).is_err());
    }

    #[test]
    fn protected_packets_round_trip_and_tampering_is_detected() {
        for hash in [crate::crypto::Hash::Sha1, crate::crypto::Hash::Sha256] {
            let keys = SessionKeys::derive(hash, &vec![3u8; hash.len()]);
            let msg = encode_request(0x00, 0x01, 1, &[]);
            let pkt = encode_rmcp_plus(payload::IPMI, 0x1234, 7, &msg, Some(&keys)).unwrap();
            // Auth type through Next Header is a multiple of 4.
            assert_eq!((pkt.len() - 4 - hash.icv_len()) % 4, 0);
            let d = decode_rmcp_plus(&pkt, Some(&keys)).unwrap();
            assert_eq!((d.session_id, d.seq, d.payload.clone()), (0x1234, 7, msg));
            for i in [5usize, 9, 13, 20, pkt.len() - 1] {
                let mut t = pkt.clone();
                t[i] ^= 0x01;
                assert!(decode_rmcp_plus(&t, Some(&keys)).is_err(), "byte {i}");
            }
            // A clear packet on a keyed session is refused, not accepted.
            let clear = encode_rmcp_plus(payload::IPMI, 0x1234, 8, &[1, 2, 3], None).unwrap();
            assert_eq!(
                decode_rmcp_plus(&clear, Some(&keys)).unwrap_err(),
                DecodeError::Unprotected
            );
        }
    }

    #[test]
    fn replay_window_refuses_repeats_and_old_numbers() {
        let mut w = ReplayWindow::default();
        assert!(!w.accept(0));
        assert!(w.accept(5));
        assert!(!w.accept(5));
        assert!(w.accept(3), "a late packet inside the window");
        assert!(!w.accept(3));
        assert!(w.accept(40));
        assert!(!w.accept(5), "far behind");
        assert!(w.accept(39));
        assert!(w.accept(100));
    }
}
