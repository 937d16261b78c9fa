//! The disks the deploy steps act on: finding a [`DiskRef`] again among
//! this machine's disks, opening it, and the few block-device ioctls the
//! steps need. Paths are below a root directory ("/" in the ramdisk; tests
//! pass a sysfs-shaped fixture tree whose `dev/<name>` is a regular file
//! standing in for the disk).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anvil_api_types::deploy::DiskRef;

// linux/fs.h: _IO(0x12, 95), _IO(0x12, 104), _IOR(0x12, 114, u64).
const BLKRRPART: u64 = 0x125f;
const BLKSSZGET: u64 = 0x1268;
const BLKGETSIZE64: u64 = 0x8008_1272;

/// A disk found on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub name: String,
    /// `<root>/dev/<name>`.
    pub dev: PathBuf,
    pub size_bytes: u64,
    pub read_only: bool,
    pub removable: bool,
    /// How it was matched: `wwn`, `serial` or `name+size`.
    pub matched_by: &'static str,
}

fn same(a: &Option<String>, b: &Option<String>) -> Option<bool> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.trim().eq_ignore_ascii_case(b.trim())),
        _ => None,
    }
}

/// Finds `want` among `disks` (as `anvil_inventory` collects them, the same
/// way the server's facts were collected): by WWN, then serial, then kernel
/// name with the same size. A disk whose WWN or serial contradicts the
/// reference is never taken, even with the same name: that is another disk
/// in the same slot. An identity shared by several disks matches none.
pub fn find<'a>(
    want: &DiskRef,
    disks: &'a [anvil_inventory::Disk],
) -> Result<(&'a anvil_inventory::Disk, &'static str), String> {
    let unique = |pred: &dyn Fn(&anvil_inventory::Disk) -> bool| {
        let mut it = disks.iter().filter(|d| pred(d));
        match (it.next(), it.next()) {
            (Some(d), None) => Some(d),
            _ => None,
        }
    };
    if want.wwn.is_some()
        && let Some(d) = unique(&|d| same(&want.wwn, &d.wwn) == Some(true))
    {
        return Ok((d, "wwn"));
    }
    if want.serial.is_some()
        && let Some(d) = unique(&|d| {
            same(&want.serial, &d.serial) == Some(true) && same(&want.wwn, &d.wwn) != Some(false)
        })
    {
        return Ok((d, "serial"));
    }
    if let Some(d) = unique(&|d| {
        d.name == want.name
            && d.size_bytes == want.size_bytes
            && same(&want.wwn, &d.wwn) != Some(false)
            && same(&want.serial, &d.serial) != Some(false)
    }) {
        return Ok((d, "name+size"));
    }
    let here: Vec<String> = disks
        .iter()
        .map(|d| {
            format!(
                "{} ({} bytes, serial {}, wwn {})",
                d.name,
                d.size_bytes,
                d.serial.as_deref().unwrap_or("-"),
                d.wwn.as_deref().unwrap_or("-")
            )
        })
        .collect();
    Err(format!(
        "disk {} ({} bytes, serial {}, wwn {}) not found; disks here: {}",
        want.name,
        want.size_bytes,
        want.serial.as_deref().unwrap_or("-"),
        want.wwn.as_deref().unwrap_or("-"),
        if here.is_empty() {
            "none".to_string()
        } else {
            here.join(", ")
        }
    ))
}

/// The machine's disks under `root`, as the inventory step sees them.
pub fn disks(root: &Path) -> Result<Vec<anvil_inventory::Disk>, String> {
    anvil_inventory::collect_with(root, false)
        .map(|f| f.disks)
        .map_err(|e| format!("listing disks: {e}"))
}

/// [`find`] over the disks under `root`.
pub fn resolve(root: &Path, want: &DiskRef) -> Result<Disk, String> {
    let all = disks(root)?;
    let (d, how) = find(want, &all)?;
    Ok(Disk {
        name: d.name.clone(),
        dev: root.join("dev").join(&d.name),
        size_bytes: d.size_bytes,
        read_only: d.read_only,
        removable: d.removable,
        matched_by: how,
    })
}

/// Opens a disk for reading and writing; a block device with `O_EXCL`, so
/// the kernel refuses while it (or a partition) is mounted or in use.
pub fn open_rw(dev: &Path) -> io::Result<File> {
    let is_block = std::fs::metadata(dev)?.file_type().is_block_device();
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if is_block {
        o.custom_flags(libc::O_EXCL);
    }
    o.open(dev)
}

pub fn is_block(f: &File) -> bool {
    f.metadata().is_ok_and(|m| m.file_type().is_block_device())
}

/// Size in bytes: BLKGETSIZE64 for a block device, the length of a file.
pub fn size(f: &File) -> io::Result<u64> {
    if !is_block(f) {
        return Ok(f.metadata()?.len());
    }
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer.
    if unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// Logical sector size (512 for a file).
pub fn sector_size(f: &File) -> u64 {
    if !is_block(f) {
        return 512;
    }
    let mut sector: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer.
    if unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            BLKSSZGET as _,
            &mut sector as *mut libc::c_int,
        )
    } != 0
    {
        return 512;
    }
    (sector as u64).max(512)
}

/// Tells the kernel to re-read the partition table (no-op for a file).
/// Retried a few times: udev-less ramdisks have nothing holding the disk,
/// but a just-closed partition can be busy for a moment.
pub fn reread_partitions(f: &File) -> Result<(), String> {
    if !is_block(f) {
        return Ok(());
    }
    let mut last = None;
    for _ in 0..10 {
        // SAFETY: BLKRRPART takes no argument.
        if unsafe { libc::ioctl(f.as_raw_fd(), BLKRRPART as _, 0) } == 0 {
            return Ok(());
        }
        last = Some(io::Error::last_os_error());
        std::thread::sleep(Duration::from_millis(300));
    }
    Err(format!(
        "the kernel did not re-read the partition table (BLKRRPART): {}",
        last.expect("set in the loop")
    ))
}

/// Kernel name of partition `n` of disk `disk`: `sda1`, `nvme0n1p1`,
/// `mmcblk0p1` (a `p` when the disk's name ends in a digit).
pub fn partition_name(disk: &str, n: u32) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{n}")
    } else {
        format!("{disk}{n}")
    }
}

/// Waits up to `wait` for `/dev/<part>` (devtmpfs creates it shortly after
/// BLKRRPART) and returns its path.
pub fn wait_for_partition(root: &Path, part: &str, wait: Duration) -> Result<PathBuf, String> {
    let p = root.join("dev").join(part);
    let started = Instant::now();
    loop {
        if std::fs::metadata(&p).is_ok_and(|m| m.file_type().is_block_device()) {
            return Ok(p);
        }
        if started.elapsed() >= wait {
            return Err(format!(
                "{} did not appear within {} s",
                p.display(),
                wait.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Fixture trees shaped like /sys and /dev, for the steps' tests.
#[cfg(test)]
pub(crate) mod fixture {
    use std::path::Path;

    fn file(root: &Path, path: &str, contents: impl AsRef<[u8]>) {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, contents).unwrap();
    }

    fn link(root: &Path, path: &str, target: &str) {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, p).unwrap();
    }

    /// A virtio disk `name` on PCI slot `slot` with this size and serial,
    /// as sysfs shows it; `dev/<name>` is a sparse file of that size.
    pub fn virtio_disk(root: &Path, name: &str, slot: u32, bytes: u64, serial: Option<&str>) {
        let dev = format!("/sys/devices/pci0000:00/0000:00:{slot:02x}.0/virtio{slot}/block/{name}");
        file(root, &format!("{dev}/size"), format!("{}\n", bytes / 512));
        if let Some(s) = serial {
            file(root, &format!("{dev}/serial"), format!("{s}\n"));
        }
        file(root, &format!("{dev}/ro"), "0\n");
        link(
            root,
            &format!("{dev}/device"),
            &format!("../../../virtio{slot}"),
        );
        link(
            root,
            &format!("/sys/block/{name}"),
            &format!("../devices/pci0000:00/0000:00:{slot:02x}.0/virtio{slot}/block/{name}"),
        );
        let f = std::fs::File::create(root.join("dev").join(name)).unwrap();
        f.set_len(bytes).unwrap();
    }

    /// A SATA disk with a WWN (what servers have).
    pub fn sata_disk(root: &Path, name: &str, port: u32, bytes: u64, serial: &str, wwn: &str) {
        let scsi = format!(
            "/sys/devices/pci0000:00/0000:00:1f.2/ata{port}/host{port}/target{port}:0:0/{port}:0:0:0"
        );
        file(
            root,
            &format!("{scsi}/block/{name}/size"),
            format!("{}\n", bytes / 512),
        );
        file(root, &format!("{scsi}/block/{name}/ro"), "0\n");
        link(
            root,
            &format!("{scsi}/block/{name}/device"),
            &format!("../../../{port}:0:0:0"),
        );
        file(root, &format!("{scsi}/wwid"), format!("{wwn}\n"));
        let mut pg80 = vec![0x00, 0x80, 0x00, serial.len() as u8];
        pg80.extend_from_slice(serial.as_bytes());
        file(root, &format!("{scsi}/vpd_pg80"), pg80);
        link(
            root,
            &format!("/sys/block/{name}"),
            &format!("..{}/block/{name}", &scsi["/sys".len()..]),
        );
        let f = std::fs::File::create(root.join("dev").join(name)).unwrap();
        f.set_len(bytes).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn r(name: &str, size: u64, serial: Option<&str>, wwn: Option<&str>) -> DiskRef {
        DiskRef {
            name: name.into(),
            size_bytes: size,
            serial: serial.map(str::to_string),
            wwn: wwn.map(str::to_string),
            model: None,
        }
    }

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("dev")).unwrap();
        fixture::sata_disk(t.path(), "sda", 1, 64 * MIB, "ZC1", "naa.5000c500a1b2c3d4");
        fixture::sata_disk(t.path(), "sdb", 2, 64 * MIB, "ZC2", "naa.5000c500a1b2c3d5");
        fixture::virtio_disk(t.path(), "vda", 5, 32 * MIB, Some("VDA-1"));
        fixture::virtio_disk(t.path(), "vdb", 6, 48 * MIB, None);
        t
    }

    #[test]
    fn wwn_wins_even_when_the_kernel_names_moved() {
        let t = tree();
        // Commissioned as sdb; this boot the kernel calls it sda.
        let d = resolve(
            t.path(),
            &r("sdb", 64 * MIB, Some("ZC1"), Some("NAA.5000C500A1B2C3D4")),
        )
        .unwrap();
        assert_eq!((d.name.as_str(), d.matched_by), ("sda", "wwn"));
        assert_eq!(d.dev, t.path().join("dev/sda"));
        assert_eq!(d.size_bytes, 64 * MIB);
        assert!(!d.read_only);
    }

    #[test]
    fn serial_then_name_and_size() {
        let t = tree();
        let d = resolve(t.path(), &r("vdz", 1, Some("VDA-1"), None)).unwrap();
        assert_eq!((d.name.as_str(), d.matched_by), ("vda", "serial"));
        // A virtio disk without serial or WWN: only its name and size.
        let d = resolve(t.path(), &r("vdb", 48 * MIB, None, None)).unwrap();
        assert_eq!((d.name.as_str(), d.matched_by), ("vdb", "name+size"));
    }

    #[test]
    fn nothing_matching_is_a_clear_failure() {
        let t = tree();
        // Same name, other size.
        let e = resolve(t.path(), &r("vdb", 40 * MIB, None, None)).unwrap_err();
        assert!(e.starts_with("disk vdb (41943040 bytes"), "{e}");
        assert!(e.contains("not found; disks here: "), "{e}");
        assert!(e.contains("sda (67108864 bytes, serial ZC1"), "{e}");
        // Same name and size but another serial: a replaced disk, not ours.
        let e = resolve(t.path(), &r("vda", 32 * MIB, Some("OTHER"), None)).unwrap_err();
        assert!(e.contains("not found"), "{e}");
        // Same name and size but another WWN.
        let e = resolve(t.path(), &r("sda", 64 * MIB, None, Some("naa.1"))).unwrap_err();
        assert!(e.contains("not found"), "{e}");
        // No disks at all.
        let empty = tempfile::tempdir().unwrap();
        let e = resolve(empty.path(), &r("sda", 1, None, None)).unwrap_err();
        assert!(e.ends_with("disks here: none"), "{e}");
    }

    #[test]
    fn partition_names_follow_the_kernel() {
        assert_eq!(partition_name("sda", 1), "sda1");
        assert_eq!(partition_name("vdb", 3), "vdb3");
        assert_eq!(partition_name("nvme0n1", 2), "nvme0n1p2");
        assert_eq!(partition_name("mmcblk0", 1), "mmcblk0p1");
    }
}
