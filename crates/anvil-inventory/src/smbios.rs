//! A parser for the raw SMBIOS structure table (what Linux exposes as
//! /sys/firmware/dmi/tables/DMI), so DIMMs and identification strings are
//! read without dmidecode. Bounds-checked: a malformed table yields what
//! parsed before the damage, never a panic.

use crate::{Dimm, Dmi};

/// What the SMBIOS table says about the machine.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Smbios {
    /// Identification from types 0 (BIOS), 1 (system), 2 (baseboard), 3 (chassis).
    pub dmi: Dmi,
    /// Populated memory devices (type 17).
    pub dimms: Vec<Dimm>,
}

/// One structure: type, formatted area (header included) and its strings.
struct Structure<'a> {
    kind: u8,
    formatted: &'a [u8],
    strings: Vec<&'a [u8]>,
}

impl Structure<'_> {
    fn byte(&self, offset: usize) -> Option<u8> {
        self.formatted.get(offset).copied()
    }

    fn word(&self, offset: usize) -> Option<u16> {
        let b = self.formatted.get(offset..offset + 2)?;
        Some(u16::from_le_bytes([b[0], b[1]]))
    }

    fn dword(&self, offset: usize) -> Option<u32> {
        let b = self.formatted.get(offset..offset + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The string a byte at `offset` refers to (1-based; 0 means none).
    fn string(&self, offset: usize) -> Option<String> {
        let index = self.byte(offset)? as usize;
        let raw = self.strings.get(index.checked_sub(1)?)?;
        clean(&String::from_utf8_lossy(raw))
    }
}

/// Split a table into structures, stopping at the end-of-table (type 127),
/// at the end of the data, or at the first malformed structure.
fn structures(table: &[u8]) -> Vec<Structure<'_>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 4 <= table.len() {
        let kind = table[pos];
        let len = table[pos + 1] as usize;
        if len < 4 || pos + len > table.len() {
            break;
        }
        let formatted = &table[pos..pos + len];
        // The string set follows, ended by two NULs ("\0\0" alone when empty).
        let rest = &table[pos + len..];
        let Some(set_len) = rest.windows(2).position(|w| w == [0, 0]) else {
            break;
        };
        let strings = if set_len == 0 {
            Vec::new()
        } else {
            rest[..set_len].split(|&b| b == 0).collect()
        };
        let next = pos + len + set_len + 2;
        out.push(Structure {
            kind,
            formatted,
            strings,
        });
        if kind == 127 {
            break;
        }
        pos = next;
    }
    out
}

/// Parse a raw SMBIOS structure table.
pub fn parse(table: &[u8]) -> Smbios {
    let mut s = Smbios::default();
    let mut seen = [false; 4];
    for st in structures(table) {
        match st.kind {
            // The first structure of each identification type describes the machine.
            0 if !seen[0] => {
                seen[0] = true;
                s.dmi.bios_vendor = st.string(0x04);
                s.dmi.bios_version = st.string(0x05);
                s.dmi.bios_date = st.string(0x08);
            }
            1 if !seen[1] => {
                seen[1] = true;
                s.dmi.system_vendor = st.string(0x04);
                s.dmi.system_product = st.string(0x05);
                s.dmi.system_version = st.string(0x06);
                s.dmi.system_serial = st.string(0x07);
                s.dmi.system_uuid = st.formatted.get(0x08..0x18).and_then(uuid_from_smbios);
                s.dmi.system_sku = st.string(0x19);
                s.dmi.system_family = st.string(0x1a);
            }
            2 if !seen[2] => {
                seen[2] = true;
                s.dmi.board_vendor = st.string(0x04);
                s.dmi.board_product = st.string(0x05);
                s.dmi.board_version = st.string(0x06);
                s.dmi.board_serial = st.string(0x07);
                s.dmi.board_asset_tag = st.string(0x08);
            }
            3 if !seen[3] => {
                seen[3] = true;
                s.dmi.chassis_vendor = st.string(0x04);
                s.dmi.chassis_type = st.byte(0x05).map(|t| chassis_type_name(t & 0x7f));
                s.dmi.chassis_version = st.string(0x06);
                s.dmi.chassis_serial = st.string(0x07);
                s.dmi.chassis_asset_tag = st.string(0x08);
            }
            17 => {
                if let Some(d) = memory_device(&st) {
                    s.dimms.push(d);
                }
            }
            _ => {}
        }
    }
    s
}

/// A type 17 structure, or `None` for an empty slot.
fn memory_device(st: &Structure) -> Option<Dimm> {
    let size = st.word(0x0c)?;
    let size_bytes = match size {
        0 | 0xffff => return None,
        0x7fff => u64::from(st.dword(0x1c)? & 0x7fff_ffff) << 20,
        s if s & 0x8000 != 0 => u64::from(s & 0x7fff) << 10,
        s => u64::from(s) << 20,
    };
    let speed_mts = match st.word(0x15) {
        Some(0) | None => None,
        Some(0xffff) => st.dword(0x54),
        Some(v) => Some(u32::from(v)),
    }
    // 0 is "unknown"; beyond 100,000 MT/s is a corrupt table, not a DIMM.
    .filter(|&v| (1..=100_000).contains(&v));
    Some(Dimm {
        locator: st.string(0x10).unwrap_or_default(),
        bank_locator: st.string(0x11),
        size_bytes,
        memory_type: st.byte(0x12).and_then(memory_type_name).map(str::to_string),
        speed_mts,
        manufacturer: st.string(0x17),
        serial: st.string(0x18),
        part_number: st.string(0x1a),
    })
}

/// SMBIOS 2.6+ stores the first three UUID fields little-endian (as Linux's
/// product_uuid shows them). All-zero and all-FF mean "not set".
fn uuid_from_smbios(b: &[u8]) -> Option<String> {
    if b.len() != 16 || b.iter().all(|&x| x == 0) || b.iter().all(|&x| x == 0xff) {
        return None;
    }
    Some(format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3],
        b[2],
        b[1],
        b[0],
        b[5],
        b[4],
        b[7],
        b[6],
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    ))
}

fn memory_type_name(t: u8) -> Option<&'static str> {
    Some(match t {
        0x01 => "Other",
        0x03 => "DRAM",
        0x04 => "EDRAM",
        0x05 => "VRAM",
        0x06 => "SRAM",
        0x07 => "RAM",
        0x08 => "ROM",
        0x09 => "Flash",
        0x0a => "EEPROM",
        0x0b => "FEPROM",
        0x0c => "EPROM",
        0x0d => "CDRAM",
        0x0e => "3DRAM",
        0x0f => "SDRAM",
        0x10 => "SGRAM",
        0x11 => "RDRAM",
        0x12 => "DDR",
        0x13 => "DDR2",
        0x14 => "DDR2 FB-DIMM",
        0x18 => "DDR3",
        0x19 => "FBD2",
        0x1a => "DDR4",
        0x1b => "LPDDR",
        0x1c => "LPDDR2",
        0x1d => "LPDDR3",
        0x1e => "LPDDR4",
        0x1f => "Logical non-volatile device",
        0x20 => "HBM",
        0x21 => "HBM2",
        0x22 => "DDR5",
        0x23 => "LPDDR5",
        0x24 => "HBM3",
        _ => return None, // 0x02 "Unknown" and reserved values
    })
}

/// Chassis type names from the SMBIOS specification (type 3, offset 05h).
pub fn chassis_type_name(t: u8) -> String {
    const NAMES: [&str; 36] = [
        "Other",
        "Unknown",
        "Desktop",
        "Low Profile Desktop",
        "Pizza Box",
        "Mini Tower",
        "Tower",
        "Portable",
        "Laptop",
        "Notebook",
        "Hand Held",
        "Docking Station",
        "All in One",
        "Sub Notebook",
        "Space-saving",
        "Lunch Box",
        "Main Server Chassis",
        "Expansion Chassis",
        "SubChassis",
        "Bus Expansion Chassis",
        "Peripheral Chassis",
        "RAID Chassis",
        "Rack Mount Chassis",
        "Sealed-case PC",
        "Multi-system chassis",
        "Compact PCI",
        "Advanced TCA",
        "Blade",
        "Blade Enclosure",
        "Tablet",
        "Convertible",
        "Detachable",
        "IoT Gateway",
        "Embedded PC",
        "Mini PC",
        "Stick PC",
    ];
    match (t as usize).checked_sub(1).and_then(|i| NAMES.get(i)) {
        Some(name) => (*name).to_string(),
        None => format!("Type {t}"),
    }
}

/// Trim a firmware string and drop the placeholders vendors ship instead of
/// a value.
pub(crate) fn clean(raw: &str) -> Option<String> {
    const PLACEHOLDERS: &[&str] = &[
        "to be filled by o.e.m.",
        "to be filled by oem",
        "default string",
        "not specified",
        "not applicable",
        "not available",
        "system product name",
        "system manufacturer",
        "system version",
        "system serial number",
        "base board serial number",
        "chassis serial number",
        "type2 - board serial number",
        "0123456789",
        "none",
        "n/a",
        "oem",
        "o.e.m.",
        "unknown",
        "empty",
        "no dimm",
        "dimm_sn",
    ];
    // Real firmware strings are short (the specification suggests 64
    // bytes); a corrupt table's run-on string is cut at 256 characters.
    let t: String = raw
        .trim_matches(|c: char| c.is_whitespace() || c == '\0')
        .chars()
        .filter(|c| !c.is_control())
        .take(256)
        .collect();
    let t = t.trim_end().to_string();
    let lower = t.to_ascii_lowercase();
    if t.is_empty() || PLACEHOLDERS.contains(&lower.as_str()) {
        None
    } else {
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from QEMU 7.2 + SeaBIOS by tests/fixtures/capture-smbios.sh.
    const QEMU_PC: &[u8] = include_bytes!("../tests/fixtures/qemu-seabios-pc.DMI");
    const QEMU_Q35_20G: &[u8] = include_bytes!("../tests/fixtures/qemu-seabios-q35-20g.DMI");
    /// /sys/firmware/dmi/tables/DMI as Linux 6.1 (the ramdisk kernel) shows
    /// it in a QEMU q35 guest with OVMF (UEFI, SMBIOS 3.0 entry point) and
    /// the -smbios values of tests/fixtures/capture-smbios.sh; read inside
    /// the guest and printed as hex on its serial console.
    const QEMU_OVMF_LINUX: &[u8] = include_bytes!("../tests/fixtures/qemu-ovmf-linux.DMI");

    #[test]
    fn parses_the_identification_qemu_was_given() {
        let s = parse(QEMU_PC);
        let d = &s.dmi;
        assert_eq!(d.bios_vendor.as_deref(), Some("AnvilBIOS"));
        assert_eq!(d.bios_version.as_deref(), Some("1.2.3"));
        assert_eq!(d.bios_date.as_deref(), Some("03/14/2025"));
        assert_eq!(d.system_vendor.as_deref(), Some("Anvil Test Systems"));
        assert_eq!(d.system_product.as_deref(), Some("Anvil QEMU Node"));
        assert_eq!(d.system_version.as_deref(), Some("v2"));
        assert_eq!(d.system_serial.as_deref(), Some("SYS-SERIAL-0042"));
        assert_eq!(
            d.system_uuid.as_deref(),
            Some("6f3c2a1e-9b7d-4e5f-8a21-0c4d5e6f7a8b")
        );
        assert_eq!(d.system_sku.as_deref(), Some("SKU-77"));
        assert_eq!(d.system_family.as_deref(), Some("AnvilFamily"));
        assert_eq!(d.board_vendor.as_deref(), Some("Anvil Boards"));
        assert_eq!(d.board_product.as_deref(), Some("AB-100"));
        assert_eq!(d.board_version.as_deref(), Some("rev3"));
        assert_eq!(d.board_serial.as_deref(), Some("BOARD-SN-9"));
        assert_eq!(d.board_asset_tag.as_deref(), Some("BOARD-ASSET"));
        assert_eq!(d.chassis_vendor.as_deref(), Some("Anvil Chassis Co"));
        assert_eq!(d.chassis_version.as_deref(), Some("c1"));
        assert_eq!(d.chassis_serial.as_deref(), Some("CHASSIS-SN-5"));
        assert_eq!(d.chassis_asset_tag.as_deref(), Some("RACK12-U4"));
        assert_eq!(d.chassis_type.as_deref(), Some("Other"));
    }

    #[test]
    fn parses_the_table_linux_exposes_under_uefi() {
        let uefi = parse(QEMU_OVMF_LINUX);
        let bios = parse(QEMU_PC);
        // Same -smbios values, other firmware: same identification.
        assert_eq!(uefi.dmi.system_uuid, bios.dmi.system_uuid);
        assert_eq!(uefi.dmi.system_serial.as_deref(), Some("SYS-SERIAL-0042"));
        assert_eq!(uefi.dmi.board_serial.as_deref(), Some("BOARD-SN-9"));
        assert_eq!(uefi.dmi.chassis_asset_tag.as_deref(), Some("RACK12-U4"));
        assert_eq!(uefi.dmi.bios_vendor.as_deref(), Some("AnvilBIOS"));
        assert_eq!(uefi.dimms.len(), 1);
        assert_eq!(uefi.dimms[0].speed_mts, Some(3200));
        assert_eq!(uefi.dimms[0].part_number.as_deref(), Some("AR-1024"));
    }

    #[test]
    fn parses_dimms_from_type_17() {
        let s = parse(QEMU_PC);
        assert_eq!(s.dimms.len(), 1);
        let d = &s.dimms[0];
        assert_eq!(d.locator, "DIMM 0");
        assert_eq!(d.size_bytes, 1 << 30);
        assert_eq!(d.memory_type.as_deref(), Some("RAM"));
        assert_eq!(d.speed_mts, Some(3200));
        assert_eq!(d.manufacturer.as_deref(), Some("AnvilRAM"));
        assert_eq!(d.serial.as_deref(), Some("DIMM-SN-1"));
        assert_eq!(d.part_number.as_deref(), Some("AR-1024"));

        // 20 GiB in QEMU's 16 GiB devices.
        let s = parse(QEMU_Q35_20G);
        let sizes: Vec<u64> = s.dimms.iter().map(|d| d.size_bytes).collect();
        assert_eq!(sizes, vec![16 << 30, 4 << 30]);
        assert_eq!(s.dimms[1].locator, "DIMM 1");
        assert_eq!(s.dmi.system_serial.as_deref(), Some("SYS-SERIAL-0042"));
    }

    #[test]
    fn damaged_tables_give_what_parsed_before_the_damage() {
        for len in 0..QEMU_PC.len() {
            let _ = parse(&QEMU_PC[..len]);
        }
        // The BIOS structure is whole after its strings.
        let formatted = usize::from(QEMU_PC[1]);
        let strings = QEMU_PC[formatted..]
            .windows(2)
            .position(|w| w == [0, 0])
            .unwrap();
        let cut = parse(&QEMU_PC[..formatted + strings + 2 + 4 + 2]);
        assert_eq!(cut.dmi.bios_vendor.as_deref(), Some("AnvilBIOS"));
        assert_eq!(cut.dmi.system_vendor, None);
        // A structure claiming a length below its header stops the walk.
        let mut bad = QEMU_PC.to_vec();
        bad[1] = 2;
        assert_eq!(parse(&bad), Smbios::default());
        // String indexes past the string set are absent values.
        let mut bad = QEMU_PC.to_vec();
        bad[4] = 9;
        assert_eq!(parse(&bad).dmi.bios_vendor, None);
        assert_eq!(parse(&[]), Smbios::default());
    }

    #[test]
    fn decodes_sizes_and_placeholders() {
        // A type 17 with size in KiB (bit 15), one with the extended size.
        let mut t17 = vec![0u8; 0x28];
        t17[0] = 17;
        t17[1] = 0x28;
        t17[0x0c..0x0e].copy_from_slice(&(0x8000u16 | 512).to_le_bytes());
        t17[0x12] = 0x1a; // DDR4
        let mut table = t17.clone();
        table.extend_from_slice(&[0, 0]);
        let mut ext = t17.clone();
        ext[0x0c..0x0e].copy_from_slice(&0x7fffu16.to_le_bytes());
        ext[0x1c..0x20].copy_from_slice(&(64u32 * 1024).to_le_bytes());
        table.extend_from_slice(&ext);
        table.extend_from_slice(&[0, 0]);
        // An empty slot.
        let mut empty = t17.clone();
        empty[0x0c..0x0e].copy_from_slice(&0u16.to_le_bytes());
        table.extend_from_slice(&empty);
        table.extend_from_slice(&[0, 0, 127, 4, 0, 0, 0, 0]);
        let s = parse(&table);
        let sizes: Vec<u64> = s.dimms.iter().map(|d| d.size_bytes).collect();
        assert_eq!(sizes, vec![512 << 10, 64 << 30]);
        assert_eq!(s.dimms[0].memory_type.as_deref(), Some("DDR4"));

        assert_eq!(clean("  To Be Filled By O.E.M.  "), None);
        assert_eq!(clean("Default string"), None);
        assert_eq!(clean(" PowerEdge R650 "), Some("PowerEdge R650".into()));
        assert_eq!(chassis_type_name(23), "Rack Mount Chassis");
        assert_eq!(chassis_type_name(99), "Type 99");
        assert_eq!(uuid_from_smbios(&[0xff; 16]), None);
    }
}
