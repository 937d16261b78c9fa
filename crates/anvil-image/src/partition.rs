//! Which firmware an image boots with, read from its partition table: a
//! GPT EFI system partition means UEFI, a BIOS boot partition (GRUB on GPT)
//! or MBR boot code means BIOS. Cloud images are often both.

/// How many leading raw bytes `boot_modes` looks at.
pub const HEAD_LEN: usize = 64 * 1024;

const ESP: [u8; 16] = [
    0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b,
];
/// GUID 21686148-6449-6E6F-744E-656564454649, "Hah!IdontNeedEFI".
const BIOS_BOOT: [u8; 16] = *b"Hah!IdontNeedEFI";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootModes {
    pub bios: bool,
    pub uefi: bool,
}

impl BootModes {
    /// `bios`, `uefi`, `bios+uefi`, or `None` when nothing bootable was seen.
    pub fn firmware(self) -> Option<&'static str> {
        match (self.bios, self.uefi) {
            (true, true) => Some("bios+uefi"),
            (true, false) => Some("bios"),
            (false, true) => Some("uefi"),
            (false, false) => None,
        }
    }
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Reads the MBR and, when present, the GPT in the first bytes of a raw disk.
pub fn boot_modes(head: &[u8]) -> BootModes {
    let mut modes = BootModes::default();
    if head.len() < 512 || head[510..512] != [0x55, 0xaa] {
        return modes;
    }
    let mbr_types: Vec<u8> = (0..4).map(|i| head[446 + i * 16 + 4]).collect();
    let boot_code = head[..440].iter().any(|&b| b != 0);
    if !mbr_types.contains(&0xee) {
        modes.uefi = mbr_types.contains(&0xef);
        modes.bios = boot_code;
        return modes;
    }
    for sector in [512usize, 4096] {
        if head.get(sector..sector + 8) != Some(b"EFI PART") {
            continue;
        }
        let (Some(entries_lba), Some(count), Some(entry_size)) = (
            le64(head, sector + 72),
            le32(head, sector + 80),
            le32(head, sector + 84),
        ) else {
            break;
        };
        if entry_size < 128 || count > 1024 {
            break;
        }
        for i in 0..count as u64 {
            let Some(at) = entries_lba
                .checked_mul(sector as u64)
                .and_then(|base| base.checked_add(i * u64::from(entry_size)))
                .and_then(|at| usize::try_from(at).ok())
            else {
                break;
            };
            let Some(type_guid) = head.get(at..at + 16) else {
                break;
            };
            if type_guid == ESP {
                modes.uefi = true;
            } else if type_guid == BIOS_BOOT {
                modes.bios = true;
            }
        }
        break;
    }
    modes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpt(types: &[[u8; 16]]) -> Vec<u8> {
        let mut d = vec![0u8; HEAD_LEN];
        d[446 + 4] = 0xee;
        d[510] = 0x55;
        d[511] = 0xaa;
        d[512..520].copy_from_slice(b"EFI PART");
        d[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
        d[512 + 80..512 + 84].copy_from_slice(&128u32.to_le_bytes());
        d[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        for (i, t) in types.iter().enumerate() {
            d[1024 + i * 128..1024 + i * 128 + 16].copy_from_slice(t);
        }
        d
    }

    #[test]
    fn gpt_with_bios_boot_and_esp_is_hybrid() {
        let d = gpt(&[[0x11; 16], BIOS_BOOT, ESP]);
        assert_eq!(boot_modes(&d).firmware(), Some("bios+uefi"));
        assert_eq!(boot_modes(&gpt(&[ESP])).firmware(), Some("uefi"));
        assert_eq!(boot_modes(&gpt(&[[0x22; 16]])).firmware(), None);
    }

    #[test]
    fn mbr_with_boot_code_is_bios() {
        let mut d = vec![0u8; 512];
        d[0] = 0xeb;
        d[446 + 4] = 0x83;
        d[510] = 0x55;
        d[511] = 0xaa;
        assert_eq!(boot_modes(&d).firmware(), Some("bios"));
        assert_eq!(boot_modes(&[0u8; 100]).firmware(), None);
    }

    #[test]
    fn hostile_tables_do_not_panic() {
        let mut d = gpt(&[ESP]);
        d[512 + 72..512 + 80].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(boot_modes(&d).firmware(), None);
        d[512 + 72..512 + 80].copy_from_slice(&200u64.to_le_bytes());
        assert_eq!(boot_modes(&d).firmware(), None);
        assert_eq!(boot_modes(&d[..520]).firmware(), None);
    }
}
