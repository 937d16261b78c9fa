//! Encodings and decodings of the IPMI commands Anvil sends, as pure
//! functions (unit-tested without a BMC).

use anvil_power::{BootDevice, BootMode, BootOverride, PowerAction};

pub(crate) const NETFN_CHASSIS: u8 = 0x00;
pub(crate) const NETFN_APP: u8 = 0x06;
pub(crate) const NETFN_STORAGE: u8 = 0x0A;

pub(crate) const CMD_GET_CHASSIS_STATUS: u8 = 0x01;
pub(crate) const CMD_CHASSIS_CONTROL: u8 = 0x02;
pub(crate) const CMD_SET_BOOT_OPTIONS: u8 = 0x08;
pub(crate) const CMD_GET_BOOT_OPTIONS: u8 = 0x09;
pub(crate) const CMD_GET_DEVICE_ID: u8 = 0x01;
pub(crate) const CMD_GET_SYSTEM_GUID: u8 = 0x37;
pub(crate) const CMD_GET_FRU_AREA_INFO: u8 = 0x10;
pub(crate) const CMD_READ_FRU_DATA: u8 = 0x11;

/// Chassis Control data byte (IPMI v2.0 §28.3).
pub(crate) fn chassis_control_byte(action: PowerAction) -> u8 {
    match action {
        PowerAction::ForceOff => 0x00, // power down
        PowerAction::On => 0x01,       // power up
        PowerAction::Cycle => 0x02,    // power cycle
        PowerAction::Reset => 0x03,    // hard reset
        // "Initiate a soft-shutdown of OS via ACPI by emulating a fatal
        // overtemperature": the only ACPI soft-off IPMI has.
        PowerAction::SoftOff => 0x05,
    }
}

/// Set System Boot Options, parameter 5 "boot flags" (§28.13): the
/// parameter selector byte followed by the 5 data bytes.
///
/// `current_efi` is bit 5 of the flags the BMC holds now: IPMI cannot say
/// "leave the boot mode alone", so with `mode: None` the current mode is
/// written back instead of silently switching the machine to legacy BIOS.
pub(crate) fn boot_flags_request(boot: BootOverride, current_efi: bool) -> [u8; 6] {
    let efi = match boot.mode {
        Some(BootMode::Uefi) => true,
        Some(BootMode::Legacy) => false,
        None => current_efi,
    };
    let mut b1 = 0x80; // boot flags valid
    if !boot.once {
        b1 |= 0x40; // persistent: every boot, not only the next
    }
    if efi {
        b1 |= 0x20; // boot type: EFI
    }
    // Byte 2 bits 5:2: boot device selector.
    let device = match boot.device {
        BootDevice::Pxe => 0x01,  // force PXE
        BootDevice::Disk => 0x02, // force boot from default hard drive
    };
    [0x05, b1, device << 2, 0x00, 0x00, 0x00]
}

/// Get System Boot Options response data (after the completion code) for
/// parameter 5 → is the EFI bit set? (version, selector, 5 data bytes).
pub(crate) fn boot_flags_efi(data: &[u8]) -> Option<bool> {
    if data.len() >= 3 && data[1] & 0x7F == 5 {
        Some(data[2] & 0x20 != 0)
    } else {
        None
    }
}

/// Get Device ID response (§20.1), completion code stripped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceId {
    pub device_id: u8,
    pub device_revision: u8,
    /// "major.minor" as ipmitool prints it (minor is BCD): e.g. "9.08".
    pub firmware: String,
    /// e.g. "2.0".
    pub ipmi_version: String,
    /// IANA Private Enterprise Number of the BMC's manufacturer.
    pub manufacturer_id: u32,
    pub product_id: u16,
    /// Additional Device Support bits (bit 3: FRU inventory device).
    pub device_support: u8,
    pub aux_firmware: Option<[u8; 4]>,
}

impl DeviceId {
    pub(crate) fn parse(d: &[u8]) -> Result<DeviceId, String> {
        if d.len() < 11 {
            return Err(format!(
                "Get Device ID response too short ({} bytes)",
                d.len()
            ));
        }
        Ok(DeviceId {
            device_id: d[0],
            device_revision: d[1] & 0x0F,
            firmware: format!("{}.{:02x}", d[2] & 0x7F, d[3]),
            ipmi_version: format!("{}.{}", d[4] & 0x0F, d[4] >> 4),
            manufacturer_id: u32::from_le_bytes([d[6], d[7], d[8] & 0x0F, 0]),
            product_id: u16::from_le_bytes([d[9], d[10]]),
            device_support: d[5],
            aux_firmware: d.get(11..15).and_then(|s| s.try_into().ok()),
        })
    }

    pub fn has_fru(&self) -> bool {
        self.device_support & 0x08 != 0
    }
}

/// Formats the 16 bytes of Get System GUID as an RFC 4122 string.
///
/// The IPMI spec stores the GUID fully byte-reversed; many BMCs use the
/// SMBIOS layout instead (first three fields little-endian, the rest in
/// order). Like ipmitool's automatic mode, take the IPMI layout when it
/// yields a valid RFC 4122 version/variant, else SMBIOS: the SMBIOS form
/// is what PXE clients send in DHCP option 97, the value Anvil matches.
pub(crate) fn format_guid(g: &[u8; 16]) -> String {
    let ipmi: Vec<u8> = g.iter().rev().copied().collect();
    let mut smbios = g.to_vec();
    smbios[0..4].reverse();
    smbios[4..6].reverse();
    smbios[6..8].reverse();
    let valid = |u: &[u8]| (1..=5).contains(&(u[6] >> 4)) && (u[8] & 0xC0) == 0x80;
    let u = if valid(&ipmi) || !valid(&smbios) {
        ipmi
    } else {
        smbios
    };
    let h: Vec<String> = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

/// The fields of a FRU (Platform Management FRU Information Storage
/// Definition v1.0) that feed `Inventory`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FruInfo {
    pub chassis_serial: Option<String>,
    pub board_manufacturer: Option<String>,
    pub board_product: Option<String>,
    pub board_serial: Option<String>,
    pub product_manufacturer: Option<String>,
    pub product_name: Option<String>,
    pub product_serial: Option<String>,
}

impl FruInfo {
    /// Parses the whole FRU image. Areas with a bad checksum or layout
    /// are skipped rather than failing the inventory.
    pub(crate) fn parse(fru: &[u8]) -> Result<FruInfo, String> {
        if fru.len() < 8 || fru[0] & 0x0F != 0x01 {
            return Err("no FRU common header (format version 1)".into());
        }
        if sum(&fru[..8]) != 0 {
            return Err("FRU common header checksum mismatch".into());
        }
        let area = |offset_byte: u8| -> Option<&[u8]> {
            let start = usize::from(offset_byte) * 8;
            if start == 0 {
                return None;
            }
            let len = usize::from(*fru.get(start + 1)?) * 8;
            let a = fru.get(start..start + len)?;
            (len >= 8 && sum(a) == 0).then_some(a)
        };
        let mut info = FruInfo::default();
        if let Some(a) = area(fru[2]) {
            // Chassis: version, length, type, then part number, serial.
            let f = fields(&a[3..]);
            info.chassis_serial = f.get(1).cloned().flatten();
        }
        if let Some(a) = area(fru[3]) {
            // Board: version, length, language, 3-byte date, then
            // manufacturer, product name, serial, part number.
            let f = fields(&a[6..]);
            info.board_manufacturer = f.first().cloned().flatten();
            info.board_product = f.get(1).cloned().flatten();
            info.board_serial = f.get(2).cloned().flatten();
        }
        if let Some(a) = area(fru[4]) {
            // Product: version, length, language, then manufacturer,
            // name, part/model, version, serial.
            let f = fields(&a[3..]);
            info.product_manufacturer = f.first().cloned().flatten();
            info.product_name = f.get(1).cloned().flatten();
            info.product_serial = f.get(4).cloned().flatten();
        }
        Ok(info)
    }
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

/// Type/length-encoded fields up to the end marker 0xC1. Text comes as
/// 8-bit ASCII/Latin-1 (type 3) or packed 6-bit ASCII (type 2); binary
/// and BCD+ fields yield `None` but keep their position.
fn fields(mut b: &[u8]) -> Vec<Option<String>> {
    let mut out = Vec::new();
    while let Some((&tl, rest)) = b.split_first() {
        if tl == 0xC1 {
            break;
        }
        let len = usize::from(tl & 0x3F);
        let Some(raw) = rest.get(..len) else { break };
        let text = match tl >> 6 {
            3 => Some(raw.iter().map(|&c| char::from(c)).collect::<String>()),
            2 => Some(unpack_6bit(raw)),
            _ => None,
        };
        let text = text
            .map(|t| {
                t.trim_matches(|c: char| c.is_whitespace() || c == '\0')
                    .to_string()
            })
            .filter(|t| !t.is_empty());
        out.push(text);
        b = &rest[len..];
    }
    out
}

/// Packed 6-bit ASCII: four characters in three bytes, LSB first, each
/// value + 0x20.
fn unpack_6bit(raw: &[u8]) -> String {
    let mut s = String::new();
    for chunk in raw.chunks(3) {
        let mut v: u32 = 0;
        for (i, b) in chunk.iter().enumerate() {
            v |= u32::from(*b) << (8 * i);
        }
        for i in 0..(chunk.len() * 8 / 6) {
            s.push(char::from(((v >> (6 * i)) & 0x3F) as u8 + 0x20));
        }
    }
    s
}

/// Builds a minimal FRU image (chassis, board and product areas) for test
/// BMCs: the inverse of `FruInfo::parse` for 8-bit ASCII fields.
pub(crate) fn build_fru(manufacturer: &str, product: &str, serial: &str) -> Vec<u8> {
    fn area(prefix: &[u8], fields: &[&str]) -> Vec<u8> {
        let mut a = prefix.to_vec();
        for f in fields {
            a.push(0xC0 | f.len().min(63) as u8);
            a.extend_from_slice(&f.as_bytes()[..f.len().min(63)]);
        }
        a.push(0xC1);
        while !(a.len() + 1).is_multiple_of(8) {
            a.push(0);
        }
        a.push(0); // checksum placeholder
        a[1] = (a.len() / 8) as u8;
        let last = a.len() - 1;
        a[last] = sum(&a[..last]).wrapping_neg();
        a
    }
    let chassis = area(&[0x01, 0, 0x17], &["CH-PART", serial]);
    let board = area(
        &[0x01, 0, 0x00, 0, 0, 0],
        &[manufacturer, product, serial, "BRD-PART", ""],
    );
    let product_area = area(
        &[0x01, 0, 0x00],
        &[manufacturer, product, "MODEL-1", "1.0", serial, "", ""],
    );
    let mut h = [0u8; 8];
    h[0] = 0x01;
    h[2] = 1; // chassis at 8
    h[3] = (1 + chassis.len() / 8) as u8;
    h[4] = (1 + (chassis.len() + board.len()) / 8) as u8;
    h[7] = sum(&h[..7]).wrapping_neg();
    let mut fru = h.to_vec();
    fru.extend(chassis);
    fru.extend(board);
    fru.extend(product_area);
    fru
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chassis_control_bytes_follow_the_spec() {
        assert_eq!(chassis_control_byte(PowerAction::ForceOff), 0);
        assert_eq!(chassis_control_byte(PowerAction::On), 1);
        assert_eq!(chassis_control_byte(PowerAction::Cycle), 2);
        assert_eq!(chassis_control_byte(PowerAction::Reset), 3);
        assert_eq!(chassis_control_byte(PowerAction::SoftOff), 5);
    }

    #[test]
    fn boot_flags_encode_valid_persistence_efi_and_device() {
        let pxe_once_efi = BootOverride {
            device: BootDevice::Pxe,
            once: true,
            mode: Some(BootMode::Uefi),
        };
        // Valid, next boot only, EFI; device selector 0001b (force PXE).
        assert_eq!(
            boot_flags_request(pxe_once_efi, false),
            [5, 0xA0, 0x04, 0, 0, 0]
        );
        let disk_always_legacy = BootOverride {
            device: BootDevice::Disk,
            once: false,
            mode: Some(BootMode::Legacy),
        };
        assert_eq!(
            boot_flags_request(disk_always_legacy, true),
            [5, 0xC0, 0x08, 0, 0, 0]
        );
        let keep_mode = BootOverride {
            device: BootDevice::Pxe,
            once: true,
            mode: None,
        };
        assert_eq!(boot_flags_request(keep_mode, true)[1], 0xA0, "EFI kept");
        assert_eq!(boot_flags_request(keep_mode, false)[1], 0x80, "legacy kept");
        assert_eq!(boot_flags_efi(&[1, 5, 0xA0, 0x04, 0, 0, 0]), Some(true));
        assert_eq!(boot_flags_efi(&[1, 5, 0x80, 0x04, 0, 0, 0]), Some(false));
        assert_eq!(boot_flags_efi(&[1, 4]), None);
    }

    #[test]
    fn device_id_parses_like_ipmitool_prints() {
        // ipmi_sim's `mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02`;
        // ipmitool mc info: firmware 9.08, IPMI 2.0, manufacturer 4753, product 3842.
        let d = [
            0x00, 0x03, 0x09, 0x08, 0x02, 0x9f, 0x91, 0x12, 0x00, 0x02, 0x0f,
        ];
        let id = DeviceId::parse(&d).unwrap();
        assert_eq!(id.firmware, "9.08");
        assert_eq!(id.ipmi_version, "2.0");
        assert_eq!(id.manufacturer_id, 4753);
        assert_eq!(id.product_id, 3842);
        assert!(id.has_fru());
        assert!(DeviceId::parse(&d[..5]).is_err());
    }

    #[test]
    fn guid_formats_like_ipmitool() {
        // ipmi_sim `guid a123456789abcdefa123456789abcdef`; ipmitool mc guid
        // prints efcdab89-6745-23a1-efcd-ab89674523a1 (encoding "IPMI").
        let g: [u8; 16] = [
            0xa1, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xa1, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ];
        assert_eq!(format_guid(&g), "efcdab89-6745-23a1-efcd-ab89674523a1");
        // A v4 UUID stored in SMBIOS order comes back as itself.
        let smbios: [u8; 16] = [
            0x3e, 0x4f, 0x0c, 0x5b, 0x2a, 0x9d, 0x1b, 0x4c, 0x8e, 0x7f, 0x01, 0x23, 0x45, 0x67,
            0x89, 0xab,
        ];
        assert_eq!(format_guid(&smbios), "5b0c4f3e-9d2a-4c1b-8e7f-0123456789ab");
    }

    #[test]
    fn fru_round_trips_and_tolerates_damage() {
        let fru = build_fru("Acme Servers", "RackBox 9000", "SN-0042");
        let info = FruInfo::parse(&fru).unwrap();
        assert_eq!(info.product_manufacturer.as_deref(), Some("Acme Servers"));
        assert_eq!(info.product_name.as_deref(), Some("RackBox 9000"));
        assert_eq!(info.product_serial.as_deref(), Some("SN-0042"));
        assert_eq!(info.board_serial.as_deref(), Some("SN-0042"));
        assert_eq!(info.chassis_serial.as_deref(), Some("SN-0042"));
        // A corrupted product area is skipped, the others still read.
        let mut bad = fru.clone();
        let prod = usize::from(fru[4]) * 8;
        bad[prod + 4] ^= 0xFF;
        let info = FruInfo::parse(&bad).unwrap();
        assert_eq!(info.product_name, None);
        assert_eq!(info.board_manufacturer.as_deref(), Some("Acme Servers"));
        assert!(FruInfo::parse(&[0xFF; 8]).is_err());
        assert!(FruInfo::parse(&fru[..4]).is_err());
    }

    #[test]
    fn six_bit_ascii_unpacks() {
        // "IPMI" packed: I=0x29, P=0x30, M=0x2D, I=0x29.
        let v: u32 = 0x29 | (0x30 << 6) | (0x2D << 12) | (0x29 << 18);
        let raw = [v as u8, (v >> 8) as u8, (v >> 16) as u8];
        assert_eq!(unpack_6bit(&raw), "IPMI");
        assert_eq!(
            fields(&[0x83, raw[0], raw[1], raw[2], 0xC1]),
            [Some("IPMI".into())]
        );
    }
}
