//! LLDP (IEEE 802.1AB) frame parsing: pure, bounds-checked, never panics.

use crate::{Error, LldpNeighbor};

/// The LLDP ethertype.
pub const ETHERTYPE_LLDP: u16 = 0x88cc;
/// The nearest-bridge multicast address LLDP agents send to.
pub const LLDP_MULTICAST: [u8; 6] = [0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e];

const TLV_END: u8 = 0;
const TLV_CHASSIS_ID: u8 = 1;
const TLV_PORT_ID: u8 = 2;
const TLV_TTL: u8 = 3;
const TLV_PORT_DESCRIPTION: u8 = 4;
const TLV_SYSTEM_NAME: u8 = 5;
const TLV_SYSTEM_DESCRIPTION: u8 = 6;
const TLV_MANAGEMENT_ADDRESS: u8 = 8;
const TLV_ORG_SPECIFIC: u8 = 127;
const OUI_IEEE_8021: [u8; 3] = [0x00, 0x80, 0xc2];
const IEEE_8021_PORT_VLAN_ID: u8 = 1;

/// Parse a whole Ethernet frame (destination, source, optional 802.1Q tag,
/// ethertype 0x88cc, LLDPDU). `interface` is left empty for the caller.
pub fn parse_frame(frame: &[u8]) -> Result<LldpNeighbor, Error> {
    let header = frame.get(..14).ok_or_else(|| Error::LldpTruncated {
        offset: frame.len(),
        needed: 14 - frame.len(),
    })?;
    let mut ethertype = u16::from_be_bytes([header[12], header[13]]);
    let mut payload = 14;
    if ethertype == 0x8100 {
        let tag = frame.get(14..18).ok_or_else(|| Error::LldpTruncated {
            offset: frame.len(),
            needed: 18 - frame.len(),
        })?;
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        payload = 18;
    }
    if ethertype != ETHERTYPE_LLDP {
        return Err(Error::LldpNotLldp { ethertype });
    }
    let mut neighbor = parse_lldpdu(&frame[payload..])?;
    neighbor.source_mac = Some(format_mac(&header[6..12]));
    Ok(neighbor)
}

/// Parse an LLDPDU (the frame's payload after the ethertype).
pub fn parse_lldpdu(pdu: &[u8]) -> Result<LldpNeighbor, Error> {
    let mut n = LldpNeighbor::default();
    let mut pos = 0;
    let mut index = 0;
    while pos < pdu.len() {
        let header = pdu.get(pos..pos + 2).ok_or_else(|| Error::LldpTruncated {
            offset: pos,
            needed: pos + 2 - pdu.len(),
        })?;
        let tlv_type = header[0] >> 1;
        let len = (usize::from(header[0] & 1) << 8) | usize::from(header[1]);
        let start = pos + 2;
        let value = pdu
            .get(start..start + len)
            .ok_or_else(|| Error::LldpTruncated {
                offset: start,
                needed: start + len - pdu.len(),
            })?;
        // 802.1AB: chassis ID, port ID and TTL come first, in this order.
        let expected = match index {
            0 => Some((TLV_CHASSIS_ID, "chassis ID")),
            1 => Some((TLV_PORT_ID, "port ID")),
            2 => Some((TLV_TTL, "TTL")),
            _ => None,
        };
        if let Some((want, tlv)) = expected
            && tlv_type != want
        {
            return Err(Error::LldpMissingTlv {
                tlv,
                position: index,
            });
        }
        match tlv_type {
            TLV_END => break,
            TLV_CHASSIS_ID => {
                let (subtype, id) = id_tlv(tlv_type, value)?;
                n.chassis_id_subtype = chassis_subtype_name(subtype);
                n.chassis_id = render_id(subtype == 4, subtype == 5, id);
            }
            TLV_PORT_ID => {
                let (subtype, id) = id_tlv(tlv_type, value)?;
                n.port_id_subtype = port_subtype_name(subtype);
                n.port_id = render_id(subtype == 3, subtype == 4, id);
            }
            TLV_TTL => {
                let b = value.get(..2).ok_or(Error::LldpBadTlvLength {
                    tlv_type,
                    len: value.len(),
                })?;
                n.ttl = u16::from_be_bytes([b[0], b[1]]);
            }
            TLV_PORT_DESCRIPTION => n.port_description = sanitize(value, false),
            TLV_SYSTEM_NAME => n.system_name = sanitize(value, false),
            TLV_SYSTEM_DESCRIPTION => n.system_description = sanitize(value, true),
            TLV_MANAGEMENT_ADDRESS if n.mgmt_address.is_none() => {
                n.mgmt_address = Some(management_address(value)?);
            }
            TLV_ORG_SPECIFIC
                if value.len() >= 4
                    && value[..3] == OUI_IEEE_8021
                    && value[3] == IEEE_8021_PORT_VLAN_ID =>
            {
                let b = value.get(4..6).ok_or(Error::LldpBadTlvLength {
                    tlv_type,
                    len: value.len(),
                })?;
                let vid = u16::from_be_bytes([b[0], b[1]]);
                // 0 means "no PVID"; 4095 and above are not VLAN IDs.
                n.vlan_id = (1..=4094).contains(&vid).then_some(vid);
            }
            _ => {} // capabilities, other organizations' TLVs: not stored
        }
        pos = start + len;
        index += 1;
    }
    let missing = match index {
        0 => Some("chassis ID"),
        1 => Some("port ID"),
        2 => Some("TTL"),
        _ => None,
    };
    if let Some(tlv) = missing {
        return Err(Error::LldpMissingTlv {
            tlv,
            position: index,
        });
    }
    Ok(n)
}

/// Chassis and port ID TLVs: a subtype byte and 1..=255 bytes of ID.
fn id_tlv(tlv_type: u8, value: &[u8]) -> Result<(u8, &[u8]), Error> {
    match value {
        [subtype, id @ ..] if !id.is_empty() && id.len() <= 255 => Ok((*subtype, id)),
        _ => Err(Error::LldpBadTlvLength {
            tlv_type,
            len: value.len(),
        }),
    }
}

fn chassis_subtype_name(subtype: u8) -> String {
    match subtype {
        1 => "chassis_component".into(),
        2 => "interface_alias".into(),
        3 => "port_component".into(),
        4 => "mac_address".into(),
        5 => "network_address".into(),
        6 => "interface_name".into(),
        7 => "local".into(),
        n => format!("reserved_{n}"),
    }
}

fn port_subtype_name(subtype: u8) -> String {
    match subtype {
        1 => "interface_alias".into(),
        2 => "port_component".into(),
        3 => "mac_address".into(),
        4 => "network_address".into(),
        5 => "interface_name".into(),
        6 => "agent_circuit_id".into(),
        7 => "local".into(),
        n => format!("reserved_{n}"),
    }
}

fn render_id(is_mac: bool, is_network_address: bool, id: &[u8]) -> String {
    if is_mac && id.len() == 6 {
        return format_mac(id);
    }
    if is_network_address && let Some(addr) = network_address(id) {
        return addr;
    }
    text(id).unwrap_or_else(|| hex(id))
}

/// An IANA address family byte followed by the address.
fn network_address(b: &[u8]) -> Option<String> {
    match b {
        [1, a @ ..] if a.len() == 4 => {
            Some(std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string())
        }
        [2, a @ ..] if a.len() == 16 => {
            let octets: [u8; 16] = a.try_into().ok()?;
            Some(std::net::Ipv6Addr::from(octets).to_string())
        }
        [6, a @ ..] if a.len() == 6 => Some(format_mac(a)),
        _ => None,
    }
}

/// Management address TLV: string length (subtype + address), subtype,
/// address, then interface numbering and OID, which are not stored.
fn management_address(value: &[u8]) -> Result<String, Error> {
    let bad = || Error::LldpBadTlvLength {
        tlv_type: TLV_MANAGEMENT_ADDRESS,
        len: value.len(),
    };
    let addr_len = usize::from(*value.first().ok_or_else(bad)?);
    if !(2..=32).contains(&addr_len) {
        return Err(bad());
    }
    let addr = value.get(1..1 + addr_len).ok_or_else(bad)?;
    Ok(network_address(addr).unwrap_or_else(|| hex(addr)))
}

/// Printable UTF-8 text, or `None` (binary IDs are shown as hex instead).
fn text(b: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(b).ok()?;
    let t = s.trim_end_matches('\0').trim();
    (!t.is_empty() && !t.chars().any(char::is_control)).then(|| t.to_string())
}

/// Free text from a neighbour, made safe to store and show: invalid UTF-8
/// and control characters become '?' (line breaks survive in multi-line
/// fields), and the result is capped at 511 characters (the TLV maximum).
fn sanitize(b: &[u8], multiline: bool) -> Option<String> {
    let s: String = String::from_utf8_lossy(b)
        .trim_end_matches('\0')
        .trim()
        .chars()
        .map(|c| match c {
            '\u{fffd}' => '?',
            '\n' | '\r' | '\t' if multiline => c,
            c if c.is_control() => '?',
            c => c,
        })
        .take(511)
        .collect();
    (!s.is_empty()).then_some(s)
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Lower-case aa:bb:cc:dd:ee:ff.
pub fn format_mac(b: &[u8]) -> String {
    hex(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from Debian's lldpd 1.0.16 by tests/fixtures/capture-lldp.sh.
    const LLDPD_FRAME: &[u8] = include_bytes!("../tests/fixtures/lldpd-1.0.16.frame");

    #[test]
    fn parses_a_frame_captured_from_lldpd() {
        let n = parse_frame(LLDPD_FRAME).unwrap();
        assert_eq!(n.source_mac.as_deref(), Some("02:00:5e:10:00:01"));
        assert_eq!(n.chassis_id_subtype, "mac_address");
        assert_eq!(n.chassis_id, "02:00:5e:10:00:01");
        assert_eq!(n.port_id_subtype, "interface_name");
        assert_eq!(n.port_id, "lldp-ic18510");
        // tx-interval 1 s x tx-hold 4 in the capture configuration.
        assert_eq!(n.ttl, 4);
        assert_eq!(n.system_name.as_deref(), Some("anvil-tor-1"));
        assert_eq!(n.system_description.as_deref(), Some("Anvil test switch"));
        assert_eq!(n.port_description.as_deref(), Some("uplink to rack 12"));
        assert_eq!(n.mgmt_address.as_deref(), Some("192.0.2.1"));
        assert_eq!(n.vlan_id, None);
        assert_eq!(n.interface, "");
    }

    /// The lldpd frame with an IEEE 802.1 Port VLAN ID TLV inserted before
    /// the End TLV (the capture host's kernel has no VLAN support).
    fn with_tlvs(extra: &[u8]) -> Vec<u8> {
        let end = LLDPD_FRAME.len() - 2;
        assert_eq!(
            &LLDPD_FRAME[end..],
            &[0, 0],
            "fixture ends with the End TLV"
        );
        let mut f = LLDPD_FRAME[..end].to_vec();
        f.extend_from_slice(extra);
        f.extend_from_slice(&[0, 0]);
        f
    }

    #[test]
    fn reads_the_port_vlan_id() {
        let f = with_tlvs(&[0xfe, 0x06, 0x00, 0x80, 0xc2, 0x01, 0x00, 0x64]);
        assert_eq!(parse_frame(&f).unwrap().vlan_id, Some(100));
        // PVID 0 = no VLAN.
        let f = with_tlvs(&[0xfe, 0x06, 0x00, 0x80, 0xc2, 0x01, 0x00, 0x00]);
        assert_eq!(parse_frame(&f).unwrap().vlan_id, None);
        // A Port VLAN ID TLV too short for its VID is an error.
        let f = with_tlvs(&[0xfe, 0x05, 0x00, 0x80, 0xc2, 0x01, 0x00]);
        assert!(matches!(
            parse_frame(&f),
            Err(Error::LldpBadTlvLength { tlv_type: 127, .. })
        ));
    }

    #[test]
    fn accepts_an_8021q_tagged_frame() {
        let mut f = LLDPD_FRAME[..12].to_vec();
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
        f.extend_from_slice(&LLDPD_FRAME[12..]);
        assert_eq!(
            parse_frame(&f).unwrap().system_name.as_deref(),
            Some("anvil-tor-1")
        );
    }

    #[test]
    fn every_truncation_is_an_error_never_a_panic() {
        // Cutting inside a TLV must fail; cutting exactly at a TLV boundary
        // after the mandatory three is a valid (End-less) LLDPDU.
        for len in 0..LLDPD_FRAME.len() {
            let _ = parse_frame(&LLDPD_FRAME[..len]);
        }
        assert!(matches!(
            parse_frame(&LLDPD_FRAME[..10]),
            Err(Error::LldpTruncated { .. })
        ));
        assert!(matches!(
            parse_frame(&LLDPD_FRAME[..20]),
            Err(Error::LldpTruncated { .. })
        ));
        // Chassis ID TLV (9 bytes) + Port ID TLV (15 bytes), no TTL.
        assert!(matches!(
            parse_frame(&LLDPD_FRAME[..14 + 9 + 15]),
            Err(Error::LldpMissingTlv {
                tlv: "TTL",
                position: 2
            })
        ));
    }

    #[test]
    fn rejects_wrong_ethertype_and_misordered_tlvs() {
        let mut f = LLDPD_FRAME.to_vec();
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        assert!(matches!(
            parse_frame(&f),
            Err(Error::LldpNotLldp { ethertype: 0x0800 })
        ));
        // TTL first.
        let pdu = [
            0x06, 0x02, 0x00, 0x78, 0x02, 0x07, 0x04, 1, 2, 3, 4, 5, 6, 0, 0,
        ];
        assert!(matches!(
            parse_lldpdu(&pdu),
            Err(Error::LldpMissingTlv {
                tlv: "chassis ID",
                position: 0
            })
        ));
        // Empty chassis ID.
        let pdu = [0x02, 0x01, 0x04];
        assert!(matches!(
            parse_lldpdu(&pdu),
            Err(Error::LldpBadTlvLength { tlv_type: 1, .. })
        ));
        assert!(matches!(
            parse_lldpdu(&[]),
            Err(Error::LldpMissingTlv {
                tlv: "chassis ID",
                ..
            })
        ));
    }

    #[test]
    fn renders_ids_by_subtype() {
        // chassis: network address 10.0.0.1; port: local, binary -> hex; TTL 30.
        let pdu = [
            0x02, 0x06, 0x05, 0x01, 10, 0, 0, 1, //
            0x04, 0x03, 0x07, 0x00, 0xff, //
            0x06, 0x02, 0x00, 0x1e, //
            0x0a, 0x04, b'a', 0x07, b'b', 0xff, // system name with ESC and a bad byte
            0x00, 0x00,
        ];
        let n = parse_lldpdu(&pdu).unwrap();
        assert_eq!(n.chassis_id_subtype, "network_address");
        assert_eq!(n.chassis_id, "10.0.0.1");
        assert_eq!(n.port_id_subtype, "local");
        assert_eq!(n.port_id, "00:ff");
        assert_eq!(n.ttl, 30);
        assert_eq!(n.system_name.as_deref(), Some("a?b?"));
    }
}
