//! Hand-written DHCPv4 encoding of the two messages a relayed client sends
//! (DISCOVER, REQUEST) and parsing of the fields of a reply that the
//! generator checks. A general codec allocates per message; this writes into
//! a fixed buffer and reads in place, so the generator stays far cheaper than
//! any server it measures. The tests cross-check both with `dhcproto`.

use std::net::Ipv4Addr;

/// Every request is padded to the BOOTP minimum, so requests have one size
/// and live at fixed offsets in the send buffer.
pub const REQUEST_LEN: usize = 300;

const MAGIC: [u8; 4] = [99, 130, 83, 99];
const OPTIONS_AT: usize = 240;

/// The options a PXE client commonly asks for (subnet mask, router, DNS,
/// domain, broadcast, lease time, server id, T1, T2, TFTP server, bootfile),
/// so that servers build a realistic reply.
const PARAMS: [u8; 11] = [1, 3, 6, 15, 28, 51, 54, 58, 59, 66, 67];

pub const DISCOVER: u8 = 1;
pub const OFFER: u8 = 2;
pub const REQUEST: u8 = 3;
pub const ACK: u8 = 5;
pub const NAK: u8 = 6;

/// What the generator sends for one client.
#[derive(Debug, Clone, Copy)]
pub enum Request {
    Discover,
    /// A REQUEST in SELECTING state: the offered address and the server.
    Select {
        requested: Ipv4Addr,
        server_id: Ipv4Addr,
    },
}

/// Writes one relayed request into `out` (exactly [`REQUEST_LEN`] bytes).
pub fn encode(out: &mut [u8; REQUEST_LEN], req: Request, xid: u32, mac: [u8; 6], giaddr: Ipv4Addr) {
    out.fill(0);
    out[0] = 1; // BOOTREQUEST
    out[1] = 1; // Ethernet
    out[2] = 6; // hlen
    out[3] = 1; // hops: one relay, as a real relay agent sets
    out[4..8].copy_from_slice(&xid.to_be_bytes());
    // secs, flags (unicast reply: the relay never needs a broadcast),
    // ciaddr, yiaddr and siaddr stay zero.
    out[24..28].copy_from_slice(&giaddr.octets());
    out[28..34].copy_from_slice(&mac);
    out[236..240].copy_from_slice(&MAGIC);
    let mut i = OPTIONS_AT;
    let mut put = |bytes: &[u8]| {
        out[i..i + bytes.len()].copy_from_slice(bytes);
        i += bytes.len();
    };
    match req {
        Request::Discover => put(&[53, 1, DISCOVER]),
        Request::Select {
            requested,
            server_id,
        } => {
            put(&[53, 1, REQUEST]);
            put(&[50, 4]);
            put(&requested.octets());
            put(&[54, 4]);
            put(&server_id.octets());
        }
    }
    put(&[55, PARAMS.len() as u8]);
    put(&PARAMS);
    put(&[255]);
}

/// The parts of a server's reply the generator needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub xid: u32,
    pub chaddr: [u8; 6],
    pub yiaddr: Ipv4Addr,
    /// Option 53.
    pub kind: u8,
    /// Option 54, if the server sent one.
    pub server_id: Option<Ipv4Addr>,
}

/// Parses a BOOTREPLY; `None` for anything that is not a well-formed DHCP
/// reply (counted by the caller as garbage).
pub fn parse(p: &[u8]) -> Option<Reply> {
    if p.len() < OPTIONS_AT + 3 || p[0] != 2 || p[2] != 6 || p[236..240] != MAGIC {
        return None;
    }
    let xid = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
    let yiaddr = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    let mut chaddr = [0; 6];
    chaddr.copy_from_slice(&p[28..34]);
    let mut kind = None;
    let mut server_id = None;
    let mut i = OPTIONS_AT;
    while i < p.len() {
        let code = p[i];
        match code {
            0 => {
                i += 1;
                continue;
            }
            255 => break,
            _ => {}
        }
        let len = usize::from(*p.get(i + 1)?);
        let val = p.get(i + 2..i + 2 + len)?;
        match (code, len) {
            (53, 1) => kind = Some(val[0]),
            (54, 4) => server_id = Some(Ipv4Addr::new(val[0], val[1], val[2], val[3])),
            _ => {}
        }
        i += 2 + len;
    }
    Some(Reply {
        xid,
        chaddr,
        yiaddr,
        kind: kind?,
        server_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode};
    use dhcproto::{Decodable, Decoder, Encodable, Encoder};

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 7];
    const GI: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

    fn decode(buf: &[u8]) -> v4::Message {
        v4::Message::decode(&mut Decoder::new(buf)).expect("dhcproto decodes our request")
    }

    #[test]
    fn discover_decodes_with_dhcproto() {
        let mut buf = [0; REQUEST_LEN];
        encode(&mut buf, Request::Discover, 0xdead_beef, MAC, GI);
        let m = decode(&buf);
        assert_eq!(m.opcode(), v4::Opcode::BootRequest);
        assert_eq!(m.xid(), 0xdead_beef);
        assert_eq!(m.giaddr(), GI);
        assert_eq!(m.hops(), 1);
        assert_eq!(&m.chaddr()[..6], &MAC);
        assert_eq!(
            m.opts().get(OptionCode::MessageType),
            Some(&DhcpOption::MessageType(MessageType::Discover))
        );
        assert!(m.opts().get(OptionCode::ParameterRequestList).is_some());
    }

    #[test]
    fn request_decodes_with_dhcproto() {
        let mut buf = [0; REQUEST_LEN];
        let requested = Ipv4Addr::new(10, 200, 0, 10);
        let server_id = Ipv4Addr::new(127, 0, 0, 1);
        encode(
            &mut buf,
            Request::Select {
                requested,
                server_id,
            },
            7,
            MAC,
            GI,
        );
        let m = decode(&buf);
        assert_eq!(
            m.opts().get(OptionCode::MessageType),
            Some(&DhcpOption::MessageType(MessageType::Request))
        );
        assert_eq!(
            m.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(requested))
        );
        assert_eq!(
            m.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(server_id))
        );
    }

    fn reply_bytes(kind: MessageType, pad: bool) -> Vec<u8> {
        let mut m = v4::Message::default();
        m.set_opcode(v4::Opcode::BootReply)
            .set_xid(42)
            .set_yiaddr(Ipv4Addr::new(10, 200, 1, 2))
            .set_giaddr(GI)
            .set_chaddr(&MAC);
        if pad {
            // Options before the ones we read must be skipped correctly.
            m.opts_mut()
                .insert(DhcpOption::DomainName("example.test".into()));
        }
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(127, 0, 0, 1)));
        m.opts_mut().insert(DhcpOption::AddressLeaseTime(3600));
        let mut out = Vec::new();
        m.encode(&mut Encoder::new(&mut out)).expect("encode");
        out
    }

    #[test]
    fn parses_replies_encoded_by_dhcproto() {
        for (kind, code) in [
            (MessageType::Offer, OFFER),
            (MessageType::Ack, ACK),
            (MessageType::Nak, NAK),
        ] {
            for pad in [false, true] {
                let r = parse(&reply_bytes(kind, pad)).expect("parses");
                assert_eq!(r.kind, code);
                assert_eq!(r.xid, 42);
                assert_eq!(r.chaddr, MAC);
                assert_eq!(r.yiaddr, Ipv4Addr::new(10, 200, 1, 2));
                assert_eq!(r.server_id, Some(Ipv4Addr::new(127, 0, 0, 1)));
            }
        }
    }

    #[test]
    fn rejects_requests_and_truncation() {
        let mut buf = [0; REQUEST_LEN];
        encode(&mut buf, Request::Discover, 1, MAC, GI);
        assert_eq!(parse(&buf), None, "a BOOTREQUEST is not a reply");
        let ok = reply_bytes(MessageType::Ack, true);
        for cut in [0, 100, 239, 243, 250] {
            // Either rejected or parsed without the option that was cut off;
            // never a panic.
            let _ = parse(&ok[..cut.min(ok.len())]);
        }
        assert_eq!(parse(&ok[..100]), None);
    }
}
