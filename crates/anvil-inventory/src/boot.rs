//! Boot mode: UEFI when the kernel exposes /sys/firmware/efi; Secure Boot
//! from the `SecureBoot` EFI global variable (4 attribute bytes, then one
//! data byte: 1 = enabled).

use crate::sysfs::Tree;
use crate::{Boot, BootMode};

const SECURE_BOOT_VAR: &str =
    "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";

pub(crate) fn collect(tree: &mut Tree) -> Boot {
    if !tree.path("/sys/firmware/efi").is_dir() {
        return Boot {
            mode: BootMode::Bios,
            secure_boot: None,
        };
    }
    let path = tree.path(SECURE_BOOT_VAR);
    let secure_boot = match tree.bytes_at(&path) {
        Some(bytes) if bytes.len() >= 5 => Some(bytes[4] == 1),
        Some(bytes) => {
            tree.note(&path, format_args!("{} bytes, expected 5", bytes.len()));
            None
        }
        // With efivarfs mounted (it lists variables) a missing SecureBoot
        // variable means firmware without Secure Boot; unmounted, we cannot tell.
        None if !tree.list("/sys/firmware/efi/efivars").is_empty() => Some(false),
        None => None,
    };
    Boot {
        mode: BootMode::Uefi,
        secure_boot,
    }
}
