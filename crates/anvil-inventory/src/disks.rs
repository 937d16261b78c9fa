//! Disks: every whole block device in /sys/block that sits on real hardware
//! (virtual devices — loop, ram, zram, device-mapper, md, nbd — are skipped),
//! with identity from sysfs and a stable by-path name.

use std::path::Path;

use crate::sysfs::{Tree, pci_address_of};
use crate::{Disk, DiskTransport};

pub(crate) fn collect(tree: &mut Tree) -> Vec<Disk> {
    let by_path_links = by_path_links(tree);
    let mut disks = Vec::new();
    for name in tree.list("/sys/block") {
        if name.starts_with("sr") || name.starts_with("fd") || is_nvme_multipath_path(&name) {
            continue; // optical, floppy, hidden NVMe multipath paths
        }
        let link = tree.path(format!("/sys/block/{name}"));
        let Some(dev_path) = tree.resolve(&link) else {
            continue;
        };
        if dev_path.starts_with("/sys/devices/virtual") {
            continue;
        }
        disks.push(disk(tree, &name, &dev_path, &by_path_links));
    }
    disks
}

fn disk(tree: &mut Tree, name: &str, dev_path: &Path, by_path_links: &[(String, String)]) -> Disk {
    let base = tree.path(format!("/sys/block/{name}"));
    let device = base.join("device");
    let transport = transport(tree, name, dev_path);
    let sectors: u64 = tree.number_at(&base.join("size")).unwrap_or(0);
    let serial = tree
        .text_at(&base.join("serial"))
        .or_else(|| tree.text_at(&device.join("serial")))
        .or_else(|| {
            tree.bytes_at(&device.join("vpd_pg80"))
                .and_then(|b| parse_vpd_pg80(&b))
        });
    let wwn = tree
        .text_at(&base.join("wwid"))
        .or_else(|| tree.text_at(&device.join("wwid")))
        .filter(|w| is_real_wwn(w));
    let by_path = by_path_links
        .iter()
        .find(|(_, target)| target == name)
        .map(|(link, _)| link.clone())
        .or_else(|| computed_by_path(tree, name, dev_path, transport));
    Disk {
        name: name.to_string(),
        model: tree
            .text_at(&device.join("model"))
            .map(|m| m.split_whitespace().collect::<Vec<_>>().join(" ")),
        serial: serial
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()),
        wwn,
        size_bytes: sectors.saturating_mul(512),
        rotational: tree
            .flag_at(&base.join("queue/rotational"))
            .unwrap_or(false),
        transport,
        by_path,
        removable: tree.flag_at(&base.join("removable")).unwrap_or(false),
        read_only: tree.flag_at(&base.join("ro")).unwrap_or(false),
    }
}

/// "nvme0c1n1": a controller path of a multipath namespace, hidden by the kernel.
fn is_nvme_multipath_path(name: &str) -> bool {
    name.strip_prefix("nvme")
        .is_some_and(|rest| rest.contains('c') && rest.contains('n'))
}

/// Transport from the device's place in the sysfs tree.
pub fn transport_from_path(name: &str, dev_path: &str) -> DiskTransport {
    let parent_of_block = dev_path
        .rsplit_once("/block/")
        .map(|(p, _)| p.rsplit('/').next().unwrap_or(""))
        .unwrap_or("");
    if name.starts_with("nvme") || dev_path.contains("/nvme/") {
        DiskTransport::Nvme
    } else if dev_path.contains("/usb") {
        DiskTransport::Usb
    } else if name.starts_with("mmcblk") || dev_path.contains("/mmc_host/") {
        DiskTransport::Mmc
    } else if parent_of_block.starts_with("virtio") {
        DiskTransport::Virtio
    } else if dev_path.contains("/ata") {
        DiskTransport::Sata
    } else if dev_path.contains("/end_device-") || dev_path.contains("/expander-") {
        DiskTransport::Sas
    } else if dev_path.contains("/target") && dev_path.contains("/host") {
        DiskTransport::Scsi
    } else {
        DiskTransport::Unknown
    }
}

fn transport(tree: &mut Tree, name: &str, dev_path: &Path) -> DiskTransport {
    let t = transport_from_path(name, &dev_path.to_string_lossy());
    // SAS HBAs (mpt3sas and friends) do not always put end_device-* in the
    // path; the SCSI device then carries a sas_address.
    if t == DiskTransport::Scsi
        && tree
            .path(format!("/sys/block/{name}/device/sas_address"))
            .exists()
    {
        return DiskTransport::Sas;
    }
    t
}

/// Unit serial number VPD page (80h): 4-byte header, then the serial.
pub fn parse_vpd_pg80(page: &[u8]) -> Option<String> {
    if page.len() < 4 || page[1] != 0x80 {
        return None;
    }
    let len = usize::from(page[3]);
    let raw = page.get(4..4 + len).unwrap_or(&page[4..]);
    let s = String::from_utf8_lossy(raw)
        .trim_matches(|c: char| c.is_whitespace() || c == '\0')
        .to_string();
    (!s.is_empty()).then_some(s)
}

/// The kernel fills `wwid` with a vendor/model/serial string ("t10.ATA ...")
/// when the device has no world wide name; only naa./eui./nvme. forms
/// identify a disk globally.
fn is_real_wwn(w: &str) -> bool {
    ["naa.", "eui.", "nvme.", "0x"]
        .iter()
        .any(|p| w.starts_with(p))
}

/// (link name, target device name) for /dev/disk/by-path, partitions left out.
fn by_path_links(tree: &mut Tree) -> Vec<(String, String)> {
    let dir = tree.path("/dev/disk/by-path");
    let mut links: Vec<(String, String)> = tree
        .list("/dev/disk/by-path")
        .into_iter()
        .filter(|l| !l.contains("-part"))
        .filter_map(|l| {
            let target = tree.link_name(&dir.join(&l))?;
            Some((l, target))
        })
        .collect();
    // udev makes several names for some disks (e.g. "ata-1" and "ata-1.0",
    // "pci-…" and "virtio-pci-…"): prefer the shortest, the classic one.
    links.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then_with(|| a.0.cmp(&b.0)));
    links
}

/// The by-path name udev's path_id would give, for when /dev/disk/by-path is
/// not there (a ramdisk without udev).
fn computed_by_path(
    tree: &mut Tree,
    name: &str,
    dev_path: &Path,
    transport: DiskTransport,
) -> Option<String> {
    let pci = pci_address_of(dev_path)?;
    let path = dev_path.to_string_lossy();
    match transport {
        DiskTransport::Nvme => {
            let nsid = tree
                .text(format!("/sys/block/{name}/nsid"))
                .or_else(|| name.rsplit_once('n').map(|(_, n)| n.to_string()))?;
            Some(format!("pci-{pci}-nvme-{nsid}"))
        }
        DiskTransport::Virtio => Some(format!("pci-{pci}")),
        DiskTransport::Sata => {
            // ".../ata3/host2/target2:0:0/2:0:0:0/block/sda": udev uses the
            // port number of ata3 (1-based within its controller).
            let ata = path
                .split('/')
                .find(|c| c.starts_with("ata") && c[3..].bytes().all(|b| b.is_ascii_digit()))?;
            let port = tree
                .text(format!("/sys/class/ata_port/{ata}/port_no"))
                .unwrap_or_else(|| ata[3..].to_string());
            Some(format!("pci-{pci}-ata-{port}"))
        }
        DiskTransport::Scsi | DiskTransport::Sas => {
            // The last component of a SCSI device is host:channel:target:lun.
            let hctl = path.split('/').rfind(|c| {
                c.split(':').count() == 4 && c.split(':').all(|n| n.parse::<u32>().is_ok())
            })?;
            let (_, ctl) = hctl.split_once(':')?;
            if transport == DiskTransport::Sas
                && let Some(addr) = tree.text(format!("/sys/block/{name}/device/sas_address"))
            {
                let lun = ctl.rsplit(':').next()?;
                return Some(format!("pci-{pci}-sas-{addr}-lun-{lun}"));
            }
            Some(format!("pci-{pci}-scsi-{ctl}"))
        }
        _ => None,
    }
}
