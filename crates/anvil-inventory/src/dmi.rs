//! DMI identification: /sys/class/dmi/id first (the kernel's decoding), the
//! raw SMBIOS table for whatever it lacks, and the table's type 17 entries
//! for DIMMs.

use crate::smbios::{self, Smbios, chassis_type_name, clean};
use crate::sysfs::Tree;
use crate::{Dimm, Dmi};

const DMI_ID: &str = "/sys/class/dmi/id";
const DMI_TABLE: &str = "/sys/firmware/dmi/tables/DMI";

pub(crate) fn collect(tree: &mut Tree) -> (Dmi, Vec<Dimm>) {
    let table = tree
        .bytes(DMI_TABLE)
        .map(|b| smbios::parse(&b))
        .unwrap_or_default();
    let mut id = |file: &str| -> Option<String> {
        let path = tree.path(format!("{DMI_ID}/{file}"));
        tree.text_at(&path).and_then(|t| clean(&t))
    };
    let from_sysfs = Dmi {
        system_vendor: id("sys_vendor"),
        system_product: id("product_name"),
        system_version: id("product_version"),
        system_serial: id("product_serial"),
        system_uuid: id("product_uuid").map(|u| u.to_ascii_lowercase()),
        system_sku: id("product_sku"),
        system_family: id("product_family"),
        board_vendor: id("board_vendor"),
        board_product: id("board_name"),
        board_version: id("board_version"),
        board_serial: id("board_serial"),
        board_asset_tag: id("board_asset_tag"),
        bios_vendor: id("bios_vendor"),
        bios_version: id("bios_version"),
        bios_date: id("bios_date"),
        chassis_type: id("chassis_type").map(|t| match t.parse::<u8>() {
            Ok(n) => chassis_type_name(n & 0x7f),
            Err(_) => t,
        }),
        chassis_vendor: id("chassis_vendor"),
        chassis_version: id("chassis_version"),
        chassis_serial: id("chassis_serial"),
        chassis_asset_tag: id("chassis_asset_tag"),
    };
    let Smbios {
        dmi: fallback,
        dimms,
    } = table;
    (merge(from_sysfs, fallback), dimms)
}

/// Each field from `primary` when it has one, else from `fallback`.
fn merge(primary: Dmi, fallback: Dmi) -> Dmi {
    Dmi {
        system_vendor: primary.system_vendor.or(fallback.system_vendor),
        system_product: primary.system_product.or(fallback.system_product),
        system_version: primary.system_version.or(fallback.system_version),
        system_serial: primary.system_serial.or(fallback.system_serial),
        system_uuid: primary.system_uuid.or(fallback.system_uuid),
        system_sku: primary.system_sku.or(fallback.system_sku),
        system_family: primary.system_family.or(fallback.system_family),
        board_vendor: primary.board_vendor.or(fallback.board_vendor),
        board_product: primary.board_product.or(fallback.board_product),
        board_version: primary.board_version.or(fallback.board_version),
        board_serial: primary.board_serial.or(fallback.board_serial),
        board_asset_tag: primary.board_asset_tag.or(fallback.board_asset_tag),
        bios_vendor: primary.bios_vendor.or(fallback.bios_vendor),
        bios_version: primary.bios_version.or(fallback.bios_version),
        bios_date: primary.bios_date.or(fallback.bios_date),
        chassis_type: primary.chassis_type.or(fallback.chassis_type),
        chassis_vendor: primary.chassis_vendor.or(fallback.chassis_vendor),
        chassis_version: primary.chassis_version.or(fallback.chassis_version),
        chassis_serial: primary.chassis_serial.or(fallback.chassis_serial),
        chassis_asset_tag: primary.chassis_asset_tag.or(fallback.chassis_asset_tag),
    }
}
