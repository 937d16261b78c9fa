//! Request checks on top of dhcproto, and the reply encoder.
//!
//! Requests are decoded with dhcproto. Replies are encoded here, not with
//! dhcproto's encoder, because a reply must (a) list options in the order the
//! client asked for them (option 55; some PXE ROMs care), (b) fit the client's
//! maximum message size (option 57), dropping optional options rather than
//! being cut, and (c) echo the relay agent option 82 byte for byte (RFC 3046);
//! dhcproto re-encodes options in code order and re-serialises option 82 from
//! its parsed form.

use crate::DropReason;
use anvil_types::MacAddr;
use dhcproto::v4::{Decodable, Decoder, DhcpOption, Message, MessageType, Opcode, OptionCode};
use std::net::Ipv4Addr;

/// Largest request accepted. DHCP requests are a few hundred bytes; anything
/// near a jumbo frame is not a DHCP client.
pub const MAX_REQUEST: usize = 4096;
/// Fixed BOOTP header plus the magic cookie.
pub const HEADER_LEN: usize = 240;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// IP (20) + UDP (8) headers: option 57 counts the whole IP datagram
/// (RFC 2132 §9.10; 576 = 28 + 236 + 4 + 308 of options).
const IP_UDP_HEADERS: usize = 28;
/// The smallest maximum message size a client may announce (RFC 2132).
pub const MIN_MAX_MESSAGE: usize = 576;
/// Replies never exceed an Ethernet MTU, whatever the client claims, so that
/// they are never fragmented.
const MAX_MAX_MESSAGE: usize = 1500;
/// BOOTP relays and old clients expect at least a 300-byte BOOTP message.
const MIN_REPLY: usize = 300;

/// A request that passed the checks every handler relies on.
#[derive(Debug, Clone)]
pub struct Request {
    pub msg: Message,
    pub msg_type: MessageType,
    pub mac: MacAddr,
    /// Option 82 exactly as received (concatenated if split, RFC 3396).
    pub relay_info: Option<Vec<u8>>,
    /// Option 55 as received.
    pub prl: Vec<u8>,
    /// Largest DHCP payload (without IP/UDP headers) the client accepts.
    pub max_payload: usize,
}

impl Request {
    pub fn opt_ip(&self, code: OptionCode) -> Option<Ipv4Addr> {
        match self.msg.opts().get(code)? {
            DhcpOption::RequestedIpAddress(a) | DhcpOption::ServerIdentifier(a) => Some(*a),
            _ => None,
        }
    }
    pub fn requested_ip(&self) -> Option<Ipv4Addr> {
        self.opt_ip(OptionCode::RequestedIpAddress)
            .filter(|a| !a.is_unspecified())
    }
    pub fn server_id(&self) -> Option<Ipv4Addr> {
        self.opt_ip(OptionCode::ServerIdentifier)
    }
    pub fn client_id(&self) -> Option<Vec<u8>> {
        match self.msg.opts().get(OptionCode::ClientIdentifier)? {
            DhcpOption::ClientIdentifier(v) => Some(v.clone()),
            _ => None,
        }
    }
    pub fn machine_id(&self) -> Option<Vec<u8>> {
        match self.msg.opts().get(OptionCode::ClientMachineIdentifier)? {
            DhcpOption::ClientMachineIdentifier(v) => Some(v.clone()),
            _ => None,
        }
    }
}

/// Walks the options area without interpreting it, concatenating repeated
/// codes (RFC 3396). Stops quietly at the end option or a truncated option.
pub fn raw_options(packet: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut i = HEADER_LEN;
    while let Some(&code) = packet.get(i) {
        match code {
            0 => i += 1,
            255 => break,
            _ => {
                let Some(&len) = packet.get(i + 1) else { break };
                let Some(data) = packet.get(i + 2..i + 2 + len as usize) else {
                    break;
                };
                match out.iter_mut().find(|(c, _)| *c == code) {
                    Some((_, v)) => v.extend_from_slice(data),
                    None => out.push((code, data.to_vec())),
                }
                i += 2 + len as usize;
            }
        }
    }
    out
}

/// dhcproto 0.15 `debug_assert`s the length of a few fixed-size options (and
/// subtracts from the length of two without checking), so a hostile packet
/// panics it in debug and fuzz builds. Such packets are malformed anyway:
/// find them first, walking the options the way dhcproto does (consecutive
/// instances of one code are one option, RFC 3396).
fn trips_dhcproto_asserts(packet: &[u8]) -> bool {
    let bad = |code: u8, len: usize| match code {
        80 => len != 0,
        94 => len != 3,
        152..=155 => len != 4,
        81 => len < 3,
        151 => len < 1,
        _ => false,
    };
    let mut run: Option<(u8, usize)> = None;
    let mut i = HEADER_LEN;
    while let Some(&code) = packet.get(i) {
        if code == 0 || code == 255 {
            if let Some((c, l)) = run.take()
                && bad(c, l)
            {
                return true;
            }
            if code == 255 {
                return false;
            }
            i += 1;
            continue;
        }
        let Some(&len) = packet.get(i + 1) else { break };
        match &mut run {
            Some((c, l)) if *c == code => *l += len as usize,
            _ => {
                if let Some((c, l)) = run.take()
                    && bad(c, l)
                {
                    return true;
                }
                run = Some((code, len as usize));
            }
        }
        i += 2 + len as usize;
    }
    run.is_some_and(|(c, l)| bad(c, l))
}

/// Decodes and checks a packet received on a server port.
pub fn parse(packet: &[u8]) -> Result<Request, DropReason> {
    if packet.len() > MAX_REQUEST {
        return Err(DropReason::Oversize);
    }
    if packet.len() < HEADER_LEN {
        return Err(DropReason::Truncated);
    }
    if packet[0] != 1 {
        return Err(DropReason::NotBootRequest);
    }
    // Only Ethernet: a MAC is the identity of a machine in Anvil.
    if packet[1] != 1 || packet[2] != 6 {
        return Err(DropReason::BadHardwareAddress);
    }
    if packet[236..240] != MAGIC {
        return Err(DropReason::BadMagic);
    }
    if trips_dhcproto_asserts(packet) {
        return Err(DropReason::Malformed);
    }
    let msg = Message::decode(&mut Decoder::new(packet)).map_err(|_| DropReason::Malformed)?;
    if msg.opcode() != Opcode::BootRequest {
        return Err(DropReason::NotBootRequest);
    }
    let msg_type = msg.opts().msg_type().ok_or(DropReason::NoMessageType)?;
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&packet[28..34]);
    if mac == [0; 6] || mac[0] & 1 == 1 {
        return Err(DropReason::InvalidMac);
    }
    let raw = raw_options(packet);
    let find = |c: u8| raw.iter().find(|(k, _)| *k == c).map(|(_, v)| v.clone());
    let max_message = match find(57).as_deref() {
        Some([a, b]) => usize::from(u16::from_be_bytes([*a, *b])),
        _ => MIN_MAX_MESSAGE,
    };
    Ok(Request {
        msg,
        msg_type,
        mac: MacAddr(mac),
        relay_info: find(82),
        prl: find(55).unwrap_or_default(),
        max_payload: max_message.clamp(MIN_MAX_MESSAGE, MAX_MAX_MESSAGE) - IP_UDP_HEADERS,
    })
}

/// One option of a reply. `required` options are never dropped to fit the
/// size limit; the others are dropped from the end of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opt {
    pub code: u8,
    pub data: Vec<u8>,
    pub required: bool,
}

impl Opt {
    fn wire_len(&self) -> usize {
        // Values over 255 bytes are split into several instances (RFC 3396).
        let chunks = self.data.len().div_ceil(255).max(1);
        chunks * 2 + self.data.len()
    }
}

/// A reply being built: header fields plus an ordered option list.
#[derive(Debug, Clone)]
pub struct ReplyBuilder {
    pub xid: u32,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    /// Boot file (or URL) for the `file` field; at most 127 bytes.
    pub file: Option<String>,
    pub opts: Vec<Opt>,
}

impl ReplyBuilder {
    pub fn for_request(req: &Request) -> Self {
        let mut chaddr = [0u8; 16];
        chaddr[..6].copy_from_slice(&req.mac.0);
        ReplyBuilder {
            xid: req.msg.xid(),
            // Only the broadcast bit is defined; the rest must be zero.
            flags: u16::from(req.msg.flags()) & 0x8000,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: req.msg.giaddr(),
            chaddr,
            file: None,
            opts: Vec::new(),
        }
    }

    pub fn push(&mut self, code: u8, data: Vec<u8>, required: bool) {
        if self.opts.iter().any(|o| o.code == code) {
            return;
        }
        self.opts.push(Opt {
            code,
            data,
            required,
        });
    }

    pub fn has(&self, code: u8) -> bool {
        self.opts.iter().any(|o| o.code == code)
    }

    /// Encodes the reply within `max_payload` bytes, dropping optional
    /// options from the end as needed. `None` when even the required ones do
    /// not fit.
    pub fn encode(mut self, max_payload: usize) -> Option<Vec<u8>> {
        let fixed = HEADER_LEN + 1; // header, cookie, end option
        loop {
            let size: usize = fixed + self.opts.iter().map(Opt::wire_len).sum::<usize>();
            if size <= max_payload {
                break;
            }
            let pos = self.opts.iter().rposition(|o| !o.required)?;
            self.opts.remove(pos);
        }
        let mut b = Vec::with_capacity(max_payload.min(1024));
        b.extend_from_slice(&[2, 1, 6, 0]);
        b.extend_from_slice(&self.xid.to_be_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&self.flags.to_be_bytes());
        for a in [self.ciaddr, self.yiaddr, self.siaddr, self.giaddr] {
            b.extend_from_slice(&a.octets());
        }
        b.extend_from_slice(&self.chaddr);
        b.extend_from_slice(&[0u8; 64]);
        let mut file = [0u8; 128];
        if let Some(f) = &self.file {
            let n = f.len().min(127);
            file[..n].copy_from_slice(&f.as_bytes()[..n]);
        }
        b.extend_from_slice(&file);
        b.extend_from_slice(&MAGIC);
        for o in &self.opts {
            if o.data.is_empty() {
                b.extend_from_slice(&[o.code, 0]);
            }
            for chunk in o.data.chunks(255) {
                b.push(o.code);
                b.push(chunk.len() as u8);
                b.extend_from_slice(chunk);
            }
        }
        b.push(255);
        if b.len() < MIN_REPLY {
            b.resize(MIN_REPLY.min(max_payload), 0);
        }
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(code: u8, len: usize, required: bool) -> Opt {
        Opt {
            code,
            data: vec![7; len],
            required,
        }
    }

    fn builder() -> ReplyBuilder {
        ReplyBuilder {
            xid: 1,
            flags: 0,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr: [0; 16],
            file: None,
            opts: vec![],
        }
    }

    #[test]
    fn pads_to_300_and_ends_with_end_option() {
        let b = builder().encode(548).unwrap();
        assert_eq!(b.len(), 300);
        assert_eq!(b[240], 255);
    }

    #[test]
    fn drops_optional_options_from_the_end_to_fit() {
        let mut r = builder();
        r.opts = vec![opt(53, 1, true), opt(3, 200, false), opt(6, 200, false)];
        let b = r.clone().encode(548).unwrap();
        assert!(b.len() <= 548);
        let raw = raw_options(&b);
        assert_eq!(raw.iter().map(|(c, _)| *c).collect::<Vec<_>>(), vec![53, 3]);
        // A required option that cannot fit makes the reply impossible.
        r.opts = vec![opt(53, 1, true), opt(82, 255, true), opt(43, 255, true)];
        assert!(r.encode(548).is_none());
    }

    #[test]
    fn long_options_are_split() {
        let mut r = builder();
        r.opts = vec![opt(77, 300, true)];
        let b = r.encode(1472).unwrap();
        assert_eq!(b[240], 77);
        assert_eq!(b[241], 255);
        assert_eq!(b[240 + 257], 77);
        assert_eq!(b[240 + 258], 45);
        let raw = raw_options(&b);
        assert_eq!(raw[0].1.len(), 300);
    }

    #[test]
    fn packets_that_would_panic_dhcproto_are_found() {
        let with = |opts: &[u8]| {
            let mut p = vec![0u8; 240];
            p.extend_from_slice(opts);
            p
        };
        assert!(trips_dhcproto_asserts(&with(&[94, 2, 1, 2, 255])));
        assert!(trips_dhcproto_asserts(&with(&[80, 1, 0])));
        assert!(trips_dhcproto_asserts(&with(&[151, 0, 255])));
        // Split across two consecutive instances: one option of length 3.
        assert!(!trips_dhcproto_asserts(&with(&[
            94, 1, 1, 94, 2, 2, 3, 255
        ])));
        // Separated by a pad: two options, each too short.
        assert!(trips_dhcproto_asserts(&with(&[
            94, 1, 1, 0, 94, 2, 2, 3, 255
        ])));
        assert!(!trips_dhcproto_asserts(&with(&[
            53, 1, 1, 94, 3, 1, 2, 0, 255
        ])));
    }

    #[test]
    fn raw_options_stop_at_truncation() {
        let mut p = vec![0u8; 240];
        p.extend_from_slice(&[0, 53, 1, 1, 82, 10, 1, 2]);
        assert_eq!(raw_options(&p), vec![(53, vec![1])]);
    }
}
